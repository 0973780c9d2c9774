package collector

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dbpool/dbpool_exporter/poolcfg"
)

// Source names, also the value of dbpool_pool_info{source}.
const (
	SourceActivity  = "activity"
	SourcePgBouncer = "pgbouncer"
	SourcePgxpool   = "pgxpool"
)

// PoolStats is one sample of one pool, whatever source saw it. Every source fills what it can
// observe; pointer and Has* fields left empty mean "not observable", and the series is then
// absent rather than a made-up zero. The advice engine keeps these in its history.
type PoolStats struct {
	Target string
	Pool   string
	Source string
	// Exact is false when in-use and overflow are lower-bound estimates (activity source).
	Exact bool

	// Configured is false for backends that matched no configured pool: no capacity is known.
	Configured bool
	// Auxiliary marks a pool the pooler keeps for itself (PgBouncer's auth_user pool, which
	// serves auth_query): exported like any pool, but not application traffic to advise on.
	Auxiliary bool
	Settings  poolcfg.Settings
	Instances int

	Open     int
	InUse    int
	Overflow int
	// States is a disjoint breakdown of Open, keyed by the source's own state names.
	States map[string]int

	Pending *int
	// LongestWaitSeconds is the age of the oldest checkout still waiting, where observable.
	LongestWaitSeconds *float64

	Checkouts *CheckoutStats

	// Lifecycle is set by sources that see connections being opened and replaced (app).
	Lifecycle *LifecycleStats

	// Processes breaks the pool group down by process, where the source reports each one
	// (app: every worker process is an instance); at most maxProcessSeries are exported.
	Processes []ProcessStats

	// Sessions is set by the activity source only.
	Sessions *SessionStats
}

// CheckoutStats are cumulative counters of a pool's checkouts (acquires).
type CheckoutStats struct {
	Count           uint64
	DurationSeconds float64
	// Buckets are cumulative histogram buckets (upper bound -> count); nil when the source
	// only has totals, in which case the histogram carries the +Inf bucket alone.
	Buckets  map[float64]uint64
	Timeouts *uint64
}

// ProcessStats is one process's pool within a pool group.
type ProcessStats struct {
	Process   string // the source's name for the process, e.g. host:pid
	InUse     int
	Open      int
	Overflow  int
	Pending   *int
	Checkouts *CheckoutStats // Buckets unused: the per-process histogram carries only _sum and _count
}

// maxProcessSeries caps the per-process series of one pool: a pool group of thousands of
// processes is still summed in the pool series, but not broken down.
const maxProcessSeries = 200

// LifecycleStats are cumulative counters of what happened to a pool's connections; a nil
// field is not observed by the source.
type LifecycleStats struct {
	Opened          *uint64 // new connections to the server
	Invalidations   *uint64 // connections discarded as broken
	Recycles        *uint64 // connections replaced because they reached the recycle age
	PrePingFailures *uint64 // pre-pings that found a connection dead
}

// SessionStats are ages and lock waits of a pool's server sessions from pg_stat_activity.
type SessionStats struct {
	LongestQuerySeconds             float64
	LongestTransactionSeconds       float64
	LongestIdleInTransactionSeconds float64
	OldestConnectionSeconds         float64
	LockWaitingConnections          int
}

// Capacity is the most connections the whole pool group may open; 0 when unknown.
func (p *PoolStats) Capacity() int {
	if !p.Configured {
		return 0
	}
	return p.Instances * p.Settings.Capacity()
}

// Utilization is in-use over capacity (0..1, may exceed 1 when the configuration is wrong);
// ok is false when the capacity is unknown.
func (p *PoolStats) Utilization() (ratio float64, ok bool) {
	c := p.Capacity()
	if c <= 0 {
		return 0, false
	}
	return float64(p.InUse) / float64(c), true
}

// IdleInTransaction counts sessions idle inside a transaction, aborted or not.
func (p *PoolStats) IdleInTransaction() int {
	return p.States[StateIdleInTransaction] + p.States[StateIdleInTransactionAborted]
}

// poolDescs are the pool-level series shared by every source, so that alerts and dashboards
// speak one language whichever source fed them.
type poolDescs struct {
	info                     *prometheus.Desc
	size                     *prometheus.Desc
	maxOverflow              *prometheus.Desc
	maxConnections           *prometheus.Desc
	checkoutTimeout          *prometheus.Desc
	recycle                  *prometheus.Desc
	prePing                  *prometheus.Desc
	instances                *prometheus.Desc
	open                     *prometheus.Desc
	inUse                    *prometheus.Desc
	connections              *prometheus.Desc
	utilization              *prometheus.Desc
	overflow                 *prometheus.Desc
	pending                  *prometheus.Desc
	checkouts                *prometheus.Desc
	checkoutDuration         *prometheus.Desc
	checkoutTimeouts         *prometheus.Desc
	longestCheckoutWait      *prometheus.Desc
	longestQuery             *prometheus.Desc
	longestTransaction       *prometheus.Desc
	longestIdleInTransaction *prometheus.Desc
	oldestConnection         *prometheus.Desc
	lockWaiting              *prometheus.Desc
	connectionsOpened        *prometheus.Desc
	invalidations            *prometheus.Desc
	recycles                 *prometheus.Desc
	prePingFailures          *prometheus.Desc
	processInUse             *prometheus.Desc
	processOpen              *prometheus.Desc
	processOverflow          *prometheus.Desc
	processPending           *prometheus.Desc
	processCheckoutDuration  *prometheus.Desc
	processCheckoutTimeouts  *prometheus.Desc
}

// poolLabels are on every pool series. source tells the views of one pool apart: the
// activity estimate and the application's own exact report can both describe pool "api".
var poolLabels = []string{"target", "pool", "source"}

func newPoolDesc(name, help string, extra ...string) *prometheus.Desc {
	return prometheus.NewDesc(prometheus.BuildFQName(namespace, "", name), help, append(poolLabels[:3:3], extra...), nil)
}

func newPoolDescs() *poolDescs {
	return &poolDescs{
		info:                     newPoolDesc("pool_info", "Always 1; one series per pool and source that observes it (activity: estimate from pg_stat_activity; pgbouncer, pgxpool, app: exact)."),
		size:                     newPoolDesc("size_connections", "Configured permanent connections per instance (DB_POOL_SIZE)."),
		maxOverflow:              newPoolDesc("max_overflow_connections", "Configured extra connections per instance beyond the pool size (DB_MAX_OVERFLOW)."),
		maxConnections:           newPoolDesc("max_connections", "Capacity of the pool group: instances x (pool size + max overflow)."),
		checkoutTimeout:          newPoolDesc("checkout_timeout_seconds", "Configured time a checkout may wait for a connection (DB_POOL_TIMEOUT); absent when it waits forever."),
		recycle:                  newPoolDesc("recycle_seconds", "Configured connection age after which the pool replaces it (DB_POOL_RECYCLE); 0 means never."),
		prePing:                  newPoolDesc("pre_ping_enabled", "1 if the pool tests connections before use (DB_POOL_PRE_PING)."),
		instances:                newPoolDesc("instances", "Processes that each hold one such pool: as configured, or for the app source those that reported."),
		open:                     newPoolDesc("open_connections", "Connections the pool group has open (in use plus idle)."),
		inUse:                    newPoolDesc("in_use_connections", "Connections checked out or busy; never counts idle ones. A lower bound for the activity source."),
		connections:              newPoolDesc("connections", "Open connections by state, a disjoint breakdown of dbpool_open_connections in the source's own state names.", "state"),
		utilization:              newPoolDesc("utilization_ratio", "In-use connections over the pool group's capacity (0..1)."),
		overflow:                 newPoolDesc("overflow_connections", "Connections beyond the pool size: per instance max(0, open - pool size), summed."),
		pending:                  newPoolDesc("pending_checkouts", "Callers waiting for a connection right now."),
		checkouts:                newPoolDesc("checkouts_total", "Checkouts (acquires) of a connection that finished waiting; pgxpool also counts failed ones."),
		checkoutDuration:         newPoolDesc("checkout_duration_seconds", "Time callers waited to check out a connection."),
		checkoutTimeouts:         newPoolDesc("checkout_timeouts_total", "Checkouts that gave up waiting because the pool was exhausted."),
		longestCheckoutWait:      newPoolDesc("longest_checkout_wait_seconds", "Age of the oldest checkout that is still waiting; 0 when none waits."),
		longestQuery:             newPoolDesc("longest_query_seconds", "Age of the longest running query (state active); 0 when none runs."),
		longestTransaction:       newPoolDesc("longest_transaction_seconds", "Age of the oldest open transaction; 0 when none is open."),
		longestIdleInTransaction: newPoolDesc("longest_idle_in_transaction_seconds", "Time the longest idle-in-transaction session has been idle; 0 when none is."),
		oldestConnection:         newPoolDesc("oldest_connection_seconds", "Age of the oldest connection, to compare with dbpool_recycle_seconds; 0 when none is open."),
		lockWaiting:              newPoolDesc("lock_waiting_connections", "Connections waiting for a heavyweight lock."),
		connectionsOpened:        newPoolDesc("connections_opened_total", "New connections the pool opened to the server."),
		invalidations:            newPoolDesc("connection_invalidations_total", "Connections the pool discarded as broken (invalidated)."),
		recycles:                 newPoolDesc("connection_recycles_total", "Connections the pool replaced because they reached the recycle age (DB_POOL_RECYCLE)."),
		prePingFailures:          newPoolDesc("pre_ping_failures_total", "Pre-pings (DB_POOL_PRE_PING) that found a connection dead before handing it out."),
		processInUse:             newPoolDesc("process_in_use_connections", "Connections one process of the pool group has checked out.", "process"),
		processOpen:              newPoolDesc("process_open_connections", "Connections one process of the pool group has open.", "process"),
		processOverflow:          newPoolDesc("process_overflow_connections", "Connections one process has open beyond its pool size: max(0, open - pool size).", "process"),
		processPending:           newPoolDesc("process_pending_checkouts", "Callers of one process waiting for a connection right now.", "process"),
		processCheckoutDuration:  newPoolDesc("process_checkout_duration_seconds", "Time callers of one process waited to check out a connection (_sum and _count only; the pool's histogram has the buckets).", "process"),
		processCheckoutTimeouts:  newPoolDesc("process_checkout_timeouts_total", "Checkouts of one process that gave up waiting because its pool was exhausted.", "process"),
	}
}

func (d *poolDescs) describe(ch chan<- *prometheus.Desc) {
	for _, desc := range []*prometheus.Desc{
		d.info, d.size, d.maxOverflow, d.maxConnections, d.checkoutTimeout, d.recycle, d.prePing,
		d.instances, d.open, d.inUse, d.connections, d.utilization, d.overflow, d.pending, d.checkouts,
		d.checkoutDuration, d.checkoutTimeouts, d.longestCheckoutWait, d.longestQuery,
		d.longestTransaction, d.longestIdleInTransaction, d.oldestConnection, d.lockWaiting,
		d.connectionsOpened, d.invalidations, d.recycles, d.prePingFailures,
		d.processInUse, d.processOpen, d.processOverflow, d.processPending, d.processCheckoutDuration, d.processCheckoutTimeouts,
	} {
		ch <- desc
	}
}

// appendMetrics turns one pool sample into const metrics appended to ms. Only what the
// source observed is emitted.
func (d *poolDescs) appendMetrics(ms []prometheus.Metric, p *PoolStats) []prometheus.Metric {
	gauge := func(desc *prometheus.Desc, v float64, extra ...string) {
		ms = append(ms, prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v, append([]string{p.Target, p.Pool, p.Source}, extra...)...))
	}
	counter := func(desc *prometheus.Desc, v float64) {
		ms = append(ms, prometheus.MustNewConstMetric(desc, prometheus.CounterValue, v, p.Target, p.Pool, p.Source))
	}
	optionalCounter := func(desc *prometheus.Desc, v *uint64) {
		if v != nil {
			counter(desc, float64(*v))
		}
	}
	gauge(d.info, 1)
	if p.Configured {
		s := p.Settings
		gauge(d.size, float64(s.PoolSize))
		gauge(d.maxOverflow, float64(s.MaxOverflow))
		gauge(d.maxConnections, float64(p.Capacity()))
		if s.Timeout > 0 { // absent when callers wait forever
			gauge(d.checkoutTimeout, s.Timeout.Seconds())
		}
		gauge(d.recycle, s.Recycle.Seconds())
		gauge(d.prePing, boolToFloat(s.PrePing))
		gauge(d.instances, float64(p.Instances))
		if u, ok := p.Utilization(); ok {
			gauge(d.utilization, u)
		}
		gauge(d.overflow, float64(p.Overflow))
	}
	gauge(d.open, float64(p.Open))
	gauge(d.inUse, float64(p.InUse))
	for state, n := range p.States {
		gauge(d.connections, float64(n), state)
	}
	if p.Pending != nil {
		gauge(d.pending, float64(*p.Pending))
	}
	if c := p.Checkouts; c != nil {
		counter(d.checkouts, float64(c.Count))
		ms = append(ms, prometheus.MustNewConstHistogram(d.checkoutDuration, c.Count, c.DurationSeconds, c.Buckets, p.Target, p.Pool, p.Source))
		optionalCounter(d.checkoutTimeouts, c.Timeouts)
	}
	if l := p.Lifecycle; l != nil {
		optionalCounter(d.connectionsOpened, l.Opened)
		optionalCounter(d.invalidations, l.Invalidations)
		optionalCounter(d.recycles, l.Recycles)
		optionalCounter(d.prePingFailures, l.PrePingFailures)
	}
	for i := range p.Processes[:min(len(p.Processes), maxProcessSeries)] {
		pr := &p.Processes[i]
		gauge(d.processInUse, float64(pr.InUse), pr.Process)
		gauge(d.processOpen, float64(pr.Open), pr.Process)
		gauge(d.processOverflow, float64(pr.Overflow), pr.Process)
		if pr.Pending != nil {
			gauge(d.processPending, float64(*pr.Pending), pr.Process)
		}
		if c := pr.Checkouts; c != nil {
			ms = append(ms, prometheus.MustNewConstHistogram(d.processCheckoutDuration, c.Count, c.DurationSeconds, nil, p.Target, p.Pool, p.Source, pr.Process))
			if c.Timeouts != nil {
				ms = append(ms, prometheus.MustNewConstMetric(d.processCheckoutTimeouts, prometheus.CounterValue, float64(*c.Timeouts), p.Target, p.Pool, p.Source, pr.Process))
			}
		}
	}
	if p.LongestWaitSeconds != nil {
		gauge(d.longestCheckoutWait, *p.LongestWaitSeconds)
	}
	if s := p.Sessions; s != nil {
		gauge(d.longestQuery, s.LongestQuerySeconds)
		gauge(d.longestTransaction, s.LongestTransactionSeconds)
		gauge(d.longestIdleInTransaction, s.LongestIdleInTransactionSeconds)
		gauge(d.oldestConnection, s.OldestConnectionSeconds)
		gauge(d.lockWaiting, float64(s.LockWaitingConnections))
	}
	return ms
}

func boolToFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
