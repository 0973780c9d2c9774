package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/dbpool/dbpool_exporter/tools/pgtest"
	"github.com/dbpool/dbpool_exporter/tools/pythonenv"
	"github.com/dbpool/dbpool_exporter/tools/testbin"
)

// The app source end to end: a real SQLAlchemy application (integrations/python's loadapp.py
// on the pinned SQLAlchemy 2.0 environment), a real PostgreSQL, and the exporter binary
// reading the application's dbpool-stats endpoint on every scrape.

var listeningRe = regexp.MustCompile(`listening on (http://\S+/dbpool)`)

// loadApp is a running loadapp.py.
type loadApp struct {
	*process
	url  string // its dbpool-stats endpoint
	base string // scheme://host:port
}

func startLoadApp(t *testing.T, dir, name string, args ...string) *loadApp {
	t.Helper()
	return startLoadAppEnv(t, dir, name, nil, args...)
}

// startLoadAppEnv is startLoadApp with environment variables, e.g. DBPOOL_STATS_*.
func startLoadAppEnv(t *testing.T, dir, name string, env []string, args ...string) *loadApp {
	t.Helper()
	script := filepath.Join(testbin.RepoRoot(), "integrations", "python", "examples", "loadapp.py")
	python := testbin.Python(t, pythonenv.SA20)
	p := startProcess(t, dir, name, python, env, append([]string{"-u", script}, args...)...)
	m, err := p.WaitMatch(context.Background(), 30*time.Second, listeningRe)
	if err != nil {
		t.Fatal(err)
	}
	return &loadApp{process: p, url: m[1], base: strings.TrimSuffix(m[1], "/dbpool")}
}

// withBasicAuth puts scraper:password into an http URL.
func withBasicAuth(u, password string) string {
	return strings.Replace(u, "http://", "http://scraper:"+password+"@", 1)
}

// appTruth is what loadapp.py measures directly on its SQLAlchemy pool (/truth).
type appTruth struct {
	CheckedOut         int `json:"checked_out"`
	Overflow           int `json:"overflow"` // pool.overflow(): negative below pool_size
	CheckedIn          int `json:"checked_in"`
	TimeoutsSeen       int `json:"timeouts_seen"`
	CheckoutsAttempted int `json:"checkouts_attempted"`
	Held               int `json:"held"`
}

func (a *loadApp) truth(t *testing.T) appTruth {
	t.Helper()
	code, body, err := httpGet(a.base + "/truth")
	if err != nil || code != 200 {
		t.Fatalf("GET /truth: %d %v %s", code, err, body)
	}
	var tr appTruth
	if err := json.Unmarshal(body, &tr); err != nil {
		t.Fatalf("/truth: %v: %s", err, body)
	}
	return tr
}

func (a *loadApp) post(t *testing.T, path string) {
	t.Helper()
	if code, body := a.postStatus(t, path); code != 200 {
		t.Fatalf("POST %s: HTTP %d %s", path, code, body)
	}
}

func (a *loadApp) postStatus(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := http.Post(a.base+path, "text/plain", nil)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	return resp.StatusCode, b.String()
}

// exporterScrape is one scrape of the exporter's /metrics.
type exporterScrape map[string]*dto.MetricFamily

func scrapeExporter(t *testing.T, addr string) (exporterScrape, time.Duration) {
	t.Helper()
	// As Prometheus does, the scrape announces its timeout, below the client's: without it the
	// exporter takes up to --scrape.max-timeout (10 s) when an app endpoint hangs (a worker
	// being replaced), and the client would give up first.
	req, err := http.NewRequest(http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Prometheus-Scrape-Timeout-Seconds", strconv.FormatFloat((httpClient.Timeout-time.Second).Seconds(), 'f', -1, 64))
	start := time.Now()
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	elapsed := time.Since(start)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("scrape: %d %v", resp.StatusCode, err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("parse scrape: %v", err)
	}
	return mfs, elapsed
}

// value is the value of the series of name whose labels include want (a histogram's count);
// ok is false when there is none.
func (s exporterScrape) value(name string, want map[string]string) (float64, bool) {
	return testbin.SeriesValue(s, name, want)
}

func (s exporterScrape) must(t *testing.T, name string, want map[string]string) float64 {
	t.Helper()
	v, ok := s.value(name, want)
	if !ok {
		t.Fatalf("no series %s%v", name, want)
	}
	return v
}

// histogram returns the cumulative buckets and count of the histogram series of name.
func (s exporterScrape) histogram(t *testing.T, name string, want map[string]string) (map[float64]uint64, uint64) {
	t.Helper()
	h := s.findHistogram(t, name, want)
	out := map[float64]uint64{}
	for _, b := range h.GetBucket() {
		out[b.GetUpperBound()] = b.GetCumulativeCount()
	}
	return out, h.GetSampleCount()
}

// histogramSum returns the sum of the histogram series of name.
func (s exporterScrape) histogramSum(t *testing.T, name string, want map[string]string) float64 {
	t.Helper()
	return s.findHistogram(t, name, want).GetSampleSum()
}

func (s exporterScrape) findHistogram(t *testing.T, name string, want map[string]string) *dto.Histogram {
	t.Helper()
	for _, m := range s[name].GetMetric() {
		match := true
		for _, l := range m.GetLabel() {
			if v, ok := want[l.GetName()]; ok && v != l.GetValue() {
				match = false
			}
		}
		if h := m.GetHistogram(); match && h != nil {
			return h
		}
	}
	t.Fatalf("no histogram %s%v", name, want)
	return nil
}

// appDatabase starts a throwaway PostgreSQL with the exporter's role dbpool_monitor and the
// applications' role app, each with a random password.
func appDatabase(t *testing.T) (pg *pgtest.Postgres, monitorPW, appPW string) {
	t.Helper()
	pg = pgtest.StartT(t, pgtest.Options{})
	monitorPW, appPW = randomPassword(t), randomPassword(t)
	if err := pg.CreateRole("dbpool_monitor", monitorPW, false, "pg_monitor"); err != nil {
		t.Fatal(err)
	}
	if err := pg.CreateRole("app", appPW, false); err != nil {
		t.Fatal(err)
	}
	return pg, monitorPW, appPW
}

func TestAppSourceEndToEnd(t *testing.T) {
	exporterBin := testbin.Exporter(t)
	dir := t.TempDir()
	pg, monitorPW, appPW := appDatabase(t)
	// Basic-auth credentials in two of the app URLs (loadapp ignores them): the password must
	// show nowhere either.
	appURLPW := randomPassword(t)
	dsn := func(driver string) string {
		return fmt.Sprintf("postgresql+%s://app:%s@127.0.0.1:%d/postgres", driver, appPW, pg.Port)
	}

	// held: an async (asyncpg) engine whose connections the test checks out itself; pool 3 + 2.
	held := startLoadApp(t, dir, "loadapp-held", "--dsn", dsn("asyncpg"), "--async", "--name", "api",
		"--pool-size", "3", "--max-overflow", "2", "--pool-timeout", "1", "--concurrency", "0",
		"--application-name", "api-held")
	// busy: a sync pool of 1 with no overflow and a 0.2 s timeout, under 6 callers holding a
	// connection for 0.1 s each: checkouts time out all the time.
	busy := startLoadApp(t, dir, "loadapp-busy", "--dsn", dsn("psycopg2"), "--name", "jobs",
		"--pool-size", "1", "--max-overflow", "0", "--pool-timeout", "0.2", "--concurrency", "6",
		"--query-seconds", "0.1", "--application-name", "jobs-0")
	// workers: three forked worker processes behind one endpoint, each its own instance, on
	// psycopg 3 (the other sync app is on psycopg2).
	workers := startLoadApp(t, dir, "loadapp-workers", "--dsn", dsn("psycopg"), "--name", "web",
		"--pool-size", "2", "--max-overflow", "1", "--workers", "3", "--concurrency", "1",
		"--query-seconds", "0.02", "--think-seconds", "0.05", "--application-name", "web")

	cfg := filepath.Join(dir, "exporter.yml")
	writeFile(t, cfg, fmt.Sprintf(`targets:
  - name: main
    dsn: %q
pools:
  - {name: api, match: {application_name: api-held}, pool_size: 3, max_overflow: 2, timeout: 1s}
  - {name: jobs, match: {application_name: jobs-0}, pool_size: 1, max_overflow: 0, timeout: 0.2}
  - {name: web, match: {application_name: web}, pool_size: 2, max_overflow: 1, instances: 3}
apps:
  - {name: held, url: %q, pool: api}
  - {name: busy, url: %q, pool: jobs}
  - {name: workers, url: %q, pool: web}
`, pg.DSN("dbpool_monitor", monitorPW, "postgres"), withBasicAuth(held.url, appURLPW), withBasicAuth(busy.url, appURLPW), workers.url))
	exporter, addr := startServer(t, dir, "exporter", exporterBin, nil, "/metrics", func(addr string) []string {
		return []string{"--web.listen-address=" + addr, "--config.file=" + cfg, "--health.sample-interval=0"}
	})

	app := func(pool string) map[string]string { return map[string]string{"pool": pool, "source": "app"} }
	activity := func(pool string) map[string]string { return map[string]string{"pool": pool, "source": "activity"} }

	t.Run("in use and overflow equal SQLAlchemy's own", func(t *testing.T) {
		held.post(t, "/hold?n=4") // 3 from the pool and 1 overflow
		truth := held.truth(t)
		s, _ := scrapeExporter(t, addr)
		after := held.truth(t)
		if truth != after || truth.CheckedOut != 4 {
			t.Fatalf("the held pool changed during the scrape or holds the wrong count: %+v then %+v", truth, after)
		}
		t.Logf("SQLAlchemy: checkedout() %d, overflow() %d; exporter: in use %v (app) / %v (activity), overflow %v, open %v (activity)",
			truth.CheckedOut, truth.Overflow, s.must(t, "dbpool_in_use_connections", app("api")), s.must(t, "dbpool_in_use_connections", activity("api")),
			s.must(t, "dbpool_overflow_connections", app("api")), s.must(t, "dbpool_open_connections", activity("api")))
		if got := s.must(t, "dbpool_in_use_connections", app("api")); got != float64(truth.CheckedOut) {
			t.Errorf("exporter in use %v, SQLAlchemy checkedout() %d", got, truth.CheckedOut)
		}
		if got, want := s.must(t, "dbpool_overflow_connections", app("api")), max(0, truth.Overflow); got != float64(want) {
			t.Errorf("exporter overflow %v, SQLAlchemy overflow() %d (max 0, that)", got, truth.Overflow)
		}
		if got := s.must(t, "dbpool_utilization_ratio", app("api")); got != 0.8 {
			t.Errorf("utilization %v, want 4/5", got)
		}
		// The same pool from the server: 4 connections, but none in a transaction, so the
		// estimate of in-use is the lower bound 0. Both views stand side by side.
		if got := s.must(t, "dbpool_open_connections", activity("api")); got != 4 {
			t.Errorf("activity sees %v open connections, want 4", got)
		}
		if got := s.must(t, "dbpool_in_use_connections", activity("api")); got > 4 {
			t.Errorf("activity in use %v is above the exact 4", got)
		}
		held.post(t, "/release")
		truth = held.truth(t)
		s, _ = scrapeExporter(t, addr)
		if got := s.must(t, "dbpool_in_use_connections", app("api")); got != float64(truth.CheckedOut) || truth.CheckedOut != 0 {
			t.Errorf("after release: exporter in use %v, SQLAlchemy %d", got, truth.CheckedOut)
		}
	})

	t.Run("checkouts and timeouts equal the callers' own counts exactly", func(t *testing.T) {
		// No background load on this pool: every checkout is the test's own.
		s0, _ := scrapeExporter(t, addr)
		t0 := held.truth(t)
		held.post(t, "/hold?n=5") // the whole capacity: 3 + 2
		if code, body := held.postStatus(t, "/hold?n=1"); code != 503 || !strings.Contains(body, "TimeoutError") {
			t.Fatalf("a 6th checkout of a full pool should time out after 1 s: HTTP %d %s", code, body)
		}
		held.post(t, "/release")
		t1 := held.truth(t)
		s1, _ := scrapeExporter(t, addr)
		_, c0 := s0.histogram(t, "dbpool_checkout_duration_seconds", app("api"))
		b1, c1 := s1.histogram(t, "dbpool_checkout_duration_seconds", app("api"))
		timeouts := s1.must(t, "dbpool_checkout_timeouts_total", app("api")) - s0.must(t, "dbpool_checkout_timeouts_total", app("api"))
		t.Logf("callers: %d checkouts, %d timeouts; exporter: %d checkouts, %v timeouts",
			t1.CheckoutsAttempted-t0.CheckoutsAttempted, t1.TimeoutsSeen-t0.TimeoutsSeen, c1-c0, timeouts)
		if c1-c0 != uint64(t1.CheckoutsAttempted-t0.CheckoutsAttempted) || c1-c0 != 6 {
			t.Errorf("histogram counted %d checkouts, the callers made %d (want 6)", c1-c0, t1.CheckoutsAttempted-t0.CheckoutsAttempted)
		}
		if timeouts != float64(t1.TimeoutsSeen-t0.TimeoutsSeen) || timeouts != 1 {
			t.Errorf("exporter counted %v timeouts, the callers saw %d (want 1)", timeouts, t1.TimeoutsSeen-t0.TimeoutsSeen)
		}
		// The timeout waited DB_POOL_TIMEOUT (1 s): it is above the 0.5 s bucket and within 2.5 s.
		if b1[2.5]-b1[0.5] < 1 {
			t.Errorf("no checkout between 0.5 s and 2.5 s for the 1 s timeout: %v", b1)
		}
	})

	t.Run("timeouts and checkout histogram match the callers' own counts under load", func(t *testing.T) {
		var s exporterScrape
		var before, after appTruth
		deadline := time.Now().Add(20 * time.Second)
		for {
			before = busy.truth(t)
			s, _ = scrapeExporter(t, addr)
			after = busy.truth(t)
			if v, _ := s.value("dbpool_checkout_timeouts_total", app("jobs")); v >= 5 || time.Now().After(deadline) {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		timeouts := s.must(t, "dbpool_checkout_timeouts_total", app("jobs"))
		if timeouts < 5 {
			t.Fatalf("only %v timeouts after 20 s of 6 callers on a pool of 1", timeouts)
		}
		// The exporter's scrape falls between the two readings of the callers' counters. A
		// checkout is counted by dbpool_stats when it ends and by the caller a moment later
		// (a timeout) or a moment earlier (an attempt): at most the 6 callers are in between.
		const inFlight = 6
		if timeouts < float64(before.TimeoutsSeen) || timeouts > float64(after.TimeoutsSeen+inFlight) {
			t.Errorf("exporter timeouts %v, callers saw %d before and %d after the scrape", timeouts, before.TimeoutsSeen, after.TimeoutsSeen)
		}
		buckets, count := s.histogram(t, "dbpool_checkout_duration_seconds", app("jobs"))
		t.Logf("callers: %d/%d timeouts, %d/%d attempts (before/after); exporter: %v timeouts, %d checkouts in the histogram",
			before.TimeoutsSeen, after.TimeoutsSeen, before.CheckoutsAttempted, after.CheckoutsAttempted, timeouts, count)
		if float64(count) < float64(before.CheckoutsAttempted-inFlight) || count > uint64(after.CheckoutsAttempted) {
			t.Errorf("histogram count %d, callers attempted %d before and %d after the scrape", count, before.CheckoutsAttempted, after.CheckoutsAttempted)
		}
		if checkouts := s.must(t, "dbpool_checkouts_total", app("jobs")); checkouts != float64(count) {
			t.Errorf("dbpool_checkouts_total %v, histogram count %d", checkouts, count)
		}
		// Timeouts waited 0.2 s: none of them is at or below 0.1 s. (How far above 0.2 s they
		// end depends on how busy the machine is, so there is no upper bound to check.)
		if above := count - buckets[0.1]; float64(above) < timeouts-inFlight {
			t.Errorf("%v timeouts of 0.2 s but only %d checkouts above 0.1 s: %v", timeouts, above, buckets)
		}
		if got := s.must(t, "dbpool_checkout_timeout_seconds", app("jobs")); got != 0.2 {
			t.Errorf("checkout timeout %v, want the pool's 0.2", got)
		}
	})

	t.Run("every worker process is an instance", func(t *testing.T) {
		deadline := time.Now().Add(15 * time.Second)
		for {
			s, _ := scrapeExporter(t, addr)
			if n, _ := s.value("dbpool_instances", app("web")); n == 3 {
				if c := s.must(t, "dbpool_max_connections", app("web")); c != 9 {
					t.Errorf("capacity %v, want 3 x (2 + 1)", c)
				}
				if n := len(s["dbpool_process_in_use_connections"].GetMetric()); n != 3+2 { // web's 3 workers, api and jobs one each
					t.Errorf("%d dbpool_process_in_use_connections series, want one per process (5)", n)
				}
				break
			}
			if time.Now().After(deadline) {
				n, _ := s.value("dbpool_instances", app("web"))
				t.Fatalf("dbpool_instances{pool=web,source=app} = %v, want the 3 workers\n%s", n, workers.logTail(20))
			}
			time.Sleep(300 * time.Millisecond)
		}
	})

	t.Run("a killed application fails the app collector, not the scrape", func(t *testing.T) {
		if err := busy.Stop(syscall.SIGKILL, 0); err != nil {
			t.Log(err)
		}
		s, elapsed := scrapeExporter(t, addr)
		t.Logf("scrape after the kill took %v", elapsed)
		if elapsed > 11*time.Second { // --scrape.max-timeout 10s
			t.Errorf("scrape took %v", elapsed)
		}
		if got := s.must(t, "dbpool_scrape_success", map[string]string{"collector": "app"}); got != 0 {
			t.Errorf("app success %v after the busy process was killed", got)
		}
		if _, ok := s.value("dbpool_in_use_connections", app("api")); !ok {
			t.Error("the held application's pool lost its exact series: the other endpoints must still answer")
		}
		if got := s.must(t, "dbpool_up", map[string]string{"target": "main"}); got != 1 {
			t.Errorf("dbpool_up %v: the database is fine", got)
		}
		if _, ok := s.value("dbpool_in_use_connections", app("jobs")); ok {
			t.Error("the killed application's pool still has exact series: they must be absent, not stale")
		}
		if _, ok := s.value("dbpool_in_use_connections", activity("jobs")); !ok {
			t.Error("the activity view of the killed application's pool is gone")
		}
		if log := exporter.Output(); !strings.Contains(log, `msg="app endpoint failed" target=main collector=app app=busy endpoint=`) || strings.Contains(log, appPW) || strings.Contains(log, monitorPW) || strings.Contains(log, appURLPW) {
			t.Errorf("exporter log should name the failed endpoint and no password:\n%s", exporter.logTail(20))
		}
		for _, page := range []string{"/", "/metrics", "/api/v1/pools", "/pools"} {
			code, body, err := httpGet("http://" + addr + page)
			if err != nil || code != 200 {
				t.Errorf("GET %s: %d %v", page, code, err)
			}
			for _, pw := range []string{appPW, monitorPW, appURLPW} {
				if strings.Contains(string(body), pw) {
					t.Errorf("GET %s shows a password", page)
				}
			}
			if page == "/" && !strings.Contains(string(body), "app held") {
				t.Errorf("the landing page does not list the app endpoints:\n%s", body)
			}
		}
	})
}

// TestAppCountersSurviveReload: an application of two processes, each behind its own
// endpoint, where the busy one stops answering. Its last counters stay in the pool's
// counters, and a reload with the same configuration (SIGHUP, then POST /-/reload), which
// rebuilds every target, must not lose them: dbpool_checkouts_total of the pool never falls,
// or Prometheus would read a counter reset.
func TestAppCountersSurviveReload(t *testing.T) {
	exporterBin := testbin.Exporter(t)
	dir := t.TempDir()
	pg, monitorPW, appPW := appDatabase(t)
	dsn := fmt.Sprintf("postgresql+psycopg2://app:%s@127.0.0.1:%d/postgres", appPW, pg.Port)
	// quiet checks out nothing; busy checks out all the time: the pool's checkouts are
	// busy's, so that losing them shows.
	quiet := startLoadApp(t, dir, "loadapp-quiet", "--dsn", dsn, "--name", "api", "--pool-size", "2", "--concurrency", "0",
		"--application-name", "api-quiet")
	busy := startLoadApp(t, dir, "loadapp-busy", "--dsn", dsn, "--name", "api", "--pool-size", "2", "--concurrency", "2",
		"--query-seconds", "0.005", "--application-name", "api-busy")
	cfg := filepath.Join(dir, "exporter.yml")
	writeFile(t, cfg, fmt.Sprintf(`targets:
  - {name: main, dsn: %q}
pools:
  - {name: api, match: {application_name_regex: "api-.*"}, pool_size: 2, max_overflow: 0, instances: 2}
apps:
  - {name: quiet, url: %q, pool: api}
  - {name: busy, url: %q, pool: api}
`, pg.DSN("dbpool_monitor", monitorPW, "postgres"), quiet.url, busy.url))
	exporter, addr := startServer(t, dir, "exporter", exporterBin, nil, "/metrics", func(addr string) []string {
		return []string{"--web.listen-address=" + addr, "--config.file=" + cfg, "--health.sample-interval=0"}
	})

	api := map[string]string{"pool": "api", "source": "app"}
	checkouts := func(want string) float64 {
		t.Helper()
		s, _ := scrapeExporter(t, addr)
		n := s.must(t, "dbpool_checkouts_total", api)
		instances, _ := s.value("dbpool_instances", api)
		t.Logf("%s: dbpool_checkouts_total %v from %v instances", want, n, instances)
		return n
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		s, _ := scrapeExporter(t, addr)
		if n, _ := s.value("dbpool_instances", api); n == 2 && s.must(t, "dbpool_checkouts_total", api) >= 50 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the two processes did not both report 50 checkouts within 20 s\n%s", busy.logTail(20))
		}
		time.Sleep(200 * time.Millisecond)
	}
	before := checkouts("both processes answer")

	if err := busy.Stop(syscall.SIGKILL, 0); err != nil {
		t.Log(err)
	}
	afterStop := checkouts("busy stopped answering")
	reloads := strings.Count(exporter.Output(), "configuration reloaded")
	if err := syscall.Kill(exporter.Pid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the exporter to reload on SIGHUP", func() {}, func() string {
		if strings.Count(exporter.Output(), "configuration reloaded") > reloads {
			return ""
		}
		return "no \"configuration reloaded\" in its log yet"
	})
	afterSIGHUP := checkouts("after SIGHUP")
	resp, err := http.Post("http://"+addr+"/-/reload", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST /-/reload: HTTP %d", resp.StatusCode)
	}
	afterPost := checkouts("after POST /-/reload")

	prev := before
	for _, step := range []struct {
		name string
		n    float64
	}{{"after busy stopped answering", afterStop}, {"after SIGHUP", afterSIGHUP}, {"after POST /-/reload", afterPost}} {
		if step.n < prev {
			t.Errorf("dbpool_checkouts_total{pool=api,source=app} fell from %v to %v %s", prev, step.n, step.name)
		}
		prev = step.n
	}
}
