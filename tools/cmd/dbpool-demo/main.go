// Command dbpool-demo runs dbpool_exporter end to end on this machine: a throwaway PostgreSQL,
// a simulated pooled application, the exporter, and a live summary of what the exporter sees
// next to the application's own true pool numbers. Ctrl-C stops everything and removes the
// cluster. `make demo` runs it.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/alecthomas/kingpin/v2"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/dbpool/dbpool_exporter/internal/health"
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
      application_name_regex: '%[1]s-(?P<instance>[0-9]+)'
    instances: %[2]d
  - name: %[3]s
    target: demo
    match:
      application_name_regex: '%[3]s-(?P<instance>[0-9]+)'
    pool_size: 8
    max_overflow: 0
    timeout: 2s
`

const workerName = "worker"

const (
	monitorRole = "dbpool_monitor"
	appRole     = "app"
	poolName    = "api"
	appName     = "api"
	// The simulated application's .env, as the seed document writes it.
	appEnv = `# Database connection pool configuration (the seed's "Development" sizes, a bit larger)
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
	listen            string
	duration          time.Duration
	interval          time.Duration
	instances         int
	rate              float64
	queryTime         time.Duration
}

func run() int {
	var o options
	app := kingpin.New("dbpool-demo", "Runs a throwaway PostgreSQL, a simulated pooled application and dbpool_exporter, and prints what the exporter sees.")
	app.Flag("exporter", "Path to the dbpool_exporter binary (default: build it).").StringVar(&o.exporter)
	app.Flag("poolsim", "Path to the poolsim binary (default: build it).").StringVar(&o.poolsim)
	app.Flag("listen", "Address of the exporter's web server.").Default("127.0.0.1:9930").StringVar(&o.listen)
	app.Flag("duration", "Stop after this long; 0 runs until Ctrl-C.").Default("0").DurationVar(&o.duration)
	app.Flag("interval", "How often to print the summary.").Default("3s").DurationVar(&o.interval)
	app.Flag("instances", "Simulated application instances (each its own pool).").Default("2").IntVar(&o.instances)
	app.Flag("rate", "Requests per second per instance.").Default("40").Float64Var(&o.rate)
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

	envFile := filepath.Join(work, "app.env")
	if err := os.WriteFile(envFile, []byte(appEnv), 0o600); err != nil {
		return err
	}
	configFile := filepath.Join(work, "dbpool.yml")
	if err := os.WriteFile(configFile, []byte(fmt.Sprintf(exporterConfig, appName, o.instances, workerName)), 0o600); err != nil {
		return err
	}
	simStatus, workerMetrics := freeAddr(), freeAddr()
	if simStatus == "" || workerMetrics == "" {
		return errors.New("no free loopback port")
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
	if err := exporter.run(); err != nil {
		return err
	}
	defer exporter.stop()

	// The application reads the same .env; poolsim takes DB_* from its environment.
	simEnv := append(envLines(appEnv), "DATABASE_URL="+pg.DSN(appRole, appPW, "postgres"))
	sim, err := start(filepath.Join(work, "poolsim.log"), simEnv, o.poolsim,
		"--app-name="+appName,
		"--instances="+strconv.Itoa(o.instances),
		"--rate="+strconv.FormatFloat(o.rate, 'f', -1, 64),
		"--query-time="+o.queryTime.String(),
		"--idle-in-tx-share=0.003", "--idle-in-tx-time=20s",
		"--long-query-share=0.0005", "--long-query-time=40s",
		"--hold-extra=10ms",
		"--status.listen="+simStatus,
		"--report-interval=0")
	if err != nil {
		return err
	}
	if err := sim.run(); err != nil {
		return err
	}
	defer sim.stop()

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
	if err := worker.run(); err != nil {
		return err
	}
	defer worker.stop()

	metricsURL := "http://" + o.listen + "/metrics"
	if err := waitHTTP(ctx, metricsURL); err != nil {
		return fmt.Errorf("exporter did not come up (log: %s): %w\n%s", exporterLog, err, tail(exporterLog))
	}
	fmt.Printf(`
dbpool_exporter is running.
  metrics:        %s
  landing page:   http://%s/
  pool health:    http://%s/pools (JSON: /api/v1/pools)
  application:    pool "%s": %d instances of a simulated SQLAlchemy-style QueuePool (%s),
                  straight to PostgreSQL; true numbers at http://%s/status
  worker:         pool "%s": a Go service on pgxpool (8 connections) through PgBouncer (pool
                  "app/app", size 3 + reserve 2); its own exact metrics at http://%s/metrics
  try:            curl -s %s | grep -E '^dbpool_(utilization_ratio|in_use_connections|pending_checkouts|longest_query_seconds)'
Ctrl-C stops everything.

`, metricsURL, o.listen, o.listen, appName, o.instances, strings.Join(envLines(appEnv), " "), simStatus,
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
		case <-exporter.exited:
			return fmt.Errorf("exporter exited:\n%s", tail(exporterLog))
		case <-ticker.C:
			printSummary(metricsURL, "http://"+simStatus+"/status", "http://"+workerMetrics+"/metrics")
		}
	}
}

// printSummary prints one line per pool of what the exporter sees, and the simulated
// application's own numbers for the same moment.
func printSummary(metricsURL, simURL, workerURL string) {
	mfs, err := scrape(metricsURL)
	if err != nil {
		fmt.Println("scrape failed:", err)
		return
	}
	fmt.Printf("%s  dbpool_up: postgres %g, pgbouncer %g  probe login %.1f ms\n", time.Now().Format("15:04:05"),
		get(mfs, "dbpool_up", map[string]string{"target": "demo"}), get(mfs, "dbpool_up", map[string]string{"target": "pgbouncer"}),
		1000*get(mfs, "dbpool_probe_connect_seconds", nil))
	for _, pool := range poolNames(mfs) {
		if pool == "dbpool_exporter" {
			continue // the exporter's own connection
		}
		l := map[string]string{"pool": pool}
		capacity := get(mfs, "dbpool_max_connections", l)
		line := fmt.Sprintf("  pool %-14s in use %3.0f", pool, get(mfs, "dbpool_in_use_connections", l))
		if capacity > 0 {
			line += fmt.Sprintf("/%-3.0f (%3.0f%%)  overflow %2.0f/%-3.0f", capacity, 100*get(mfs, "dbpool_utilization_ratio", l),
				get(mfs, "dbpool_overflow_connections", l), get(mfs, "dbpool_max_overflow_connections", l)*get(mfs, "dbpool_instances", l))
		}
		line += fmt.Sprintf("  open %3.0f", get(mfs, "dbpool_open_connections", l))
		if has(mfs, "dbpool_longest_query_seconds", l) {
			line += fmt.Sprintf("  idle in tx %2.0f  longest query %5.1fs",
				get(mfs, "dbpool_connections", map[string]string{"pool": pool, "state": "idle in transaction"}),
				get(mfs, "dbpool_longest_query_seconds", l))
		}
		if has(mfs, "dbpool_pending_checkouts", l) {
			line += fmt.Sprintf("  waiting %2.0f  longest wait %4.0f ms  avg wait %s", get(mfs, "dbpool_pending_checkouts", l),
				1000*get(mfs, "dbpool_longest_checkout_wait_seconds", l), avgCheckout(mfs, l))
		}
		fmt.Printf("%s   [%s]\n", line, source(mfs, pool))
	}
	if wm, err := scrape(workerURL); err == nil {
		l := map[string]string{"pool": workerName}
		fmt.Printf("  worker's own pgxpool (exact): in use %.0f/%.0f  waiting %.0f  avg checkout %s  timeouts %.0f\n",
			get(wm, "dbpool_in_use_connections", l), get(wm, "dbpool_max_connections", l), get(wm, "dbpool_pending_checkouts", l),
			avgCheckout(wm, l), get(wm, "dbpool_checkout_timeouts_total", l))
	}
	var truth struct {
		Total struct {
			CheckedOut int     `json:"checked_out"`
			Open       int     `json:"open"`
			Overflow   int     `json:"overflow"`
			Pending    int     `json:"pending"`
			Timeouts   float64 `json:"timeouts_total"`
		} `json:"total"`
	}
	if err := getJSON(simURL, &truth); err == nil {
		t := truth.Total
		fmt.Printf("  application's own count: checked out %d, open %d, overflow %d, waiting %d, timeouts %.0f\n",
			t.CheckedOut, t.Open, t.Overflow, t.Pending, t.Timeouts)
	}
}

// printAdvice prints the exporter's health warnings and recommended .env lines for pool.
func printAdvice(url, pool string) {
	var body health.PoolsResponse
	if err := getJSON(url, &body); err != nil {
		fmt.Println("advice: cannot read", url+":", err)
		return
	}
	for _, r := range body.Pools {
		if r.Pool != pool {
			continue
		}
		fmt.Printf("==> the exporter's advice for pool %s (%s, from %s):\n", r.Pool, r.State, url)
		line := fmt.Sprintf("  utilization %.0f%% of pool_size (peak %.0f%%)", r.Health.UtilizationPct, r.Health.PeakUtilizationPct)
		if c := r.Health.CapacityUtilizationPct; c != nil {
			line += fmt.Sprintf(", %.0f%% of capacity", *c)
		}
		fmt.Println(line)
		if !r.Exact {
			fmt.Println("  " + health.EstimateNote)
		}
		if len(r.Health.Warnings) == 0 {
			fmt.Println("  no warnings")
		}
		for _, w := range health.WithoutEstimateNote(r.Health.Warnings) {
			fmt.Printf("  warning [%s] %s\n", w.Rule, w.Message)
		}
		for _, rec := range health.WithoutEstimateNote(r.Optimization.Recommendations) {
			fmt.Printf("  recommendation [%s] %s\n", rec.Rule, rec.Message)
		}
		fmt.Printf("  recommended .env (by %s):\n", r.Optimization.PoolSizeRule)
		for _, l := range strings.Split(strings.TrimSpace(r.Optimization.Env), "\n") {
			fmt.Println("    " + l)
		}
		return
	}
	fmt.Println("advice: the exporter has no report for pool", pool, "yet")
}

// avgCheckout is the mean checkout wait since start, from the histogram's sum and count.
func avgCheckout(mfs map[string]*dto.MetricFamily, l map[string]string) string {
	mf, ok := mfs["dbpool_checkout_duration_seconds"]
	if !ok {
		return "n/a"
	}
	for _, m := range mf.GetMetric() {
		if labelsMatch(m, l) && m.GetHistogram().GetSampleCount() > 0 {
			h := m.GetHistogram()
			return fmt.Sprintf("%.1f ms", 1000*h.GetSampleSum()/float64(h.GetSampleCount()))
		}
	}
	return "n/a"
}

// source names who observes the pool, from dbpool_pool_info.
func source(mfs map[string]*dto.MetricFamily, pool string) string {
	for _, src := range []string{"activity", "pgbouncer", "pgxpool"} {
		if has(mfs, "dbpool_pool_info", map[string]string{"pool": pool, "source": src}) {
			if src == "activity" {
				return "activity: estimate"
			}
			return src + ": exact"
		}
	}
	return "?"
}

func poolNames(mfs map[string]*dto.MetricFamily) []string {
	var names []string
	if mf, ok := mfs["dbpool_open_connections"]; ok {
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "pool" {
					names = append(names, lp.GetValue())
				}
			}
		}
	}
	return names
}

func scrape(url string) (map[string]*dto.MetricFamily, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	return parser.TextToMetricFamilies(resp.Body)
}

func labelsMatch(m *dto.Metric, want map[string]string) bool {
	have := map[string]string{}
	for _, lp := range m.GetLabel() {
		have[lp.GetName()] = lp.GetValue()
	}
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

func has(mfs map[string]*dto.MetricFamily, name string, want map[string]string) bool {
	for _, m := range mfs[name].GetMetric() {
		if labelsMatch(m, want) {
			return true
		}
	}
	return false
}

// get returns the first series of name whose labels include want (0 if none).
func get(mfs map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	mf, ok := mfs[name]
	if !ok {
		return 0
	}
	for _, m := range mf.GetMetric() {
		if !labelsMatch(m, want) {
			continue
		}
		if g := m.GetGauge(); g != nil {
			return g.GetValue()
		}
		if c := m.GetCounter(); c != nil {
			return c.GetValue()
		}
	}
	return 0
}

func getJSON(url string, v any) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(v)
}

func waitHTTP(ctx context.Context, url string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func build(dir, pkg, name string) (string, error) {
	say("building " + name)
	bin := filepath.Join(dir, name)
	cmd := exec.Command("go", "build", "-o", bin, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go build %s: %w", pkg, err)
	}
	return bin, nil
}

type child struct {
	cmd    *exec.Cmd
	log    *os.File
	exited chan struct{}
}

func start(logPath string, env []string, bin string, args ...string) (*child, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(cleanEnv(), env...)
	cmd.Stdout, cmd.Stderr = f, f
	// Ctrl-C reaches only the demo, which stops the children in order after printing the
	// exporter's advice; if the demo dies, so do they.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	return &child{cmd: cmd, log: f, exited: make(chan struct{})}, nil
}

func (c *child) run() error {
	say("starting " + filepath.Base(c.cmd.Path) + " (log: " + c.log.Name() + ")")
	if err := c.cmd.Start(); err != nil {
		return err
	}
	go func() { _ = c.cmd.Wait(); close(c.exited) }()
	return nil
}

func (c *child) stop() {
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.exited
	}
	c.log.Close()
}

// cleanEnv keeps the caller's DB_* variables away from the demo's processes.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DB_") && !strings.HasPrefix(kv, "DATA_SOURCE_NAME=") && !strings.HasPrefix(kv, "DATABASE_URL=") {
			env = append(env, kv)
		}
	}
	return env
}

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

func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return strings.Join(lines, "\n")
}

func say(s string) { fmt.Println("==> " + s) }
