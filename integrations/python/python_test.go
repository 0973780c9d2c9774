// Package python_test runs the dbpool_stats Python package's tests (integrations/python/tests)
// and the example application examples/loadapp.py against a real, throw-away PostgreSQL.
//
// They run on both pinned Python environments that `make deps` builds (tools/pythonenv):
// SQLAlchemy 2.0 and 1.4, each with asyncpg and its psycopg driver. A missing environment
// fails the tests; it never skips them.
package python_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dbpool/dbpool_exporter/tools/childproc"
	"github.com/dbpool/dbpool_exporter/tools/pgtest"
	"github.com/dbpool/dbpool_exporter/tools/pythonenv"
	"github.com/dbpool/dbpool_exporter/tools/testbin"
)

func dir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(file)
}

// python returns the interpreter of environment env and logs its SQLAlchemy version.
func python(t *testing.T, env string) string {
	t.Helper()
	py := testbin.Python(t, env)
	out, err := exec.Command(py, "-c", "import sqlalchemy; print(sqlalchemy.__version__)").CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", py, err, out)
	}
	t.Logf("%s: SQLAlchemy %s", env, strings.TrimSpace(string(out)))
	return py
}

// sqlalchemyURL turns a pgtest DSN (postgres://user:pw@host:port/db?sslmode=disable)
// into a SQLAlchemy URL with the given driver and no query (asyncpg rejects sslmode).
func sqlalchemyURL(t *testing.T, dsn, driver string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	u.Scheme = "postgresql+" + driver
	u.RawQuery = ""
	return u.String()
}

type server struct {
	pg       *pgtest.Postgres
	appDSN   string // pgtest DSN of the application role
	password string
}

func startServer(t *testing.T, maxConnections int) server {
	t.Helper()
	pg := pgtest.StartT(t, pgtest.Options{MaxConnections: maxConnections})
	const password = "app-secret-1"
	if err := pg.CreateRole("dbpool_app", password, false); err != nil {
		t.Fatal(err)
	}
	return server{pg: pg, appDSN: pg.DSN("dbpool_app", password, ""), password: password}
}

// suiteRuns are the environments and drivers the unittest suite runs on. Its sync tests take
// the sync driver, its async tests (create_async_engine) the async one. psycopg 3 is both, so
// on SQLAlchemy 2.0 one run has psycopg alone and one has asyncpg; SQLAlchemy 1.4 has no
// psycopg 3 dialect and psycopg2 is sync only, so its one run has psycopg2 and asyncpg.
var suiteRuns = []struct {
	env, syncDriver, asyncDriver string
}{
	{pythonenv.SA20, "psycopg", "psycopg_async"},
	{pythonenv.SA20, "psycopg", "asyncpg"},
	{pythonenv.SA14, "psycopg2", "asyncpg"},
}

// TestPythonUnittests runs the suite once per entry of suiteRuns, in parallel, on one server.
func TestPythonUnittests(t *testing.T) {
	s := startServer(t, 100*len(suiteRuns))
	for _, run := range suiteRuns {
		t.Run(run.env+"/"+run.syncDriver+"+"+run.asyncDriver, func(t *testing.T) {
			t.Parallel()
			py := python(t, run.env)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			start := time.Now()
			out, err := childproc.Run(ctx, childproc.Spec{
				Path: py,
				Args: []string{"-m", "unittest", "discover", "-v", "-s", "tests", "-t", "."},
				Dir:  dir(),
				Env: append(os.Environ(),
					"DBPOOL_TEST_DSN="+sqlalchemyURL(t, s.appDSN, run.syncDriver),
					"DBPOOL_TEST_ASYNC_DSN="+sqlalchemyURL(t, s.appDSN, run.asyncDriver),
					"DBPOOL_TEST_ADMIN_DSN="+sqlalchemyURL(t, s.pg.SuperuserDSN(""), run.syncDriver),
					"PYTHONPATH="+dir(),
					"PYTHONDONTWRITEBYTECODE=1", // no __pycache__ in the source tree
					"DBPOOL_STATS_DIR=",
				),
			})
			if err != nil {
				t.Fatalf("python unittests failed after %s: %v\n%s", time.Since(start).Round(time.Millisecond), err, out)
			}
			t.Logf("python unittests passed in %s:\n%s", time.Since(start).Round(time.Millisecond), childproc.Tail(out, 40))
		})
	}
}

type document struct {
	Format    string     `json:"format"`
	Version   int        `json:"version"`
	Instances []instance `json:"instances"`
}

type instance struct {
	Pool      string `json:"pool"`
	Instance  string `json:"instance"`
	PID       int    `json:"pid"`
	PoolClass string `json:"pool_class"`
	Settings  struct {
		PoolSize    *int     `json:"pool_size"`
		MaxOverflow *int     `json:"max_overflow"`
		Timeout     *float64 `json:"timeout_seconds"`
		Recycle     float64  `json:"recycle_seconds"`
		PrePing     bool     `json:"pre_ping"`
		Echo        bool     `json:"echo"`
	} `json:"settings"`
	Status struct {
		PoolSize   *int `json:"pool_size"`
		CheckedOut *int `json:"checked_out"`
		CheckedIn  *int `json:"checked_in"`
		Overflow   *int `json:"overflow"`
		Total      *int `json:"total_connections"`
	} `json:"status"`
	Pending   int `json:"pending_checkouts"`
	Checkouts struct {
		Count    int     `json:"count"`
		Failed   int     `json:"failed"`
		Sum      float64 `json:"sum_seconds"`
		Timeouts int     `json:"timeouts"`
		Buckets  []struct {
			Le    float64 `json:"le"`
			Count int     `json:"count"`
		} `json:"buckets"`
	} `json:"checkouts"`
	Connects int `json:"connects"`
}

type truth struct {
	PID                int `json:"pid"`
	CheckedOut         int `json:"checked_out"`
	Overflow           int `json:"overflow"`
	CheckedIn          int `json:"checked_in"`
	TimeoutsSeen       int `json:"timeouts_seen"`
	CheckoutsAttempted int `json:"checkouts_attempted"`
	Held               int `json:"held"`
}

func fetch(t *testing.T, method, u string, v any) {
	t.Helper()
	req, err := http.NewRequest(method, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s %s: %s: %s", method, u, resp.Status, body)
	}
	if strings.HasSuffix(u, "/dbpool") && resp.Header.Get("Content-Type") != "application/json" {
		t.Errorf("Content-Type = %q", resp.Header.Get("Content-Type"))
	}
	if err := json.Unmarshal(body, v); err != nil {
		t.Fatalf("%s %s: %v\n%s", method, u, err, body)
	}
}

func TestLoadApp(t *testing.T) {
	for _, env := range []string{pythonenv.SA20, pythonenv.SA14} {
		t.Run(env, func(t *testing.T) {
			t.Parallel()
			testLoadApp(t, python(t, env))
		})
	}
}

func testLoadApp(t *testing.T, python string) {
	s := startServer(t, 0)
	const appName = "loadapp-gotest"
	p := testbin.StartProcess(t, childproc.Spec{
		Name: "loadapp",
		Path: python,
		Args: []string{filepath.Join(dir(), "examples", "loadapp.py"),
			"--dsn", s.appDSN, // postgres://...: loadapp adds the driver
			"--listen", "127.0.0.1:0",
			"--pool-size", "5", "--max-overflow", "2", "--pool-timeout", "5",
			"--concurrency", "0",
			"--application-name", appName,
			"--name", "api"},
		Env: append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1", "DBPOOL_STATS_DIR="),
	})
	m, err := p.WaitMatch(context.Background(), 20*time.Second, regexp.MustCompile(`(?m)^listening on (.*)$`))
	switch {
	case errors.Is(err, childproc.ErrExited):
		t.Fatalf("loadapp exited before listening: %v", err)
	case err != nil:
		t.Fatalf("no 'listening on' line within 20 s: %v", err)
	}
	statsURL := m[1]
	if !strings.HasPrefix(statsURL, "http://127.0.0.1:") || !strings.HasSuffix(statsURL, "/dbpool") {
		t.Fatalf("listening line: %q", statsURL)
	}
	base := strings.TrimSuffix(statsURL, "/dbpool")

	var doc document
	fetch(t, http.MethodGet, statsURL, &doc)
	if doc.Format != "dbpool-stats" || doc.Version != 1 || len(doc.Instances) != 1 {
		t.Fatalf("document: %+v", doc)
	}
	in := doc.Instances[0]
	if in.Pool != "api" || in.PID != p.Pid() || in.PoolClass != "QueuePool" ||
		!strings.HasSuffix(in.Instance, fmt.Sprintf(":%d", p.Pid())) {
		t.Errorf("instance: %+v", in)
	}
	if in.Settings.PoolSize == nil || *in.Settings.PoolSize != 5 || in.Settings.MaxOverflow == nil ||
		*in.Settings.MaxOverflow != 2 || in.Settings.Timeout == nil || *in.Settings.Timeout != 5 ||
		in.Settings.Recycle != 3600 || !in.Settings.PrePing || in.Settings.Echo {
		t.Errorf("settings: %+v", in.Settings)
	}
	if len(in.Checkouts.Buckets) != 15 || in.Checkouts.Buckets[14].Le != 30 {
		t.Errorf("buckets: %+v", in.Checkouts.Buckets)
	}
	var tr truth
	fetch(t, http.MethodGet, base+"/truth", &tr)
	if tr.PID != p.Pid() || tr.CheckedOut != 0 {
		t.Errorf("truth before hold: %+v", tr)
	}

	fetch(t, http.MethodPost, base+"/hold?n=3", &tr)
	if tr.CheckedOut != 3 || tr.Held != 3 {
		t.Errorf("truth after hold: %+v", tr)
	}
	fetch(t, http.MethodGet, base+"/truth", &tr)
	fetch(t, http.MethodGet, statsURL, &doc)
	in = doc.Instances[0]
	if tr.CheckedOut != 3 || in.Status.CheckedOut == nil || *in.Status.CheckedOut != 3 {
		t.Errorf("checked_out: truth %d, stats %v", tr.CheckedOut, in.Status.CheckedOut)
	}
	if in.Status.Overflow == nil || *in.Status.Overflow != tr.Overflow || *in.Status.Overflow != -2 ||
		in.Status.Total == nil || *in.Status.Total != 3 || in.Status.CheckedIn == nil || *in.Status.CheckedIn != tr.CheckedIn {
		t.Errorf("status %+v vs truth %+v", in.Status, tr)
	}
	if in.Checkouts.Count != tr.CheckoutsAttempted || in.Checkouts.Count != 3 || in.Connects != 3 || in.Pending != 0 {
		t.Errorf("checkouts %+v, connects %d, pending %d vs truth %+v", in.Checkouts, in.Connects, in.Pending, tr)
	}

	// The server sees the application_name, for the activity source's matchers.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.pg.SuperuserDSN(""))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx,
		"SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND usename = 'dbpool_app'",
		appName).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Errorf("backends with application_name %s: %d, want 3", appName, n)
	}

	if err := syscall.Kill(p.Pid(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Done():
		var ee *exec.ExitError
		if err := p.Err(); !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Errorf("loadapp exit: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("loadapp still running 10 s after SIGKILL")
	}
	if err := syscall.Kill(p.Pid(), 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("process %d still exists after SIGKILL: %v", p.Pid(), err)
	}
}
