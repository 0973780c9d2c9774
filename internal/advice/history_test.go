package advice

import (
	"math"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/dbpool/dbpool_exporter/internal/metrics"
	"github.com/dbpool/dbpool_exporter/poolcfg"
)

var t0 = time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)

func at(sec float64) time.Time { return t0.Add(time.Duration(sec * float64(time.Second))) }

func pool(size, overflow, instances int) Pool {
	s := poolcfg.DefaultSettings()
	s.PoolSize, s.MaxOverflow = size, overflow
	return Pool{Name: "app", Source: metrics.SourceApp, Settings: s, Instances: instances}
}

func approx(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

func eqPtr(got, want *float64) bool {
	if got == nil || want == nil {
		return got == nil && want == nil
	}
	return approx(*got, *want)
}

func fmtPtr(p *float64) any {
	if p == nil {
		return "nil"
	}
	return *p
}

func TestHistorySummary(t *testing.T) {
	type want struct {
		samples                  int
		peakInUse                int
		avgInUse                 float64
		avgUtil, peakUtil        float64
		peakOverflow             int
		timeouts, timeoutsPerSec *float64
		avgCheckout              *float64
		arrival, hold, inFlight  *float64
		latestInUse              int
		peakPending              *int
	}
	tests := []struct {
		name    string
		pool    Pool
		samples []Sample
		now     time.Time
		want    want
	}{
		{
			name: "peak, average and utilization against instances x pool_size",
			pool: pool(10, 20, 2),
			samples: []Sample{
				{Time: at(0), InUse: 4, Overflow: 0},
				{Time: at(15), InUse: 8, Overflow: 0},
				{Time: at(30), InUse: 24, Overflow: 4},
				{Time: at(45), InUse: 12, Overflow: 1},
			},
			now: at(45),
			want: want{samples: 4, peakInUse: 24, avgInUse: 12, avgUtil: 0.6, peakUtil: 1.2,
				peakOverflow: 4, latestInUse: 12},
		},
		{
			name: "counter reset counts the new value as the increase",
			pool: pool(10, 20, 1),
			samples: []Sample{
				{Time: at(0), TimeoutsTotal: new(5.0)},
				{Time: at(15), TimeoutsTotal: new(7.0)},
				{Time: at(30), TimeoutsTotal: new(2.0)}, // process restarted
				{Time: at(45), TimeoutsTotal: new(4.0)},
			},
			now:  at(45),
			want: want{samples: 4, timeouts: new(6.0), timeoutsPerSec: new(6.0 / 45)},
		},
		{
			name: "average checkout time is delta sum over delta count",
			pool: pool(10, 20, 1),
			samples: []Sample{
				{Time: at(0), CheckoutsTotal: new(100.0), CheckoutSecondsTotal: new(1.0)},
				{Time: at(15), CheckoutsTotal: new(200.0), CheckoutSecondsTotal: new(2.0)},
				{Time: at(30), CheckoutsTotal: new(300.0), CheckoutSecondsTotal: new(3.5)},
			},
			now: at(30),
			want: want{samples: 3, avgCheckout: new(2.5 / 200),
				arrival: new(200.0 / 30)},
		},
		{
			name: "checkout counters reset together",
			pool: pool(10, 20, 1),
			samples: []Sample{
				{Time: at(0), CheckoutsTotal: new(100.0), CheckoutSecondsTotal: new(1.0)},
				{Time: at(15), CheckoutsTotal: new(200.0), CheckoutSecondsTotal: new(2.0)},
				{Time: at(30), CheckoutsTotal: new(50.0), CheckoutSecondsTotal: new(0.5)},
			},
			now:  at(30),
			want: want{samples: 3, avgCheckout: new(1.5 / 150), arrival: new(150.0 / 30)},
		},
		{
			name: "samples older than the window are left out",
			pool: pool(10, 20, 1),
			samples: []Sample{
				{Time: at(0), InUse: 9, TimeoutsTotal: new(0.0)},
				{Time: at(3000), InUse: 2, TimeoutsTotal: new(100.0)},
				{Time: at(3600), InUse: 4, TimeoutsTotal: new(103.0)},
				{Time: at(4200), InUse: 3, TimeoutsTotal: new(104.0)},
			},
			now: at(7000), // window (3400 s, 7000 s]: the last two samples
			want: want{samples: 2, peakInUse: 4, avgInUse: 3.5, avgUtil: 0.35, peakUtil: 0.4,
				timeouts: new(1.0), timeoutsPerSec: new(1.0 / 600), latestInUse: 3},
		},
		{
			name: "Little's law from rate and hold time in the samples",
			pool: pool(10, 20, 1),
			samples: []Sample{
				{Time: at(0), ArrivalRate: new(80.0), MeanHoldSeconds: new(0.05)},
				{Time: at(15), ArrivalRate: new(120.0), MeanHoldSeconds: new(0.05)},
			},
			now:  at(15),
			want: want{samples: 2, arrival: new(100.0), hold: new(0.05), inFlight: new(5.0)},
		},
		{
			name: "Little's law with the checkout counter as arrival rate",
			pool: pool(10, 20, 1),
			samples: []Sample{
				{Time: at(0), CheckoutsTotal: new(0.0), MeanHoldSeconds: new(0.05)},
				{Time: at(15), CheckoutsTotal: new(1500.0), MeanHoldSeconds: new(0.05)},
			},
			now:  at(15),
			want: want{samples: 2, arrival: new(100.0), hold: new(0.05), inFlight: new(5.0)},
		},
		{
			name: "samples closer than the spacing coalesce and keep the peak",
			pool: pool(10, 20, 1),
			samples: []Sample{
				{Time: at(0), InUse: 1, Pending: new(0)},
				{Time: at(0.2), InUse: 9, Overflow: 2, Pending: new(3)},
				{Time: at(0.4), InUse: 2, Pending: new(1)},
				{Time: at(2), InUse: 8, Pending: new(0)},
			},
			now: at(2),
			// Two entries: the mean of {1, 9, 2} is 4, then 8; they weigh the same.
			want: want{samples: 4, peakInUse: 9, avgInUse: 6, avgUtil: 0.6, peakUtil: 0.9,
				peakOverflow: 2, latestInUse: 8, peakPending: new(3)},
		},
		{
			name: "a sample out of order is dropped",
			pool: pool(10, 20, 1),
			samples: []Sample{
				{Time: at(30), InUse: 3},
				{Time: at(15), InUse: 9},
				{},
			},
			now:  at(30),
			want: want{samples: 1, peakInUse: 3, avgInUse: 3, avgUtil: 0.3, peakUtil: 0.3, latestInUse: 3},
		},
		{
			name: "pool_size 0 falls back to capacity",
			pool: pool(0, 20, 1),
			samples: []Sample{
				{Time: at(0), InUse: 5},
			},
			now:  at(0),
			want: want{samples: 1, peakInUse: 5, avgInUse: 5, avgUtil: 0.25, peakUtil: 0.25, latestInUse: 5},
		},
		{
			name: "empty",
			pool: pool(10, 20, 1),
			now:  at(0),
			want: want{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := NewHistory(time.Hour, time.Second)
			for _, s := range tt.samples {
				h.Add(s)
			}
			got := h.Summary(tt.now, tt.pool)
			w := tt.want
			if got.Samples != w.samples || got.PeakInUse != w.peakInUse || !approx(got.AvgInUse, w.avgInUse) ||
				!approx(got.AvgUtilization, w.avgUtil) || !approx(got.PeakUtilization, w.peakUtil) ||
				got.PeakOverflow != w.peakOverflow || got.Latest.InUse != w.latestInUse {
				t.Errorf("samples=%d peak=%d avg=%v avgUtil=%v peakUtil=%v peakOverflow=%d latest=%d, want %+v",
					got.Samples, got.PeakInUse, got.AvgInUse, got.AvgUtilization, got.PeakUtilization,
					got.PeakOverflow, got.Latest.InUse, w)
			}
			for _, c := range []struct {
				name      string
				got, want *float64
			}{
				{"timeouts", got.Timeouts, w.timeouts},
				{"timeouts/s", got.TimeoutsPerSecond, w.timeoutsPerSec},
				{"avg checkout", got.AvgCheckoutSeconds, w.avgCheckout},
				{"arrival", got.ArrivalRate, w.arrival},
				{"hold", got.MeanHoldSeconds, w.hold},
				{"in flight", got.InFlight, w.inFlight},
			} {
				if !eqPtr(c.got, c.want) {
					t.Errorf("%s = %v, want %v", c.name, fmtPtr(c.got), fmtPtr(c.want))
				}
			}
			if (got.PeakPending == nil) != (w.peakPending == nil) ||
				(got.PeakPending != nil && *got.PeakPending != *w.peakPending) {
				t.Errorf("peak pending = %v, want %v", got.PeakPending, w.peakPending)
			}
		})
	}
}

func TestHistoryFull(t *testing.T) {
	every := func(from, to, step float64) []Sample {
		var s []Sample
		for x := from; x <= to; x += step {
			s = append(s, Sample{Time: at(x), InUse: 1})
		}
		return s
	}
	tests := []struct {
		name    string
		samples []Sample
		now     time.Time
		full    bool
		maxGap  float64
	}{
		{"an hour of 15 s scrapes", every(0, 3600, 15), at(3600), true, 15},
		{"half an hour only", every(1800, 3600, 15), at(3600), false, 15},
		{"a 20 minute hole", append(every(0, 1200, 15), every(2400, 3600, 15)...), at(3600), false, 1200},
		{"scrapes stopped 10 minutes ago", every(0, 3000, 15), at(3600), false, 600},
		{"a 5 minute hole is tolerated", append(every(0, 1200, 15), every(1500, 3600, 15)...), at(3600), true, 300},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := NewHistory(time.Hour, time.Second)
			for _, s := range tt.samples {
				h.Add(s)
			}
			got := h.Summary(tt.now, pool(10, 20, 1))
			if got.Full != tt.full || !approx(got.MaxGapSeconds, tt.maxGap) {
				t.Errorf("full=%v maxGap=%v, want full=%v maxGap=%v", got.Full, got.MaxGapSeconds, tt.full, tt.maxGap)
			}
		})
	}
}

func TestHistoryMemoryBound(t *testing.T) {
	tests := []struct {
		name            string
		window, spacing time.Duration
		step            time.Duration
		adds            int
		wantCap         int // 0: at most MaxEntries
		wantLen         int // 0: not checked
	}{
		{"scrapes faster than the spacing coalesce", time.Minute, time.Second, 10 * time.Millisecond, 100_000, 61, 61},
		{"scrapes at the spacing fill the ring", time.Minute, time.Second, time.Second, 10_000, 61, 61},
		{"slow scrapes hold only the window", time.Minute, time.Second, 15 * time.Second, 10_000, 61, 5},
		{"a huge window/spacing ratio is capped", 24 * time.Hour, time.Millisecond, time.Millisecond, 300_000, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := NewHistory(tt.window, tt.spacing)
			if h.Cap() > MaxEntries || (tt.wantCap != 0 && h.Cap() != tt.wantCap) {
				t.Errorf("Cap() = %d, want %d", h.Cap(), tt.wantCap)
			}
			for i := range tt.adds {
				h.Add(Sample{Time: t0.Add(time.Duration(i) * tt.step), InUse: i % 7})
				if h.Len() > h.Cap() || len(h.ring) > h.Cap() {
					t.Fatalf("after %d adds: Len()=%d ring=%d > Cap()=%d", i+1, h.Len(), len(h.ring), h.Cap())
				}
			}
			if tt.wantLen != 0 && h.Len() != tt.wantLen {
				t.Errorf("Len() = %d, want %d", h.Len(), tt.wantLen)
			}
			sum := h.Summary(t0.Add(time.Duration(tt.adds-1)*tt.step), pool(10, 20, 1))
			if sum.PeakInUse != 6 {
				t.Errorf("peak in use = %d, want 6", sum.PeakInUse)
			}
			// Bounded memory must not shorten the window: it still reaches back a full window.
			fed := time.Duration(tt.adds-1) * tt.step
			if span, want := sum.To.Sub(sum.From), min(tt.window, fed); span < want-tt.spacing-tt.step {
				t.Errorf("summary spans %v, want about %v", span, want)
			}
		})
	}
}

// TestHistoryOrderAfterWrap checks that the ring keeps time order while it grows, wraps and
// reuses evicted slots (sparse and dense phases alternate), by comparing counter increases and
// peaks with the truth recomputed from the raw samples.
func TestHistoryOrderAfterWrap(t *testing.T) {
	h := NewHistory(time.Minute, time.Second)
	var raw []Sample
	now, total := t0, 0.0
	for i := range 2000 {
		step := time.Second
		if (i/100)%2 == 0 {
			step = 7 * time.Second
		}
		now = now.Add(step)
		total += float64(i % 3)
		s := Sample{Time: now, TimeoutsTotal: new(total), InUse: (i * 7) % 11}
		raw = append(raw, s)
		h.Add(s)

		if i%37 != 0 {
			continue
		}
		// Every step is >= the spacing, so each sample is its own entry and the window holds
		// exactly the raw samples not older than now - 1m.
		k := len(raw) - 1
		for k > 0 && !raw[k-1].Time.Before(now.Add(-time.Minute)) {
			k--
		}
		peak := 0
		for _, r := range raw[k:] {
			peak = max(peak, r.InUse)
		}
		sum := h.Summary(now, pool(10, 20, 1))
		if sum.Samples != len(raw)-k || sum.PeakInUse != peak || !sum.From.Equal(raw[k].Time) || !sum.To.Equal(now) {
			t.Fatalf("i=%d: samples=%d peak=%d from=%v to=%v, want %d %d %v %v",
				i, sum.Samples, sum.PeakInUse, sum.From, sum.To, len(raw)-k, peak, raw[k].Time, now)
		}
		if k == len(raw)-1 {
			continue
		}
		want := total - *raw[k].TimeoutsTotal
		if sum.Timeouts == nil || !approx(*sum.Timeouts, want) ||
			!approx(*sum.TimeoutsPerSecond, want/now.Sub(raw[k].Time).Seconds()) {
			t.Fatalf("i=%d: timeouts=%v rate=%v, want %v over %v", i, fmtPtr(sum.Timeouts),
				fmtPtr(sum.TimeoutsPerSecond), want, now.Sub(raw[k].Time))
		}
	}
}

func TestHistoryCopiesPointers(t *testing.T) {
	h := NewHistory(time.Hour, time.Second)
	n := 3
	h.Add(Sample{Time: at(0), IdleInTransaction: &n})
	n = 99
	got := h.Summary(at(0), pool(10, 20, 1)).Latest.IdleInTransaction
	if got == nil || *got != 3 {
		t.Fatalf("stored idle_in_transaction changed with the caller's variable: %v", got)
	}
}

func TestHistoryConcurrent(t *testing.T) {
	h := NewHistory(time.Minute, time.Second)
	var wg sync.WaitGroup
	var mu sync.Mutex // serialises the clock, not the History
	next := t0
	for range 4 {
		wg.Go(func() {
			for i := range 500 {
				mu.Lock()
				next = next.Add(300 * time.Millisecond)
				ts := next
				mu.Unlock()
				h.Add(Sample{Time: ts, InUse: i % 10})
				if i%50 == 0 {
					_ = h.Summary(ts, pool(10, 20, 1))
				}
			}
		})
	}
	wg.Wait()
	if h.Len() > h.Cap() {
		t.Fatalf("Len()=%d > Cap()=%d", h.Len(), h.Cap())
	}
	if got := h.Summary(next, pool(10, 20, 1)).PeakInUse; got != 9 {
		t.Errorf("peak in use = %d, want 9", got)
	}
}

// TestHistoryLoad: the window's hold-time histogram, connect time and failures are the
// increases of the counters, across a restart of the process; the newest raw samples are
// kept for the pool's state.
func TestHistoryLoad(t *testing.T) {
	hist := func(count, sum float64, inBucket int) *Histogram {
		h := &Histogram{Count: count, Sum: sum}
		for i, le := range []float64{0.1, 0.25, math.Inf(1)} {
			c := 0.0
			if i >= inBucket {
				c = count
			}
			h.Buckets = append(h.Buckets, Bucket{LE: le, Count: c})
		}
		return h
	}
	h := NewHistory(time.Hour, time.Second)
	var samples []Sample
	for i := range 10 {
		n := float64(100 * i)
		s := Sample{Time: at(float64(15 * i)), InUse: i % 3, BusiestInUse: new(i % 3),
			Hold:          hist(n, n*0.15, 1),
			Create:        &Histogram{Count: float64(i), Sum: float64(i) * 0.004},
			FailuresTotal: map[string]float64{metrics.FailureTimeout: float64(2 * i), metrics.FailureConnect: float64(i)},
			Pending:       new(i % 2), LongestWaitSeconds: new(0.001)}
		if i >= 6 { // the process restarted: counters from 0
			m := float64(100 * (i - 6))
			s.Hold = hist(m, m*0.15, 1)
			s.FailuresTotal = map[string]float64{metrics.FailureTimeout: float64(i - 6)}
			s.Create = nil
		}
		samples = append(samples, s)
		h.Add(s)
	}
	sum := h.Summary(samples[9].Time, pool(2, 0, 1))
	// 100 per step for steps 1..5, then 0 (restart: 0 counts whole), 100, 100, 100.
	if sum.Hold == nil || !approx(sum.Hold.Count, 800) || !approx(sum.Hold.MeanSeconds, 0.15) {
		t.Fatalf("hold %+v, want 800 holds of 150 ms", sum.Hold)
	}
	if want := []Bucket{{0.1, 0}, {0.25, 800}, {math.Inf(1), 800}}; !slices.Equal(sum.Hold.Buckets, want) {
		t.Errorf("hold buckets %v, want %v", sum.Hold.Buckets, want)
	}
	if !eqPtr(sum.MeanHoldSeconds, new(0.15)) {
		t.Errorf("mean hold %v", sum.MeanHoldSeconds)
	}
	// 2/step for 5 steps, then 0, 1, 1, 1 after the restart; connect failed once a step
	// until the restart, after which the reason is absent.
	if got := sum.Failures; !approx(got[metrics.FailureTimeout], 13) || !approx(got[metrics.FailureConnect], 5) {
		t.Errorf("failures %v, want timeout 13, connect 5", got)
	}
	if sum.MeanCreateSeconds == nil || !approx(*sum.MeanCreateSeconds, 0.004) {
		t.Errorf("mean create %v, want 4 ms", sum.MeanCreateSeconds)
	}
	if sum.PeakInUseBusiest == nil || *sum.PeakInUseBusiest != 2 {
		t.Errorf("busiest peak %v, want 2", sum.PeakInUseBusiest)
	}
	if len(sum.Recent) != recentSamples || !sum.Recent[recentSamples-1].Time.Equal(samples[9].Time) || *sum.Recent[0].Pending != 1 {
		t.Errorf("recent %+v, want the last %d samples, oldest first", sum.Recent, recentSamples)
	}
	if sum.Latest.Hold != nil || sum.Latest.FailuresTotal != nil {
		t.Errorf("latest keeps its counters: %+v", sum.Latest)
	}
}
