package collector

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dbpool/dbpool_exporter/poolcfg"
)

// ApplicationName marks the exporter's own sessions so that they are never counted.
const ApplicationName = "dbpool_exporter"

// PostgresOptions are the plain, validated settings of a PostgreSQL target.
type PostgresOptions struct {
	// MaxConnections caps the exporter's long-lived monitoring connections to this server.
	MaxConnections int
	// StatementTimeout bounds every monitoring query on the server side too, so that a
	// query whose scrape was abandoned does not keep running.
	StatementTimeout time.Duration
	// MaxConnLifetime recycles the monitoring connections.
	MaxConnLifetime time.Duration
	// SettingsRefresh is how often max_connections and friends are re-read.
	SettingsRefresh time.Duration
	// Activity and Probe switch the two collectors of a PostgreSQL target.
	Activity bool
	Probe    bool
	// MaxApplications caps the series of backends that match no configured pool.
	MaxApplications int
}

// DefaultPostgresOptions are the flags' defaults.
func DefaultPostgresOptions() PostgresOptions {
	return PostgresOptions{
		MaxConnections:   1,
		StatementTimeout: 10 * time.Second,
		MaxConnLifetime:  30 * time.Minute,
		SettingsRefresh:  5 * time.Minute,
		Activity:         true,
		Probe:            true,
		MaxApplications:  20,
	}
}

// serverSettings are read on connect and refreshed rarely: they change only with a restart.
type serverSettings struct {
	maxConnections      int
	reservedConnections int
	version             string
	canSeeAllSessions   bool
	readAt              time.Time
}

const serverSettingsQuery = `SELECT
  current_setting('max_connections')::int,
  current_setting('superuser_reserved_connections')::int
    + coalesce(nullif(current_setting('reserved_connections', true), '')::int, 0),
  current_setting('server_version'),
  pg_has_role(current_user, 'pg_read_all_stats', 'USAGE')
    OR coalesce((SELECT rolsuper FROM pg_roles WHERE rolname = current_user), false)`

// PostgresTarget watches one PostgreSQL server through pg_stat_activity and a login probe.
type PostgresTarget struct {
	targetBase
	opts    PostgresOptions
	pools   []poolcfg.Pool
	db      *pgxpool.Pool
	connCfg *pgx.ConnConfig

	server   *serverDescs
	probe    *probeDescs
	poolDesc *poolDescs

	mu               sync.Mutex
	settings         *serverSettings
	warnedRestricted bool

	ownPool *PgxpoolCollector

	apps        []*appEndpoint
	appClient   *http.Client
	appCounters appCounters
}

// NewPostgresTarget prepares a target; it does not connect until the first scrape, so that
// the exporter starts (and answers dbpool_up 0) while the database is down.
func NewPostgresTarget(name string, dsn poolcfg.DSN, pools []poolcfg.Pool, opts PostgresOptions, logger *slog.Logger) (*PostgresTarget, error) {
	cfg, err := pgxpool.ParseConfig(dsn.ConnString())
	if err != nil {
		return nil, fmt.Errorf("target %q: parsing DSN %s: %w", name, dsn, poolcfg.RedactError(err))
	}
	if opts.MaxConnections < 1 {
		return nil, fmt.Errorf("target %q: max connections %d must be at least 1", name, opts.MaxConnections)
	}
	cfg.MaxConns = int32(opts.MaxConnections)
	cfg.MinConns = 0
	cfg.MaxConnLifetime = opts.MaxConnLifetime
	cfg.MaxConnLifetimeJitter = opts.MaxConnLifetime / 10
	cfg.MaxConnIdleTime = opts.MaxConnLifetime
	cfg.HealthCheckPeriod = time.Minute
	cfg.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return true }
	rp := cfg.ConnConfig.RuntimeParams
	rp["application_name"] = ApplicationName
	ms := strconv.FormatInt(opts.StatementTimeout.Milliseconds(), 10)
	rp["statement_timeout"] = ms
	rp["lock_timeout"] = ms
	rp["idle_in_transaction_session_timeout"] = ms
	// On a cancelled scrape, ask the server to cancel the query at once, and give up on the
	// socket shortly after in case the server does not answer (a stopped postmaster).
	cfg.ConnConfig.BuildContextWatcherHandler = func(c *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.CancelRequestContextWatcherHandler{Conn: c, DeadlineDelay: 200 * time.Millisecond}
	}
	probeCfg := cfg.ConnConfig.Copy()
	probeCfg.RuntimeParams["application_name"] = ApplicationName + "_probe"
	for _, p := range pools {
		if p.Name == OwnPoolName {
			return nil, fmt.Errorf("target %q: pool name %q is reserved for the exporter's own connections", name, OwnPoolName)
		}
	}
	tracer := InstrumentConfig(cfg)

	db, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		return nil, fmt.Errorf("target %q: %w", name, poolcfg.RedactError(err))
	}
	return &PostgresTarget{
		targetBase: newTargetBase(name, logger),
		opts:       opts,
		pools:      pools,
		db:         db,
		connCfg:    probeCfg,
		server:     newServerDescs(),
		probe:      newProbeDescs(),
		poolDesc:   newPoolDescs(),
		ownPool:    NewPgxpoolCollector(db, tracer, PgxpoolOptions{Target: name, Pool: OwnPoolName}),
	}, nil
}

// OwnPoolName is the pool label of the exporter's own monitoring connections, exported like
// any pgxpool so that the exporter's footprint on the server is visible too.
const OwnPoolName = ApplicationName

// Close closes the monitoring connections.
func (t *PostgresTarget) Close() {
	t.db.Close()
	if t.appClient != nil {
		t.appClient.CloseIdleConnections()
	}
}

// ReleaseConnections closes the monitoring connections (and the app endpoints' idle HTTP
// connections) but keeps the target usable: its next scrape connects again. A connection
// in use is closed when it is returned. The exporter calls it for idle targets.
func (t *PostgresTarget) ReleaseConnections() {
	t.db.Reset()
	if t.appClient != nil {
		t.appClient.CloseIdleConnections()
	}
}

// WatchApps adds the application endpoints that report this target's pools themselves
// (dbpool-stats JSON): each is read on every scrape, in parallel with the server, as the
// collector app:<name>. Call it before the first scrape.
func (t *PostgresTarget) WatchApps(apps []poolcfg.App) error {
	known := map[string]bool{}
	for _, p := range t.pools {
		known[p.Name] = true
	}
	if t.appClient == nil && len(apps) > 0 {
		t.appClient = newAppClient()
	}
	for _, a := range apps {
		if !known[a.Pool] {
			return fmt.Errorf("target %q: app %q reports pool %q, which is not on this target", t.name, a.Name, a.Pool)
		}
		t.apps = append(t.apps, &appEndpoint{name: a.Name, url: a.URL, pool: a.Pool, appPool: a.AppPool, target: t.name, client: t.appClient})
	}
	return nil
}

// Pool is the exporter's own monitoring pool, exported like any other pgxpool.
func (t *PostgresTarget) Pool() *pgxpool.Pool { return t.db }

// Describe sends every descriptor a PostgreSQL target can emit.
func (t *PostgresTarget) Describe(ch chan<- *prometheus.Desc) {
	t.health.describe(ch)
	t.server.describe(ch)
	t.probe.describe(ch)
	t.poolDesc.describe(ch)
}

// Scrape collects the target once; concurrent scrapes share one collection.
func (t *PostgresTarget) Scrape(ctx context.Context) Result {
	return t.scrapeShared(ctx, t.jobs, t.finish)
}

func (t *PostgresTarget) jobs(reached *atomic.Bool) []job {
	server := func(ctx context.Context) ([]prometheus.Metric, []PoolStats, error) {
		return t.collectServer(ctx, reached)
	}
	jobs := []job{{name: "activity", run: server}}
	if !t.opts.Activity {
		jobs[0].name = "connection"
	}
	if t.opts.Probe {
		jobs = append(jobs, job{name: "probe", run: t.collectProbe, timedOut: t.probeTimedOut})
	}
	for _, a := range t.apps {
		jobs = append(jobs, job{name: appCollectorPrefix + a.name, run: a.collect})
	}
	return jobs
}

// finish adds what does not need the server: the exporter's own pool (as metrics only: it
// is not an application pool to advise on) and the limits last read from the server.
func (t *PostgresTarget) finish(res *Result) {
	if len(t.apps) > 0 {
		var ms []prometheus.Metric
		res.Pools, ms = t.appCounters.mergeAppPools(res.Pools, t.poolDesc, time.Now())
		res.Metrics = append(res.Metrics, ms...)
	}
	for _, own := range t.ownPool.Samples() {
		res.Metrics = t.poolDesc.appendMetrics(res.Metrics, &own)
	}
	t.mu.Lock()
	if s := t.settings; s != nil {
		res.Servers = []ServerStats{{Target: t.name, MaxConnections: s.maxConnections, ReservedConnections: s.reservedConnections}}
	}
	t.mu.Unlock()
}

// acquire checks out a monitoring connection. pgxpool pings it first (ShouldPing is always
// true) and replaces it if the ping fails: that is the exporter's pre-ping, why a checked-out
// connection means the server answered, and why the first scrape after a server restart
// already succeeds.
func (t *PostgresTarget) acquire(ctx context.Context) (*pgxpool.Conn, time.Duration, error) {
	start := time.Now()
	conn, err := t.db.Acquire(ctx)
	return conn, time.Since(start), err
}

// collectServer is the job that uses the monitoring connection: server settings, the
// checkout probe and, when enabled, the activity sample.
func (t *PostgresTarget) collectServer(ctx context.Context, reached *atomic.Bool) ([]prometheus.Metric, []PoolStats, error) {
	conn, checkout, err := t.acquire(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("monitoring connection: %w", err)
	}
	defer conn.Release()
	reached.Store(true)
	ms := []prometheus.Metric{prometheus.MustNewConstMetric(t.probe.checkoutSeconds, prometheus.GaugeValue, checkout.Seconds(), t.name)}

	settings, err := t.serverSettings(ctx, conn)
	if err != nil {
		return ms, nil, err
	}
	ms = append(ms, t.server.settingsMetrics(t.name, settings)...)
	if !t.opts.Activity {
		return ms, nil, nil
	}
	rows, err := queryActivity(ctx, conn)
	if err != nil {
		return ms, nil, err
	}
	sample := groupActivity(t.name, t.pools, rows, t.opts.MaxApplications)
	if sample.restricted && !settings.canSeeAllSessions {
		t.warnRestrictedOnce()
	}
	ms = append(ms, t.server.activityMetrics(t.name, sample)...)
	for i := range sample.pools {
		ms = t.poolDesc.appendMetrics(ms, &sample.pools[i])
	}
	return ms, sample.pools, nil
}

func (t *PostgresTarget) serverSettings(ctx context.Context, conn *pgxpool.Conn) (*serverSettings, error) {
	t.mu.Lock()
	cached := t.settings
	t.mu.Unlock()
	if cached != nil && time.Since(cached.readAt) < t.opts.SettingsRefresh {
		return cached, nil
	}
	s := &serverSettings{readAt: time.Now()}
	err := conn.QueryRow(ctx, serverSettingsQuery).Scan(&s.maxConnections, &s.reservedConnections, &s.version, &s.canSeeAllSessions)
	if err != nil {
		return nil, fmt.Errorf("reading server settings: %w", err)
	}
	t.mu.Lock()
	t.settings = s
	t.mu.Unlock()
	return s, nil
}

func (t *PostgresTarget) warnRestrictedOnce() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.warnedRestricted {
		return
	}
	t.warnedRestricted = true
	t.logger.Warn("the monitoring role cannot see the state of other roles' sessions; they are counted as state \"unknown\" and pool in-use counts are too low",
		"target", t.name, "fix", "GRANT pg_monitor TO <monitoring role>")
}
