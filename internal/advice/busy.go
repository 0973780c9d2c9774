package advice

import "time"

// busySpan is how long a span of the window the sizing model takes its offered load from: the
// busiest busySpan of a longer window, so that a service whose traffic surges for a few minutes
// of the hour is sized for the surge, not for the hour's average. It is the guide's alert
// duration for utilization (> 80% for 5 minutes); a window no longer than it is used whole.
const busySpan = 5 * time.Minute

// offeredSums adds up, over a run of entries, what the offered load is computed from: the
// samples' rates, hold times and in-flight counts (PgBouncer's), and the entries' increases
// of checkouts and of hold times. n* count the contributions, so that a run can also drop
// entries again.
type offeredSums struct {
	inFlight, rate, hold    float64
	nInFlight, nRate, nHold int

	checkouts, checkoutSeconds float64
	nCheckouts                 int
	holdCount, holdSum         float64
	nHolds                     int
}

// add adds (sign 1) or removes (sign -1) an entry; withIncreases is false for the oldest entry
// of the window, whose increases reach back before it.
func (o *offeredSums) add(e *entry, withIncreases bool, sign int) {
	f := float64(sign)
	o.inFlight, o.nInFlight = o.inFlight+f*e.sumInFlight, o.nInFlight+sign*e.nInFlight
	o.rate, o.nRate = o.rate+f*e.sumRate, o.nRate+sign*e.nRate
	o.hold, o.nHold = o.hold+f*e.sumHold, o.nHold+sign*e.nHold
	if !withIncreases {
		return
	}
	if e.checkouts.ok {
		o.checkouts, o.checkoutSeconds, o.nCheckouts = o.checkouts+f*e.checkouts.value, o.checkoutSeconds+f*e.checkouts.seconds, o.nCheckouts+sign
	}
	if e.hold.ok {
		o.holdCount, o.holdSum, o.nHolds = o.holdCount+f*e.hold.count, o.holdSum+f*e.hold.sum, o.nHolds+sign
	}
}

// load is the offered load of the run: the samples' mean arrival rate, else the rate of the
// checkout counter; the measured hold times' mean, else the samples' mean hold; and the mean
// in flight, the samples' (PgBouncer's) or else rate x hold. Each is nil when unknown.
func (o *offeredSums) load() (rate, hold, inFlight *float64) {
	r, okRate := o.rateOf()
	w, okHold := o.holdOf()
	d, okDemand := o.inFlightOf()
	if okRate {
		rate = ptr(r)
	}
	if okHold {
		hold = ptr(w)
	}
	if okDemand {
		inFlight = ptr(d)
	}
	return rate, hold, inFlight
}

func (o *offeredSums) rateOf() (float64, bool) {
	switch {
	case o.nRate > 0:
		return o.rate / float64(o.nRate), true
	case o.nCheckouts > 0 && o.checkoutSeconds > 0:
		return o.checkouts / o.checkoutSeconds, true
	}
	return 0, false
}

func (o *offeredSums) holdOf() (float64, bool) {
	switch {
	case o.nHolds > 0 && o.holdCount > 0:
		return o.holdSum / o.holdCount, true
	case o.nHold > 0:
		return o.hold / float64(o.nHold), true
	}
	return 0, false
}

// inFlightOf is the demand λ·W that the busiest span is chosen by; it does not allocate, as it
// runs once per entry of the window.
func (o *offeredSums) inFlightOf() (float64, bool) {
	if o.nInFlight > 0 {
		return o.inFlight / float64(o.nInFlight), true
	}
	r, okRate := o.rateOf()
	w, okHold := o.holdOf()
	return r * w, okRate && okHold
}

// spanStart is when the span beginning at entry k starts: the end of the increases of the
// entry before it, or the oldest entry's first sample (i0 is the window's oldest entry).
func (h *History) spanStart(k, i0 int) time.Time {
	if k == i0 {
		return h.at(i0).first
	}
	return h.at(k - 1).last.Time
}

// busiest is the run of entries [k, j] of the window [i0, h.n) whose offered load is highest
// among the runs just covering busySpan; ok is false when the window is no longer than
// busySpan, the history is shorter, or no run has a load: the whole window is used then. A
// surge shorter than busySpan is thus averaged over busySpan, not taken from one sample. A run
// with fewer than MinHolds hold times is too thin to measure and does not count, so that a
// quiet pool keeps the whole window's figures rather than fall back to the rules.
func (h *History) busiest(i0 int) (k, j int, ok bool) {
	if h.window <= busySpan {
		return 0, 0, false
	}
	var (
		run  offeredSums
		best float64
		lo   = i0
	)
	for hi := i0; hi < h.n; hi++ {
		run.add(h.at(hi), hi > i0, 1)
		end := h.at(hi).last.Time
		for lo < hi && end.Sub(h.spanStart(lo+1, i0)) >= busySpan {
			run.add(h.at(lo), lo > i0, -1)
			lo++
		}
		if end.Sub(h.spanStart(lo, i0)) < busySpan {
			continue
		}
		if run.nHolds > 0 && run.holdCount < MinHolds {
			continue
		}
		// Of equal loads the newest span wins; the tolerance absorbs the rounding that the
		// sliding sums carry.
		if d, known := run.inFlightOf(); known && (!ok || d >= best*(1-epsilon)) {
			k, j, best, ok = lo, hi, d, true
		}
	}
	return k, j, ok
}

// fillLoad sets the Summary's offered load (ArrivalRate, MeanHoldSeconds, InFlight, Hold) and
// the span it was taken from: the busiest busySpan of the window [i0, h.n), or the whole window.
// The sums are taken afresh over the span (the sliding ones may carry rounding from the
// entries they dropped), with the hold-time histogram's buckets over the same entries.
func (h *History) fillLoad(sum *Summary, i0 int) {
	k, j, busy := h.busiest(i0)
	if !busy {
		k, j = i0, h.n-1
	} else {
		sum.BusiestSpanSeconds = busySpan.Seconds()
	}
	var (
		run  offeredSums
		hist histIncrease
	)
	for i := k; i <= j; i++ {
		run.add(h.at(i), i > i0, 1)
		if i > i0 {
			hist.merge(&h.at(i).hold)
		}
	}
	sum.LoadFrom, sum.LoadTo = h.spanStart(k, i0), h.at(j).last.Time
	sum.ArrivalRate, sum.MeanHoldSeconds, sum.InFlight = run.load()
	if hist.ok && hist.count > 0 {
		hold := &HoldTimes{MeanSeconds: hist.sum / hist.count, Count: hist.count}
		for i, le := range hist.bounds {
			hold.Buckets = append(hold.Buckets, Bucket{LE: le, Count: hist.buckets[i]})
		}
		sum.Hold = hold
	}
}
