package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"html"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dbpool/dbpool_exporter/internal/advice"
	"github.com/dbpool/dbpool_exporter/internal/health"
	"github.com/dbpool/dbpool_exporter/internal/metrics"
	"github.com/dbpool/dbpool_exporter/tools/testbin"
)

// TestAppHoldsFailuresAndLeaks: what the application did with its connections, through the
// real loadapp.py (SQLAlchemy 2.0, psycopg2) and the exporter binary: the hold time that the
// application spent, a connection leaked idle in a transaction with leak detection on, found
// with its file and line, and checkouts that fail to connect while PostgreSQL is stopped,
// counted as such rather than hidden among fast checkouts.
func TestAppHoldsFailuresAndLeaks(t *testing.T) {
	exporterBin := testbin.Exporter(t)
	dir := t.TempDir()
	pg, monitorPW, appPW := appDatabase(t)
	dsn := fmt.Sprintf("postgresql+psycopg2://app:%s@127.0.0.1:%d/postgres", appPW, pg.Port)
	// No background load: every checkout is the test's own. Connections held longer than 1 s
	// are leaks (HikariCP's leakDetectionThreshold, turned on without a code change).
	held := startLoadAppEnv(t, dir, "loadapp-leaky", []string{"DBPOOL_STATS_LEAK_THRESHOLD=1"}, "--dsn", dsn, "--name", "api",
		"--pool-size", "2", "--max-overflow", "1", "--pool-timeout", "1", "--concurrency", "0", "--application-name", "api-leaky")
	cfg := filepath.Join(dir, "exporter.yml")
	writeFile(t, cfg, fmt.Sprintf(`targets:
  - {name: main, dsn: %q}
pools:
  - {name: api, match: {application_name: api-leaky}, pool_size: 2, max_overflow: 1, timeout: 1s}
apps:
  - {name: leaky, url: %q, pool: api}
`, pg.DSN("dbpool_monitor", monitorPW, "postgres"), held.url))
	_, addr := startServer(t, dir, "exporter", exporterBin, nil, "/metrics", func(addr string) []string {
		// A short window: the history's first slot (window/720) holds no increase, and the
		// test's scrapes must fall in the slots after it.
		return []string{"--web.listen-address=" + addr, "--config.file=" + cfg, "--health.sample-interval=0", "--health.window=1m"}
	})
	app := map[string]string{"pool": "api", "source": "app"}
	reason := func(r string) map[string]string {
		return map[string]string{"pool": "api", "source": "app", "reason": r}
	}
	site := leakSite(t)

	s0, _ := scrapeExporter(t, addr)
	if got := s0.must(t, "dbpool_leaked_connections", app); got != 0 {
		t.Fatalf("leaked connections %v before anything was held", got)
	}
	_, holds0 := s0.histogram(t, "dbpool_connection_use_duration_seconds", app)
	holdSum0 := s0.histogramSum(t, "dbpool_connection_use_duration_seconds", app)

	t.Run("a connection left idle in a transaction is a leak, with its file and line", func(t *testing.T) {
		// The seed's "Bad" example: a session whose transaction is never ended holds its
		// connection (loadapp's /hold checks out and runs SELECT 1, SQLAlchemy 2.0 begins a
		// transaction, and nothing ends it).
		holdStart := time.Now()
		held.post(t, "/hold?n=2")
		holdEnd := time.Now()
		time.Sleep(1500 * time.Millisecond) // past the 1 s threshold
		s, _ := scrapeExporter(t, addr)
		t.Logf("leaked %v, longest use %v s, idle in transaction (server) %v",
			s.must(t, "dbpool_leaked_connections", app), s.must(t, "dbpool_longest_connection_use_seconds", app),
			s.must(t, "dbpool_connections", map[string]string{"pool": "api", "source": "activity", "state": "idle in transaction"}))
		if got := s.must(t, "dbpool_leaked_connections", app); got != 2 {
			t.Errorf("leaked connections %v, want the 2 held for 1.5 s", got)
		}
		if got := s.must(t, "dbpool_process_leaked_connections", app); got != 2 {
			t.Errorf("the process's leaked connections %v, want 2", got)
		}
		if got, atLeast := s.must(t, "dbpool_longest_connection_use_seconds", app), time.Since(holdEnd).Seconds()-1; got < 1.5 || got < atLeast {
			t.Errorf("longest connection use %v s, want at least %.1f", got, atLeast)
		}
		if got := s.must(t, "dbpool_connections", map[string]string{"pool": "api", "source": "activity", "state": "idle in transaction"}); got != 2 {
			t.Errorf("the server sees %v sessions idle in transaction, want the 2 leaked", got)
		}
		// Where: the report of the pool (this scrape fed it) names the file and line of the
		// checkout, beside the server's idle-in-transaction finding; so does the page.
		r := poolReport(t, addr, "api")
		l := r.Health.Leaks
		if l == nil || l.Count != 2 || len(l.Sites) != 1 {
			t.Fatalf("/api/v1/pools: leaks %+v, want 2 from one place", l)
		}
		t.Logf("/api/v1/pools: leaks %+v; state %s %v", *l, r.State, r.StateReasons)
		if got := l.Sites[0]; got.File != site.file || got.Line != site.line || got.Function != site.function || got.Count != 2 || got.OldestSeconds < 1 {
			t.Errorf("leak site %+v, want 2 connections held over 1 s from %s:%d in %s", got, site.file, site.line, site.function)
		}
		for _, rule := range []string{advice.RuleConnectionLeak, advice.RuleIdleInTransaction} {
			if !slices.ContainsFunc(r.Health.Warnings, func(f advice.Finding) bool { return f.Rule == rule }) {
				t.Errorf("no %s warning: %+v", rule, r.Health.Warnings)
			}
		}
		code, page, err := httpGet("http://" + addr + "/pools")
		if err != nil || code != 200 {
			t.Fatalf("GET /pools: %d %v", code, err)
		}
		for _, want := range []string{"Leaked connections", html.EscapeString(fmt.Sprintf("%s:%d", site.file, site.line)), html.EscapeString(site.function)} {
			if !strings.Contains(string(page), want) {
				t.Errorf("/pools lacks %q", want)
			}
		}
		releaseStart := time.Now()
		held.post(t, "/release")
		releaseEnd := time.Now()

		// The hold time is what the application spent: two holds, each from within the
		// /hold call until within the /release call.
		s, _ = scrapeExporter(t, addr)
		_, holds := s.histogram(t, "dbpool_connection_use_duration_seconds", app)
		holdSum := s.histogramSum(t, "dbpool_connection_use_duration_seconds", app) - holdSum0
		lo, hi := 2*releaseStart.Sub(holdEnd).Seconds(), 2*releaseEnd.Sub(holdStart).Seconds()
		t.Logf("holds %d, hold time %.3f s; the test held 2 connections for %.3f to %.3f s in all", holds-holds0, holdSum, lo, hi)
		if holds-holds0 != 2 {
			t.Errorf("%d holds counted, the application made 2", holds-holds0)
		}
		if holdSum < lo || holdSum > hi {
			t.Errorf("hold time %.3f s is outside what the application did: %.3f to %.3f s", holdSum, lo, hi)
		}
		if got := s.must(t, "dbpool_process_connection_use_duration_seconds", app); got != float64(holds) {
			t.Errorf("the process's holds %v, the pool's %d", got, holds)
		}
		if got := s.must(t, "dbpool_leaked_connections", app); got != 0 {
			t.Errorf("leaked connections %v after the release", got)
		}
	})

	t.Run("checkouts that fail to connect while PostgreSQL is stopped", func(t *testing.T) {
		before := held.truth(t)
		s0, _ := scrapeExporter(t, addr)
		if err := pg.Stop(); err != nil {
			t.Fatal(err)
		}
		const attempts = 3
		for range attempts {
			if code, body := held.postStatus(t, "/hold?n=1"); code != 503 || !strings.Contains(body, "OperationalError") {
				t.Fatalf("a checkout with PostgreSQL stopped: HTTP %d %s", code, body)
			}
		}
		after := held.truth(t)
		s1, elapsed := scrapeExporter(t, addr)
		delta := func(name string, labels map[string]string) float64 {
			return s1.must(t, name, labels) - s0.must(t, name, labels)
		}
		_, c0 := s0.histogram(t, "dbpool_checkout_duration_seconds", app)
		_, c1 := s1.histogram(t, "dbpool_checkout_duration_seconds", app)
		made := after.CheckoutsAttempted - before.CheckoutsAttempted
		t.Logf("scrape in %v; the application made %d checkouts; exporter: %d checkouts, failures connect %v, timeout %v, cancelled %v, other %v, failed opens %v",
			elapsed, made, c1-c0, delta("dbpool_checkout_failures_total", reason("connect")), delta("dbpool_checkout_failures_total", reason("timeout")),
			delta("dbpool_checkout_failures_total", reason("cancelled")), delta("dbpool_checkout_failures_total", reason("other")),
			delta("dbpool_connection_open_failures_total", app))
		if made != attempts || c1-c0 != attempts {
			t.Errorf("the application made %d checkouts, the exporter counted %d; want %d", made, c1-c0, attempts)
		}
		if got := delta("dbpool_checkout_failures_total", reason("connect")); got != attempts {
			t.Errorf("dbpool_checkout_failures_total{reason=connect} grew by %v, want every one of the %d failed checkouts", got, attempts)
		}
		for _, r := range []string{"timeout", "cancelled", "other"} {
			if got := delta("dbpool_checkout_failures_total", reason(r)); got != 0 {
				t.Errorf("dbpool_checkout_failures_total{reason=%s} grew by %v: the checkouts failed to connect", r, got)
			}
		}
		if got := delta("dbpool_connection_open_failures_total", app); got != attempts {
			t.Errorf("dbpool_connection_open_failures_total grew by %v, want %d", got, attempts)
		}
		if got := s1.must(t, "dbpool_up", map[string]string{"target": "main"}); got != 0 {
			t.Errorf("dbpool_up %v with the server stopped", got)
		}
		// The pool's report says so too, rather than showing only the fast average checkout.
		r := poolReport(t, addr, "api")
		if got := r.Window.Failures[metrics.FailureConnect]; got != attempts {
			t.Errorf("/api/v1/pools: window failures %v, want %d to connect", r.Window.Failures, attempts)
		}
		i := slices.IndexFunc(r.Health.Warnings, func(f advice.Finding) bool { return f.Rule == advice.RuleCheckoutFailures })
		if i < 0 {
			t.Fatalf("no checkout_failures warning: %+v", r.Health.Warnings)
		}
		t.Logf("/api/v1/pools: state %s %v, window failures %v, average checkout %v s; %s: %s",
			r.State, r.StateReasons, r.Window.Failures, deref(r.Window.AvgCheckoutSeconds), r.Health.Warnings[i].Rule, r.Health.Warnings[i].Message)
		if _, page, _ := httpGet("http://" + addr + "/pools"); !strings.Contains(string(page), fmt.Sprintf(`data-key="window.failures.connect" data-value="%d">%d</span> connect`, attempts, attempts)) {
			t.Errorf("/pools does not show the failed checkouts beside the average checkout")
		}
	})
}

// poolReport is the report of pool in the exporter's /api/v1/pools.
func poolReport(t *testing.T, addr, pool string) health.Report {
	t.Helper()
	code, body, err := httpGet("http://" + addr + "/api/v1/pools")
	if err != nil || code != 200 {
		t.Fatalf("GET /api/v1/pools: %d %v", code, err)
	}
	var answer health.PoolsResponse
	if err := json.Unmarshal(body, &answer); err != nil {
		t.Fatalf("/api/v1/pools: %v", err)
	}
	for _, r := range answer.Pools {
		if r.Pool == pool {
			return r
		}
	}
	t.Fatalf("/api/v1/pools has no pool %q:\n%s", pool, body)
	return health.Report{}
}

func deref[T any](p *T) any {
	if p == nil {
		return nil
	}
	return *p
}

// leakSite is where loadapp.py's synchronous /hold checks out its connections: the first
// frame of the application above SQLAlchemy, as the integration reports it.
type leakSiteWant struct {
	file     string
	line     int
	function string
}

func leakSite(t *testing.T) leakSiteWant {
	t.Helper()
	file := filepath.Join(testbin.RepoRoot(), "integrations", "python", "examples", "loadapp.py")
	inSync := false
	n := lineOf(t, file, func(line string) bool {
		inSync = inSync || strings.HasPrefix(line, "class SyncApp")
		return inSync && strings.TrimSpace(line) == "c = self.engine.connect()"
	})
	return leakSiteWant{file: file, line: n, function: "SyncApp.hold.<locals>.holder"}
}

// lineOf returns the number of the first line of file that match accepts (called on each line
// in turn), failing the test when there is none.
func lineOf(t *testing.T, file string, match func(line string) bool) int {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		if match(sc.Text()) {
			return n
		}
	}
	t.Fatalf("%s: no such line", file)
	return 0
}
