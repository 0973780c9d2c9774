package health

import (
	"io"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/html"

	"github.com/dbpool/dbpool_exporter/collector"
	"github.com/dbpool/dbpool_exporter/internal/advice"
	"github.com/dbpool/dbpool_exporter/internal/metrics"
)

// busyPgxpool is step k of a pgxpool pool of maxConns connections, all busy, whose callers
// queue and time out: counters that grow by a second's worth of 50 checkouts holding a
// connection 100 ms each.
func busyPgxpool(target, name string, maxConns, k int) metrics.PoolStats {
	p := pgxPool(target, name, maxConns, maxConns)
	p.Settings.Timeout = 200 * time.Millisecond
	pending, n := 3, uint64(50*k)
	timeouts := uint64(2 * k)
	p.Pending = &pending
	p.Checkouts = &metrics.CheckoutStats{Count: n, DurationSeconds: 0.08 * float64(n), Timeouts: &timeouts}
	p.UseTime = &metrics.DurationStats{Count: n, SumSeconds: 0.1 * float64(n),
		Buckets: map[float64]uint64{0.05: n / 5, 0.1: n / 2, 0.25: n}}
	return p
}

// TestPageEscapesHostileNames renders the page for pools whose names are hostile input and
// reads it back as a browser's parser would: the names are text in HTML and in every SVG,
// and nothing in them became an element or an attribute.
func TestPageEscapesHostileNames(t *testing.T) {
	c := newClock()
	m := NewManager(Options{Window: 10 * time.Minute, Now: c.now})
	hostile := "application_name:" + xssName
	for k := range 20 {
		m.Observe(collector.Result{Pools: []metrics.PoolStats{
			busyPgxpool("svc", xssBreakout, 2, k),
			{Target: "pg", Pool: hostile, Source: metrics.SourceActivity, Open: 1, InUse: 1,
				States: map[string]int{metrics.StateActive: 1}, Sessions: &metrics.SessionStats{}},
		}})
		c.add(15 * time.Second)
	}
	r, err := m.Find("svc", xssBreakout)
	if err != nil {
		t.Fatal(err)
	}
	if r.State != StateSaturated || r.Optimization.Sizing.Current == nil {
		t.Fatalf("the busy pool is %s with sizing %+v: want saturated with a prediction", r.State, r.Optimization.Sizing)
	}

	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", PagePath, nil))
	body := rec.Body.String()
	if rec.Code != 200 {
		t.Fatalf("%d: %s", rec.Code, body)
	}
	doc, err := html.Parse(strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	var cards, titles []string
	var elements []string
	for n := range doc.Descendants() {
		if n.Type != html.ElementNode {
			continue
		}
		elements = append(elements, n.Data)
		for _, a := range n.Attr {
			if strings.HasPrefix(strings.ToLower(a.Key), "on") {
				t.Errorf("<%s> has an event handler %s=%q", n.Data, a.Key, a.Val)
			}
			if a.Key == "data-pool" && n.Data == "section" {
				cards = append(cards, a.Val)
			}
		}
		if n.Data == "title" && n.Parent != nil && n.Parent.Data == "svg" && n.FirstChild != nil {
			titles = append(titles, n.FirstChild.Data)
		}
	}
	if slices.Contains(elements, "script") || slices.Contains(elements, "style") && strings.Count(body, "<style") != 1 {
		t.Errorf("the page has a script element, or a second style element")
	}
	if want := []string{xssBreakout, hostile}; !slices.Equal(cards, want) {
		t.Errorf("cards for %q, want %q (saturated first)", cards, want)
	}
	// In use, waiting, checkout time, timeouts and the prediction for the pgxpool pool; in
	// use for the other.
	if len(titles) != 6 {
		t.Errorf("%d SVG titles, want 6: %q", len(titles), titles)
	}
	for _, title := range titles {
		if !strings.HasPrefix(title, xssBreakout+" on svc: ") && !strings.HasPrefix(title, hostile+" on pg: ") {
			t.Errorf("an SVG title does not name its pool as text: %q", title)
		}
	}
	// The number of <svg> elements is the number of charts: the name opened none.
	if n := strings.Count(body, "<svg"); n != 6 {
		t.Errorf("%d <svg in the page, want 6", n)
	}
}

func TestPageRefresh(t *testing.T) {
	m := NewManager(Options{})
	for _, tc := range []struct {
		query string
		meta  bool
	}{
		{"", false}, {"?refresh=30", true}, {"?refresh=5", true}, {"?refresh=4", false},
		{"?refresh=3601", false}, {"?refresh=x", false}, {"?refresh=-30", false}, {"?refresh=30%3Bx", false},
	} {
		rec := httptest.NewRecorder()
		m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", PagePath+tc.query, nil))
		body, _ := io.ReadAll(rec.Body)
		if got := strings.Contains(string(body), `http-equiv="refresh"`); rec.Code != 200 || got != tc.meta {
			t.Errorf("%s: %d, meta refresh %v, want %v", tc.query, rec.Code, got, tc.meta)
		}
	}
}

func TestHeadline(t *testing.T) {
	long := strings.Repeat("word ", 40)
	for _, tc := range []struct{ in, want string }{
		{"88 checkouts timed out in the last 3s (1871.94 per minute); alert level is 1 per minute", "88 checkouts timed out in the last 3s (1871.94 per minute)"},
		{"6 connections are idle in transaction, above the alert level of 5: a transaction leak", "6 connections are idle in transaction, above the alert level of 5"},
		{"raise MaxConns: the connections are busy; recommended: MaxConns=3", "Raise MaxConns"},
		{long, "Word" + strings.Repeat(" word", 21) + "…"},
		{strings.Repeat("é", 80), strings.Repeat("É", 1) + strings.Repeat("é", 54) + "…"},
		{"", ""},
	} {
		if got := headline(tc.in); got != tc.want {
			t.Errorf("headline(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestFindingGroups: warnings go by severity, with the fix of the same rule folded under
// them; a leak and a transaction left open stand together with the leak's places; a
// recommendation without a warning is advice.
func TestFindingGroups(t *testing.T) {
	m := NewManager(Options{})
	six, two := 6, 2
	f := func(rule, msg string) advice.Finding { return advice.Finding{Rule: rule, Message: msg} }
	r := &Report{
		Connections: advice.Connections{IdleInTransaction: &six},
		Health: Health{
			Health: advice.Health{
				Warnings: []advice.Finding{
					f(advice.RuleUtilizationHigh, "average utilization 93% over the last 5m exceeds 70%"),
					f(advice.RuleCheckoutTimeouts, "88 checkouts timed out in the last 5m; alert level is 1 per minute"),
					f(advice.RuleIdleInTransaction, "6 connections are idle in transaction, above the alert level of 5: a transaction leak"),
					f(advice.RuleConnectionLeak, "2 connections have been held longer than the leak threshold of 5 s"),
				},
				Recommendations: []advice.Finding{
					f(advice.RuleUtilizationHigh, "raise DB_POOL_SIZE"),
					f(advice.RuleCheckoutTimeouts, "raise DB_POOL_SIZE rather than DB_POOL_TIMEOUT"),
					f(advice.RulePrePingDisabled, "set DB_POOL_PRE_PING=true"),
				},
			},
			Leaks: &metrics.LeakStats{ThresholdSeconds: 5, Instances: 1, Count: two, Sites: []metrics.LeakSite{{File: "app.py", Line: 7, Function: "handler", Count: 2, OldestSeconds: 9}}},
		},
	}
	var got []string
	for _, g := range m.findingGroups(r) {
		line := g.Title + "(" + g.Severity + "):"
		for _, f := range g.Findings {
			line += " " + f.Rule
			if len(f.Fixes) > 0 {
				line += "+fix"
			}
			if f.Detail == "" {
				line += "-detail"
			}
			for _, s := range f.Sites {
				line += "@" + s.Place + "/" + s.Count.Text
			}
		}
		got = append(got, line)
	}
	want := []string{
		"Critical(critical): checkout_timeouts+fix",
		"Leaked connections(critical): idle_in_transaction connection_leak-detail@app.py:7/2",
		"Warnings(warning): utilization_high+fix-detail",
		"Advice(advice): pre_ping_disabled-detail",
	}
	if !slices.Equal(got, want) {
		t.Errorf("groups\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestInUseChartLimits: the in-use chart draws the pool size and the capacity as two lines
// where they differ, and as one, said once, where the pool has no overflow.
func TestInUseChartLimits(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		name           string
		size, capacity int
		legend, lines  []string
	}{
		{"overflow", 5, 15, []string{"peak", "pool size", "capacity"}, []string{"c-inuse", "c-size", "c-cap"}},
		{"no overflow", 8, 8, []string{"peak", "capacity = pool size"}, []string{"c-inuse", "c-cap"}},
		{"unconfigured", 0, 0, []string{"peak"}, []string{"c-inuse"}},
	} {
		r := &Report{Window: advice.Summary{WindowSeconds: 60}}
		for i := range 4 {
			r.Window.Series = append(r.Window.Series, advice.Point{Time: now.Add(time.Duration(i-3) * 15 * time.Second), InUse: i, PoolSize: tc.size, Capacity: tc.capacity})
		}
		charts, _ := historyCharts(r, now)
		if len(charts) == 0 || charts[0].Name != "in_use" {
			t.Fatalf("%s: no in-use chart first: %+v", tc.name, charts)
		}
		var legend, lines []string
		for _, l := range charts[0].Legend {
			legend = append(legend, l.Text)
		}
		for _, l := range charts[0].SVG.Lines {
			lines = append(lines, l.Class)
		}
		if !slices.Equal(legend, tc.legend) || !slices.Equal(lines, tc.lines) {
			t.Errorf("%s: legend %q and lines %q, want %q and %q", tc.name, legend, lines, tc.legend, tc.lines)
		}
	}
}
