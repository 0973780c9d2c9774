package main

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
)

// The parts of a dashboard the lint rules read, as grafana/dashboard-linter models them.

type lintDashboard struct {
	Title      string `json:"title"`
	Editable   bool   `json:"editable"`
	Templating struct {
		List []lintVariable `json:"list"`
	} `json:"templating"`
	Panels []lintPanel `json:"panels"`
}

type lintVariable struct {
	Name       string          `json:"name"`
	Label      string          `json:"label"`
	Type       string          `json:"type"`
	RawQuery   json.RawMessage `json:"query"`
	Datasource json.RawMessage `json:"datasource"`
	Multi      bool            `json:"multi"`
	AllValue   string          `json:"allValue"`
	Refresh    int             `json:"refresh"`
}

type lintPanel struct {
	Title       string          `json:"title"`
	Description string          `json:"description"`
	Type        string          `json:"type"`
	Datasource  json.RawMessage `json:"datasource"`
	Targets     []lintTarget    `json:"targets"`
	Panels      []lintPanel     `json:"panels"`
	Options     json.RawMessage `json:"options"`
	FieldConfig *struct {
		Defaults struct {
			Unit     string          `json:"unit"`
			Mappings json.RawMessage `json:"mappings"`
		} `json:"defaults"`
		Overrides []struct {
			Properties []struct {
				ID    string `json:"id"`
				Value any    `json:"value"`
			} `json:"properties"`
		} `json:"overrides"`
	} `json:"fieldConfig"`
}

type lintTarget struct {
	Expr string `json:"expr"`
}

// query is the variable's query whether stored as a string or as {"query": ...}.
func (v lintVariable) query() string {
	var s string
	if json.Unmarshal(v.RawQuery, &s) == nil {
		return s
	}
	var o struct {
		Query string `json:"query"`
	}
	if json.Unmarshal(v.RawQuery, &o) == nil {
		return o.Query
	}
	return ""
}

// datasourceUID reads a datasource reference: a plain string (old dashboards) or {uid, type}.
func datasourceUID(raw json.RawMessage) (string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", nil
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, nil
	}
	var o struct {
		UID *string `json:"uid"`
	}
	if err := json.Unmarshal(raw, &o); err != nil {
		return "", fmt.Errorf("invalid datasource %s", raw)
	}
	if o.UID == nil {
		return "", fmt.Errorf("datasource %s has no uid", raw)
	}
	return *o.UID, nil
}

// allPanels is every panel, the panels of rows included, in dashboard order.
func (d lintDashboard) allPanels() []lintPanel {
	var out []lintPanel
	var walk func([]lintPanel)
	walk = func(ps []lintPanel) {
		for _, p := range ps {
			out = append(out, p)
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return out
}

func (d lintDashboard) variablesOfType(t string) []lintVariable {
	var out []lintVariable
	for _, v := range d.Templating.List {
		if strings.EqualFold(v.Type, t) {
			out = append(out, v)
		}
	}
	return out
}

// Sample values the linter gives Grafana's global variables so that queries parse; the odd
// durations make $__rate_interval recognisable after expansion.
var globalVariables = map[string]string{
	"__rate_interval": "8869990787ms",
	"__interval":      "4867856611ms",
	"__interval_ms":   "7781188786",
	"__range_ms":      "6737667980",
	"__range_s":       "9397795485",
	"__range":         "6069770749ms",
	"__auto":          "12345ms",
}

var variableRe = regexp.MustCompile(`\$([[:word:]]+)|\$\{([^}]+)\}|\[\[([^\[\]]+)\]\]`)

// expandVariables replaces variables outside double-quoted strings with sample values, as the
// linter does: globals get theirs, dashboard variables their own name (a valid label value or
// duration-free identifier). Format options (${var:csv}) are ignored: the dashboard tests
// forbid them.
func expandVariables(expr string) string {
	parts := strings.Split(expr, `"`)
	for i := 0; i < len(parts); i += 2 {
		parts[i] = variableRe.ReplaceAllStringFunc(parts[i], func(ref string) string {
			m := variableRe.FindStringSubmatch(ref)
			name, _, _ := strings.Cut(m[1]+m[2]+m[3], ":")
			if v, ok := globalVariables[name]; ok {
				return v
			}
			if strings.HasPrefix(name, "__auto_interval") {
				return "10s"
			}
			return name
		})
	}
	return strings.Join(parts, `"`)
}
