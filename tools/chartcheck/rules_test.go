package chartcheck

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"sigs.k8s.io/yaml"
)

// resync is what every drift message tells the reader to do.
const resync = "the chart carries a copy of alerts/ and grafana/ (a chart cannot read files outside its " +
	"directory): run `make chart-sync` to copy them into charts/dbpool-exporter/files/, then `make chart`; " +
	"if rendering then fails on a threshold, update the substitution table in templates/prometheusrule.yaml"

// shippedRules decodes alerts/dbpool.rules.yml strictly into the Prometheus Operator's rule
// groups: the shipped file must be valid as a PrometheusRule's spec too.
func shippedRules(t *testing.T) []monitoringv1.RuleGroup {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(RepoRoot(), "alerts", "dbpool.rules.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var spec monitoringv1.PrometheusRuleSpec
	if err := yaml.UnmarshalStrict(data, &spec); err != nil {
		t.Fatalf("alerts/dbpool.rules.yml as a PrometheusRule spec: %v", err)
	}
	return spec.Groups
}

// renderedRules renders a value set and returns its PrometheusRule's groups.
func renderedRules(t *testing.T, file string) []monitoringv1.RuleGroup {
	t.Helper()
	_, o := render(t, file)
	if len(o.PrometheusRules) != 1 {
		t.Fatalf("%s: want one PrometheusRule, got %d", file, len(o.PrometheusRules))
	}
	return o.PrometheusRules[0].Spec.Groups
}

// writeRulesFile writes groups as a Prometheus rules file dir/dbpool.rules.yml.
func writeRulesFile(t *testing.T, dir string, groups []monitoringv1.RuleGroup) string {
	t.Helper()
	data, err := yaml.Marshal(monitoringv1.PrometheusRuleSpec{Groups: groups})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "dbpool.rules.yml")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// promtool runs promtool in dir and returns its combined output and error.
func promtool(t *testing.T, dir string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(program(t, "PROMTOOL", "promtool"), args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestRulesFileIsInSync: the chart's copy is the shipped file, byte for byte.
func TestRulesFileIsInSync(t *testing.T) {
	for _, f := range []struct{ shipped, copy string }{
		{"alerts/dbpool.rules.yml", "charts/dbpool-exporter/files/dbpool.rules.yml"},
		{"grafana/dbpool.json", "charts/dbpool-exporter/files/dbpool.json"},
	} {
		a, errA := os.ReadFile(filepath.Join(RepoRoot(), f.shipped))
		b, errB := os.ReadFile(filepath.Join(RepoRoot(), f.copy))
		if errA != nil || errB != nil {
			t.Fatalf("%v %v; %s", errA, errB, resync)
		}
		if !bytes.Equal(a, b) {
			t.Errorf("%s differs from %s: %s", f.copy, f.shipped, resync)
		}
	}
}

// TestRulesEqualShipped: with the default thresholds the PrometheusRule carries exactly the
// rule groups of alerts/dbpool.rules.yml, compared as decoded structures; promtool checks
// them and runs the shipped unit tests on them.
func TestRulesEqualShipped(t *testing.T) {
	got := renderedRules(t, "ci/single-values.yaml")
	want := shippedRules(t)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("the PrometheusRule's groups differ from alerts/dbpool.rules.yml:\n%s\n%s", firstDifference(got, want), resync)
	}
	dir := t.TempDir()
	writeRulesFile(t, dir, got)
	out, err := promtool(t, dir, "check", "rules", "--lint=all", "--lint-fatal", "dbpool.rules.yml")
	t.Logf("promtool check rules (rendered, default thresholds):\n%s", out)
	if err != nil {
		t.Fatalf("promtool check rules: %v", err)
	}
	tests, err := os.ReadFile(filepath.Join(RepoRoot(), "alerts", "dbpool.rules_test.yml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "dbpool.rules_test.yml"), tests, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err = promtool(t, dir, "test", "rules", "dbpool.rules_test.yml")
	t.Logf("promtool test rules alerts/dbpool.rules_test.yml (rendered rules):\n%s", out)
	if err != nil {
		t.Fatalf("promtool test rules: %v", err)
	}
}

// thresholdChanges are the expression fragments ci/thresholds-values.yaml must change, and
// the text of the annotation that restates the threshold.
var thresholdChanges = map[string]struct{ shipped, chart, annotation string }{
	"DbPoolServerConnectionsNearLimit": {"> 0.9", "> 0.95", "(threshold 95% for 5 minutes)"},
	"DbPoolHighUtilization":            {"> 0.8", "> 0.9", "is over 90% utilized"},
	"DbPoolSlowCheckout":               {"> 0.05", "> 0.1", "(threshold 100ms)"},
	"DbPoolCheckoutTimeouts":           {"* 60 > 1", "* 60 > 2", "threshold 2)"},
	"DbPoolOverflowHigh":               {"> 0.8", "> 0.9", "(threshold 90%)"},
	"DbPoolIdleInTransaction":          {") > 5", ") > 10", "(threshold 10)"},
	"DbPoolLongQuery":                  {"> 30 and", "> 60 and", "(threshold 60s)"},
	"DbPoolConnectionsNotRecycled":     {"> 1.5 *", "> 2 *", "more than 2 x DB_POOL_RECYCLE"},
	"DbPoolCheckoutConnectFailures":    {"* 60 > 1", "* 60 > 2", "threshold 2)"},
	"DbPoolConnectionLeak":             {"> 0", "> 2", "(threshold 2)"},
}

// TestRulesWithChangedThresholds: ci/thresholds-values.yaml changes every threshold, adds a
// label and disables one alert. The rendered rules carry the new values and nothing else
// changes; promtool accepts them, and a unit test shows them firing at the new thresholds and
// not at the old ones (the same test fails on the shipped rules).
func TestRulesWithChangedThresholds(t *testing.T) {
	got := renderedRules(t, "ci/thresholds-values.yaml")
	want := shippedRules(t)
	if len(got) != len(want) {
		t.Fatalf("%d groups, want %d", len(got), len(want))
	}
	changed := map[string]bool{}
	for gi := range want {
		var wantRules []monitoringv1.Rule
		for _, r := range want[gi].Rules {
			if r.Alert != "DbPoolActivityRestricted" { // disabledAlerts
				wantRules = append(wantRules, r)
			}
		}
		if len(got[gi].Rules) != len(wantRules) {
			t.Fatalf("group %s: %d rules, want %d (all but the disabled alert)", got[gi].Name, len(got[gi].Rules), len(wantRules))
		}
		for i, g := range got[gi].Rules {
			w := *wantRules[i].DeepCopy()
			if w.Alert != "" {
				if g.Labels["team"] != "payments" {
					t.Errorf("%s: additionalAlertLabels team=payments missing: %v", w.Alert, g.Labels)
				}
				w.Labels["team"] = "payments"
			} else if _, ok := g.Labels["team"]; ok {
				t.Errorf("recording rule %s got the alert label team", w.Record)
			}
			if c, ok := thresholdChanges[w.Alert]; ok {
				expr := g.Expr.String()
				// "> 0.9" must be gone, but may start "> 0.95".
				old := regexp.MustCompile(regexp.QuoteMeta(c.shipped) + `([^0-9.]|$)`)
				if !strings.Contains(expr, c.chart) || old.MatchString(expr) {
					t.Errorf("%s: expression should carry %q instead of %q:\n%s", w.Alert, c.chart, c.shipped, expr)
				}
				changed[w.Alert] = true
				// The rest of the rule is the shipped one, but for the annotation that restates
				// the threshold.
				w.Expr = g.Expr
				restated := 0
				for k, v := range g.Annotations {
					if v != w.Annotations[k] && strings.Contains(v, c.annotation) {
						w.Annotations[k] = v
						restated++
					}
				}
				if restated != 1 {
					t.Errorf("%s: want one annotation restating the threshold as %q, got %d: %v", w.Alert, c.annotation, restated, g.Annotations)
				}
			}
			if !reflect.DeepEqual(g, w) {
				t.Errorf("rule %s%s differs from the shipped one beyond its threshold:\n%s", w.Alert, w.Record, firstDifference(g, w))
			}
		}
	}
	if len(changed) != len(thresholdChanges) {
		t.Errorf("changed %d alerts, want %d", len(changed), len(thresholdChanges))
	}

	tests, err := os.ReadFile("testdata/thresholds.rules_test.yml")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		groups []monitoringv1.RuleGroup
		pass   bool
	}{
		{"chart thresholds", got, true},
		{"shipped thresholds", want, false},
	} {
		dir := t.TempDir()
		writeRulesFile(t, dir, tc.groups)
		if err := os.WriteFile(filepath.Join(dir, "thresholds.rules_test.yml"), tests, 0o644); err != nil {
			t.Fatal(err)
		}
		if tc.pass {
			out, err := promtool(t, dir, "check", "rules", "--lint=all", "--lint-fatal", "dbpool.rules.yml")
			t.Logf("promtool check rules (%s):\n%s", tc.name, out)
			if err != nil {
				t.Errorf("promtool check rules (%s): %v", tc.name, err)
			}
		}
		out, err := promtool(t, dir, "test", "rules", "thresholds.rules_test.yml")
		if (err == nil) != tc.pass {
			t.Errorf("promtool test rules testdata/thresholds.rules_test.yml on the %s: passed %v, want %v:\n%s", tc.name, err == nil, tc.pass, out)
		} else {
			t.Logf("promtool test rules testdata/thresholds.rules_test.yml on the %s: passed %v, as it should", tc.name, err == nil)
		}
	}
}

// firstDifference describes where two decoded values first differ, as YAML lines.
func firstDifference(got, want any) string {
	g, _ := yaml.Marshal(got)
	w, _ := yaml.Marshal(want)
	gl, wl := strings.Split(string(g), "\n"), strings.Split(string(w), "\n")
	for i := 0; i < len(gl) || i < len(wl); i++ {
		var a, b string
		if i < len(gl) {
			a = gl[i]
		}
		if i < len(wl) {
			b = wl[i]
		}
		if a != b {
			return fmt.Sprintf("line %d of the YAML form:\n  chart:   %s\n  shipped: %s", i+1, a, b)
		}
	}
	return "(equal as YAML)"
}
