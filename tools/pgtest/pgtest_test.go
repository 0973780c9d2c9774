package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

func testCtx(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func connect(t testing.TB, dsn string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(testCtx(t), dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

func queryString(t testing.TB, conn *pgx.Conn, sql string, args ...any) string {
	t.Helper()
	var s string
	if err := conn.QueryRow(testCtx(t), sql, args...).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return s
}

func TestStartSettings(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		opts Options
		want map[string]string // setting -> current_setting()
	}{
		{
			name: "defaults",
			want: map[string]string{
				"max_connections":                "100",
				"superuser_reserved_connections": "3",
				"listen_addresses":               "127.0.0.1",
				"fsync":                          "off",
				"synchronous_commit":             "off",
				"full_page_writes":               "off",
				"password_encryption":            "scram-sha-256",
			},
		},
		{
			name: "limits and extra settings",
			opts: Options{
				MaxConnections:               20,
				SuperuserReservedConnections: 2,
				ExtraConf: map[string]string{
					"application_name":          "it's quoted",
					"idle_session_timeout":      "5min",
					"track_activity_query_size": "2048",
				},
			},
			want: map[string]string{
				"max_connections":                "20",
				"superuser_reserved_connections": "2",
				"idle_session_timeout":           "5min",
				"track_activity_query_size":      "2kB",
			},
		},
		{
			name: "ExtraConf wins over the harness",
			opts: Options{ExtraConf: map[string]string{"superuser_reserved_connections": "0"}},
			want: map[string]string{"superuser_reserved_connections": "0"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := StartT(t, tc.opts)
			if p.Host != "127.0.0.1" || p.Port <= 0 {
				t.Fatalf("Host:Port = %s:%d", p.Host, p.Port)
			}
			if !strings.HasPrefix(p.DataDir, p.Dir) || !strings.HasPrefix(p.SocketDir, p.Dir) {
				t.Errorf("DataDir %s and SocketDir %s should be inside %s", p.DataDir, p.SocketDir, p.Dir)
			}
			conn := connect(t, p.SuperuserDSN(""))
			for k, v := range tc.want {
				if got := queryString(t, conn, "SELECT current_setting($1)", k); got != v {
					t.Errorf("%s = %q, want %q", k, got, v)
				}
			}
			if got := queryString(t, conn, "SELECT current_database()"); got != "postgres" {
				t.Errorf(`SuperuserDSN("") database = %q, want postgres`, got)
			}
		})
	}
}

func TestOptionsValidate(t *testing.T) {
	tests := []struct {
		name string
		opts Options
		ok   bool
	}{
		{"zero", Options{}, true},
		{"negative max", Options{MaxConnections: -1}, false},
		{"negative reserved", Options{SuperuserReservedConnections: -1}, false},
		{"injection in key", Options{ExtraConf: map[string]string{"a = 1\nfsync": "on"}}, false},
		{"dotted custom setting", Options{ExtraConf: map[string]string{"pgtest.x": "1"}}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.opts.validate(); (err == nil) != tc.ok {
				t.Errorf("validate() = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func TestDSN(t *testing.T) {
	p := &Postgres{Host: "127.0.0.1", Port: 5999, password: "s3cr"}
	tests := []struct {
		got, want string
	}{
		{p.SuperuserDSN(""), "postgres://postgres:s3cr@127.0.0.1:5999/postgres?sslmode=disable"},
		{p.SuperuserDSN("app"), "postgres://postgres:s3cr@127.0.0.1:5999/app?sslmode=disable"},
		{p.DSN("mon", "p@ss/word", "db"), "postgres://mon:p%40ss%2Fword@127.0.0.1:5999/db?sslmode=disable"},
		{p.DSN("nopw", "", ""), "postgres://nopw@127.0.0.1:5999/postgres?sslmode=disable"},
	}
	for _, tc := range tests {
		if tc.got != tc.want {
			t.Errorf("got %s, want %s", tc.got, tc.want)
		}
		if _, err := pgx.ParseConfig(tc.got); err != nil {
			t.Errorf("pgx cannot parse %s: %v", tc.got, err)
		}
	}
}

func TestStopRestart(t *testing.T) {
	t.Parallel()
	p := StartT(t, Options{})
	ctx := testCtx(t)
	if err := p.Exec(ctx, "CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)"); err != nil {
		t.Fatal(err)
	}
	port := p.Port
	oldPID, err := p.PostmasterPID()
	if err != nil {
		t.Fatal(err)
	}

	if err := p.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if err := p.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if _, err := pgx.Connect(ctx, p.SuperuserDSN("")); err == nil {
		t.Fatal("connect to a stopped server succeeded")
	}
	if _, err := p.PostmasterPID(); err == nil {
		t.Error("PostmasterPID of a stopped server should fail")
	}
	if _, err := os.Stat(p.DataDir); err != nil {
		t.Fatalf("Stop must keep the data dir: %v", err)
	}

	if err := p.Restart(); err != nil {
		t.Fatalf("Restart: %v", err)
	}
	if p.Port != port {
		t.Errorf("port changed from %d to %d", port, p.Port)
	}
	conn := connect(t, p.SuperuserDSN(""))
	if got := queryString(t, conn, "SELECT v::text FROM kept"); got != "42" {
		t.Errorf("data after restart = %q, want 42", got)
	}
	newPID, err := p.PostmasterPID()
	if err != nil {
		t.Fatal(err)
	}
	if newPID == oldPID {
		t.Errorf("postmaster PID %d unchanged after restart", newPID)
	}

	// Restart of a running server stops it first.
	if err := p.Restart(); err != nil {
		t.Fatalf("Restart while running: %v", err)
	}
	if err := conn.Ping(ctx); err == nil {
		t.Error("connection from before the restart still works")
	}
	connect(t, p.SuperuserDSN(""))
}

func TestTwoClustersAtOnce(t *testing.T) {
	t.Parallel()
	var wg sync.WaitGroup
	var pgs [2]*Postgres
	var errs [2]error
	for i := range pgs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pgs[i], errs[i] = Start(Options{})
		}()
	}
	wg.Wait()
	for i, p := range pgs {
		if p != nil {
			t.Cleanup(func() { _ = p.Close() })
		}
		if errs[i] != nil {
			t.Fatalf("cluster %d: %v", i, errs[i])
		}
	}
	a, b := pgs[0], pgs[1]
	if a.Port == b.Port || a.Dir == b.Dir {
		t.Fatalf("clusters share port or dir: %d %s / %d %s", a.Port, a.Dir, b.Port, b.Dir)
	}
	if a.Password() == b.Password() {
		t.Error("clusters share the superuser password")
	}
	ctx := testCtx(t)
	if err := a.Exec(ctx, "CREATE TABLE only_in_a ()"); err != nil {
		t.Fatal(err)
	}
	conn := connect(t, b.SuperuserDSN(""))
	if got := queryString(t, conn, "SELECT coalesce(to_regclass('only_in_a')::text, 'absent')"); got != "absent" {
		t.Errorf("table of cluster a visible in cluster b: %s", got)
	}
	// Each password opens only its own cluster.
	if _, err := pgx.Connect(ctx, b.DSN("postgres", a.Password(), "")); err == nil {
		t.Error("cluster b accepted cluster a's password")
	}
}

func TestCreateRole(t *testing.T) {
	t.Parallel()
	p := StartT(t, Options{})
	ctx := testCtx(t)
	const password = "mon-it0r's pw"
	if err := p.CreateRole("monitor", password, false, "pg_monitor"); err != nil {
		t.Fatal(err)
	}
	if err := p.CreateRole("Admin Role", "x", true); err != nil {
		t.Fatal(err)
	}

	conn := connect(t, p.DSN("monitor", password, ""))
	if got := queryString(t, conn, "SELECT current_user"); got != "monitor" {
		t.Errorf("current_user = %q", got)
	}
	if got := queryString(t, conn, "SELECT pg_has_role('pg_monitor', 'MEMBER')::text"); got != "true" {
		t.Errorf("monitor is member of pg_monitor: %s", got)
	}
	if got := queryString(t, conn, "SELECT rolsuper::text FROM pg_roles WHERE rolname = current_user"); got != "false" {
		t.Errorf("monitor rolsuper = %s", got)
	}
	admin := connect(t, p.DSN("Admin Role", "x", ""))
	if got := queryString(t, admin, "SELECT rolsuper::text FROM pg_roles WHERE rolname = current_user"); got != "true" {
		t.Errorf("Admin Role rolsuper = %s", got)
	}
	// The server keeps a SCRAM verifier, never the plain text.
	if got := queryString(t, admin, "SELECT rolpassword FROM pg_authid WHERE rolname = 'monitor'"); !strings.HasPrefix(got, "SCRAM-SHA-256$4096:") {
		t.Errorf("stored password is not a SCRAM verifier")
	}

	_, err := pgx.Connect(ctx, p.DSN("monitor", "wrong", ""))
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "28P01" {
		t.Errorf("wrong password: err = %v, want SQLSTATE 28P01", err)
	}
	if err := p.CreateRole("monitor", password, false); err == nil {
		t.Error("creating an existing role should fail")
	}

	log, err := os.ReadFile(p.LogFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{password, p.Password()} {
		if strings.Contains(string(log), secret) {
			t.Errorf("server log contains a password")
		}
	}
}

func TestNonASCIIPassword(t *testing.T) {
	t.Parallel()
	p := StartT(t, Options{})
	const password = "pässwörd"
	if err := p.CreateRole("u", password, false); err != nil {
		t.Fatal(err)
	}
	connect(t, p.DSN("u", password, ""))
}

// procStartTime identifies a process across PID reuse (field 22 of
// /proc/PID/stat); "" when the process is gone.
func procStartTime(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	// comm (field 2) may contain spaces; fields after it are plain.
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if fields[0] == "Z" {
		return "" // zombie: exited
	}
	return fields[19]
}

// children returns the PIDs whose parent is ppid.
func children(t testing.TB, ppid int) []int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(b)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		if fields[1] == strconv.Itoa(ppid) {
			out = append(out, pid)
		}
	}
	return out
}

func TestPostmasterPID(t *testing.T) {
	t.Parallel()
	p := StartT(t, Options{})
	pid, err := p.PostmasterPID()
	if err != nil {
		t.Fatal(err)
	}
	conn := connect(t, p.SuperuserDSN(""))
	var backend int
	if err := conn.QueryRow(testCtx(t), "SELECT pg_backend_pid()").Scan(&backend); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, c := range children(t, pid) {
		if c == backend {
			found = true
		}
	}
	if !found {
		t.Errorf("backend %d is not a child of PostmasterPID %d", backend, pid)
	}
}

func TestClose(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		setup func(t *testing.T, p *Postgres, pid int)
	}{
		{"running", func(*testing.T, *Postgres, int) {}},
		{"frozen with SIGSTOP", func(t *testing.T, _ *Postgres, pid int) {
			if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
		}},
		{"stopped", func(t *testing.T, p *Postgres, _ int) {
			if err := p.Stop(); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p, err := Start(Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = p.Close() })
			pid, err := p.PostmasterPID()
			if err != nil {
				t.Fatal(err)
			}
			conn := connect(t, p.SuperuserDSN("")) // so that a client backend exists
			_ = conn
			procs := map[int]string{}
			for _, c := range append(children(t, pid), pid) {
				// Skip children that exited (zombies) since the scan.
				if st := procStartTime(c); st != "" {
					procs[c] = st
				}
			}
			if len(procs) < 3 {
				t.Fatalf("expected postmaster, a backend and auxiliary processes, got %v", procs)
			}
			tc.setup(t, p, pid)

			if err := p.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			if err := p.Close(); err != nil {
				t.Errorf("second Close: %v", err)
			}
			if _, err := os.Stat(p.Dir); !os.IsNotExist(err) {
				t.Errorf("temp dir %s still there: %v", p.Dir, err)
			}
			// The postmaster waits for its children before it exits, but
			// allow reaping by init a moment.
			deadline := time.Now().Add(10 * time.Second)
			for pid, start := range procs {
				for procStartTime(pid) == start && time.Now().Before(deadline) {
					time.Sleep(20 * time.Millisecond)
				}
				if procStartTime(pid) == start {
					t.Errorf("process %d of the cluster still runs after Close", pid)
				}
			}
			if err := p.Restart(); err == nil {
				t.Error("Restart after Close should fail")
			}
		})
	}
}

// privateTempDir points PGTEST_TMPDIR at a fresh directory that the server
// account can enter, so a test can see what Start leaves behind. It sits
// where the harness would put temp dirs anyway (usually tmpfs: fast).
func privateTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp(tempBase(), "pgtestcase-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv(tmpDirEnv, dir)
	return dir
}

func TestStartFailureLeavesNothing(t *testing.T) {
	// Not parallel: t.Setenv.
	tmp := privateTempDir(t)
	_, err := Start(Options{ExtraConf: map[string]string{"shared_buffers": "lots"}})
	if err == nil {
		t.Fatal("Start with an invalid setting succeeded")
	}
	// The error carries the server log, which names the problem.
	if !strings.Contains(err.Error(), `invalid value for parameter "shared_buffers"`) {
		t.Errorf("error lacks the log tail: %v", err)
	}
	entries, err := os.ReadDir(tmp)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		t.Errorf("Start left %s behind", e.Name())
	}
}

func TestTemplateCache(t *testing.T) {
	tests := []struct {
		name    string
		cache   func(t *testing.T) string // PGTEST_CACHE_DIR
		servers int                       // the second one uses the template the first built
	}{
		{"off: initdb per server", func(*testing.T) string { return "off" }, 1},
		{"empty cache dir", func(t *testing.T) string { return filepath.Join(t.TempDir(), "cache") }, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			privateTempDir(t)
			cache := tc.cache(t)
			t.Setenv(templateCacheEnv, cache)
			for i := range tc.servers {
				p := StartT(t, Options{MaxConnections: 7 + i})
				conn := connect(t, p.SuperuserDSN(""))
				if got := queryString(t, conn, "SELECT current_setting('max_connections')"); got != strconv.Itoa(7+i) {
					t.Errorf("server %d: max_connections = %s", i, got)
				}
				if cache == "off" {
					continue
				}
				tmpl, err := filepath.Glob(filepath.Join(cache, "*", "data", "PG_VERSION"))
				if err != nil || len(tmpl) != 1 {
					t.Fatalf("server %d: templates %v %v", i, tmpl, err)
				}
				leftovers, _ := filepath.Glob(filepath.Join(cache, "*.tmp-*"))
				if len(leftovers) > 0 {
					t.Errorf("staging dirs left in the cache: %v", leftovers)
				}
			}
		})
	}
}

func TestStartRetriesTakenPort(t *testing.T) {
	// Not parallel: replaces freePort.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	taken := l.Addr().(*net.TCPAddr).Port
	calls := 0
	freePort = func() (int, error) {
		calls++
		if calls == 1 {
			return taken, nil
		}
		return FreePort()
	}
	t.Cleanup(func() { freePort = FreePort })

	p := StartT(t, Options{})
	if p.Port == taken {
		t.Fatalf("server claims the taken port %d", taken)
	}
	if calls < 2 {
		t.Errorf("freePort called %d times, want a retry", calls)
	}
	connect(t, p.SuperuserDSN(""))

	calls = 0
	b := StartPgBouncerT(t, p, PgBouncerOptions{})
	if b.Port == taken || calls < 2 {
		t.Errorf("pgbouncer port %d (taken %d), freePort calls %d", b.Port, taken, calls)
	}
	connect(t, b.DSN("postgres", p.Password(), ""))
}

func TestBinDir(t *testing.T) {
	empty := t.TempDir()
	tests := []struct {
		name   string
		env    string
		wantOK bool
	}{
		{"default lookup", "", true},
		{"override without binaries", empty, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("PG_BINDIR", tc.env)
			d, err := BinDir()
			if (err == nil) != tc.wantOK {
				t.Fatalf("BinDir() = %q, %v", d, err)
			}
			if err != nil && !strings.Contains(err.Error(), "install") {
				t.Errorf("error does not say what to install: %v", err)
			}
		})
	}
}

func TestVersionOrder(t *testing.T) {
	tests := []struct {
		a, b string
		less bool
	}{
		{"9.6", "15", true},
		{"15", "16", true},
		{"16", "15", false},
		{"10", "9.6", false},
	}
	for _, tc := range tests {
		if got := versionLess(parseVersion(tc.a), parseVersion(tc.b)); got != tc.less {
			t.Errorf("versionLess(%s, %s) = %v", tc.a, tc.b, got)
		}
	}
}

// fatalTB records Fatal instead of ending the test, to check that StartT
// fails (not skips) when binaries are missing.
type fatalTB struct {
	testing.TB
	fataled, skipped bool
	msg              string
}

func (f *fatalTB) Helper() {}
func (f *fatalTB) Fatalf(format string, args ...any) {
	f.fataled, f.msg = true, fmt.Sprintf(format, args...)
	runtime.Goexit()
}
func (f *fatalTB) Skipf(string, ...any) { f.skipped = true; runtime.Goexit() }
func (f *fatalTB) Skip(...any)          { f.skipped = true; runtime.Goexit() }
func (f *fatalTB) SkipNow()             { f.skipped = true; runtime.Goexit() }
func (f *fatalTB) Cleanup(func())       {}

func TestStartTFailsWithoutBinaries(t *testing.T) {
	t.Setenv("PG_BINDIR", t.TempDir())
	f := &fatalTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		StartT(f, Options{})
	}()
	<-done
	if !f.fataled || f.skipped {
		t.Fatalf("StartT without binaries: fatal=%v skipped=%v", f.fataled, f.skipped)
	}
	if !strings.Contains(f.msg, "postgresql") {
		t.Errorf("message does not name the package: %s", f.msg)
	}
}

func TestSCRAMSecretFormat(t *testing.T) {
	// '-' and '!' are not in base64's alphabet, so a random salt or key cannot spell the
	// password by chance (a salt once contained "pw").
	const password = "pw-!"
	a, err := scramSecret(password)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := scramSecret(password)
	if a == b {
		t.Error("two secrets share a salt")
	}
	if !strings.HasPrefix(a, "SCRAM-SHA-256$4096:") || strings.Count(a, "$") != 2 || strings.Contains(a, password) {
		t.Errorf("bad secret %q", a)
	}
}

func BenchmarkStart(b *testing.B) {
	for b.Loop() {
		p, err := Start(Options{})
		if err != nil {
			b.Fatal(err)
		}
		if err := p.Close(); err != nil {
			b.Fatal(err)
		}
	}
}
