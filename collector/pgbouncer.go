package collector

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dbpool/dbpool_exporter/poolcfg"
)

// PgBouncerOptions are the plain, validated settings of a PgBouncer target.
type PgBouncerOptions struct {
	// MaxConnLifetime replaces the admin console connection once it is this old, so that a
	// connection kept across DNS or failover changes does not live forever; 0 keeps it until
	// it breaks.
	MaxConnLifetime time.Duration
}

// DefaultPgBouncerOptions are the flags' defaults.
func DefaultPgBouncerOptions() PgBouncerOptions {
	return PgBouncerOptions{MaxConnLifetime: 30 * time.Minute}
}

// pgbouncerCollector is the collector label of the PgBouncer target's only job.
const pgbouncerCollector = SourcePgBouncer

// The console statements of one scrape, in order. The console accepts one command per
// query message (no "SHOW POOLS; SHOW STATS"), so a scrape is len(pgbouncerStatements) round
// trips on one connection. SHOW VERSION goes first: it is also the liveness check.
const (
	pgbVersionQuery   = "SHOW VERSION"
	pgbConfigQuery    = "SHOW CONFIG"
	pgbDatabasesQuery = "SHOW DATABASES"
	pgbUsersQuery     = "SHOW USERS"
	pgbPoolsQuery     = "SHOW POOLS"
	pgbStatsQuery     = "SHOW STATS"
)

var pgbouncerStatements = []string{pgbVersionQuery, pgbConfigQuery, pgbDatabasesQuery, pgbUsersQuery, pgbPoolsQuery, pgbStatsQuery}

// pgbAdminDatabase is the console's own pseudo-database; it is not an application pool.
const pgbAdminDatabase = "pgbouncer"

// PgBouncer server connection states as SHOW POOLS names them (sv_<state>), the values of
// dbpool_connections{state} for this source.
const (
	PgBouncerStateActive        = "active"
	PgBouncerStateIdle          = "idle"
	PgBouncerStateUsed          = "used"
	PgBouncerStateTested        = "tested"
	PgBouncerStateLogin         = "login"
	PgBouncerStateActiveCancel  = "active_cancel"
	PgBouncerStateBeingCanceled = "being_canceled"
)

// pgbServerStates are the SHOW POOLS columns that together are every server connection a
// pool holds (PgBouncer's pool_server_count). sv_active_cancel and sv_being_canceled exist
// from PgBouncer 1.18 on and are counted only where present.
var pgbServerStates = []struct{ column, state string }{
	{"sv_active", PgBouncerStateActive},
	{"sv_idle", PgBouncerStateIdle},
	{"sv_used", PgBouncerStateUsed},
	{"sv_tested", PgBouncerStateTested},
	{"sv_login", PgBouncerStateLogin},
	{"sv_active_cancel", PgBouncerStateActiveCancel},
	{"sv_being_canceled", PgBouncerStateBeingCanceled},
}

// PgBouncerTarget watches one PgBouncer through its admin console. Each PgBouncer pool
// (database, user) becomes a pool labelled "<database>/<user>", in the shared pool series.
//
// Mapping of PgBouncer's numbers onto the pool model:
//   - size: pool_size of the user (SHOW USERS, 1.24+), else of the database (SHOW
//     DATABASES), else default_pool_size; max overflow: the reserve pool, resolved the same
//     way (reserve_pool_size, called reserve_pool in SHOW DATABASES before 1.24).
//   - checkout timeout: query_wait_timeout (0 means clients wait forever); recycle:
//     server_lifetime; pre-ping: server_check_query is set. PgBouncer then tests a server
//     connection before handing it out if it sat idle longer than server_check_delay (0
//     means before every use); server_check_delay tunes when, not whether, so it is not
//     what the gauge reports.
//   - open: every server connection (sv_*); in use: sv_active, the ones linked to a client;
//     pending: cl_waiting; overflow: max(0, open - pool size), i.e. reserve connections.
//   - checkouts: SHOW STATS counts per database, not per user, so they are attributed to a
//     pool only when the database has one application pool (see attributeStats). The count
//     is total_server_assignment_count (1.23+); before that, total_xact_count in
//     transaction mode and total_query_count in statement mode, where each is one server
//     assignment; in session mode it is not observable. The duration sum is
//     total_wait_time. There are no buckets (the histogram has +Inf only) and no timeout
//     counter: clients dropped by query_wait_timeout show only in PgBouncer's log, so
//     dbpool_checkout_timeouts_total is absent rather than a made-up zero.
//   - longest checkout wait: maxwait + maxwait_us, with microsecond resolution.
type PgBouncerTarget struct {
	targetBase
	opts     PgBouncerOptions
	connCfg  *pgx.ConnConfig
	poolDesc *poolDescs
	info     *prometheus.Desc

	// slot guards the console connection: whoever holds the slot owns conn, connectedAt
	// and closed. It is a channel rather than a mutex so that waiting for it obeys the
	// scrape's deadline.
	slot        chan struct{}
	conn        *pgx.Conn
	connectedAt time.Time
	closed      bool
}

// NewPgBouncerTarget prepares a target; it does not connect until the first scrape, so that
// the exporter starts (and answers dbpool_up 0) while PgBouncer is down.
func NewPgBouncerTarget(name string, dsn poolcfg.DSN, opts PgBouncerOptions, logger *slog.Logger) (*PgBouncerTarget, error) {
	cfg, err := pgx.ParseConfig(dsn.ConnString())
	if err != nil {
		return nil, fmt.Errorf("target %q: parsing DSN %s: %w", name, dsn, poolcfg.RedactError(err))
	}
	if opts.MaxConnLifetime < 0 {
		return nil, fmt.Errorf("target %q: connection lifetime %v must not be negative", name, opts.MaxConnLifetime)
	}
	// The console speaks only the simple query protocol, answers every value as text and
	// has no prepared statements to cache.
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	cfg.StatementCacheCapacity = 0
	cfg.DescriptionCacheCapacity = 0
	// A cancelled scrape must not wait for an unresponsive PgBouncer: pgx's default
	// handler makes the socket's I/O fail at once, and the broken connection is replaced
	// on the next scrape. (A cancel request is pointless: SHOW commands do not block.)
	cfg.BuildContextWatcherHandler = func(c *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.DeadlineContextWatcherHandler{Conn: c.Conn()}
	}
	return &PgBouncerTarget{
		targetBase: newTargetBase(name, logger),
		opts:       opts,
		connCfg:    cfg,
		poolDesc:   newPoolDescs(),
		info: prometheus.NewDesc(prometheus.BuildFQName(namespace, "pgbouncer", "info"),
			"Always 1; the version of the PgBouncer behind the target, from SHOW VERSION.", []string{"target", "version"}, nil),
		slot: make(chan struct{}, 1),
	}, nil
}

// Describe sends every descriptor a PgBouncer target can emit.
func (t *PgBouncerTarget) Describe(ch chan<- *prometheus.Desc) {
	t.health.describe(ch)
	t.poolDesc.describe(ch)
	ch <- t.info
}

// Close closes the console connection. It waits for a collection in flight, which is
// bounded by its scrape's deadline.
func (t *PgBouncerTarget) Close() {
	t.slot <- struct{}{}
	defer func() { <-t.slot }()
	t.closed = true
	t.dropConn()
}

// Scrape collects the target once. Concurrent scrapes share one collection, so the console
// never sees more than one exporter session.
func (t *PgBouncerTarget) Scrape(ctx context.Context) Result {
	return t.scrapeShared(ctx, t.jobs, nil)
}

// jobs is the target's one job; reached is set once the console answered SHOW VERSION:
// PgBouncer is up even if a later statement fails (that shows in dbpool_scrape_success).
func (t *PgBouncerTarget) jobs(reached *atomic.Bool) []job {
	return []job{{name: pgbouncerCollector, run: func(ctx context.Context) ([]prometheus.Metric, []PoolStats, error) {
		return t.collect(ctx, reached)
	}}}
}

// pgbSample is everything one scrape read from the console.
type pgbSample struct {
	version   string
	config    pgbConfig
	databases []pgbDatabaseRow
	users     []pgbUserRow
	pools     []pgbPoolRow
	stats     []pgbStatsRow
}

// collect is the job: it reads the console and turns the sample into metrics.
func (t *PgBouncerTarget) collect(ctx context.Context, reached *atomic.Bool) ([]prometheus.Metric, []PoolStats, error) {
	s, err := t.read(ctx, reached)
	if err != nil {
		return nil, nil, err
	}
	pools, err := buildPgBouncerPools(t.name, s)
	if err != nil {
		return nil, nil, err
	}
	ms := []prometheus.Metric{prometheus.MustNewConstMetric(t.info, prometheus.GaugeValue, 1, t.name, s.version)}
	out := make([]PoolStats, 0, len(pools))
	for i := range pools {
		p := &pools[i]
		ms = t.poolDesc.appendMetrics(ms, p)
		out = append(out, *p)
	}
	return ms, out, nil
}

// read takes the console connection and runs every statement of a scrape on it.
func (t *PgBouncerTarget) read(ctx context.Context, reached *atomic.Bool) (*pgbSample, error) {
	select {
	case t.slot <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for the console connection: %w", ctx.Err())
	}
	defer func() { <-t.slot }()
	if t.closed {
		return nil, errors.New("target closed")
	}
	s, err := t.readLocked(ctx, reached)
	if err != nil && t.conn != nil && (t.conn.IsClosed() || ctx.Err() != nil) {
		// A network error or a cut-off statement leaves the connection unusable: log in
		// afresh next time. An error the console answered with keeps it.
		t.dropConn()
	}
	return s, err
}

func (t *PgBouncerTarget) readLocked(ctx context.Context, reached *atomic.Bool) (*pgbSample, error) {
	if t.conn != nil && t.opts.MaxConnLifetime > 0 && time.Since(t.connectedAt) > t.opts.MaxConnLifetime {
		t.dropConn()
	}
	reused := t.conn != nil
	if err := t.ensureConn(ctx); err != nil {
		return nil, err
	}
	version, err := queryConsole(ctx, t.conn, pgbVersionQuery)
	if err != nil && reused && t.conn.IsClosed() && ctx.Err() == nil {
		// The kept connection died with a PgBouncer restart; one fresh login tells
		// whether PgBouncer is back, so the first scrape after a restart succeeds.
		t.dropConn()
		if err := t.ensureConn(ctx); err != nil {
			return nil, err
		}
		version, err = queryConsole(ctx, t.conn, pgbVersionQuery)
	}
	if err != nil {
		return nil, err
	}
	reached.Store(true)
	s := &pgbSample{version: parseVersion(version)}
	tables := make(map[string][]consoleRow, len(pgbouncerStatements))
	for _, q := range pgbouncerStatements[1:] {
		rows, err := queryConsole(ctx, t.conn, q)
		if err != nil {
			return nil, err
		}
		tables[q] = rows
	}
	if s.config, err = parseConfig(tables[pgbConfigQuery]); err != nil {
		return nil, err
	}
	if s.databases, err = parseRows(pgbDatabasesQuery, tables[pgbDatabasesQuery], parseDatabaseRow); err != nil {
		return nil, err
	}
	if s.users, err = parseRows(pgbUsersQuery, tables[pgbUsersQuery], parseUserRow); err != nil {
		return nil, err
	}
	if s.pools, err = parseRows(pgbPoolsQuery, tables[pgbPoolsQuery], parsePoolRow); err != nil {
		return nil, err
	}
	if s.stats, err = parseRows(pgbStatsQuery, tables[pgbStatsQuery], parseStatsRow); err != nil {
		return nil, err
	}
	return s, nil
}

// ensureConn logs in to the console if there is no connection. Callers hold the slot.
func (t *PgBouncerTarget) ensureConn(ctx context.Context) error {
	if t.conn != nil {
		return nil
	}
	conn, err := pgx.ConnectConfig(ctx, t.connCfg.Copy())
	if err != nil {
		return fmt.Errorf("console connection: %w", err)
	}
	t.conn, t.connectedAt = conn, time.Now()
	return nil
}

// dropConn closes the console connection. Callers hold the slot.
func (t *PgBouncerTarget) dropConn() {
	if t.conn == nil {
		return
	}
	// Close sends Terminate; a dead PgBouncer must not hold the caller.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_ = t.conn.Close(ctx)
	t.conn = nil
}
