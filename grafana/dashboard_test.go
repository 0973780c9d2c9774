package grafana

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

const (
	dashboardFile = "dbpool.json"
	rulesFile     = "../alerts/dbpool.rules.yml"
	metricsDoc    = "../docs/metrics.md"
	dsVar         = "${datasource}"
)

// The parts of Grafana's dashboard model the tests look at.
type dashboard struct {
	ID            *int       `json:"id"`
	UID           string     `json:"uid"`
	Title         string     `json:"title"`
	SchemaVersion int        `json:"schemaVersion"`
	Panels        []panel    `json:"panels"`
	Templating    templating `json:"templating"`
	Annotations   struct {
		List []annotation `json:"list"`
	} `json:"annotations"`
}

type datasourceRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type panel struct {
	ID          int            `json:"id"`
	Type        string         `json:"type"`
	Title       string         `json:"title"`
	Description string         `json:"description"`
	Datasource  *datasourceRef `json:"datasource"`
	GridPos     struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Targets     []target `json:"targets"`
	Panels      []panel  `json:"panels"` // rows: the panels of a collapsed row
	Repeat      string   `json:"repeat"`
	FieldConfig struct {
		Defaults struct {
			Unit       string `json:"unit"`
			Thresholds *struct {
				Mode  string `json:"mode"`
				Steps []struct {
					Color string   `json:"color"`
					Value *float64 `json:"value"`
				} `json:"steps"`
			} `json:"thresholds"`
			Custom struct {
				ThresholdsStyle struct {
					Mode string `json:"mode"`
				} `json:"thresholdsStyle"`
			} `json:"custom"`
		} `json:"defaults"`
	} `json:"fieldConfig"`
	Links []struct {
		Title string `json:"title"`
		URL   string `json:"url"`
	} `json:"links"`
}

type target struct {
	RefID      string         `json:"refId"`
	Expr       string         `json:"expr"`
	Datasource *datasourceRef `json:"datasource"`
}

type templating struct {
	List []variable `json:"list"`
}

type variable struct {
	Name       string          `json:"name"`
	Type       string          `json:"type"`
	Query      json.RawMessage `json:"query"` // a string, or {"query": "..."} in newer Grafana
	Definition string          `json:"definition"`
	Datasource *datasourceRef  `json:"datasource"`
	Multi      bool            `json:"multi"`
	IncludeAll bool            `json:"includeAll"`
}

type annotation struct {
	Name       string         `json:"name"`
	BuiltIn    int            `json:"builtIn"`
	Expr       string         `json:"expr"`
	Datasource *datasourceRef `json:"datasource"`
}

// queryText is the variable's query whichever way Grafana stored it.
func (v variable) queryText() (string, error) {
	if len(v.Query) == 0 {
		return "", nil
	}
	var s string
	if err := json.Unmarshal(v.Query, &s); err == nil {
		return s, nil
	}
	var o struct {
		Query string `json:"query"`
	}
	if err := json.Unmarshal(v.Query, &o); err != nil {
		return "", fmt.Errorf("variable %s: query is neither a string nor an object: %v", v.Name, err)
	}
	return o.Query, nil
}

func loadDashboard(t *testing.T) (dashboard, []byte) {
	t.Helper()
	data, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("%s is not a valid dashboard: %v", dashboardFile, err)
	}
	if dec.More() {
		t.Fatalf("%s: trailing data after the dashboard object", dashboardFile)
	}
	return d, data
}

// allPanels is every panel, rows and the panels inside collapsed rows included.
func allPanels(ps []panel) []panel {
	var out []panel
	for _, p := range ps {
		out = append(out, p)
		out = append(out, allPanels(p.Panels)...)
	}
	return out
}

// query is one PromQL expression of the dashboard.
type query struct {
	Where string // for messages: panel, variable or annotation
	Rule  string // recording rule name for promtool
	Expr  string // as written in the dashboard, with Grafana variables
}

var labelValuesRe = regexp.MustCompile(`^\s*label_values\(\s*(.*?)\s*,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*$`)

// queries extracts every PromQL expression: panel targets (rows included), the selectors
// of label_values() variable queries, and annotation queries. It also returns the label of
// each label_values() query, keyed by the selector's expression.
func queries(d dashboard) ([]query, map[string]string, error) {
	var (
		out       []query
		errs      []error
		varLabels = map[string]string{}
	)
	for _, p := range allPanels(d.Panels) {
		for _, tg := range p.Targets {
			where := fmt.Sprintf("panel %d %q target %s", p.ID, p.Title, tg.RefID)
			if strings.TrimSpace(tg.Expr) == "" {
				errs = append(errs, fmt.Errorf("%s: empty expr", where))
				continue
			}
			out = append(out, query{where, fmt.Sprintf("dashboard:panel_%d:%s", p.ID, tg.RefID), tg.Expr})
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		q, err := v.queryText()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		where := fmt.Sprintf("variable %s", v.Name)
		m := labelValuesRe.FindStringSubmatch(q)
		if m == nil {
			// label_values(label) without a metric, metrics(), query_result() and the like
			// are not checked here: say so rather than pass silently.
			errs = append(errs, fmt.Errorf("%s: query %q is not label_values(selector, label)", where, q))
			continue
		}
		if v.Definition != "" && v.Definition != q {
			errs = append(errs, fmt.Errorf("%s: definition %q differs from query %q", where, v.Definition, q))
		}
		out = append(out, query{where, "dashboard:variable:" + v.Name, m[1]})
		varLabels[m[1]] = m[2]
	}
	for i, a := range d.Annotations.List {
		if a.BuiltIn == 1 {
			continue
		}
		where := fmt.Sprintf("annotation %q", a.Name)
		if strings.TrimSpace(a.Expr) == "" {
			errs = append(errs, fmt.Errorf("%s: no expr", where))
			continue
		}
		out = append(out, query{where, fmt.Sprintf("dashboard:annotation:%d", i), a.Expr})
	}
	return out, varLabels, errors.Join(errs...)
}

// Values the variables take in the queries given to promtool. target and pool get the
// shape of a multi-value selection, which Grafana writes as a regex alternation.
var (
	timeVars = map[string]string{
		"__rate_interval": "1m", "__interval": "30s", "__range": "6h",
		"__interval_ms": "30000", "__range_s": "21600", "__range_ms": "21600000",
	}
	labelVars = map[string]string{
		"job":      `(dbpool|dbpool-sidecar)`,
		"instance": `(10.0.0.1:9187|10.0.0.2:9187)`,
		"target":   `(db-1:5432/app|pgbouncer:db-1:6432/pgbouncer)`,
		"pool":     `(api|app/app|application_name:other)`,
	}
	varRefRe     = regexp.MustCompile(`\$\{([A-Za-z0-9_]+)(:[^}]*)?\}|\$([A-Za-z0-9_]+)|\[\[([A-Za-z0-9_]+)(:[^\]]*)?\]\]`)
	labelVarUse  = regexp.MustCompile(`\b(job|instance|target|pool)\s*=~\s*"\$(job|instance|target|pool)"`)
	labelVarRefs = regexp.MustCompile(`\$\{?(job|instance|target|pool)\b`)
	// scrapeLabels are the labels Prometheus adds to every scraped series: the dashboard may
	// match on them although the exporter's own exposition does not carry them.
	scrapeLabels = map[string]bool{"job": true, "instance": true}
)

// substitute replaces Grafana's variables. With time set, only the time variables are
// replaced, leaving $target and $pool inside their label matchers for checkVariables.
func substitute(expr string, labels bool) (string, error) {
	var errs []error
	out := varRefRe.ReplaceAllStringFunc(expr, func(ref string) string {
		m := varRefRe.FindStringSubmatch(ref)
		name := m[1] + m[3] + m[4]
		switch {
		case m[4] != "":
			errs = append(errs, fmt.Errorf("%s: deprecated [[...]] syntax, use $%s", ref, name))
			return ref
		case m[2] != "":
			errs = append(errs, fmt.Errorf("%s: no format options, please: Grafana's default for Prometheus regex matchers is right", ref))
			return ref
		}
		if v, ok := timeVars[name]; ok {
			return v
		}
		if v, ok := labelVars[name]; ok {
			if labels {
				return strings.ReplaceAll(v, `\`, `\\`)
			}
			return ref
		}
		errs = append(errs, fmt.Errorf("unknown variable %s", ref))
		return ref
	})
	return out, errors.Join(errs...)
}

// checkVariables checks that $job, $instance, $target and $pool appear only as
// job=~"$job" and so on: with multi-value and All selections Grafana substitutes a regex,
// which = would compare literally.
func checkVariables(expr string) error {
	uses := labelVarUse.FindAllStringSubmatch(expr, -1)
	for _, u := range uses {
		if u[1] != u[2] {
			return fmt.Errorf("%s=~\"$%s\": label and variable differ", u[1], u[2])
		}
	}
	if n := len(labelVarRefs.FindAllString(expr, -1)); n != len(uses) {
		return fmt.Errorf("$job, $instance, $target and $pool may only appear as job=~\"$job\" and so on")
	}
	return nil
}

// promtool returns the path of promtool; the tests need the real one and fail without it.
func promtool(t *testing.T) string {
	t.Helper()
	name := os.Getenv("PROMTOOL")
	if name == "" {
		name = "promtool"
	}
	path, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found: run `make deps` (installs Debian's prometheus package, which has promtool): %v", name, err)
	}
	return path
}

type rulesYAML struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Record      string            `yaml:"record"`
			Alert       string            `yaml:"alert"`
			Expr        string            `yaml:"expr"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

// checkRules runs `promtool check rules` on recording rules made of the given expressions.
func checkRules(t *testing.T, rules map[string]string) (string, error) {
	t.Helper()
	type rule struct {
		Record string `yaml:"record"`
		Expr   string `yaml:"expr"`
	}
	names := make([]string, 0, len(rules))
	for n := range rules {
		names = append(names, n)
	}
	sort.Strings(names)
	var rs []rule
	for _, n := range names {
		rs = append(rs, rule{n, rules[n]})
	}
	doc := map[string]any{"groups": []map[string]any{{"name": "grafana_dashboard", "rules": rs}}}
	data, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "dashboard.rules.yml")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(promtool(t), "check", "rules", path).CombinedOutput()
	return string(out), err
}

// TestPromtoolRejectsBrokenQuery makes sure that checkRules can fail: a promtool that
// accepted anything would make TestDashboardQueries pass vacuously.
func TestPromtoolRejectsBrokenQuery(t *testing.T) {
	if out, err := checkRules(t, map[string]string{"broken:query": `rate(dbpool_checkouts_total[5m]`}); err == nil {
		t.Fatalf("promtool check rules accepted an unbalanced parenthesis:\n%s", out)
	}
	if out, err := checkRules(t, map[string]string{"fine:query": `rate(dbpool_checkouts_total[5m])`}); err != nil {
		t.Fatalf("promtool check rules rejected a valid query: %v\n%s", err, out)
	}
}

func TestDashboardStructure(t *testing.T) {
	d, raw := loadDashboard(t)
	// Exported for sharing, a dashboard carries no database id (Grafana assigns one on
	// import) but a stable uid, so that links and provisioning survive re-imports.
	var top map[string]json.RawMessage
	if err := json.Unmarshal(raw, &top); err != nil {
		t.Fatal(err)
	}
	if id, ok := top["id"]; ok && string(id) != "null" {
		t.Errorf("dashboard has an id (%s); remove it so that Grafana assigns one on import", id)
	}
	if !regexp.MustCompile(`^[a-zA-Z0-9_-]{1,40}$`).MatchString(d.UID) {
		t.Errorf("uid %q: want 1 to 40 characters of [a-zA-Z0-9_-]", d.UID)
	}
	if d.Title == "" {
		t.Error("no title")
	}
	if d.SchemaVersion < 36 {
		t.Errorf("schemaVersion %d: want 36 or later (datasource references as objects)", d.SchemaVersion)
	}

	vars := map[string]variable{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v
	}
	if ds, ok := vars["datasource"]; !ok {
		t.Error("no template variable named datasource")
	} else {
		q, _ := ds.queryText()
		if ds.Type != "datasource" || q != "prometheus" {
			t.Errorf("variable datasource: type %q query %q, want type datasource, query prometheus", ds.Type, q)
		}
	}
	for _, name := range []string{"target", "pool"} {
		v, ok := vars[name]
		if !ok {
			t.Errorf("no template variable %s", name)
			continue
		}
		if v.Type != "query" || !v.Multi || !v.IncludeAll {
			t.Errorf("variable %s: type %q multi %v includeAll %v; want a query variable with multi and includeAll",
				name, v.Type, v.Multi, v.IncludeAll)
		}
		if v.Datasource == nil || v.Datasource.UID != dsVar {
			t.Errorf("variable %s: datasource %+v, want uid %s", name, v.Datasource, dsVar)
		}
	}

	checkDS := func(where string, ds *datasourceRef) {
		if ds == nil || ds.UID != dsVar || ds.Type != "prometheus" {
			t.Errorf("%s: datasource %+v, want {type: prometheus, uid: %s}", where, ds, dsVar)
		}
	}
	ids := map[int]string{}
	oneSentence := regexp.MustCompile(`[.!?]\s+[A-Z]`)
	for _, p := range allPanels(d.Panels) {
		where := fmt.Sprintf("panel %d %q", p.ID, p.Title)
		if prev, dup := ids[p.ID]; dup {
			t.Errorf("%s: id also used by %q", where, prev)
		}
		ids[p.ID] = p.Title
		g := p.GridPos
		if g.W <= 0 || g.H <= 0 || g.X < 0 || g.X+g.W > 24 {
			t.Errorf("%s: gridPos %+v outside the 24 columns", where, g)
		}
		if p.Type == "row" {
			continue
		}
		checkDS(where, p.Datasource)
		if len(p.Targets) == 0 {
			t.Errorf("%s: no queries", where)
		}
		for _, tg := range p.Targets {
			checkDS(where+" target "+tg.RefID, tg.Datasource)
		}
		if p.Description == "" {
			t.Errorf("%s: no description", where)
		} else if !strings.HasSuffix(p.Description, ".") || oneSentence.MatchString(p.Description) {
			t.Errorf("%s: description should be one sentence ending in a period: %q", where, p.Description)
		}
		// The activity source cannot see a connection that is checked out but between
		// transactions, so its in-use counts are a lower bound; panels built on them say so.
		for _, tg := range p.Targets {
			if strings.Contains(tg.Expr, "dbpool_in_use_connections") || strings.Contains(tg.Expr, "dbpool_utilization_ratio") {
				if !strings.Contains(p.Description, "lower bound") {
					t.Errorf("%s: uses in-use connections but the description does not say that the activity source's count is a lower bound", where)
				}
				break
			}
		}
	}
	// Panels that overlap are pushed around by Grafana on load and end up elsewhere than
	// meant. The panels of a collapsed row have their own coordinates.
	checkOverlap := func(ps []panel) {
		for i, a := range ps {
			for _, b := range ps[i+1:] {
				ga, gb := a.GridPos, b.GridPos
				if ga.X < gb.X+gb.W && gb.X < ga.X+ga.W && ga.Y < gb.Y+gb.H && gb.Y < ga.Y+ga.H {
					t.Errorf("panels %q %+v and %q %+v overlap", a.Title, ga, b.Title, gb)
				}
			}
		}
	}
	checkOverlap(d.Panels)
	for _, p := range d.Panels {
		if p.Type == "row" && len(p.Panels) > 0 {
			checkOverlap(p.Panels)
		}
	}
	for _, a := range d.Annotations.List {
		if a.BuiltIn != 1 {
			checkDS(fmt.Sprintf("annotation %q", a.Name), a.Datasource)
		}
	}
	// No hard-wired datasource anywhere: every uid is the variable (or Grafana's built-in
	// annotation source).
	for _, m := range regexp.MustCompile(`"uid":\s*"([^"]*)"`).FindAllStringSubmatch(string(raw), -1) {
		if m[1] != dsVar && m[1] != "-- Grafana --" && m[1] != d.UID {
			t.Errorf("hard-wired datasource uid %q", m[1])
		}
	}
}

func TestCheckVariables(t *testing.T) {
	for _, tc := range []struct {
		expr string
		ok   bool
	}{
		{`x{target=~"$target", pool=~"$pool"}`, true},
		{`x{target=~"${target}"}`, false}, // labelVarUse wants the plain form
		{`x{target="$target"}`, false},    // = breaks with multi-value selections
		{`x{pool=~"$target"}`, false},
		{`x{target=~"$target|other"}`, false},
		{`x{target=~"$target"} + on (pool) group_left label_replace(y, "p", "$pool", "", "")`, false},
		{`x{job="a"}`, true},
		{`x{job=~"$job", instance=~"$instance", target=~"$target"}`, true},
		{`x{job="$job"}`, false},
		{`x{instance=~"$job"}`, false},
	} {
		err := checkVariables(tc.expr)
		if (err == nil) != tc.ok {
			t.Errorf("checkVariables(%q) = %v, want ok %v", tc.expr, err, tc.ok)
		}
	}
	for _, tc := range []struct {
		expr, want string
		ok         bool
	}{
		{`rate(x[$__rate_interval])`, `rate(x[1m])`, true},
		{`increase(x[$__range])`, `increase(x[6h])`, true},
		{`x{target=~"$target"}`, `x{target=~"(db-1:5432/app|pgbouncer:db-1:6432/pgbouncer)"}`, true},
		{`x{target=~"[[target]]"}`, ``, false},
		{`x{target=~"${target:pipe}"}`, ``, false},
		{`x{target=~"$tagret"}`, ``, false},
	} {
		got, err := substitute(tc.expr, true)
		if (err == nil) != tc.ok || tc.ok && got != tc.want {
			t.Errorf("substitute(%q) = %q, %v; want %q, ok %v", tc.expr, got, err, tc.want, tc.ok)
		}
	}
}

// loadRules returns the names of the recording rules and the alerts (name -> rule) of
// the shipped rules file.
func loadRules(t *testing.T) (records map[string]bool, alerts map[string]alertRule) {
	t.Helper()
	data, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	var rf rulesYAML
	if err := yaml.Unmarshal(data, &rf); err != nil {
		t.Fatalf("%s: %v", rulesFile, err)
	}
	records, alerts = map[string]bool{}, map[string]alertRule{}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			switch {
			case r.Record != "":
				records[r.Record] = true
			case r.Alert != "":
				alerts[r.Alert] = alertRule{Expr: r.Expr, RunbookURL: r.Annotations["runbook_url"]}
			}
		}
	}
	if len(records) == 0 || len(alerts) == 0 {
		t.Fatalf("%s: found %d recording rules and %d alerts", rulesFile, len(records), len(alerts))
	}
	return records, alerts
}

type alertRule struct {
	Expr, RunbookURL string
}

// recordLabels is the label set a recording rule keeps, from the level of its
// level:metric:operations name: target_pool:... keeps target and pool.
func recordLabels(name string) map[string]bool {
	labels := map[string]bool{}
	level, _, _ := strings.Cut(name, ":")
	for _, l := range strings.Split(level, "_") {
		labels[l] = true
	}
	return labels
}

// contractMetrics returns the metric names of the metric table in docs/metrics.md, with the _bucket, _sum
// and _count series of histograms.
func contractMetrics(t *testing.T) map[string]bool {
	t.Helper()
	data, err := os.ReadFile(metricsDoc)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	row := regexp.MustCompile("(?m)^\\| `(dbpool_[a-z_]*)` \\| ([a-z]+) \\|")
	for _, m := range row.FindAllStringSubmatch(string(data), -1) {
		if m[2] == "histogram" {
			out[m[1]+"_bucket"], out[m[1]+"_sum"], out[m[1]+"_count"] = true, true, true
		} else {
			out[m[1]] = true
		}
	}
	if len(out) == 0 {
		t.Fatalf("%s: no metric table found", metricsDoc)
	}
	return out
}

// builtinSeries are series that Prometheus itself makes and a dashboard may use.
var builtinSeries = map[string]bool{"ALERTS": true}

// TestDashboardQueries checks every query of the dashboard: it parses as PromQL (real
// promtool), it uses the variables correctly, every metric it names is one that the real
// exporter exports when it watches a real PostgreSQL and PgBouncer (or a recording rule of
// alerts/dbpool.rules.yml) with the labels the query matches on, rate() and increase() see
// only counters, and a real Prometheus scraping that exporter returns data for it.
func TestDashboardQueries(t *testing.T) {
	d, _ := loadDashboard(t)
	qs, varLabels, err := queries(d)
	if err != nil {
		t.Error(err)
	}
	if len(qs) < 20 {
		t.Fatalf("only %d queries found in %s; the extraction is broken", len(qs), dashboardFile)
	}
	records, alerts := loadRules(t)
	contract := contractMetrics(t)

	// Parse every query for its selectors and check the variables.
	type parsed struct {
		query
		sels []selector
	}
	var ps []parsed
	rules := map[string]string{}
	wantSet := map[string]bool{}
	for _, q := range qs {
		if err := checkVariables(q.Expr); err != nil {
			t.Errorf("%s: %v\n%s", q.Where, err, q.Expr)
		}
		timed, err := substitute(q.Expr, false)
		if err != nil {
			t.Errorf("%s: %v", q.Where, err)
			continue
		}
		sels, err := selectors(timed)
		if err != nil {
			t.Errorf("%s: cannot read %q: %v", q.Where, q.Expr, err)
			continue
		}
		if len(sels) == 0 {
			t.Errorf("%s: no metric in %q", q.Where, q.Expr)
		}
		full, err := substitute(q.Expr, true)
		if err != nil {
			t.Errorf("%s: %v", q.Where, err)
			continue
		}
		rules[q.Rule] = full
		ps = append(ps, parsed{q, sels})
		for _, s := range sels {
			switch {
			case s.Name == "":
				t.Errorf("%s: selector without a metric name in %q", q.Where, q.Expr)
			case records[s.Name], builtinSeries[s.Name]:
			default:
				wantSet[s.Name] = true
			}
		}
	}

	out, err := checkRules(t, rules)
	if err != nil {
		var b strings.Builder
		for _, q := range qs {
			fmt.Fprintf(&b, "%s = %s\n", q.Rule, q.Where)
		}
		t.Errorf("promtool check rules failed: %v\n%s\nrules:\n%s", err, out, b.String())
	}

	var want []string
	for n := range wantSet {
		want = append(want, n)
		if !contract[n] {
			t.Errorf("metric %s is not in the metric table of docs/metrics.md (the contract between exporter, alerts and dashboard)", n)
		}
	}
	sort.Strings(want)
	exported, exporterAddr := exportedSeries(t, want)
	if m := missing(want, exported); len(m) > 0 {
		t.Errorf("the dashboard uses metrics the exporter did not export: %s", strings.Join(m, ", "))
	}

	for _, p := range ps {
		for _, s := range p.sels {
			var labels map[string]bool
			switch {
			case builtinSeries[s.Name]:
				checkAlertsSelector(t, p.Where, s, alerts)
				continue
			case records[s.Name]:
				labels = recordLabels(s.Name)
				if s.Func == "rate" || s.Func == "irate" || s.Func == "increase" {
					t.Errorf("%s: %s() of recording rule %s", p.Where, s.Func, s.Name)
				}
			default:
				ser, ok := exported[s.Name]
				if !ok {
					continue // reported above
				}
				labels = ser.Labels
				// Never rate() a gauge: a rate of an age or a count is meaningless.
				if (s.Func == "rate" || s.Func == "irate" || s.Func == "increase") && !ser.counterLike(s.Name) {
					t.Errorf("%s: %s() of %s, a %s", p.Where, s.Func, s.Name, ser.Type)
				}
			}
			// Every selector of a metric with a target (pool) label is restricted by the
			// variable, or names its value outright.
			for _, l := range []string{"target", "pool"} {
				// A variable's own query lists the values of its label and so cannot
				// restrict it; pool's query is restricted by target, and job and instance
				// come before target.
				vl := varLabels[p.Expr]
				if !labels[l] || vl == l || vl == "job" || vl == "instance" {
					continue
				}
				ms := s.matchersOn(l)
				// Leaving out the exporter's own connection is allowed on top.
				if l == "pool" {
					ms = slices.DeleteFunc(ms, func(m matcher) bool { return m.Op == "!=" && m.Value == "dbpool_exporter" })
				}
				ok := len(ms) == 1 && (ms[0].Op == "=~" && ms[0].Value == "$"+l || ms[0].Op == "=" && ms[0].Value != "")
				if !ok {
					t.Errorf("%s: %s needs %s=~\"$%s\" (or %s=\"literal\"), has %+v", p.Where, s.Name, l, l, l, ms)
				}
			}
			for _, m := range s.Matchers {
				if !labels[m.Label] && !scrapeLabels[m.Label] {
					t.Errorf("%s: %s has no label %s", p.Where, s.Name, m.Label)
				}
			}
		}
		if label, ok := varLabels[p.Expr]; ok {
			for _, s := range p.sels {
				if ser, ok := exported[s.Name]; ok && !ser.Labels[label] && !scrapeLabels[label] {
					t.Errorf("%s: label_values(%s, %s): %s has no label %s", p.Where, p.Expr, label, s.Name, label)
				}
			}
		}
	}

	// Run every panel and variable query, as Grafana would with All selected, against a real
	// Prometheus scraping the exporter: each must return data. A query that parses but
	// matches nothing (a vector match on the wrong labels, a filter that drops everything)
	// is a panel that says "No data" forever. Annotations are exempt: ALERTS exists only
	// while an alert fires.
	prom := startPrometheus(t, exporterAddr)
	prom.waitSamples(t, 5)
	for _, q := range qs {
		if strings.HasPrefix(q.Where, "annotation") {
			continue
		}
		expr, err := liveExpr(q.Expr)
		if err != nil {
			continue // reported above
		}
		n, err := prom.query(expr)
		switch {
		case err != nil:
			t.Errorf("%s: Prometheus: %v\n%s", q.Where, err, expr)
		case n == 0:
			t.Errorf("%s: no data from Prometheus scraping the exporter:\n%s", q.Where, expr)
		}
	}
	// The checkout-time and timeout panels show the application's exact view (the app
	// source, from a real SQLAlchemy pool of 1 under three callers), not only PgBouncer's.
	for _, expr := range []string{
		`dbpool_pool_info{pool="default", source="app"}`,
		`rate(dbpool_checkout_duration_seconds_count{pool="default", source="app"}[1m]) > 0`,
		`histogram_quantile(0.95, sum by (le) (rate(dbpool_checkout_duration_seconds_bucket{pool="default", source="app"}[1m]))) > 0`,
		`increase(dbpool_checkout_timeouts_total{pool="default", source="app"}[1m]) > 0`,
	} {
		if n, err := prom.query(expr); err != nil || n == 0 {
			t.Errorf("no app-source data (%d series, %v) for %s", n, err, expr)
		}
	}
}

// checkAlertsSelector checks an ALERTS{alertname=~...} selector against the shipped alerts,
// so that renaming alerts does not silently empty the annotation.
func checkAlertsSelector(t *testing.T, where string, s selector, alerts map[string]alertRule) {
	t.Helper()
	for _, m := range s.matchersOn("alertname") {
		pattern := "^" + regexp.QuoteMeta(m.Value) + "$"
		switch m.Op {
		case "=~":
			pattern = "^(?:" + m.Value + ")$"
		case "=":
		default:
			continue
		}
		re, err := regexp.Compile(pattern)
		if err != nil {
			t.Errorf("%s: alertname regex %q: %v", where, m.Value, err)
			continue
		}
		var names []string
		for a := range alerts {
			if !re.MatchString(a) {
				names = append(names, a)
			}
		}
		sort.Strings(names)
		if len(names) > 0 {
			t.Errorf("%s: alertname %s%q misses alerts of %s: %v", where, m.Op, m.Value, rulesFile, names)
		}
	}
}

func TestVariableQueryText(t *testing.T) {
	for _, tc := range []struct {
		raw, want string
		ok        bool
	}{
		{`"label_values(dbpool_up, target)"`, "label_values(dbpool_up, target)", true},
		{`{"qryType": 1, "query": "label_values(dbpool_up, target)", "refId": "X"}`, "label_values(dbpool_up, target)", true},
		{``, "", true},
		{`42`, "", false},
	} {
		v := variable{Name: "v", Query: json.RawMessage(tc.raw)}
		got, err := v.queryText()
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("queryText(%s) = %q, %v; want %q, ok %v", tc.raw, got, err, tc.want, tc.ok)
		}
	}
}
