package poolsim_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dbpool/dbpool_exporter/tools/pgtest"
	"github.com/dbpool/dbpool_exporter/tools/poolsim"
)

// eventually polls cond until it holds. The deadline only protects the test
// from hanging; no assertion depends on how fast the server is.
func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: never happened; last: %s", what, detail)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// server is a PostgreSQL started for one test, with an admin connection that
// looks at pg_stat_activity from outside the pools under test.
type server struct {
	dsn   string
	admin *pgx.Conn
}

func startServer(t *testing.T) *server {
	t.Helper()
	pg := pgtest.StartT(t, pgtest.Options{MaxConnections: 50})
	dsn := pg.SuperuserDSN("postgres")
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("admin connection: %v", err)
	}
	t.Cleanup(func() { _ = admin.Close(context.Background()) })
	return &server{dsn: dsn, admin: admin}
}

// backends counts client backends of one application_name, optionally in one state.
func (s *server) backends(t *testing.T, appName, state string) int {
	t.Helper()
	var n int
	err := s.admin.QueryRow(context.Background(),
		`SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND ($2 = '' OR state = $2)`,
		appName, state).Scan(&n)
	if err != nil {
		t.Fatalf("counting backends of %q: %v", appName, err)
	}
	return n
}

func (s *server) waitBackends(t *testing.T, appName string, want int) {
	t.Helper()
	eventually(t, fmt.Sprintf("%d backends for %s", want, appName), func() (bool, string) {
		n := s.backends(t, appName, "")
		return n == want, fmt.Sprintf("%d backends", n)
	})
}

func newPool(t *testing.T, s *server, appName string, set poolsim.PoolSettings) *poolsim.QueuePool {
	t.Helper()
	p, err := poolsim.NewQueuePool(poolsim.PoolConfig{DSN: s.dsn, ApplicationName: appName, PoolSettings: set})
	if err != nil {
		t.Fatalf("NewQueuePool: %v", err)
	}
	t.Cleanup(p.Close)
	return p
}

func checkStats(t *testing.T, when string, got poolsim.PoolStats, checkedOut, idle, open, overflow, pending int) {
	t.Helper()
	if got.CheckedOut != checkedOut || got.Idle != idle || got.Open != open || got.Overflow != overflow || got.Pending != pending {
		t.Errorf("%s: checked_out=%d idle=%d open=%d overflow=%d pending=%d, want %d %d %d %d %d",
			when, got.CheckedOut, got.Idle, got.Open, got.Overflow, got.Pending, checkedOut, idle, open, overflow, pending)
	}
}

func TestQueuePool(t *testing.T) {
	s := startServer(t)
	ctx := context.Background()

	t.Run("size, overflow, timeout and close on return", func(t *testing.T) {
		const app = "qp-limits"
		const timeout = time.Second
		p := newPool(t, s, app, poolsim.PoolSettings{Size: 2, MaxOverflow: 1, Timeout: timeout, PrePing: true})

		// Lazy, like QueuePool: nothing is opened before the first checkout.
		checkStats(t, "new pool", p.Stats(), 0, 0, 0, 0, 0)
		if n := s.backends(t, app, ""); n != 0 {
			t.Fatalf("new pool has %d backends, want 0", n)
		}

		conns := make([]*poolsim.PooledConn, 3)
		var wg sync.WaitGroup
		errs := make([]error, 3)
		for i := range conns {
			wg.Go(func() { conns[i], errs[i] = p.Checkout(ctx) })
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("checkout %d of size+overflow: %v", i, err)
			}
		}
		checkStats(t, "3 checked out", p.Stats(), 3, 0, 3, 1, 0)
		if n := s.backends(t, app, ""); n != 3 {
			t.Errorf("backends with 3 checked out: %d, want 3", n)
		}

		start := time.Now()
		done := make(chan error, 1)
		go func() {
			pc, err := p.Checkout(ctx)
			if pc != nil {
				pc.Release()
			}
			done <- err
		}()
		eventually(t, "the 4th checkout waits", func() (bool, string) {
			st := p.Stats()
			return st.Pending == 1, fmt.Sprintf("pending=%d", st.Pending)
		})
		err := <-done
		waited := time.Since(start)
		if !errors.Is(err, poolsim.ErrPoolTimeout) {
			t.Fatalf("4th checkout: err %v, want a pool timeout", err)
		}
		if want := "QueuePool limit of size 2 overflow 1 reached, connection timed out, timeout 1.00"; err.Error() != want {
			t.Errorf("timeout message %q, want %q", err.Error(), want)
		}
		if waited < timeout {
			t.Errorf("4th checkout failed after %s, before the %s timeout", waited, timeout)
		}
		st := p.Stats()
		if st.TimeoutsTotal != 1 || st.CheckoutsTotal != 3 {
			t.Errorf("timeouts_total=%d checkouts_total=%d, want 1 and 3", st.TimeoutsTotal, st.CheckoutsTotal)
		}
		checkStats(t, "after the timeout", st, 3, 0, 3, 1, 0)

		// QueuePool keeps up to pool_size connections idle; only the one
		// returned when pool_size are already idle is closed.
		conns[0].Release()
		checkStats(t, "1 returned", p.Stats(), 2, 1, 3, 1, 0)
		conns[1].Release()
		checkStats(t, "2 returned", p.Stats(), 1, 2, 3, 1, 0)
		if n := s.backends(t, app, ""); n != 3 {
			t.Errorf("backends before the overflow connection returns: %d, want 3", n)
		}
		conns[2].Release()
		st = p.Stats()
		checkStats(t, "all returned", st, 0, 2, 2, 0, 0)
		if st.OverflowClosesTotal != 1 {
			t.Errorf("overflow_closes_total=%d, want 1", st.OverflowClosesTotal)
		}
		s.waitBackends(t, app, 2)

		// Release is idempotent: a second call must not free a slot twice.
		conns[2].Release()
		checkStats(t, "double release", p.Stats(), 0, 2, 2, 0, 0)
	})

	t.Run("a waiter receives the returned connection", func(t *testing.T) {
		const app = "qp-handoff"
		p := newPool(t, s, app, poolsim.PoolSettings{Size: 1, MaxOverflow: 0, Timeout: time.Minute})
		first, err := p.Checkout(ctx)
		if err != nil {
			t.Fatal(err)
		}
		pid := first.PID()
		got := make(chan *poolsim.PooledConn, 1)
		go func() {
			pc, err := p.Checkout(ctx)
			if err != nil {
				t.Errorf("waiting checkout: %v", err)
			}
			got <- pc
		}()
		eventually(t, "the second checkout waits", func() (bool, string) {
			st := p.Stats()
			return st.Pending == 1, fmt.Sprintf("pending=%d", st.Pending)
		})
		first.Release()
		second := <-got
		if second == nil {
			t.FailNow()
		}
		defer second.Release()
		if second.PID() != pid {
			t.Errorf("waiter got backend %d, want the returned %d", second.PID(), pid)
		}
		st := p.Stats()
		checkStats(t, "handed over", st, 1, 0, 1, 0, 0)
		if st.ConnectsTotal != 1 || st.TimeoutsTotal != 0 {
			t.Errorf("connects_total=%d timeouts_total=%d, want 1 and 0", st.ConnectsTotal, st.TimeoutsTotal)
		}
	})

	t.Run("a cancelled wait is not a pool timeout", func(t *testing.T) {
		p := newPool(t, s, "qp-cancel", poolsim.PoolSettings{Size: 1, MaxOverflow: 0, Timeout: time.Minute})
		held, err := p.Checkout(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer held.Release()
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			_, err := p.Checkout(cctx)
			done <- err
		}()
		eventually(t, "the checkout waits", func() (bool, string) {
			st := p.Stats()
			return st.Pending == 1, fmt.Sprintf("pending=%d", st.Pending)
		})
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("err %v, want context.Canceled", err)
		}
		if st := p.Stats(); st.TimeoutsTotal != 0 || st.Pending != 0 {
			t.Errorf("timeouts_total=%d pending=%d, want 0 and 0", st.TimeoutsTotal, st.Pending)
		}
	})

	t.Run("an open transaction is rolled back on return", func(t *testing.T) {
		const app = "qp-reset"
		p := newPool(t, s, app, poolsim.PoolSettings{Size: 1, MaxOverflow: 0, Timeout: time.Minute})
		pc, err := p.Checkout(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := pc.Conn().Exec(ctx, "BEGIN"); err != nil {
			t.Fatal(err)
		}
		if _, err := pc.Conn().Exec(ctx, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
		if n := s.backends(t, app, "idle in transaction"); n != 1 {
			t.Errorf("idle in transaction before return: %d, want 1", n)
		}
		pc.Release()
		if n := s.backends(t, app, "idle in transaction"); n != 0 {
			t.Errorf("idle in transaction after return: %d, want 0", n)
		}
		if n := s.backends(t, app, "idle"); n != 1 {
			t.Errorf("idle after return: %d, want 1 (kept in the pool)", n)
		}
	})

	t.Run("recycle", func(t *testing.T) {
		for _, tc := range []struct {
			name     string
			recycle  time.Duration
			replaced bool
		}{
			{"older than recycle is replaced", 50 * time.Millisecond, true},
			{"younger than recycle is reused", time.Hour, false},
			{"zero disables", 0, false},
		} {
			t.Run(tc.name, func(t *testing.T) {
				app := "qp-recycle-" + strings.ReplaceAll(tc.name, " ", "-")
				p := newPool(t, s, app, poolsim.PoolSettings{Size: 1, MaxOverflow: 0, Timeout: time.Minute, Recycle: tc.recycle, PrePing: true})
				pc, err := p.Checkout(ctx)
				if err != nil {
					t.Fatal(err)
				}
				pid := pc.PID()
				pc.Release()
				time.Sleep(100 * time.Millisecond) // older than the 50 ms recycle
				pc, err = p.Checkout(ctx)
				if err != nil {
					t.Fatal(err)
				}
				defer pc.Release()
				if replaced := pc.PID() != pid; replaced != tc.replaced {
					t.Errorf("backend %d -> %d: replaced=%v, want %v", pid, pc.PID(), replaced, tc.replaced)
				}
				st := p.Stats()
				if want := map[bool]uint64{true: 1}[tc.replaced]; st.RecyclesTotal != want {
					t.Errorf("recycles_total=%d, want %d", st.RecyclesTotal, want)
				}
				checkStats(t, "after recycle", st, 1, 0, 1, 0, 0)
				// The recycled connection is closed, not leaked.
				s.waitBackends(t, app, 1)
			})
		}
	})

	t.Run("pre-ping", func(t *testing.T) {
		for _, prePing := range []bool{true, false} {
			t.Run(fmt.Sprintf("pre_ping=%v", prePing), func(t *testing.T) {
				app := fmt.Sprintf("qp-preping-%v", prePing)
				p := newPool(t, s, app, poolsim.PoolSettings{Size: 1, MaxOverflow: 0, Timeout: time.Minute, PrePing: prePing})
				pc, err := p.Checkout(ctx)
				if err != nil {
					t.Fatal(err)
				}
				pid := pc.PID()
				pc.Release()
				var killed bool
				if err := s.admin.QueryRow(ctx, "SELECT pg_terminate_backend($1)", int32(pid)).Scan(&killed); err != nil || !killed {
					t.Fatalf("pg_terminate_backend(%d): %v %v", pid, killed, err)
				}
				s.waitBackends(t, app, 0)

				pc, err = p.Checkout(ctx)
				if err != nil {
					t.Fatalf("checkout after the backend was killed: %v", err)
				}
				defer pc.Release()
				_, qerr := pc.Conn().Exec(ctx, "SELECT 1")
				st := p.Stats()
				if prePing {
					// The dead connection is replaced transparently.
					if qerr != nil || pc.PID() == pid {
						t.Errorf("query on the checked-out connection: %v (backend %d, killed %d), want success on a new backend", qerr, pc.PID(), pid)
					}
					if st.PingFailuresTotal != 1 || st.ConnectsTotal != 2 {
						t.Errorf("ping_failures_total=%d connects_total=%d, want 1 and 2", st.PingFailuresTotal, st.ConnectsTotal)
					}
				} else if qerr == nil {
					// Without pre-ping the application gets the dead connection:
					// the failure that pre-ping exists to prevent.
					t.Errorf("query on a killed backend succeeded without pre-ping")
				}
			})
		}
	})

	t.Run("Close closes idle connections and fails waiters", func(t *testing.T) {
		const app = "qp-close"
		p := newPool(t, s, app, poolsim.PoolSettings{Size: 1, MaxOverflow: 1, Timeout: time.Minute})
		a, err := p.Checkout(ctx)
		if err != nil {
			t.Fatal(err)
		}
		b, err := p.Checkout(ctx)
		if err != nil {
			t.Fatal(err)
		}
		a.Release()
		// Take the idle one back so that the next checkout must wait.
		a, err = p.Checkout(ctx)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() {
			_, err := p.Checkout(ctx)
			done <- err
		}()
		eventually(t, "a waiter", func() (bool, string) { return p.Stats().Pending == 1, "" })
		p.Close()
		if err := <-done; !errors.Is(err, poolsim.ErrPoolClosed) {
			t.Errorf("waiter: %v, want ErrPoolClosed", err)
		}
		a.Release()
		b.Release()
		checkStats(t, "closed", p.Stats(), 0, 0, 0, 0, 0)
		s.waitBackends(t, app, 0)
		if _, err := p.Checkout(ctx); !errors.Is(err, poolsim.ErrPoolClosed) {
			t.Errorf("checkout after Close: %v, want ErrPoolClosed", err)
		}
	})
}

func TestTimeoutErrorMessage(t *testing.T) {
	for _, tc := range []struct {
		e    poolsim.TimeoutError
		want string
	}{
		{poolsim.TimeoutError{Size: 10, MaxOverflow: 20, Timeout: 30 * time.Second}, "QueuePool limit of size 10 overflow 20 reached, connection timed out, timeout 30.00"},
		{poolsim.TimeoutError{Size: 5, MaxOverflow: 0, Timeout: 1500 * time.Millisecond}, "QueuePool limit of size 5 overflow 0 reached, connection timed out, timeout 1.50"},
	} {
		if got := tc.e.Error(); got != tc.want {
			t.Errorf("got %q, want %q", got, tc.want)
		}
		if !errors.Is(&tc.e, poolsim.ErrPoolTimeout) {
			t.Errorf("%q does not match ErrPoolTimeout", tc.want)
		}
	}
}

func TestNewQueuePoolErrors(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cfg     poolsim.PoolConfig
		wantErr []string
	}{
		{"valid", poolsim.PoolConfig{DSN: "postgres://u@localhost/db", PoolSettings: poolsim.DefaultPoolSettings()}, nil},
		{"all bad settings at once", poolsim.PoolConfig{DSN: "postgres://u@localhost/db", PoolSettings: poolsim.PoolSettings{Size: 0, MaxOverflow: -2, Timeout: -time.Second}},
			[]string{"pool size", "max overflow", "timeout"}},
		{"bad DSN does not echo the password", poolsim.PoolConfig{DSN: "postgres://u:s3cret@local host:x/db", PoolSettings: poolsim.DefaultPoolSettings()},
			[]string{"cannot parse the DSN"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := poolsim.NewQueuePool(tc.cfg)
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				if st := p.Stats(); st.Size != 10 || st.MaxOverflow != 20 {
					t.Errorf("stats size=%d max_overflow=%d, want the seed's 10 and 20", st.Size, st.MaxOverflow)
				}
				return
			}
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "s3cret") {
				t.Errorf("error leaks the password: %q", err)
			}
		})
	}
}
