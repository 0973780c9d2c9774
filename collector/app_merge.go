package collector

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Adding up the instances of one app pool. Every instance (a process's pool) has counters of
// its own that start at 0 when the process starts. A plain sum of them would fall whenever a
// worker restarts or an endpoint misses a scrape, and Prometheus reads every fall of a counter
// as a reset to 0: rate() of the pool's timeouts would jump by all timeouts so far. The pool's
// counters therefore add, to the processes answering now, the last values of processes that
// stopped answering, so that they only ever grow.

// appProcessGrace is how long the last counters of a process that stopped answering stay in
// the pool's counters as they were before they are folded in for good: an endpoint that is
// back within it continues where it was; one that comes back later is counted again from its
// start (one jump in the pool's counters).
const appProcessGrace = 15 * time.Minute

// maxRetainedProcesses bounds the processes remembered per pool; past it the oldest is
// folded in early.
const maxRetainedProcesses = 10000

// appCounters keeps the counters of one target's app pools monotonic. The zero value is
// ready to use; it is safe for concurrent use.
type appCounters struct {
	mu    sync.Mutex
	pools map[string]*appPoolCounters
}

type appPoolCounters struct {
	gone      *PoolStats // counters of processes folded in for good; nil when none
	processes map[string]*seenProcess
}

type seenProcess struct {
	last *PoolStats // the process's last sample (one instance)
	seen time.Time
}

// mergeAppPools replaces the per-instance samples of app pools in pools by one sample per
// pool and returns the metrics of those. Gauges are the sum of the instances that answered;
// counters also hold those that stopped answering (see appCounters). A process reported twice
// (one application listed under two URLs) counts once.
func (c *appCounters) mergeAppPools(pools []PoolStats, descs *poolDescs, now time.Time) ([]PoolStats, []prometheus.Metric) {
	var out []PoolStats
	instances := map[string][]*PoolStats{}
	var order []string
	seen := map[string]bool{}
	for i := range pools {
		p := &pools[i]
		if p.Source != SourceApp {
			out = append(out, *p)
			continue
		}
		key := p.Pool + "\x00" + p.Processes[0].Process
		if seen[key] {
			continue
		}
		seen[key] = true
		if instances[p.Pool] == nil {
			order = append(order, p.Pool)
		}
		instances[p.Pool] = append(instances[p.Pool], p)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var ms []prometheus.Metric
	for _, pool := range order {
		ins := instances[pool]
		sum := *ins[0]
		sum.States = map[string]int{}
		for state, n := range ins[0].States {
			sum.States[state] = n
		}
		for _, p := range ins[1:] {
			sum.addGauges(p)
		}
		counters := c.counters(pool, ins, now)
		sum.Checkouts, sum.Lifecycle = counters.Checkouts, counters.Lifecycle
		out = append(out, sum)
		ms = descs.appendMetrics(ms, &out[len(out)-1])
	}
	return out, ms
}

// counters records the instances of pool answering now and returns the pool's counters.
func (c *appCounters) counters(pool string, ins []*PoolStats, now time.Time) *PoolStats {
	if c.pools == nil {
		c.pools = map[string]*appPoolCounters{}
	}
	pc := c.pools[pool]
	if pc == nil {
		pc = &appPoolCounters{processes: map[string]*seenProcess{}}
		c.pools[pool] = pc
	}
	for _, p := range ins {
		name := p.Processes[0].Process
		if prev := pc.processes[name]; prev != nil && countersFell(p, prev.last) {
			pc.fold(prev.last) // the same name restarted its counters (a fork, a reused pid)
		}
		pc.processes[name] = &seenProcess{last: p, seen: now}
	}
	oldest := ""
	for name, sp := range pc.processes {
		if now.Sub(sp.seen) > appProcessGrace {
			pc.fold(sp.last)
			delete(pc.processes, name)
		} else if oldest == "" || sp.seen.Before(pc.processes[oldest].seen) {
			oldest = name
		}
	}
	if len(pc.processes) > maxRetainedProcesses {
		pc.fold(pc.processes[oldest].last)
		delete(pc.processes, oldest)
	}
	total := &PoolStats{}
	if pc.gone != nil {
		total.addCounters(pc.gone)
	}
	for _, sp := range pc.processes {
		total.addCounters(sp.last)
	}
	return total
}

func (pc *appPoolCounters) fold(p *PoolStats) {
	if pc.gone == nil {
		pc.gone = &PoolStats{}
	}
	pc.gone.addCounters(p)
}

// countersFell reports whether any counter of cur is below the one of prev.
func countersFell(cur, prev *PoolStats) bool {
	less := func(a, b *uint64) bool { return a != nil && b != nil && *a < *b }
	if a, b := cur.Checkouts, prev.Checkouts; a != nil && b != nil && (a.Count < b.Count || less(a.Timeouts, b.Timeouts)) {
		return true
	}
	if a, b := cur.Lifecycle, prev.Lifecycle; a != nil && b != nil {
		return less(a.Opened, b.Opened) || less(a.Invalidations, b.Invalidations) ||
			less(a.Recycles, b.Recycles) || less(a.PrePingFailures, b.PrePingFailures)
	}
	return false
}

// addGauges adds the instances of q, a sample of the same pool, to p: counts add up,
// overflow too (it is per instance already), the longest wait is the longer one.
func (p *PoolStats) addGauges(q *PoolStats) {
	p.Instances += q.Instances
	p.Open += q.Open
	p.InUse += q.InUse
	p.Overflow += q.Overflow
	for state, n := range q.States {
		p.States[state] += n
	}
	p.Pending = addPtr(p.Pending, q.Pending)
	p.Processes = append(p.Processes[:len(p.Processes):len(p.Processes)], q.Processes...)
	if q.LongestWaitSeconds != nil && (p.LongestWaitSeconds == nil || *q.LongestWaitSeconds > *p.LongestWaitSeconds) {
		p.LongestWaitSeconds = ptrTo(*q.LongestWaitSeconds)
	}
}

// addCounters adds the checkout and lifecycle counters of q to p. A histogram keeps the
// bounds both have.
func (p *PoolStats) addCounters(q *PoolStats) {
	switch a, b := p.Checkouts, q.Checkouts; {
	case a == nil && b != nil:
		cp := *b
		cp.Buckets = make(map[float64]uint64, len(b.Buckets))
		for le, n := range b.Buckets {
			cp.Buckets[le] = n
		}
		p.Checkouts = &cp
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
	case a == nil && b != nil:
		cp := *b
		p.Lifecycle = &cp
	case b != nil:
		p.Lifecycle = &LifecycleStats{
			Opened:          addPtr(a.Opened, b.Opened),
			Invalidations:   addPtr(a.Invalidations, b.Invalidations),
			Recycles:        addPtr(a.Recycles, b.Recycles),
			PrePingFailures: addPtr(a.PrePingFailures, b.PrePingFailures),
		}
	}
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
