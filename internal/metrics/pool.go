package metrics

import "github.com/dbpool/dbpool_exporter/poolcfg"

// PoolStats is one sample of one pool, whatever source saw it. Every source fills what it can
// observe; pointer fields left nil mean "not observable", and the series is then absent rather
// than a made-up zero. The pool history of internal/health keeps these.
type PoolStats struct {
	Target string
	Pool   string
	Source Source

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
	// (app: every worker process is an instance); at most MaxProcessSeries are exported.
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

// MaxProcessSeries caps the per-process series of one pool: a pool group of thousands of
// processes is still summed in the pool series, but not broken down.
const MaxProcessSeries = 200

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
