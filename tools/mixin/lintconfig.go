package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"

	"gopkg.in/yaml.v3"
)

// lintConfig is a .lint file in grafana/dashboard-linter's format:
//
//	exclusions:
//	  <rule>:
//	    reason: why the rule does not apply (required here)
//	    entries:              # optional; without entries the whole rule is excluded
//	      - panel: <panel title>
//	        targetIdx: "0"    # optional
//	        dashboard: <title> # optional
//	        reason: ...        # optional, for this entry
//
// Unlike the linter, every exclusion must give a reason and must still excuse something: an
// exclusion that matches no violation is an error, so that the file does not outlive the
// problems it lists.
type lintConfig struct {
	Exclusions map[string]*lintExclusion `yaml:"exclusions"`
}

type lintExclusion struct {
	Reason  string      `yaml:"reason"`
	Entries []lintEntry `yaml:"entries"`
}

type lintEntry struct {
	Reason    string `yaml:"reason"`
	Dashboard string `yaml:"dashboard"`
	Panel     string `yaml:"panel"`
	Alert     string `yaml:"alert"` // mixtool's alert rules; never matches a dashboard violation
	TargetIdx string `yaml:"targetIdx"`
}

func loadLintConfig(path string) (*lintConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var c lintConfig
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var errs []error
	for rule, ex := range c.Exclusions {
		if ex == nil || ex.Reason == "" {
			errs = append(errs, fmt.Errorf("%s: exclusion of %s has no reason", path, rule))
			continue
		}
		for _, e := range ex.Entries {
			if e.TargetIdx != "" {
				if _, err := strconv.Atoi(e.TargetIdx); err != nil {
					errs = append(errs, fmt.Errorf("%s: %s: targetIdx %q is not a number", path, rule, e.TargetIdx))
				}
			}
		}
	}
	return &c, errors.Join(errs...)
}

func (e lintEntry) matches(v violation) bool {
	if e.Alert != "" {
		return false
	}
	if e.Dashboard != "" && e.Dashboard != v.Dashboard {
		return false
	}
	if e.Panel != "" && e.Panel != v.Panel {
		return false
	}
	if e.TargetIdx != "" && v.Target >= 0 && e.TargetIdx != strconv.Itoa(v.Target) {
		return false
	}
	return true
}

// apply splits violations into those the config excuses and those it does not, and lists the
// exclusions that excused nothing.
func (c *lintConfig) apply(vs []violation) (failed []violation, stale []string) {
	used := map[string]bool{}
	key := func(rule string, i int) string { return rule + "#" + strconv.Itoa(i) }
	for _, v := range vs {
		ex := c.Exclusions[v.Rule]
		excused := false
		switch {
		case ex == nil:
		case len(ex.Entries) == 0:
			excused, used[key(v.Rule, -1)] = true, true
		default:
			for i, e := range ex.Entries {
				if e.matches(v) {
					excused, used[key(v.Rule, i)] = true, true
				}
			}
		}
		if !excused {
			failed = append(failed, v)
		}
	}
	for rule, ex := range c.Exclusions {
		if len(ex.Entries) == 0 {
			if !used[key(rule, -1)] {
				stale = append(stale, rule)
			}
			continue
		}
		for i, e := range ex.Entries {
			if e.Alert == "" && !used[key(rule, i)] {
				stale = append(stale, fmt.Sprintf("%s (panel %q, target %q)", rule, e.Panel, e.TargetIdx))
			}
		}
	}
	sort.Strings(stale)
	return failed, stale
}
