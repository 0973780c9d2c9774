package e2e

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"
)

// Durations in the shipped rules are minutes long; the test cannot wait that long. It shortens
// them in a copy: `for:` durations 60 times (5m -> 5s) and range selectors 20 times (5m -> 15s,
// which still holds 15 samples at the test's 1 s scrape interval). Thresholds and everything
// else in the expressions stay as shipped.
const (
	forFactor   = 60
	rangeFactor = 20
)

var (
	forRe   = regexp.MustCompile(`(?m)^([ \t]+for:[ \t]*)([0-9]+[smhdwy])[ \t]*$`)
	rangeRe = regexp.MustCompile(`\[([0-9]+[smhdwy])\]`)
)

// shortenRules rewrites `for:` durations and range selectors of a Prometheus rules file and
// reports how many of each it changed.
func shortenRules(src string) (out string, fors, ranges int, err error) {
	shorten := func(d string, factor int) (string, error) {
		v, err := parsePromDuration(d)
		if err != nil {
			return "", err
		}
		v /= time.Duration(factor)
		if v < time.Second {
			v = time.Second
		}
		return formatPromDuration(v), nil
	}
	var errs []string
	out = forRe.ReplaceAllStringFunc(src, func(m string) string {
		sub := forRe.FindStringSubmatch(m)
		s, err := shorten(sub[2], forFactor)
		if err != nil {
			errs = append(errs, err.Error())
			return m
		}
		fors++
		return sub[1] + s
	})
	out = rangeRe.ReplaceAllStringFunc(out, func(m string) string {
		sub := rangeRe.FindStringSubmatch(m)
		s, err := shorten(sub[1], rangeFactor)
		if err != nil {
			errs = append(errs, err.Error())
			return m
		}
		ranges++
		return "[" + s + "]"
	})
	if len(errs) > 0 {
		return "", 0, 0, fmt.Errorf("shortenRules: %s", strings.Join(errs, "; "))
	}
	return out, fors, ranges, nil
}

// parsePromDuration parses the single-unit durations used in rule files (5m, 30s, 1h, 1d).
func parsePromDuration(s string) (time.Duration, error) {
	if len(s) < 2 {
		return 0, fmt.Errorf("bad duration %q", s)
	}
	var n int64
	if _, err := fmt.Sscanf(s[:len(s)-1], "%d", &n); err != nil {
		return 0, fmt.Errorf("bad duration %q", s)
	}
	unit := map[byte]time.Duration{'s': time.Second, 'm': time.Minute, 'h': time.Hour, 'd': 24 * time.Hour,
		'w': 7 * 24 * time.Hour, 'y': 365 * 24 * time.Hour}[s[len(s)-1]]
	if unit == 0 || n < 0 { // "for: 0s" is valid: the alert fires at once
		return 0, fmt.Errorf("bad duration %q", s)
	}
	return time.Duration(n) * unit, nil
}

// formatPromDuration writes d in whole seconds, which Prometheus always accepts.
func formatPromDuration(d time.Duration) string {
	return fmt.Sprintf("%ds", int64(d.Round(time.Second)/time.Second))
}

// withoutDurations blanks what shortenRules may change, so that the rest of two rule files
// can be compared byte for byte.
func withoutDurations(s string) string {
	s = forRe.ReplaceAllString(s, "${1}D")
	return rangeRe.ReplaceAllString(s, "[D]")
}

func TestShortenRules(t *testing.T) {
	for _, tc := range []struct {
		name, in, want      string
		wantFors, wantRange int
	}{
		{"for and range",
			"      - alert: A\n        expr: rate(x_total[5m]) > 1\n        for: 5m\n",
			"      - alert: A\n        expr: rate(x_total[15s]) > 1\n        for: 5s\n", 1, 1},
		{"short durations floor at one second",
			"        expr: rate(x_total[10s]) > 0\n        for: 30s\n",
			"        expr: rate(x_total[1s]) > 0\n        for: 1s\n", 1, 1},
		{"hours and several ranges",
			"        expr: a[1m] / b[1h]\n        for: 1h\n",
			"        expr: a[3s] / b[180s]\n        for: 60s\n", 1, 2},
		{"names and annotation text are left alone",
			"      - record: x:avg_rate5m\n        expr: y > 30\n        summary: held for 5m\n",
			"      - record: x:avg_rate5m\n        expr: y > 30\n        summary: held for 5m\n", 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, fors, ranges, err := shortenRules(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want || fors != tc.wantFors || ranges != tc.wantRange {
				t.Errorf("shortenRules:\n%s\n(fors %d, ranges %d), want\n%s\n(fors %d, ranges %d)", got, fors, ranges, tc.want, tc.wantFors, tc.wantRange)
			}
			if withoutDurations(got) != withoutDurations(tc.in) {
				t.Errorf("shortenRules changed more than durations:\n%s", got)
			}
		})
	}
}
