package poolsim_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/dbpool/dbpool_exporter/pgxpoolcollector"
	"github.com/dbpool/dbpool_exporter/tools/poolsim"
)

// gather gathers reg and returns, per pool label, the value of every sample
// of the named family (a histogram's count for dbpool_checkout_duration_seconds).
func gather(t *testing.T, reg prometheus.Gatherer, family string) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != family {
			continue
		}
		for _, m := range mf.GetMetric() {
			var pool, target string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "pool":
					pool = l.GetValue()
				case "target":
					target = l.GetValue()
				}
			}
			if target != "pgtarget" {
				t.Errorf("%s{pool=%q}: target %q, want pgtarget", family, pool, target)
			}
			out[pool] = value(m)
		}
	}
	return out
}

func value(m *dto.Metric) float64 {
	switch {
	case m.GetGauge() != nil:
		return m.GetGauge().GetValue()
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue()
	case m.GetHistogram() != nil:
		return float64(m.GetHistogram().GetSampleCount())
	}
	return 0
}

func TestPgxPool(t *testing.T) {
	s := startServer(t)
	ctx := context.Background()
	const app = "pgx-limits"
	// Long enough for the poll below to see the waiters; nothing asserts
	// how long they waited.
	const timeout = time.Second
	p, err := poolsim.NewPgxPool(poolsim.PoolConfig{DSN: s.dsn, ApplicationName: app,
		PoolSettings: poolsim.PoolSettings{Size: 2, MaxOverflow: 1, Timeout: timeout, Recycle: time.Hour, PrePing: true}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	reg := prometheus.NewRegistry()
	set := p.CollectorSettings()
	reg.MustRegister(pgxpoolcollector.New(p.Pool(), p.Tracer(), pgxpoolcollector.Options{Target: "pgtarget", Pool: app, Settings: &set}))

	// MinConns 0: lazy, like QueuePool.
	checkStats(t, "new pool", p.Stats(), 0, 0, 0, 0, 0)
	if n := s.backends(t, app, ""); n != 0 {
		t.Fatalf("new pool has %d backends, want 0", n)
	}
	if got := p.Pool().Config().MaxConns; got != 3 {
		t.Errorf("MaxConns %d, want size + overflow = 3", got)
	}

	// Capacity is size + overflow: three long holders get a connection each.
	held := make([]*pgxpool.Conn, 3)
	for i := range held {
		c, err := p.Checkout(ctx)
		if err != nil {
			t.Fatalf("checkout %d of size+overflow: %v", i, err)
		}
		held[i] = c
	}
	checkStats(t, "3 checked out", p.Stats(), 3, 0, 3, 1, 0)
	if n := s.backends(t, app, ""); n != 3 {
		t.Errorf("backends with 3 checked out: %d, want 3", n)
	}
	count0 := gather(t, reg, "dbpool_checkout_duration_seconds")[app]

	// More callers than capacity: they wait, are pending in both views, and
	// time out.
	const waiters = 4
	errs := make([]error, waiters)
	var wg sync.WaitGroup
	for i := range waiters {
		wg.Go(func() {
			c, err := p.Checkout(ctx)
			if c != nil {
				c.Release()
			}
			errs[i] = err
		})
	}
	eventually(t, "all waiters pending", func() (bool, string) {
		sim := p.Stats().Pending
		exported := gather(t, reg, "dbpool_pending_checkouts")[app]
		return sim == waiters && exported == waiters, fmt.Sprintf("pending: sim %d, dbpool_pending_checkouts %g", sim, exported)
	})
	wg.Wait()
	for i, err := range errs {
		if !errors.Is(err, poolsim.ErrPoolTimeout) {
			t.Errorf("waiter %d: %v, want a pool timeout", i, err)
		}
	}
	st := p.Stats()
	checkStats(t, "after the timeouts", st, 3, 0, 3, 1, 0)
	if st.TimeoutsTotal != waiters || st.CheckoutsTotal != 3 {
		t.Errorf("timeouts_total=%d checkouts_total=%d, want %d and 3", st.TimeoutsTotal, st.CheckoutsTotal, waiters)
	}
	if got := gather(t, reg, "dbpool_checkout_timeouts_total")[app]; got != float64(st.TimeoutsTotal) {
		t.Errorf("dbpool_checkout_timeouts_total %g, sim's own timeouts %d", got, st.TimeoutsTotal)
	}
	// Failed acquires waited too: the histogram observes them.
	if got := gather(t, reg, "dbpool_checkout_duration_seconds")[app]; got != count0+waiters {
		t.Errorf("dbpool_checkout_duration_seconds_count %g after %d timeouts, want %g", got, waiters, count0+waiters)
	}
	if got := gather(t, reg, "dbpool_checkout_timeout_seconds")[app]; got != timeout.Seconds() {
		t.Errorf("dbpool_checkout_timeout_seconds %g, want the pool timeout %g", got, timeout.Seconds())
	}
	if got := gather(t, reg, "dbpool_overflow_connections")[app]; got != 1 {
		t.Errorf("dbpool_overflow_connections %g, want 1 (3 open, size 2)", got)
	}

	// A returned connection stays open: pgxpool has no overflow to close.
	for _, c := range held {
		c.Release()
	}
	checkStats(t, "all returned", p.Stats(), 0, 3, 3, 1, 0)
	if n := s.backends(t, app, ""); n != 3 {
		t.Errorf("backends after return: %d, want 3", n)
	}

	// A cancelled caller is not a pool timeout.
	held = held[:0]
	for range 3 {
		c, err := p.Checkout(ctx)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	cctx, cancel := context.WithCancel(ctx)
	go func() {
		// Cancel once the checkout waits (or after a while, and the test
		// still sees a cancellation, just not one that waited).
		for deadline := time.Now().Add(10 * time.Second); p.Stats().Pending == 0 && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
		}
		cancel()
	}()
	if _, err := p.Checkout(cctx); !errors.Is(err, context.Canceled) || errors.Is(err, poolsim.ErrPoolTimeout) {
		t.Errorf("cancelled checkout: %v, want context.Canceled", err)
	}
	if got := p.Stats().TimeoutsTotal; got != waiters {
		t.Errorf("timeouts_total %d after a cancellation, want still %d", got, waiters)
	}
	for _, c := range held {
		c.Release()
	}
	p.Close()
	s.waitBackends(t, app, 0)
}

func TestNewPgxPoolErrors(t *testing.T) {
	ok := poolsim.PoolSettings{Size: 2, MaxOverflow: 1, Timeout: time.Second}
	for _, tc := range []struct {
		name string
		cfg  poolsim.PoolConfig
		want []string
	}{
		{"unlimited overflow", poolsim.PoolConfig{DSN: "postgres://u@localhost/db", PoolSettings: poolsim.PoolSettings{Size: 2, MaxOverflow: -1, Timeout: time.Second}},
			[]string{"no unlimited pool"}},
		{"zero timeout", poolsim.PoolConfig{DSN: "postgres://u@localhost/db", PoolSettings: poolsim.PoolSettings{Size: 2, Timeout: 0}},
			[]string{"pool timeout must be more than 0"}},
		{"bad DSN hides the password", poolsim.PoolConfig{DSN: "postgres://u:hunter2@local host:x/db", PoolSettings: ok},
			[]string{"cannot parse the DSN"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := poolsim.NewPgxPool(tc.cfg)
			if err == nil {
				p.Close()
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("error shows the password: %q", err)
			}
		})
	}
}

func TestSimPgxpool(t *testing.T) {
	s := startServer(t)
	cfg := poolsim.DefaultConfig()
	cfg.DSN = s.dsn
	cfg.AppName = "simpgx"
	cfg.Instances = 2
	cfg.PoolImpl = poolsim.ImplPgxpool
	cfg.MetricsTarget = "pgtarget"
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	cfg.Pool = poolsim.PoolSettings{Size: 2, MaxOverflow: 1, Timeout: 200 * time.Millisecond, Recycle: time.Hour, PrePing: true}
	// One request every 500 ms per instance, each holding its connection for
	// a minute: after three, every request waits 200 ms and times out, and
	// between two of them nothing is pending (used below to compare totals).
	cfg.Rate = 2
	cfg.Arrival = poolsim.ArrivalEven
	cfg.QueryTime = time.Minute
	sim, stop := runSim(t, cfg)
	pools := []string{"simpgx-0", "simpgx-1"}

	// application_name per instance, each at capacity (size + overflow).
	for _, app := range pools {
		eventually(t, "3 active backends of "+app, func() (bool, string) {
			n := s.backends(t, app, "active")
			return n == 3, fmt.Sprintf("%d active", n)
		})
	}

	seen := map[string]bool{}
	eventually(t, "dbpool_pending_checkouts > 0 for every instance", func() (bool, string) {
		for pool, v := range gather(t, reg, "dbpool_pending_checkouts") {
			if v > 0 {
				seen[pool] = true
			}
		}
		return seen[pools[0]] && seen[pools[1]], fmt.Sprintf("seen pending: %v", seen)
	})

	first := gather(t, reg, "dbpool_checkout_duration_seconds")
	eventually(t, "dbpool_checkout_duration_seconds_count grows", func() (bool, string) {
		now := gather(t, reg, "dbpool_checkout_duration_seconds")
		return now[pools[0]] > first[pools[0]] && now[pools[1]] > first[pools[1]], fmt.Sprintf("count %v, first %v", now, first)
	})

	// The tracer counts a timeout inside Acquire, the sim after it returns:
	// compare them when the sim has nothing pending and its count did not
	// move around the scrape, so that both have seen the same checkouts.
	for i, pool := range pools {
		eventually(t, "exported timeouts equal the sim's for "+pool, func() (bool, string) {
			before := sim.Stats().PerInstance[i]
			exported := gather(t, reg, "dbpool_checkout_timeouts_total")[pool]
			after := sim.Stats().PerInstance[i]
			if before.TimeoutsTotal < 2 || after.Pending != 0 || after.TimeoutsTotal != before.TimeoutsTotal {
				return false, fmt.Sprintf("not settled: timeouts %d..%d, pending %d", before.TimeoutsTotal, after.TimeoutsTotal, after.Pending)
			}
			if exported != float64(after.TimeoutsTotal) {
				t.Fatalf("dbpool_checkout_timeouts_total{pool=%q} %g, sim's own timeouts %d", pool, exported, after.TimeoutsTotal)
			}
			return true, ""
		})
	}

	st := sim.Stats()
	if st.PoolImpl != poolsim.ImplPgxpool {
		t.Errorf("stats pool_impl %q", st.PoolImpl)
	}
	for i, in := range st.PerInstance {
		if in.Open != 3 || in.CheckedOut != 3 || in.Overflow != 1 {
			t.Errorf("instance %d: open=%d checked_out=%d overflow=%d, want 3, 3, 1", i, in.Open, in.CheckedOut, in.Overflow)
		}
		if in.ErrorsTotal != 0 {
			t.Errorf("instance %d: errors_total=%d (last: %s): pool timeouts must not count as errors", i, in.ErrorsTotal, st.LastError)
		}
	}
	for family, want := range map[string]float64{
		"dbpool_size_connections":         2,
		"dbpool_max_overflow_connections": 1,
		"dbpool_max_connections":          3,
		"dbpool_checkout_timeout_seconds": 0.2,
		"dbpool_in_use_connections":       3,
	} {
		got := gather(t, reg, family)
		if len(got) != 2 || got[pools[0]] != want || got[pools[1]] != want {
			t.Errorf("%s: %v, want %g for %v", family, got, want, pools)
		}
	}

	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	for _, app := range pools {
		s.waitBackends(t, app, 0)
	}
	if st := sim.Stats(); st.Total.Open != 0 || st.Total.Pending != 0 {
		t.Errorf("after Run: open=%d pending=%d, want 0", st.Total.Open, st.Total.Pending)
	}
}

func TestMetricsPool(t *testing.T) {
	for _, tc := range []struct {
		instances int
		want      []string
	}{
		{1, []string{"api"}},
		{3, []string{"api-0", "api-1", "api-2"}},
	} {
		c := poolsim.DefaultConfig()
		c.Instances = tc.instances
		for i, w := range tc.want {
			if got := c.MetricsPool(i); got != w {
				t.Errorf("%d instances: MetricsPool(%d) = %q, want %q", tc.instances, i, got, w)
			}
		}
		// application_name keeps its index either way.
		if got := c.ApplicationName(0); got != "api-0" {
			t.Errorf("ApplicationName(0) = %q", got)
		}
	}
}
