package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dbpool/dbpool_exporter/internal/pgtest"
	"github.com/dbpool/dbpool_exporter/internal/poolsim"
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

// buildBinary builds poolsim once for the binary-level tests.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "poolsim")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// cleanEnv drops the variables that would change the binary's defaults.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "DB_") || strings.HasPrefix(kv, "DATABASE_URL=") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

func TestBinary(t *testing.T) {
	bin := buildBinary(t)

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
		}},
		{"help does not print the DSN from the environment", []string{"--help"}, []string{"DATABASE_URL=postgres://u:hunter2@db/x"}, 0, []string{"$DATABASE_URL"}},
		{"unknown flag", []string{"--no-such-flag"}, nil, 1, []string{"unknown long flag"}},
		{"no DSN", nil, nil, 2, []string{"set --dsn or DATABASE_URL"}},
		{"bad env value names the flag and variable", []string{"--dsn=postgres://u@localhost/x"}, []string{"DB_POOL_TIMEOUT=soon"}, 1, []string{"--pool.timeout ($DB_POOL_TIMEOUT)", "neither a number of seconds nor a duration"}},
		{"bad int in env", []string{"--dsn=postgres://u@localhost/x"}, []string{"DB_POOL_SIZE=ten"}, 1, []string{"--pool.size ($DB_POOL_SIZE)", "not an integer"}},
		{"bad bool in env", []string{"--dsn=postgres://u@localhost/x"}, []string{"DB_POOL_PRE_PING=maybe"}, 1, []string{"--pool.pre-ping ($DB_POOL_PRE_PING)", "not a boolean"}},
		{"invalid settings all reported", []string{"--dsn=postgres://u@localhost/x", "--pool.size=0", "--instances=0"}, nil, 2, []string{"pool size", "instances"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(bin, tc.args...)
			cmd.Env = append(cleanEnv(), tc.env...)
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			err := cmd.Run()
			code := 0
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != tc.wantCode {
				t.Errorf("exit code %d, want %d; output:\n%s", code, tc.wantCode, out.String())
			}
			for _, w := range tc.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output does not contain %q:\n%s", w, out.String())
				}
			}
			if strings.Contains(out.String(), "hunter2") {
				t.Errorf("output shows the password:\n%s", out.String())
			}
		})
	}
}

// syncBuffer is a bytes.Buffer safe for the writer goroutine of exec and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestBinaryRun(t *testing.T) {
	bin := buildBinary(t)
	pg := pgtest.StartT(t, pgtest.Options{MaxConnections: 50})
	dsn := pg.SuperuserDSN("postgres")
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = admin.Close(ctx) }()

	cmd := exec.Command(bin, "--app-name=binapp", "--instances=2", "--rate=20", "--query-time=20ms", "--hold-extra=50ms",
		"--status.listen=127.0.0.1:0", "--report-interval=100ms")
	// Settings through the seed's variables, DSN through DATABASE_URL.
	cmd.Env = append(cleanEnv(), "DATABASE_URL="+dsn, "DB_POOL_SIZE=3", "DB_MAX_OVERFLOW=2", "DB_POOL_TIMEOUT=5", "DB_POOL_PRE_PING=True")
	var stdout syncBuffer
	cmd.Stdout = &stdout
	stderrPipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var stderr syncBuffer
	addrCh := make(chan string, 1)
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		addrRe := regexp.MustCompile(`address=(\S+)`)
		sc := bufio.NewScanner(stderrPipe)
		for sc.Scan() {
			line := sc.Text()
			_, _ = stderr.Write([]byte(line + "\n"))
			if m := addrRe.FindStringSubmatch(line); m != nil && strings.Contains(line, "pool status") {
				addrCh <- m[1]
			}
		}
	}()
	exited := false
	defer func() {
		if !exited {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	}()

	var addr string
	select {
	case addr = <-addrCh:
	case <-time.After(30 * time.Second):
		t.Fatalf("no status address logged; stderr:\n%s", stderr.String())
	}

	var st poolsim.Stats
	deadline := time.Now().Add(30 * time.Second)
	for {
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
		if len(st.PerInstance) == 2 && st.PerInstance[0].CheckoutsTotal > 0 && st.PerInstance[1].CheckoutsTotal > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no checkouts in both instances: %+v\nstderr:\n%s", st, stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if st.Settings != (poolsim.SettingsStats{PoolSize: 3, MaxOverflow: 2, TimeoutSeconds: 5, RecycleSeconds: 3600, PrePing: true}) {
		t.Errorf("settings from the DB_* variables: %+v", st.Settings)
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

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-copied
	err = cmd.Wait()
	exited = true
	if err != nil {
		t.Errorf("exit after SIGTERM: %v\nstderr:\n%s", err, stderr.String())
	}
	if err := admin.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'binapp-%'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	// pgx sends Terminate before the process exits; the backends may need a
	// moment to go, so poll rather than assert at once.
	for deadline := time.Now().Add(20 * time.Second); n != 0 && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		if err := admin.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'binapp-%'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
	}
	if n != 0 {
		t.Errorf("%d backends left after shutdown", n)
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	last := lines[len(lines)-1]
	if !regexp.MustCompile(`^poolsim: instances=2 checked_out=0 open=0 overflow=0 pending=0 requests=\d+ checkouts=\d+ timeouts=0 errors=0 dropped=0 avg_checkout_ms=[0-9.]+$`).MatchString(last) {
		t.Errorf("final report line %q", last)
	}
	if pw := pg.Password(); strings.Contains(stdout.String()+stderr.String(), pw) {
		t.Errorf("output shows the password")
	}
}
