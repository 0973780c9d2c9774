// Command dbpool-demo is tooling, not product. It runs dbpool_exporter end to end on this
// machine: a throwaway PostgreSQL, the example FastAPI service (examples/fastapi) under load
// from the demo's clients, a Go service on pgxpool behind PgBouncer, the exporter, and a
// live summary of what the exporter sees next to the applications' own true pool numbers.
// Ctrl-C stops everything and removes the cluster. `make demo` runs it.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/alecthomas/kingpin/v2"

	"github.com/dbpool/dbpool_exporter/tools/childproc"
	"github.com/dbpool/dbpool_exporter/tools/pgtest"
)

// exporterConfig watches the server and the PgBouncer in front of it. DSNs come from the
// environment so that no password sits in a file; pool settings the file leaves out come from
// the application's .env (--pool.env-file).
const exporterConfig = `targets:
  - name: demo
    dsn_env: DEMO_PG_DSN
pgbouncers:
  - name: pgbouncer
    dsn_env: DEMO_PGBOUNCER_DSN
pools:
  - name: %[1]s
    target: demo
    match:
      %[5]s
    instances: %[2]d
  - name: %[3]s
    target: demo
    match:
      application_name_regex: '%[3]s-(?P<instance>[0-9]+)'
    pool_size: 8
    max_overflow: 0
    timeout: 2s
%[4]s`

// appsConfig points the exporter at the Python service's own report of its pool: one URL,
// which any of its workers answers for all of them.
const appsConfig = `apps:
  - name: %s
    url: %s
    pool: %s
`

const workerName = "worker"

const (
	monitorRole = "dbpool_monitor"
	appRole     = "app"
	poolName    = "api"
	appName     = "api"
	// The api application's .env: development sizes, a bit larger.
	appEnv = `# Database connection pool configuration
DB_POOL_SIZE=5
DB_MAX_OVERFLOW=10
DB_POOL_TIMEOUT=5
DB_POOL_RECYCLE=3600
DB_POOL_PRE_PING=true
DB_ECHO=false
`
)

func main() {
	os.Exit(run())
}

type options struct {
	exporter, poolsim string
	python            string
	apiServer         string
	listen            string
	duration          time.Duration
	interval          time.Duration
	instances         int
	rate              float64
	queryTime         time.Duration
}

func run() int {
	var o options
	app := kingpin.New("dbpool-demo", "Runs a throwaway PostgreSQL, pooled applications (the example FastAPI service, a Go service on pgxpool) and dbpool_exporter, and prints what the exporter sees.")
	app.Flag("exporter", "Path to the dbpool_exporter binary (default: build it).").StringVar(&o.exporter)
	app.Flag("poolsim", "Path to the poolsim binary (default: build it).").StringVar(&o.poolsim)
	app.Flag("python", "Python with SQLAlchemy, asyncpg, FastAPI, uvicorn and gunicorn that runs the api pools as the example FastAPI service (examples/fastapi), which reports its own pool through integrations/python; default: the SQLAlchemy 2.0 environment that make deps builds (.venv/sa20). \"none\", or a Python without them, simulates them with poolsim instead.").StringVar(&o.python)
	app.Flag("api-server", "Server of the FastAPI service: uvicorn (--workers) or gunicorn (uvicorn workers, each replaced after about 2000 requests).").Default("uvicorn").EnumVar(&o.apiServer, "uvicorn", "gunicorn")
	app.Flag("listen", "Address of the exporter's web server.").Default("127.0.0.1:9930").StringVar(&o.listen)
	app.Flag("duration", "Stop after this long; 0 runs until Ctrl-C.").Default("0").DurationVar(&o.duration)
	app.Flag("interval", "How often to print the summary.").Default("3s").DurationVar(&o.interval)
	app.Flag("instances", "Worker processes of the api application (each its own pool).").Default("2").IntVar(&o.instances)
	app.Flag("rate", "Requests per second per worker of the api application.").Default("40").Float64Var(&o.rate)
	app.Flag("query-time", "Database time per request.").Default("80ms").DurationVar(&o.queryTime)
	kingpin.MustParse(app.Parse(os.Args[1:]))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if o.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.duration)
		defer cancel()
	}
	if err := demo(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	return 0
}

func demo(ctx context.Context, o options) error {
	work, err := os.MkdirTemp("", "dbpool-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	say("starting a throwaway PostgreSQL cluster")
	pg, err := pgtest.Start(pgtest.Options{MaxConnections: 100})
	if err != nil {
		return err
	}
	defer func() {
		say("stopping PostgreSQL and removing its data directory")
		_ = pg.Close()
	}()
	monitorPW, appPW := randomPassword(), randomPassword()
	if err := pg.CreateRole(monitorRole, monitorPW, false, "pg_monitor"); err != nil {
		return err
	}
	if err := pg.CreateRole(appRole, appPW, false); err != nil {
		return err
	}

	if o.exporter == "" {
		if o.exporter, err = build(work, ".", "dbpool_exporter"); err != nil {
			return err
		}
	}
	if o.poolsim == "" {
		if o.poolsim, err = build(work, "./tools/cmd/poolsim", "poolsim"); err != nil {
			return err
		}
	}
	say("starting PgBouncer in front of it (transaction pooling, pool size 3, reserve 2)")
	bouncer, err := pgtest.StartPgBouncer(pg, pgtest.PgBouncerOptions{
		PoolMode: "transaction", DefaultPoolSize: 3, ReservePoolSize: 2, ReservePoolTimeout: 200 * time.Millisecond,
	})
	if err != nil {
		return err
	}
	defer func() { _ = bouncer.Close() }()

	// The service reads .env in its working directory (work): the pool settings, its name
	// (the application_name of its connections) and the directory its workers share.
	envFile := filepath.Join(work, ".env")
	if err := os.WriteFile(envFile, []byte(appEnv+"APP_NAME="+appName+"\nDBPOOL_STATS_DIR="+filepath.Join(work, "dbpool")+"\n"), 0o600); err != nil {
		return err
	}
	simStatus, workerMetrics := freeAddr(), freeAddr()
	if simStatus == "" || workerMetrics == "" {
		return errors.New("no free loopback port")
	}

	// The api pools: the FastAPI service, which reports its own pool, when Python has its
	// packages, else poolsim's simulation. Either reads the same .env.
	api, err := startAPI(ctx, work, o, pg, appPW, simStatus)
	if err != nil {
		return err
	}
	defer stop(api.proc)
	if api.load != nil {
		defer api.load.wait()
	}
	apps := ""
	if api.statsURL != "" {
		apps = fmt.Sprintf(appsConfig, appName, api.statsURL, poolName)
	}
	configFile := filepath.Join(work, "dbpool.yml")
	if err := os.WriteFile(configFile, []byte(fmt.Sprintf(exporterConfig, appName, o.instances, workerName, apps, api.match)), 0o600); err != nil {
		return err
	}

	exporterLog := filepath.Join(work, "exporter.log")
	exporter, err := start(exporterLog, []string{
		"DEMO_PG_DSN=" + pg.DSN(monitorRole, monitorPW, "postgres"),
		"DEMO_PGBOUNCER_DSN=" + bouncer.StatsDSN(),
	}, o.exporter,
		"--web.listen-address="+o.listen,
		"--config.file="+configFile,
		"--pool.env-file="+envFile,
		"--health.window=5m")
	if err != nil {
		return err
	}
	defer stop(exporter)

	// A Go worker on a real pgxpool, through PgBouncer: its own exact checkout numbers, and
	// PgBouncer's view of the same traffic. PgBouncer's transaction pooling needs pgx's
	// simple protocol (no prepared statements across server connections).
	workerDSN := bouncer.DSN(appRole, appPW, "app") + "&default_query_exec_mode=simple_protocol"
	worker, err := start(filepath.Join(work, "worker.log"), []string{"DATABASE_URL=" + workerDSN}, o.poolsim,
		"--app-name="+workerName, "--instances=1", "--pool.impl=pgxpool",
		"--pool.size=8", "--pool.max-overflow=0", "--pool.timeout=2s",
		"--rate=25", "--query-time=100ms",
		"--metrics.listen="+workerMetrics, "--metrics.target=pgbouncer",
		"--report-interval=0")
	if err != nil {
		return err
	}
	defer stop(worker)

	metricsURL := "http://" + o.listen + "/metrics"
	if err := exporter.WaitReady(ctx, 30*time.Second, 100*time.Millisecond, childproc.HTTPReady(metricsURL)); err != nil {
		return fmt.Errorf("exporter did not come up (log: %s): %w", exporterLog, err)
	}
	fmt.Printf(`
dbpool_exporter is running.
  metrics:        %s
  landing page:   http://%s/
  pool health:    http://%s/pools (JSON: /api/v1/pools)
  application:    pool "%s": %s (%s),
                  straight to PostgreSQL; its own numbers at %s
  worker:         pool "%s": a Go service on pgxpool (8 connections) through PgBouncer (pool
                  "app/app", size 3 + reserve 2); its own exact metrics at http://%s/metrics
  try:            curl -s %s | grep -E '^dbpool_(utilization_ratio|in_use_connections|pending_checkouts|longest_query_seconds)'
Ctrl-C stops everything.

`, metricsURL, o.listen, o.listen, appName, api.describe, strings.Join(envLines(appEnv), " "), api.truthURL,
		workerName, workerMetrics, metricsURL)

	ticker := time.NewTicker(o.interval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			fmt.Println()
			// Before the deferred teardown stops the exporter: what it advises for the
			// simulated pool after watching it.
			printAdvice("http://"+o.listen+"/api/v1/pools", poolName)
			return nil
		case <-exporter.Done():
			return fmt.Errorf("exporter exited:\n%s", exporter.Tail(20))
		case <-ticker.C:
			printSummary(metricsURL, api, "http://"+workerMetrics+"/metrics")
		}
	}
}

// build builds the main package pkg into dir, its compiler output on stdout.
func build(dir, pkg, name string) (string, error) {
	say("building " + name)
	bin := filepath.Join(dir, name)
	if _, err := childproc.Run(context.Background(), childproc.Spec{
		Path: "go",
		Args: []string{"build", "-o", bin, pkg},
		Env:  append(os.Environ(), "CGO_ENABLED=0"),
		Tee:  os.Stdout,
	}); err != nil {
		return "", fmt.Errorf("go build %s: %w", pkg, err)
	}
	return bin, nil
}

// start starts bin with its output in logPath. Ctrl-C reaches only the demo, which stops
// the children in order after printing the exporter's advice; if the demo dies, so do they.
func start(logPath string, env []string, bin string, args ...string) (*childproc.Process, error) {
	return startIn("", logPath, env, bin, args...)
}

// startIn is start in the working directory dir.
func startIn(dir, logPath string, env []string, bin string, args ...string) (*childproc.Process, error) {
	say("starting " + filepath.Base(bin) + " (log: " + logPath + ")")
	return childproc.Start(childproc.Spec{
		Path:        bin,
		Args:        args,
		Dir:         dir,
		Env:         append(childproc.Environ("DB_", "DATA_SOURCE_NAME=", "DATABASE_URL="), env...),
		LogFile:     logPath,
		DeathSignal: syscall.SIGTERM,
	})
}

// stop stops a child the way Ctrl-C in its own terminal would.
func stop(p *childproc.Process) { _ = p.Stop(syscall.SIGTERM, 10*time.Second) }

func envLines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return out
}

func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return ""
	}
	defer l.Close()
	return l.Addr().String()
}

func randomPassword() string {
	b := make([]byte, 12)
	f, err := os.Open("/dev/urandom")
	if err == nil {
		_, err = io.ReadFull(f, b)
		f.Close()
	}
	if err != nil {
		panic(errors.New("no randomness"))
	}
	return fmt.Sprintf("demo-%x", b)
}

func say(s string) { fmt.Println("==> " + s) }
