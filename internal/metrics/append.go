package metrics

import "github.com/prometheus/client_golang/prometheus"

// AppendPool turns one pool sample into its series, appended to ms. Only what the source
// observed is emitted.
func AppendPool(ms []prometheus.Metric, p *PoolStats) []prometheus.Metric {
	source := string(p.Source)
	gauge := func(g Gauge, v float64) { ms = append(ms, g.Metric(v, p.Target, p.Pool, source)) }
	counter := func(c Counter, v *uint64) {
		if v != nil {
			ms = append(ms, c.Metric(float64(*v), p.Target, p.Pool, source))
		}
	}
	gauge(PoolInfo, 1)
	if p.Configured {
		s := p.Settings
		gauge(PoolSize, float64(s.PoolSize))
		gauge(MaxOverflow, float64(s.MaxOverflow))
		gauge(MaxConnections, float64(p.Capacity()))
		if s.Timeout > 0 { // absent when callers wait forever
			gauge(CheckoutTimeout, s.Timeout.Seconds())
		}
		gauge(Recycle, s.Recycle.Seconds())
		gauge(PrePingEnabled, boolToFloat(s.PrePing))
		gauge(Instances, float64(p.Instances))
		if u, ok := p.Utilization(); ok {
			gauge(Utilization, u)
		}
		gauge(OverflowConnections, float64(p.Overflow))
	}
	gauge(OpenConnections, float64(p.Open))
	gauge(InUseConnections, float64(p.InUse))
	for state, n := range p.States {
		ms = append(ms, Connections.Metric(float64(n), p.Target, p.Pool, source, state))
	}
	if p.Pending != nil {
		gauge(PendingCheckouts, float64(*p.Pending))
	}
	if c := p.Checkouts; c != nil {
		counter(Checkouts, &c.Count)
		ms = append(ms, CheckoutDuration.Metric(c.Count, c.DurationSeconds, c.Buckets, p.Target, p.Pool, source))
		counter(CheckoutTimeouts, c.Timeouts)
		if c.Failures != nil {
			// Every reason, zero included, so that rate() has a series from the start.
			for _, reason := range FailureReasons {
				ms = append(ms, CheckoutFailures.Metric(float64(c.Failures[reason]), p.Target, p.Pool, source, reason))
			}
		}
	}
	for _, d := range []struct {
		h Histogram
		s *DurationStats
	}{{ConnectionUse, p.UseTime}, {ConnectionCreate, p.CreateTime}} {
		if d.s != nil {
			ms = append(ms, d.h.Metric(d.s.Count, d.s.SumSeconds, d.s.Buckets, p.Target, p.Pool, source))
		}
	}
	if p.LongestHeldSeconds != nil {
		gauge(LongestConnectionUse, *p.LongestHeldSeconds)
	}
	if p.Leaks != nil {
		gauge(LeakedConnections, float64(p.Leaks.Count))
	}
	if l := p.Lifecycle; l != nil {
		counter(ConnectionsOpened, l.Opened)
		counter(ConnectionOpenFailures, l.OpenFailures)
		counter(ConnectionInvalidation, l.Invalidations)
		counter(ConnectionRecycles, l.Recycles)
		counter(PrePingFailures, l.PrePingFailures)
	}
	for i := range p.Processes[:min(len(p.Processes), MaxProcessSeries)] {
		pr := &p.Processes[i]
		process := func(g Gauge, v float64) { ms = append(ms, g.Metric(v, p.Target, p.Pool, source, pr.Process)) }
		process(ProcessInUse, float64(pr.InUse))
		process(ProcessOpen, float64(pr.Open))
		process(ProcessOverflow, float64(pr.Overflow))
		if pr.Pending != nil {
			process(ProcessPending, float64(*pr.Pending))
		}
		if c := pr.Checkouts; c != nil {
			ms = append(ms, ProcessCheckoutDuration.Metric(c.Count, c.DurationSeconds, nil, p.Target, p.Pool, source, pr.Process))
			if c.Timeouts != nil {
				ms = append(ms, ProcessCheckoutTimeouts.Metric(float64(*c.Timeouts), p.Target, p.Pool, source, pr.Process))
			}
		}
		if u := pr.UseTime; u != nil {
			ms = append(ms, ProcessConnectionUse.Metric(u.Count, u.SumSeconds, nil, p.Target, p.Pool, source, pr.Process))
		}
		if pr.Leaked != nil {
			process(ProcessLeaked, float64(*pr.Leaked))
		}
	}
	if p.LongestWaitSeconds != nil {
		gauge(LongestCheckoutWait, *p.LongestWaitSeconds)
	}
	if s := p.Sessions; s != nil {
		gauge(LongestQuery, s.LongestQuerySeconds)
		gauge(LongestTransaction, s.LongestTransactionSeconds)
		gauge(LongestIdleInTransaction, s.LongestIdleInTransactionSeconds)
		gauge(OldestConnection, s.OldestConnectionSeconds)
		gauge(LockWaitingConnections, float64(s.LockWaitingConnections))
	}
	return ms
}

// Bool is a gauge's value for a yes/no fact: 1 or 0.
func Bool(b bool) float64 { return boolToFloat(b) }

func boolToFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
