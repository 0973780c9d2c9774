package health

import (
	"bytes"
	_ "embed"
	"fmt"
	"html/template"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/dbpool/dbpool_exporter/internal/advice"
	"github.com/dbpool/dbpool_exporter/internal/metrics"
)

//go:embed pools.html
var pageSource string

// pageTemplate is html/template: every value, including pool names that come from clients'
// application_name, is escaped for the context it lands in.
var pageTemplate = template.Must(template.New("pools").Parse(pageSource))

// pageRefresh is how often the page reloads itself (a meta refresh: no JavaScript).
const pageRefresh = 30 * time.Second

type pageData struct {
	Generated string
	Window    string
	Refresh   int
	Counts    []stateCount
	Rows      []pageRow
	Leaks     []pageLeaks
}

// pageLeaks is one pool's leaked connections, for the page's section on them.
type pageLeaks struct {
	Target, Pool string
	Summary      string
	Sites        []pageLeakSite
}

type pageLeakSite struct {
	Place, Function, Count, Oldest string
}

type stateCount struct {
	State State
	N     int
}

type pageRow struct {
	Target, Pool, Source string
	Exact, Configured    bool
	State                State
	StateReasons         []string

	BarWidth    string // CSS percentage, 0..100
	Utilization string
	Overflow    string
	Pending     string
	Checkout    string
	Failed      string // checkouts that failed to connect or with an error, in the window
	IdleInTx    string
	IdleInTxBad bool
	LongQuery   string
	LastSeen    string

	Warnings        []advice.Finding
	Recommendations []advice.Finding
	Env             string
	SizeRule        string
}

func (m *Manager) servePage(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method "+r.Method+" not allowed: use GET", http.StatusMethodNotAllowed)
		return
	}
	now := m.now()
	reports := m.Reports()
	data := pageData{
		Generated: now.UTC().Format("2006-01-02 15:04:05 MST"),
		Window:    humanDuration(m.window),
		Refresh:   int(pageRefresh.Seconds()),
	}
	counts := map[State]int{}
	for i := range reports {
		row := newPageRow(&reports[i], now)
		counts[row.State]++
		data.Rows = append(data.Rows, row)
		if l := newPageLeaks(&reports[i]); l != nil {
			data.Leaks = append(data.Leaks, *l)
		}
	}
	for _, s := range []State{StateSaturated, StateWarning, StateOK, StateUnknown} {
		if counts[s] > 0 {
			data.Counts = append(data.Counts, stateCount{s, counts[s]})
		}
	}
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

const notObservable = "n/a"

func newPageRow(r *Report, now time.Time) pageRow {
	w := r.Window
	l := w.Latest
	row := pageRow{
		Target: r.Target, Pool: r.Pool, Source: string(r.Source),
		Exact: r.Exact, Configured: r.Configured,
		State: r.State, StateReasons: r.StateReasons,
		BarWidth:        "0",
		Warnings:        shorten(r.Health.Warnings),
		Recommendations: shorten(append(append([]advice.Finding{}, r.Health.Recommendations...), r.Optimization.Recommendations...)),
		Env:             r.Optimization.Env,
		SizeRule:        r.Optimization.PoolSizeRule,
		LastSeen:        humanDuration(now.Sub(r.LastSeen).Round(time.Second)) + " ago",
	}
	if c := r.Status.Capacity; c != nil && r.Health.CapacityUtilizationPct != nil {
		cu := *r.Health.CapacityUtilizationPct
		row.BarWidth = strconv.FormatFloat(min(max(cu, 0), 100), 'f', 1, 64)
		row.Utilization = fmt.Sprintf("%d of %d in use: %s%% of capacity, %s%% of pool_size (peak %s%%)",
			l.InUse, *c, fmtNum(cu), fmtNum(r.Health.UtilizationPct), fmtNum(r.Health.PeakUtilizationPct))
	} else {
		row.Utilization = fmt.Sprintf("%d in use (capacity unknown)", l.InUse)
	}
	if r.Configured {
		row.Overflow = fmt.Sprintf("%d / %d (peak %d)", l.Overflow, r.Status.MaxOverflow, w.PeakOverflow)
	} else {
		row.Overflow = notObservable
	}
	row.Pending = notObservable
	if l.Pending != nil {
		row.Pending = strconv.Itoa(*l.Pending)
		if w.PeakPending != nil {
			row.Pending += fmt.Sprintf(" (peak %d)", *w.PeakPending)
		}
	}
	row.Checkout = notObservable
	if w.AvgCheckoutSeconds != nil {
		row.Checkout = fmtNum(*w.AvgCheckoutSeconds*1000) + " ms"
	}
	// A failed checkout ends fast, so beside the average it says what the average hides.
	if n := w.Failures[metrics.FailureConnect] + w.Failures[metrics.FailureOther]; n > 0 {
		row.Failed = fmt.Sprintf("%s failed (connect %s)", fmtNum(n), fmtNum(w.Failures[metrics.FailureConnect]))
	}
	row.IdleInTx = notObservable
	if l.IdleInTransaction != nil {
		row.IdleInTx = strconv.Itoa(*l.IdleInTransaction)
		row.IdleInTxBad = *l.IdleInTransaction > 0
	}
	row.LongQuery = notObservable
	if l.LongestQuerySeconds != nil {
		row.LongQuery = fmtNum(*l.LongestQuerySeconds) + " s"
	}
	return row
}

// newPageLeaks is the leak section's entry of a pool; nil when it has no leaked connection.
func newPageLeaks(r *Report) *pageLeaks {
	l := r.Health.Leaks
	if l == nil || l.Count == 0 {
		return nil
	}
	out := &pageLeaks{Target: r.Target, Pool: r.Pool,
		Summary: fmt.Sprintf("%d held longer than %s s, leak detection on in %d instances", l.Count, fmtNum(l.ThresholdSeconds), l.Instances)}
	for _, s := range l.Sites {
		site := pageLeakSite{Place: "outside the application's code", Function: s.Function, Count: strconv.Itoa(s.Count), Oldest: fmtNum(s.OldestSeconds) + " s"}
		if s.File != "" {
			site.Place = fmt.Sprintf("%s:%d", s.File, s.Line)
		}
		out.Sites = append(out.Sites, site)
	}
	return out
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
