package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/cog/variants"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

// exportEnvelope are the keys Grafana's "Export for sharing externally" puts next to the
// dashboard model (what the dashboard needs on import); they are not part of the dashboard
// schema and Grafana drops them on import.
var exportEnvelope = []string{"__inputs", "__elements", "__requires"}

var registerPlugins = sync.OnceFunc(plugins.RegisterDefaultPlugins)

// checkSchema checks a dashboard against Grafana's dashboard schema with
// grafana-foundation-sdk, every panel type's options and field config and every data source's
// query type registered:
//   - the SDK's strict decoder reports unknown fields, missing required fields and wrong types;
//   - the SDK's validation runs on the decoded dashboard;
//   - every panel is of a type the SDK knows and every target decodes as a Prometheus query;
//   - the decoded dashboard, encoded again, gives back every value of the input: the decoder
//     drops what the schema does not know, so this catches an unknown field in the parts the
//     strict decoder reads loosely (a panel's fieldConfig.defaults).
//
// The decoded model comes from the SDK's ordinary decoder: in v0.0.22 the strict decoder
// reports errors correctly but, on success, returns an empty cog.BuildErrors that its own
// callers take for a failure, so it leaves panels, options and targets out of the result.
func checkSchema(data []byte) error {
	registerPlugins()
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		return err
	}
	for _, k := range exportEnvelope {
		delete(top, k)
	}
	model, err := json.Marshal(top)
	if err != nil {
		return err
	}

	var errs []error
	// The classic dashboard JSON model, which file provisioning, the Helm chart's ConfigMap and
	// imports read; the SDK marks it deprecated in favour of Grafana 12's v2 resource format.
	var strict dashboard.Dashboard //nolint:staticcheck // see above
	if err := sdkError(strict.UnmarshalJSONStrict(model)); err != nil {
		errs = append(errs, fmt.Errorf("strict decoding against the dashboard schema: %w", err))
	}
	var d dashboard.Dashboard //nolint:staticcheck // the classic model, as above
	if err := json.Unmarshal(model, &d); err != nil {
		return errors.Join(append(errs, fmt.Errorf("decoding against the dashboard schema: %w", err))...)
	}
	if err := sdkError(d.Validate()); err != nil {
		errs = append(errs, fmt.Errorf("dashboard schema validation: %w", err))
	}

	checkPanel := func(where string, p *dashboard.Panel) {
		if p.Type != "row" {
			if _, ok := cog.ConfigForPanelcfgVariant(p.Type); !ok {
				errs = append(errs, fmt.Errorf("%s: panel type %q is not one the SDK knows", where, p.Type))
			}
			if len(p.Targets) == 0 {
				errs = append(errs, fmt.Errorf("%s: no targets", where))
			}
		}
		for i, t := range p.Targets {
			if _, unknown := t.(variants.UnknownDataquery); unknown || t.DataqueryType() != "prometheus" {
				errs = append(errs, fmt.Errorf("%s: target %d did not decode as a Prometheus query", where, i))
			}
		}
	}
	for i, pr := range d.Panels {
		where := fmt.Sprintf("panels[%d]", i)
		switch {
		case pr.Panel != nil:
			checkPanel(where, pr.Panel)
		case pr.RowPanel != nil:
			for j := range pr.RowPanel.Panels {
				checkPanel(fmt.Sprintf("%s.panels[%d]", where, j), &pr.RowPanel.Panels[j])
			}
		default:
			errs = append(errs, fmt.Errorf("%s: neither a panel nor a row", where))
		}
	}

	again, err := json.Marshal(d)
	if err != nil {
		return err
	}
	var in, out any
	if err := json.Unmarshal(model, &in); err != nil {
		return err
	}
	if err := json.Unmarshal(again, &out); err != nil {
		return err
	}
	for _, path := range lostValues("", in, out) {
		errs = append(errs, fmt.Errorf("%s: not in the dashboard schema (dropped or changed by decoding)", path))
	}
	return errors.Join(errs...)
}

// sdkError returns nil for the SDK's "no errors": its strict decoder returns an empty
// cog.BuildErrors, which as an error interface is not nil.
func sdkError(err error) error {
	var be cog.BuildErrors
	if errors.As(err, &be) && len(be) == 0 {
		return nil
	}
	return err
}

// lostValues lists the paths of values in `in` that `out` lacks or holds differently. Values
// only in `out` (defaults the SDK fills in) are fine.
func lostValues(path string, in, out any) []string {
	switch iv := in.(type) {
	case map[string]any:
		ov, ok := out.(map[string]any)
		if !ok {
			return []string{path}
		}
		keys := make([]string, 0, len(iv))
		for k := range iv {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var lost []string
		for _, k := range keys {
			o, ok := ov[k]
			if !ok {
				if !empty(iv[k]) { // an empty list or object comes back absent (omitempty)
					lost = append(lost, path+"."+k)
				}
				continue
			}
			lost = append(lost, lostValues(path+"."+k, iv[k], o)...)
		}
		return lost
	case []any:
		ov, ok := out.([]any)
		if !ok || len(ov) != len(iv) {
			return []string{path}
		}
		var lost []string
		for i := range iv {
			lost = append(lost, lostValues(fmt.Sprintf("%s[%d]", path, i), iv[i], ov[i])...)
		}
		return lost
	default:
		if in != out {
			return []string{path}
		}
		return nil
	}
}

func empty(v any) bool {
	switch v := v.(type) {
	case []any:
		return len(v) == 0
	case map[string]any:
		return len(v) == 0
	}
	return false
}
