package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func variableNamed(t *testing.T, d map[string]any, name string) map[string]any {
	t.Helper()
	for _, v := range asList(d["templating"].(map[string]any)["list"]) {
		if vm := v.(map[string]any); vm["name"] == name {
			return vm
		}
	}
	t.Fatalf("no variable %s", name)
	return nil
}

func removeVariable(d map[string]any, name string) {
	tm := d["templating"].(map[string]any)
	tm["list"] = slices.DeleteFunc(asList(tm["list"]), func(v any) bool { return v.(map[string]any)["name"] == name })
}

func firstTarget(t *testing.T, d map[string]any, panel string) map[string]any {
	t.Helper()
	return asList(panelTitled(t, d, panel)["targets"])[0].(map[string]any)
}

func lintFindings(t *testing.T, d map[string]any) []violation {
	t.Helper()
	vs, err := lintDashboardJSON(encode(t, d))
	if err != nil {
		t.Fatal(err)
	}
	return vs
}

// The shipped dashboard breaks only the rules .lint excuses, and .lint excuses nothing else.
func TestShippedDashboardLint(t *testing.T) {
	cfg, err := loadLintConfig(filepath.Join(repoRoot, mixinDir, ".lint"))
	if err != nil {
		t.Fatal(err)
	}
	vs := lintFindings(t, shippedDashboard(t))
	failed, stale := cfg.apply(vs)
	for _, v := range failed {
		t.Errorf("not excused: %s", v)
	}
	for _, s := range stale {
		t.Errorf("stale exclusion: %s", s)
	}
	if len(vs) == 0 {
		t.Error("no findings at all: .lint lists at least one exception")
	}
}

func TestLintRules(t *testing.T) {
	for _, tc := range []struct {
		rule  string
		spoil func(t *testing.T, d map[string]any)
		want  string // in the message
	}{
		{"template-datasource-rule", func(t *testing.T, d map[string]any) { variableNamed(t, d, "datasource")["name"] = "ds" }, `named "ds"`},
		{"template-datasource-rule", func(_ *testing.T, d map[string]any) { removeVariable(d, "datasource") }, "does not have a templated data source"},
		{"template-job-rule", func(_ *testing.T, d map[string]any) { removeVariable(d, "job") }, "missing the job template"},
		{"template-job-rule", func(t *testing.T, d map[string]any) { variableNamed(t, d, "job")["allValue"] = ".*" }, "allValue should be '.+'"},
		{"template-job-rule", func(t *testing.T, d map[string]any) { variableNamed(t, d, "job")["multi"] = false }, "multi select"},
		{"template-instance-rule", func(t *testing.T, d map[string]any) { variableNamed(t, d, "instance")["label"] = "instance" }, `should be labeled "Instance"`},
		{"template-instance-rule", func(t *testing.T, d map[string]any) {
			variableNamed(t, d, "instance")["datasource"] = map[string]any{"type": "prometheus", "uid": "P1"}
		}, "should use datasource '$datasource'"},
		{"template-label-promql-rule", func(t *testing.T, d map[string]any) { variableNamed(t, d, "pool")["query"] = "dbpool_pool_info" }, "invalid 'query'"},
		{"template-label-promql-rule", func(t *testing.T, d map[string]any) {
			variableNamed(t, d, "pool")["query"] = "label_values(dbpool_pool_info{, pool)"
		}, "invalid templated label"},
		{"template-on-time-change-reload-rule", func(t *testing.T, d map[string]any) { variableNamed(t, d, "target")["refresh"] = 1 }, `"target" should refresh`},
		{"uneditable-dashboard", func(_ *testing.T, d map[string]any) { d["editable"] = true }, "is editable"},
		{"panel-datasource-rule", func(t *testing.T, d map[string]any) {
			panelTitled(t, d, "Pool utilization")["datasource"] = map[string]any{"type": "prometheus", "uid": "P1"}
		}, `uses "P1"`},
		{"panel-title-description-rule", func(t *testing.T, d map[string]any) { panelTitled(t, d, "Pool utilization")["description"] = "" }, "missing title or description"},
		{"panel-no-targets-rule", func(t *testing.T, d map[string]any) { delete(panelTitled(t, d, "Pool utilization"), "targets") }, "has no targets"},
		{"panel-units-rule", func(t *testing.T, d map[string]any) {
			delete(panelTitled(t, d, "Pool utilization")["fieldConfig"].(map[string]any)["defaults"].(map[string]any), "unit")
		}, `no or invalid units defined: ""`},
		{"panel-units-rule", func(t *testing.T, d map[string]any) {
			panelTitled(t, d, "Checkout timeouts in range")["fieldConfig"].(map[string]any)["defaults"].(map[string]any)["unit"] = "timeouts"
		}, `"timeouts"`},
		{"target-promql-rule", func(t *testing.T, d map[string]any) { firstTarget(t, d, "Pool utilization")["expr"] = "rate(x[5m]" }, "invalid PromQL query"},
		{"target-rate-interval-rule", func(t *testing.T, d map[string]any) {
			tg := firstTarget(t, d, "Checkouts per second")
			tg["expr"] = strings.Replace(tg["expr"].(string), "$__rate_interval", "5m", 1)
		}, "should use $__rate_interval"},
		{"target-job-rule", func(t *testing.T, d map[string]any) {
			tg := firstTarget(t, d, "Pool utilization")
			tg["expr"] = strings.Replace(tg["expr"].(string), `job=~"$job", `, "", 1)
		}, "job selector not found"},
		{"target-instance-rule", func(t *testing.T, d map[string]any) {
			tg := firstTarget(t, d, "Pool utilization")
			tg["expr"] = strings.Replace(tg["expr"].(string), `instance=~"$instance"`, `instance="$instance"`, 1)
		}, "instance selector is =, not =~"},
		{"target-counter-agg-rule", func(t *testing.T, d map[string]any) {
			firstTarget(t, d, "Checkouts per second")["expr"] = `sum(dbpool_checkouts_total{job=~"$job", instance=~"$instance"})`
		}, "is not aggregated with rate, irate, or increase"},
	} {
		t.Run(tc.rule+" "+tc.want, func(t *testing.T) {
			d := shippedDashboard(t)
			tc.spoil(t, d)
			found := false
			for _, v := range lintFindings(t, d) {
				found = found || v.Rule == tc.rule && strings.Contains(v.Message, tc.want)
			}
			if !found {
				t.Errorf("no %s finding with %q in %v", tc.rule, tc.want, lintFindings(t, d))
			}
		})
	}
}

// Panels whose values are all mapped to text need no unit; an empty mappings list does not
// count (the linter would let it pass).
func TestUnitsRuleMappings(t *testing.T) {
	d := shippedDashboard(t)
	logins := panelTitled(t, d, "Logins")["fieldConfig"].(map[string]any)["defaults"].(map[string]any)
	delete(logins, "unit")
	timeouts := panelTitled(t, d, "Timeouts in range")["fieldConfig"].(map[string]any)["defaults"].(map[string]any)
	delete(timeouts, "unit")
	if len(asList(timeouts["mappings"])) != 0 || len(asList(logins["mappings"])) == 0 {
		t.Fatal("test assumes Logins maps its values to text and Timeouts in range has an empty mappings list")
	}
	var panelsFound []string
	for _, v := range lintFindings(t, d) {
		if v.Rule == "panel-units-rule" {
			panelsFound = append(panelsFound, v.Panel)
		}
	}
	if !slices.Contains(panelsFound, "Timeouts in range") || slices.Contains(panelsFound, "Logins") {
		t.Errorf("units findings for %v, want Timeouts in range and not Logins", panelsFound)
	}
}

func TestExpandVariables(t *testing.T) {
	got := expandVariables(`rate(x{job=~"$job"}[$__rate_interval]) * $__range_s / ${pool} [[target]]`)
	want := `rate(x{job=~"$job"}[8869990787ms]) * 9397795485 / pool target`
	if got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestLintConfig(t *testing.T) {
	dir := t.TempDir()
	write := func(s string) string {
		path := filepath.Join(dir, ".lint")
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	if _, err := loadLintConfig(write("exclusions:\n  panel-units-rule:\n    entries:\n      - panel: A\n")); err == nil || !strings.Contains(err.Error(), "no reason") {
		t.Errorf("an exclusion without a reason: %v", err)
	}
	if _, err := loadLintConfig(write("exclusions:\n  panel-units-rule:\n    reason: r\n    entry: []\n")); err == nil {
		t.Error("an unknown key is accepted")
	}
	cfg, err := loadLintConfig(write(`exclusions:
  panel-units-rule:
    reason: tables of labels
    entries:
      - panel: A
      - panel: Gone
  target-job-rule:
    reason: one query
    entries:
      - panel: B
        targetIdx: "1"
  uneditable-dashboard:
    reason: whole rule
`))
	if err != nil {
		t.Fatal(err)
	}
	vs := []violation{
		{Rule: "panel-units-rule", Panel: "A", Target: -1},
		{Rule: "panel-units-rule", Panel: "C", Target: -1},
		{Rule: "target-job-rule", Panel: "B", Target: 0},
		{Rule: "target-job-rule", Panel: "B", Target: 1},
	}
	failed, stale := cfg.apply(vs)
	var got []string
	for _, v := range failed {
		got = append(got, v.Panel+"/"+v.Rule)
	}
	if strings.Join(got, " ") != "C/panel-units-rule B/target-job-rule" {
		t.Errorf("not excused: %v", got)
	}
	if len(stale) != 2 || !strings.Contains(stale[0], `"Gone"`) || stale[1] != "uneditable-dashboard" {
		t.Errorf("stale: %v, want the Gone entry and the unused uneditable-dashboard exclusion", stale)
	}
}
