package advice

import "time"

// SeriesPoints is how many slots a Summary's Series cuts the window into: enough for a small
// chart, few enough that every pool's report stays small. Slots are aligned to multiples of
// window/SeriesPoints since the Unix epoch, so that two reports a moment apart group the same
// samples into the same points; the window may therefore touch SeriesPoints + 1 slots.
const SeriesPoints = 60

// Point is one slot of a pool's history, for a chart: the peaks of the gauges and the
// increases of the counters over the samples of the slot. Pointer fields are nil where the
// source cannot observe the value, and the counters also in the slot holding only the oldest
// entry of the window, whose increases reach back before it (as in Summary, so that the
// points' timeouts add up to the window's).
type Point struct {
	// Time is the time of the newest sample in the slot.
	Time     time.Time `json:"time"`
	InUse    int       `json:"in_use"` // peak
	PoolSize int       `json:"pool_size,omitempty"`
	Capacity int       `json:"capacity,omitempty"`
	Pending  *int      `json:"pending,omitempty"` // peak
	// CheckoutSeconds is the mean checkout time of the checkouts in the slot; nil when
	// none was counted.
	CheckoutSeconds *float64 `json:"checkout_seconds,omitempty"`
	Timeouts        *float64 `json:"timeouts,omitempty"`
}

// seriesBuilder groups the entries of a Summary into Points.
type seriesBuilder struct {
	slot     int64 // nanoseconds
	out      []Point
	key      int64
	open     bool
	waits    increase
	count    float64
	timeouts increase
}

func newSeriesBuilder(window time.Duration) *seriesBuilder {
	return &seriesBuilder{slot: max(int64(window/SeriesPoints), 1), out: make([]Point, 0, SeriesPoints+1)}
}

// add adds an entry; withIncreases is false for the oldest entry of the window.
func (b *seriesBuilder) add(e *entry, withIncreases bool) {
	key := floorDiv(e.last.Time.UnixNano(), b.slot)
	if !b.open || key != b.key {
		b.flush()
		b.out = append(b.out, Point{})
		b.key, b.open = key, true
	}
	p := &b.out[len(b.out)-1]
	p.Time = e.last.Time
	p.InUse = max(p.InUse, e.maxInUse)
	p.PoolSize, p.Capacity = e.last.PoolSize, e.last.Capacity
	if e.hasPending {
		if p.Pending == nil {
			p.Pending = new(e.maxPending)
		}
		*p.Pending = max(*p.Pending, e.maxPending)
	}
	if !withIncreases {
		return
	}
	if e.timeouts.ok {
		b.timeouts.add(e.timeouts.value, e.timeouts.seconds)
	}
	if e.waits.ok {
		b.waits.add(e.waits.value, e.waits.seconds)
		b.count += e.waitCount
	}
}

// flush closes the current point's counters.
func (b *seriesBuilder) flush() {
	if !b.open {
		return
	}
	p := &b.out[len(b.out)-1]
	if b.timeouts.ok {
		p.Timeouts = ptr(b.timeouts.value)
	}
	if b.waits.ok && b.count > 0 {
		p.CheckoutSeconds = ptr(b.waits.value / b.count)
	}
	b.waits, b.count, b.timeouts = increase{}, 0, increase{}
}

func (b *seriesBuilder) points() []Point {
	b.flush()
	b.open = false
	return b.out
}

// floorDiv is a / b rounded towards minus infinity (b > 0).
func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a < 0 {
		q--
	}
	return q
}
