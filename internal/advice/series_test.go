package advice

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestSummarySeries(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	i := func(v int) *int { return &v }
	// sample at sec with in use, pending, and the three counters.
	sample := func(sec float64, inUse, size, capacity int, pending *int, checkouts, waitSeconds, timeouts float64) Sample {
		return Sample{Time: at(sec), InUse: inUse, PoolSize: size, Capacity: capacity, Pending: pending,
			CheckoutsTotal: f(checkouts), CheckoutSecondsTotal: f(waitSeconds), TimeoutsTotal: f(timeouts)}
	}
	tests := []struct {
		name            string
		window, spacing time.Duration
		samples         []Sample
		now             time.Time
		want            []Point
	}{
		{name: "no sample", window: time.Minute, now: at(0), want: []Point{}},
		{
			name: "one sample: no counters yet", window: time.Minute, spacing: time.Second, now: at(0),
			samples: []Sample{sample(0, 3, 5, 10, i(0), 10, 0.1, 0)},
			want:    []Point{{Time: at(0), InUse: 3, PoolSize: 5, Capacity: 10, Pending: i(0)}},
		},
		{
			// Slots of 1 s (60 s / 60): the samples at 0.25 s steps fall four to a slot; the
			// peaks survive, the counters add up, the oldest entry's increase is left out.
			name: "four samples a slot", window: time.Minute, spacing: 100 * time.Millisecond, now: at(2),
			samples: []Sample{
				sample(0, 1, 5, 10, i(0), 0, 0, 0),
				sample(0.25, 4, 5, 10, i(2), 10, 0.5, 1),
				sample(0.5, 2, 5, 10, i(1), 20, 0.7, 1),
				sample(0.75, 1, 5, 10, i(0), 30, 0.8, 3),
				sample(1.0, 1, 5, 10, i(0), 40, 0.8, 3),
				sample(1.5, 7, 6, 12, i(3), 50, 1.8, 3), // reloaded: 6 + 6
			},
			want: []Point{
				// 10+10+10 checkouts, 0.5+0.2+0.1 s of waits, 1+0+2 timeouts.
				{Time: at(0.75), InUse: 4, PoolSize: 5, Capacity: 10, Pending: i(2), CheckoutSeconds: f(0.8 / 30), Timeouts: f(3)},
				{Time: at(1.5), InUse: 7, PoolSize: 6, Capacity: 12, Pending: i(3), CheckoutSeconds: f(1.0 / 20), Timeouts: f(0)},
			},
		},
		{
			// A source that sees no waiters and counts nothing (pg_stat_activity).
			name: "gauges only", window: 10 * time.Minute, spacing: time.Second, now: at(40),
			samples: []Sample{{Time: at(0), InUse: 2}, {Time: at(20), InUse: 5}, {Time: at(40), InUse: 1}},
			want:    []Point{{Time: at(0), InUse: 2}, {Time: at(20), InUse: 5}, {Time: at(40), InUse: 1}},
		},
		{
			// Slots of 10 s; no checkout between two samples leaves the mean wait unknown.
			name: "no checkout in a slot", window: 10 * time.Minute, spacing: time.Second, now: at(20),
			samples: []Sample{sample(0, 1, 2, 2, nil, 5, 0.5, 0), sample(10, 1, 2, 2, nil, 5, 0.5, 0), sample(20, 2, 2, 2, nil, 7, 0.7, 0)},
			want: []Point{
				{Time: at(0), InUse: 1, PoolSize: 2, Capacity: 2},
				{Time: at(10), InUse: 1, PoolSize: 2, Capacity: 2, Timeouts: f(0)},
				{Time: at(20), InUse: 2, PoolSize: 2, Capacity: 2, CheckoutSeconds: f(0.1), Timeouts: f(0)},
			},
		},
		{
			// The window ends at 70 s: the samples at 0 and 5 s are out of it.
			name: "samples out of the window", window: time.Minute, spacing: time.Second, now: at(70),
			samples: []Sample{{Time: at(0), InUse: 9}, {Time: at(5), InUse: 9}, {Time: at(15), InUse: 1}, {Time: at(65), InUse: 2}},
			want:    []Point{{Time: at(15), InUse: 1}, {Time: at(65), InUse: 2}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := NewHistory(tc.window, tc.spacing)
			for _, s := range tc.samples {
				h.Add(s)
			}
			sum := h.Summary(tc.now, pool(5, 5, 1))
			if len(sum.Series) != len(tc.want) {
				t.Fatalf("series %s, want %s", pointsString(sum.Series), pointsString(tc.want))
			}
			for k, p := range sum.Series {
				w := tc.want[k]
				if !p.Time.Equal(w.Time) || p.InUse != w.InUse || p.PoolSize != w.PoolSize || p.Capacity != w.Capacity ||
					!reflect.DeepEqual(p.Pending, w.Pending) || !eqPtr(p.CheckoutSeconds, w.CheckoutSeconds) || !eqPtr(p.Timeouts, w.Timeouts) {
					t.Errorf("point %d: %s, want %s", k, pointsString([]Point{p}), pointsString([]Point{w}))
				}
			}
		})
	}
}

// TestSummarySeriesAddsUp: the points' timeouts add up to the window's, and two summaries
// a moment apart group the samples alike (the slots are aligned to the clock, not to now).
func TestSummarySeriesAddsUp(t *testing.T) {
	h := NewHistory(time.Minute, 100*time.Millisecond)
	timeouts := 0.0
	for k := range 600 {
		if k%7 == 0 {
			timeouts++
		}
		n := float64(k)
		h.Add(Sample{Time: at(n / 10), InUse: k % 5, CheckoutsTotal: &n, CheckoutSecondsTotal: &n, TimeoutsTotal: &timeouts})
	}
	a := h.Summary(at(59.9), pool(5, 5, 1))
	b := h.Summary(at(59.9+0.3), pool(5, 5, 1))
	total := 0.0
	for _, p := range a.Series {
		if p.Timeouts != nil {
			total += *p.Timeouts
		}
	}
	if a.Timeouts == nil || !approx(total, *a.Timeouts) || len(a.Series) < SeriesPoints || len(a.Series) > SeriesPoints+1 {
		t.Errorf("%d points with %v timeouts, window %v", len(a.Series), total, fmtPtr(a.Timeouts))
	}
	// b's window starts 0.3 s later: it may lose a point at the start, the rest are equal.
	if !reflect.DeepEqual(a.Series[len(a.Series)-len(b.Series)+1:], b.Series[1:]) {
		t.Errorf("the points moved with now:\n%s\n%s", pointsString(a.Series), pointsString(b.Series))
	}
}

func pointsString(ps []Point) string {
	var b strings.Builder
	for _, p := range ps {
		fmt.Fprintf(&b, "{%s in_use %d size %d/%d", p.Time.Format("05.000"), p.InUse, p.PoolSize, p.Capacity)
		if p.Pending != nil {
			fmt.Fprintf(&b, " pending %d", *p.Pending)
		}
		fmt.Fprintf(&b, " wait %v timeouts %v} ", fmtPtr(p.CheckoutSeconds), fmtPtr(p.Timeouts))
	}
	return b.String()
}
