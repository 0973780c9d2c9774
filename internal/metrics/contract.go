// Package metrics is dbpool_exporter's metric contract: every series it exports (name, type,
// help, labels) and every label value it sets, built once, here, from one namespace. The
// metric table of docs/metrics.md lists the same series, and contract_test.go compares the
// two both ways; alerts and the dashboard use only what the table lists.
//
// pool.go holds the pool sample that every source fills (PoolStats); AppendPool (append.go)
// turns it into the pool series, so that every source speaks this one language.
package metrics

import (
	"slices"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dbpool/dbpool_exporter/poolcfg"
)

// Namespace starts every series name.
const Namespace = "dbpool"

// Source says which view of a pool a sample comes from (the source label), and so how far its
// numbers can be trusted.
type Source string

// The sources.
const (
	// SourceActivity estimates a pool from pg_stat_activity on the server. Counts and states
	// of backends are exact, but a connection that the application has checked out and that
	// has no open transaction looks idle there, so in-use, utilization and overflow are lower
	// bounds; checkout time, waiters and timeouts are not observable.
	SourceActivity Source = "activity"
	// SourcePgBouncer reads PgBouncer's admin console: an exact pool-side view.
	SourcePgBouncer Source = "pgbouncer"
	// SourcePgxpool reads a *pgxpool.Pool in a Go process: exact.
	SourcePgxpool Source = "pgxpool"
	// SourceApp is the application's own pool as the application reports it (dbpool-stats
	// JSON, e.g. from integrations/python): exact, and configured by the DB_* settings.
	SourceApp Source = "app"
)

// Exact reports whether the source sees the pool itself rather than estimating it from the
// server side.
func (s Source) Exact() bool { return s == SourcePgBouncer || s == SourcePgxpool || s == SourceApp }

// Values of the collector label of dbpool_scrape_success and dbpool_scrape_duration_seconds:
// the name of each source a target runs.
const (
	CollectorActivity = string(SourceActivity)
	// CollectorConnection is the activity source with --no-collector.activity: it only checks
	// out the monitoring connection and reads the server's settings.
	CollectorConnection = "connection"
	// CollectorProbe times a fresh login (dbpool_probe_connect_*).
	CollectorProbe     = "probe"
	CollectorPgBouncer = string(SourcePgBouncer)
	CollectorPgxpool   = string(SourcePgxpool)
	CollectorApp       = string(SourceApp)
)

// Values of the state label. Each source breaks dbpool_connections down in its own names.
const (
	// pg_stat_activity's states (activity, and dbpool_server_connections), plus unknown for
	// sessions whose state the monitoring role may not see.
	StateActive                   = "active"
	StateIdle                     = "idle"
	StateIdleInTransaction        = "idle in transaction"
	StateIdleInTransactionAborted = "idle in transaction (aborted)"
	StateUnknown                  = "unknown"

	// SHOW POOLS' server connection columns sv_<state> (pgbouncer).
	PgBouncerStateActive        = "active"
	PgBouncerStateIdle          = "idle"
	PgBouncerStateUsed          = "used"
	PgBouncerStateTested        = "tested"
	PgBouncerStateLogin         = "login"
	PgBouncerStateActiveCancel  = "active_cancel"
	PgBouncerStateBeingCanceled = "being_canceled"

	// pgxpool.Stat's counts (pgxpool), with StateIdle.
	StateAcquired     = "acquired"
	StateConstructing = "constructing"

	// SQLAlchemy's pool states (app); connecting counts connections the pool has reserved
	// but not yet opened.
	StateCheckedOut = "checked_out"
	StateCheckedIn  = "checked_in"
	StateConnecting = "connecting"
)

// ActivityStates are emitted even at zero, so that alerts and panels always see a series.
var ActivityStates = []string{StateActive, StateIdle, StateIdleInTransaction, StateIdleInTransactionAborted}

// Values of the pool label that the exporter chooses itself; poolcfg refuses them as names of
// configured pools.
const (
	// OwnPool is the exporter's own monitoring connections on every PostgreSQL target.
	OwnPool = poolcfg.OwnPoolName
	// UnmatchedPoolPrefix starts the pool of the backends that match no configured pool,
	// grouped by application_name: application_name:psql.
	UnmatchedPoolPrefix = poolcfg.UnmatchedPoolPrefix
	// OtherApplications gathers the unmatched backends beyond the cap on such groups.
	OtherApplications = UnmatchedPoolPrefix + "other"
)

// Values of the reason label of dbpool_exporter_target_disconnects_total.
const (
	DisconnectIdle = "idle" // not scraped for --target.idle-timeout
	DisconnectCap  = "cap"  // least recently used beyond --target.max-connected
)

// Group is who describes a series: the collector that may emit it.
type Group int

// The groups.
const (
	TargetGroup   Group = iota // a target's scrape: health, login probe, server, PgBouncer
	PoolGroup                  // every pool source: a target's scrape and the pgxpool library
	ExporterGroup              // the exporter's own series about its targets (main's registry)
	AdviceGroup                // the recommendations of the pool history (main's registry)
)

// Series is one series of the contract.
type Series struct {
	Name   string
	Type   string // gauge, counter or histogram
	Labels []string
	Group  Group
	Desc   *prometheus.Desc
}

var contract []Series

// A series' descriptor is typed, so that it only makes metrics of its own type.
type (
	// Gauge is a gauge's descriptor.
	Gauge struct{ *prometheus.Desc }
	// Counter is a counter's descriptor.
	Counter struct{ *prometheus.Desc }
	// Histogram is a histogram's descriptor.
	Histogram struct{ *prometheus.Desc }
)

// Metric returns the gauge's value for labels, in the order the series declares them.
func (g Gauge) Metric(v float64, labels ...string) prometheus.Metric {
	return prometheus.MustNewConstMetric(g.Desc, prometheus.GaugeValue, v, labels...)
}

// Metric returns the counter's value for labels.
func (c Counter) Metric(v float64, labels ...string) prometheus.Metric {
	return prometheus.MustNewConstMetric(c.Desc, prometheus.CounterValue, v, labels...)
}

// Metric returns the histogram for labels; buckets are cumulative (upper bound -> count).
func (h Histogram) Metric(count uint64, sum float64, buckets map[float64]uint64, labels ...string) prometheus.Metric {
	return prometheus.MustNewConstHistogram(h.Desc, count, sum, buckets, labels...)
}

func declare(g Group, typ, subsystem, name, help string, labels []string) *prometheus.Desc {
	d := prometheus.NewDesc(prometheus.BuildFQName(Namespace, subsystem, name), help, labels, nil)
	contract = append(contract, Series{Name: prometheus.BuildFQName(Namespace, subsystem, name), Type: typ, Labels: labels, Group: g, Desc: d})
	return d
}

func gauge(g Group, subsystem, name, help string, labels ...string) Gauge {
	return Gauge{declare(g, "gauge", subsystem, name, help, labels)}
}

func counter(g Group, subsystem, name, help string, labels ...string) Counter {
	return Counter{declare(g, "counter", subsystem, name, help, labels)}
}

func histogram(g Group, subsystem, name, help string, labels ...string) Histogram {
	return Histogram{declare(g, "histogram", subsystem, name, help, labels)}
}

// Describe sends the descriptors of the series of the groups.
func Describe(ch chan<- *prometheus.Desc, groups ...Group) {
	for _, s := range contract {
		if slices.Contains(groups, s.Group) {
			ch <- s.Desc
		}
	}
}

// The series of a target's scrape: its health, the login probe, the server, PgBouncer.
var (
	Up = gauge(TargetGroup, "", "up",
		"1 if the exporter reached the target over its monitoring connection during this scrape.", "target")
	ScrapeDuration = gauge(TargetGroup, "scrape", "duration_seconds",
		"Time one collector took during this scrape.", "target", "collector")
	ScrapeSuccess = gauge(TargetGroup, "scrape", "success",
		"1 if the collector succeeded during this scrape.", "target", "collector")

	ProbeConnectSeconds = gauge(TargetGroup, "probe", "connect_seconds",
		"Time to open a fresh connection (TCP, TLS, authentication, first query), or until it failed.", "target")
	ProbeConnectSuccess = gauge(TargetGroup, "probe", "connect_success",
		"1 if a fresh login succeeded; 0 when logins fail, e.g. too many clients (SQLSTATE 53300).", "target")
	ProbeCheckoutSeconds = gauge(TargetGroup, "probe", "checkout_seconds",
		"Time to check out the exporter's own monitoring connection and pre-ping it.", "target")

	ServerMaxConnections = gauge(TargetGroup, "server", "max_connections",
		"The server's max_connections setting.", "target")
	ServerReservedConnections = gauge(TargetGroup, "server", "reserved_connections",
		"Connection slots reserved for superusers and pg_use_reserved_connections (superuser_reserved_connections + reserved_connections).", "target")
	ServerInfo = gauge(TargetGroup, "server", "info",
		"Always 1; the server's version.", "target", "server_version")
	ServerConnections = gauge(TargetGroup, "server", "connections",
		"Client backends by state, the exporter's own excluded; unknown where the monitoring role may not see the state.", "target", "state")
	ServerActivityRestricted = gauge(TargetGroup, "server", "activity_restricted",
		"1 if the monitoring role lacks pg_read_all_stats (pg_monitor) and cannot see other roles' session states.", "target")

	PgBouncerInfo = gauge(TargetGroup, "pgbouncer", "info",
		"Always 1; the version of the PgBouncer behind the target, from SHOW VERSION.", "target", "version")

	AppEndpointUp = gauge(TargetGroup, "app", "endpoint_up",
		"1 if the app endpoint answered a valid dbpool-stats document during this scrape; one series per endpoint (address:port) "+
			"of an apps entry (app), at most "+strconv.Itoa(MaxAppEndpoints)+" per entry.", "target", "pool", "app", "endpoint")
	AppDiscoverySuccess = gauge(TargetGroup, "app", "discovery_success",
		"1 if the DNS lookup (dns+ URL) or the file_sd file of an apps entry gave its endpoints during this scrape; "+
			"0 scrapes the endpoints of the last good answer, if any.", "target", "pool", "app")
)

// MaxAppEndpoints caps the endpoints of one apps entry that a scrape reads (the addresses of a
// DNS name, the targets of a file_sd file): beyond it, the entry's discovery fails and the
// first ones are read. A pool on one server with more replicas than this would need more
// connections than any server has.
const MaxAppEndpoints = 256

// The pool series, alike for every source: target, pool and source label every one of them,
// so that two views of one pool (the activity estimate and the application's own report)
// stand side by side.
var (
	PoolInfo = poolGauge("pool_info", "Always 1; one series per pool and source that observes it (activity: estimate from pg_stat_activity; pgbouncer, pgxpool, app: exact).")

	PoolSize        = poolGauge("size_connections", "Configured permanent connections per instance (DB_POOL_SIZE).")
	MaxOverflow     = poolGauge("max_overflow_connections", "Configured extra connections per instance beyond the pool size (DB_MAX_OVERFLOW).")
	MaxConnections  = poolGauge("max_connections", "Capacity of the pool group: instances x (pool size + max overflow).")
	CheckoutTimeout = poolGauge("checkout_timeout_seconds", "Configured time a checkout may wait for a connection (DB_POOL_TIMEOUT); absent when it waits forever.")
	Recycle         = poolGauge("recycle_seconds", "Configured connection age after which the pool replaces it (DB_POOL_RECYCLE); 0 means never.")
	PrePingEnabled  = poolGauge("pre_ping_enabled", "1 if the pool tests connections before use (DB_POOL_PRE_PING).")
	Instances       = poolGauge("instances", "Processes that each hold one such pool: as configured, or for the app source those that reported.")

	OpenConnections     = poolGauge("open_connections", "Connections the pool group has open (in use plus idle).")
	InUseConnections    = poolGauge("in_use_connections", "Connections checked out or busy; never counts idle ones. A lower bound for the activity source.")
	Connections         = poolGauge("connections", "Open connections by state, a disjoint breakdown of dbpool_open_connections in the source's own state names.", "state")
	Utilization         = poolGauge("utilization_ratio", "In-use connections over the pool group's capacity (0..1).")
	OverflowConnections = poolGauge("overflow_connections", "Connections beyond the pool size: per instance max(0, open - pool size), summed.")
	PendingCheckouts    = poolGauge("pending_checkouts", "Callers waiting for a connection right now.")
	Checkouts           = poolCounter("checkouts_total", "Checkouts (acquires) of a connection that finished waiting; pgxpool also counts failed ones.")
	CheckoutDuration    = histogram(PoolGroup, "", "checkout_duration_seconds", "Time callers waited to check out a connection.", poolLabels...)
	CheckoutTimeouts    = poolCounter("checkout_timeouts_total", "Checkouts that gave up waiting because the pool was exhausted.")
	LongestCheckoutWait = poolGauge("longest_checkout_wait_seconds", "Age of the oldest checkout that is still waiting; 0 when none waits.")
	CheckoutFailures    = counter(PoolGroup, "", "checkout_failures_total", "Checkouts that failed, by reason: timeout (the pool was exhausted), connect (opening a connection failed), cancelled (the caller went away), other.", append(poolLabels[:3:3], "reason")...)
	ConnectionUse       = histogram(PoolGroup, "", "connection_use_duration_seconds", "Time connections were held, from checkout to checkin.", poolLabels...)
	ConnectionCreate    = histogram(PoolGroup, "", "connection_create_duration_seconds", "Time opening a new connection took (connect, authentication and the pool's setup of it), failed attempts included.", poolLabels...)
	// LongestConnectionUse sees what the server cannot: a checked-out connection with no open
	// transaction looks idle in pg_stat_activity, so no dbpool_longest_* of the activity source
	// grows while the application holds it; and it needs no leak detection.
	LongestConnectionUse = poolGauge("longest_connection_use_seconds", "Time the longest-held connection checked out now has been held so far (checkout to now); 0 when none is checked out.")
	LeakedConnections    = poolGauge("leaked_connections", "Connections checked out now for longer than the application's leak detection threshold; absent when no instance detects leaks. Where they were taken is in /api/v1/pools and on /pools.")

	LongestQuery             = poolGauge("longest_query_seconds", "Age of the longest running query (state active); 0 when none runs.")
	LongestTransaction       = poolGauge("longest_transaction_seconds", "Age of the oldest open transaction; 0 when none is open.")
	LongestIdleInTransaction = poolGauge("longest_idle_in_transaction_seconds", "Time the longest idle-in-transaction session has been idle; 0 when none is.")
	OldestConnection         = poolGauge("oldest_connection_seconds", "Age of the oldest connection, to compare with dbpool_recycle_seconds; 0 when none is open.")
	LockWaitingConnections   = poolGauge("lock_waiting_connections", "Connections waiting for a heavyweight lock.")

	ConnectionsOpened      = poolCounter("connections_opened_total", "New connections the pool opened to the server.")
	ConnectionOpenFailures = poolCounter("connection_open_failures_total", "Attempts to open a new connection that failed (refused, timed out, authentication failed).")
	ConnectionInvalidation = poolCounter("connection_invalidations_total", "Connections the pool discarded as broken (invalidated).")
	ConnectionRecycles     = poolCounter("connection_recycles_total", "Connections the pool replaced because they reached the recycle age (DB_POOL_RECYCLE).")
	PrePingFailures        = poolCounter("pre_ping_failures_total", "Pre-pings (DB_POOL_PRE_PING) that found a connection dead before handing it out.")

	ProcessInUse            = poolGauge("process_in_use_connections", "Connections one process of the pool group has checked out.", "process")
	ProcessOpen             = poolGauge("process_open_connections", "Connections one process of the pool group has open.", "process")
	ProcessOverflow         = poolGauge("process_overflow_connections", "Connections one process has open beyond its pool size: max(0, open - pool size).", "process")
	ProcessPending          = poolGauge("process_pending_checkouts", "Callers of one process waiting for a connection right now.", "process")
	ProcessCheckoutDuration = histogram(PoolGroup, "", "process_checkout_duration_seconds", "Time callers of one process waited to check out a connection (_sum and _count only; the pool's histogram has the buckets).", append(poolLabels[:3:3], "process")...)
	ProcessCheckoutTimeouts = counter(PoolGroup, "", "process_checkout_timeouts_total", "Checkouts of one process that gave up waiting because its pool was exhausted.", append(poolLabels[:3:3], "process")...)
	ProcessConnectionUse    = histogram(PoolGroup, "", "process_connection_use_duration_seconds", "Time one process held connections, checkout to checkin (_sum and _count only; the pool's histogram has the buckets).", append(poolLabels[:3:3], "process")...)
	ProcessLeaked           = poolGauge("process_leaked_connections", "Connections one process has held longer than its leak detection threshold; absent where it does not detect leaks.", "process")
)

// poolLabels are on every pool series.
var poolLabels = []string{"target", "pool", "source"}

func poolGauge(name, help string, extra ...string) Gauge {
	return gauge(PoolGroup, "", name, help, append(poolLabels[:3:3], extra...)...)
}

func poolCounter(name, help string) Counter { return counter(PoolGroup, "", name, help, poolLabels...) }

// The exporter's own series about its targets; on the telemetry path only, never on /probe.
var (
	ExporterTargets = gauge(ExporterGroup, "exporter", "targets",
		"Configured targets (PostgreSQL servers and PgBouncers) that /metrics or /probe can scrape.")
	ExporterConnectedTargets = gauge(ExporterGroup, "exporter", "connected_targets",
		"Targets that hold or may hold monitoring connections: scraped, and not disconnected since for being idle "+
			"(--target.idle-timeout) or over the cap (--target.max-connected).")
	ExporterMaxConnectedTargets = gauge(ExporterGroup, "exporter", "max_connected_targets",
		"The cap on connected targets (--target.max-connected) that a /probe scrape enforces; absent without a cap.")
	ExporterTargetDisconnects = counter(ExporterGroup, "exporter", "target_disconnects_total",
		"Targets whose monitoring connections were closed, by reason: idle (not scraped for --target.idle-timeout) or cap "+
			"(least recently used when a /probe scrape needed a connection beyond --target.max-connected).", "reason")
)

// The recommendations drawn from the pool history.
var (
	RecommendedSize = gauge(AdviceGroup, "recommended", "size_connections",
		"Recommended permanent connections per instance (DB_POOL_SIZE) from the pool's history; the rules behind it are at /api/v1/optimize.",
		"target", "pool")
	RecommendedMaxOverflow = gauge(AdviceGroup, "recommended", "max_overflow_connections",
		"Recommended extra connections per instance beyond the pool size (DB_MAX_OVERFLOW) from the pool's history; the rules behind it are at /api/v1/optimize.",
		"target", "pool")

	// What the sizing model predicts per instance for the current settings and for the
	// recommended ones (label settings), where the source measures hold times.
	PredictedCheckoutWait = gauge(AdviceGroup, "predicted", "checkout_wait_seconds",
		"Average checkout time per instance the sizing model predicts for the pool's current or recommended settings (a timed-out checkout counts its whole wait).",
		"target", "pool", "settings")
	PredictedTimeoutRatio = gauge(AdviceGroup, "predicted", "checkout_timeout_ratio",
		"Share of checkouts (0..1) the sizing model predicts to time out with the pool's current or recommended settings.",
		"target", "pool", "settings")
	PredictedUtilization = gauge(AdviceGroup, "predicted", "utilization_ratio",
		"Average connections in use over pool size per instance the sizing model predicts for the pool's current or recommended settings.",
		"target", "pool", "settings")
)

// Values of the settings label of the dbpool_predicted_* series.
const (
	SettingsCurrent     = "current"
	SettingsRecommended = "recommended"
)
