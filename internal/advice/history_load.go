package advice

import (
	"slices"
	"time"

	"github.com/dbpool/dbpool_exporter/internal/metrics"
)

// What the History keeps, besides gauges and checkout counters, for the sizing model and the
// pool's state: the increases of the hold-time and connect-time histograms and of the failed
// checkouts by reason, and the last few raw samples.

// histIncrease is the increase of a cumulative histogram over some spans.
type histIncrease struct {
	count, sum float64
	// bounds are the upper bounds of buckets (shared between entries while they do not
	// change); nil when the source has totals only or the bounds changed within the spans.
	bounds  []float64
	buckets []float64 // cumulative increases, one per bound
	ok      bool
}

// add adds the increase from prev to cur; a histogram whose count or sum went back was
// reset (its process restarted) and counts whole, as in Prometheus' rate().
func (h *histIncrease) add(prev, cur *Histogram, shared []float64) {
	if prev == nil || cur == nil {
		return
	}
	count, sum := cur.Count-prev.Count, cur.Sum-prev.Sum
	base := prev.Buckets
	if count < 0 || sum < 0 {
		count, sum, base = cur.Count, cur.Sum, nil
	}
	first := !h.ok
	h.count += count
	h.sum += sum
	h.ok = true
	if len(cur.Buckets) == 0 || (base != nil && !sameBounds(base, cur.Buckets)) {
		h.bounds, h.buckets = nil, nil
		return
	}
	if first {
		h.bounds = shared
		if !sameBoundsFloat(shared, cur.Buckets) {
			h.bounds = boundsOf(cur.Buckets)
		}
		h.buckets = make([]float64, len(cur.Buckets))
	} else if h.buckets == nil || !sameBoundsFloat(h.bounds, cur.Buckets) {
		h.bounds, h.buckets = nil, nil
		return
	}
	for i, b := range cur.Buckets {
		v := b.Count
		if base != nil {
			v -= base[i].Count
		}
		h.buckets[i] += max(v, 0)
	}
}

// merge adds another span's increase.
func (h *histIncrease) merge(o *histIncrease) {
	if !o.ok {
		return
	}
	first := !h.ok
	h.count += o.count
	h.sum += o.sum
	h.ok = true
	switch {
	case first && o.buckets != nil:
		h.bounds, h.buckets = o.bounds, slices.Clone(o.buckets)
	case h.buckets != nil && o.buckets != nil && slices.Equal(h.bounds, o.bounds):
		for i := range h.buckets {
			h.buckets[i] += o.buckets[i]
		}
	default:
		// Bounds differ (a process of another version): keep the totals, drop the shape
		// rather than mix two.
		h.bounds, h.buckets = nil, nil
	}
}

func sameBounds(a, b []Bucket) bool {
	return slices.EqualFunc(a, b, func(x, y Bucket) bool { return x.LE == y.LE })
}

func sameBoundsFloat(bounds []float64, b []Bucket) bool {
	return slices.EqualFunc(bounds, b, func(x float64, y Bucket) bool { return x == y.LE })
}

func boundsOf(b []Bucket) []float64 {
	out := make([]float64, len(b))
	for i := range b {
		out[i] = b[i].LE
	}
	return out
}

// failureIndex maps a failure reason to its slot in an entry.
func failureIndex(reason string) int { return slices.Index(metrics.FailureReasons, reason) }

// loadEntry is the part of an entry this file owns.
type loadEntry struct {
	hold, create histIncrease
	failures     [4]increase // by metrics.FailureReasons
	maxBusiest   int
	hasBusiest   bool
}

// absorbLoad records what s adds to the entry.
func (e *loadEntry) absorbLoad(s, prev Sample, hasPrev bool, shared []float64) {
	if s.BusiestInUse != nil {
		e.maxBusiest = max(e.maxBusiest, *s.BusiestInUse)
		e.hasBusiest = true
	}
	if !hasPrev {
		return
	}
	dt := s.Time.Sub(prev.Time).Seconds()
	e.hold.add(prev.Hold, s.Hold, shared)
	e.create.add(totalsOnly(prev.Create), totalsOnly(s.Create), nil)
	for reason, v := range s.FailuresTotal {
		i := failureIndex(reason)
		if i < 0 || i >= len(e.failures) {
			continue
		}
		pv, ok := prev.FailuresTotal[reason]
		if !ok {
			continue
		}
		if inc, ok := counterIncrease(&pv, &v); ok {
			e.failures[i].add(inc, dt)
		}
	}
}

func totalsOnly(h *Histogram) *Histogram {
	if h == nil {
		return nil
	}
	return &Histogram{Count: h.Count, Sum: h.Sum}
}

// loadSummary gathers the entries' increases for the Summary, over the whole window (the
// hold times go with the offered load, over the busiest span: busy.go).
type loadSummary struct {
	create   histIncrease
	failures [4]increase
	busiest  *int
}

func (l *loadSummary) addEntry(e *loadEntry, withIncreases bool) {
	if e.hasBusiest {
		b := e.maxBusiest
		if l.busiest != nil {
			b = max(b, *l.busiest)
		}
		l.busiest = &b
	}
	if !withIncreases {
		return
	}
	l.create.merge(&e.create)
	for i := range l.failures {
		if e.failures[i].ok {
			l.failures[i].add(e.failures[i].value, e.failures[i].seconds)
		}
	}
}

// fill sets the Summary's connect time, failures and busiest instance. latest supplies the
// connect time over the process' life when no connection was opened within the window.
func (l *loadSummary) fill(sum *Summary, latest Sample) {
	sum.PeakInUseBusiest = l.busiest
	switch c := latest.Create; {
	case l.create.ok && l.create.count > 0:
		sum.MeanCreateSeconds = ptr(l.create.sum / l.create.count)
	case c != nil && c.Count > 0:
		sum.MeanCreateSeconds = ptr(c.Sum / c.Count)
	}
	for i, reason := range metrics.FailureReasons[:len(l.failures)] {
		if l.failures[i].ok {
			if sum.Failures == nil {
				sum.Failures = map[string]float64{}
			}
			sum.Failures[reason] = l.failures[i].value
		}
	}
}

// recentSamples is how many of the newest raw samples the History keeps for the pool's state:
// callers waiting in all of them is a queue, not a checkout caught in flight.
const recentSamples = 3

// Recent is one of the newest raw samples, as the pool's state reads them.
type Recent struct {
	Time               time.Time `json:"time"`
	InUse              int       `json:"in_use"`
	Pending            *int      `json:"pending,omitempty"`
	LongestWaitSeconds *float64  `json:"longest_wait_seconds,omitempty"`
}

func recentOf(s Sample) Recent {
	return Recent{Time: s.Time, InUse: s.InUse, Pending: clonePtr(s.Pending), LongestWaitSeconds: clonePtr(s.LongestWaitSeconds)}
}

// lean drops from a sample what the ring does not need to keep once the increases are taken:
// the hold histogram, the connect histogram's buckets and the failure counters.
func (s Sample) lean() Sample {
	s.Hold = nil
	s.Create = totalsOnly(s.Create)
	s.FailuresTotal = nil
	return s
}
