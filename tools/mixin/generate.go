package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path/filepath"
	"sort"

	"github.com/google/go-jsonnet"
)

// Where the generated files go, relative to the repository root. alerts/ and grafana/ stay
// plain Prometheus and Grafana files (the Helm chart and plain-file users read them); the
// mixin is their source.
const (
	mixinDir  = "mixin"
	rulesFile = "alerts/dbpool.rules.yml"
	dashDir   = "grafana"
)

// evalSnippet extracts from the mixin what the files need: the rule groups in the order
// kube-prometheus puts them in a PrometheusRule (prometheusAlerts, then prometheusRules), the
// hidden `comment` of every group and rule, and the dashboards. override is jsonnet added to
// the mixin, e.g. `{ _config+:: { utilizationAlertRatio: 0.9 } }`.
const evalSnippet = `
local m = (import 'mixin.libsonnet') + (%s);
local comment(o) = if std.objectHasAll(o, 'comment') then o.comment else '';
local groups = m.prometheusAlerts.groups + m.prometheusRules.groups;
{
  rules: { groups: groups },
  comments: [{ group: comment(g), rules: [comment(r) for r in g.rules] } for g in groups],
  dashboards: m.grafanaDashboards,
}
`

type evaluated struct {
	Rules    any `json:"rules"`
	Comments []struct {
		Group string   `json:"group"`
		Rules []string `json:"rules"`
	} `json:"comments"`
	Dashboards map[string]any `json:"dashboards"`
}

// generate evaluates the mixin under root and returns every generated file by its path
// relative to root.
func generate(root, override string) (map[string][]byte, error) {
	if override == "" {
		override = "{}"
	}
	vm := jsonnet.MakeVM()
	dir := filepath.Join(root, mixinDir)
	vm.Importer(&jsonnet.FileImporter{JPaths: []string{dir}})
	out, err := vm.EvaluateAnonymousSnippet(filepath.Join(dir, "generate.jsonnet"), fmt.Sprintf(evalSnippet, override))
	if err != nil {
		return nil, err
	}
	var ev evaluated
	if err := json.Unmarshal([]byte(out), &ev); err != nil {
		return nil, fmt.Errorf("mixin output: %w", err)
	}

	files := map[string][]byte{}
	rules, err := rulesYAML(ev)
	if err != nil {
		return nil, err
	}
	files[rulesFile] = rules

	names := make([]string, 0, len(ev.Dashboards))
	for name := range ev.Dashboards {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		data, err := dashboardJSON(ev.Dashboards[name])
		if err != nil {
			return nil, fmt.Errorf("dashboard %s: %w", name, err)
		}
		files[filepath.ToSlash(filepath.Join(dashDir, name))] = data
	}
	return files, nil
}

// dashboardJSON writes a dashboard with two-space indentation and sorted keys. Decoding and
// re-encoding also gives numbers their shortest form (jsonnet writes 0.7 as
// 0.69999999999999996).
func dashboardJSON(d any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false) // descriptions say "target < 70%"
	enc.SetIndent("", "  ")
	if err := enc.Encode(d); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}
