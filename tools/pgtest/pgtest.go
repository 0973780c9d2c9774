// Package pgtest starts throw-away PostgreSQL servers and PgBouncers for
// integration tests and for the demo.
//
// Every server gets a fresh temporary directory that holds its data
// directory, its unix socket and its log, listens on 127.0.0.1 only on a
// free port, and is gone after Close. Servers never touch the machine's own
// PostgreSQL (which may be running on 5432). When the caller is root, the
// servers run as the OS user postgres, because initdb, postgres and
// pgbouncer refuse to run as root.
//
// Authentication is real: the superuser postgres has a random password and
// TCP logins use scram-sha-256, so DSNs carry real passwords (the exporter's
// tests check that they are redacted). The harness itself talks to the server
// over the unix socket, which trusts local users.
//
// Missing binaries are an error (StartT fails the test, it never skips):
// scripts/install-deps.sh installs them.
//
// Environment:
//
//	PG_BINDIR         directory with initdb and postgres (default: newest
//	                  /usr/lib/postgresql/*/bin, then pg_ctl's directory on PATH)
//	PGBOUNCER         pgbouncer binary (default: PATH, then /usr/sbin)
//	PGTEST_TMPDIR     where temp dirs go (default: /dev/shm if it has 1 GB
//	                  free, else the system temp dir)
//	PGTEST_CACHE_DIR  initdb template cache (default: the user cache dir;
//	                  "off" runs initdb for every server)
//
// A process that dies without Close leaves its temp dir behind; the next
// Start in any process removes it (each dir carries a lock that its owner
// holds while alive). The servers themselves die with the process that
// started them.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Options configure a PostgreSQL server.
type Options struct {
	// MaxConnections is max_connections; 0 means 100.
	MaxConnections int
	// SuperuserReservedConnections is superuser_reserved_connections; 0
	// means PostgreSQL's default (3). To get 0, set it in ExtraConf.
	SuperuserReservedConnections int
	// ExtraConf holds more postgresql.conf settings, written after (and so
	// overriding) the harness's own. Values are written quoted, so pass them
	// bare: {"log_min_duration_statement": "0", "application_name": "x"}.
	ExtraConf map[string]string
}

// Postgres is a running (or stopped) throw-away PostgreSQL server.
type Postgres struct {
	Host      string // always "127.0.0.1"
	Port      int
	Dir       string // temp directory holding everything below; removed by Close
	DataDir   string
	SocketDir string // unix socket directory (trust authentication)
	LogFile   string // server log (stderr of postgres)
	BinDir    string

	password string
	owner    *runAs
	lock     *os.File // flock on Dir while this process owns it

	mu       sync.Mutex
	proc     *proc // nil while stopped
	closed   bool
	bouncers []*PgBouncer
}

const (
	startTimeout = 60 * time.Second
	stopGrace    = 30 * time.Second
	portAttempts = 5
	logTailLines = 30
)

// Start creates and starts a server. On error nothing is left behind: no
// process, no directory.
func Start(opts Options) (*Postgres, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	bindir, err := BinDir()
	if err != nil {
		return nil, err
	}
	owner, err := serverAccount()
	if err != nil {
		return nil, err
	}
	dir, lock, err := newTempDir(dirPrefix)
	if err != nil {
		return nil, err
	}
	p := &Postgres{
		Host:      "127.0.0.1",
		Dir:       dir,
		DataDir:   filepath.Join(dir, "data"),
		SocketDir: dir,
		LogFile:   filepath.Join(dir, "postgres.log"),
		BinDir:    bindir,
		password:  randomPassword(),
		owner:     owner,
		lock:      lock,
	}
	ok := false
	defer func() {
		if !ok {
			_ = p.Close()
		}
	}()
	if err := owner.chown(dir); err != nil {
		return nil, err
	}
	if err := owner.checkReachable(dir); err != nil {
		return nil, err
	}
	if err := p.initDataDir(); err != nil {
		return nil, err
	}
	if err := p.writeHBA(); err != nil {
		return nil, err
	}
	if err := startOnFreePort(func(port int) error {
		p.Port = port
		if err := p.writeConf(opts); err != nil {
			return err
		}
		return p.startServer()
	}); err != nil {
		return nil, err
	}
	if err := p.setSuperuserPassword(); err != nil {
		return nil, err
	}
	ok = true
	return p, nil
}

// StartT is Start for tests: the server is closed when the test ends, and a
// failure (including missing binaries) fails the test; it never skips.
func StartT(t testing.TB, opts Options) *Postgres {
	t.Helper()
	p, err := Start(opts)
	if err != nil {
		t.Fatalf("pgtest: start PostgreSQL: %v", err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("pgtest: close PostgreSQL: %v", err)
		}
	})
	return p
}

var confKey = regexp.MustCompile(`^[a-z_][a-z0-9_.]*$`)

func (o Options) validate() error {
	if o.MaxConnections < 0 || o.SuperuserReservedConnections < 0 {
		return errors.New("pgtest: MaxConnections and SuperuserReservedConnections must not be negative")
	}
	for k := range o.ExtraConf {
		if !confKey.MatchString(k) {
			return fmt.Errorf("pgtest: ExtraConf: bad setting name %q", k)
		}
	}
	return nil
}

func (p *Postgres) initDataDir() error {
	tmpl, err := templateDir(p.BinDir, p.owner)
	if err != nil {
		return err
	}
	if tmpl == "" {
		return runInitdb(p.BinDir, p.DataDir, p.owner, p.LogFile)
	}
	if err := copyTree(tmpl, p.DataDir, p.owner); err != nil {
		return fmt.Errorf("copy data directory template: %w", err)
	}
	// The template's postgresql.conf is the pristine base; writeConf appends
	// to it on every (re)configuration.
	return nil
}

func (p *Postgres) writeHBA() error {
	// local trust: the harness (CreateRole, Exec, setting the password) needs
	// no password. host scram-sha-256: every TCP login needs the real one.
	const hba = "local all all trust\n" +
		"host all all 127.0.0.1/32 scram-sha-256\n"
	return p.writeOwned(filepath.Join(p.DataDir, "pg_hba.conf"), hba)
}

func (p *Postgres) writeConf(opts Options) error {
	base, err := os.ReadFile(filepath.Join(p.DataDir, "postgresql.conf"))
	if err != nil {
		return err
	}
	const marker = "\n# --- pgtest ---\n"
	if i := strings.Index(string(base), marker); i >= 0 {
		base = base[:i]
	}
	maxConn := opts.MaxConnections
	if maxConn == 0 {
		maxConn = 100
	}
	settings := [][2]string{
		{"listen_addresses", p.Host},
		{"port", strconv.Itoa(p.Port)},
		{"unix_socket_directories", p.SocketDir},
		{"max_connections", strconv.Itoa(maxConn)},
		// Durability buys nothing for throw-away data; these make startup,
		// DDL and shutdown fast.
		{"fsync", "off"},
		{"synchronous_commit", "off"},
		{"full_page_writes", "off"},
		// Many servers may run at once; initdb's 128MB each is not needed.
		{"shared_buffers", "32MB"},
		{"logging_collector", "off"},
		{"lc_messages", "C"},
	}
	if opts.SuperuserReservedConnections > 0 {
		settings = append(settings, [2]string{"superuser_reserved_connections", strconv.Itoa(opts.SuperuserReservedConnections)})
	}
	keys := make([]string, 0, len(opts.ExtraConf))
	for k := range opts.ExtraConf {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		settings = append(settings, [2]string{k, opts.ExtraConf[k]})
	}
	var b strings.Builder
	b.Write(base)
	b.WriteString(marker)
	for _, kv := range settings {
		fmt.Fprintf(&b, "%s = '%s'\n", kv[0], strings.ReplaceAll(kv[1], "'", "''"))
	}
	return p.writeOwned(filepath.Join(p.DataDir, "postgresql.conf"), b.String())
}

func (p *Postgres) writeOwned(path, content string) error {
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		return err
	}
	return p.owner.chown(path)
}

// errPortInUse marks a startup that failed only because the port was taken.
var errPortInUse = errors.New("port in use")

// startServer runs postgres in the foreground as a child of this process (not
// via pg_ctl, which detaches it): the child is reaped here and killed if this
// process dies. It returns when the server accepts connections.
func (p *Postgres) startServer() error {
	logf, err := os.OpenFile(p.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close() // the child has its own copy
	if err := p.owner.chown(p.LogFile); err != nil {
		return err
	}
	offset := logSize(p.LogFile)
	cmd := p.owner.command(filepath.Join(p.BinDir, "postgres"), "-D", p.DataDir)
	cmd.Stdout, cmd.Stderr = logf, logf
	pr, err := startProc(cmd)
	if err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	if err := p.waitReady(pr); err != nil {
		_ = pr.stop(syscall.SIGQUIT, 5*time.Second)
		tail := logTailSince(p.LogFile, offset, logTailLines)
		if strings.Contains(tail, "Address already in use") {
			err = fmt.Errorf("%w: %v", errPortInUse, err)
		}
		return fmt.Errorf("postgres on port %d: %w\n--- %s (tail) ---\n%s", p.Port, err, p.LogFile, tail)
	}
	p.mu.Lock()
	p.proc = pr
	p.mu.Unlock()
	return nil
}

// waitReady polls postmaster.pid until the postmaster reports "ready" (line
// 8, the same signal pg_ctl -w uses), which it writes after its sockets
// listen.
func (p *Postgres) waitReady(pr *proc) error {
	deadline := time.Now().Add(startTimeout)
	for {
		if pr.exited() {
			return fmt.Errorf("postgres exited during startup: %v", pr.err)
		}
		if b, err := os.ReadFile(filepath.Join(p.DataDir, "postmaster.pid")); err == nil {
			lines := strings.Split(string(b), "\n")
			if len(lines) >= 8 && strings.TrimSpace(lines[0]) == strconv.Itoa(pr.pid()) &&
				strings.HasPrefix(lines[7], "ready") {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("postgres not ready after %v", startTimeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (p *Postgres) setSuperuserPassword() error {
	secret, err := scramSecret(p.password)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return p.Exec(ctx, "ALTER ROLE postgres PASSWORD "+quoteLiteral(secret))
}

// Password returns the superuser's password, for tests that check it is
// redacted.
func (p *Postgres) Password() string { return p.password }

// SuperuserDSN returns a URL DSN for user postgres over TCP with its password
// and sslmode=disable; db "" means "postgres".
func (p *Postgres) SuperuserDSN(db string) string {
	return p.DSN("postgres", p.password, db)
}

// DSN returns a URL DSN to this server over TCP with sslmode=disable; db ""
// means "postgres", password "" leaves the password out.
func (p *Postgres) DSN(user, password, db string) string {
	if db == "" {
		db = "postgres"
	}
	return buildDSN(p.Host, p.Port, user, password, db)
}

func buildDSN(host string, port int, user, password, db string) string {
	u := url.URL{
		Scheme:   "postgres",
		Host:     fmt.Sprintf("%s:%d", host, port),
		Path:     "/" + db,
		RawQuery: "sslmode=disable",
	}
	if password != "" {
		u.User = url.UserPassword(user, password)
	} else {
		u.User = url.User(user)
	}
	return u.String()
}

// localConfig is a superuser connection over the unix socket (trust).
func (p *Postgres) localConfig(db string) (*pgx.ConnConfig, error) {
	cfg, err := pgx.ParseConfig("")
	if err != nil {
		return nil, err
	}
	cfg.Host = p.SocketDir
	cfg.Port = uint16(p.Port)
	cfg.User = "postgres"
	cfg.Password = ""
	cfg.Database = db
	cfg.TLSConfig = nil
	cfg.Fallbacks = nil
	// The harness's own short admin sessions (CreateRole, Exec) may still be closing when a
	// test samples pg_stat_activity. The exporter leaves out sessions whose application_name
	// starts with its own name (collector.ApplicationName; not imported: the collector's tests
	// import this package), so these never show up as a stray pool in a test's numbers.
	cfg.RuntimeParams = map[string]string{"application_name": "dbpool_exporter_pgtest"}
	return cfg, nil
}

// Exec runs sql (several statements are fine: it goes over the simple
// protocol) as the superuser in database postgres.
func (p *Postgres) Exec(ctx context.Context, sql string) error {
	cfg, err := p.localConfig("postgres")
	if err != nil {
		return err
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("pgtest: connect as superuser: %w", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("pgtest: exec: %w", err)
	}
	return nil
}

// CreateRole creates a login role and grants it the given roles (e.g.
// "pg_monitor"). The password goes to the server as a SCRAM verifier, so
// the plain text shows up in no server log and in no pg_stat_activity.query.
// An empty password creates a role that can only log in over the socket.
func (p *Postgres) CreateRole(name, password string, superuser bool, grants ...string) error {
	var b strings.Builder
	b.WriteString("CREATE ROLE " + pgx.Identifier{name}.Sanitize() + " LOGIN")
	if superuser {
		b.WriteString(" SUPERUSER")
	}
	if password != "" {
		secret := password
		if isASCII(password) {
			s, err := scramSecret(password)
			if err != nil {
				return err
			}
			secret = s
		}
		// Non-ASCII passwords go as plain text so that the server applies
		// SASLprep itself.
		b.WriteString(" PASSWORD " + quoteLiteral(secret))
	}
	b.WriteString(";\n")
	for _, g := range grants {
		fmt.Fprintf(&b, "GRANT %s TO %s;\n", pgx.Identifier{g}.Sanitize(), pgx.Identifier{name}.Sanitize())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.Exec(ctx, b.String()); err != nil {
		return fmt.Errorf("pgtest: create role %q: %w", name, err)
	}
	return nil
}

// quoteLiteral quotes s as an SQL string literal (standard_conforming_strings
// is on since PostgreSQL 9.1).
func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// PostmasterPID returns the postmaster's PID as written in postmaster.pid,
// e.g. to freeze the server with SIGSTOP.
func (p *Postgres) PostmasterPID() (int, error) {
	b, err := os.ReadFile(filepath.Join(p.DataDir, "postmaster.pid"))
	if err != nil {
		return 0, fmt.Errorf("pgtest: server not running: %w", err)
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil {
		return 0, fmt.Errorf("pgtest: postmaster.pid: %w", err)
	}
	return pid, nil
}

// Stop shuts the server down the way `pg_ctl stop -m fast` does (SIGINT:
// roll back open transactions, disconnect clients, checkpoint) and keeps the
// data directory for Restart. Stopping a stopped server is a no-op.
func (p *Postgres) Stop() error {
	p.mu.Lock()
	pr := p.proc
	p.proc = nil
	p.mu.Unlock()
	if pr == nil {
		return nil
	}
	return pr.stop(syscall.SIGINT, stopGrace)
}

// Restart starts the server again on the same port with the same data and
// waits until it accepts connections; a running server is stopped first.
func (p *Postgres) Restart() error {
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	if closed {
		return errors.New("pgtest: restart after Close")
	}
	if err := p.Stop(); err != nil {
		return err
	}
	return p.startServer()
}

// Close stops the server at once (immediate shutdown, as `pg_ctl stop -m
// immediate`: the data is thrown away, so no checkpoint), stops PgBouncers
// started in front of it, and removes the temp directory. It is safe to call
// more than once and on a stopped server.
func (p *Postgres) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	pr := p.proc
	p.proc = nil
	bouncers := p.bouncers
	p.bouncers = nil
	p.mu.Unlock()

	var errs []error
	for _, b := range bouncers {
		errs = append(errs, b.Close())
	}
	if pr != nil {
		// The postmaster exits only after all its children have, so no
		// backend outlives this.
		errs = append(errs, pr.stop(syscall.SIGQUIT, 10*time.Second))
	}
	errs = append(errs, removeTempDir(p.Dir, p.lock))
	return errors.Join(errs...)
}

// startOnFreePort calls start with a free loopback port, and again with a new one when
// another process took the port between freePort and the server's bind (errPortInUse).
func startOnFreePort(start func(port int) error) error {
	for attempt := 1; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return err
		}
		err = start(port)
		if err == nil || !errors.Is(err, errPortInUse) || attempt >= portAttempts {
			return err
		}
	}
}
