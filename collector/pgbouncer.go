package collector

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dbpool/dbpool_exporter/internal/metrics"
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

// pgbServerStates are the SHOW POOLS columns that together are every server connection a
// pool holds (PgBouncer's pool_server_count). sv_active_cancel and sv_being_canceled exist
// from PgBouncer 1.18 on and are counted only where present.
var pgbServerStates = []struct{ column, state string }{
	{"sv_active", metrics.PgBouncerStateActive},
	{"sv_idle", metrics.PgBouncerStateIdle},
	{"sv_used", metrics.PgBouncerStateUsed},
	{"sv_tested", metrics.PgBouncerStateTested},
	{"sv_login", metrics.PgBouncerStateLogin},
	{"sv_active_cancel", metrics.PgBouncerStateActiveCancel},
	{"sv_being_canceled", metrics.PgBouncerStateBeingCanceled},
}

// pgbouncerSource reads one PgBouncer's admin console, the only source of a PgBouncer
// target. Each PgBouncer pool (database, user) becomes a pool labelled "<database>/<user>",
// in the shared pool series.
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
type pgbouncerSource struct {
	target  string
	opts    PgBouncerOptions
	connCfg *pgx.ConnConfig

	// slot guards the console connection: whoever holds the slot owns conn, connectedAt
	// and closed. It is a channel rather than a mutex so that waiting for it obeys the
	// scrape's deadline.
	slot        chan struct{}
	conn        *pgx.Conn
	connectedAt time.Time
	closed      bool
}

// NewPgBouncerTarget prepares a PgBouncer target; it does not connect until the first
// scrape, so that the exporter starts (and answers dbpool_up 0) while PgBouncer is down.
// Concurrent scrapes share one collection, so the console never sees more than one
// exporter session.
func NewPgBouncerTarget(name string, dsn poolcfg.DSN, opts PgBouncerOptions, logger *slog.Logger) (*Target, error) {
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
	s := &pgbouncerSource{target: name, opts: opts, connCfg: cfg, slot: make(chan struct{}, 1)}
	return newTarget(name, []Source{s}, s.release, s.close, logger), nil
}

func (*pgbouncerSource) Name() string { return metrics.CollectorPgBouncer }

// close closes the console connection. It waits for a collection in flight, which is
// bounded by its scrape's deadline.
func (s *pgbouncerSource) close() {
	s.slot <- struct{}{}
	defer func() { <-s.slot }()
	s.closed = true
	s.dropConn()
}

// release closes the console connection without making the caller wait: at once if no
// collection holds it, else when that collection is done. The next scrape logs in again.
func (s *pgbouncerSource) release() {
	go func() {
		s.slot <- struct{}{}
		defer func() { <-s.slot }()
		s.dropConn()
	}()
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

// Scrape reads the console and maps what it read onto pools. PgBouncer counts as reached
// once the console answered SHOW VERSION, even if a later statement fails (that shows in
// dbpool_scrape_success).
func (s *pgbouncerSource) Scrape(ctx context.Context) (Scraped, error) {
	var out Scraped
	sample, err := s.read(ctx, &out.Reached)
	if err != nil {
		return out, err
	}
	if out.Pools, err = buildPgBouncerPools(s.target, sample); err != nil {
		return out, err
	}
	out.Metrics = []prometheus.Metric{metrics.PgBouncerInfo.Metric(1, s.target, sample.version)}
	return out, nil
}

// read takes the console connection and runs every statement of a scrape on it.
func (s *pgbouncerSource) read(ctx context.Context, reached *bool) (*pgbSample, error) {
	select {
	case s.slot <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for the console connection: %w", ctx.Err())
	}
	defer func() { <-s.slot }()
	if s.closed {
		return nil, errors.New("target closed")
	}
	sample, err := s.readLocked(ctx, reached)
	if err != nil && s.conn != nil && (s.conn.IsClosed() || ctx.Err() != nil) {
		// A network error or a cut-off statement leaves the connection unusable: log in
		// afresh next time. An error the console answered with keeps it.
		s.dropConn()
	}
	return sample, err
}

func (s *pgbouncerSource) readLocked(ctx context.Context, reached *bool) (*pgbSample, error) {
	if s.conn != nil && s.opts.MaxConnLifetime > 0 && time.Since(s.connectedAt) > s.opts.MaxConnLifetime {
		s.dropConn()
	}
	reused := s.conn != nil
	if err := s.ensureConn(ctx); err != nil {
		return nil, err
	}
	version, err := queryConsole(ctx, s.conn, pgbVersionQuery)
	if err != nil && reused && s.conn.IsClosed() && ctx.Err() == nil {
		// The kept connection died with a PgBouncer restart; one fresh login tells
		// whether PgBouncer is back, so the first scrape after a restart succeeds.
		s.dropConn()
		if err := s.ensureConn(ctx); err != nil {
			return nil, err
		}
		version, err = queryConsole(ctx, s.conn, pgbVersionQuery)
	}
	if err != nil {
		return nil, err
	}
	*reached = true
	sample := &pgbSample{version: parseVersion(version)}
	tables := make(map[string][]consoleRow, len(pgbouncerStatements))
	for _, q := range pgbouncerStatements[1:] {
		rows, err := queryConsole(ctx, s.conn, q)
		if err != nil {
			return nil, err
		}
		tables[q] = rows
	}
	if sample.config, err = parseConfig(tables[pgbConfigQuery]); err != nil {
		return nil, err
	}
	if sample.databases, err = parseRows(pgbDatabasesQuery, tables[pgbDatabasesQuery], parseDatabaseRow); err != nil {
		return nil, err
	}
	if sample.users, err = parseRows(pgbUsersQuery, tables[pgbUsersQuery], parseUserRow); err != nil {
		return nil, err
	}
	if sample.pools, err = parseRows(pgbPoolsQuery, tables[pgbPoolsQuery], parsePoolRow); err != nil {
		return nil, err
	}
	if sample.stats, err = parseRows(pgbStatsQuery, tables[pgbStatsQuery], parseStatsRow); err != nil {
		return nil, err
	}
	return sample, nil
}

// ensureConn logs in to the console if there is no connection. Callers hold the slot.
func (s *pgbouncerSource) ensureConn(ctx context.Context) error {
	if s.conn != nil {
		return nil
	}
	conn, err := pgx.ConnectConfig(ctx, s.connCfg.Copy())
	if err != nil {
		return fmt.Errorf("console connection: %w", err)
	}
	s.conn, s.connectedAt = conn, time.Now()
	return nil
}

// dropConn closes the console connection. Callers hold the slot.
func (s *pgbouncerSource) dropConn() {
	if s.conn == nil {
		return
	}
	closeConn(s.conn)
	s.conn = nil
}

// closeConn closes a console connection. Closing sends Terminate; a dead PgBouncer must not
// hold the caller.
func closeConn(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	_ = conn.Close(ctx)
}
