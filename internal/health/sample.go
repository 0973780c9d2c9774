package health

import (
	"maps"
	"math"
	"slices"
	"time"

	"github.com/dbpool/dbpool_exporter/internal/advice"
	"github.com/dbpool/dbpool_exporter/internal/metrics"
)

// SampleFromStats turns one collector sample into an advice sample taken at t.
//
// Active, idle and idle-in-transaction are get_active_connections' counts. Only
// pg_stat_activity knows the session states; the pool-side sources know which connections
// are checked out, so for them active is the in-use count and idle the rest of the open
// connections that are ready for use, and idle-in-transaction and the longest query stay
// nil (not observable, which is not zero).
func SampleFromStats(p *metrics.PoolStats, t time.Time) advice.Sample {
	s := advice.Sample{
		Time:     t,
		Open:     p.Open,
		InUse:    p.InUse,
		Overflow: p.Overflow,
	}
	switch p.Source {
	case metrics.SourceActivity:
		s.Active = p.States[metrics.StateActive]
		s.Idle = p.States[metrics.StateIdle]
		s.IdleInTransaction = ptr(p.IdleInTransaction())
		if p.Sessions != nil {
			s.LongestQuerySeconds = ptr(p.Sessions.LongestQuerySeconds)
		}
	case metrics.SourceApp:
		s.Active = p.InUse
		s.Idle = p.States[metrics.StateCheckedIn]
	case metrics.SourcePgBouncer:
		s.Active = p.InUse
		// used and tested are server connections waiting for, or passing, their check
		// before PgBouncer hands them out again: not serving a client, so idle.
		s.Idle = p.States[metrics.PgBouncerStateIdle] + p.States[metrics.PgBouncerStateUsed] +
			p.States[metrics.PgBouncerStateTested]
	default:
		s.Active = p.InUse
		s.Idle = p.States[metrics.StateIdle]
	}
	if p.Pending != nil {
		s.Pending = ptr(*p.Pending)
	}
	if c := p.Checkouts; c != nil {
		s.CheckoutsTotal = ptr(float64(c.Count))
		s.CheckoutSecondsTotal = ptr(c.DurationSeconds)
		if c.Timeouts != nil {
			s.TimeoutsTotal = ptr(float64(*c.Timeouts))
		}
		if c.Failures != nil {
			s.FailuresTotal = make(map[string]float64, len(c.Failures))
			for reason, n := range c.Failures {
				s.FailuresTotal[reason] = float64(n)
			}
		}
	}
	s.Hold, s.Create = histogramOf(p.UseTime), histogramOf(p.CreateTime)
	if p.LongestWaitSeconds != nil {
		s.LongestWaitSeconds = ptr(*p.LongestWaitSeconds)
	}
	switch {
	case len(p.Processes) > 0:
		busiest := 0
		for _, pr := range p.Processes {
			busiest = max(busiest, pr.InUse)
		}
		s.BusiestInUse = &busiest
	case p.Source.Exact() && p.Instances <= 1:
		s.BusiestInUse = ptr(p.InUse) // one instance: the group is the busiest
	}
	return s
}

// histogramOf turns a source's duration histogram into advice's, bounds ascending.
func histogramOf(d *metrics.DurationStats) *advice.Histogram {
	if d == nil {
		return nil
	}
	h := &advice.Histogram{Count: float64(d.Count), Sum: d.SumSeconds}
	if len(d.Buckets) > 0 {
		for _, le := range slices.Sorted(maps.Keys(d.Buckets)) {
			h.Buckets = append(h.Buckets, advice.Bucket{LE: le, Count: float64(d.Buckets[le])})
		}
		if last := h.Buckets[len(h.Buckets)-1].LE; !math.IsInf(last, 1) {
			h.Buckets = append(h.Buckets, advice.Bucket{LE: math.Inf(1), Count: h.Count})
		}
	}
	return h
}

// observed is one pool's sample of one scrape: the exact one where there is one, and beside
// it the activity sample of the same pool, whose server-side facts no pool-side view has.
type observed struct {
	stats  *metrics.PoolStats
	server *metrics.PoolStats
}

// preferExact keeps one sample per (target, pool). Where the application reports its pool
// itself (app) and pg_stat_activity sees the same pool, the exact numbers win; the activity
// sample is kept beside it for idle-in-transaction and query ages.
func preferExact(pools []metrics.PoolStats) []observed {
	app := map[key]bool{}
	for i := range pools {
		if pools[i].Source == metrics.SourceApp {
			app[key{pools[i].Target, pools[i].Pool}] = true
		}
	}
	out := make([]observed, 0, len(pools))
	server := map[key]*metrics.PoolStats{}
	for i := range pools {
		p := &pools[i]
		if app[key{p.Target, p.Pool}] && p.Source == metrics.SourceActivity {
			server[key{p.Target, p.Pool}] = p
			continue
		}
		out = append(out, observed{stats: p})
	}
	for i := range out {
		out[i].server = server[key{out[i].stats.Target, out[i].stats.Pool}]
	}
	return out
}

// sample is the advice sample of o: the exact one, with what only the server sees.
func (o observed) sample(t time.Time) advice.Sample {
	s := SampleFromStats(o.stats, t)
	if o.server != nil {
		srv := SampleFromStats(o.server, t)
		s.IdleInTransaction, s.LongestQuerySeconds = srv.IdleInTransaction, srv.LongestQuerySeconds
	}
	return s
}

// PoolFromStats describes the pool group behind a collector sample. A pool that matched no
// configuration has no known settings (zero) and counts as one instance.
func PoolFromStats(p *metrics.PoolStats) advice.Pool {
	ap := advice.Pool{Name: p.Pool, Source: metrics.Source(p.Source), Instances: 1}
	if p.Configured {
		ap.Settings = p.Settings
		ap.Instances = max(p.Instances, 1)
	}
	return ap
}

// cloneLeaks copies leaks, sites included, so that a report never shares them with a
// collector's sample; sites are never null in the JSON.
func cloneLeaks(l *metrics.LeakStats) *metrics.LeakStats {
	if l == nil {
		return nil
	}
	c := *l
	c.Sites = append([]metrics.LeakSite{}, l.Sites...)
	return &c
}

func ptr[T any](v T) *T { return &v }
