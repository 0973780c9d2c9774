package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dbpool/dbpool_exporter/tools/childproc"
	"github.com/dbpool/dbpool_exporter/tools/pgtest"
	"github.com/dbpool/dbpool_exporter/tools/poolsim"
	"github.com/dbpool/dbpool_exporter/tools/testbin"
)

func TestParseSeconds(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    time.Duration
		wantErr bool
	}{
		{"30", 30 * time.Second, false},
		{"3600", time.Hour, false},
		{"0.5", 500 * time.Millisecond, false},
		{"1m30s", 90 * time.Second, false},
		{"0", 0, false},
		{"-1", -time.Second, false}, // SQLAlchemy's "recycle disabled"
		{"thirty", 0, true},
		{"", 0, true},
	} {
		d, err := parseSeconds(tc.in)
		if (err != nil) != tc.wantErr || d != tc.want {
			t.Errorf("parseSeconds(%q) = %s, %v; want %s, error %v", tc.in, d, err, tc.want, tc.wantErr)
		}
	}
}

func TestParseBool(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    bool
		wantErr bool
	}{
		{"true", true, false}, {"True", true, false}, {"1", true, false}, {"yes", true, false}, {"ON", true, false},
		{"false", false, false}, {"False", false, false}, {"0", false, false}, {"no", false, false}, {"off", false, false},
		{"maybe", false, true}, {"", false, true},
	} {
		b, err := parseBool(tc.in)
		if (err != nil) != tc.wantErr || b != tc.want {
			t.Errorf("parseBool(%q) = %v, %v; want %v, error %v", tc.in, b, err, tc.want, tc.wantErr)
		}
	}
}

func TestFormatLine(t *testing.T) {
	prev := poolsim.Stats{Instances: 2, Total: poolsim.WorkloadStats{PoolStats: poolsim.PoolStats{CheckoutsTotal: 100, CheckoutWaitSecondsTotal: 1}, ErrorsTotal: 1}}
	cur := poolsim.Stats{Instances: 2, LastError: `FATAL: sorry, too many clients already (SQLSTATE 53300)`, Total: poolsim.WorkloadStats{
		PoolStats:     poolsim.PoolStats{CheckedOut: 7, Open: 9, Overflow: 1, Pending: 3, CheckoutsTotal: 110, CheckoutWaitSecondsTotal: 1.004, TimeoutsTotal: 2},
		RequestsTotal: 120, ErrorsTotal: 1, DroppedTotal: 4,
	}}
	for _, tc := range []struct {
		name      string
		cur, prev poolsim.Stats
		want      string
	}{
		{"first interval", poolsim.Stats{Instances: 1}, poolsim.Stats{},
			"poolsim: instances=1 checked_out=0 open=0 overflow=0 pending=0 requests=0 checkouts=0 timeouts=0 errors=0 dropped=0 avg_checkout_ms=0.0"},
		{"average over the interval only", cur, prev,
			"poolsim: instances=2 checked_out=7 open=9 overflow=1 pending=3 requests=120 checkouts=110 timeouts=2 errors=1 dropped=4 avg_checkout_ms=0.4"},
		{"new errors show the last one", func() poolsim.Stats { c := cur; c.Total.ErrorsTotal = 2; return c }(), prev,
			`poolsim: instances=2 checked_out=7 open=9 overflow=1 pending=3 requests=120 checkouts=110 timeouts=2 errors=2 dropped=4 avg_checkout_ms=0.4 last_error="FATAL: sorry, too many clients already (SQLSTATE 53300)"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := formatLine(tc.cur, tc.prev); got != tc.want {
				t.Errorf("got\n%s\nwant\n%s", got, tc.want)
			}
		})
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	testbin.Cleanup()
	os.Exit(code)
}

// cleanEnv drops the variables that would change the binary's defaults.
func cleanEnv() []string { return childproc.Environ("DB_", "DATABASE_URL=") }

func TestBinary(t *testing.T) {
	bin := testbin.Poolsim(t)

	for _, tc := range []struct {
		name     string
		args     []string
		env      []string
		wantCode int
		want     []string
	}{
		{"help", []string{"--help"}, nil, 0, []string{
			"--dsn", "$DATABASE_URL", "--app-name", "--instances",
			"--pool.size=10", "$DB_POOL_SIZE", "--pool.max-overflow=20", "$DB_MAX_OVERFLOW",
			"--pool.timeout=30", "$DB_POOL_TIMEOUT", "--pool.recycle=3600", "$DB_POOL_RECYCLE", "--[no-]pool.pre-ping", "$DB_POOL_PRE_PING",
			"--rate", "--arrival", "--query-time", "--long-query-share", "--long-query-time", "--idle-in-tx-share", "--idle-in-tx-time",
			"--hold-extra", "--duration", "--max-inflight", "--status.listen", "--report-interval", "--log.level",
			"--pool.impl=queuepool", "pgxpool has no overflow concept", "MaxConns is pool.size + pool.max-overflow",
			"--metrics.listen", `--metrics.target="postgres"`,
		}},
		{"unknown pool implementation", []string{"--dsn=postgres://u@localhost/x", "--pool.impl=hikari"}, nil, 1, []string{"queuepool,pgxpool", "hikari"}},
		{"pgxpool refuses unlimited overflow and no timeout", []string{"--dsn=postgres://u@localhost/x", "--pool.impl=pgxpool", "--pool.max-overflow=-1", "--pool.timeout=0"}, nil, 2,
			[]string{"no unlimited pool", "pool timeout must be more than 0"}},
		{"help does not print the DSN from the environment", []string{"--help"}, []string{"DATABASE_URL=postgres://u:hunter2@db/x"}, 0, []string{"$DATABASE_URL"}},
		{"unknown flag", []string{"--no-such-flag"}, nil, 1, []string{"unknown long flag"}},
		{"no DSN", nil, nil, 2, []string{"set --dsn or DATABASE_URL"}},
		{"bad env value names the flag and variable", []string{"--dsn=postgres://u@localhost/x"}, []string{"DB_POOL_TIMEOUT=soon"}, 1, []string{"--pool.timeout ($DB_POOL_TIMEOUT)", "neither a number of seconds nor a duration"}},
		{"bad int in env", []string{"--dsn=postgres://u@localhost/x"}, []string{"DB_POOL_SIZE=ten"}, 1, []string{"--pool.size ($DB_POOL_SIZE)", "not an integer"}},
		{"bad bool in env", []string{"--dsn=postgres://u@localhost/x"}, []string{"DB_POOL_PRE_PING=maybe"}, 1, []string{"--pool.pre-ping ($DB_POOL_PRE_PING)", "not a boolean"}},
		{"invalid settings all reported", []string{"--dsn=postgres://u@localhost/x", "--pool.size=0", "--instances=0"}, nil, 2, []string{"pool size", "instances"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := childproc.Run(context.Background(), childproc.Spec{Path: bin, Args: tc.args, Env: append(cleanEnv(), tc.env...)})
			code := 0
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != tc.wantCode {
				t.Errorf("exit code %d, want %d; output:\n%s", code, tc.wantCode, out)
			}
			// kingpin wraps help text at the terminal width.
			words := strings.Join(strings.Fields(out), " ")
			for _, w := range tc.want {
				if !strings.Contains(words, w) {
					t.Errorf("output does not contain %q:\n%s", w, out)
				}
			}
			if strings.Contains(out, "hunter2") {
				t.Errorf("output shows the password:\n%s", out)
			}
		})
	}
}

// simProc is a running poolsim binary; its stderr (the log) is its Output.
type simProc struct {
	*childproc.Process
	stdout *testbin.Buffer
	addrs  map[string]string // "/status", "/metrics" -> host:port
}

// startSim starts bin and waits until it has logged the address of every
// path in paths.
func startSim(t *testing.T, bin string, env []string, paths []string, args ...string) *simProc {
	t.Helper()
	p := &simProc{stdout: &testbin.Buffer{}, addrs: map[string]string{}}
	cp, err := childproc.Start(childproc.Spec{Path: bin, Args: args, Env: append(cleanEnv(), env...), Stdout: p.stdout})
	if err != nil {
		t.Fatal(err)
	}
	p.Process = cp
	t.Cleanup(func() { _ = p.Stop(syscall.SIGKILL, 0) })
	re := regexp.MustCompile(`msg="serving [^"]*" address=(\S+) path=(\S+)`)
	err = p.WaitReady(context.Background(), 30*time.Second, 20*time.Millisecond, func() error {
		for _, m := range re.FindAllStringSubmatch(p.Output(), -1) {
			p.addrs[m[2]] = m[1]
		}
		if len(p.addrs) < len(paths) {
			return fmt.Errorf("addresses logged: %v, want %v", p.addrs, paths)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// stop sends SIGTERM and waits for the process to exit.
func (p *simProc) stop(t *testing.T) error {
	t.Helper()
	if err := p.Stop(syscall.SIGTERM, 30*time.Second); err != nil {
		return err
	}
	return p.Err()
}

func getStatus(t *testing.T, addr string) poolsim.Stats {
	t.Helper()
	var st poolsim.Stats
	resp, err := http.Get("http://" + addr + "/status")
	if err == nil {
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type %q", ct)
		}
		err = json.NewDecoder(resp.Body).Decode(&st)
		_ = resp.Body.Close()
	}
	if err != nil {
		t.Fatalf("GET /status: %v", err)
	}
	return st
}

// waitNoBackends polls until no backend whose application_name starts with
// prefix is left: pgx sends Terminate before the process exits, but the
// backends may need a moment to go.
func waitNoBackends(t *testing.T, admin *pgx.Conn, prefix string) {
	t.Helper()
	var n int
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if err := admin.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity WHERE starts_with(application_name, $1)`, prefix).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d backends of %s* left after shutdown", n, prefix)
		}
	}
}

func TestBinaryRun(t *testing.T) {
	bin := testbin.Poolsim(t)
	pg := pgtest.StartT(t, pgtest.Options{MaxConnections: 50})
	dsn := pg.SuperuserDSN("postgres")
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = admin.Close(ctx) }()

	// Settings through the seed's variables, DSN through DATABASE_URL.
	p := startSim(t, bin, []string{"DATABASE_URL=" + dsn, "DB_POOL_SIZE=3", "DB_MAX_OVERFLOW=2", "DB_POOL_TIMEOUT=5", "DB_POOL_PRE_PING=True"},
		[]string{"/status"},
		"--app-name=binapp", "--instances=2", "--rate=20", "--query-time=20ms", "--hold-extra=50ms",
		"--status.listen=127.0.0.1:0", "--report-interval=100ms")
	addr := p.addrs["/status"]

	var st poolsim.Stats
	deadline := time.Now().Add(30 * time.Second)
	for {
		st = getStatus(t, addr)
		if len(st.PerInstance) == 2 && st.PerInstance[0].CheckoutsTotal > 0 && st.PerInstance[1].CheckoutsTotal > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no checkouts in both instances: %+v\nstderr:\n%s", st, p.Output())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if st.Settings != (poolsim.SettingsStats{PoolSize: 3, MaxOverflow: 2, TimeoutSeconds: 5, RecycleSeconds: 3600, PrePing: true}) {
		t.Errorf("settings from the DB_* variables: %+v", st.Settings)
	}
	if st.PoolImpl != poolsim.ImplQueuePool {
		t.Errorf("pool_impl %q, want the default queuepool", st.PoolImpl)
	}
	for i, in := range st.PerInstance {
		if want := "binapp-" + string(rune('0'+i)); in.ApplicationName != want {
			t.Errorf("instance %d application_name %q, want %q", i, in.ApplicationName, want)
		}
	}
	var n int
	if err := admin.QueryRow(ctx, `SELECT count(DISTINCT application_name) FROM pg_stat_activity WHERE application_name IN ('binapp-0', 'binapp-1')`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Errorf("%d of binapp-0, binapp-1 in pg_stat_activity, want 2", n)
	}

	if err := p.stop(t); err != nil {
		t.Errorf("exit after SIGTERM: %v\nstderr:\n%s", err, p.Output())
	}
	waitNoBackends(t, admin, "binapp-")
	lines := strings.Split(strings.TrimSpace(p.stdout.String()), "\n")
	last := lines[len(lines)-1]
	if !regexp.MustCompile(`^poolsim: instances=2 checked_out=0 open=0 overflow=0 pending=0 requests=\d+ checkouts=\d+ timeouts=0 errors=0 dropped=0 avg_checkout_ms=[0-9.]+$`).MatchString(last) {
		t.Errorf("final report line %q", last)
	}
	if pw := pg.Password(); strings.Contains(p.stdout.String()+p.Output(), pw) {
		t.Errorf("output shows the password")
	}
}

// scrape returns the samples of /metrics as "name{labels}" -> value.
func scrape(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("sample %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestBinaryRunPgxpool(t *testing.T) {
	bin := testbin.Poolsim(t)
	pg := pgtest.StartT(t, pgtest.Options{MaxConnections: 50})
	dsn := pg.SuperuserDSN("postgres")
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = admin.Close(ctx) }()

	// Size 2 + overflow 1 per instance, and requests that hold their
	// connection for a minute every 500 ms: after three, each request waits
	// 200 ms and times out, with quiet gaps in between. /status and /metrics
	// share one server (same address).
	p := startSim(t, bin, []string{"DATABASE_URL=" + dsn, "DB_POOL_SIZE=2", "DB_MAX_OVERFLOW=1", "DB_POOL_TIMEOUT=0.2"},
		[]string{"/status", "/metrics"},
		"--pool.impl=pgxpool", "--app-name=binpgx", "--instances=2", "--rate=2", "--arrival=even", "--query-time=1m",
		"--status.listen=127.0.0.1:0", "--metrics.listen=127.0.0.1:0", "--metrics.target=pgt", "--report-interval=100ms")
	if p.addrs["/status"] != p.addrs["/metrics"] {
		t.Errorf("/status at %s, /metrics at %s: the same --*.listen should share one server", p.addrs["/status"], p.addrs["/metrics"])
	}
	addr := p.addrs["/metrics"]
	pools := []string{"binpgx-0", "binpgx-1"}
	series := func(name, pool string) string {
		return fmt.Sprintf(`%s{pool=%q,source="pgxpool",target="pgt"}`, name, pool)
	}

	// Every instance at capacity, under its own application_name.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		var n0, n1 int
		if err := admin.QueryRow(ctx, `SELECT count(*) FILTER (WHERE application_name = 'binpgx-0'), count(*) FILTER (WHERE application_name = 'binpgx-1')
			FROM pg_stat_activity WHERE state = 'active'`).Scan(&n0, &n1); err != nil {
			t.Fatal(err)
		}
		if n0 == 3 && n1 == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("active backends binpgx-0: %d, binpgx-1: %d, want 3 each; stderr:\n%s", n0, n1, p.Output())
		}
	}

	first := scrape(t, addr)
	pending := map[string]bool{}
	grown := map[string]bool{}
	settled := map[string]bool{}
	for deadline := time.Now().Add(30 * time.Second); len(pending)+len(grown)+len(settled) < 3*len(pools); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("pending seen %v, checkout count grown %v, timeouts compared %v; stderr:\n%s", pending, grown, settled, p.Output())
		}
		before := getStatus(t, p.addrs["/status"])
		m := scrape(t, addr)
		after := getStatus(t, p.addrs["/status"])
		for i, pool := range pools {
			if m[series("dbpool_pending_checkouts", pool)] > 0 {
				pending[pool] = true
			}
			if m[series("dbpool_checkout_duration_seconds_count", pool)] > first[series("dbpool_checkout_duration_seconds_count", pool)] {
				grown[pool] = true
			}
			// The sim counts a timeout after Acquire returns, the tracer
			// inside it: compare when nothing is pending and the sim's count
			// did not move around the scrape.
			b, a := before.PerInstance[i], after.PerInstance[i]
			if b.TimeoutsTotal > 0 && a.Pending == 0 && a.TimeoutsTotal == b.TimeoutsTotal {
				if got := m[series("dbpool_checkout_timeouts_total", pool)]; got != float64(a.TimeoutsTotal) {
					t.Fatalf("dbpool_checkout_timeouts_total{pool=%q} %g, sim's own timeouts %d", pool, got, a.TimeoutsTotal)
				}
				settled[pool] = true
			}
		}
	}
	m := scrape(t, addr)
	for _, pool := range pools {
		for name, want := range map[string]float64{
			"dbpool_checkout_timeout_seconds": 0.2,
			"dbpool_max_connections":          3,
			"dbpool_overflow_connections":     1,
			"dbpool_in_use_connections":       3,
		} {
			if got, ok := m[series(name, pool)]; !ok || got != want {
				t.Errorf("%s = %g (present %v), want %g", series(name, pool), got, ok, want)
			}
		}
	}
	st := getStatus(t, p.addrs["/status"])
	if st.PoolImpl != poolsim.ImplPgxpool || st.Total.Open != 6 || st.Total.CheckedOut != 6 || st.Total.Overflow != 2 || st.Total.ErrorsTotal != 0 {
		t.Errorf("status: pool_impl=%q open=%d checked_out=%d overflow=%d errors=%d (%s), want pgxpool, 6, 6, 2, 0",
			st.PoolImpl, st.Total.Open, st.Total.CheckedOut, st.Total.Overflow, st.Total.ErrorsTotal, st.LastError)
	}

	if err := p.stop(t); err != nil {
		t.Errorf("exit after SIGTERM: %v\nstderr:\n%s", err, p.Output())
	}
	waitNoBackends(t, admin, "binpgx-")
	lines := strings.Split(strings.TrimSpace(p.stdout.String()), "\n")
	if last := lines[len(lines)-1]; !regexp.MustCompile(`^poolsim: instances=2 checked_out=0 open=0 overflow=0 pending=0 requests=\d+ checkouts=6 timeouts=[1-9]\d* errors=0 dropped=0 `).MatchString(last) {
		t.Errorf("final report line %q", last)
	}
	if pw := pg.Password(); strings.Contains(p.stdout.String()+p.Output(), pw) {
		t.Errorf("output shows the password")
	}
}
