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

// PgBouncerOptions configure a PgBouncer in front of a Postgres.
type PgBouncerOptions struct {
	// PoolMode is pool_mode; "" means "transaction".
	PoolMode string
	// DefaultPoolSize, ReservePoolSize, ReservePoolTimeout and MaxClientConn
	// set the settings of the same names; zero keeps PgBouncer's defaults
	// (20, 0, 5s, 100).
	DefaultPoolSize    int
	ReservePoolSize    int
	ReservePoolTimeout time.Duration
	MaxClientConn      int
	// Databases is the [databases] section: name -> connection string, e.g.
	// "dbname=postgres pool_size=5". host and port of the Postgres are added
	// when the string names no host. nil means one entry, "app", for the
	// database postgres.
	Databases map[string]string
	// IgnoreStartupParameters is ignore_startup_parameters; nil means
	// extra_float_digits, statement_timeout and lock_timeout, which clients
	// (and the exporter) may send at login and which PgBouncer would
	// otherwise refuse with "unsupported startup parameter". Ignored means
	// dropped: they do not reach PostgreSQL.
	IgnoreStartupParameters []string
	// ExtraConf holds more [pgbouncer] settings, written last.
	ExtraConf map[string]string
}

// PgBouncer is a running (or stopped) throw-away PgBouncer.
//
// Clients authenticate with scram-sha-256. Roles of the Postgres (including
// those made later with CreateRole) log in with their own passwords: PgBouncer
// looks them up with auth_query as the superuser and logs in to PostgreSQL
// with the client's SCRAM keys, over TCP.
type PgBouncer struct {
	Host       string // always "127.0.0.1"
	Port       int
	Dir        string // temp directory with config, auth_file, log, pidfile, socket
	ConfigFile string
	LogFile    string

	adminUser, adminPassword string
	statsUser, statsPassword string
	bin                      string
	owner                    *runAs
	pg                       *Postgres
	lock                     *os.File // flock on Dir while this process owns it

	mu     sync.Mutex
	proc   *childproc.Process
	closed bool
}

const (
	pgbAdminUser = "pgbouncer_admin"
	pgbStatsUser = "pgbouncer_stats"
)

// StartPgBouncer starts a PgBouncer in front of p. Close of p also closes it.
// On error nothing is left behind.
func StartPgBouncer(p *Postgres, opts PgBouncerOptions) (*PgBouncer, error) {
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	if closed {
		return nil, errors.New("pgtest: StartPgBouncer in front of a closed Postgres")
	}
	bin, err := pgBouncerPath()
	if err != nil {
		return nil, err
	}
	dir, lock, err := newTempDir(dirPrefix + "pgbouncer-")
	if err != nil {
		return nil, err
	}
	b := &PgBouncer{
		Host:          "127.0.0.1",
		Dir:           dir,
		ConfigFile:    filepath.Join(dir, "pgbouncer.ini"),
		LogFile:       filepath.Join(dir, "pgbouncer.log"),
		adminUser:     pgbAdminUser,
		adminPassword: randomPassword(),
		statsUser:     pgbStatsUser,
		statsPassword: randomPassword(),
		bin:           bin,
		owner:         p.owner,
		pg:            p,
		lock:          lock,
	}
	ok := false
	defer func() {
		if !ok {
			_ = b.Close()
		}
	}()
	if err := b.owner.chown(dir); err != nil {
		return nil, err
	}
	if err := b.owner.checkReachable(dir); err != nil {
		return nil, err
	}
	if err := b.writeAuthFile(); err != nil {
		return nil, err
	}
	if err := startOnFreePort(func(port int) error {
		b.Port = port
		if err := b.writeConfig(opts); err != nil {
			return err
		}
		return b.start()
	}); err != nil {
		return nil, err
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, errors.New("pgtest: Postgres closed while PgBouncer started")
	}
	p.bouncers = append(p.bouncers, b)
	p.mu.Unlock()
	ok = true
	return b, nil
}

// StartPgBouncerT is StartPgBouncer for tests: closed when the test ends,
// and any failure fails the test (never skips).
func StartPgBouncerT(t testing.TB, p *Postgres, opts PgBouncerOptions) *PgBouncer {
	t.Helper()
	b, err := StartPgBouncer(p, opts)
	if err != nil {
		t.Fatalf("pgtest: start PgBouncer: %v", err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("pgtest: close PgBouncer: %v", err)
		}
	})
	return b
}

// writeAuthFile lists the users PgBouncer knows by itself, with plain-text
// passwords (PgBouncer accepts them for scram-sha-256): the admin and stats
// users of the console, and postgres, which runs auth_query and so must be
// able to log in to PostgreSQL on its own.
func (b *PgBouncer) writeAuthFile() error {
	var s strings.Builder
	for _, u := range [][2]string{
		{"postgres", b.pg.password},
		{b.adminUser, b.adminPassword},
		{b.statsUser, b.statsPassword},
	} {
		fmt.Fprintf(&s, "\"%s\" \"%s\"\n", u[0], u[1])
	}
	return b.writeOwned(filepath.Join(b.Dir, "userlist.txt"), s.String())
}

var hasHost = regexp.MustCompile(`(^|\s)host\s*=`)

func (b *PgBouncer) writeConfig(opts PgBouncerOptions) error {
	dbs := opts.Databases
	if dbs == nil {
		dbs = map[string]string{"app": "dbname=postgres"}
	}
	var s strings.Builder
	s.WriteString("[databases]\n")
	for _, name := range sortedKeys(dbs) {
		conn := dbs[name]
		if !hasHost.MatchString(conn) {
			conn = fmt.Sprintf("host=%s port=%d %s", b.pg.Host, b.pg.Port, conn)
		}
		fmt.Fprintf(&s, "%s = %s\n", name, conn)
	}

	poolMode := opts.PoolMode
	if poolMode == "" {
		poolMode = "transaction"
	}
	ignore := opts.IgnoreStartupParameters
	if ignore == nil {
		ignore = []string{"extra_float_digits", "statement_timeout", "lock_timeout"}
	}
	settings := [][2]string{
		{"listen_addr", b.Host},
		{"listen_port", strconv.Itoa(b.Port)},
		{"unix_socket_dir", b.Dir},
		{"logfile", b.LogFile},
		{"pidfile", filepath.Join(b.Dir, "pgbouncer.pid")},
		{"auth_type", "scram-sha-256"},
		{"auth_file", filepath.Join(b.Dir, "userlist.txt")},
		{"auth_user", "postgres"},
		{"admin_users", b.adminUser},
		{"stats_users", b.statsUser},
		{"pool_mode", poolMode},
	}
	if len(ignore) > 0 {
		settings = append(settings, [2]string{"ignore_startup_parameters", strings.Join(ignore, ",")})
	}
	if opts.DefaultPoolSize > 0 {
		settings = append(settings, [2]string{"default_pool_size", strconv.Itoa(opts.DefaultPoolSize)})
	}
	if opts.ReservePoolSize > 0 {
		settings = append(settings, [2]string{"reserve_pool_size", strconv.Itoa(opts.ReservePoolSize)})
	}
	if opts.ReservePoolTimeout > 0 {
		settings = append(settings, [2]string{"reserve_pool_timeout", strconv.FormatFloat(opts.ReservePoolTimeout.Seconds(), 'f', -1, 64)})
	}
	if opts.MaxClientConn > 0 {
		settings = append(settings, [2]string{"max_client_conn", strconv.Itoa(opts.MaxClientConn)})
	}
	for _, k := range sortedKeys(opts.ExtraConf) {
		settings = append(settings, [2]string{k, opts.ExtraConf[k]})
	}
	s.WriteString("\n[pgbouncer]\n")
	for _, kv := range settings {
		if strings.ContainsAny(kv[0]+kv[1], "\n\r") {
			return fmt.Errorf("pgtest: pgbouncer setting %q: newline in name or value", kv[0])
		}
		fmt.Fprintf(&s, "%s = %s\n", kv[0], kv[1])
	}
	return b.writeOwned(b.ConfigFile, s.String())
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func (b *PgBouncer) writeOwned(path, content string) error {
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		return err
	}
	return b.owner.chown(path)
}
