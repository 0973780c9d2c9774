package e2e

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/dbpool/dbpool_exporter/bench/benchkit"
	"github.com/dbpool/dbpool_exporter/internal/health"
	"github.com/dbpool/dbpool_exporter/tools/childproc"
	"github.com/dbpool/dbpool_exporter/tools/pgtest"
	"github.com/dbpool/dbpool_exporter/tools/testbin"
)

// The fault matrix: the real exporter binary, as a user runs it (a YAML file with the DSN
// and its password, debug logging), against real PostgreSQL servers that fail in the ways
// production ones do. Each scenario asserts what must hold, logs one line of figures, and
// checks that the DSN's password appears nowhere the exporter writes: logs, /metrics,
// /probe answers (good and bad), the landing page, /pools and the JSON API. `make faults`
// runs it alone with -v, so that the lines and the summary show.

// faultTimeout is the scrape timeout the scenarios send, as Prometheus would
// (X-Prometheus-Scrape-Timeout-Seconds); with the default --scrape.timeout-offset of 500ms
// the exporter's deadline is 1.5 s, and every answer must come before faultTimeout.
const faultTimeout = 2 * time.Second

// faultSummary collects each scenario's line for the summary at the end.
var faultSummary struct {
	mu    sync.Mutex
	lines []string
}

// held reports one scenario's line: in the test's log now and in the summary later.
func held(t *testing.T, format string, args ...any) {
	t.Helper()
	line := fmt.Sprintf(format, args...)
	t.Log(line)
	faultSummary.mu.Lock()
	faultSummary.lines = append(faultSummary.lines, line)
	faultSummary.mu.Unlock()
}

// faultExporter is one exporter process watching one target "db".
type faultExporter struct {
	t        *testing.T
	proc     *process
	base     string // http://host:port or https://host:port
	client   *http.Client
	user, pw string // basic auth, when set
	password string // the DSN's password, which must never show

	mu    sync.Mutex
	texts []string // every body this exporter answered
}

// startFaultExporter starts the exporter with a YAML file naming pg as target "db",
// logging in as role with password, plus args.
func startFaultExporter(t *testing.T, pg *pgtest.Postgres, role, password string, args ...string) *faultExporter {
	t.Helper()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "dbpool.yml")
	writeFile(t, cfg, fmt.Sprintf(`targets:
  - name: db
    dsn: %q
pools:
  - name: api
    target: db
    match:
      application_name_regex: 'api-(?P<instance>[0-9]+)'
    pool_size: 5
    max_overflow: 5
    timeout: 30
    recycle: 3600
    instances: 2
`, pg.DSN(role, password, "postgres")))
	full := append([]string{"--config.file=" + cfg, "--log.level=debug"}, args...)
	proc, addr := startServer(t, dir, "exporter", testbin.Exporter(t), nil, "/-/healthy", func(addr string) []string {
		return append([]string{"--web.listen-address=" + addr}, full...)
	})
	return &faultExporter{t: t, proc: proc, base: "http://" + addr, client: &http.Client{Timeout: 30 * time.Second}, password: password}
}

// get fetches path with Prometheus' timeout header and returns status, body and time taken.
func (e *faultExporter) get(path string) (int, string, time.Duration) {
	e.t.Helper()
	req, err := http.NewRequest(http.MethodGet, e.base+path, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("X-Prometheus-Scrape-Timeout-Seconds", fmt.Sprint(faultTimeout.Seconds()))
	if e.user != "" {
		req.SetBasicAuth(e.user, e.pw)
	}
	start := time.Now()
	resp, err := e.client.Do(req)
	if err != nil {
		e.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	d := time.Since(start)
	if err != nil {
		e.t.Fatalf("GET %s: %v", path, err)
	}
	e.mu.Lock()
	e.texts = append(e.texts, string(body))
	e.mu.Unlock()
	return resp.StatusCode, string(body), d
}

// scrape fetches /metrics, which must answer 200 before faultTimeout and parse.
func (e *faultExporter) scrape() (exporterScrape, time.Duration, string) {
	e.t.Helper()
	code, body, d := e.get("/metrics")
	if code != http.StatusOK {
		e.t.Fatalf("GET /metrics: %d %s", code, body)
	}
	if d >= faultTimeout {
		e.t.Errorf("GET /metrics took %v, more than the %v scrape timeout", d, faultTimeout)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		e.t.Fatalf("parse /metrics: %v", err)
	}
	return mfs, d, body
}

// noPassword fetches the other pages and checks that the DSN's password is in none of them,
// in no answer the exporter gave during the scenario, and not in its logs. It returns "ok"
// for the scenario's line.
func (e *faultExporter) noPassword() string {
	e.t.Helper()
	// A DSN given as the target must not be echoed either.
	dsn := url.QueryEscape("postgres://x:" + e.password + "@127.0.0.1/postgres")
	for _, path := range []string{"/", "/probe?target=db", "/probe?target=nope", "/probe", "/probe?target=" + dsn, "/pools", "/api/v1/pools"} {
		e.get(path)
	}
	e.mu.Lock()
	texts := append(slices.Clone(e.texts), e.proc.Output())
	e.mu.Unlock()
	for i, s := range texts {
		what := fmt.Sprintf("answer %d", i)
		if i == len(texts)-1 {
			what = "the logs"
		}
		if strings.Contains(s, e.password) {
			e.t.Errorf("the DSN password appears in %s", what)
			return "LEAKED"
		}
	}
	return "ok"
}

// want is the value one series must have.
type want struct {
	name   string
	labels map[string]string
	value  float64
}

func up(v float64) want         { return want{"dbpool_up", nil, v} }
func probeLogin(v float64) want { return want{"dbpool_probe_connect_success", nil, v} }
func activityOK(v float64) want {
	return want{"dbpool_scrape_success", map[string]string{"collector": "activity"}, v}
}

// expect scrapes and checks the wanted values; what names the moment in failures.
func (e *faultExporter) expect(what string, wants ...want) time.Duration {
	e.t.Helper()
	mfs, d, _ := e.scrape()
	for _, w := range wants {
		if v := mfs.must(e.t, w.name, w.labels); v != w.value {
			e.t.Errorf("%s: %s%v = %v, want %v", what, w.name, w.labels, v, w.value)
		}
	}
	return d
}

// faultServer is a PostgreSQL with a monitoring role of its own.
func faultServer(t *testing.T, opts pgtest.Options, role string) (*pgtest.Postgres, string) {
	t.Helper()
	pg := pgtest.StartT(t, opts)
	password := "Fault-" + randomPassword(t)
	if err := pg.CreateRole(role, password, false, "pg_monitor"); err != nil {
		t.Fatal(err)
	}
	return pg, password
}

// superConn is a superuser session for the test itself.
func superConn(t *testing.T, pg *pgtest.Postgres, appName string) *pgx.Conn {
	t.Helper()
	conn, err := benchkit.Connect(context.Background(), pg.SuperuserDSN(""), appName)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

func ms(d time.Duration) string { return fmt.Sprintf("%dms", d.Milliseconds()) }

func TestFaults(t *testing.T) {
	testbin.Exporter(t) // build once, before the scenarios start in parallel
	t.Run("matrix", func(t *testing.T) {
		t.Run("stopped and restarted", faultStoppedRestarted)
		t.Run("frozen postmaster", faultFrozen)
		t.Run("lock stall", faultLockStall)
		t.Run("max_connections exhausted", faultExhausted)
		t.Run("10000 application names", faultManyNames)
		shared, password := faultServer(t, pgtest.Options{}, "fault_shared")
		t.Run("odd application names", func(t *testing.T) { faultOddNames(t, shared, password) })
		t.Run("200 parallel scrapes", func(t *testing.T) { faultParallel(t, shared, password) })
		t.Run("TLS and basic auth", func(t *testing.T) { faultTLS(t, shared, password) })
	})
	faultSummary.mu.Lock()
	defer faultSummary.mu.Unlock()
	slices.Sort(faultSummary.lines)
	t.Logf("fault matrix summary (%d scenarios):\n  %s", len(faultSummary.lines), strings.Join(faultSummary.lines, "\n  "))
}

// faultStoppedRestarted: with the server stopped the scrape answers in time with dbpool_up 0;
// after a restart the first scrape is up again (the monitoring connection reconnects).
func faultStoppedRestarted(t *testing.T) {
	t.Parallel()
	pg, password := faultServer(t, pgtest.Options{}, "fault_restart")
	e := startFaultExporter(t, pg, "fault_restart", password)
	e.expect("before the stop", up(1))
	if err := pg.Stop(); err != nil {
		t.Fatal(err)
	}
	stopped := e.expect("server stopped", up(0), probeLogin(0))
	if err := pg.Restart(); err != nil {
		t.Fatal(err)
	}
	restarted := e.expect("first scrape after the restart", up(1), activityOK(1), probeLogin(1))
	pw := e.noPassword()
	held(t, "stopped: scrape %s, dbpool_up 0, probe_connect_success 0, no password: %s", ms(stopped), pw)
	held(t, "restarted: first scrape %s, dbpool_up 1, activity success 1, probe 1, no password: %s", ms(restarted), pw)
}

// faultFrozen: a postmaster frozen with SIGSTOP accepts no logins, but the established
// monitoring connection still works: dbpool_up 1, the probe says logins fail, in time.
func faultFrozen(t *testing.T) {
	t.Parallel()
	pg, password := faultServer(t, pgtest.Options{}, "fault_frozen")
	e := startFaultExporter(t, pg, "fault_frozen", password)
	e.scrape()
	cont, err := pg.Freeze()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cont)
	// The established session works; new logins hang.
	frozen := e.expect("frozen postmaster", up(1), probeLogin(0))
	cont()
	thawed := time.Now()
	// The probe's abandoned login may still be queued at the thawed postmaster.
	waitFor(t, "the probe to log in after SIGCONT", func() {}, func() string {
		mfs, _, _ := e.scrape()
		if v := mfs.must(t, "dbpool_probe_connect_success", nil); v != 1 {
			return fmt.Sprintf("probe_connect_success %v", v)
		}
		return ""
	})
	held(t, "frozen postmaster: scrape %s, dbpool_up 1, probe_connect_success 0, logins again %s after SIGCONT, no password: %s",
		ms(frozen), ms(time.Since(thawed)), e.noPassword())
}

// faultLockStall: a session holding ACCESS EXCLUSIVE on pg_database (which pg_stat_activity
// joins) blocks the activity query; the scrape gives up at its deadline, says so, and leaves
// no query waiting on the server.
func faultLockStall(t *testing.T) {
	t.Parallel()
	pg, password := faultServer(t, pgtest.Options{}, "fault_lock")
	e := startFaultExporter(t, pg, "fault_lock", password)
	e.scrape()
	holder := superConn(t, pg, "lock-holder")
	if _, err := holder.Exec(context.Background(), "BEGIN; LOCK TABLE pg_catalog.pg_database IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	stalled := e.expect("lock stall", up(1), activityOK(0))
	gaveUp := time.Now()
	waitFor(t, "the abandoned activity query to be cancelled on the server", func() {}, func() string {
		var stuck int
		if err := holder.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
WHERE usename = 'fault_lock' AND application_name = 'dbpool_exporter' AND state = 'active'`).Scan(&stuck); err != nil {
			t.Fatal(err)
		}
		if stuck > 0 {
			return fmt.Sprintf("%d exporter queries still waiting", stuck)
		}
		return ""
	})
	// It is cancelled with the scrape's context; a query left to statement_timeout (10 s)
	// would take far longer.
	cancelled := time.Since(gaveUp)
	if cancelled > 2*time.Second {
		t.Errorf("the abandoned query was still waiting %v after the scrape gave up", cancelled)
	}
	if _, err := holder.Exec(context.Background(), "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
	e.expect("after the lock was released", activityOK(1))
	held(t, "lock stall: scrape %s, dbpool_up 1, activity success 0, no query left waiting after %s, recovered after release, no password: %s",
		ms(stalled), ms(cancelled), e.noPassword())
}

// faultExhausted: with every ordinary slot taken, the probe's login is refused (53300) and
// says so, the monitoring connection keeps dbpool_up at 1, and the exporter holds one slot.
func faultExhausted(t *testing.T) {
	t.Parallel()
	pg, password := faultServer(t, pgtest.Options{MaxConnections: 8, SuperuserReservedConnections: 3}, "fault_full")
	e := startFaultExporter(t, pg, "fault_full", password)
	e.scrape()
	// 8 - 3 reserved = 5 ordinary slots; the monitoring connection holds one.
	appCfg := func() *pgx.ConnConfig {
		if err := pg.CreateRole("fault_filler", "filler-pw", false); err != nil {
			t.Fatal(err)
		}
		cfg, err := pgx.ParseConfig(pg.DSN("fault_filler", "filler-pw", ""))
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}()
	fillers := benchkit.NewSessionSet(appCfg)
	t.Cleanup(func() { fillers.Close(pg) })
	if err := fillers.Grow(context.Background(), benchkit.Mix{benchkit.Idle: 4}); err != nil {
		t.Fatal(err)
	}
	// One more ordinary login must be refused: the server is full.
	if c, err := pgx.Connect(context.Background(), pg.DSN("fault_filler", "filler-pw", "")); err == nil {
		c.Close(context.Background())
		t.Fatal("a fifth ordinary login succeeded: the server is not full")
	}
	full := e.expect("server full", up(1), probeLogin(0))
	var slots int
	if err := superConn(t, pg, "slot-counter").QueryRow(context.Background(),
		"SELECT count(*) FROM pg_stat_activity WHERE usename = 'fault_full'").Scan(&slots); err != nil {
		t.Fatal(err)
	}
	if slots != 1 {
		t.Errorf("the exporter holds %d connections on the full server, want 1", slots)
	}
	logs := e.proc.Output()
	if !strings.Contains(logs, "53300") && !strings.Contains(logs, "too many clients") {
		t.Errorf("the logs do not say why the probe failed:\n%s", indent(childproc.Tail(logs, 10)))
	}
	held(t, "max_connections exhausted: scrape %s, dbpool_up 1, probe_connect_success 0 (53300 logged), %d slot held, no password: %s",
		ms(full), slots, e.noPassword())
}

// faultManyNames: 500 sessions take 10,000 distinct application names, 500 at a time over 20
// rounds; the pools the exporter reports stay within --collector.activity.max-applications
// (the rest is application_name:other), the series count does not grow, and every backend is counted.
// The health history (/api/v1/pools, /pools) remembers pools seen within its window: with
// 50 new groups a round it passes its cap of health.DefaultMaxPools, which must hold.
func faultManyNames(t *testing.T) {
	t.Parallel()
	const sessions, rounds, maxApps = 500, 20, 50
	pg, password := faultServer(t, pgtest.Options{MaxConnections: sessions + 50}, "fault_names")
	e := startFaultExporter(t, pg, "fault_names", password, fmt.Sprintf("--collector.activity.max-applications=%d", maxApps))
	if err := pg.CreateRole("fault_app", "app-pw", false); err != nil {
		t.Fatal(err)
	}
	cfg, err := pgx.ParseConfig(pg.DSN("fault_app", "app-pw", ""))
	if err != nil {
		t.Fatal(err)
	}
	set := benchkit.NewSessionSet(cfg)
	t.Cleanup(func() { set.Close(pg) })
	if err := set.Grow(context.Background(), benchkit.Mix{benchkit.Idle: sessions}); err != nil {
		t.Fatal(err)
	}
	_, _, first := e.scrape()
	var firstSeries, maxSeries, maxPools int
	var slowest time.Duration
	var rss0 int
	for round := range rounds {
		if _, err := set.Distinct(context.Background(), sessions, func(i int) string { return fmt.Sprintf("svc-r%02d-%03d", round, i) }); err != nil {
			t.Fatal(err)
		}
		mfs, d, body := e.scrape()
		slowest = max(slowest, d)
		series := benchkit.CountSeries([]byte(body))
		if round == 0 {
			firstSeries = series
			rss0, _ = benchkit.ProcMemory(e.proc.Pid())
		}
		maxSeries = max(maxSeries, series)
		pools := map[string]bool{}
		var counted float64
		for _, m := range mfs["dbpool_open_connections"].GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "pool" {
					pools[l.GetValue()] = true
				}
			}
		}
		for _, m := range mfs["dbpool_server_connections"].GetMetric() {
			counted += m.GetGauge().GetValue()
		}
		maxPools = max(maxPools, len(pools))
		if counted < sessions {
			t.Errorf("round %d: the exporter counted %v client backends, want at least %d", round, counted, sessions)
		}
	}
	rss, _ := benchkit.ProcMemory(e.proc.Pid())
	_, api, _ := e.get("/api/v1/pools")
	var history health.PoolsResponse
	if err := json.Unmarshal([]byte(api), &history); err != nil {
		t.Fatalf("/api/v1/pools: %v", err)
	}
	if len(history.Pools) > health.DefaultMaxPools {
		t.Errorf("/api/v1/pools lists %d pools, more than the cap of %d", len(history.Pools), health.DefaultMaxPools)
	}
	// The configured pool, the capped application groups, application_name:other and the exporter's own.
	if bound := 1 + maxApps + 1 + 1; maxPools > bound {
		t.Errorf("%d pools in one scrape, want at most %d (max-applications %d)", maxPools, bound, maxApps)
	}
	if maxSeries > firstSeries {
		t.Errorf("series grew from %d (first 500 names) to %d as names changed", firstSeries, maxSeries)
	}
	held(t, "10000 application names: series %d before, %d with the first 500 names, at most %d after 10000, at most %d pools a scrape (cap %d), %d pools in the health history (cap %d), slowest scrape %s, RSS %s -> %s, no password: %s",
		benchkit.CountSeries([]byte(first)), firstSeries, maxSeries, maxPools, maxApps, len(history.Pools), health.DefaultMaxPools,
		ms(slowest), benchkit.MiB(rss0), benchkit.MiB(rss), e.noPassword())
}

// oddNames are application names a client may send. PostgreSQL (before 16) turns every byte
// outside printable ASCII into '?', so the newline and the invalid UTF-8 reach the exporter as
// '?'; what the server stored is read back and must appear as a label value.
var oddNames = []string{`q"uote`, `back\slash`, `brace}{=,"`, "new\nline", "bad\xff\xfeutf8", "tab\there", `it's`}

// faultOddNames: the exposition with odd application names parses (expfmt, promtool check
// metrics) and carries each name as the server reports it.
func faultOddNames(t *testing.T, pg *pgtest.Postgres, password string) {
	t.Parallel()
	e := startFaultExporter(t, pg, "fault_shared", password)
	if err := pg.CreateRole("fault_odd", "odd-pw", false); err != nil {
		t.Fatal(err)
	}
	for _, name := range oddNames {
		conn, err := benchkit.Connect(context.Background(), pg.DSN("fault_odd", "odd-pw", ""), name)
		if err != nil {
			t.Fatalf("login with application_name %q: %v", name, err)
		}
		t.Cleanup(func() { _ = conn.Close(context.Background()) })
	}
	var stored []string
	rows, err := superConn(t, pg, "odd-reader").Query(context.Background(), "SELECT application_name FROM pg_stat_activity WHERE usename = 'fault_odd'")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		stored = append(stored, s)
	}
	if rows.Close(); len(stored) != len(oddNames) {
		t.Fatalf("%d sessions on the server, want %d", len(stored), len(oddNames))
	}
	mfs, d, body := e.scrape()
	if !utf8.ValidString(body) {
		t.Error("the exposition is not valid UTF-8")
	}
	labels := map[string]bool{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				labels[l.GetValue()] = true
			}
		}
	}
	found := 0
	for _, s := range stored {
		for v := range labels {
			if strings.Contains(v, s) {
				found++
				break
			}
		}
	}
	if found != len(stored) {
		t.Errorf("%d of %d application names found as label values; stored %q", found, len(stored), stored)
	}
	promtool := "not installed"
	if bin, err := exec.LookPath("promtool"); err == nil {
		cmd := exec.Command(bin, "check", "metrics")
		cmd.Stdin = strings.NewReader(body)
		out, err := cmd.CombinedOutput()
		// promtool exits 1 for lint advice as well; a text it cannot parse says "parsing error".
		if bytes.Contains(out, []byte("parsing error")) || bytes.Contains(out, []byte("error while linting")) {
			t.Errorf("promtool check metrics: %v\n%s", err, out)
		}
		promtool = "parses"
		if err == nil {
			promtool = "clean"
		}
	}
	held(t, "odd application names: scrape %s, %d of %d names as label values (newline and invalid UTF-8 arrive as '?'), expfmt parses, promtool %s, no password: %s",
		ms(d), found, len(stored), promtool, e.noPassword())
}

// faultParallel: 200 scrapes at once all answer, sharing collections: the server never sees
// more than the one monitoring connection and one probe login of this exporter.
func faultParallel(t *testing.T, pg *pgtest.Postgres, password string) {
	t.Parallel()
	const scrapes = 200
	if err := pg.CreateRole("fault_parallel", password+"p", false, "pg_monitor"); err != nil {
		t.Fatal(err)
	}
	e := startFaultExporter(t, pg, "fault_parallel", password+"p")
	e.password = password // the prefix is what must not show; it also covers the shared role's
	e.scrape()
	watcher := superConn(t, pg, "parallel-watcher")
	stop := make(chan struct{})
	var most, mostMonitor, mostProbe int
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for {
			var all, monitor, probe int
			if err := watcher.QueryRow(context.Background(), `SELECT count(*),
  count(*) FILTER (WHERE application_name = 'dbpool_exporter'),
  count(*) FILTER (WHERE application_name = 'dbpool_exporter_probe')
FROM pg_stat_activity WHERE usename = 'fault_parallel'`).Scan(&all, &monitor, &probe); err == nil {
				most, mostMonitor, mostProbe = max(most, all), max(mostMonitor, monitor), max(mostProbe, probe)
			}
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var times []time.Duration
	var failed []string
	start := make(chan struct{})
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: scrapes}}
	for range scrapes {
		wg.Go(func() {
			<-start
			t0 := time.Now()
			resp, err := client.Get(e.base + "/metrics")
			if err != nil {
				mu.Lock()
				failed = append(failed, err.Error())
				mu.Unlock()
				return
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			d := time.Since(t0)
			e.mu.Lock()
			e.texts = append(e.texts, string(body))
			e.mu.Unlock()
			mu.Lock()
			defer mu.Unlock()
			if err != nil || resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "\ndbpool_up{target=\"db\"} 1") {
				failed = append(failed, fmt.Sprintf("status %d, err %v", resp.StatusCode, err))
				return
			}
			times = append(times, d)
		})
	}
	close(start)
	wg.Wait()
	close(stop)
	<-watched
	if len(failed) > 0 {
		t.Errorf("%d of %d parallel scrapes failed, e.g. %s", len(failed), scrapes, failed[0])
	}
	if mostMonitor > 1 || mostProbe > 1 || most > 2 {
		t.Errorf("at most %d backends of the exporter at once (%d monitoring, %d probe), want 1 + 1", most, mostMonitor, mostProbe)
	}
	held(t, "200 parallel scrapes: %d answered with dbpool_up 1, p50 %s, slowest %s, at most %d monitoring + %d probe backends, no password: %s",
		len(times), ms(benchkit.Percentile(times, 50)), ms(benchkit.Percentile(times, 100)), mostMonitor, mostProbe, e.noPassword())
}

// faultTLS: with --web.config.file (exporter-toolkit: TLS and basic auth), only HTTPS with the
// right password gets metrics: no or a wrong password is 401, plain HTTP is refused.
func faultTLS(t *testing.T, pg *pgtest.Postgres, password string) {
	t.Parallel()
	// bcrypt of webPassword (cost 4): exporter-toolkit wants a hash; computing one here would
	// make golang.org/x/crypto a direct dependency only for this.
	const webUser, webPassword, webHash = "prometheus", "scrape-Pass-4711", "$2a$04$2A9veHJFBzNOC5o6gfN1A.aZ/86v3p0WMfOAP3a7F6JlxZtUhLuNu"
	dir := t.TempDir()
	certPEM, keyPEM, err := selfSigned()
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "tls.crt"), string(certPEM))
	writeFile(t, filepath.Join(dir, "tls.key"), string(keyPEM))
	webCfg := filepath.Join(dir, "web.yml")
	writeFile(t, webCfg, fmt.Sprintf("tls_server_config:\n  cert_file: %s\n  key_file: %s\nbasic_auth_users:\n  %s: '%s'\n",
		filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), webUser, webHash))

	// startServer checks readiness over plain HTTP: the exporter answers it with 400 ("client
	// sent an HTTP request to an HTTPS server"), which is enough to know it listens; the
	// checks below are over HTTPS.
	yml := filepath.Join(dir, "dbpool.yml")
	writeFile(t, yml, fmt.Sprintf("targets:\n  - name: db\n    dsn: %q\n", pg.DSN("fault_shared", password, "postgres")))
	port, err := pgtest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort("127.0.0.1", fmt.Sprint(port))
	proc := startProcess(t, dir, "exporter", testbin.Exporter(t), nil, "--web.listen-address="+addr,
		"--config.file="+yml, "--web.config.file="+webCfg, "--log.level=debug")
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(certPEM)
	e := &faultExporter{t: t, proc: proc, base: "https://" + addr, password: password,
		client: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}}
	if err := proc.WaitReady(context.Background(), 30*time.Second, 50*time.Millisecond, func() error {
		resp, err := e.client.Get(e.base + "/-/healthy")
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	noAuth, _, _ := e.get("/metrics")
	e.user, e.pw = webUser, webPassword+"x"
	wrong, _, _ := e.get("/metrics")
	e.user, e.pw = webUser, webPassword
	d := e.expect("HTTPS with the right password", up(1))
	plain := "refused"
	if resp, err := httpClient.Get("http://" + addr + "/metrics"); err == nil {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		e.mu.Lock()
		e.texts = append(e.texts, string(body))
		e.mu.Unlock()
		plain = fmt.Sprintf("HTTP %d", resp.StatusCode)
		if resp.StatusCode == http.StatusOK || bytes.Contains(body, []byte("dbpool_up")) {
			t.Errorf("plain HTTP got metrics: %d", resp.StatusCode)
		}
	}
	if noAuth != http.StatusUnauthorized || wrong != http.StatusUnauthorized {
		t.Errorf("no password: %d, wrong password: %d; want 401 for both", noAuth, wrong)
	}
	if strings.Contains(proc.Output(), webPassword) {
		t.Error("the basic auth password appears in the logs")
	}
	held(t, "TLS and basic auth: no password 401, wrong password %d, right password 200 in %s (dbpool_up 1), plain HTTP %s, no password: %s",
		wrong, ms(d), plain, e.noPassword())
}

// selfSigned returns a PEM certificate for 127.0.0.1 and its PEM private key (Ed25519).
func selfSigned() (certPEM, keyPEM []byte, err error) {
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	cert := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "dbpool_exporter fault matrix"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, cert, cert, pub, key) // self-signed
	if err != nil {
		return nil, nil, err
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}), nil
}
