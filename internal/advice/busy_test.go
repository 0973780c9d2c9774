package advice

import (
	"math"
	"strings"
	"testing"
	"time"
)

// phase is a steady load, rate checkouts per second each holding a connection hold seconds,
// until a second of the history.
type phase struct{ until, rate, hold float64 }

// phased is one instance's report every 15 s offered each phase's load in turn, every checkout
// served, up to the end of the last phase.
func phased(phases ...phase) []Sample {
	var count, sum float64
	buckets := make([]float64, len(holdBounds))
	p := 0
	return series(phases[len(phases)-1].until, 15, func(i int) Sample {
		if i > 0 {
			// The 15 s up to this sample carry the load of the phase they began in.
			for float64(i-1)*15 >= phases[p].until {
				p++
			}
			ph := phases[p]
			n := ph.rate * 15
			count, sum = count+n, sum+n*ph.hold
			for b, le := range holdBounds {
				if ph.hold <= le {
					buckets[b] += n
				}
			}
		}
		hold := &Histogram{Count: count, Sum: sum}
		for b, le := range holdBounds {
			hold.Buckets = append(hold.Buckets, Bucket{LE: le, Count: buckets[b]})
		}
		ph := phases[min(p, len(phases)-1)]
		inUse := int(math.Ceil(ph.rate * ph.hold))
		return Sample{InUse: inUse, Open: inUse, CheckoutsTotal: new(count), CheckoutSecondsTotal: new(0.0001 * count), TimeoutsTotal: new(0.0), Hold: hold}
	})
}

// TestBusiestSpan: the sizing model takes the offered load of the busiest 5 minutes of a longer
// window and says which; what describes the window as a whole stays the whole window's.
func TestBusiestSpan(t *testing.T) {
	quiet, surge := phase{rate: 5, hold: 0.02}, phase{rate: 30, hold: 0.1}
	until := func(p phase, s float64) phase { p.until = s; return p }
	// The surge on its own, steady: what the pool must be sized for.
	steadySurge := OptimizePoolSettings(Input{Pool: appPool(2, 0, 1, 30), Summary: summarize(appPool(2, 0, 1, 30), phased(until(surge, 3600)))}, DefaultThresholds())

	tests := []struct {
		name     string
		window   time.Duration
		samples  []Sample
		rate     float64 // per second, ±0.1%
		hold     float64 // seconds, ±0.1%
		from, to float64 // the span the load was taken from, seconds after the first sample
		busiest  bool    // the span is the busiest 5 minutes, not the whole window
		size     int     // 0: steadySurge's
		text     string  // in the sizing message
		// checkouts over the whole window: the window's figures do not follow the span
		checkouts float64
	}{
		{
			name:    "a 5-minute surge in a quiet hour sizes for the surge and names its span",
			window:  time.Hour,
			samples: phased(until(quiet, 1800), until(surge, 2100), until(quiet, 3600)),
			rate:    30, hold: 0.1, from: 1800, to: 2100, busiest: true,
			text:      "Little's law over the busiest 5m of the 1h window, 12:30:00-12:35:00 UTC: 30 checkouts/s x 100 ms held = 3 connections",
			checkouts: 5*3300 + 30*300,
		},
		{
			name:    "a steady load gives the window's average, as before",
			window:  time.Hour,
			samples: phased(until(surge, 3600)),
			rate:    30, hold: 0.1, from: 3300, to: 3600, busiest: true,
			checkouts: 30 * 3600,
		},
		{
			name:    "a window shorter than 5 minutes is used whole",
			window:  4 * time.Minute,
			samples: phased(until(quiet, 120), until(surge, 240)),
			rate:    (5*120 + 30*120) / 240.0, hold: (600*0.02 + 3600*0.1) / 4200, from: 0, to: 240,
			size:      3,
			text:      "Little's law over the last 4m: 17.5 checkouts/s x 88.57 ms held",
			checkouts: 5*120 + 30*120,
		},
		{
			name:    "a history shorter than 5 minutes is used whole",
			window:  time.Hour,
			samples: phased(until(quiet, 120), until(surge, 240)),
			rate:    (5*120 + 30*120) / 240.0, hold: (600*0.02 + 3600*0.1) / 4200, from: 0, to: 240,
			size:      3,
			text:      "Little's law over the last 4m: 17.5 checkouts/s",
			checkouts: 5*120 + 30*120,
		},
		{
			name:    "a 30-second surge is averaged over 5 minutes, not taken from one sample",
			window:  time.Hour,
			samples: phased(until(quiet, 1800), phase{until: 1830, rate: 60, hold: 0.1}, until(quiet, 3600)),
			// Of the spans that hold the whole surge, which weigh the same, the newest.
			rate: (60*30 + 5*270) / 300.0, hold: (1800*0.1 + 1350*0.02) / 3150, from: 1800, to: 2100, busiest: true,
			size:      2,
			checkouts: 5*3570 + 60*30,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := appPool(2, 0, 1, 30)
			h := NewHistory(tt.window, time.Second)
			for _, s := range tt.samples {
				h.Add(s)
			}
			s := h.Summary(tt.samples[len(tt.samples)-1].Time, p)
			if s.ArrivalRate == nil || s.MeanHoldSeconds == nil || s.Hold == nil ||
				math.Abs(*s.ArrivalRate/tt.rate-1) > 1e-3 || math.Abs(*s.MeanHoldSeconds/tt.hold-1) > 1e-3 {
				t.Fatalf("load %v/s x %v s, want %v/s x %v s", fmtPtr(s.ArrivalRate), fmtPtr(s.MeanHoldSeconds), tt.rate, tt.hold)
			}
			if math.Abs(s.Hold.Count/(tt.rate*(tt.to-tt.from))-1) > 1e-3 {
				t.Errorf("hold histogram of %v checkouts, want the span's %v", s.Hold.Count, tt.rate*(tt.to-tt.from))
			}
			if !s.LoadFrom.Equal(at(tt.from)) || !s.LoadTo.Equal(at(tt.to)) || (s.BusiestSpanSeconds == 300) != tt.busiest {
				t.Errorf("load from %s to %s (busiest span %v s), want %s to %s (busiest: %v)", s.LoadFrom, s.LoadTo, s.BusiestSpanSeconds, at(tt.from), at(tt.to), tt.busiest)
			}
			if s.Checkouts == nil || math.Abs(*s.Checkouts-tt.checkouts) > 1e-6 || !s.From.Equal(at(math.Max(0, tt.samples[len(tt.samples)-1].Time.Sub(t0).Seconds()-tt.window.Seconds()))) {
				t.Errorf("window: %v checkouts from %s, want the whole window's %v", fmtPtr(s.Checkouts), s.From, tt.checkouts)
			}

			o := OptimizePoolSettings(Input{Pool: p, Summary: s}, DefaultThresholds())
			size := tt.size
			if size == 0 {
				size = steadySurge.RecommendedPoolSize
			}
			msg := o.Recommendations[0].Message
			if o.RecommendedPoolSize != size || o.Sizing.Model != ModelQueueing || !strings.Contains(msg, tt.text) {
				t.Errorf("size %d by %s, want %d; message %q, want %q", o.RecommendedPoolSize, o.PoolSizeRule, size, msg, tt.text)
			}
			if !o.Sizing.LoadFrom.Equal(s.LoadFrom) || !o.Sizing.LoadTo.Equal(s.LoadTo) || o.Sizing.BusiestSpanSeconds != s.BusiestSpanSeconds {
				t.Errorf("sizing names %s to %s (%v s), the summary %s to %s (%v s)", o.Sizing.LoadFrom, o.Sizing.LoadTo, o.Sizing.BusiestSpanSeconds, s.LoadFrom, s.LoadTo, s.BusiestSpanSeconds)
			}
		})
	}
	if steadySurge.RecommendedPoolSize < 5 || steadySurge.PoolSizeRule == RuleKeepCurrent {
		t.Errorf("30/s x 100 ms on 2 + 0: size %d by %s, want at least Little's law's 3 + 50%% -> 5", steadySurge.RecommendedPoolSize, steadySurge.PoolSizeRule)
	}
}
