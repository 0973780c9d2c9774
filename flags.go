package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/alecthomas/kingpin/v2"

	"github.com/dbpool/dbpool_exporter/collector"
	"github.com/dbpool/dbpool_exporter/internal/health"
	"github.com/dbpool/dbpool_exporter/poolcfg"
)

// flags are the daemon's settings; main turns them into plain values for the library packages.
type flags struct {
	metricsPath   string
	configFile    string
	configCheck   bool
	envFile       string
	dsn           string
	targetName    string
	maxConns      int
	timeoutOffset time.Duration
	maxTimeout    time.Duration

	poolName     string
	appName      string
	appNameRegex string
	user         string
	database     string
	instances    int

	activity        bool
	probe           bool
	pgbouncer       bool
	maxApplications int
	pgbouncerDSN    string
	appURLs         []string
	appDNSServer    string

	healthWindow         time.Duration
	healthSampleInterval time.Duration

	scrapeTargets      bool
	targetIdleTimeout  time.Duration
	targetMaxConnected int

	// deprecated lists the deprecated flags given, in the order given, for one warning each.
	deprecated []string
}

func addFlags(app *kingpin.Application) *flags {
	f := &flags{}
	app.Flag("web.telemetry-path", "Path under which to expose metrics.").Default("/metrics").StringVar(&f.metricsPath)
	app.Flag("config.file", "YAML file describing targets and pools (see docs/configuration.md). Without it, one target comes from --pg.dsn and one pool from the DB_* settings.").PlaceHolder("FILE").StringVar(&f.configFile)
	app.Flag("config.check", "Validate the configuration, print a summary and exit (0 valid, 1 invalid).").BoolVar(&f.configCheck)
	app.Flag("pool.env-file", "The application's .env file with DB_POOL_SIZE, DB_MAX_OVERFLOW, DB_POOL_TIMEOUT, DB_POOL_RECYCLE, DB_POOL_PRE_PING, DB_ECHO. Variables in the environment win over the file.").PlaceHolder("FILE").StringVar(&f.envFile)
	app.Flag("pg.dsn", "PostgreSQL connection string of the watched server (URL or key=value).").Envar("DATA_SOURCE_NAME").PlaceHolder("DSN").StringVar(&f.dsn)
	app.Flag("pg.target-name", "Value of the target label for --pg.dsn (default: host:port/database).").PlaceHolder("NAME").StringVar(&f.targetName)
	app.Flag("pg.max-connections", "Most long-lived monitoring connections per PostgreSQL target (the login probe opens one more, briefly).").Default("1").IntVar(&f.maxConns)
	app.Flag("scrape.timeout-offset", "Subtracted from Prometheus' X-Prometheus-Scrape-Timeout-Seconds to leave time to answer.").Default("500ms").DurationVar(&f.timeoutOffset)
	app.Flag("scrape.max-timeout", "Longest a scrape may take, and the timeout when Prometheus sends none; also the server-side statement_timeout of monitoring queries.").Default("10s").DurationVar(&f.maxTimeout)
	app.Flag("pool.name", "Pool label of the pool described by the DB_* settings (without --config.file).").Default("default").StringVar(&f.poolName)
	app.Flag("pool.application-name", "The application's backends have exactly this application_name.").PlaceHolder("NAME").StringVar(&f.appName)
	app.Flag("pool.application-name-regex", "The application's backends' application_name matches this RE2 (fully anchored); a named group (?P<instance>...) tells instances apart.").PlaceHolder("REGEX").StringVar(&f.appNameRegex)
	app.Flag("pool.user", "The application's backends log in as this role.").PlaceHolder("ROLE").StringVar(&f.user)
	app.Flag("pool.database", "The application's backends use this database.").PlaceHolder("DB").StringVar(&f.database)
	app.Flag("pool.instances", "Processes (replicas x workers) that each hold one such pool.").Default("1").IntVar(&f.instances)
	app.Flag("collector.activity", "Sample pg_stat_activity and group backends into pools.").Default("true").BoolVar(&f.activity)
	app.Flag("collector.probe", "Time a fresh login on every scrape.").Default("true").BoolVar(&f.probe)
	app.Flag("collector.pgbouncer", "Read PgBouncer admin consoles (--pgbouncer.dsn or pgbouncers: in --config.file).").Default("true").BoolVar(&f.pgbouncer)
	app.Flag("pgbouncer.dsn", "Connection string of a PgBouncer admin console (database pgbouncer, a user in stats_users or admin_users).").Envar("PGBOUNCER_DSN").PlaceHolder("DSN").StringVar(&f.pgbouncerDSN)
	app.Flag("app.url", "URL of an application endpoint that serves its pool's own statistics as dbpool-stats JSON (integrations/python); repeatable, one per endpoint, all reporting the pool of the DB_* settings (without --config.file; use apps: in the file otherwise). dns+http://name:port/path (or dns+https) reads every address of the name, looked up on each scrape. Basic auth: http://user:password@host:port/path.").PlaceHolder("URL").StringsVar(&f.appURLs)
	app.Flag("app.dns-server", "DNS server (host:port, port 53 if left out) for the names of app endpoints (dns+ URLs, URL hosts, file_sd targets), e.g. the cluster DNS; default: the system's resolver.").PlaceHolder("HOST:PORT").StringVar(&f.appDNSServer)
	app.Flag("collector.activity.max-applications", "Most application_name groups for backends that match no pool; the rest are reported as pool \"application_name:other\".").Default("20").IntVar(&f.maxApplications)
	app.Flag("health.window", "How far back the pool history behind /api/v1/, /pools and dbpool_recommended_* reaches; pools not seen for this long are forgotten.").Default("1h").DurationVar(&f.healthWindow)
	app.Flag("health.sample-interval", "How often the daemon samples the pools itself, besides Prometheus' scrapes, for the pool history; 0 turns the sampler off.").Default("15s").DurationVar(&f.healthSampleInterval)
	app.Flag("metrics.scrape-targets", "Scrape every configured target on each request to the telemetry path. With --no-metrics.scrape-targets the telemetry path serves only the exporter's own metrics, and Prometheus scrapes each target through /probe?target=NAME (see docs/configuration.md, Multi-target scraping).").Default("true").BoolVar(&f.scrapeTargets)
	app.Flag("target.idle-timeout", "Close the monitoring connections of a target that has not been scraped for this long, through the telemetry path or /probe; its next scrape reconnects. 0 keeps them open.").Default("5m").DurationVar(&f.targetIdleTimeout)
	app.Flag("target.max-connected", "Most targets holding monitoring connections at once when /probe?target=NAME connects one: the least recently scraped target is disconnected first. 0 is no cap. A scrape of all targets on the telemetry path (--metrics.scrape-targets) is not capped.").Default("50").IntVar(&f.targetMaxConnected)
	f.deprecatedAlias(app, "probe.idle-timeout", "target.idle-timeout").DurationVar(&f.targetIdleTimeout)
	f.deprecatedAlias(app, "probe.max-connected-targets", "target.max-connected").IntVar(&f.targetMaxConnected)
	return f
}

// deprecatedAlias is a hidden flag under a former name that sets the same value as its
// successor and is reported by warnDeprecated.
func (f *flags) deprecatedAlias(app *kingpin.Application, old, successor string) *kingpin.FlagClause {
	return app.Flag(old, "Deprecated: use --"+successor+".").Hidden().PreAction(func(*kingpin.ParseContext) error {
		f.deprecated = append(f.deprecated, "--"+old+" is deprecated: use --"+successor)
		return nil
	})
}

// warnDeprecated logs one warning for each deprecated flag given.
func (f *flags) warnDeprecated(logger *slog.Logger) {
	for _, msg := range f.deprecated {
		logger.Warn(msg)
	}
}

// loadConfig assembles the configuration from the DB_* settings, the .env file, the flags
// and the config file, and validates it.
func (f *flags) loadConfig(lookupEnv func(string) (string, bool)) (*poolcfg.Config, error) {
	if f.maxConns < 1 {
		return nil, fmt.Errorf("--pg.max-connections=%d: must be at least 1", f.maxConns)
	}
	// Below 100ms every scrape would fail, and below 1ms the server-side statement_timeout,
	// taken from this flag, would round to 0, which PostgreSQL reads as "no timeout".
	if f.maxTimeout < 100*time.Millisecond {
		return nil, fmt.Errorf("--scrape.max-timeout=%s: must be at least 100ms", f.maxTimeout)
	}
	if err := checkTelemetryPath(f.metricsPath); err != nil {
		return nil, err
	}
	if f.maxApplications < 1 {
		return nil, fmt.Errorf("--collector.activity.max-applications=%d: must be at least 1", f.maxApplications)
	}
	if f.healthWindow <= 0 {
		return nil, fmt.Errorf("--health.window=%s: must be positive", f.healthWindow)
	}
	// Every sample logs in once for the probe: a typo such as 1ms must not flood the server.
	if f.healthSampleInterval != 0 && f.healthSampleInterval < time.Second {
		return nil, fmt.Errorf("--health.sample-interval=%s: must be 0 (off) or at least 1s", f.healthSampleInterval)
	}
	if f.targetIdleTimeout != 0 && f.targetIdleTimeout < time.Second {
		return nil, fmt.Errorf("--target.idle-timeout=%s: must be 0 (never) or at least 1s", f.targetIdleTimeout)
	}
	if f.targetMaxConnected < 0 {
		return nil, fmt.Errorf("--target.max-connected=%d: must be 0 (no cap) or more", f.targetMaxConnected)
	}
	if f.appDNSServer != "" {
		addr, err := dnsServerAddr(f.appDNSServer)
		if err != nil {
			return nil, fmt.Errorf("--app.dns-server=%q: %w", f.appDNSServer, err)
		}
		f.appDNSServer = addr
	}
	var file map[string]poolcfg.EnvValue
	if f.envFile != "" {
		var err error
		if file, err = poolcfg.LoadEnvFile(f.envFile); err != nil {
			return nil, err
		}
	}
	settings, err := poolcfg.SettingsFromEnv(poolcfg.NewEnv(file, lookupEnv), poolcfg.DefaultSettings())
	if err != nil {
		return nil, err
	}
	if f.configFile != "" {
		data, err := os.ReadFile(f.configFile)
		if err != nil {
			return nil, fmt.Errorf("--config.file: %w", err)
		}
		if len(f.appURLs) > 0 {
			return nil, fmt.Errorf("--app.url: with --config.file, list app endpoints under apps: in %s", f.configFile)
		}
		return poolcfg.ParseWithDefaults(data, f.configFile, settings)
	}
	if f.dsn == "" && f.pgbouncerDSN == "" {
		return nil, fmt.Errorf("no target: set --pg.dsn (or DATA_SOURCE_NAME), --pgbouncer.dsn, or --config.file")
	}
	cfg := &poolcfg.Config{}
	if f.pgbouncerDSN != "" {
		dsn, err := poolcfg.ParseDSN(f.pgbouncerDSN)
		if err != nil {
			return nil, fmt.Errorf("--pgbouncer.dsn: %w", err)
		}
		cfg.PgBouncers = []poolcfg.PgBouncer{{Name: "pgbouncer:" + dsn.DefaultName(), DSN: dsn}}
	}
	if f.dsn == "" {
		if len(f.appURLs) > 0 {
			return nil, fmt.Errorf("--app.url: an app reports a pool on a PostgreSQL server: set --pg.dsn too")
		}
		return cfg, cfg.Validate()
	}
	dsn, err := poolcfg.ParseDSN(f.dsn)
	if err != nil {
		return nil, fmt.Errorf("--pg.dsn: %w", err)
	}
	name := f.targetName
	if name == "" {
		name = dsn.DefaultName()
	}
	match := poolcfg.Matcher{ApplicationName: f.appName, User: f.user, Database: f.database}
	if f.appNameRegex != "" {
		re, err := poolcfg.CompileApplicationNameRegex(f.appNameRegex)
		if err != nil {
			return nil, fmt.Errorf("--pool.application-name-regex=%q: %w", f.appNameRegex, err)
		}
		match.ApplicationNameRegex = re
	}
	cfg.Targets = []poolcfg.Target{{Name: name, DSN: dsn}}
	cfg.Pools = []poolcfg.Pool{{Name: f.poolName, Target: name, Match: match, Settings: settings, Instances: f.instances}}
	for _, raw := range f.appURLs {
		u, err := poolcfg.ParseAppURL(raw)
		if err != nil {
			return nil, fmt.Errorf("--app.url: %w", err) // the value may hold a password: not quoted
		}
		cfg.Apps = append(cfg.Apps, poolcfg.App{Name: u.DefaultName(), URL: u, Pool: f.poolName})
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// lasting is what outlives the exporters that reloads build: main keeps it, and every
// exporter it builds uses it.
type lasting struct {
	// observer receives every scrape's result: the pool history of internal/health.
	observer func(collector.Result)
	// fleet counts the targets' disconnects (the daemon's; nil elsewhere).
	fleet *collector.FleetMetrics
	// appCounters keeps the app pools' counters from falling across reloads.
	appCounters *collector.AppCounters
}

// buildExporter creates one collector target per configured server.
func (f *flags) buildExporter(cfg *poolcfg.Config, logger *slog.Logger, keep lasting) (*collector.Exporter, error) {
	var targets []*collector.Target
	for _, name := range targetNames(cfg, f.pgbouncer) {
		t, err := f.openTarget(cfg, name, keep.appCounters, logger)
		if err != nil {
			for _, done := range targets {
				done.Close()
			}
			return nil, err
		}
		targets = append(targets, t)
	}
	return collector.NewExporter(targets, collector.ExporterOptions{
		Observer:            keep.observer,
		IdleTimeout:         f.targetIdleTimeout,
		MaxConnectedTargets: f.targetMaxConnected,
		Fleet:               keep.fleet,
		Logger:              logger,
	}), nil
}

// warnUncapped says once per (re)load when /metrics connects more targets than the cap
// that /probe keeps: a fleet is meant to be scraped one target at a time.
func (f *flags) warnUncapped(cfg *poolcfg.Config, logger *slog.Logger) {
	n := len(targetNames(cfg, f.pgbouncer))
	if f.scrapeTargets && f.targetMaxConnected > 0 && n > f.targetMaxConnected {
		logger.Warn("every scrape of the telemetry path connects all targets, more than --target.max-connected; "+
			"for a fleet, set --no-metrics.scrape-targets and scrape each target through /probe?target=NAME",
			"targets", n, "max_connected", f.targetMaxConnected)
	}
}

// targetNames lists the configured targets the exporter watches, PostgreSQL first.
func targetNames(cfg *poolcfg.Config, pgbouncer bool) []string {
	var names []string
	for _, t := range cfg.Targets {
		names = append(names, t.Name)
	}
	if pgbouncer {
		for _, b := range cfg.PgBouncers {
			names = append(names, b.Name)
		}
	}
	return names
}

// openTarget creates the collector target of the configured server name; it does not
// connect.
func (f *flags) openTarget(cfg *poolcfg.Config, name string, appCounters *collector.AppCounters, logger *slog.Logger) (*collector.Target, error) {
	for _, t := range cfg.Targets {
		if t.Name == name {
			opts := collector.DefaultPostgresOptions()
			opts.MaxConnections = f.maxConns
			opts.StatementTimeout = f.maxTimeout
			opts.Activity = f.activity
			opts.Probe = f.probe
			opts.MaxApplications = f.maxApplications
			opts.AppCounters = appCounters
			opts.AppDNSServer = f.appDNSServer
			return collector.NewPostgresTarget(t.Name, t.DSN, cfg.PoolsForTarget(t.Name), cfg.AppsForTarget(t.Name), opts, logger)
		}
	}
	for _, b := range cfg.PgBouncers {
		if b.Name == name {
			return collector.NewPgBouncerTarget(b.Name, b.DSN, collector.DefaultPgBouncerOptions(), logger)
		}
	}
	return nil, fmt.Errorf("target %q: not configured", name)
}

// landingItem is one line of the landing page's target list; target is the name for a
// /probe?target=NAME link, "" for an app endpoint.
type landingItem struct{ text, target string }

// cfgTargets lists the targets for the landing page, passwords redacted.
func cfgTargets(cfg *poolcfg.Config) []landingItem {
	var out []landingItem
	auth := func(module string) string {
		if module == "" {
			return ""
		}
		return ", auth module " + module
	}
	for _, t := range cfg.Targets {
		out = append(out, landingItem{t.Name + " (" + t.DSN.String() + auth(t.AuthModule) + ")", t.Name})
	}
	for _, b := range cfg.PgBouncers {
		out = append(out, landingItem{b.Name + " (pgbouncer " + b.DSN.String() + auth(b.AuthModule) + ")", b.Name})
	}
	for _, a := range cfg.Apps {
		out = append(out, landingItem{"app " + a.Name + " (pool " + a.Pool + ", " + a.Describe() + ")", ""})
	}
	return out
}

// dnsServerAddr is the host:port of a DNS server given as host:port or host (port 53).
func dnsServerAddr(s string) (string, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		host, port = strings.Trim(s, "[]"), "53"
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", fmt.Errorf("port %q is not 1-65535", port)
	}
	if host == "" || strings.ContainsAny(host, "/@ ") {
		return "", errors.New("not host:port")
	}
	return net.JoinHostPort(host, port), nil
}

// reservedPaths are served by the daemon itself; the metrics path must not shadow them.
var reservedPaths = []string{"/-/reload", "/-/healthy", multiTargetPath, health.PagePath, health.APIPrefix}

// checkTelemetryPath rejects a --web.telemetry-path that net/http would refuse (and panic on)
// or that would shadow one of the daemon's own pages.
func checkTelemetryPath(path string) error {
	if !strings.HasPrefix(path, "/") {
		return fmt.Errorf("--web.telemetry-path=%q: must start with /", path)
	}
	for _, r := range reservedPaths {
		if path == r || strings.TrimSuffix(path, "/") == strings.TrimSuffix(r, "/") || strings.HasPrefix(path, strings.TrimSuffix(r, "/")+"/") {
			return fmt.Errorf("--web.telemetry-path=%q: %s is served by the exporter itself", path, r)
		}
	}
	return nil
}
