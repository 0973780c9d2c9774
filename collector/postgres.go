package collector

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dbpool/dbpool_exporter/internal/metrics"
	"github.com/dbpool/dbpool_exporter/pgxpoolcollector"
	"github.com/dbpool/dbpool_exporter/poolcfg"
)

// ApplicationName marks the exporter's own sessions so that they are never counted.
const ApplicationName = "dbpool_exporter"

// PostgresOptions are the plain, validated settings of PostgreSQL targets.
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
	// Activity and Probe switch the activity and probe sources (without Activity, the
	// monitoring connection is still checked out and the server's settings read, as the
	// source "connection").
	Activity bool
	Probe    bool
	// MaxApplications caps the pools of backends that match no configured pool.
	MaxApplications int
	// AppCounters keeps the counters of the app pools from falling. It must outlive the
	// targets: main keeps one across reloads. Required when a target has app endpoints.
	AppCounters *AppCounters
	// AppDNSServer (host:port) answers the DNS queries for app endpoint names (dns+ URLs, and
	// the hosts of app URLs and file_sd targets); empty uses the system's resolver.
	AppDNSServer string
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

// NewPostgresTarget prepares a PostgreSQL target with its sources: activity (or connection),
// probe, pgxpool (its own monitoring pool) and, if apps is not empty, app. It does not
// connect until the first scrape, so that the exporter starts (and answers dbpool_up 0) while
// the database is down.
func NewPostgresTarget(name string, dsn poolcfg.DSN, pools []poolcfg.Pool, apps []poolcfg.App, opts PostgresOptions, logger *slog.Logger) (*Target, error) {
	cfg, err := pgxpool.ParseConfig(dsn.ConnString())
	if err != nil {
		return nil, fmt.Errorf("target %q: parsing DSN %s: %w", name, dsn, poolcfg.RedactError(err))
	}
	if opts.MaxConnections < 1 {
		return nil, fmt.Errorf("target %q: max connections %d must be at least 1", name, opts.MaxConnections)
	}
	if len(apps) > 0 && opts.AppCounters == nil {
		return nil, fmt.Errorf("target %q: app endpoints need the app counters that outlive the target", name)
	}
	cfg.MaxConns = int32(opts.MaxConnections)
	cfg.MinConns = 0
	cfg.MaxConnLifetime = opts.MaxConnLifetime
	cfg.MaxConnLifetimeJitter = opts.MaxConnLifetime / 10
	cfg.MaxConnIdleTime = opts.MaxConnLifetime
	cfg.HealthCheckPeriod = time.Minute
	// Ping every connection before a scrape uses it, and replace it if the ping fails: the
	// exporter's pre-ping. It is why a checked-out connection means the server answered, and
	// why the first scrape after a server restart already succeeds.
	cfg.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return true }
	rp := cfg.ConnConfig.RuntimeParams
	rp["application_name"] = ApplicationName
	ms := strconv.FormatInt(opts.StatementTimeout.Milliseconds(), 10)
	rp["statement_timeout"] = ms
	rp["lock_timeout"] = ms
	rp["idle_in_transaction_session_timeout"] = ms
	// On a cancelled scrape, ask the server to cancel the query at once, and give up on the
	// socket cancelGrace later in case the server does not answer (a stopped postmaster).
	cfg.ConnConfig.BuildContextWatcherHandler = func(c *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.CancelRequestContextWatcherHandler{Conn: c, DeadlineDelay: cancelGrace}
	}
	loginCfg := cfg.ConnConfig.Copy()
	loginCfg.RuntimeParams["application_name"] = ApplicationName + "_probe"
	for _, p := range pools {
		if p.Name == metrics.OwnPool {
			return nil, fmt.Errorf("target %q: pool name %q is reserved for the exporter's own connections", name, metrics.OwnPool)
		}
	}
	known := map[string]bool{}
	for _, p := range pools {
		known[p.Name] = true
	}
	for _, a := range apps {
		if !known[a.Pool] {
			return nil, fmt.Errorf("target %q: app %q reports pool %q, which is not on this target", name, a.Name, a.Pool)
		}
	}
	tracer := pgxpoolcollector.InstrumentConfig(cfg)
	db, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		return nil, fmt.Errorf("target %q: %w", name, poolcfg.RedactError(err))
	}

	sources := []Source{
		&activitySource{target: name, db: db, pools: pools, opts: opts, logger: logger},
	}
	if opts.Probe {
		sources = append(sources, &probeSource{target: name, cfg: loginCfg})
	}
	sources = append(sources, &ownPoolSource{pgxpoolcollector.New(db, tracer, pgxpoolcollector.Options{Target: name, Pool: metrics.OwnPool})})
	closeIdleHTTP := func() {}
	if len(apps) > 0 {
		app, err := newAppSource(name, apps, newAppResolver(opts.AppDNSServer), opts.AppCounters, logger)
		if err != nil {
			db.Close()
			return nil, err
		}
		sources = append(sources, app)
		closeIdleHTTP = app.closeIdle
	}
	release := func() {
		db.Reset() // a connection in use is closed when it is returned
		closeIdleHTTP()
	}
	closeAll := func() {
		db.Close()
		closeIdleHTTP()
	}
	return newTarget(name, sources, release, closeAll, logger), nil
}

// ownPoolSource exports the exporter's own monitoring pool like any pgxpool (pool
// dbpool_exporter, source pgxpool), so that the exporter's footprint on the server shows
// too. It is sampled while the other sources run: the connection in use is usually the
// activity source's own. Its series are not pool samples for the pool history: it is no
// application's pool.
type ownPoolSource struct {
	pool *pgxpoolcollector.Collector
}

func (*ownPoolSource) Name() string { return metrics.CollectorPgxpool }

func (s *ownPoolSource) Scrape(context.Context) (Scraped, error) {
	ch := make(chan prometheus.Metric)
	go func() {
		s.pool.Collect(ch)
		close(ch)
	}()
	var out Scraped
	for m := range ch {
		out.Metrics = append(out.Metrics, m)
	}
	return out, nil
}
