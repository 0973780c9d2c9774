package main

import (
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

const rulesHeader = `# Recording and alerting rules for dbpool_exporter.
#
# Plain Prometheus rules file (Prometheus 2.x and 3.x): add it to ` + "`rule_files:`" + `.
# Generated from the monitoring mixin in mixin/ (thresholds in mixin/config.libsonnet): edit the
# jsonnet there and run ` + "`make mixin`" + `, never edit this file. Every rule is covered by
# dbpool.rules_test.yml; run alerts/check.sh after any change.
#
`

// lineWidth is where long annotations are folded (YAML `>-`, which reads them back as one line).
const lineWidth = 100

// keyOrder puts the keys of a rules file in the order people write them; other keys follow,
// sorted.
var keyOrder = []string{
	"groups", "name", "interval", "limit", "rules",
	"record", "alert", "expr", "for", "keep_firing_for", "labels", "annotations",
	"summary", "description", "runbook_url",
}

// rulesYAML writes the rule groups as a readable rules file: the header, each group's and each
// rule's comment above it, a blank line between rules, multi-line expressions as literal
// blocks and long annotations folded. It reads its own output back and fails unless that gives
// exactly the groups it was given.
func rulesYAML(ev evaluated) ([]byte, error) {
	top, ok := ev.Rules.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("rules: not an object")
	}
	groups, _ := top["groups"].([]any)
	if len(groups) != len(ev.Comments) {
		return nil, fmt.Errorf("rules: %d groups but %d group comments", len(groups), len(ev.Comments))
	}
	w := &yamlWriter{}
	w.b.WriteString(rulesHeader)
	w.b.WriteString("groups:\n")
	for gi, g := range groups {
		group, ok := g.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("rules: group %d is not an object", gi)
		}
		if gi > 0 {
			w.b.WriteString("\n")
		}
		w.comment(2, ev.Comments[gi].Group)
		rules, _ := group["rules"].([]any)
		if len(rules) != len(ev.Comments[gi].Rules) {
			return nil, fmt.Errorf("rules: group %d has %d rules but %d rule comments", gi, len(rules), len(ev.Comments[gi].Rules))
		}
		// The group without its rules, then the rules one by one with their comments.
		head := map[string]any{}
		for k, v := range group {
			if k != "rules" {
				head[k] = v
			}
		}
		if err := w.mapping(2, head, true, false); err != nil {
			return nil, err
		}
		w.b.WriteString("    rules:\n")
		for ri, r := range rules {
			if ri > 0 {
				w.b.WriteString("\n")
			}
			w.comment(6, ev.Comments[gi].Rules[ri])
			rule, ok := r.(map[string]any)
			if !ok {
				return nil, fmt.Errorf("rules: group %d rule %d is not an object", gi, ri)
			}
			if err := w.mapping(6, rule, true, false); err != nil {
				return nil, err
			}
		}
	}
	out := []byte(w.b.String())
	if err := sameData(out, ev.Rules); err != nil {
		return nil, fmt.Errorf("rules: the YAML written does not read back as the mixin's rules: %w", err)
	}
	return out, nil
}

type yamlWriter struct {
	b strings.Builder
}

func (w *yamlWriter) comment(indent int, text string) {
	text = strings.TrimRight(text, "\n")
	if text == "" {
		return
	}
	pad := strings.Repeat(" ", indent)
	for _, line := range strings.Split(text, "\n") {
		if line == "" {
			w.b.WriteString(pad + "#\n")
		} else {
			w.b.WriteString(pad + "# " + line + "\n")
		}
	}
}

// mapping writes m's keys at indent; item makes the first key a sequence item ("- "). Long
// values are folded only in annotations (prose): expressions stay as written and a
// runbook_url stays on its line.
func (w *yamlWriter) mapping(indent int, m map[string]any, item, fold bool) error {
	for i, k := range orderedKeys(m) {
		prefix := strings.Repeat(" ", indent)
		if item && i == 0 {
			prefix = strings.Repeat(" ", indent) + "- "
		} else if item {
			prefix = strings.Repeat(" ", indent+2)
		}
		inner := indent + 2
		if item {
			inner = indent + 4
		}
		key, err := scalar(k)
		if err != nil {
			return err
		}
		switch v := m[k].(type) {
		case map[string]any:
			if len(v) == 0 {
				w.b.WriteString(prefix + key + ": {}\n")
				continue
			}
			w.b.WriteString(prefix + key + ":\n")
			if err := w.mapping(inner, v, false, k == "annotations"); err != nil {
				return err
			}
		case []any:
			if len(v) == 0 {
				w.b.WriteString(prefix + key + ": []\n")
				continue
			}
			w.b.WriteString(prefix + key + ":\n")
			for _, e := range v {
				em, ok := e.(map[string]any)
				if !ok {
					s, err := value(e, inner+2, 0, false)
					if err != nil {
						return err
					}
					w.b.WriteString(strings.Repeat(" ", inner) + "- " + s + "\n")
					continue
				}
				if err := w.mapping(inner, em, true, false); err != nil {
					return err
				}
			}
		default:
			s, err := value(v, inner, len(prefix)+len(key)+2, fold)
			if err != nil {
				return err
			}
			w.b.WriteString(prefix + key + ": " + s + "\n")
		}
	}
	return nil
}

// value renders a scalar that starts at column col; block scalars put their lines at indent.
// fold allows folding a long one-line string.
func value(v any, indent, col int, fold bool) (string, error) {
	switch v := v.(type) {
	case nil:
		return "null", nil
	case bool:
		return strconv.FormatBool(v), nil
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64), nil
	case string:
		return stringValue(v, indent, col, fold)
	default:
		return "", fmt.Errorf("unexpected value %#v", v)
	}
}

func stringValue(s string, indent, col int, fold bool) (string, error) {
	pad := strings.Repeat(" ", indent)
	// Multi-line text (expressions) as a literal block, when YAML can keep it exactly.
	if strings.Contains(s, "\n") && literalSafe(s) {
		body := strings.TrimSuffix(s, "\n")
		indicator := "|"
		if !strings.HasSuffix(s, "\n") {
			indicator = "|-"
		}
		var b strings.Builder
		b.WriteString(indicator)
		for _, line := range strings.Split(body, "\n") {
			b.WriteString("\n")
			if line != "" {
				b.WriteString(pad + line)
			}
		}
		return b.String(), nil
	}
	one, err := scalar(s)
	if err != nil {
		return "", err
	}
	if !fold || col+len(one) <= lineWidth || !foldSafe(s) {
		return one, nil
	}
	// Folded: words up to lineWidth per line; YAML joins the lines with single spaces. A
	// template action ({{ ... }}) is one word, so that it reads whole.
	words := foldWords(s)
	if len(words) < 2 {
		return one, nil
	}
	var b strings.Builder
	b.WriteString(">-")
	line := ""
	for _, word := range words {
		if line != "" && indent+len(line)+1+len(word) > lineWidth {
			b.WriteString("\n" + pad + line)
			line = ""
		}
		if line == "" {
			line = word
		} else {
			line += " " + word
		}
	}
	b.WriteString("\n" + pad + line)
	return b.String(), nil
}

// literalSafe: a literal block keeps the text exactly when no line has leading (first line)
// or trailing blanks, there are no tabs or control characters, and it ends in at most one
// newline.
func literalSafe(s string) bool {
	if strings.HasSuffix(s, "\n\n") || strings.HasPrefix(s, " ") || strings.HasPrefix(s, "\n") {
		return false
	}
	for _, line := range strings.Split(strings.TrimSuffix(s, "\n"), "\n") {
		if strings.TrimRight(line, " ") != line {
			return false
		}
	}
	return !strings.ContainsFunc(s, func(r rune) bool { return r < ' ' && r != '\n' || r == 0x7f })
}

// foldWords splits s at spaces, but not inside a template action {{ ... }}.
func foldWords(s string) []string {
	var words []string
	cur, depth := "", 0
	for _, w := range strings.Split(s, " ") {
		if cur == "" {
			cur = w
		} else {
			cur += " " + w
		}
		depth += strings.Count(w, "{{") - strings.Count(w, "}}")
		if depth <= 0 {
			words = append(words, cur)
			cur, depth = "", 0
		}
	}
	if cur != "" {
		words = append(words, cur)
	}
	return words
}

// foldSafe: folding joins lines with one space, so the text must be words separated by
// single spaces.
func foldSafe(s string) bool {
	return s != "" && !strings.Contains(s, "  ") && strings.TrimSpace(s) == s &&
		!strings.ContainsFunc(s, func(r rune) bool { return r < ' ' || r == 0x7f })
}

// scalar is s as a one-line YAML scalar, quoted only where YAML needs it.
func scalar(s string) (string, error) {
	n := &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s}
	if strings.Contains(s, "\n") {
		n.Style = yaml.DoubleQuotedStyle
	}
	out, err := yaml.Marshal(n)
	if err != nil {
		return "", err
	}
	return strings.TrimSuffix(string(out), "\n"), nil
}

func orderedKeys(m map[string]any) []string {
	rank := map[string]int{}
	for i, k := range keyOrder {
		rank[k] = i + 1
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		ri, rj := rank[keys[i]], rank[keys[j]]
		switch {
		case ri != 0 && rj != 0:
			return ri < rj
		case ri != 0 || rj != 0:
			return ri != 0
		}
		return keys[i] < keys[j]
	})
	return keys
}

// sameData checks that the YAML document reads back as want (both compared as JSON data).
func sameData(doc []byte, want any) error {
	var got any
	if err := yaml.Unmarshal(doc, &got); err != nil {
		return err
	}
	norm := func(v any) (any, error) {
		data, err := json.Marshal(v)
		if err != nil {
			return nil, err
		}
		var out any
		return out, json.Unmarshal(data, &out)
	}
	g, err := norm(got)
	if err != nil {
		return err
	}
	w, err := norm(want)
	if err != nil {
		return err
	}
	if !reflect.DeepEqual(g, w) {
		gj, _ := json.MarshalIndent(g, "", " ")
		wj, _ := json.MarshalIndent(w, "", " ")
		return fmt.Errorf("read back:\n%s\nwant:\n%s", gj, wj)
	}
	return nil
}
