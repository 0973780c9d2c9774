package advice

import "time"

// Summary condenses the samples of one pool over a window. Utilizations are ratios (0.85 =
// 85%) of in-use connections to the group's permanent connections, instances x pool_size, as in
// get_pool_health: above 1 means overflow connections are in use. A pool_size of 0
// falls back to the group's capacity. Pointer fields are nil when the source cannot observe them
// or the window holds too few samples to tell.
type Summary struct {
	WindowSeconds float64   `json:"window_seconds"`
	Samples       int       `json:"samples"` // raw samples, coalesced ones included
	From          time.Time `json:"from"`    // oldest sample in the window
	To            time.Time `json:"to"`      // newest sample in the window
	// Full is true when the history reaches back over the whole window with no hole longer
	// than a tenth of it: only then may an oversized pool be shrunk.
	Full          bool    `json:"full"`
	MaxGapSeconds float64 `json:"max_gap_seconds"`

	PeakInUse       int     `json:"peak_in_use"`
	AvgInUse        float64 `json:"avg_in_use"`
	AvgUtilization  float64 `json:"avg_utilization"`
	PeakUtilization float64 `json:"peak_utilization"`
	PeakOverflow    int     `json:"peak_overflow"`
	PeakPending     *int    `json:"peak_pending,omitempty"`

	Timeouts           *float64 `json:"timeouts,omitempty"` // increase over the window
	TimeoutsPerSecond  *float64 `json:"timeouts_per_second,omitempty"`
	Checkouts          *float64 `json:"checkouts,omitempty"` // increase over the window
	AvgCheckoutSeconds *float64 `json:"avg_checkout_seconds,omitempty"`

	// The offered load, for Little's law: the arrival rate (the samples' mean ArrivalRate, else
	// the rate of CheckoutsTotal), the mean hold time and the mean number in flight (the
	// samples' mean, else rate x hold), for the whole group. Unlike the rest of the Summary
	// they are taken over the busiest span of the window, LoadFrom to LoadTo: the busiest 5
	// minutes (BusiestSpanSeconds) when the window is longer, else the whole window
	// (BusiestSpanSeconds 0). A pool must serve its busy period, not the window's average.
	ArrivalRate        *float64  `json:"arrival_rate,omitempty"`
	MeanHoldSeconds    *float64  `json:"mean_hold_seconds,omitempty"`
	InFlight           *float64  `json:"in_flight,omitempty"`
	LoadFrom           time.Time `json:"load_from"`
	LoadTo             time.Time `json:"load_to"`
	BusiestSpanSeconds float64   `json:"busiest_span_seconds,omitempty"`

	// Hold is the hold times (checkout to checkin) of the same span, where the source
	// measures them; MeanHoldSeconds is then its mean.
	Hold *HoldTimes `json:"hold,omitempty"`
	// MeanCreateSeconds is the average time to open a connection: over the window, or over
	// the process' life when none was opened within it.
	MeanCreateSeconds *float64 `json:"mean_create_seconds,omitempty"`
	// Failures is the increase of failed checkouts over the window, by reason.
	Failures map[string]float64 `json:"failures,omitempty"`
	// PeakInUseBusiest is the peak in use of the busiest single instance, where the source
	// reports each instance.
	PeakInUseBusiest *int `json:"peak_in_use_busiest_instance,omitempty"`
	// Recent are the newest raw samples, newest last.
	Recent []Recent `json:"recent"`
	// Series is the window's history for charts, oldest first: at most SeriesPoints + 1
	// points (see Point).
	Series []Point `json:"series"`

	Latest Sample `json:"latest"`
}

// Summary condenses the entries whose latest sample is not older than now - window (samples
// stamped after now count too: a scraper's clock may run slightly ahead). pool supplies the
// denominator of the utilizations.
func (h *History) Summary(now time.Time, pool Pool) Summary {
	h.mu.Lock()
	defer h.mu.Unlock()
	sum := Summary{WindowSeconds: h.window.Seconds(), Recent: []Recent{}, Series: []Point{}}
	cutoff := now.Add(-h.window)
	i0 := 0
	for i0 < h.n && h.at(i0).last.Time.Before(cutoff) {
		i0++
	}
	if i0 == h.n {
		return sum
	}

	var (
		avgSum                     float64
		timeouts, checkouts, waits increase
		waitCount                  float64
		maxGap                     time.Duration
		load                       loadSummary
		series                     = newSeriesBuilder(h.window)
	)
	begin := cutoff
	if h.start.After(begin) {
		begin = h.start
	}
	prevEnd := begin
	for i := i0; i < h.n; i++ {
		e := h.at(i)
		if gap := e.first.Sub(prevEnd); gap > maxGap {
			maxGap = gap
		}
		prevEnd = e.last.Time
		sum.Samples += e.n
		avgSum += e.sumInUse / float64(e.n)
		sum.PeakInUse = max(sum.PeakInUse, e.maxInUse)
		sum.PeakOverflow = max(sum.PeakOverflow, e.maxOverflow)
		if e.hasPending {
			p := e.maxPending
			if sum.PeakPending != nil {
				p = max(p, *sum.PeakPending)
			}
			sum.PeakPending = &p
		}
		// The oldest entry's increases reach back before its own latest sample, possibly out
		// of the window; the spans of the others tile (oldest.last, newest.last] exactly.
		load.addEntry(&e.loadEntry, i > i0)
		series.add(e, i > i0)
		if i > i0 {
			for _, p := range []struct{ dst, src *increase }{
				{&timeouts, &e.timeouts}, {&checkouts, &e.checkouts}, {&waits, &e.waits},
			} {
				if p.src.ok {
					p.dst.add(p.src.value, p.src.seconds)
				}
			}
			waitCount += e.waitCount
		}
	}
	if gap := now.Sub(prevEnd); gap > maxGap {
		maxGap = gap
	}
	n := h.n - i0
	sum.From = h.at(i0).first
	sum.To = h.at(h.n - 1).last.Time
	sum.Latest = h.at(h.n - 1).last.clone()
	sum.MaxGapSeconds = maxGap.Seconds()
	sum.Full = !h.start.After(cutoff) && maxGap <= h.window/10
	sum.AvgInUse = avgSum / float64(n)
	sum.Series = series.points()

	if d := float64(pool.instances() * pool.Settings.PoolSize); d > 0 {
		sum.AvgUtilization, sum.PeakUtilization = sum.AvgInUse/d, float64(sum.PeakInUse)/d
	} else if d := float64(pool.instances() * pool.Settings.Capacity()); d > 0 {
		sum.AvgUtilization, sum.PeakUtilization = sum.AvgInUse/d, float64(sum.PeakInUse)/d
	}

	if timeouts.ok {
		sum.Timeouts = ptr(timeouts.value)
		if timeouts.seconds > 0 {
			sum.TimeoutsPerSecond = ptr(timeouts.value / timeouts.seconds)
		}
	}
	if checkouts.ok {
		sum.Checkouts = ptr(checkouts.value)
	}
	if waits.ok && waitCount > 0 {
		sum.AvgCheckoutSeconds = ptr(waits.value / waitCount)
	}
	h.fillLoad(&sum, i0)
	load.fill(&sum, sum.Latest)
	for k := max(h.nRecent-recentSamples, 0); k < h.nRecent; k++ {
		if r := h.recent[k%recentSamples]; !r.Time.Before(cutoff) {
			sum.Recent = append(sum.Recent, recentOf(Sample{Time: r.Time, InUse: r.InUse, Pending: r.Pending, LongestWaitSeconds: r.LongestWaitSeconds}))
		}
	}
	return sum
}
