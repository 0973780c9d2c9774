package main

import (
	"encoding/json"
	"strings"
	"testing"
)

// shippedDashboard is the generated dashboard as generic JSON, for tests to break.
func shippedDashboard(t *testing.T) map[string]any {
	t.Helper()
	_, _, dash := generated(t, "")
	return dash
}

func encode(t *testing.T, v any) []byte {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// panelTitled finds a panel of the dashboard (rows included) by title.
func panelTitled(t *testing.T, dash map[string]any, title string) map[string]any {
	t.Helper()
	for _, p := range panels(dash) {
		if p["title"] == title {
			return p
		}
	}
	t.Fatalf("no panel %q", title)
	return nil
}

func TestShippedDashboardMatchesSchema(t *testing.T) {
	if err := checkSchema(encode(t, shippedDashboard(t))); err != nil {
		t.Fatal(err)
	}
}

func TestSchemaRejects(t *testing.T) {
	for _, tc := range []struct {
		name  string
		spoil func(t *testing.T, d map[string]any)
		want  string
	}{
		{"unknown dashboard field", func(_ *testing.T, d map[string]any) { d["refresh_rate"] = "1m" }, "unexpected field 'refresh_rate'"},
		{"unknown panel field", func(t *testing.T, d map[string]any) { panelTitled(t, d, "Pool utilization")["colour"] = "red" }, "unexpected field 'colour'"},
		{"unknown option of a panel type", func(t *testing.T, d map[string]any) {
			panelTitled(t, d, "Checkout timeouts in range")["options"].(map[string]any)["minSizeHeight"] = 16
		}, "unexpected field 'minSizeHeight'"},
		{"unknown field in fieldConfig.defaults", func(t *testing.T, d map[string]any) {
			panelTitled(t, d, "Pool utilization")["fieldConfig"].(map[string]any)["defaults"].(map[string]any)["unitt"] = "s"
		}, "fieldConfig.defaults.unitt: not in the dashboard schema"},
		{"wrong type", func(t *testing.T, d map[string]any) {
			panelTitled(t, d, "Pool utilization")["options"].(map[string]any)["legend"].(map[string]any)["calcs"] = "mean"
		}, "legend.calcs"},
		{"unknown target field", func(t *testing.T, d map[string]any) {
			panelTitled(t, d, "Pool utilization")["targets"].([]any)[0].(map[string]any)["exprr"] = "up"
		}, "unexpected field 'exprr'"},
		{"target of another data source", func(t *testing.T, d map[string]any) {
			p := panelTitled(t, d, "Login time")
			p["datasource"] = map[string]any{"type": "loki", "uid": "${datasource}"}
			p["targets"].([]any)[0].(map[string]any)["datasource"] = map[string]any{"type": "loki", "uid": "${datasource}"}
		}, "did not decode as a Prometheus query"},
		{"panel type unknown to the SDK", func(t *testing.T, d map[string]any) { panelTitled(t, d, "Login time")["type"] = "fancy-graph" }, `panel type "fancy-graph"`},
		{"panel without targets", func(t *testing.T, d map[string]any) { delete(panelTitled(t, d, "Login time"), "targets") }, "no targets"},
		{"missing required panel link field", func(t *testing.T, d map[string]any) {
			delete(panelTitled(t, d, "Login time")["links"].([]any)[0].(map[string]any), "type")
		}, "links[0].type: required field is missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := shippedDashboard(t)
			tc.spoil(t, d)
			err := checkSchema(encode(t, d))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error with %q", err, tc.want)
			}
		})
	}
}

func TestSchemaIgnoresExportEnvelope(t *testing.T) {
	d := shippedDashboard(t)
	d["__inputs"] = []any{map[string]any{"name": "DS_PROMETHEUS", "type": "datasource"}}
	if err := checkSchema(encode(t, d)); err != nil {
		t.Error(err)
	}
}

func TestLostValues(t *testing.T) {
	in := map[string]any{"a": 1.0, "b": []any{}, "c": map[string]any{"d": "x", "e": "y"}, "f": []any{1.0, 2.0}}
	out := map[string]any{"a": 1.0, "c": map[string]any{"d": "x"}, "f": []any{1.0, 3.0}, "g": true}
	got := strings.Join(lostValues("", in, out), " ")
	if got != ".c.e .f[1]" {
		t.Errorf("lost %q, want .c.e and .f[1] (an empty list may come back absent, added fields are fine)", got)
	}
}
