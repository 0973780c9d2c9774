package poolsim_test

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/dbpool/dbpool_exporter/tools/poolsim"
)

// runSim starts sim.Run in the background; stop cancels it and returns Run's error.
func runSim(t *testing.T, cfg poolsim.Config) (sim *poolsim.Sim, stop func() error) {
	t.Helper()
	sim = poolsim.New(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sim.Run(ctx) }()
	var stopped bool
	var runErr error
	stop = func() error {
		if !stopped {
			stopped = true
			cancel()
			runErr = <-done
		}
		return runErr
	}
	t.Cleanup(func() { _ = stop() })
	return sim, stop
}

func TestSim(t *testing.T) {
	s := startServer(t)

	t.Run("instances, application_name and idle in transaction", func(t *testing.T) {
		cfg := poolsim.DefaultConfig()
		cfg.DSN = s.dsn
		cfg.AppName = "simapp"
		cfg.Instances = 2
		cfg.Pool = poolsim.PoolSettings{Size: 3, MaxOverflow: 2, Timeout: 10 * time.Second, Recycle: time.Hour, PrePing: true}
		cfg.Rate = 20
		cfg.QueryTime = 10 * time.Millisecond
		cfg.IdleInTxShare = 0.5
		cfg.IdleInTxTime = time.Minute // outlives the test: Run must end it on stop
		sim, stop := runSim(t, cfg)

		// The exporter's matcher for this application, with the instance capture.
		re := regexp.MustCompile(`^simapp-(?P<instance>[0-9]+)$`)
		eventually(t, "both instances idle in transaction", func() (bool, string) {
			rows, err := s.admin.Query(context.Background(),
				`SELECT application_name, count(*) FROM pg_stat_activity
				 WHERE application_name LIKE 'simapp-%' AND state = 'idle in transaction' GROUP BY 1`)
			if err != nil {
				t.Fatal(err)
			}
			defer rows.Close()
			seen := map[string]bool{}
			for rows.Next() {
				var app string
				var n int
				if err := rows.Scan(&app, &n); err != nil {
					t.Fatal(err)
				}
				m := re.FindStringSubmatch(app)
				if m == nil {
					t.Fatalf("application_name %q does not match %s", app, re)
				}
				seen[m[re.SubexpIndex("instance")]] = true
			}
			return seen["0"] && seen["1"] && len(seen) == 2, fmt.Sprintf("instances seen idle in transaction: %v", seen)
		})

		st := sim.Stats()
		if st.Instances != 2 || len(st.PerInstance) != 2 {
			t.Fatalf("stats for %d instances (%d listed), want 2", st.Instances, len(st.PerInstance))
		}
		var sum int
		for i, in := range st.PerInstance {
			if want := fmt.Sprintf("simapp-%d", i); in.ApplicationName != want || in.Instance != i {
				t.Errorf("instance %d: %d %q, want %q", i, in.Instance, in.ApplicationName, want)
			}
			if in.RequestsTotal == 0 || in.IdleInTxTotal == 0 {
				t.Errorf("instance %d: requests_total=%d idle_in_transaction_total=%d, want both > 0", i, in.RequestsTotal, in.IdleInTxTotal)
			}
			if in.Open > cfg.Pool.Size+cfg.Pool.MaxOverflow {
				t.Errorf("instance %d: open=%d beyond size+overflow", i, in.Open)
			}
			sum += in.CheckedOut
		}
		if st.Total.CheckedOut != sum {
			t.Errorf("total checked_out=%d, sum of instances %d", st.Total.CheckedOut, sum)
		}
		if st.Total.ErrorsTotal != 0 {
			t.Errorf("errors_total=%d (last: %s), want 0", st.Total.ErrorsTotal, st.LastError)
		}

		if err := stop(); err != nil {
			t.Fatalf("Run: %v", err)
		}
		// Graceful shutdown closes every connection, including the ones idle
		// in transaction that still had most of a minute to go.
		for i := range 2 {
			s.waitBackends(t, fmt.Sprintf("simapp-%d", i), 0)
		}
		st = sim.Stats()
		if st.Total.Open != 0 || st.Inflight != 0 {
			t.Errorf("after Run: open=%d inflight=%d, want 0", st.Total.Open, st.Inflight)
		}
	})

	t.Run("overload: timeouts, bounded connections, dropped requests", func(t *testing.T) {
		cfg := poolsim.DefaultConfig()
		cfg.DSN = s.dsn
		cfg.AppName = "simload"
		cfg.Pool = poolsim.PoolSettings{Size: 1, MaxOverflow: 1, Timeout: 100 * time.Millisecond, PrePing: true}
		cfg.Rate = 100
		cfg.Arrival = poolsim.ArrivalEven
		cfg.QueryTime = time.Minute // each connection stays busy: the pool is exhausted
		cfg.MaxInflight = 5
		sim, stop := runSim(t, cfg)

		eventually(t, "pool timeouts and dropped requests", func() (bool, string) {
			st := sim.Stats().Total
			return st.TimeoutsTotal > 0 && st.DroppedTotal > 0, fmt.Sprintf("timeouts=%d dropped=%d", st.TimeoutsTotal, st.DroppedTotal)
		})
		st := sim.Stats()
		if st.Total.Open != 2 || st.Total.Overflow != 1 || st.Total.CheckedOut != 2 {
			t.Errorf("open=%d overflow=%d checked_out=%d, want 2, 1, 2", st.Total.Open, st.Total.Overflow, st.Total.CheckedOut)
		}
		if st.Inflight > cfg.MaxInflight {
			t.Errorf("inflight=%d beyond max %d", st.Inflight, cfg.MaxInflight)
		}
		if st.Total.ErrorsTotal != 0 {
			t.Errorf("errors_total=%d (last: %s): pool timeouts must not count as errors", st.Total.ErrorsTotal, st.LastError)
		}
		// Both connections run their pg_sleep; checked out a moment before
		// the query starts, so poll.
		eventually(t, "2 active backends (size 1 + overflow 1)", func() (bool, string) {
			n := s.backends(t, "simload-0", "active")
			return n == 2, fmt.Sprintf("%d active", n)
		})
		if err := stop(); err != nil {
			t.Fatalf("Run: %v", err)
		}
		s.waitBackends(t, "simload-0", 0)
	})

	t.Run("hold-extra looks idle on the server while checked out", func(t *testing.T) {
		cfg := poolsim.DefaultConfig()
		cfg.DSN = s.dsn
		cfg.AppName = "simhold"
		cfg.Pool = poolsim.PoolSettings{Size: 2, MaxOverflow: 0, Timeout: time.Minute}
		cfg.Rate = 50
		cfg.QueryTime = 0
		cfg.HoldExtra = time.Minute
		sim, stop := runSim(t, cfg)
		eventually(t, "both connections checked out", func() (bool, string) {
			st := sim.Stats().Total
			return st.CheckedOut == 2 && st.CheckoutsTotal == 2, fmt.Sprintf("checked_out=%d", st.CheckedOut)
		})
		// Checked out in the pool, "idle" on the server: the activity view's
		// in-use count is a lower bound.
		eventually(t, "2 idle backends while checked out", func() (bool, string) {
			n := s.backends(t, "simhold-0", "idle")
			return n == 2, fmt.Sprintf("%d idle", n)
		})
		if st := sim.Stats().Total; st.CheckedOut != 2 {
			t.Errorf("checked_out=%d while the server sees them idle, want 2", st.CheckedOut)
		}
		if err := stop(); err != nil {
			t.Fatal(err)
		}
	})
}

func TestConfigValidate(t *testing.T) {
	valid := poolsim.DefaultConfig()
	valid.DSN = "postgres://u@localhost/db"
	for _, tc := range []struct {
		name   string
		change func(*poolsim.Config)
		want   []string
	}{
		{"defaults with a DSN", func(*poolsim.Config) {}, nil},
		{"no DSN", func(c *poolsim.Config) { c.DSN = "" }, []string{"DSN is required"}},
		{"shares above 1 together", func(c *poolsim.Config) { c.LongQueryShare, c.IdleInTxShare = 0.6, 0.6 }, []string{"must not exceed 1"}},
		{"unknown pool implementation", func(c *poolsim.Config) { c.PoolImpl = "hikari" }, []string{`pool implementation must be "queuepool" or "pgxpool", got "hikari"`}},
		{"empty pool implementation is queuepool", func(c *poolsim.Config) { c.PoolImpl = "" }, nil},
		{"queuepool allows unlimited overflow and no wait", func(c *poolsim.Config) { c.Pool.MaxOverflow, c.Pool.Timeout = -1, 0 }, nil},
		{"pgxpool needs a finite overflow and a timeout", func(c *poolsim.Config) {
			c.PoolImpl, c.Pool.MaxOverflow, c.Pool.Timeout = poolsim.ImplPgxpool, -1, 0
		}, []string{"no unlimited pool", "pool timeout must be more than 0"}},
		{"pgxpool with the seed's defaults", func(c *poolsim.Config) { c.PoolImpl = poolsim.ImplPgxpool }, nil},
		{"every problem at once", func(c *poolsim.Config) {
			c.Instances, c.Rate, c.Arrival, c.QueryTime, c.LongQueryShare, c.MaxInflight, c.Pool.Size = 0, -1, "burst", -time.Second, 2, 0, 0
		}, []string{"instances", "rate", "arrival", "query time", "long query share", "max inflight", "pool size"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := valid
			tc.change(&c)
			err := c.Validate()
			if tc.want == nil {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}
