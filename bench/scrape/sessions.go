package main

import (
	"context"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/dbpool/dbpool_exporter/tools/pgtest"
)

// The benchmark's application sessions: a realistic mix of idle, idle-in-transaction,
// running and lock-waiting backends, opened concurrently and closed without leaving a backend
// behind.

type kind int

const (
	idle kind = iota
	idleInTx
	active     // SELECT pg_sleep(3600)
	lockWaiter // active, waiting for bench_lock
	kinds
)

// mix is how many sessions of each kind a level has.
type mix [kinds]int

// mixFor is a busy but healthy service: most pooled connections idle, a tenth in an open
// transaction, a twentieth running a query, one in a hundred stuck behind a lock.
func mixFor(n int) mix {
	var m mix
	m[active] = max(1, int(math.Round(float64(n)*0.05)))
	m[idleInTx] = max(1, int(math.Round(float64(n)*0.10)))
	m[lockWaiter] = int(math.Round(float64(n) * 0.01))
	m[idle] = n - m[active] - m[idleInTx] - m[lockWaiter]
	return m
}

func (m mix) String() string {
	return fmt.Sprintf("%d idle, %d idle in transaction (one holds a lock), %d running pg_sleep, %d waiting on that lock",
		m[idle], m[idleInTx], m[active], m[lockWaiter])
}

type session struct {
	conn *pgx.Conn
	// done is closed when the session's background statement returned; nil for sessions
	// without one.
	done chan struct{}
}

type sessionSet struct {
	cfg   *pgx.ConnConfig
	bgCtx context.Context // background statements; cancelled only as a last resort
	bgEnd context.CancelFunc

	mu       sync.Mutex
	sessions []*session
	have     mix
	next     int // round-robin index into the application names
}

func newSessionSet(cfg *pgx.ConnConfig) *sessionSet {
	ctx, cancel := context.WithCancel(context.Background())
	return &sessionSet{cfg: cfg, bgCtx: ctx, bgEnd: cancel}
}

func (s *sessionSet) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

func (s *sessionSet) appName() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := s.next
	s.next++
	prefix := "api"
	if (i/appNamesPerKind)%2 == 1 {
		prefix = "worker"
	}
	return fmt.Sprintf("%s-%d", prefix, i%appNamesPerKind)
}

// grow opens sessions until the set holds want. The lock holder comes first, so that waiters
// have something to wait for.
func (s *sessionSet) grow(ctx context.Context, want mix) error {
	if s.have[idleInTx] == 0 && want[idleInTx] > 0 {
		if err := s.open(ctx, idleInTx, true); err != nil {
			return err
		}
	}
	s.mu.Lock()
	have := s.have
	s.mu.Unlock()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(dialers)
	for k := range kinds {
		for range want[k] - have[k] {
			g.Go(func() error { return s.open(gctx, k, false) })
		}
	}
	return g.Wait()
}

func (s *sessionSet) open(ctx context.Context, k kind, holdLock bool) error {
	cfg := s.cfg.Copy()
	cfg.RuntimeParams["application_name"] = s.appName()
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
	case k == idleInTx && holdLock:
		setup = []string{"BEGIN", "LOCK TABLE bench_lock IN ACCESS EXCLUSIVE MODE"}
	case k == idleInTx:
		setup = []string{"BEGIN", "SELECT 1"}
	}
	for _, q := range setup {
		if _, err := conn.Exec(ctx, q); err != nil {
			return fmt.Errorf("session setup %q: %w", q, err)
		}
	}
	var background []string
	switch k {
	case active:
		background = []string{"SELECT pg_sleep(3600)"}
	case lockWaiter:
		background = []string{"BEGIN", "LOCK TABLE bench_lock IN ACCESS EXCLUSIVE MODE"}
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

// close cancels the background statements on the server (pg_cancel_backend, so that no
// backend keeps sleeping), then closes every session.
func (s *sessionSet) close(pg *pgtest.Postgres) {
	s.mu.Lock()
	sessions := s.sessions
	s.sessions = nil
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = pg.Exec(ctx, "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE usename = '"+appRole+"' AND state = 'active'")
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
	g.SetLimit(dialers * 4)
	for _, sess := range sessions {
		g.Go(func() error {
			c, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			return sess.conn.Close(c)
		})
	}
	_ = g.Wait()
}

// waitForMix waits until pg_stat_activity shows the sessions in their intended states: the
// background statements start asynchronously.
func waitForMix(ctx context.Context, monitor *pgx.Conn, want mix) error {
	const q = `SELECT
  count(*) FILTER (WHERE state = 'idle'),
  count(*) FILTER (WHERE state = 'idle in transaction'),
  count(*) FILTER (WHERE state = 'active' AND wait_event_type IS DISTINCT FROM 'Lock'),
  count(*) FILTER (WHERE state = 'active' AND wait_event_type = 'Lock')
FROM pg_stat_activity WHERE usename = $1`
	deadline := time.Now().Add(60 * time.Second)
	for {
		var got mix
		if err := monitor.QueryRow(ctx, q, appRole).Scan(&got[idle], &got[idleInTx], &got[active], &got[lockWaiter]); err != nil {
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
