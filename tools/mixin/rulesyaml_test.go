package main

import (
	"strings"
	"testing"
)

func TestStringValue(t *testing.T) {
	long := "Pool {{ $labels.pool }} on {{ $labels.target }} has had {{ $value | humanizePercentage }} of its capacity checked out for 5 minutes."
	for _, tc := range []struct {
		name  string
		in    string
		fold  bool
		want  string
		lines int // lines of output
	}{
		{"plain", "dbpool_up == 0", false, "dbpool_up == 0", 1},
		{"colon needs quotes", "threshold: 5", false, "'threshold: 5'", 1},
		{"number-like stays a string", "0.8", false, `"0.8"`, 1},
		{"template needs quotes", "{{ $value }}", false, `'{{ $value }}'`, 1},
		{"multi-line expression", "a\n/\nb\n", false, "|\n    a\n    /\n    b", 4},
		{"no final newline", "a\nb", false, "|-\n    a\n    b", 3},
		{"leading blank cannot be literal", "  a\nb\n", false, `"  a\nb\n"`, 1},
		{"long prose folds", long, true, ">-", 3},
		{"long prose without fold stays", long, false, long, 1},
		{"one long word does not fold", strings.Repeat("x", 150), true, strings.Repeat("x", 150), 1},
		{"double spaces do not fold", strings.Repeat("word  ", 30), true, "", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := stringValue(tc.in, 4, 10, tc.fold)
			if err != nil {
				t.Fatal(err)
			}
			if tc.want != "" && !strings.HasPrefix(got, tc.want) {
				t.Errorf("got %q, want prefix %q", got, tc.want)
			}
			if n := strings.Count(got, "\n") + 1; n != tc.lines {
				t.Errorf("%d lines, want %d:\n%s", n, tc.lines, got)
			}
			for _, line := range strings.Split(got, "\n") {
				if strings.HasPrefix(got, ">-") && len(line) > lineWidth {
					t.Errorf("line longer than %d: %q", lineWidth, line)
				}
			}
			// Whatever the form, it reads back as the string.
			if err := sameData([]byte("k: "+got+"\n"), map[string]any{"k": tc.in}); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestFoldKeepsTemplateActionsWhole(t *testing.T) {
	s := strings.Repeat("{{ if $labels.target }}word{{ else }}other{{ end }} ", 5) + "end."
	got, err := stringValue(s, 10, 20, true)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(got, "\n")[1:] {
		line = strings.TrimSpace(line)
		if strings.Count(line, "{{") != strings.Count(line, "}}") {
			t.Errorf("a template action is split across lines: %q", line)
		}
	}
}

func TestRulesYAMLCommentsAndOrder(t *testing.T) {
	ev := evaluated{
		Rules: map[string]any{"groups": []any{map[string]any{
			"name": "g",
			"rules": []any{
				map[string]any{"record": "a:b:c", "expr": "sum(x)"},
				map[string]any{"alert": "A", "expr": "x\n> 1\n", "for": "5m",
					"labels": map[string]any{"severity": "warning"}, "annotations": map[string]any{"summary": "s", "description": "d"}},
			},
		}}},
	}
	ev.Comments = append(ev.Comments, struct {
		Group string   `json:"group"`
		Rules []string `json:"rules"`
	}{Group: "group note\n", Rules: []string{"", "why A\n\nand more\n"}})
	out, err := rulesYAML(ev)
	if err != nil {
		t.Fatal(err)
	}
	want := `groups:
  # group note
  - name: g
    rules:
      - record: a:b:c
        expr: sum(x)

      # why A
      #
      # and more
      - alert: A
        expr: |
          x
          > 1
        for: 5m
        labels:
          severity: warning
        annotations:
          summary: s
          description: d
`
	if got := strings.TrimPrefix(string(out), rulesHeader); got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}

func TestRulesYAMLRejectsMismatchedComments(t *testing.T) {
	ev := evaluated{Rules: map[string]any{"groups": []any{map[string]any{"name": "g", "rules": []any{map[string]any{"record": "r", "expr": "x"}}}}}}
	if _, err := rulesYAML(ev); err == nil {
		t.Error("no error for a group without its comments")
	}
}
