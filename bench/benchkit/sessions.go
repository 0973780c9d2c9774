package benchkit

import (
	"context"
	"fmt"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/dbpool/dbpool_exporter/tools/pgtest"
)

// The benchmarks' application sessions: a realistic mix of idle, idle-in-transaction,
// running and lock-waiting backends, opened concurrently and closed without leaving a backend
// behind.

// Kind is what one application session does.
type Kind int

// The kinds of sessions in a Mix.
const (
	Idle Kind = iota
	IdleInTx
	Active     // SELECT pg_sleep(3600)
	LockWaiter // active, waiting for LockTable
	kinds
)

const (
	// LockTable is the table that lock waiters queue on behind one session that holds it;
	// CreateLockTable makes it.
	LockTable = "bench_lock"
	// Dialers bounds concurrent logins: SCRAM costs CPU on both sides and the postmaster
	// forks one backend per login.
	Dialers = 16
	// AppNamesPerKind is how many application names of each kind the sessions are spread over, round-robin: api-N
	// (N < AppNamesPerKind, the configured pool) and worker-N (grouped per application).
	AppNamesPerKind = 10
)

// CreateLockTable creates LockTable and lets role use it.
func CreateLockTable(ctx context.Context, pg *pgtest.Postgres, role string) error {
	return pg.Exec(ctx, "CREATE TABLE "+LockTable+" (id int); GRANT ALL ON "+LockTable+" TO "+pgx.Identifier{role}.Sanitize())
}

// Mix is how many sessions of each kind a level has.
type Mix [kinds]int

// MixFor is a busy but healthy service: most pooled connections idle, a tenth in an open
// transaction, a twentieth running a query, one in a hundred stuck behind a lock.
func MixFor(n int) Mix {
	var m Mix
	m[Active] = max(1, int(math.Round(float64(n)*0.05)))
	m[IdleInTx] = max(1, int(math.Round(float64(n)*0.10)))
	m[LockWaiter] = int(math.Round(float64(n) * 0.01))
	m[Idle] = n - m[Active] - m[IdleInTx] - m[LockWaiter]
	return m
}

// Total is the number of sessions in m.
func (m Mix) Total() int {
	n := 0
	for _, c := range m {
		n += c
	}
	return n
}

func (m Mix) String() string {
	return fmt.Sprintf("%d idle, %d idle in transaction (one holds a lock), %d running pg_sleep, %d waiting on that lock",
		m[Idle], m[IdleInTx], m[Active], m[LockWaiter])
}

type session struct {
	conn *pgx.Conn
	// done is closed when the session's background statement returned; nil for sessions
	// without one.
	done chan struct{}
}

// SessionSet is the application sessions of one benchmark run, all logged in as one role.
type SessionSet struct {
	cfg   *pgx.ConnConfig
	role  string
	bgCtx context.Context // background statements; cancelled only as a last resort
	bgEnd context.CancelFunc

	mu       sync.Mutex
	sessions []*session
	have     Mix
	next     int // round-robin index into the application names
}

// NewSessionSet returns an empty set whose sessions log in with cfg (whose user is the
// application role).
func NewSessionSet(cfg *pgx.ConnConfig) *SessionSet {
	ctx, cancel := context.WithCancel(context.Background())
	return &SessionSet{cfg: cfg, role: cfg.User, bgCtx: ctx, bgEnd: cancel}
}

// Len is the number of open sessions.
func (s *SessionSet) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

func (s *SessionSet) appName() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := s.next
	s.next++
	prefix := "api"
	if (i/AppNamesPerKind)%2 == 1 {
		prefix = "worker"
	}
	return fmt.Sprintf("%s-%d", prefix, i%AppNamesPerKind)
}

// Grow opens sessions until the set holds want. The lock holder comes first, so that waiters
// have something to wait for.
func (s *SessionSet) Grow(ctx context.Context, want Mix) error {
	if s.have[IdleInTx] == 0 && want[IdleInTx] > 0 {
		if err := s.open(ctx, IdleInTx, true, s.appName()); err != nil {
			return err
		}
	}
	s.mu.Lock()
	have := s.have
	s.mu.Unlock()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(Dialers)
	for k := range kinds {
		for range want[k] - have[k] {
			g.Go(func() error { return s.open(gctx, k, false, s.appName()) })
		}
	}
	return g.Wait()
}

// Distinct gives n sessions n distinct application names, name(0)..name(n-1): the sessions
// without a background statement are renamed with SET, and idle sessions are opened for the
// rest. It returns how many it opened.
func (s *SessionSet) Distinct(ctx context.Context, n int, name func(i int) string) (opened int, err error) {
	s.mu.Lock()
	var quiet []*session
	for _, sess := range s.sessions {
		if sess.done == nil && len(quiet) < n {
			quiet = append(quiet, sess)
		}
	}
	s.mu.Unlock()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(Dialers)
	for i, sess := range quiet {
		g.Go(func() error {
			_, err := sess.conn.Exec(gctx, "SELECT set_config('application_name', $1, false)", name(i))
			return err
		})
	}
	for i := len(quiet); i < n; i++ {
		g.Go(func() error { return s.open(gctx, Idle, false, name(i)) })
	}
	return n - len(quiet), g.Wait()
}

func (s *SessionSet) open(ctx context.Context, k Kind, holdLock bool, appName string) error {
	cfg := s.cfg.Copy()
	cfg.RuntimeParams["application_name"] = appName
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("open application session: %w", err)
	}
	sess := &session{conn: conn}
	s.mu.Lock()
	s.sessions = append(s.sessions, sess)
	s.mu.Unlock()

	// A pooled connection has run queries before; so do these.
	setup := []string{"SELECT 1"}
	switch {
	case k == IdleInTx && holdLock:
		setup = []string{"BEGIN", "LOCK TABLE " + LockTable + " IN ACCESS EXCLUSIVE MODE"}
	case k == IdleInTx:
		setup = []string{"BEGIN", "SELECT 1"}
	}
	for _, q := range setup {
		if _, err := conn.Exec(ctx, q); err != nil {
			return fmt.Errorf("session setup %q: %w", q, err)
		}
	}
	var background []string
	switch k {
	case Active:
		background = []string{"SELECT pg_sleep(3600)"}
	case LockWaiter:
		background = []string{"BEGIN", "LOCK TABLE " + LockTable + " IN ACCESS EXCLUSIVE MODE"}
	}
	if len(background) > 0 {
		sess.done = make(chan struct{})
		go func() {
			defer close(sess.done)
			for _, q := range background {
				// Ends with "canceling statement due to user request" at cleanup.
				if _, err := conn.Exec(s.bgCtx, q); err != nil {
					return
				}
			}
		}()
	}
	s.mu.Lock()
	s.have[k]++
	s.mu.Unlock()
	return nil
}

// Close cancels the background statements on the server (pg_cancel_backend, so that no
// backend keeps sleeping), then closes every session.
func (s *SessionSet) Close(pg *pgtest.Postgres) {
	s.mu.Lock()
	sessions := s.sessions
	s.sessions = nil
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = pg.Exec(ctx, "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE usename = "+quoteLiteral(s.role)+" AND state = 'active'")
	timeout := time.After(10 * time.Second)
	for _, sess := range sessions {
		if sess.done == nil {
			continue
		}
		select {
		case <-sess.done:
		case <-timeout:
			// Last resort: pgx gives up on the socket; the server then ends the backend
			// at shutdown.
			s.bgEnd()
			<-sess.done
		}
	}
	s.bgEnd()
	var g errgroup.Group
	g.SetLimit(Dialers * 4)
	for _, sess := range sessions {
		g.Go(func() error {
			c, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			return sess.conn.Close(c)
		})
	}
	_ = g.Wait()
}

// WaitForMix waits until pg_stat_activity shows the sessions of role in their intended
// states: the background statements start asynchronously.
func WaitForMix(ctx context.Context, monitor *pgx.Conn, role string, want Mix) error {
	const q = `SELECT
  count(*) FILTER (WHERE state = 'idle'),
  count(*) FILTER (WHERE state = 'idle in transaction'),
  count(*) FILTER (WHERE state = 'active' AND wait_event_type IS DISTINCT FROM 'Lock'),
  count(*) FILTER (WHERE state = 'active' AND wait_event_type = 'Lock')
FROM pg_stat_activity WHERE usename = $1`
	deadline := time.Now().Add(60 * time.Second)
	for {
		var got Mix
		if err := monitor.QueryRow(ctx, q, role).Scan(&got[Idle], &got[IdleInTx], &got[Active], &got[LockWaiter]); err != nil {
			return err
		}
		if got == want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("sessions did not reach their states in 60s: want %s; have %s", want, got)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// Roles is what Prepare made on a throwaway server.
type Roles struct {
	// Monitor is a connection of the monitoring role (pg_monitor) whose application_name
	// is AppName: the bare query and the benchmark's own sampling use it.
	Monitor    *pgx.Conn
	MonitorDSN string
	// App logs in application sessions (NewSessionSet).
	App *pgx.ConnConfig
}

// Prepare creates a monitoring role with pg_monitor and an application role, LockTable, and
// the monitoring connection, and prints the host line. Close the connection when done.
func Prepare(ctx context.Context, pg *pgtest.Postgres, monitorRole, appRole string) (*Roles, error) {
	monitorPW, appPW := RandomPassword(), RandomPassword()
	if err := pg.CreateRole(monitorRole, monitorPW, false, "pg_monitor"); err != nil {
		return nil, err
	}
	if err := pg.CreateRole(appRole, appPW, false); err != nil {
		return nil, err
	}
	// Lock waiters queue on this table behind one session that holds it.
	if err := CreateLockTable(ctx, pg, appRole); err != nil {
		return nil, err
	}
	app, err := pgx.ParseConfig(pg.DSN(appRole, appPW, ""))
	if err != nil {
		return nil, err
	}
	r := &Roles{MonitorDSN: pg.DSN(monitorRole, monitorPW, ""), App: app}
	if r.Monitor, err = Connect(ctx, r.MonitorDSN, AppName); err != nil {
		return nil, fmt.Errorf("monitoring connection: %w", err)
	}
	var serverVersion string
	if err := r.Monitor.QueryRow(ctx, "SHOW server_version").Scan(&serverVersion); err != nil {
		r.Monitor.Close(context.Background())
		return nil, err
	}
	PrintHost(serverVersion)
	return r, nil
}
