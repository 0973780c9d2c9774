package advice

import (
	"maps"
	"sync"
	"time"
)

// Defaults and limits of a History.
const (
	DefaultWindow     = time.Hour
	DefaultMinSpacing = time.Second
	// MaxEntries bounds one History whatever window and spacing it is given: a larger ratio
	// raises the spacing instead.
	MaxEntries = 100_000
)

// History is a bounded, concurrency-safe ring of one pool's samples over a sliding window.
//
// Samples closer than the minimum spacing to the start of the newest entry are coalesced into
// it: the entry keeps the latest sample (gauges, counters) and the peaks and sums of all the
// samples it absorbed, so a fast scraper neither grows the ring nor hides a spike. Hence at most
// window/spacing + 1 entries exist, whatever the scrape rate.
type History struct {
	mu      sync.Mutex
	window  time.Duration
	spacing time.Duration
	limit   int

	ring []entry // grows to limit, then wraps
	head int     // index of the oldest entry
	n    int

	start   time.Time // first sample ever accepted: tells whether the window is fully covered
	prev    Sample    // latest sample accepted, for counter deltas
	hasPrev bool

	holdBounds []float64             // the hold histogram's bounds, shared by the entries
	recent     [recentSamples]Recent // the newest raw samples, a ring
	nRecent    int
}

// entry is one coalesced slot of the ring.
type entry struct {
	first time.Time // time of the first sample coalesced into the entry
	last  Sample    // the latest sample coalesced into the entry
	n     int

	sumInUse    float64
	maxInUse    int
	maxOverflow int
	maxPending  int
	hasPending  bool

	sumInFlight, sumRate, sumHold float64
	nInFlight, nRate, nHold       int

	// Counter increases from the previous accepted sample (which may sit in the previous entry)
	// up to last, with the seconds they span.
	timeouts  increase
	checkouts increase // checkouts_total alone: an arrival rate
	waits     increase // checkout_seconds_total, over the same spans as waitCount
	waitCount float64  // checkouts_total over the spans of waits

	loadEntry
}

type increase struct {
	value, seconds float64
	ok             bool
}

func (i *increase) add(value, seconds float64) {
	i.value += value
	i.seconds += seconds
	i.ok = true
}

// NewHistory returns an empty History. window <= 0 means DefaultWindow, minSpacing <= 0 means
// DefaultMinSpacing.
func NewHistory(window, minSpacing time.Duration) *History {
	if window <= 0 {
		window = DefaultWindow
	}
	if minSpacing <= 0 {
		minSpacing = DefaultMinSpacing
	}
	if window/minSpacing > MaxEntries-1 {
		minSpacing = (window + MaxEntries - 2) / (MaxEntries - 1)
	}
	return &History{
		window:  window,
		spacing: minSpacing,
		limit:   int(window/minSpacing) + 1,
	}
}

// Window is the duration a Summary covers.
func (h *History) Window() time.Duration { return h.window }

// Cap is the most entries the History ever holds.
func (h *History) Cap() int { return h.limit }

// Len is the number of entries held now.
func (h *History) Len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.n
}

func (h *History) at(i int) *entry { return &h.ring[(h.head+i)%len(h.ring)] }

// Add records a sample. It returns false when the sample is dropped: a zero time, or a time
// before the newest sample held (samples must arrive in order; a late scrape says nothing new).
func (h *History) Add(s Sample) bool {
	if s.Time.IsZero() {
		return false
	}
	s = s.clone() // the caller may reuse what the pointers point to
	h.mu.Lock()
	defer h.mu.Unlock()

	var e *entry
	if h.n > 0 {
		newest := h.at(h.n - 1)
		if s.Time.Before(newest.last.Time) {
			return false
		}
		if s.Time.Sub(newest.first) < h.spacing {
			e = newest
		}
	}
	if e == nil {
		h.evict(s.Time.Add(-h.window))
		switch {
		case h.n < len(h.ring):
			// reuse a slot freed by eviction
		case len(h.ring) < h.limit:
			h.grow()
		default:
			h.head = (h.head + 1) % len(h.ring)
			h.n--
		}
		e = h.at(h.n)
		*e = entry{first: s.Time}
		h.n++
	}
	if !h.hasPrev {
		h.start = s.Time
	}
	e.absorb(s, h.prev, h.hasPrev)
	e.absorbLoad(s, h.prev, h.hasPrev, h.holdBounds)
	if e.hold.bounds != nil {
		h.holdBounds = e.hold.bounds
	}
	e.last = s.lean()
	h.recent[h.nRecent%recentSamples] = recentOf(s)
	h.nRecent++
	h.prev, h.hasPrev = s, true
	return true
}

// grow adds a slot to a full ring. The ring grows on demand rather than being allocated at its
// limit, so that a pool scraped every 15 s holds about window/15s entries, not window/spacing.
func (h *History) grow() {
	if h.head == 0 && len(h.ring) < cap(h.ring) {
		h.ring = append(h.ring, entry{})
		return
	}
	r := make([]entry, h.n, min(max(2*h.n, 16), h.limit))
	for i := range h.n {
		r[i] = *h.at(i)
	}
	h.ring, h.head = append(r, entry{}), 0
}

// evict drops entries whose latest sample is older than cutoff.
func (h *History) evict(cutoff time.Time) {
	for h.n > 0 && h.at(0).last.Time.Before(cutoff) {
		h.head = (h.head + 1) % len(h.ring)
		h.n--
	}
}

func (e *entry) absorb(s, prev Sample, hasPrev bool) {
	e.last = s
	e.n++
	e.sumInUse += float64(s.InUse)
	e.maxInUse = max(e.maxInUse, s.InUse)
	e.maxOverflow = max(e.maxOverflow, s.Overflow)
	if s.Pending != nil {
		e.maxPending = max(e.maxPending, *s.Pending)
		e.hasPending = true
	}
	if s.ArrivalRate != nil {
		e.sumRate += *s.ArrivalRate
		e.nRate++
	}
	if s.MeanHoldSeconds != nil {
		e.sumHold += *s.MeanHoldSeconds
		e.nHold++
	}
	if s.ArrivalRate != nil && s.MeanHoldSeconds != nil {
		e.sumInFlight += *s.ArrivalRate * *s.MeanHoldSeconds
		e.nInFlight++
	}
	if !hasPrev {
		return
	}
	dt := s.Time.Sub(prev.Time).Seconds()
	if v, ok := counterIncrease(prev.TimeoutsTotal, s.TimeoutsTotal); ok {
		e.timeouts.add(v, dt)
	}
	if v, ok := counterIncrease(prev.CheckoutsTotal, s.CheckoutsTotal); ok {
		e.checkouts.add(v, dt)
	}
	if prev.CheckoutsTotal != nil && s.CheckoutsTotal != nil &&
		prev.CheckoutSecondsTotal != nil && s.CheckoutSecondsTotal != nil {
		count, sum := *s.CheckoutsTotal-*prev.CheckoutsTotal, *s.CheckoutSecondsTotal-*prev.CheckoutSecondsTotal
		if count < 0 || sum < 0 {
			// The two counters belong together: if either went back, the process restarted
			// and both count from zero.
			count, sum = *s.CheckoutsTotal, *s.CheckoutSecondsTotal
		}
		e.waits.add(sum, dt)
		e.waitCount += count
	}
}

// counterIncrease is the increase of a counter between two samples. A counter that went back
// was reset (its process restarted), so its whole current value is the increase, as in
// Prometheus' rate().
func counterIncrease(prev, cur *float64) (float64, bool) {
	if prev == nil || cur == nil {
		return 0, false
	}
	if *cur < *prev {
		return *cur, true
	}
	return *cur - *prev, true
}

func ptr[T any](v T) *T { return &v }

func clonePtr[T any](p *T) *T {
	if p == nil {
		return nil
	}
	v := *p
	return &v
}

// clone deep-copies the optional fields so that a stored sample cannot change under the lock.
func (s Sample) clone() Sample {
	s.IdleInTransaction = clonePtr(s.IdleInTransaction)
	s.LongestQuerySeconds = clonePtr(s.LongestQuerySeconds)
	s.Pending = clonePtr(s.Pending)
	s.CheckoutsTotal = clonePtr(s.CheckoutsTotal)
	s.CheckoutSecondsTotal = clonePtr(s.CheckoutSecondsTotal)
	s.TimeoutsTotal = clonePtr(s.TimeoutsTotal)
	s.ArrivalRate = clonePtr(s.ArrivalRate)
	s.MeanHoldSeconds = clonePtr(s.MeanHoldSeconds)
	s.Hold = s.Hold.clone()
	s.Create = s.Create.clone()
	s.FailuresTotal = maps.Clone(s.FailuresTotal)
	s.LongestWaitSeconds = clonePtr(s.LongestWaitSeconds)
	s.BusiestInUse = clonePtr(s.BusiestInUse)
	return s
}
