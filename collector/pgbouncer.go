package collector

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"strings"
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
		return nil, fmt.Errorf("target %q: parsing DSN %s: %w", name, dsn, err)
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
		targetBase: newTargetBase(name, cfg.Password, logger),
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

// consoleRow is one row of a console answer, addressed by column name so that columns that
// other PgBouncer versions add, rename or drop do not shift the others. In the simple
// protocol every value is text; nil is NULL.
type consoleRow struct {
	index map[string]int
	vals  []*string
}

func queryConsole(ctx context.Context, conn *pgx.Conn, sql string) ([]consoleRow, error) {
	rows, err := conn.Query(ctx, sql)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", sql, err)
	}
	defer rows.Close()
	fds := rows.FieldDescriptions()
	index := make(map[string]int, len(fds))
	for i, fd := range fds {
		index[fd.Name] = i
	}
	var out []consoleRow
	for rows.Next() {
		raw := rows.RawValues()
		vals := make([]*string, len(raw))
		for i, b := range raw {
			if b != nil {
				// Names come from the server's encoding (SQL_ASCII, LATIN1...); label values
				// must be valid UTF-8 or client_golang panics.
				s := strings.ToValidUTF8(string(b), "?")
				vals[i] = &s
			}
		}
		out = append(out, consoleRow{index: index, vals: vals})
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", sql, err)
	}
	return out, nil
}

// text returns the value of column; ok is false when the column is absent or NULL.
func (r consoleRow) text(column string) (v string, ok bool) {
	i, found := r.index[column]
	if !found || i >= len(r.vals) || r.vals[i] == nil {
		return "", false
	}
	return *r.vals[i], true
}

// requiredText is text for columns every supported PgBouncer has.
func (r consoleRow) requiredText(column string) (string, error) {
	v, ok := r.text(column)
	if !ok {
		return "", fmt.Errorf("column %q missing or NULL", column)
	}
	return v, nil
}

// int returns an integer column; ok is false when it is absent or NULL, and a value that is
// present but not an integer is an error.
func (r consoleRow) int(column string) (v int64, ok bool, err error) {
	s, ok := r.text(column)
	if !ok {
		return 0, false, nil
	}
	v, err = strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil {
		return 0, false, fmt.Errorf("column %q: %q is not an integer", column, s)
	}
	return v, true, nil
}

func (r consoleRow) requiredInt(column string) (int64, error) {
	v, ok, err := r.int(column)
	if err == nil && !ok {
		err = fmt.Errorf("column %q missing or NULL", column)
	}
	return v, err
}

// counter is like int for the cumulative counters of SHOW STATS, which may exceed int64.
func (r consoleRow) counter(column string) (*uint64, error) {
	s, ok := r.text(column)
	if !ok {
		return nil, nil
	}
	v, err := strconv.ParseUint(strings.TrimSpace(s), 10, 64)
	if err != nil {
		return nil, fmt.Errorf("column %q: %q is not a counter", column, s)
	}
	return &v, nil
}

// parseRows converts every row with parse and names the statement in errors.
func parseRows[T any](sql string, rows []consoleRow, parse func(consoleRow) (T, error)) ([]T, error) {
	out := make([]T, 0, len(rows))
	for i, r := range rows {
		v, err := parse(r)
		if err != nil {
			return nil, fmt.Errorf("%s row %d: %w", sql, i+1, err)
		}
		out = append(out, v)
	}
	return out, nil
}

// pgbPoolRow is one row of SHOW POOLS.
type pgbPoolRow struct {
	database, user string
	clWaiting      int
	// servers holds the sv_* columns present, by state name.
	servers map[string]int
	// maxWait is maxwait plus maxwait_us in seconds; nil when neither column exists.
	maxWait  *float64
	poolMode string
}

func parsePoolRow(r consoleRow) (pgbPoolRow, error) {
	var p pgbPoolRow
	var err error
	if p.database, err = r.requiredText("database"); err != nil {
		return p, err
	}
	if p.user, err = r.requiredText("user"); err != nil {
		return p, err
	}
	waiting, err := r.requiredInt("cl_waiting")
	if err != nil {
		return p, err
	}
	p.clWaiting = int(waiting)
	p.servers = make(map[string]int, len(pgbServerStates))
	for _, c := range pgbServerStates {
		n, ok, err := r.int(c.column)
		if err != nil {
			return p, err
		}
		if ok {
			p.servers[c.state] = int(n)
		}
	}
	// Without these two the pool's in-use and idle counts would be made up.
	for _, state := range []string{PgBouncerStateActive, PgBouncerStateIdle} {
		if _, ok := p.servers[state]; !ok {
			return p, fmt.Errorf("column %q missing or NULL", "sv_"+state)
		}
	}
	sec, okSec, err := r.int("maxwait")
	if err != nil {
		return p, err
	}
	us, okUS, err := r.int("maxwait_us")
	if err != nil {
		return p, err
	}
	if okSec || okUS {
		w := float64(sec) + float64(us)/1e6
		p.maxWait = &w
	}
	p.poolMode, _ = r.text("pool_mode")
	return p, nil
}

// pgbStatsRow is one row of SHOW STATS: cumulative counters per database. A counter is nil
// when this PgBouncer does not have its column.
type pgbStatsRow struct {
	database                    string
	xacts, queries, assignments *uint64
	waitMicros                  *uint64
}

func parseStatsRow(r consoleRow) (pgbStatsRow, error) {
	var s pgbStatsRow
	var err error
	if s.database, err = r.requiredText("database"); err != nil {
		return s, err
	}
	for _, c := range []struct {
		column string
		dst    **uint64
	}{
		{"total_xact_count", &s.xacts},
		{"total_query_count", &s.queries},
		{"total_server_assignment_count", &s.assignments},
		{"total_wait_time", &s.waitMicros},
	} {
		if *c.dst, err = r.counter(c.column); err != nil {
			return s, err
		}
	}
	return s, nil
}

// pgbDatabaseRow is one row of SHOW DATABASES. Settings are nil when not shown or not set
// for this database (NULL or negative), meaning the global setting applies.
type pgbDatabaseRow struct {
	name           string
	poolSize       *int
	reservePool    *int
	serverLifetime *time.Duration
	poolMode       string
	authUser       string
}

func parseDatabaseRow(r consoleRow) (pgbDatabaseRow, error) {
	var d pgbDatabaseRow
	var err error
	if d.name, err = r.requiredText("name"); err != nil {
		return d, err
	}
	if d.poolSize, err = optionalSize(r, "pool_size"); err != nil {
		return d, err
	}
	// reserve_pool until PgBouncer 1.23, reserve_pool_size from 1.24.
	for _, column := range []string{"reserve_pool_size", "reserve_pool"} {
		if d.reservePool, err = optionalSize(r, column); err != nil || d.reservePool != nil {
			break
		}
	}
	if err != nil {
		return d, err
	}
	// server_lifetime (1.23+) is in seconds; 0 means the global setting applies.
	if s, ok := r.text("server_lifetime"); ok {
		lt, err := parseSeconds(s)
		if err != nil {
			return d, fmt.Errorf("column %q: %w", "server_lifetime", err)
		}
		if lt > 0 {
			d.serverLifetime = &lt
		}
	}
	d.poolMode, _ = r.text("pool_mode")
	d.authUser, _ = r.text("auth_user")
	return d, nil
}

// pgbUserRow is one row of SHOW USERS; per-user pool sizes exist from PgBouncer 1.24 on.
type pgbUserRow struct {
	name        string
	poolSize    *int
	reservePool *int
	poolMode    string
}

func parseUserRow(r consoleRow) (pgbUserRow, error) {
	var u pgbUserRow
	var err error
	if u.name, err = r.requiredText("name"); err != nil {
		return u, err
	}
	if u.poolSize, err = optionalSize(r, "pool_size"); err != nil {
		return u, err
	}
	if u.reservePool, err = optionalSize(r, "reserve_pool_size"); err != nil {
		return u, err
	}
	u.poolMode, _ = r.text("pool_mode")
	return u, nil
}

// optionalSize reads a size override; NULL, empty and negative mean "not set".
func optionalSize(r consoleRow, column string) (*int, error) {
	s, ok := r.text(column)
	if !ok || strings.TrimSpace(s) == "" {
		return nil, nil
	}
	v, ok, err := r.int(column)
	if err != nil || !ok || v < 0 {
		return nil, err
	}
	n := int(v)
	return &n, nil
}

// pgbConfig is SHOW CONFIG as key -> value.
type pgbConfig map[string]string

func parseConfig(rows []consoleRow) (pgbConfig, error) {
	c := make(pgbConfig, len(rows))
	for i, r := range rows {
		k, err := r.requiredText("key")
		if err != nil {
			return nil, fmt.Errorf("%s row %d: %w", pgbConfigQuery, i+1, err)
		}
		v, _ := r.text("value")
		c[k] = v
	}
	return c, nil
}

func (c pgbConfig) int(key string) (int, error) {
	s, ok := c[key]
	if !ok {
		return 0, fmt.Errorf("%s: setting %q missing", pgbConfigQuery, key)
	}
	v, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		return 0, fmt.Errorf("%s: setting %q: %q is not an integer", pgbConfigQuery, key, s)
	}
	return v, nil
}

func (c pgbConfig) seconds(key string) (time.Duration, error) {
	s, ok := c[key]
	if !ok {
		return 0, fmt.Errorf("%s: setting %q missing", pgbConfigQuery, key)
	}
	d, err := parseSeconds(s)
	if err != nil {
		return 0, fmt.Errorf("%s: setting %q: %w", pgbConfigQuery, key, err)
	}
	return d, nil
}

// parseSeconds reads a PgBouncer time setting, shown in seconds with an optional fraction
// ("120", "0.1").
func parseSeconds(s string) (time.Duration, error) {
	f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || f < 0 || math.IsInf(f, 0) || math.IsNaN(f) {
		return 0, fmt.Errorf("%q is not a number of seconds", s)
	}
	return time.Duration(f * float64(time.Second)), nil
}

// parseVersion turns "PgBouncer 1.18.0" into "1.18.0".
func parseVersion(rows []consoleRow) string {
	if len(rows) == 0 {
		return ""
	}
	v, _ := rows[0].text("version")
	return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), "PgBouncer"))
}

// pgbGlobals are the [pgbouncer] settings the pool model needs.
type pgbGlobals struct {
	poolSize, reservePool int
	queryWaitTimeout      time.Duration
	serverLifetime        time.Duration
	checkQuery            bool
	poolMode              string
	authUser              string
}

func (c pgbConfig) globals() (pgbGlobals, error) {
	var g pgbGlobals
	var err error
	if g.poolSize, err = c.int("default_pool_size"); err != nil {
		return g, err
	}
	if g.reservePool, err = c.int("reserve_pool_size"); err != nil {
		return g, err
	}
	if g.queryWaitTimeout, err = c.seconds("query_wait_timeout"); err != nil {
		return g, err
	}
	if g.serverLifetime, err = c.seconds("server_lifetime"); err != nil {
		return g, err
	}
	g.checkQuery = strings.TrimSpace(c["server_check_query"]) != ""
	g.poolMode = c["pool_mode"]
	g.authUser = c["auth_user"]
	return g, nil
}

// buildPgBouncerPools maps one console sample onto the shared pool model (see
// PgBouncerTarget for the mapping).
func buildPgBouncerPools(target string, s *pgbSample) ([]PoolStats, error) {
	g, err := s.config.globals()
	if err != nil {
		return nil, err
	}
	dbs := make(map[string]*pgbDatabaseRow, len(s.databases))
	for i := range s.databases {
		dbs[s.databases[i].name] = &s.databases[i]
	}
	users := make(map[string]*pgbUserRow, len(s.users))
	for i := range s.users {
		users[s.users[i].name] = &s.users[i]
	}
	stats := attributeStats(s.pools, s.stats, dbs, g.authUser)

	poolsPerDB := map[string]int{}
	for _, p := range s.pools {
		poolsPerDB[p.database]++
	}
	out := make([]PoolStats, 0, len(s.pools))
	for _, p := range s.pools {
		if p.database == pgbAdminDatabase {
			continue
		}
		db, user := dbs[p.database], users[p.user]
		settings := poolcfg.Settings{
			PoolSize:    g.poolSize,
			MaxOverflow: g.reservePool,
			Timeout:     g.queryWaitTimeout,
			Recycle:     g.serverLifetime,
			PrePing:     g.checkQuery,
		}
		mode := g.poolMode
		if db != nil {
			if db.poolSize != nil {
				settings.PoolSize = *db.poolSize
			}
			if db.reservePool != nil {
				settings.MaxOverflow = *db.reservePool
			}
			if db.serverLifetime != nil {
				settings.Recycle = *db.serverLifetime
			}
			if db.poolMode != "" {
				mode = db.poolMode
			}
		}
		if user != nil {
			if user.poolSize != nil {
				settings.PoolSize = *user.poolSize
			}
			if user.reservePool != nil {
				settings.MaxOverflow = *user.reservePool
			}
			if user.poolMode != "" {
				mode = user.poolMode
			}
		}
		// SHOW POOLS has the pool's effective mode where it has the column.
		if p.poolMode != "" {
			mode = p.poolMode
		}

		open := 0
		states := make(map[string]int, len(p.servers))
		for state, n := range p.servers {
			open += n
			states[state] = n
		}
		pending := p.clWaiting
		ps := PoolStats{
			Target:             target,
			Pool:               p.database + "/" + p.user,
			Source:             SourcePgBouncer,
			Exact:              true,
			Configured:         true,
			Settings:           settings,
			Instances:          1,
			Open:               open,
			InUse:              p.servers[PgBouncerStateActive],
			Overflow:           max(0, open-settings.PoolSize),
			States:             states,
			Pending:            &pending,
			LongestWaitSeconds: p.maxWait,
		}
		if st := stats[p.database]; st != nil && st.user == p.user {
			ps.Checkouts = checkoutStats(st.row, mode)
		}
		// The auth_user's pool serves PgBouncer's auth_query, unless the application itself
		// logs in as that user (then it is the database's only pool).
		authUser := g.authUser
		if db != nil && db.authUser != "" {
			authUser = db.authUser
		}
		ps.Auxiliary = authUser != "" && p.user == authUser && poolsPerDB[p.database] > 1
		out = append(out, ps)
	}
	return out, nil
}

// attributedStats are a database's SHOW STATS counters and the one pool they belong to.
type attributedStats struct {
	user string
	row  pgbStatsRow
}

// attributeStats gives each database's counters to its application pool when that is
// unambiguous. SHOW STATS sums all pools of a database, so with two application users on
// one database the counters belong to neither and stay absent. The auth_user's pool, which
// PgBouncer opens to run auth_query for the logins of the others, is not an application
// pool unless it is the only one (the application then logs in as auth_user itself); its
// lookups add no transactions, only their wait to total_wait_time, which clients did wait.
func attributeStats(pools []pgbPoolRow, stats []pgbStatsRow, dbs map[string]*pgbDatabaseRow, globalAuthUser string) map[string]*attributedStats {
	usersByDB := map[string][]string{}
	for _, p := range pools {
		usersByDB[p.database] = append(usersByDB[p.database], p.user)
	}
	out := make(map[string]*attributedStats, len(stats))
	for _, st := range stats {
		users := usersByDB[st.database]
		if len(users) > 1 {
			authUser := globalAuthUser
			if db := dbs[st.database]; db != nil && db.authUser != "" {
				authUser = db.authUser
			}
			app := users[:0:0]
			for _, u := range users {
				if u != authUser {
					app = append(app, u)
				}
			}
			users = app
		}
		if len(users) == 1 {
			out[st.database] = &attributedStats{user: users[0], row: st}
		}
	}
	return out
}

// checkoutStats picks the counter that counts server assignments in this pool mode; nil
// when none does (session mode before PgBouncer 1.23).
func checkoutStats(st pgbStatsRow, mode string) *CheckoutStats {
	count := st.assignments
	if count == nil {
		switch mode {
		case "transaction":
			count = st.xacts
		case "statement":
			count = st.queries
		}
	}
	if count == nil || st.waitMicros == nil {
		return nil
	}
	return &CheckoutStats{
		Count:           *count,
		DurationSeconds: float64(*st.waitMicros) / 1e6,
	}
}
