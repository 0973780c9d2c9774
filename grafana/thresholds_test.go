package grafana

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// The thresholds of the seed document's "Metrics to Monitor" (the connection pooling tuning
// guide this exporter is built around). They are written down here once; the test below
// checks that both the dashboard and alerts/dbpool.rules.yml use them, so that none of the
// three can drift from the others without a failing test.
const (
	seedUtilizationTargetAvg  = 0.70 // "Target: < 70% average"
	seedUtilizationTargetPeak = 0.90 // "< 90% peak"
	seedUtilizationAlert      = 0.80 // "Alert: > 80% for more than 5 minutes"
	seedCheckoutTarget        = 0.010
	seedCheckoutAlert         = 0.050
	seedTimeoutsAlertPerMin   = 1 // "Target: 0", "Alert: > 1 per minute"
	seedOverflowTarget        = 0.50
	seedOverflowAlert         = 0.80
	seedIdleInTxAlert         = 5
	seedLongQueryTarget       = 5
	seedLongQueryAlert        = 30
	// Not from the seed: the rules' own line for server connections against
	// max_connections - reserved (the seed's "too many connections" problem).
	rulesServerConnectionsAlert = 0.9
)

type step struct {
	Value float64
	Color string
}

var thresholdCases = []struct {
	name     string
	row      string   // the dashboard row the main panel sits in ("" = any)
	panels   []string // panels that draw the thresholds; the first is the row's main panel
	unit     string   // unit of those panels: the thresholds below are in it
	steps    []step   // steps above the base step, in order
	metric   string   // the panels' queries use it
	alert    string   // alert of alerts/dbpool.rules.yml for the same threshold
	alertAt  float64  // the alert's threshold, in the panels' unit
	ruleUses string   // the alert's expression contains this
}{
	{
		name: "1. pool utilization", row: "1 · Pool utilization",
		panels: []string{"Pool utilization", "Highest utilization"}, unit: "percentunit",
		steps:  []step{{seedUtilizationTargetAvg, "yellow"}, {seedUtilizationAlert, "red"}, {seedUtilizationTargetPeak, "dark-red"}},
		metric: "dbpool_utilization_ratio", alert: "DbPoolHighUtilization", alertAt: seedUtilizationAlert,
		ruleUses: "target_pool:dbpool_utilization:ratio",
	},
	{
		name: "2. checkout time", row: "2 · Checkout time",
		panels: []string{"Average checkout time", "Slowest avg checkout"}, unit: "s",
		steps:  []step{{seedCheckoutTarget, "yellow"}, {seedCheckoutAlert, "red"}},
		metric: "dbpool_checkout_duration_seconds_count", alert: "DbPoolSlowCheckout", alertAt: seedCheckoutAlert,
		ruleUses: "target_pool:dbpool_checkout_duration_seconds:avg_rate5m",
	},
	{
		name: "2. checkout time percentiles", row: "2 · Checkout time",
		panels: []string{"Checkout time p95 / p99"}, unit: "s",
		steps:  []step{{seedCheckoutTarget, "yellow"}, {seedCheckoutAlert, "red"}},
		metric: "dbpool_checkout_duration_seconds_bucket", alert: "DbPoolSlowCheckout", alertAt: seedCheckoutAlert,
		ruleUses: "target_pool:dbpool_checkout_duration_seconds:avg_rate5m",
	},
	{
		// The panel shows timeouts per minute (unit cpm), the rule multiplies its per-second
		// rate by 60: both compare the seed's "1 per minute".
		name: "3. pool timeouts", row: "3 · Pool timeouts",
		panels: []string{"Checkout timeouts per minute"}, unit: "cpm",
		steps:  []step{{seedTimeoutsAlertPerMin, "red"}},
		metric: "dbpool_checkout_timeouts_total", alert: "DbPoolCheckoutTimeouts", alertAt: seedTimeoutsAlertPerMin,
		ruleUses: "target_pool:dbpool_checkout_timeouts:rate5m * 60",
	},
	{
		name: "4. overflow", row: "4 · Overflow",
		panels: []string{"Overflow budget used"}, unit: "percentunit",
		steps:  []step{{seedOverflowTarget, "yellow"}, {seedOverflowAlert, "red"}},
		metric: "dbpool_max_overflow_connections", alert: "DbPoolOverflowHigh", alertAt: seedOverflowAlert,
		ruleUses: "target_pool:dbpool_overflow_connections:ratio",
	},
	{
		name: "5. idle in transaction", row: "5 · Connections",
		panels: []string{"Idle in transaction", "Max idle in transaction"}, unit: "",
		steps:  []step{{seedIdleInTxAlert, "red"}},
		metric: "idle in transaction", alert: "DbPoolIdleInTransaction", alertAt: seedIdleInTxAlert,
		ruleUses: "idle in transaction",
	},
	{
		name: "6. long-running queries", row: "6 · Long-running queries",
		panels: []string{"Longest running query", "Longest query"}, unit: "s",
		steps:  []step{{seedLongQueryTarget, "yellow"}, {seedLongQueryAlert, "red"}},
		metric: "dbpool_longest_query_seconds", alert: "DbPoolLongQuery", alertAt: seedLongQueryAlert,
		ruleUses: "dbpool_longest_query_seconds",
	},
	{
		name: "server connections", row: "PostgreSQL server",
		panels: []string{"Server connection usage", "Server connections used"}, unit: "percentunit",
		steps:  []step{{rulesServerConnectionsAlert, "red"}},
		metric: "dbpool_server_reserved_connections", alert: "DbPoolServerConnectionsNearLimit", alertAt: rulesServerConnectionsAlert,
		ruleUses: "dbpool_server_reserved_connections",
	},
}

// alertThresholdRe finds the comparison with the threshold: at the end of the expression, or
// before a trailing `and on (...) <series>` that only narrows which pools may fire.
var alertThresholdRe = regexp.MustCompile(`>\s*([0-9.]+)\s*(?:and\s+on\s*\([^)]*\)\s*[a-z_:]+\s*)?$`)

// rowOf maps each panel title to the title of the row it sits in.
func rowOf(ps []panel) map[string]string {
	out := map[string]string{}
	current := ""
	for _, p := range ps {
		if p.Type == "row" {
			current = p.Title
			for _, c := range p.Panels {
				out[c.Title] = current
			}
			continue
		}
		out[p.Title] = current
	}
	return out
}

func TestThresholdsMatchSeed(t *testing.T) {
	d, _ := loadDashboard(t)
	_, alerts := loadRules(t)
	byTitle := map[string]panel{}
	for _, p := range allPanels(d.Panels) {
		if p.Type != "row" {
			byTitle[p.Title] = p
		}
	}
	rows := rowOf(d.Panels)

	for _, tc := range thresholdCases {
		t.Run(tc.name, func(t *testing.T) {
			a, ok := alerts[tc.alert]
			if !ok {
				t.Fatalf("alert %s not in %s", tc.alert, rulesFile)
			}
			expr := strings.TrimSpace(a.Expr)
			m := alertThresholdRe.FindStringSubmatch(expr)
			if m == nil {
				t.Fatalf("alert %s: no `> number` at the end (or before a trailing `and on (...)`) in %q", tc.alert, expr)
			}
			if v, _ := strconv.ParseFloat(m[1], 64); v != tc.alertAt {
				t.Errorf("alert %s fires above %v, the seed says %v", tc.alert, v, tc.alertAt)
			}
			if !strings.Contains(expr, tc.ruleUses) {
				t.Errorf("alert %s: expression does not use %q: %s", tc.alert, tc.ruleUses, expr)
			}
			if !strings.HasPrefix(rows[tc.panels[0]], tc.row) {
				t.Errorf("panel %q is in row %q, want row %q", tc.panels[0], rows[tc.panels[0]], tc.row)
			}
			for _, title := range tc.panels {
				p, ok := byTitle[title]
				if !ok {
					t.Errorf("no panel %q", title)
					continue
				}
				checkPanelThresholds(t, p, tc.unit, tc.steps, tc.alertAt)
				uses := false
				for _, tg := range p.Targets {
					uses = uses || strings.Contains(tg.Expr, tc.metric)
				}
				if !uses {
					t.Errorf("panel %q: no query uses %s", title, tc.metric)
				}
				linked := false
				for _, l := range p.Links {
					linked = linked || l.URL == a.RunbookURL
				}
				if !linked {
					t.Errorf("panel %q does not link to the runbook of %s (%s)", title, tc.alert, a.RunbookURL)
				}
			}
		})
	}
}

func checkPanelThresholds(t *testing.T, p panel, unit string, want []step, alertAt float64) {
	t.Helper()
	where := fmt.Sprintf("panel %q", p.Title)
	def := p.FieldConfig.Defaults
	if unit != "" && def.Unit != unit {
		t.Errorf("%s: unit %q, want %q (the thresholds are in it)", where, def.Unit, unit)
	}
	th := def.Thresholds
	if th == nil {
		t.Errorf("%s: no thresholds", where)
		return
	}
	if th.Mode != "absolute" {
		t.Errorf("%s: thresholds mode %q, want absolute", where, th.Mode)
	}
	if len(th.Steps) == 0 || th.Steps[0].Value != nil {
		t.Errorf("%s: the first threshold step must be the base step (value null)", where)
		return
	}
	var got []step
	for _, s := range th.Steps[1:] {
		if s.Value == nil {
			t.Errorf("%s: a step other than the first has no value", where)
			continue
		}
		got = append(got, step{*s.Value, s.Color})
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("%s: threshold steps %v, want %v", where, got, want)
	}
	red := false
	for _, s := range got {
		red = red || s.Value == alertAt && s.Color == "red"
	}
	if !red {
		t.Errorf("%s: no red step at the alert threshold %v", where, alertAt)
	}
	if p.Type == "timeseries" {
		switch def.Custom.ThresholdsStyle.Mode {
		case "line", "area", "line+area", "dashed", "dashed+area":
		default:
			t.Errorf("%s: thresholds are not drawn (thresholdsStyle mode %q)", where, def.Custom.ThresholdsStyle.Mode)
		}
	}
}
