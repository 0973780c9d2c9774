package health

import (
	"bytes"
	"cmp"
	_ "embed"
	"html/template"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/dbpool/dbpool_exporter/internal/advice"
	"github.com/dbpool/dbpool_exporter/internal/metrics"
)

//go:embed pools.html
var pageSource string

// pageTemplate is html/template: every value, including pool names that come from clients'
// application_name, is escaped for the context it lands in, SVG text and attributes too.
var pageTemplate = template.Must(template.New("pools").Parse(pageSource))

// Reloading. The page reloads itself only when asked (?refresh=SECONDS, a meta refresh: no
// script), because a reload closes the findings a reader has opened.
const (
	pageRefresh    = 30 * time.Second // what the page's "reload every" link asks for
	minPageRefresh = 5 * time.Second
	maxPageRefresh = time.Hour
)

// The page renders the reports of /api/v1/pools and computes no figure of its own: every
// number on it is a field of the report, and carries that field's JSON path (data-key) and
// value as the API encodes it (data-value), so that a test can hold the page to the API.

type pageData struct {
	Generated       string
	Window          string
	Refresh         int // seconds; 0: no reload
	RefreshInterval int
	Counts          []stateCount
	Stale           []*poolCard
	Attention       []*poolCard
	Cards           []*poolCard
}

type stateCount struct {
	State State
	N     int
}

// fig is one figure of a report: its text on the page, and the field it comes from.
type fig struct {
	Text  string
	Key   string // JSON path in the report, e.g. window.avg_checkout_seconds
	Value string // the field's value as the API encodes it
	Scale string // Text shows Value x Scale ("" for 1)
}

// tile is one key figure: a label, the figure (with its parts) and a note under it.
type tile struct {
	Label string
	Main  []part
	Unit  string
	Note  []part
	Bad   bool
}

// part is text followed, optionally, by a figure.
type part struct {
	Text string
	Fig  *fig
}

type poolCard struct {
	Anchor                string
	Target, Pool, Source  string
	Exact, Configured     bool
	Instances             int
	EstimateNote          string
	State                 State
	Reasons               []string
	Since                 *fig
	SinceFor              string // how long ago Since was
	SinceWholeWindow      bool
	LastSeen              fig
	LastSeenAgo           string
	Stale                 bool
	Samples, WindowLength fig
	Tiles                 []tile
	Charts                []chartBox
	Unobserved            string
	Plan                  plan
	Groups                []findingGroup
	Headline              string // the first reason or finding, for the list at the top
}

func (m *Manager) servePage(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method "+r.Method+" not allowed: use GET", http.StatusMethodNotAllowed)
		return
	}
	now := m.now()
	data := m.pageData(m.ReportsAt(now), now, refreshOf(r.URL.Query().Get("refresh")))
	var buf bytes.Buffer
	if err := pageTemplate.Execute(&buf, data); err != nil {
		http.Error(w, "rendering the page: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	// No script runs on this page; say so to the browser as well.
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
	_, _ = w.Write(buf.Bytes())
}

// refreshOf reads ?refresh=SECONDS; anything else than a number within bounds means no reload.
func refreshOf(q string) int {
	n, err := strconv.Atoi(q)
	if err != nil || n < int(minPageRefresh.Seconds()) || n > int(maxPageRefresh.Seconds()) {
		return 0
	}
	return n
}

// stateOrder puts the pools that need a person first.
var stateOrder = map[State]int{StateSaturated: 0, StateWarning: 1, StateUnknown: 2, StateOK: 3}

func (m *Manager) pageData(reports []Report, now time.Time, refresh int) pageData {
	data := pageData{
		Generated:       now.UTC().Format("2006-01-02 15:04:05 MST"),
		Window:          humanDuration(m.window),
		Refresh:         refresh,
		RefreshInterval: int(pageRefresh.Seconds()),
	}
	slices.SortStableFunc(reports, func(a, b Report) int { return cmp.Compare(stateOrder[a.State], stateOrder[b.State]) })
	counts := map[State]int{}
	for i := range reports {
		c := m.newCard(&reports[i], i, now)
		counts[c.State]++
		data.Cards = append(data.Cards, c)
		if c.Stale {
			data.Stale = append(data.Stale, c)
		}
		if c.State == StateSaturated || c.State == StateWarning {
			data.Attention = append(data.Attention, c)
		}
	}
	for _, s := range []State{StateSaturated, StateWarning, StateOK, StateUnknown} {
		if counts[s] > 0 {
			data.Counts = append(data.Counts, stateCount{s, counts[s]})
		}
	}
	return data
}

func (m *Manager) newCard(r *Report, i int, now time.Time) *poolCard {
	w := &r.Window
	c := &poolCard{
		Anchor: "pool-" + strconv.Itoa(i),
		Target: r.Target, Pool: r.Pool, Source: string(r.Source),
		Exact: r.Exact, Configured: r.Configured, Instances: r.Status.Instances,
		State:        r.State,
		Stale:        r.Stale,
		LastSeen:     timeFig("last_seen", r.LastSeen),
		LastSeenAgo:  ago(now, r.LastSeen),
		Samples:      intFig("window.samples", w.Samples),
		WindowLength: fig{Text: humanDuration(time.Duration(w.WindowSeconds * float64(time.Second))), Key: "window.window_seconds", Value: jsonFloat(w.WindowSeconds)},
	}
	if r.Source == metrics.SourceActivity {
		c.EstimateNote = EstimateNote
	}
	if r.State == StateSaturated {
		c.Reasons = r.StateReasons
	}
	if r.PressureSince != nil && (r.State == StateSaturated || r.State == StateWarning) {
		f := timeFig("pressure_since", *r.PressureSince)
		c.Since, c.SinceFor = &f, ago(now, *r.PressureSince)
		c.SinceWholeWindow = len(w.Series) > 0 && r.PressureSince.Equal(w.Series[0].Time)
	}
	c.Tiles = tilesOf(r, m.th)
	c.Charts, c.Unobserved = historyCharts(r, now)
	c.Plan = planOf(r)
	c.Groups = m.findingGroups(r)
	switch {
	case len(c.Reasons) > 0:
		// The reasons come worst last (Manager.state): timeouts after waits after a full pool.
		c.Headline = c.Reasons[len(c.Reasons)-1]
	case len(c.Groups) > 0 && len(c.Groups[0].Findings) > 0:
		c.Headline = c.Groups[0].Findings[0].Headline
	}
	return c
}

// tilesOf are the key figures: how bad, now and over the window.
func tilesOf(r *Report, th advice.Thresholds) []tile {
	st, h, w, conn := &r.Status, &r.Health, &r.Window, &r.Connections
	inUse := tile{Label: "In use now", Main: []part{{Fig: ptr(intFig("status.checked_out", st.CheckedOut))}}}
	if st.Capacity != nil && h.CapacityUtilizationPct != nil {
		inUse.Main = append(inUse.Main, part{Text: " of ", Fig: ptr(intFig("status.capacity", *st.Capacity))})
		inUse.Note = []part{{Fig: ptr(pctFig("health.capacity_utilization_pct", *h.CapacityUtilizationPct))}, {Text: " of capacity"}}
		inUse.Bad = *h.CapacityUtilizationPct >= 100
	} else {
		inUse.Note = []part{{Text: "capacity unknown"}}
	}
	tiles := []tile{inUse}
	if st.PoolSize > 0 {
		tiles = append(tiles, tile{Label: "Of pool size, avg", Main: []part{{Fig: ptr(pctFig("health.avg_utilization_pct", h.AvgUtilizationPct))}},
			Note: []part{{Text: "peak "}, {Fig: ptr(pctFig("health.peak_utilization_pct", h.PeakUtilizationPct))}}, Bad: h.AvgUtilizationPct > 100*th.AvgUtilization})
	}
	if st.Pending != nil {
		t := tile{Label: "Waiting now", Main: []part{{Fig: ptr(intFig("status.pending", *st.Pending))}}, Bad: *st.Pending > 0}
		if w.PeakPending != nil {
			t.Note = []part{{Text: "peak "}, {Fig: ptr(intFig("window.peak_pending", *w.PeakPending))}}
		}
		tiles = append(tiles, t)
	}
	if a := w.AvgCheckoutSeconds; a != nil {
		target := r.Optimization.Sizing.Targets.MaxMeanWaitSeconds
		tiles = append(tiles, tile{Label: "Checkout, avg", Main: []part{{Fig: ptr(msFig("window.avg_checkout_seconds", *a))}}, Unit: "ms",
			Note: []part{{Text: "target < "}, {Fig: ptr(msFig("optimization.sizing.targets.max_mean_wait_seconds", target))}, {Text: " ms"}},
			Bad:  target > 0 && *a > target})
	}
	if t := w.Timeouts; t != nil {
		tl := tile{Label: "Timeouts", Main: []part{{Fig: ptr(numFig("window.timeouts", *t, 1, readable(*t)))}}, Bad: *t > 0}
		if ps := w.TimeoutsPerSecond; ps != nil {
			tl.Note = []part{{Fig: ptr(numFig("window.timeouts_per_second", *ps, 60, readable(*ps*60)))}, {Text: " per minute"}}
		}
		tiles = append(tiles, tl)
	}
	// A failed checkout ends fast: beside the average it says what the average hides.
	if connect, other := w.Failures[metrics.FailureConnect], w.Failures[metrics.FailureOther]; connect+other > 0 {
		t := tile{Label: "Failed checkouts", Bad: true}
		for _, f := range []struct {
			reason string
			n      float64
		}{{metrics.FailureConnect, connect}, {metrics.FailureOther, other}} {
			if f.n > 0 {
				if len(t.Main) > 0 {
					t.Main = append(t.Main, part{Text: " · "})
				}
				t.Main = append(t.Main, part{Fig: ptr(numFig("window.failures."+f.reason, f.n, 1, readable(f.n)))}, part{Text: " " + f.reason})
			}
		}
		tiles = append(tiles, t)
	}
	if l := r.Health.Leaks; l != nil {
		tiles = append(tiles, tile{Label: "Leaked now", Main: []part{{Fig: ptr(intFig("health.leaks.count", l.Count))}}, Bad: l.Count > 0,
			Note: []part{{Text: "held over "}, {Fig: ptr(numFig("health.leaks.threshold_seconds", l.ThresholdSeconds, 1, readable(l.ThresholdSeconds)))}, {Text: " s"}}})
	}
	if r.Configured && (st.MaxOverflow > 0 || st.Overflow > 0) {
		tiles = append(tiles, tile{Label: "Overflow now", Main: []part{{Fig: ptr(intFig("status.overflow", st.Overflow))}, {Text: " of ", Fig: ptr(intFig("status.max_overflow", st.MaxOverflow))}},
			Note: []part{{Text: "peak "}, {Fig: ptr(intFig("window.peak_overflow", w.PeakOverflow))}}})
	}
	if n := conn.IdleInTransaction; n != nil {
		tiles = append(tiles, tile{Label: "Idle in transaction", Main: []part{{Fig: ptr(intFig("active_connections.idle_in_transaction", *n))}}, Bad: *n > 0})
	}
	if q := conn.LongestQuerySeconds; q != nil {
		tiles = append(tiles, tile{Label: "Longest query", Main: []part{{Fig: ptr(numFig("active_connections.longest_query_seconds", *q, 1, readable(*q)))}}, Unit: "s"})
	}
	return tiles
}

func intFig(key string, v int) fig {
	return fig{Text: strconv.Itoa(v), Key: key, Value: strconv.Itoa(v)}
}

func numFig(key string, v, scale float64, text string) fig {
	f := fig{Text: text, Key: key, Value: jsonFloat(v)}
	if scale != 1 {
		f.Scale = jsonFloat(scale)
	}
	return f
}

func pctFig(key string, v float64) fig { return numFig(key, v, 1, readable(v)+"%") }

func msFig(key string, seconds float64) fig {
	return numFig(key, seconds, 1000, readable(seconds*1000))
}

// timeFig shows a time of day in UTC; its value is the time as the API encodes it.
func timeFig(key string, t time.Time) fig {
	return fig{Text: t.UTC().Format("15:04:05 MST"), Key: key, Value: t.Format(time.RFC3339Nano)}
}

// jsonFloat is a float as encoding/json writes it (any form that parses to the same float).
func jsonFloat(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }

// readable prints a figure to three significant digits (whole numbers from 100 up), or two
// below 1, so that a wait of 0.04 ms does not read as 0.
func readable(x float64) string {
	a := math.Abs(x)
	var s string
	switch {
	case a == 0 || !isFinite(x):
		return strconv.FormatFloat(x, 'f', -1, 64)
	case a >= 100:
		return strconv.FormatFloat(math.Round(x), 'f', 0, 64)
	case a >= 10:
		s = strconv.FormatFloat(x, 'f', 1, 64)
	case a >= 1:
		s = strconv.FormatFloat(x, 'f', 2, 64)
	default:
		return strconv.FormatFloat(x, 'g', 2, 64)
	}
	return strings.TrimSuffix(strings.TrimRight(s, "0"), ".")
}

func ago(now, t time.Time) string {
	d := now.Sub(t).Round(time.Second)
	if d < time.Second {
		return "just now"
	}
	return humanDuration(d) + " ago"
}

// estimateNote is what internal/advice appends to every message whose number comes from
// pg_stat_activity. The page and the CLI's text say it once per pool instead of in every
// line; the JSON API keeps the full messages.
const estimateNote = " (estimate from pg_stat_activity: a lower bound, since a connection checked out without an open transaction looks idle on the server)"

// EstimateNote says once what the messages of a pool from the activity source leave out
// after WithoutEstimateNote.
const EstimateNote = "numbers from pg_stat_activity are lower bounds: a connection checked out without an open transaction looks idle on the server"

// WithoutEstimateNote returns the findings without the estimate note that internal/advice
// appends to each message about a pool seen through pg_stat_activity.
func WithoutEstimateNote(fs []advice.Finding) []advice.Finding { return shorten(fs) }

func shorten(fs []advice.Finding) []advice.Finding {
	out := make([]advice.Finding, len(fs))
	for i, f := range fs {
		out[i] = advice.Finding{Rule: f.Rule, Message: strings.ReplaceAll(f.Message, estimateNote, "")}
	}
	return out
}

// humanDuration prints 1h, 90s as 1m30s, without Duration.String's zero units.
func humanDuration(d time.Duration) string {
	s := d.String()
	for _, suffix := range []string{"m0s", "h0m"} {
		if len(s) > len(suffix) && s[len(s)-len(suffix):] == suffix {
			s = s[:len(s)-2]
		}
	}
	return s
}
