package main

import (
	"encoding/json"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-jsonnet"
	"github.com/prometheus/prometheus/promql/parser"
	"gopkg.in/yaml.v3"
)

const repoRoot = "../.."

type rulesDoc struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Record      string            `yaml:"record"`
			Alert       string            `yaml:"alert"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

var (
	generatedMu    sync.Mutex
	generatedCache = map[string]map[string][]byte{}
)

// generated evaluates the mixin with override (once per override: jsonnet takes about a
// second) and returns the files, the rules and a fresh copy of the dashboard.
func generated(t *testing.T, override string) (map[string][]byte, rulesDoc, map[string]any) {
	t.Helper()
	generatedMu.Lock()
	files, ok := generatedCache[override]
	if !ok {
		var err error
		if files, err = generate(repoRoot, override); err != nil {
			generatedMu.Unlock()
			t.Fatal(err)
		}
		generatedCache[override] = files
	}
	generatedMu.Unlock()
	var rules rulesDoc
	if err := yaml.Unmarshal(files[rulesFile], &rules); err != nil {
		t.Fatal(err)
	}
	var dash map[string]any
	if err := json.Unmarshal(files["grafana/dbpool.json"], &dash); err != nil {
		t.Fatal(err)
	}
	return files, rules, dash
}

func alertByName(t *testing.T, rules rulesDoc, name string) (expr, forDur string, annotations map[string]string) {
	t.Helper()
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == name {
				return r.Expr, r.For, r.Annotations
			}
		}
	}
	t.Fatalf("no alert %s", name)
	return "", "", nil
}

func TestShippedFilesAreGenerated(t *testing.T) {
	files, _, _ := generated(t, "")
	if len(files) != 2 {
		t.Errorf("generated %d files, want the rules file and one dashboard", len(files))
	}
	for _, err := range compareGenerated(repoRoot, files) {
		t.Error(err)
	}
}

// A threshold changed in _config without regenerating makes the check fail for both files,
// and the new value reaches the alert, its text and the thresholds drawn on the dashboard.
func TestThresholdTunableReachesRulesAndDashboard(t *testing.T) {
	files, rules, dash := generated(t, `{ _config+:: { utilizationAlertRatio: 0.85, utilizationAlertFor: '10m' } }`)

	errs := compareGenerated(repoRoot, files)
	if len(errs) != 2 {
		t.Fatalf("want both shipped files reported as stale, got %v", errs)
	}
	for i, name := range []string{rulesFile, "grafana/dbpool.json"} {
		if !strings.Contains(errs[i].Error(), name) || !strings.Contains(errs[i].Error(), "make mixin") {
			t.Errorf("error %d does not name %s and the fix: %v", i, name, errs[i])
		}
	}

	expr, forDur, ann := alertByName(t, rules, "DbPoolHighUtilization")
	if expr != "target_pool:dbpool_utilization:ratio > 0.85" || forDur != "10m" {
		t.Errorf("DbPoolHighUtilization: expr %q for %q", expr, forDur)
	}
	if !strings.Contains(ann["summary"], "over 85% utilized") || !strings.Contains(ann["description"], "for 10 minutes") {
		t.Errorf("DbPoolHighUtilization annotations do not follow _config: %v", ann)
	}

	// Every panel that draws the utilization alert line draws it at 0.85.
	drawn := 0
	for _, p := range panels(dash) {
		steps := thresholdSteps(p)
		for _, s := range steps {
			if s.color == "red" && s.value == 0.85 {
				drawn++
			}
			if s.color == "red" && s.value == 0.8 && strings.Contains(p["title"].(string), "tilization") {
				t.Errorf("panel %q still draws the old alert line", p["title"])
			}
		}
	}
	if drawn != 2 {
		t.Errorf("%d panels draw the alert line at 0.85, want 2 (Highest utilization, Pool utilization)", drawn)
	}
	if !strings.Contains(string(files["grafana/dbpool.json"]), "alert > 85% for 10 min") {
		t.Error("the utilization row title does not follow _config")
	}
}

func TestEveryThresholdIsATunable(t *testing.T) {
	// Each seed threshold changed to an odd value shows up in its alert expression.
	for _, tc := range []struct {
		config, alert, want string
	}{
		{"checkoutAlertSeconds: 0.07", "DbPoolSlowCheckout", "> 0.07"},
		{"timeoutsAlertPerMinute: 3", "DbPoolCheckoutTimeouts", "* 60 > 3"},
		{"overflowAlertRatio: 0.65", "DbPoolOverflowHigh", "> 0.65"},
		{"idleInTransactionAlertConnections: 7", "DbPoolIdleInTransaction", ") > 7"},
		{"longQueryAlertSeconds: 45", "DbPoolLongQuery", "> 45 and on"},
		{"serverConnectionsAlertRatio: 0.95", "DbPoolServerConnectionsNearLimit", "> 0.95"},
		{"notRecycledFactor: 2", "DbPoolConnectionsNotRecycled", "> 2 * ("},
		{"leakedConnectionsAlert: 2", "DbPoolConnectionLeak", "> 2"},
	} {
		_, rules, _ := generated(t, "{ _config+:: { "+tc.config+" } }")
		expr, _, _ := alertByName(t, rules, tc.alert)
		if !strings.Contains(expr, tc.want) {
			t.Errorf("%s: %s expr %q lacks %q", tc.config, tc.alert, expr, tc.want)
		}
	}
}

// With a job selector every selector of a raw metric in the rules carries it, the recording
// rules' outputs do not need it, and every expression still parses.
func TestSelectorReachesEveryRule(t *testing.T) {
	_, rules, dash := generated(t, `{ _config+:: { dbpoolSelector: 'job="dbpool"' } }`)
	n := 0
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			expr, err := parser.NewParser(parser.Options{}).ParseExpr(r.Expr)
			if err != nil {
				t.Errorf("%s%s: %v", r.Record, r.Alert, err)
				continue
			}
			for _, sel := range parser.ExtractSelectors(expr) {
				name, job := "", false
				for _, m := range sel {
					if m.Name == "__name__" {
						name = m.Value
					}
					job = job || m.Name == "job" && m.Value == "dbpool"
				}
				if strings.HasPrefix(name, "dbpool_") && !job {
					t.Errorf("%s%s: selector of %s has no job=\"dbpool\": %s", r.Record, r.Alert, name, r.Expr)
				}
				n++
			}
		}
	}
	if n < 20 {
		t.Errorf("only %d selectors seen", n)
	}
	vars := dash["templating"].(map[string]any)["list"].([]any)
	if q := vars[1].(map[string]any)["query"]; q != `label_values(dbpool_up{job="dbpool"}, job)` {
		t.Errorf("job variable query %q", q)
	}
}

func TestRunbookURLsFollowTheBase(t *testing.T) {
	_, rules, dash := generated(t, `{ _config+:: { runbookURLBase: 'https://git.example.com/dbpool' } }`)
	re := regexp.MustCompile(`^https://git\.example\.com/dbpool/docs/runbook\.md#[a-z0-9-]+$`)
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert != "" && !re.MatchString(r.Annotations["runbook_url"]) {
				t.Errorf("%s: runbook_url %q", r.Alert, r.Annotations["runbook_url"])
			}
		}
	}
	links := 0
	for _, p := range panels(dash) {
		for _, l := range asList(p["links"]) {
			links++
			if u := l.(map[string]any)["url"].(string); !re.MatchString(u) {
				t.Errorf("panel %q links to %q", p["title"], u)
			}
		}
	}
	if links < 20 {
		t.Errorf("only %d panel links", links)
	}
}

type step struct {
	value float64
	color string
}

func panels(dash map[string]any) []map[string]any {
	var out []map[string]any
	var walk func([]any)
	walk = func(ps []any) {
		for _, p := range ps {
			pm := p.(map[string]any)
			out = append(out, pm)
			walk(asList(pm["panels"]))
		}
	}
	walk(asList(dash["panels"]))
	return out
}

func thresholdSteps(p map[string]any) []step {
	fc, _ := p["fieldConfig"].(map[string]any)
	def, _ := fc["defaults"].(map[string]any)
	th, _ := def["thresholds"].(map[string]any)
	var out []step
	for _, s := range asList(th["steps"]) {
		sm := s.(map[string]any)
		v, _ := sm["value"].(float64)
		out = append(out, step{v, sm["color"].(string)})
	}
	return out
}

func asList(v any) []any {
	l, _ := v.([]any)
	return l
}

// The helpers that turn _config into PromQL and prose.
func TestUtils(t *testing.T) {
	vm := jsonnet.MakeVM()
	vm.Importer(&jsonnet.FileImporter{JPaths: []string{filepath.Join(repoRoot, mixinDir)}})
	for _, tc := range []struct{ expr, want string }{
		{`u.num(0.8)`, `"0.8"`},
		{`u.num(30)`, `"30"`},
		{`u.percent(0.7)`, `"70%"`},
		{`u.percent(0.855)`, `"85.5%"`},
		{`u.millis(0.05)`, `"50 ms"`},
		{`u.millis(0.0125, sep='')`, `"12.5ms"`},
		{`u.words('5m')`, `"5 minutes"`},
		{`u.words('1m')`, `"1 minute"`},
		{`u.words('30s')`, `"30 seconds"`},
		{`u.words('2h', short=true)`, `"2 h"`},
		{`u.words('1h30m')`, `"1h30m"`},
		{`u.sel({ dbpoolSelector: '' }, 'dbpool_up')`, `"dbpool_up"`},
		{`u.sel({ dbpoolSelector: 'job="a"' }, 'dbpool_up')`, `"dbpool_up{job=\"a\"}"`},
		{`u.sel({ dbpoolSelector: 'job="a"' }, 'x', 'pool!="p"')`, `"x{job=\"a\", pool!=\"p\"}"`},
		{`u.prose('one\ntwo\n')`, `"one two"`},
		{`u.runbook({ runbookURLBase: 'https://h/r' }, 'a-b')`, `"https://h/r/docs/runbook.md#a-b"`},
	} {
		out, err := vm.EvaluateAnonymousSnippet(filepath.Join(repoRoot, mixinDir, "test.jsonnet"),
			"local u = import 'lib/utils.libsonnet'; "+tc.expr)
		if err != nil {
			t.Errorf("%s: %v", tc.expr, err)
			continue
		}
		if got := strings.TrimSpace(out); got != tc.want {
			t.Errorf("%s = %s, want %s", tc.expr, got, tc.want)
		}
	}
}
