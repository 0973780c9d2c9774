package collector

import (
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/dbpool/dbpool_exporter/internal/metrics"
)

// Adding up the instances of one app pool. Every instance (a process's pool) has counters of
// its own that start at 0 when the process starts. A plain sum of them would fall whenever a
// worker restarts or an endpoint misses a scrape, and Prometheus reads every fall of a counter
// as a reset to 0: rate() of the pool's timeouts would jump by all timeouts so far. The pool's
// counters therefore add, to the processes answering now, the last values of processes that
// stopped answering, so that they only ever grow. A process that exits reports its final
// counters for a while (the document's exited entries): they replace its last values, so
// that what it did after the exporter's last scrape of it is counted too.

// appProcessGrace is how long the last counters of a process that stopped answering stay in
// the pool's counters as they were before they are folded in for good: an endpoint that is
// back within it continues where it was; one that comes back later is counted again from its
// start (one jump in the pool's counters).
const appProcessGrace = 15 * time.Minute

// maxRetainedProcesses bounds the processes remembered per pool; past it the oldest is
// folded in early.
const maxRetainedProcesses = 10000

// AppCounters keeps the counters of app pools from falling. It holds the last sample of
// every process that answered within appProcessGrace, per target and pool, and must outlive
// the targets: a reload rebuilds every target, and counters kept by a target would lose the
// processes that stopped answering before it, and fall. main creates one and gives it to the
// targets it builds, before and after every reload. It is safe for concurrent use.
type AppCounters struct {
	mu    sync.Mutex
	pools map[appPoolKey]*appPoolCounters
}

// NewAppCounters returns empty counters.
func NewAppCounters() *AppCounters { return &AppCounters{pools: map[appPoolKey]*appPoolCounters{}} }

type appPoolKey struct{ target, pool string }

type appPoolCounters struct {
	gone      *metrics.PoolStats // counters of processes folded in for good; nil when none
	processes map[string]*seenProcess
}

type seenProcess struct {
	last *metrics.PoolStats // the counters of the process's last sample (one instance)
	seen time.Time
}

// merge turns the instances of a target's app pools (one sample each) into one sample per
// pool. Gauges are the sum of the live instances; counters also hold those that stopped
// answering (see above) and the final counters of the processes that exited, which add
// nothing else: no instance, no gauge, no process series. A process reported twice (one
// application listed under two URLs) counts once, and as live if it is live anywhere.
func (c *AppCounters) merge(target string, live, exited []metrics.PoolStats, now time.Time) []metrics.PoolStats {
	var order, exitedOrder []string // pools, as they first come
	byPool := map[string][]*metrics.PoolStats{}
	exitedByPool := map[string][]*metrics.PoolStats{}
	seen := map[string]bool{}
	group := func(samples []metrics.PoolStats, into map[string][]*metrics.PoolStats, order *[]string) {
		for i := range samples {
			p := &samples[i]
			key := p.Pool + "\x00" + p.Processes[0].Process
			if seen[key] {
				continue
			}
			seen[key] = true
			if into[p.Pool] == nil {
				*order = append(*order, p.Pool)
			}
			into[p.Pool] = append(into[p.Pool], p)
		}
	}
	group(live, byPool, &order)
	group(exited, exitedByPool, &exitedOrder)
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]metrics.PoolStats, 0, len(order))
	for _, pool := range order {
		ins := byPool[pool]
		sum := *ins[0]
		sum.States = map[string]int{}
		maps.Copy(sum.States, ins[0].States)
		for _, p := range ins[1:] {
			addGauges(&sum, p)
		}
		counters := c.counters(appPoolKey{target, pool}, slices.Concat(ins, exitedByPool[pool]), now)
		sum.Checkouts, sum.UseTime, sum.CreateTime, sum.Lifecycle = counters.Checkouts, counters.UseTime, counters.CreateTime, counters.Lifecycle
		out = append(out, sum)
	}
	// A pool of which only exited processes were reported has no sample, but keeps their
	// counters for when its live ones answer again.
	for _, pool := range exitedOrder {
		if byPool[pool] == nil {
			c.counters(appPoolKey{target, pool}, exitedByPool[pool], now)
		}
	}
	return out
}

// counters records the instances of a pool reported now and returns the pool's counters.
func (c *AppCounters) counters(key appPoolKey, ins []*metrics.PoolStats, now time.Time) *metrics.PoolStats {
	pc := c.pools[key]
	if pc == nil {
		pc = &appPoolCounters{processes: map[string]*seenProcess{}}
		c.pools[key] = pc
	}
	for _, p := range ins {
		name := p.Processes[0].Process
		if prev := pc.processes[name]; prev != nil && countersFell(p, prev.last) {
			pc.fold(prev.last) // the same name restarted its counters (a fork, a reused pid)
		}
		pc.processes[name] = &seenProcess{last: countersOf(p), seen: now}
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
	total := &metrics.PoolStats{}
	if pc.gone != nil {
		addCounters(total, pc.gone)
	}
	for _, sp := range pc.processes {
		addCounters(total, sp.last)
	}
	return total
}

func (pc *appPoolCounters) fold(p *metrics.PoolStats) {
	if pc.gone == nil {
		pc.gone = &metrics.PoolStats{}
	}
	addCounters(pc.gone, p)
}

// countersOf is the part of an instance's sample that the pool's counters keep: only the
// counters, so that a remembered process costs no more than its counters (its leak sites
// and states are gauges of one scrape).
func countersOf(p *metrics.PoolStats) *metrics.PoolStats {
	return &metrics.PoolStats{Checkouts: p.Checkouts, UseTime: p.UseTime, CreateTime: p.CreateTime, Lifecycle: p.Lifecycle}
}

// countersFell reports whether any counter of cur is below the one of prev.
func countersFell(cur, prev *metrics.PoolStats) bool {
	less := func(a, b *uint64) bool { return a != nil && b != nil && *a < *b }
	if a, b := cur.Checkouts, prev.Checkouts; a != nil && b != nil {
		if a.Count < b.Count || less(a.Timeouts, b.Timeouts) {
			return true
		}
		for reason, n := range b.Failures {
			if m, ok := a.Failures[reason]; ok && m < n {
				return true
			}
		}
	}
	for _, d := range [][2]*metrics.DurationStats{{cur.UseTime, prev.UseTime}, {cur.CreateTime, prev.CreateTime}} {
		if d[0] != nil && d[1] != nil && d[0].Count < d[1].Count {
			return true
		}
	}
	if a, b := cur.Lifecycle, prev.Lifecycle; a != nil && b != nil {
		return less(a.Opened, b.Opened) || less(a.OpenFailures, b.OpenFailures) || less(a.Invalidations, b.Invalidations) ||
			less(a.Recycles, b.Recycles) || less(a.PrePingFailures, b.PrePingFailures)
	}
	return false
}

// addGauges adds the instances of q, a sample of the same pool, to p: counts add up,
// overflow and leaks too (they are per instance already), the longest wait and hold are the
// longer one.
func addGauges(p, q *metrics.PoolStats) {
	p.Instances += q.Instances
	p.Open += q.Open
	p.InUse += q.InUse
	p.Overflow += q.Overflow
	for state, n := range q.States {
		p.States[state] += n
	}
	p.Pending = addPtr(p.Pending, q.Pending)
	p.Processes = append(p.Processes[:len(p.Processes):len(p.Processes)], q.Processes...)
	p.LongestWaitSeconds = maxPtr(p.LongestWaitSeconds, q.LongestWaitSeconds)
	p.LongestHeldSeconds = maxPtr(p.LongestHeldSeconds, q.LongestHeldSeconds)
	p.Leaks = mergeLeaks(p.Leaks, q.Leaks)
}

// addCounters adds the counters of q to p: checkouts, failures, hold and connect times, and
// what happened to connections. A histogram keeps the bounds both have.
func addCounters(p, q *metrics.PoolStats) {
	switch a, b := p.Checkouts, q.Checkouts; {
	case a == nil && b != nil:
		cp := *b
		cp.Buckets, cp.Failures = maps.Clone(b.Buckets), maps.Clone(b.Failures)
		p.Checkouts = &cp
	case b != nil:
		sum := &metrics.CheckoutStats{Count: a.Count + b.Count, DurationSeconds: a.DurationSeconds + b.DurationSeconds,
			Buckets: commonBuckets(a.Buckets, b.Buckets), Timeouts: addPtr(a.Timeouts, b.Timeouts), Failures: maps.Clone(a.Failures)}
		if b.Failures != nil && sum.Failures == nil {
			sum.Failures = map[string]uint64{}
		}
		for reason, n := range b.Failures {
			sum.Failures[reason] += n
		}
		p.Checkouts = sum
	}
	p.UseTime = addDurations(p.UseTime, q.UseTime)
	p.CreateTime = addDurations(p.CreateTime, q.CreateTime)
	switch a, b := p.Lifecycle, q.Lifecycle; {
	case a == nil && b != nil:
		cp := *b
		p.Lifecycle = &cp
	case b != nil:
		p.Lifecycle = &metrics.LifecycleStats{
			Opened:          addPtr(a.Opened, b.Opened),
			OpenFailures:    addPtr(a.OpenFailures, b.OpenFailures),
			Invalidations:   addPtr(a.Invalidations, b.Invalidations),
			Recycles:        addPtr(a.Recycles, b.Recycles),
			PrePingFailures: addPtr(a.PrePingFailures, b.PrePingFailures),
		}
	}
}

// addDurations adds two histograms into a new one: absent only when both are.
func addDurations(a, b *metrics.DurationStats) *metrics.DurationStats {
	switch {
	case b == nil:
		return a
	case a == nil:
		cp := *b
		cp.Buckets = maps.Clone(b.Buckets)
		return &cp
	}
	return &metrics.DurationStats{Count: a.Count + b.Count, SumSeconds: a.SumSeconds + b.SumSeconds, Buckets: commonBuckets(a.Buckets, b.Buckets)}
}

// commonBuckets adds the buckets of the bounds that both histograms have: a bound that one
// of them lacks has no count for all of them.
func commonBuckets(a, b map[float64]uint64) map[float64]uint64 {
	sum := map[float64]uint64{}
	for le, n := range a {
		if m, ok := b[le]; ok {
			sum[le] = n + m
		}
	}
	return sum
}

func ptrTo[T any](v T) *T { return &v }

// maxPtr is the larger of two optional values: absent only when both are.
func maxPtr(a, b *float64) *float64 {
	if a == nil || (b != nil && *b > *a) {
		return b
	}
	return a
}

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
