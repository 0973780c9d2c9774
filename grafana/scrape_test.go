package grafana

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/dbpool/dbpool_exporter/tools/childproc"
	"github.com/dbpool/dbpool_exporter/tools/pgtest"
	"github.com/dbpool/dbpool_exporter/tools/pythonenv"
	"github.com/dbpool/dbpool_exporter/tools/testbin"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testbin.Cleanup()
	os.Exit(code)
}

// series describes one metric name as the exporter exposes it.
type series struct {
	Type   dto.MetricType
	Labels map[string]bool // label names seen on any sample
}

// counterLike reports whether rate() and increase() make sense on the series: counters and
// the _bucket/_sum/_count series of histograms and summaries.
func (s series) counterLike(name string) bool {
	switch s.Type {
	case dto.MetricType_COUNTER:
		return true
	case dto.MetricType_HISTOGRAM, dto.MetricType_SUMMARY:
		return strings.HasSuffix(name, "_bucket") || strings.HasSuffix(name, "_sum") || strings.HasSuffix(name, "_count")
	}
	return false
}

// parseExposition turns a /metrics answer into series by name. A histogram h also yields
// h_bucket, h_sum and h_count (with le on _bucket), a summary h_sum and h_count: those are
// the names PromQL sees.
func parseExposition(body []byte) (map[string]series, error) {
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	out := map[string]series{}
	for name, mf := range families {
		labels := map[string]bool{}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = true
			}
		}
		switch mf.GetType() {
		case dto.MetricType_HISTOGRAM:
			withLE := map[string]bool{"le": true}
			for l := range labels {
				withLE[l] = true
			}
			out[name+"_bucket"] = series{Type: mf.GetType(), Labels: withLE}
			out[name+"_sum"] = series{Type: mf.GetType(), Labels: labels}
			out[name+"_count"] = series{Type: mf.GetType(), Labels: labels}
		case dto.MetricType_SUMMARY:
			out[name+"_sum"] = series{Type: mf.GetType(), Labels: labels}
			out[name+"_count"] = series{Type: mf.GetType(), Labels: labels}
			withQ := map[string]bool{"quantile": true}
			for l := range labels {
				withQ[l] = true
			}
			out[name] = series{Type: mf.GetType(), Labels: withQ}
		default:
			out[name] = series{Type: mf.GetType(), Labels: labels}
		}
	}
	return out, nil
}

// exportedSeries runs the real exporter against a real PostgreSQL, a PgBouncer and a Python
// application that reports its own SQLAlchemy pool, and returns
// what it exports and the exporter's address (it runs until the test ends). want names the series the caller needs: the exporter is scraped until
// they all appear (some only exist after the pool history has a few samples) or until a
// deadline, after which the caller reports the missing ones.
func exportedSeries(t *testing.T, want []string) (map[string]series, string) {
	t.Helper()
	bin := testbin.Exporter(t)
	pg := pgtest.StartT(t, pgtest.Options{})
	const monitorPassword = "Grafana-Monitor-4711"
	const appPassword = "Grafana-App-4712"
	if err := pg.CreateRole("monitor", monitorPassword, false, "pg_monitor"); err != nil {
		t.Fatal(err)
	}
	if err := pg.CreateRole("app", appPassword, false); err != nil {
		t.Fatal(err)
	}
	bouncer := pgtest.StartPgBouncerT(t, pg, pgtest.PgBouncerOptions{DefaultPoolSize: 3})

	ctx := context.Background()

	// Traffic through PgBouncer, so that it has a pool (SHOW POOLS lists a database/user
	// pair only once a client used it) and server connections for the activity collector.
	// The connection stays open, with a query every scrape, until the test ends.
	cfg, err := pgx.ParseConfig(bouncer.DSN("app", appPassword, ""))
	if err != nil {
		t.Fatal(err)
	}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	app, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("connect through PgBouncer: %v", err)
	}
	t.Cleanup(func() { _ = app.Close(context.Background()) })
	// One query; pgx.Conn is not safe for concurrent use, and only one goroutine at a time
	// calls this.
	query := func() error {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		_, err := app.Exec(ctx, "SELECT 1")
		return err
	}
	for i := 0; i < 5; i++ {
		if err := query(); err != nil {
			t.Fatalf("query through PgBouncer: %v", err)
		}
	}

	appURL := startLoadApp(t, fmt.Sprintf("postgresql+psycopg://app:%s@127.0.0.1:%d/postgres", appPassword, pg.Port))

	// The deadline includes the start.
	deadline := time.Now().Add(scrapeDeadline)
	exporter, addr := testbin.StartServer(t, testbin.ServerSpec{
		Spec: childproc.Spec{Name: "exporter", Path: bin, Env: cleanEnv()},
		Args: func(addr string) []string {
			return []string{
				"--web.listen-address=" + addr,
				"--pg.dsn=" + pg.DSN("monitor", monitorPassword, "postgres"),
				"--pgbouncer.dsn=" + bouncer.AdminDSN(),
				"--pool.application-name=loadapp",
				"--app.url=" + appURL,
				// A short window and sample interval so that the pool history behind
				// dbpool_recommended_* fills within seconds.
				"--health.window=20s",
				"--health.sample-interval=1s",
			}
		},
		ReadyPath: "/metrics",
		Timeout:   scrapeDeadline,
	})

	var (
		got  map[string]series
		body []byte
	)
	for {
		if err := query(); err != nil {
			t.Fatalf("query through PgBouncer: %v", err)
		}
		body, err = httpGet("http://" + addr + "/metrics")
		if err == nil {
			got, err = parseExposition(body)
			if err != nil {
				t.Fatalf("parse /metrics: %v\n%s", err, body)
			}
			if len(missing(want, got)) == 0 {
				break
			}
		}
		if time.Now().After(deadline) {
			if got == nil {
				t.Fatalf("no /metrics answer from the exporter: %v; logs:\n%s", err, exporter.Output())
			}
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if m := missing(want, got); len(m) > 0 {
		var names []string
		for n := range got {
			names = append(names, n)
		}
		sort.Strings(names)
		t.Logf("still missing after %s: %s; the exporter exported: %s",
			scrapeDeadline, strings.Join(m, ", "), strings.Join(names, " "))
	}
	// Keep some traffic going while the caller works with the exporter.
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				_ = query()
			}
		}
	}()
	t.Cleanup(func() { close(done); <-stopped })
	return got, addr
}

// startLoadApp runs integrations/python's loadapp.py, a real SQLAlchemy application that
// reports its pool itself (the app source): a pool of 1 with a 0.1 s timeout under three
// callers, so that its checkout histogram and timeout counter move all the time. Leak
// detection is on (at 60 s, far above its 0.05 s holds), so that dbpool_leaked_connections is
// exported, at 0. It returns the application's dbpool-stats URL.
func startLoadApp(t *testing.T, dsn string) string {
	t.Helper()
	script := filepath.Join(testbin.RepoRoot(), "integrations", "python", "examples", "loadapp.py")
	p := testbin.StartProcess(t, childproc.Spec{
		Name: "loadapp.py",
		Path: testbin.Python(t, pythonenv.SA20),
		Args: []string{"-u", script, "--dsn", dsn, "--name", "default",
			"--pool-size", "1", "--max-overflow", "0", "--pool-timeout", "0.1",
			"--concurrency", "3", "--query-seconds", "0.05", "--application-name", "loadapp"},
		Env: append(cleanEnv(), "DBPOOL_STATS_LEAK_THRESHOLD=60"),
	})
	m, err := p.WaitMatch(context.Background(), 30*time.Second, regexp.MustCompile(`listening on (http://\S+/dbpool)`))
	if err != nil {
		t.Fatalf("loadapp.py did not start serving (the SQLAlchemy 2.0 environment: make deps): %v", err)
	}
	return m[1]
}

// scrapeDeadline bounds the wait for all wanted series. The slowest are dbpool_recommended_*,
// which need a tenth of --health.window of history (2s here).
const scrapeDeadline = 45 * time.Second

func missing(want []string, got map[string]series) []string {
	var out []string
	for _, n := range want {
		if _, ok := got[n]; !ok {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

func httpGet(url string) ([]byte, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return io.ReadAll(resp.Body)
}

// cleanEnv is the environment without DB_* settings and DSNs of the developer's shell, so
// that the exporter sees only the flags of the test.
func cleanEnv() []string { return childproc.Environ("DB_", "DATA_SOURCE_NAME=", "PGBOUNCER_DSN=") }

func TestParseExposition(t *testing.T) {
	const text = `# TYPE c_total counter
c_total{target="a",pool="p"} 3
# TYPE g gauge
g{target="a"} 1
g{target="b",state="idle"} 2
# TYPE h histogram
h_bucket{target="a",le="1"} 1
h_bucket{target="a",le="+Inf"} 2
h_sum{target="a"} 0.5
h_count{target="a"} 2
# TYPE s summary
s{quantile="0.5"} 1
s_sum 3
s_count 2
`
	got, err := parseExposition([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	labels := func(s series) string {
		var ls []string
		for l := range s.Labels {
			ls = append(ls, l)
		}
		sort.Strings(ls)
		return strings.Join(ls, ",")
	}
	for _, tc := range []struct {
		name, labels string
		counterLike  bool
	}{
		{"c_total", "pool,target", true},
		{"g", "state,target", false},
		{"h_bucket", "le,target", true},
		{"h_sum", "target", true},
		{"h_count", "target", true},
		{"s", "quantile", false},
		{"s_sum", "", true},
		{"s_count", "", true},
	} {
		s, ok := got[tc.name]
		if !ok {
			t.Errorf("%s missing", tc.name)
			continue
		}
		if l := labels(s); l != tc.labels {
			t.Errorf("%s: labels %q, want %q", tc.name, l, tc.labels)
		}
		if s.counterLike(tc.name) != tc.counterLike {
			t.Errorf("%s: counterLike %v, want %v", tc.name, !tc.counterLike, tc.counterLike)
		}
	}
	if _, ok := got["h"]; ok {
		t.Error("a histogram's own name is not a series PromQL can select")
	}
	if len(got) != 8 {
		t.Errorf("got %d names, want 8", len(got))
	}
	if _, err := parseExposition([]byte("# TYPE x counter\nx{ 1\n")); err == nil {
		t.Error("broken exposition parsed")
	}
}
