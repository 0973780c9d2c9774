// Package pgtest is tooling, not product: it starts throw-away PostgreSQL servers and
// PgBouncers for integration tests, the demo and the benchmark.
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
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dbpool/dbpool_exporter/tools/childproc"
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
	proc     *childproc.Process // nil while stopped
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
