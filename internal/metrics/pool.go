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

	// UseTime is how long connections were held, checkout to checkin (OpenTelemetry's
	// db.client.connection.use_time, HikariCP's usage); nil where the source cannot observe it.
	// With the checkout rate it gives the offered load that the sizing model works from.
	UseTime *DurationStats
	// CreateTime is how long opening a new connection took (db.client.connection.create_time,
	// HikariCP's creation); nil where the source cannot observe it.
	CreateTime *DurationStats

	// LongestHeldSeconds is how long the longest-held of the connections checked out now has
	// been held (app); nil where not observed.
	LongestHeldSeconds *float64
	// Leaks are the connections held longer than the application's leak detection threshold
	// and where they were checked out (app); nil when no instance detects leaks.
	Leaks *LeakStats

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
	// Failures counts the checkouts that failed, by reason (FailureTimeout, FailureConnect,
	// FailureCancelled, FailureOther); they are included in Count. Failures[FailureTimeout]
	// equals Timeouts. Nil where the source cannot tell why a checkout failed.
	Failures map[string]uint64
}

// Reasons a checkout failed: the reason label of dbpool_checkout_failures_total.
const (
	// FailureTimeout: the caller gave up waiting because the pool was exhausted.
	FailureTimeout = "timeout"
	// FailureConnect: the pool tried to open a new connection and the server refused or
	// could not be reached (ConnectionRefusedError, too many clients, authentication).
	FailureConnect = "connect"
	// FailureCancelled: the caller went away (task cancelled, context cancelled) while the
	// pool still had room.
	FailureCancelled = "cancelled"
	// FailureOther: any other error raised by the checkout, e.g. a failed pre-ping reconnect.
	FailureOther = "other"
)

// FailureReasons are the values of the reason label, in the order they are exported.
var FailureReasons = []string{FailureTimeout, FailureConnect, FailureCancelled, FailureOther}

// DurationStats is a cumulative histogram of durations.
type DurationStats struct {
	Count      uint64
	SumSeconds float64
	// Buckets are cumulative (upper bound -> count); nil when the source only has totals.
	Buckets map[float64]uint64
}

// ProcessStats is one process's pool within a pool group.
type ProcessStats struct {
	Process   string // the source's name for the process, e.g. host:pid
	InUse     int
	Open      int
	Overflow  int
	Pending   *int
	Checkouts *CheckoutStats // Buckets unused: the per-process histogram carries only _sum and _count
	UseTime   *DurationStats // Buckets unused, as Checkouts'
	Leaked    *int           // connections held past the process's leak threshold; nil: no detection
}

// MaxProcessSeries caps the per-process series of one pool: a pool group of thousands of
// processes is still summed in the pool series, but not broken down.
const MaxProcessSeries = 200

// LifecycleStats are cumulative counters of what happened to a pool's connections; a nil
// field is not observed by the source.
type LifecycleStats struct {
	Opened          *uint64 // new connections to the server
	OpenFailures    *uint64 // attempts to open one that failed
	Invalidations   *uint64 // connections discarded as broken
	Recycles        *uint64 // connections replaced because they reached the recycle age
	PrePingFailures *uint64 // pre-pings that found a connection dead
}

// LeakStats are a pool's leaked connections: checked out now for longer than the leak
// detection threshold (HikariCP's leakDetectionThreshold), with the places in the
// application that checked them out.
type LeakStats struct {
	// ThresholdSeconds is the lowest threshold of the instances that detect leaks.
	ThresholdSeconds float64 `json:"threshold_seconds"`
	// Instances counts the instances that detect leaks: the others' leaks are not counted.
	Instances int `json:"instances"`
	// Count is the leaked connections now.
	Count int `json:"count"`
	// Sites are where they were checked out, the most leaked connections first, then the
	// oldest; at most MaxLeakSites, so their counts may add up to less than Count.
	Sites []LeakSite `json:"sites"`
}

// MaxLeakSites bounds the leak sites of one pool, as the integration bounds those of one
// instance.
const MaxLeakSites = 10

// LeakSite is one place in the application that checked out leaked connections.
type LeakSite struct {
	File     string `json:"file"` // empty when the checkout had no frame of the application
	Line     int    `json:"line"` // 0 when unknown
	Function string `json:"function"`
	// Count is the connections taken here that are leaked now; OldestSeconds how long the
	// longest held of them has been held.
	Count         int     `json:"count"`
	OldestSeconds float64 `json:"oldest_seconds"`
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
