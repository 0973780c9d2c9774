package grafana

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// This file holds a small PromQL reader: just enough to list the vector selectors of an
// expression (metric name, label matchers, innermost enclosing function). Whether the
// expression is valid PromQL is promtool's job; this reader only has to be right about which
// identifiers are metric names, so that the dashboard test can check them against a scrape.

// selector is one vector selector: `name{label op "value", ...}`.
type selector struct {
	Name     string // "" when the selector names no metric (only label matchers)
	Matchers []matcher
	Func     string // innermost enclosing function or aggregation, "" at top level
}

type matcher struct {
	Label, Op, Value string
}

// matcher returns the matchers on label.
func (s selector) matchersOn(label string) []matcher {
	var out []matcher
	for _, m := range s.Matchers {
		if m.Label == label {
			out = append(out, m)
		}
	}
	return out
}

type tokenKind int

const (
	tIdent  tokenKind = iota
	tNumber           // numbers and durations: 5, 1e-3, 0x1f, 5m, 1h30m
	tString
	tRange // a whole [range] or [range:step], kept raw: it may hold Grafana's $__rate_interval
	tPunct
)

type token struct {
	kind tokenKind
	text string // for strings: the unquoted value
}

// keywords are identifiers that are never metric names in these positions.
var keywords = map[string]bool{
	"and": true, "or": true, "unless": true, "bool": true, "offset": true, "atan2": true,
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
}

// aggregations may put `by (...)`/`without (...)` between their name and their arguments.
var aggregations = map[string]bool{
	"sum": true, "min": true, "max": true, "avg": true, "group": true, "stddev": true, "stdvar": true,
	"count": true, "count_values": true, "bottomk": true, "topk": true, "quantile": true,
	"limitk": true, "limit_ratio": true,
}

func lex(s string) ([]token, error) {
	var toks []token
	isIdentStart := func(c byte) bool { return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
	isIdentChar := func(c byte) bool { return isIdentStart(c) || c >= '0' && c <= '9' }
	isDigit := func(c byte) bool { return c >= '0' && c <= '9' }
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case c == '#': // comment to the end of the line
			for i < len(s) && s[i] != '\n' {
				i++
			}
		case c == '[':
			j := strings.IndexByte(s[i:], ']')
			if j < 0 {
				return nil, fmt.Errorf("unterminated [ at offset %d", i)
			}
			toks = append(toks, token{tRange, s[i : i+j+1]})
			i += j + 1
		case c == '"' || c == '\'' || c == '`':
			j := i + 1
			var b strings.Builder
			for ; j < len(s) && s[j] != c; j++ {
				if s[j] == '\\' && c != '`' {
					j++
					if j == len(s) {
						break
					}
				}
				b.WriteByte(s[j])
			}
			if j >= len(s) {
				return nil, fmt.Errorf("unterminated string at offset %d", i)
			}
			toks = append(toks, token{tString, b.String()})
			i = j + 1
		case isDigit(c) || c == '.' && i+1 < len(s) && isDigit(s[i+1]):
			// Numbers and durations are one token: digits, letters (units, hex, exponent),
			// dots, and a sign right after an exponent's e.
			j := i
			for j < len(s) && (isIdentChar(s[j]) || s[j] == '.' ||
				(s[j] == '+' || s[j] == '-') && (s[j-1] == 'e' || s[j-1] == 'E') && !strings.HasPrefix(s[i:], "0x")) {
				j++
			}
			toks = append(toks, token{tNumber, s[i:j]})
			i = j
		case isIdentStart(c):
			j := i
			for j < len(s) && isIdentChar(s[j]) {
				j++
			}
			toks = append(toks, token{tIdent, s[i:j]})
			i = j
		default:
			two := ""
			if i+1 < len(s) {
				two = s[i : i+2]
			}
			switch two {
			case "=~", "!~", "!=", "==", "<=", ">=":
				toks = append(toks, token{tPunct, two})
				i += 2
				continue
			}
			if !strings.ContainsRune("(){},@=<>+-*/%^", rune(c)) {
				return nil, fmt.Errorf("unexpected %q at offset %d", c, i)
			}
			toks = append(toks, token{tPunct, string(c)})
			i++
		}
	}
	return toks, nil
}

// selectors lists the vector selectors of a PromQL expression in order of appearance.
func selectors(expr string) ([]selector, error) {
	toks, err := lex(expr)
	if err != nil {
		return nil, err
	}
	var (
		out     []selector
		frames  []string // one per open parenthesis: the function it calls, "" for grouping
		pending string   // aggregation whose `by (...)`/`without (...)` comes before its `(`
	)
	peek := func(i int) token {
		if i < len(toks) {
			return toks[i]
		}
		return token{kind: tPunct}
	}
	enclosing := func() string {
		for i := len(frames) - 1; i >= 0; i-- {
			if frames[i] != "" {
				return frames[i]
			}
		}
		return ""
	}
	// skipLabelList skips `( label, label )` starting at toks[i] == "(" and returns the index
	// after ")".
	skipLabelList := func(i int) (int, error) {
		if peek(i).kind != tPunct || peek(i).text != "(" {
			return 0, fmt.Errorf("expected ( after %s", toks[i-1].text)
		}
		for i++; i < len(toks); i++ {
			t := toks[i]
			switch {
			case t.kind == tPunct && t.text == ")":
				return i + 1, nil
			case t.kind == tIdent, t.kind == tString, t.kind == tPunct && t.text == ",":
			default:
				return 0, fmt.Errorf("unexpected %q in label list", t.text)
			}
		}
		return 0, fmt.Errorf("unterminated label list")
	}
	// readMatchers reads `{ label op "value", ... }` starting at toks[i] == "{".
	readMatchers := func(i int, sel *selector) (int, error) {
		for i++; i < len(toks); {
			t := toks[i]
			if t.kind == tPunct && t.text == "}" {
				return i + 1, nil
			}
			if t.kind == tPunct && t.text == "," {
				i++
				continue
			}
			label, op, val := t, peek(i+1), peek(i+2)
			if label.kind != tIdent && label.kind != tString {
				return 0, fmt.Errorf("expected a label name in {}, got %q", label.text)
			}
			if op.kind != tPunct || (op.text != "=" && op.text != "!=" && op.text != "=~" && op.text != "!~") {
				return 0, fmt.Errorf("expected a matcher operator after %s", label.text)
			}
			if val.kind != tString {
				return 0, fmt.Errorf("expected a string after %s%s", label.text, op.text)
			}
			if label.text == "__name__" && op.text == "=" {
				sel.Name = val.text
			} else {
				sel.Matchers = append(sel.Matchers, matcher{label.text, op.text, val.text})
			}
			i += 3
		}
		return 0, fmt.Errorf("unterminated {")
	}

	for i := 0; i < len(toks); {
		t := toks[i]
		switch {
		case t.kind == tPunct && t.text == "(":
			frames = append(frames, pending)
			pending = ""
			i++
		case t.kind == tPunct && t.text == ")":
			if len(frames) == 0 {
				return nil, fmt.Errorf("unbalanced )")
			}
			frames = frames[:len(frames)-1]
			i++
		case t.kind == tPunct && t.text == "{":
			sel := selector{Func: enclosing()}
			j, err := readMatchers(i, &sel)
			if err != nil {
				return nil, err
			}
			out = append(out, sel)
			i = j
		case t.kind == tIdent:
			lower := strings.ToLower(t.text)
			next := peek(i + 1)
			switch {
			case lower == "by" || lower == "without" || lower == "on" || lower == "ignoring":
				j, err := skipLabelList(i + 1)
				if err != nil {
					return nil, err
				}
				i = j
			case lower == "group_left" || lower == "group_right":
				i++
				if next.kind == tPunct && next.text == "(" {
					j, err := skipLabelList(i)
					if err != nil {
						return nil, err
					}
					i = j
				}
			case keywords[lower], lower == "inf", lower == "nan":
				i++
			case next.kind == tPunct && next.text == "(":
				pending = t.text // a function call; the "(" case opens its frame
				i++
			case aggregations[t.text] && next.kind == tIdent && (next.text == "by" || next.text == "without"):
				// sum by (l) (...): the label list comes first, then the "(" of the call.
				j, err := skipLabelList(i + 2)
				if err != nil {
					return nil, err
				}
				pending = t.text
				i = j
			default:
				sel := selector{Name: t.text, Func: enclosing()}
				i++
				if next.kind == tPunct && next.text == "{" {
					j, err := readMatchers(i, &sel)
					if err != nil {
						return nil, err
					}
					i = j
				}
				out = append(out, sel)
			}
		default:
			i++
		}
	}
	if len(frames) != 0 {
		return nil, fmt.Errorf("unbalanced (")
	}
	return out, nil
}

func TestSelectors(t *testing.T) {
	m := func(l, op, v string) matcher { return matcher{l, op, v} }
	for _, tc := range []struct {
		expr string
		want []selector
	}{
		{`dbpool_up`, []selector{{Name: "dbpool_up"}}},
		{`dbpool_up{target=~"$target"} == 0`,
			[]selector{{Name: "dbpool_up", Matchers: []matcher{m("target", "=~", "$target")}}}},
		{`rate(dbpool_checkouts_total{target=~"a|b", pool="x"}[5m])`,
			[]selector{{Name: "dbpool_checkouts_total", Func: "rate", Matchers: []matcher{m("target", "=~", "a|b"), m("pool", "=", "x")}}}},
		// by/without label lists are not metrics, before or after the arguments.
		{"sum by (target, pool) (rate(x_sum[1m]))\n/\nsum without (instance) (rate(x_count[1m]))",
			[]selector{{Name: "x_sum", Func: "rate"}, {Name: "x_count", Func: "rate"}}},
		{`sum(x) by (target, pool)`, []selector{{Name: "x", Func: "sum"}}},
		{`max(sum by (target) (y))`, []selector{{Name: "y", Func: "sum"}}},
		{`histogram_quantile(0.95, sum by (target, pool, le) (rate(h_bucket{pool=~"$pool"}[$__rate_interval]))) >= 0`,
			[]selector{{Name: "h_bucket", Func: "rate", Matchers: []matcher{m("pool", "=~", "$pool")}}}},
		// Vector matching keywords and their label lists.
		{`a * on (target) group_left (source) b`, []selector{{Name: "a"}, {Name: "b"}}},
		{`a and on() b unless ignoring(x, y) c or d`, []selector{{Name: "a"}, {Name: "b"}, {Name: "c"}, {Name: "d"}}},
		{`a / on (t) group_right c`, []selector{{Name: "a"}, {Name: "c"}}},
		// bool, offset, @, numbers in all forms.
		{`a > bool 5`, []selector{{Name: "a"}}},
		{`a offset 5m + b offset -1h30m`, []selector{{Name: "a"}, {Name: "b"}}},
		{`a @ start() - b @ 1609746000`, []selector{{Name: "a"}, {Name: "b"}}},
		{`1e-3 * x + 0x1F - Inf + NaN + .5 + 1.5e+3`, []selector{{Name: "x"}}},
		{`1.5 * (dbpool_recycle_seconds > 0)`, []selector{{Name: "dbpool_recycle_seconds"}}},
		// Strings are never metric names, even when they look like one.
		{`label_replace(up, "dst", "$1", "src", "(dbpool_.*)")`, []selector{{Name: "up", Func: "label_replace"}}},
		{`count_values("dbpool_x", y)`, []selector{{Name: "y", Func: "count_values"}}},
		{`x{a="b\"c", d='e'}`, []selector{{Name: "x", Matchers: []matcher{m("a", "=", `b"c`), m("d", "=", "e")}}}},
		{"x{state=~\"idle in transaction|idle in transaction \\\\(aborted\\\\)\"}",
			[]selector{{Name: "x", Matchers: []matcher{m("state", "=~", `idle in transaction|idle in transaction \(aborted\)`)}}}},
		// __name__ matchers and recording rule names with colons.
		{`{__name__="foo", job="x"}`, []selector{{Name: "foo", Matchers: []matcher{m("job", "=", "x")}}}},
		{`target_pool:dbpool_checkout_timeouts:rate5m{pool=~"$pool"} * 60 > 1`,
			[]selector{{Name: "target_pool:dbpool_checkout_timeouts:rate5m", Matchers: []matcher{m("pool", "=~", "$pool")}}}},
		// Subqueries, functions without selectors, comments.
		{`max_over_time(rate(c_total[1m])[5m:30s])`, []selector{{Name: "c_total", Func: "rate"}}},
		{`time() - vector(1)`, nil},
		{"x # dbpool_y is commented out\n+ z", []selector{{Name: "x"}, {Name: "z"}}},
		{`topk(5, x) or quantile(0.9, y)`, []selector{{Name: "x", Func: "topk"}, {Name: "y", Func: "quantile"}}},
		{`count(dbpool_up == 0) or vector(0)`, []selector{{Name: "dbpool_up", Func: "count"}}},
		{`ALERTS{alertname=~"DbPool.+", alertstate="firing"}`,
			[]selector{{Name: "ALERTS", Matchers: []matcher{m("alertname", "=~", "DbPool.+"), m("alertstate", "=", "firing")}}}},
	} {
		got, err := selectors(tc.expr)
		if err != nil {
			t.Errorf("selectors(%q): %v", tc.expr, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("selectors(%q)\n got %+v\nwant %+v", tc.expr, got, tc.want)
		}
	}
}

func TestSelectorsErrors(t *testing.T) {
	for _, expr := range []string{
		`rate(x[5m]`,
		`x)`,
		`x{a=}`,
		`x{a="b"`,
		`x{a}`,
		`x{a="b`,
		`x[5m`,
		`sum by (a b`,
		`sum by x`,
		`x $ y`,
	} {
		if got, err := selectors(expr); err == nil {
			t.Errorf("selectors(%q) = %+v, want an error", expr, got)
		}
	}
}
