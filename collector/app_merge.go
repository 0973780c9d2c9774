package collector

import "github.com/prometheus/client_golang/prometheus"

// Adding up the instances and endpoints of one app pool.

// addInstances adds the instances of q, a sample of the same pool, to p: counts and
// counters add up, overflow too (it is per instance already), the longest wait is the
// longer one. A histogram keeps the bounds both have.
func (p *PoolStats) addInstances(q *PoolStats) {
	p.Instances += q.Instances
	p.Open += q.Open
	p.InUse += q.InUse
	p.Overflow += q.Overflow
	for state, n := range q.States {
		p.States[state] += n
	}
	p.Pending = addPtr(p.Pending, q.Pending)
	p.Processes = append(p.Processes, q.Processes...)
	if q.LongestWaitSeconds != nil && (p.LongestWaitSeconds == nil || *q.LongestWaitSeconds > *p.LongestWaitSeconds) {
		p.LongestWaitSeconds = ptrTo(*q.LongestWaitSeconds)
	}
	switch a, b := p.Checkouts, q.Checkouts; {
	case a == nil:
		p.Checkouts = b
	case b != nil:
		sum := &CheckoutStats{Count: a.Count + b.Count, DurationSeconds: a.DurationSeconds + b.DurationSeconds,
			Buckets: map[float64]uint64{}, Timeouts: addPtr(a.Timeouts, b.Timeouts)}
		for le, n := range a.Buckets {
			if m, ok := b.Buckets[le]; ok {
				sum.Buckets[le] = n + m
			}
		}
		p.Checkouts = sum
	}
	switch a, b := p.Lifecycle, q.Lifecycle; {
	case a == nil:
		p.Lifecycle = b
	case b != nil:
		p.Lifecycle = &LifecycleStats{
			Opened:          addPtr(a.Opened, b.Opened),
			Invalidations:   addPtr(a.Invalidations, b.Invalidations),
			Recycles:        addPtr(a.Recycles, b.Recycles),
			PrePingFailures: addPtr(a.PrePingFailures, b.PrePingFailures),
		}
	}
}

// mergeAppPools sums the samples of the app endpoints that report the same pool, in place
// of the per-endpoint ones, and returns the metrics of the merged samples. Two endpoints that
// report the same process (one application listed twice) would add it twice, so the second
// endpoint's copy is left out, counts included.
func mergeAppPools(pools []PoolStats, descs *poolDescs) ([]PoolStats, []prometheus.Metric) {
	var out []PoolStats
	merged := map[string]int{} // pool -> index in out
	for i := range pools {
		p := pools[i]
		if p.Source != SourceApp {
			out = append(out, p)
			continue
		}
		if j, ok := merged[p.Pool]; ok {
			if !sharesProcess(&out[j], &p) {
				out[j].addInstances(&p)
			}
			continue
		}
		merged[p.Pool] = len(out)
		out = append(out, p)
	}
	var ms []prometheus.Metric
	for _, j := range merged {
		ms = descs.appendMetrics(ms, &out[j])
	}
	return out, ms
}

// sharesProcess reports whether q reports a process that p has already.
func sharesProcess(p, q *PoolStats) bool {
	seen := make(map[string]bool, len(p.Processes))
	for _, pr := range p.Processes {
		seen[pr.Process] = true
	}
	for _, pr := range q.Processes {
		if seen[pr.Process] {
			return true
		}
	}
	return false
}

func ptrTo[T any](v T) *T { return &v }

// addPtr adds two optional values: absent only when both are.
func addPtr[T int | uint64](a, b *T) *T {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	}
	return ptrTo(*a + *b)
}
