package main

import (
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
)

// The rules of grafana/dashboard-linter (lint/rule_*.go) that apply to a Prometheus dashboard,
// under the linter's names so that a .lint file reads the same for both. The linter itself is
// not a dependency: it pulls in Loki and Grafana's app SDK. Differences are noted at each rule.

// violation is one rule broken at one place; panel and target are empty/-1 for dashboard rules.
type violation struct {
	Rule      string
	Dashboard string
	Panel     string
	Target    int
	Message   string
}

func (v violation) String() string {
	where := "dashboard " + quote(v.Dashboard)
	if v.Panel != "" {
		where += ", panel " + quote(v.Panel)
	}
	if v.Target >= 0 {
		where += fmt.Sprintf(", target %d", v.Target)
	}
	return fmt.Sprintf("%s: %s: %s", v.Rule, where, v.Message)
}

func quote(s string) string { return fmt.Sprintf("%q", s) }

// Panel types whose panels the linter checks for a title and description, units and targets.
var linterPanelTypes = []string{"stat", "singlestat", "graph", "table", "timeseries", "gauge"}

// Panel types whose queries the linter parses.
var linterQueryPanelTypes = []string{"singlestat", "gauge", "table", "stat", "state-timeline", "timeseries"}

var validUnits = map[string]bool{}

func init() {
	// The unit ids of Grafana's value formats (grafana-data valueFormats/categories.ts), as the
	// linter lists them.
	for _, u := range []string{
		"none", "string", "short", "percent", "percentunit", "humidity", "dB", "hex0x", "hex", "sci", "locale", "pixel",
		"accMS2", "accFS2", "accG", "degree", "radian", "grad", "arcmin", "arcsec", "areaM2", "areaF2", "areaMI2",
		"flops", "mflops", "gflops", "tflops", "pflops", "eflops", "zflops", "yflops",
		"ppm", "conppb", "conngm3", "conngNm3", "conμgm3", "conμgNm3", "conmgm3", "conmgNm3", "congm3", "congNm3", "conmgdL", "conmmolL",
		"bytes", "decbytes", "bits", "decbits", "kbytes", "deckbytes", "mbytes", "decmbytes", "gbytes", "decgbytes", "tbytes", "dectbytes", "pbytes", "decpbytes",
		"pps", "binBps", "Bps", "binbps", "bps", "KiBs", "Kibits", "KBs", "Kbits", "MiBs", "Mibits", "MBs", "Mbits", "GiBs", "Gibits", "GBs", "Gbits", "TiBs", "Tibits", "TBs", "Tbits", "PiBs", "Pibits", "PBs", "Pbits",
		"dateTimeAsIso", "dateTimeAsIsoNoDateIfToday", "dateTimeAsUS", "dateTimeAsUSNoDateIfToday", "dateTimeAsLocal",
		"dateTimeAsLocalNoDateIfToday", "dateTimeAsSystem", "dateTimeFromNow",
		"hertz", "ns", "µs", "ms", "s", "m", "h", "d", "dtdurationms", "dtdurations", "dthms", "dtdhms", "timeticks", "clockms", "clocks",
		"cps", "ops", "reqps", "rps", "wps", "iops", "cpm", "opm", "rpm", "wpm", "mps", "mpm",
		"bool", "bool_yes_no", "bool_on_off",
	} {
		validUnits[u] = true
	}
}

// lintDashboardJSON runs every rule on one dashboard.
func lintDashboardJSON(data []byte) ([]violation, error) {
	var d lintDashboard
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, err
	}
	var out []violation
	dash := func(rule, msg string) {
		out = append(out, violation{Rule: rule, Dashboard: d.Title, Target: -1, Message: msg})
	}
	panel := func(rule string, p lintPanel, msg string) {
		out = append(out, violation{Rule: rule, Dashboard: d.Title, Panel: p.Title, Target: -1, Message: msg})
	}
	target := func(rule string, p lintPanel, i int, msg string) {
		out = append(out, violation{Rule: rule, Dashboard: d.Title, Panel: p.Title, Target: i, Message: msg})
	}

	// template-datasource-rule: a datasource variable named datasource (or <type>_datasource),
	// labelled "Data source" (or "<Type> data source").
	dsVars := d.variablesOfType("datasource")
	if len(dsVars) == 0 {
		dash("template-datasource-rule", "does not have a templated data source")
	}
	for _, v := range dsVars {
		names := []string{v.query() + "_datasource"}
		labels := []string{titleCase(v.query()) + " data source"}
		if len(dsVars) == 1 {
			names, labels = append(names, "datasource"), append(labels, "Data source")
		}
		if !slices.Contains(names, v.Name) {
			dash("template-datasource-rule", fmt.Sprintf("templated data source variable named %q, should be one of %q", v.Name, names))
		}
		if !slices.Contains(labels, v.Label) {
			dash("template-datasource-rule", fmt.Sprintf("templated data source variable labeled %q, should be one of %q", v.Label, labels))
		}
	}
	prometheus := len(dsVars) > 0 && dsVars[0].query() == "prometheus"

	// template-job-rule, template-instance-rule: multi-value query variables job and instance
	// on $datasource, labelled Job and Instance, whose All is .+ (a series without the label
	// is no job's).
	if prometheus {
		for _, name := range []string{"job", "instance"} {
			rule := "template-" + name + "-rule"
			i := slices.IndexFunc(d.Templating.List, func(v lintVariable) bool { return v.Name == name })
			if i < 0 {
				dash(rule, "is missing the "+name+" template")
				continue
			}
			v := d.Templating.List[i]
			uid, err := datasourceUID(v.Datasource)
			if err != nil {
				dash(rule, fmt.Sprintf("%s template has invalid datasource: %v", name, err))
			}
			if !slices.Contains([]string{"$datasource", "${datasource}", "$prometheus_datasource", "${prometheus_datasource}"}, uid) {
				dash(rule, fmt.Sprintf("%s template should use datasource '$datasource', is currently %q", name, uid))
			}
			if v.Type != "query" {
				dash(rule, fmt.Sprintf("%s template should be a Prometheus query, is currently %q", name, v.Type))
			}
			if v.Label != titleCase(name) {
				dash(rule, fmt.Sprintf("%s template should be labeled %q, is currently %q", name, titleCase(name), v.Label))
			}
			if !v.Multi {
				dash(rule, name+" template should be a multi select")
			}
			if v.AllValue != ".+" {
				dash(rule, fmt.Sprintf("%s template allValue should be '.+', is currently %q", name, v.AllValue))
			}
		}
	}

	// template-label-promql-rule: query variables are label_values(), label_names(),
	// metrics() or query_result() of valid PromQL.
	if prometheus {
		for _, v := range d.Templating.List {
			if v.Type != "query" {
				continue
			}
			if err := checkVariableQuery(v.query()); err != nil {
				dash("template-label-promql-rule", fmt.Sprintf("template %q invalid templated label %q: %v", v.Name, v.query(), err))
			}
		}
	}

	// template-on-time-change-reload-rule: query variables refresh on time range change (2).
	for _, v := range d.Templating.List {
		if v.Type == "query" && v.Refresh != 2 {
			dash("template-on-time-change-reload-rule", fmt.Sprintf("variable %q should refresh on time range change (2), is %d", v.Name, v.Refresh))
		}
	}

	// uneditable-dashboard: provisioned dashboards are not editable; changes go to the source.
	if d.Editable {
		dash("uneditable-dashboard", "is editable, it should be set to 'editable: false'")
	}

	dsUIDs := map[string]bool{}
	for _, v := range dsVars {
		dsUIDs["$"+v.Name], dsUIDs["${"+v.Name+"}"] = true, true
	}
	for _, p := range d.allPanels() {
		// panel-datasource-rule: the linter checks singlestat, graph, table and timeseries;
		// stat, bar gauge and state timeline panels query just the same, so they are checked
		// too.
		if p.Type != "row" {
			uid, err := datasourceUID(p.Datasource)
			if err != nil {
				panel("panel-datasource-rule", p, err.Error())
			} else if !dsUIDs[uid] {
				panel("panel-datasource-rule", p, fmt.Sprintf("does not use a templated datasource, uses %q", uid))
			}
		}
		if slices.Contains(linterPanelTypes, p.Type) {
			// panel-title-description-rule.
			if p.Title == "" || p.Description == "" {
				panel("panel-title-description-rule", p, "has missing title or description")
			}
			// panel-no-targets-rule.
			if len(p.Targets) == 0 {
				panel("panel-no-targets-rule", p, "has no targets")
			}
		}
		// panel-units-rule: every panel with numbers has a valid unit. The linter skips any
		// panel that has a mappings key, even an empty list; here only panels whose values
		// are all mapped to text (non-empty mappings) and stats that show text fields are
		// skipped, and bar gauges, whose bars are numbers, are checked as well.
		if slices.Contains(linterPanelTypes, p.Type) || p.Type == "bargauge" {
			if msg := unitProblem(p); msg != "" {
				panel("panel-units-rule", p, msg)
			}
		}
		if !prometheus || !slices.Contains(linterQueryPanelTypes, p.Type) {
			continue
		}
		for i, t := range p.Targets {
			expr, err := parser.NewParser(parser.Options{}).ParseExpr(expandVariables(t.Expr))
			// target-promql-rule: the query is valid PromQL.
			if err != nil {
				target("target-promql-rule", p, i, fmt.Sprintf("invalid PromQL query %q: %v", t.Expr, err))
				continue
			}
			// target-rate-interval-rule: rate() and irate() use $__rate_interval.
			if err := checkRateInterval(expr); err != nil {
				target("target-rate-interval-rule", p, i, fmt.Sprintf("invalid PromQL query %q: %v", t.Expr, err))
			}
			// target-job-rule, target-instance-rule: every selector has job=~"$job" and
			// instance=~"$instance".
			for _, name := range []string{"job", "instance"} {
				for _, sel := range parser.ExtractSelectors(expr) {
					if err := checkForMatcher(sel, name); err != nil {
						target("target-"+name+"-rule", p, i, fmt.Sprintf("invalid PromQL query %q: %v", t.Expr, err))
					}
				}
			}
			// target-counter-agg-rule: a counter (_total) is only ever read through rate(),
			// irate() or increase().
			if err := checkCounterAgg(expr); err != nil {
				target("target-counter-agg-rule", p, i, err.Error())
			}
		}
	}
	return out, nil
}

func titleCase(s string) string {
	if s == "" {
		return s
	}
	return string(s[0]&^0x20) + s[1:]
}

func unitProblem(p lintPanel) string {
	if p.Type == "stat" {
		var opts struct {
			ReduceOptions struct {
				Fields string `json:"fields"`
			} `json:"reduceOptions"`
		}
		if json.Unmarshal(p.Options, &opts) == nil && opts.ReduceOptions.Fields != "" {
			return ""
		}
	}
	unit := ""
	if p.FieldConfig != nil {
		for _, o := range p.FieldConfig.Overrides {
			for _, prop := range o.Properties {
				switch prop.ID {
				case "unit":
					unit, _ = prop.Value.(string)
				case "mappings":
					if m, ok := prop.Value.([]any); ok && len(m) > 0 {
						return ""
					}
				}
			}
		}
		var mappings []any
		if json.Unmarshal(p.FieldConfig.Defaults.Mappings, &mappings) == nil && len(mappings) > 0 {
			return ""
		}
		if unit == "" {
			unit = p.FieldConfig.Defaults.Unit
		}
	}
	if !validUnits[unit] {
		return fmt.Sprintf("has no or invalid units defined: %q", unit)
	}
	return ""
}

var variableQueryRe = regexp.MustCompile(`([a-z_]+)\((.+)\)`)

func checkVariableQuery(q string) error {
	m := variableQueryRe.FindStringSubmatch(q)
	if m == nil {
		return fmt.Errorf("invalid 'query': %v", q)
	}
	if !slices.Contains([]string{"label_names", "label_values", "metrics", "query_result"}, m[1]) {
		return fmt.Errorf("invalid 'function': %v", m[1])
	}
	// label_values(selector, label) passes its whole argument list to the parser, as the
	// linter does: "dbpool_up, target" is not PromQL, but the parser returns the selector it
	// read before the error, and the linter accepts any query that yields an expression.
	expr, err := parser.NewParser(parser.Options{}).ParseExpr(expandVariables(m[2]))
	if expr != nil {
		return nil
	}
	return err
}

var rateIntervalRange = mustDuration(globalVariables["__rate_interval"])

func checkRateInterval(expr parser.Expr) error {
	return parser.Walk(inspector(func(node parser.Node, parents []parser.Node) error {
		sel, ok := node.(*parser.MatrixSelector)
		if !ok || sel.Range == rateIntervalRange || len(parents) == 0 {
			return nil
		}
		call, ok := parents[len(parents)-1].(*parser.Call)
		if !ok {
			return fmt.Errorf("$__rate_interval used in non-rate function")
		}
		if call.Func.Name == "rate" || call.Func.Name == "irate" {
			return fmt.Errorf("should use $__rate_interval")
		}
		return nil
	}), expr, nil)
}

func checkCounterAgg(expr parser.Expr) error {
	return parser.Walk(inspector(func(node parser.Node, parents []parser.Node) error {
		sel, ok := node.(*parser.VectorSelector)
		if !ok || len(sel.Name) < 6 || sel.Name[len(sel.Name)-6:] != "_total" {
			return nil
		}
		err := fmt.Errorf("counter metric %q is not aggregated with rate, irate, or increase", sel.String())
		if len(parents) < 2 {
			return err
		}
		if _, ok := parents[len(parents)-1].(*parser.MatrixSelector); !ok {
			return err
		}
		call, ok := parents[len(parents)-2].(*parser.Call)
		if !ok || !slices.Contains([]string{"rate", "irate", "increase"}, call.Func.Name) {
			return err
		}
		return nil
	}), expr, nil)
}

// checkForMatcher wants name=~"$name" among the selector's matchers.
func checkForMatcher(sel []*labels.Matcher, name string) error {
	want := "$" + name
	err := fmt.Errorf("%s selector not found", name)
	for _, m := range sel {
		if m.Name != name {
			continue
		}
		if m.Type == labels.MatchRegexp && m.Value == want {
			return nil
		}
		if m.Type != labels.MatchRegexp {
			err = fmt.Errorf("%s selector is %s, not %s", name, m.Type, labels.MatchRegexp)
		} else {
			err = fmt.Errorf("%s selector is %s, not %s", name, m.Value, want)
		}
	}
	return err
}

type inspector func(parser.Node, []parser.Node) error

func (f inspector) Visit(node parser.Node, path []parser.Node) (parser.Visitor, error) {
	if err := f(node, path); err != nil {
		return nil, err
	}
	return f, nil
}

func mustDuration(s string) time.Duration {
	d, err := time.ParseDuration(s)
	if err != nil {
		panic(err)
	}
	return d
}
