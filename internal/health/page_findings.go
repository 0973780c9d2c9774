package health

import (
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/dbpool/dbpool_exporter/internal/advice"
	"github.com/dbpool/dbpool_exporter/internal/metrics"
)

// Findings, grouped by severity: each a short headline with the full message, and the fix
// of the same rule, folded under it.
type findingGroup struct {
	Severity, Title string
	Findings        []finding
}

type finding struct {
	Rule, Headline, Detail string
	Fixes                  []string
	Sites                  []leakSite // where leaked connections were checked out (connection_leak)
}

// Severities of the findings.
const (
	sevCritical = "critical"
	sevWarning  = "warning"
	sevAdvice   = "advice"
)

func (m *Manager) findingGroups(r *Report) []findingGroup {
	warnings, recs := shorten(r.Health.Warnings), shorten(r.Health.Recommendations)
	used := make([]bool, len(recs))
	const critical, leaks, warning, adviceGroup = 0, 1, 2, 3
	groups := []findingGroup{
		{Severity: sevCritical, Title: "Critical"},
		// A leak in the application and a transaction left open are one story: connections
		// held that serve nobody. They stand together, their places folded under them.
		{Severity: sevWarning, Title: "Leaked connections"},
		{Severity: sevWarning, Title: "Warnings"},
		{Severity: sevAdvice, Title: "Advice"},
	}
	for _, w := range warnings {
		f := newFinding(w)
		for i, rec := range recs {
			if rec.Rule == w.Rule && !used[i] {
				f.Fixes, used[i] = append(f.Fixes, rec.Message), true
			}
		}
		g := &groups[warning]
		switch {
		case w.Rule == advice.RuleConnectionLeak || w.Rule == advice.RuleIdleInTransaction:
			g = &groups[leaks]
			if m.critical(r, w.Rule) {
				g.Severity = sevCritical
			}
			if w.Rule == advice.RuleConnectionLeak {
				f.Sites = leakSites(r.Health.Leaks)
			}
		case m.critical(r, w.Rule):
			g = &groups[critical]
		}
		g.Findings = append(g.Findings, f)
	}
	for i, rec := range recs {
		if !used[i] {
			groups[adviceGroup].Findings = append(groups[adviceGroup].Findings, newFinding(rec))
		}
	}
	out := groups[:0]
	for _, g := range groups {
		if len(g.Findings) > 0 {
			out = append(out, g)
		}
	}
	return out
}

func newFinding(f advice.Finding) finding {
	out := finding{Rule: f.Rule, Headline: headline(f.Message), Detail: f.Message}
	if strings.EqualFold(out.Headline, out.Detail) {
		out.Detail = "" // the headline says it all
	}
	return out
}

// leakSite is one place that took leaked connections, for the table under connection_leak.
type leakSite struct {
	Place, Function string
	Count, Oldest   fig
}

func leakSites(l *metrics.LeakStats) []leakSite {
	if l == nil {
		return nil
	}
	out := make([]leakSite, 0, len(l.Sites))
	for i, s := range l.Sites {
		k := "health.leaks.sites." + strconv.Itoa(i) + "."
		site := leakSite{Place: "outside the application's code", Function: s.Function,
			Count: intFig(k+"count", s.Count), Oldest: numFig(k+"oldest_seconds", s.OldestSeconds, 1, readable(s.OldestSeconds))}
		if s.File != "" {
			site.Place = s.File + ":" + strconv.Itoa(s.Line)
		}
		out = append(out, site)
	}
	return out
}

// critical says whether a warning means callers are hurt now: checkouts time out, queue or
// fail, connections leak, or a transaction leak or a query is past its alert level.
func (m *Manager) critical(r *Report, rule string) bool {
	c := &r.Connections
	switch rule {
	case advice.RuleCheckoutTimeouts, advice.RuleCheckoutSlow, advice.RuleCheckoutFailures, advice.RuleConnectionLeak:
		return true
	case advice.RuleIdleInTransaction:
		return c.IdleInTransaction != nil && *c.IdleInTransaction > m.th.IdleInTransactionAlert
	case advice.RuleLongQuery:
		return c.LongestQuerySeconds != nil && *c.LongestQuerySeconds > m.th.LongQueryAlert.Seconds()
	}
	return false
}

// headlineMax bounds a headline; the whole message is folded under it.
const headlineMax = 110

// headline is a message's first clause, capitalised: up to the first "; " or ": ", cut at a
// word when still long.
func headline(msg string) string {
	h := msg
	for _, sep := range []string{"; ", ": "} {
		if i := strings.Index(h, sep); i > 0 {
			h = h[:i]
		}
	}
	if len(h) > headlineMax {
		cut := strings.LastIndexByte(h[:headlineMax], ' ')
		if cut < headlineMax/2 {
			cut = headlineMax
			for !utf8.RuneStart(h[cut]) {
				cut--
			}
		}
		h = h[:cut] + "…"
	}
	if h == "" {
		return h
	}
	r, size := utf8.DecodeRuneInString(h)
	return string(unicode.ToUpper(r)) + h[size:]
}
