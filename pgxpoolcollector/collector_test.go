package pgxpoolcollector_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/tracelog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/dbpool/dbpool_exporter/internal/metrics"
	"github.com/dbpool/dbpool_exporter/pgxpoolcollector"
	"github.com/dbpool/dbpool_exporter/poolcfg"
	"github.com/dbpool/dbpool_exporter/tools/pgtest"
	"github.com/dbpool/dbpool_exporter/tools/testbin"
)

// deterministicFamilies are the series of a pgxpool whose values a test can know exactly;
// the histogram's buckets and sum depend on timing and are checked separately.
var deterministicFamilies = func() (names []string) {
	for _, f := range familyHelp {
		names = append(names, f[0])
	}
	return names
}()

// poolWant is the expected state of one pgxpool; pending < 0 means the series is absent.
type poolWant struct {
	target, pool           string
	size, overflowMax      int
	timeout, recycle       float64
	open, acquired, idle   int
	constructing, overflow int
	pending                int
	checkouts, timeouts    int
}

// familyHelp lists the deterministic families in exposition order with their TYPE and HELP,
// as internal/metrics defines them.
var familyHelp = [][3]string{
	{"dbpool_pool_info", "gauge", "Always 1; one series per pool and source that observes it (activity: estimate from pg_stat_activity; pgbouncer, pgxpool, app: exact)."},
	{"dbpool_size_connections", "gauge", "Configured permanent connections per instance (DB_POOL_SIZE)."},
	{"dbpool_max_overflow_connections", "gauge", "Configured extra connections per instance beyond the pool size (DB_MAX_OVERFLOW)."},
	{"dbpool_max_connections", "gauge", "Capacity of the pool group: instances x (pool size + max overflow)."},
	{"dbpool_checkout_timeout_seconds", "gauge", "Configured time a checkout may wait for a connection (DB_POOL_TIMEOUT); absent when it waits forever."},
	{"dbpool_recycle_seconds", "gauge", "Configured connection age after which the pool replaces it (DB_POOL_RECYCLE); 0 means never."},
	{"dbpool_pre_ping_enabled", "gauge", "1 if the pool tests connections before use (DB_POOL_PRE_PING)."},
	{"dbpool_instances", "gauge", "Processes that each hold one such pool: as configured, or for the app source those that reported."},
	{"dbpool_utilization_ratio", "gauge", "In-use connections over the pool group's capacity (0..1)."},
	{"dbpool_overflow_connections", "gauge", "Connections beyond the pool size: per instance max(0, open - pool size), summed."},
	{"dbpool_open_connections", "gauge", "Connections the pool group has open (in use plus idle)."},
	{"dbpool_in_use_connections", "gauge", "Connections checked out or busy; never counts idle ones. A lower bound for the activity source."},
	{"dbpool_connections", "gauge", "Open connections by state, a disjoint breakdown of dbpool_open_connections in the source's own state names."},
	{"dbpool_pending_checkouts", "gauge", "Callers waiting for a connection right now."},
	{"dbpool_checkouts_total", "counter", "Checkouts (acquires) of a connection that finished waiting; pgxpool also counts failed ones."},
	{"dbpool_checkout_timeouts_total", "counter", "Checkouts that gave up waiting because the pool was exhausted."},
}

// samples returns the sample lines of one pool by family name.
func (w poolWant) samples() map[string][]string {
	capacity := w.size + w.overflowMax
	l := fmt.Sprintf(`{pool=%q,source="pgxpool",target=%q}`, w.pool, w.target)
	line := func(name string, v float64) []string { return []string{fmt.Sprintf("%s%s %g", name, l, v)} }
	state := func(s string, v int) string {
		return fmt.Sprintf(`dbpool_connections{pool=%q,source="pgxpool",state=%q,target=%q} %d`, w.pool, s, w.target, v)
	}
	out := map[string][]string{
		"dbpool_pool_info":                {fmt.Sprintf(`dbpool_pool_info{pool=%q,source="pgxpool",target=%q} 1`, w.pool, w.target)},
		"dbpool_size_connections":         line("dbpool_size_connections", float64(w.size)),
		"dbpool_max_overflow_connections": line("dbpool_max_overflow_connections", float64(w.overflowMax)),
		"dbpool_max_connections":          line("dbpool_max_connections", float64(capacity)),
		"dbpool_checkout_timeout_seconds": line("dbpool_checkout_timeout_seconds", w.timeout),
		"dbpool_recycle_seconds":          line("dbpool_recycle_seconds", w.recycle),
		"dbpool_pre_ping_enabled":         line("dbpool_pre_ping_enabled", 1),
		"dbpool_instances":                line("dbpool_instances", 1),
		"dbpool_utilization_ratio":        line("dbpool_utilization_ratio", float64(w.acquired)/float64(capacity)),
		"dbpool_overflow_connections":     line("dbpool_overflow_connections", float64(w.overflow)),
		"dbpool_open_connections":         line("dbpool_open_connections", float64(w.open)),
		"dbpool_in_use_connections":       line("dbpool_in_use_connections", float64(w.acquired)),
		"dbpool_connections": {
			state(metrics.StateAcquired, w.acquired), state(metrics.StateConstructing, w.constructing), state(metrics.StateIdle, w.idle),
		},
		"dbpool_checkouts_total":         line("dbpool_checkouts_total", float64(w.checkouts)),
		"dbpool_checkout_timeouts_total": line("dbpool_checkout_timeouts_total", float64(w.timeouts)),
	}
	if w.pending >= 0 {
		out["dbpool_pending_checkouts"] = line("dbpool_pending_checkouts", float64(w.pending))
	}
	if w.timeout == 0 {
		delete(out, "dbpool_checkout_timeout_seconds") // absent: waits forever
	}
	return out
}

// exposition is the expected text of the deterministic families of the given pools.
func exposition(ws ...poolWant) string {
	var b strings.Builder
	for _, f := range familyHelp {
		var lines []string
		for _, w := range ws {
			lines = append(lines, w.samples()[f[0]]...)
		}
		if len(lines) == 0 {
			continue
		}
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n%s\n", f[0], f[2], f[0], f[1], strings.Join(lines, "\n"))
	}
	return b.String()
}

// defaultWant is what a pool with MaxConns n and default settings reports when empty.
func defaultWant(target, pool string, n int) poolWant {
	return poolWant{target: target, pool: pool, size: n, recycle: 3600}
}

func newPgxPool(t *testing.T, dsn string, maxConns int32, instrument bool, next pgx.QueryTracer) (*pgxpool.Pool, *pgxpoolcollector.AcquireTracer) {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = maxConns
	cfg.MinConns = 0
	cfg.ConnConfig.Tracer = next
	var tracer *pgxpoolcollector.AcquireTracer
	if instrument {
		tracer = pgxpoolcollector.InstrumentConfig(cfg)
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool, tracer
}

// pendingOf returns dbpool_pending_checkouts of the only pool, -1 if absent.
func pendingOf(t *testing.T, c prometheus.Collector) int {
	t.Helper()
	mf, ok := testbin.Gather(t, c)["dbpool_pending_checkouts"]
	if !ok {
		return -1
	}
	return int(mf.GetMetric()[0].GetGauge().GetValue())
}

// waitPending polls until the pending gauge equals want. The acquires being waited for are
// blocked on an exhausted pool, so the gauge cannot move past want on its own.
func waitPending(t *testing.T, c prometheus.Collector, want int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		got := pendingOf(t, c)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("dbpool_pending_checkouts = %d, want %d", got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func compare(t *testing.T, c prometheus.Collector, w poolWant) {
	t.Helper()
	if err := testutil.CollectAndCompare(c, strings.NewReader(exposition(w)), deterministicFamilies...); err != nil {
		t.Error(err)
	}
}

// histogramOf returns the only checkout-duration histogram and checks that it is well formed:
// cumulative, with the +Inf count equal to the sample count.
func histogramOf(t *testing.T, c prometheus.Collector) *dto.Histogram {
	t.Helper()
	mf, ok := testbin.Gather(t, c)["dbpool_checkout_duration_seconds"]
	if !ok {
		t.Fatal("no dbpool_checkout_duration_seconds")
	}
	h := mf.GetMetric()[0].GetHistogram()
	var prev uint64
	for _, b := range h.GetBucket() {
		if b.GetCumulativeCount() < prev {
			t.Errorf("bucket le=%g count %d below the previous bucket's %d", b.GetUpperBound(), b.GetCumulativeCount(), prev)
		}
		prev = b.GetCumulativeCount()
	}
	if prev > h.GetSampleCount() {
		t.Errorf("highest bucket %d exceeds the sample count %d", prev, h.GetSampleCount())
	}
	return h
}

// expiringCtx is a context whose deadline passes when the test says so: the test can then
// watch its acquire wait before it gives up with context.DeadlineExceeded, which a timer
// would not guarantee.
type expiringCtx struct {
	context.Context
	done chan struct{}
}

func newExpiringCtx() *expiringCtx {
	return &expiringCtx{Context: context.Background(), done: make(chan struct{})}
}

func (c *expiringCtx) Done() <-chan struct{} { return c.done }

func (c *expiringCtx) Err() error {
	select {
	case <-c.done:
		return context.DeadlineExceeded
	default:
		return nil
	}
}

// acquireTimes records the wall-clock time of every acquire a test makes.
type acquireTimes struct {
	mu    sync.Mutex
	total time.Duration
	n     int
}

// acquire times pool.Acquire around the call, so that the tracer's interval (taken inside
// Acquire) is nested in the recorded one.
func (a *acquireTimes) acquire(ctx context.Context, pool *pgxpool.Pool) (*pgxpool.Conn, error) {
	start := time.Now()
	conn, err := pool.Acquire(ctx)
	d := time.Since(start)
	a.mu.Lock()
	a.total += d
	a.n++
	a.mu.Unlock()
	return conn, err
}

// queryRecorder is a tracer a service might already use: it only traces queries.
type queryRecorder struct {
	mu    sync.Mutex
	calls []string
}

func (r *queryRecorder) TraceQueryStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, "start "+data.SQL)
	return ctx
}

func (r *queryRecorder) TraceQueryEnd(_ context.Context, _ *pgx.Conn, data pgx.TraceQueryEndData) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, "end "+data.CommandTag.String())
}

func (r *queryRecorder) recorded() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.calls...)
}

// TestPgxpoolCollectorSaturated exhausts a pool of maxConns connections: waiters queue
// behind the holders, some callers give up (deadline, cancel), then the holders release and
// the queue drains. Pending, checkouts and timeouts must be exact at every step.
func TestPgxpoolCollectorSaturated(t *testing.T) {
	const (
		maxConns = 3
		waiters  = 2 // wait and eventually get a connection
		expiring = 2 // give up with context.DeadlineExceeded
		canceled = 1 // give up with context.Canceled
	)
	pg := pgtest.StartT(t, pgtest.Options{})
	rec := &queryRecorder{}
	pool, tracer := newPgxPool(t, pg.SuperuserDSN(""), maxConns, true, rec)
	c := pgxpoolcollector.New(pool, tracer, pgxpoolcollector.Options{Target: "db", Pool: "app"})
	var times acquireTimes
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	w := defaultWant("db", "app", maxConns)
	compare(t, c, w)

	// The holders take every connection.
	var held []*pgxpool.Conn
	for range maxConns {
		conn, err := times.acquire(ctx, pool)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
		held = append(held, conn)
	}
	w.open, w.acquired, w.checkouts = maxConns, maxConns, maxConns
	compare(t, c, w)

	// Waiters queue up; each takes a connection as soon as one is free and returns it at once.
	var wg sync.WaitGroup
	waitErrs := make(chan error, waiters)
	for range waiters {
		wg.Go(func() {
			conn, err := times.acquire(ctx, pool)
			if err == nil {
				conn.Release()
			}
			waitErrs <- err
		})
	}
	waitPending(t, c, waiters)
	w.pending = waiters
	compare(t, c, w)

	// Callers that give up: pending grows by them, then they end as timeouts.
	giveUpErrs := make(chan error, expiring+canceled)
	var expire []*expiringCtx
	var cancels []context.CancelFunc
	for range expiring {
		ec := newExpiringCtx()
		expire = append(expire, ec)
		wg.Go(func() {
			_, err := times.acquire(ec, pool)
			giveUpErrs <- err
		})
	}
	for range canceled {
		cctx, ccancel := context.WithCancel(ctx)
		cancels = append(cancels, ccancel)
		wg.Go(func() {
			_, err := times.acquire(cctx, pool)
			giveUpErrs <- err
		})
	}
	waitPending(t, c, waiters+expiring+canceled)
	for _, ec := range expire {
		close(ec.done)
	}
	for _, cf := range cancels {
		cf()
	}
	var deadlines, cancellations int
	for range expiring + canceled {
		switch err := <-giveUpErrs; {
		case errors.Is(err, context.DeadlineExceeded):
			deadlines++
		case errors.Is(err, context.Canceled):
			cancellations++
		default:
			t.Errorf("acquire that gave up returned %v", err)
		}
	}
	if deadlines != expiring || cancellations != canceled {
		t.Errorf("gave up with %d deadlines and %d cancellations, want %d and %d", deadlines, cancellations, expiring, canceled)
	}
	w.checkouts += expiring + canceled
	w.timeouts = expiring + canceled
	compare(t, c, w)

	// The holders release: the waiters get connections, nobody is left waiting.
	for _, conn := range held {
		conn.Release()
	}
	wg.Wait()
	close(waitErrs)
	for err := range waitErrs {
		if err != nil {
			t.Errorf("waiter: %v", err)
		}
	}
	w.pending = 0
	w.acquired, w.idle = 0, maxConns
	w.checkouts += waiters
	compare(t, c, w)
	testbin.LintClean(t, c)

	h := histogramOf(t, c)
	if got, want := h.GetSampleCount(), uint64(maxConns+waiters+expiring+canceled); got != want {
		t.Errorf("histogram count = %d, want %d (every acquire, failed ones included)", got, want)
	}
	// Every observation of the tracer is nested inside one wall-clock interval measured here
	// (both on the monotonic clock), so the histogram's total can never exceed the measured
	// total. The difference is the time between the test's time.Now() and the tracer's on
	// either side of Acquire: a few function calls and no I/O. The lower bound allows 20 ms
	// per acquire on average (or 20%), which only a test process descheduled for that long
	// around every single acquire could exceed.
	times.mu.Lock()
	wallAvg := times.total.Seconds() / float64(times.n)
	times.mu.Unlock()
	tracerAvg := h.GetSampleSum() / float64(h.GetSampleCount())
	tolerance := max(0.020, 0.2*wallAvg)
	t.Logf("average checkout: histogram %.6fs, measured around Acquire %.6fs (%d acquires)", tracerAvg, wallAvg, h.GetSampleCount())
	if tracerAvg > wallAvg || tracerAvg < wallAvg-tolerance {
		t.Errorf("average checkout %.6fs, measured around Acquire %.6fs: want within (-%.3fs, 0]", tracerAvg, wallAvg, tolerance)
	}
	// The service's own query tracer still saw its queries through the wrapper.
	var starts int
	for _, call := range rec.recorded() {
		if call == "start SELECT 1" {
			starts++
		}
	}
	if starts != maxConns {
		t.Errorf("wrapped query tracer saw %d starts of SELECT 1, want %d: %q", starts, maxConns, rec.recorded())
	}
}

// TestAcquireTracerTimeouts checks which failed acquires count as timeouts: only those
// that gave up (deadline or cancel) while the pool was exhausted. All count as checkouts.
func TestAcquireTracerTimeouts(t *testing.T) {
	pg := pgtest.StartT(t, pgtest.Options{})
	tests := []struct {
		name    string
		dsn     string
		hold    bool // exhaust the pool (MaxConns 1) before the acquire under test
		ctx     func() (context.Context, context.CancelFunc)
		wantErr error // nil: success; errAny: any error that is not a context error
		timeout bool
		reason  string // the failure's reason label; "" for a success
	}{
		{
			name: "success",
			dsn:  pg.SuperuserDSN(""),
			ctx: func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(context.Background(), 30*time.Second)
			},
		},
		{
			name: "deadline on exhausted pool",
			dsn:  pg.SuperuserDSN(""),
			hold: true,
			ctx: func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(context.Background(), 50*time.Millisecond)
			},
			wantErr: context.DeadlineExceeded,
			timeout: true,
			reason:  metrics.FailureTimeout,
		},
		{
			name: "cancel on exhausted pool",
			dsn:  pg.SuperuserDSN(""),
			hold: true,
			ctx: func() (context.Context, context.CancelFunc) {
				ctx, cancel := context.WithCancel(context.Background())
				time.AfterFunc(50*time.Millisecond, cancel)
				return ctx, cancel
			},
			wantErr: context.Canceled,
			timeout: true,
			reason:  metrics.FailureTimeout,
		},
		{
			name: "canceled with room in the pool",
			dsn:  pg.SuperuserDSN(""),
			ctx: func() (context.Context, context.CancelFunc) {
				ctx, cancel := context.WithCancel(context.Background())
				cancel()
				return ctx, cancel
			},
			wantErr: context.Canceled,
			reason:  metrics.FailureCancelled,
		},
		{
			name: "login refused",
			dsn:  pg.DSN("postgres", "not-the-password", ""),
			ctx: func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(context.Background(), 30*time.Second)
			},
			wantErr: errAny,
			reason:  metrics.FailureConnect,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pool, tracer := newPgxPool(t, tt.dsn, 1, true, nil)
			c := pgxpoolcollector.New(pool, tracer, pgxpoolcollector.Options{})
			checkouts := 0
			if tt.hold {
				conn, err := pool.Acquire(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Release()
				checkouts++
			}
			ctx, cancel := tt.ctx()
			defer cancel()
			conn, err := pool.Acquire(ctx)
			checkouts++
			switch {
			case tt.wantErr == nil && err != nil:
				t.Fatalf("acquire: %v", err)
			case tt.wantErr == nil:
				conn.Release()
			case tt.wantErr == errAny && (err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)):
				t.Fatalf("acquire: got %v, want a non-context error", err)
			case tt.wantErr != errAny && !errors.Is(err, tt.wantErr):
				t.Fatalf("acquire: got %v, want %v", err, tt.wantErr)
			}
			mfs := testbin.Gather(t, c)
			got := map[string]float64{
				"checkouts": mfs["dbpool_checkouts_total"].GetMetric()[0].GetCounter().GetValue(),
				"histogram": float64(mfs["dbpool_checkout_duration_seconds"].GetMetric()[0].GetHistogram().GetSampleCount()),
				"timeouts":  mfs["dbpool_checkout_timeouts_total"].GetMetric()[0].GetCounter().GetValue(),
				"pending":   mfs["dbpool_pending_checkouts"].GetMetric()[0].GetGauge().GetValue(),
			}
			want := map[string]float64{"checkouts": float64(checkouts), "histogram": float64(checkouts), "timeouts": 0, "pending": 0}
			if tt.timeout {
				want["timeouts"] = 1
			}
			for _, reason := range metrics.FailureReasons {
				got["failures "+reason] = seriesValue(t, mfs["dbpool_checkout_failures_total"], "reason", reason)
				want["failures "+reason] = 0
			}
			if tt.reason != "" {
				want["failures "+tt.reason] = 1
			}
			for k, v := range want {
				if got[k] != v {
					t.Errorf("%s = %g, want %g", k, got[k], v)
				}
			}
		})
	}
}

// seriesValue is the counter of the series of mf whose label has the value; -1 when absent.
func seriesValue(t *testing.T, mf *dto.MetricFamily, label, value string) float64 {
	t.Helper()
	for _, m := range mf.GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == label && l.GetValue() == value {
				return m.GetCounter().GetValue()
			}
		}
	}
	return -1
}

// TestAcquireTracerHoldAndConnect: on a real server, every acquire's hold ends up in the use
// histogram (whichever goroutine releases the connection), every connection the pool opened
// in the create histogram, and a refused connect there too and in the failures.
func TestAcquireTracerHoldAndConnect(t *testing.T) {
	pg := pgtest.StartT(t, pgtest.Options{})
	pool, tracer := newPgxPool(t, pg.SuperuserDSN(""), 2, true, nil)
	c := pgxpoolcollector.New(pool, tracer, pgxpoolcollector.Options{})
	const holds, hold = 6, 40 * time.Millisecond
	var wg sync.WaitGroup
	for range holds / 2 {
		for range 2 {
			conn, err := pool.Acquire(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			wg.Go(func() { // released by another goroutine than the one that acquired it
				time.Sleep(hold)
				conn.Release()
			})
		}
		wg.Wait()
	}
	mfs := testbin.Gather(t, c)
	use := mfs["dbpool_connection_use_duration_seconds"].GetMetric()[0].GetHistogram()
	create := mfs["dbpool_connection_create_duration_seconds"].GetMetric()[0].GetHistogram()
	opened := pool.Stat().NewConnsCount()
	t.Logf("%d holds, sum %.3f s; %d connects, sum %.4f s", use.GetSampleCount(), use.GetSampleSum(), create.GetSampleCount(), create.GetSampleSum())
	if use.GetSampleCount() != holds || use.GetSampleSum() < holds*hold.Seconds() || use.GetSampleSum() > holds*(hold.Seconds()+1) {
		t.Errorf("use histogram: %d holds, sum %.3f s; want %d of about %s", use.GetSampleCount(), use.GetSampleSum(), holds, hold)
	}
	// A hold lasts at least its sleep, never less (how much longer depends on the machine's
	// load): no hold may land in a bucket below 40 ms, and every one is counted by +Inf.
	for _, b := range use.GetBucket() {
		if b.GetUpperBound() < hold.Seconds() && b.GetCumulativeCount() != 0 {
			t.Errorf("use histogram: %d holds of at least %s at or below %g s", b.GetCumulativeCount(), hold, b.GetUpperBound())
		}
	}
	if create.GetSampleCount() != uint64(opened) || opened < 1 || create.GetSampleSum() <= 0 {
		t.Errorf("create histogram: %d connects, sum %g s; the pool opened %d", create.GetSampleCount(), create.GetSampleSum(), opened)
	}

	// A server that refuses: one failed connect, timed and counted as a connect failure.
	down, downTracer := newPgxPool(t, "postgres://postgres@"+testbin.FreeAddr(t)+"/postgres?sslmode=disable&connect_timeout=5", 1, true, nil)
	dc := pgxpoolcollector.New(down, downTracer, pgxpoolcollector.Options{})
	if _, err := down.Acquire(context.Background()); err == nil {
		t.Fatal("acquire from a closed port succeeded")
	}
	mfs = testbin.Gather(t, dc)
	if n := mfs["dbpool_connection_create_duration_seconds"].GetMetric()[0].GetHistogram().GetSampleCount(); n < 1 {
		t.Errorf("refused connect not timed: %d observations", n)
	}
	if v := seriesValue(t, mfs["dbpool_checkout_failures_total"], "reason", metrics.FailureConnect); v != 1 {
		t.Errorf("connect failures %g, want 1", v)
	}
}

var errAny = errors.New("any non-context error")

// fullRecorder implements every tracer interface pgx and pgxpool look for. Each start puts
// a value into the context that its end must see, so a wrapper that loses the context shows.
type fullRecorder struct {
	queryRecorder
}

type recKey struct{}

func (r *fullRecorder) add(call string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, call)
}

func (r *fullRecorder) start(ctx context.Context, what string) context.Context {
	r.add(what + " start")
	return context.WithValue(ctx, recKey{}, what)
}

// end records the end of the call whose start put a value with prefix into ctx.
func (r *fullRecorder) end(ctx context.Context, prefix string) {
	got, _ := ctx.Value(recKey{}).(string)
	if !strings.HasPrefix(got, prefix) {
		r.add(prefix + " end: LOST CONTEXT, got " + got)
		return
	}
	r.add(got + " end")
}

func (r *fullRecorder) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	return r.start(ctx, "query "+d.SQL)
}

func (r *fullRecorder) TraceQueryEnd(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryEndData) {
	r.end(ctx, "query ")
}

func (r *fullRecorder) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	return r.start(ctx, "batch")
}

func (r *fullRecorder) TraceBatchQuery(_ context.Context, _ *pgx.Conn, d pgx.TraceBatchQueryData) {
	r.add("batch query " + d.SQL)
}

func (r *fullRecorder) TraceBatchEnd(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchEndData) {
	r.end(ctx, "batch")
}

func (r *fullRecorder) TraceCopyFromStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceCopyFromStartData) context.Context {
	return r.start(ctx, "copyfrom")
}

func (r *fullRecorder) TraceCopyFromEnd(ctx context.Context, _ *pgx.Conn, _ pgx.TraceCopyFromEndData) {
	r.end(ctx, "copyfrom")
}

func (r *fullRecorder) TracePrepareStart(ctx context.Context, _ *pgx.Conn, d pgx.TracePrepareStartData) context.Context {
	return r.start(ctx, "prepare "+d.Name)
}

func (r *fullRecorder) TracePrepareEnd(ctx context.Context, _ *pgx.Conn, _ pgx.TracePrepareEndData) {
	r.end(ctx, "prepare ")
}

func (r *fullRecorder) TraceConnectStart(ctx context.Context, _ pgx.TraceConnectStartData) context.Context {
	return r.start(ctx, "connect")
}

func (r *fullRecorder) TraceConnectEnd(ctx context.Context, _ pgx.TraceConnectEndData) {
	r.end(ctx, "connect")
}

func (r *fullRecorder) TraceAcquireStart(ctx context.Context, _ *pgxpool.Pool, _ pgxpool.TraceAcquireStartData) context.Context {
	return r.start(ctx, "acquire")
}

func (r *fullRecorder) TraceAcquireEnd(ctx context.Context, _ *pgxpool.Pool, _ pgxpool.TraceAcquireEndData) {
	r.end(ctx, "acquire")
}

func (r *fullRecorder) TraceRelease(_ *pgxpool.Pool, _ pgxpool.TraceReleaseData) {
	r.add("release")
}

type recorder interface {
	pgx.QueryTracer
	recorded() []string
}

// TestAcquireTracerForwards runs the same workload on a pool traced by a service's own
// tracer alone and on a pool where InstrumentConfig wrapped it: the service's tracer must
// see exactly the same calls, with its contexts intact.
func TestAcquireTracerForwards(t *testing.T) {
	pg := pgtest.StartT(t, pgtest.Options{})
	workload := func(t *testing.T, pool *pgxpool.Pool) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pool.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Release()
		if _, err := conn.Exec(ctx, "CREATE TEMP TABLE t (n int)"); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Conn().Prepare(ctx, "one", "SELECT 1"); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.CopyFrom(ctx, pgx.Identifier{"t"}, []string{"n"}, pgx.CopyFromRows([][]any{{1}, {2}})); err != nil {
			t.Fatal(err)
		}
		b := &pgx.Batch{}
		b.Queue("SELECT 2")
		b.Queue("SELECT 3")
		if err := conn.SendBatch(ctx, b).Close(); err != nil {
			t.Fatal(err)
		}
		var n int
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM t").Scan(&n); err != nil || n != 2 {
			t.Fatalf("count: %d, %v", n, err)
		}
	}
	tests := []struct {
		name      string
		newRec    func() recorder
		wantCalls []string // calls that must be among the recorded ones
	}{
		{
			name:      "query tracer only",
			newRec:    func() recorder { return &queryRecorder{} },
			wantCalls: []string{"start SELECT count(*) FROM t"},
		},
		{
			name:   "every tracer interface",
			newRec: func() recorder { return &fullRecorder{} },
			wantCalls: []string{
				"acquire start", "connect start", "connect end", "acquire end", "prepare one end",
				"copyfrom end", "batch query SELECT 3", "batch end", "query SELECT count(*) FROM t end", "release",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			plainRec := tt.newRec()
			plain, _ := newPgxPool(t, pg.SuperuserDSN(""), 1, false, plainRec)
			workload(t, plain)
			wrappedRec := tt.newRec()
			wrapped, tracer := newPgxPool(t, pg.SuperuserDSN(""), 1, true, wrappedRec)
			if tracer.Next() != wrappedRec {
				t.Fatalf("Next() = %v, want the service's tracer", tracer.Next())
			}
			workload(t, wrapped)

			want, got := plainRec.recorded(), wrappedRec.recorded()
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Errorf("wrapped tracer saw\n%s\nwithout the wrapper it saw\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			for _, call := range tt.wantCalls {
				if !contains(got, call) {
					t.Errorf("wrapped tracer never saw %q: %q", call, got)
				}
			}
			for _, call := range got {
				if strings.Contains(call, "LOST CONTEXT") {
					t.Errorf("wrapped tracer: %s", call)
				}
			}
			h := histogramOf(t, pgxpoolcollector.New(wrapped, tracer, pgxpoolcollector.Options{}))
			if h.GetSampleCount() != 1 {
				t.Errorf("tracer counted %d acquires, want 1", h.GetSampleCount())
			}
		})
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func TestAcquireTracerInstrumentConfig(t *testing.T) {
	cfg, err := pgxpool.ParseConfig("postgres://u@127.0.0.1:1/db")
	if err != nil {
		t.Fatal(err)
	}
	if got := pgxpoolcollector.InstrumentConfig(cfg); got.Next() != nil {
		t.Errorf("no tracer before: Next() = %v, want nil", got.Next())
	}
	first := cfg.ConnConfig.Tracer
	again := pgxpoolcollector.InstrumentConfig(cfg)
	if again != first || cfg.ConnConfig.Tracer != first {
		t.Error("InstrumentConfig twice wrapped the tracer twice")
	}

	cfg, _ = pgxpool.ParseConfig("postgres://u@127.0.0.1:1/db")
	logTracer := &tracelog.TraceLog{Logger: tracelog.LoggerFunc(func(context.Context, tracelog.LogLevel, string, map[string]any) {}), LogLevel: tracelog.LogLevelInfo}
	cfg.ConnConfig.Tracer = logTracer
	tr := pgxpoolcollector.InstrumentConfig(cfg)
	if tr.Next() != logTracer || cfg.ConnConfig.Tracer != tr {
		t.Errorf("InstrumentConfig did not wrap the existing tracer: next %v, installed %v", tr.Next(), cfg.ConnConfig.Tracer)
	}
}

// TestPgxpoolCollectorWithoutTracer covers pools that were not instrumented: the collector
// falls back to pool.Stat(), and a pool instrumented by InstrumentConfig is found without
// passing its tracer.
func TestPgxpoolCollectorWithoutTracer(t *testing.T) {
	pg := pgtest.StartT(t, pgtest.Options{})
	for _, instrumented := range []bool{false, true} {
		t.Run(fmt.Sprintf("instrumented=%v", instrumented), func(t *testing.T) {
			pool, _ := newPgxPool(t, pg.SuperuserDSN(""), 1, instrumented, nil)
			c := pgxpoolcollector.New(pool, nil, pgxpoolcollector.Options{Target: "db"})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			for range 3 {
				conn, err := pool.Acquire(ctx)
				if err != nil {
					t.Fatal(err)
				}
				conn.Release()
			}
			held, err := pool.Acquire(ctx)
			if err != nil {
				t.Fatal(err)
			}
			short, cancelShort := context.WithTimeout(ctx, 20*time.Millisecond)
			defer cancelShort()
			if _, err := pool.Acquire(short); !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("acquire on exhausted pool: %v", err)
			}
			held.Release()

			w := defaultWant("db", "default", 1)
			w.open, w.idle, w.timeouts, w.pending = 1, 1, 1, -1
			// Stat() counts successful acquires only; the tracer counts the failed one too.
			w.checkouts = 4
			wantBuckets := 0
			if instrumented {
				w.checkouts, w.pending, wantBuckets = 5, 0, 15
			}
			compare(t, c, w)
			testbin.LintClean(t, c)
			h := histogramOf(t, c)
			if h.GetSampleCount() != uint64(w.checkouts) || len(h.GetBucket()) != wantBuckets {
				t.Errorf("histogram: count %d with %d buckets, want %d with %d", h.GetSampleCount(), len(h.GetBucket()), w.checkouts, wantBuckets)
			}
		})
	}
}

// TestPgxpoolCollectorAdd exports two pools of one process through one collector, with the
// label defaults and explicit settings, and rejects ambiguous additions.
func TestPgxpoolCollectorAdd(t *testing.T) {
	pg := pgtest.StartT(t, pgtest.Options{})
	a, ta := newPgxPool(t, pg.SuperuserDSN(""), 3, true, nil)
	b, tb := newPgxPool(t, pg.SuperuserDSN(""), 2, true, nil)
	c := pgxpoolcollector.New(a, ta, pgxpoolcollector.Options{})
	settings := poolcfg.Settings{PoolSize: 1, MaxOverflow: 1, Timeout: 5 * time.Second, PrePing: true}
	if err := c.Add(b, tb, pgxpoolcollector.Options{Target: "db", Pool: "replica", Settings: &settings}); err != nil {
		t.Fatal(err)
	}
	conns := make([]*pgxpool.Conn, 0, 2)
	for range 2 {
		conn, err := b.Acquire(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, conn)
	}
	defer func() {
		for _, conn := range conns {
			conn.Release()
		}
	}()

	wa := defaultWant("postgres", "default", 3) // the database name and the default pool name
	wb := poolWant{target: "db", pool: "replica", size: 1, overflowMax: 1, timeout: 5,
		open: 2, acquired: 2, overflow: 1, checkouts: 2}
	if err := testutil.CollectAndCompare(c, strings.NewReader(exposition(wa, wb)), deterministicFamilies...); err != nil {
		t.Error(err)
	}
	testbin.LintClean(t, c)
	if n := testutil.CollectAndCount(c, "dbpool_pool_info"); n != 2 {
		t.Errorf("%d pools exported, want 2", n)
	}

	other, _ := newPgxPool(t, pg.SuperuserDSN(""), 1, false, nil)
	for _, tt := range []struct {
		name   string
		pool   *pgxpool.Pool
		tracer *pgxpoolcollector.AcquireTracer
		opts   pgxpoolcollector.Options
	}{
		{"nil pool", nil, nil, pgxpoolcollector.Options{Pool: "x"}},
		{"labels taken", other, nil, pgxpoolcollector.Options{Target: "db", Pool: "replica"}},
		{"tracer of another pool", other, ta, pgxpoolcollector.Options{Pool: "x"}},
		{"no capacity", other, nil, pgxpoolcollector.Options{Pool: "x", Settings: &poolcfg.Settings{}}},
	} {
		if err := c.Add(tt.pool, tt.tracer, tt.opts); err == nil {
			t.Errorf("%s: Add succeeded", tt.name)
		}
	}
	if n := testutil.CollectAndCount(c, "dbpool_pool_info"); n != 2 {
		t.Errorf("after rejected additions %d pools exported, want 2", n)
	}
}

// BenchmarkAcquireTracer measures what the tracer adds to every Acquire (the success path;
// a real Acquire costs microseconds).
func BenchmarkAcquireTracer(b *testing.B) {
	tr := pgxpoolcollector.NewAcquireTracer(nil)
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			c := tr.TraceAcquireStart(ctx, nil, pgxpool.TraceAcquireStartData{})
			tr.TraceAcquireEnd(c, nil, pgxpool.TraceAcquireEndData{})
		}
	})
}
