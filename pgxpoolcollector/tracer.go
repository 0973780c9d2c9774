// The AcquireTracer: what one *pgxpool.Pool's checkouts took, how many wait, how many
// failed and why, how long connections were held, and how long opening one took.

package pgxpoolcollector

import (
	"context"
	"errors"
	"math"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dbpool/dbpool_exporter/internal/metrics"
)

// checkoutBuckets are the upper bounds, in seconds, of dbpool_checkout_duration_seconds. They
// resolve the tuning guide's average-checkout target (10 ms) and alert threshold (50 ms) and
// reach up to the 30 s default DB_POOL_TIMEOUT.
var checkoutBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

// useBuckets are the upper bounds of dbpool_connection_use_duration_seconds and
// dbpool_connection_create_duration_seconds, the same as the Python integration's: from 1 ms
// (where a hold stops mattering for sizing, and a refused connect fails) up to a minute (a
// batch job, a leak, or a driver's connect timeout).
var useBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

// durations is a lock-free histogram of durations: counts per bucket (not cumulative; the
// last counts observations above the highest bound) and the sum.
type durations struct {
	buckets  []float64
	bounds   []time.Duration // buckets as durations: placing an observation compares integers
	counts   []atomic.Uint64
	sumNanos atomic.Uint64
}

func newDurations(buckets []float64) *durations {
	d := &durations{buckets: buckets, bounds: make([]time.Duration, len(buckets)), counts: make([]atomic.Uint64, len(buckets)+1)}
	for i, s := range buckets {
		d.bounds[i] = time.Duration(math.Round(s * float64(time.Second)))
	}
	return d
}

func (d *durations) observe(v time.Duration) {
	v = max(v, 0)
	i := 0
	for i < len(d.bounds) && v > d.bounds[i] {
		i++
	}
	d.counts[i].Add(1)
	d.sumNanos.Add(uint64(v))
}

// read returns the count, sum and cumulative buckets. The count is the sum of the bucket
// counts read, so buckets and count always agree; the sum may include an observation or two
// that the buckets do not yet, which is harmless for rate(_sum)/rate(_count).
func (d *durations) read() (count uint64, sum float64, buckets map[float64]uint64) {
	buckets = make(map[float64]uint64, len(d.buckets))
	for i := range d.counts {
		count += d.counts[i].Load()
		if i < len(d.buckets) {
			buckets[d.buckets[i]] = count
		}
	}
	return count, float64(d.sumNanos.Load()) / float64(time.Second), buckets
}

// AcquireTracer measures one *pgxpool.Pool: how long every Acquire took, how many are in
// progress right now, how many failed and why, how long each acquired connection was held,
// and how long opening a new connection took.
//
// pgx finds its tracer in pgx.ConnConfig.Tracer and discovers the optional interfaces
// (pgxpool.AcquireTracer, pgx.BatchTracer, ...) by type assertion, so only one tracer can be
// installed. AcquireTracer therefore wraps the tracer a service already has (logging,
// OpenTelemetry, ...) and implements every pgx tracer interface: each call goes on to the
// wrapped tracer when that one implements the interface, and is a no-op otherwise. Use
// InstrumentConfig to install it; the wrapped tracer sees exactly the calls it saw before.
//
// What is measured, per Acquire (pgxpool's Query, QueryRow, Exec, Begin, SendBatch,
// CopyFrom and AcquireFunc acquire too; AcquireAllIdle, which never waits, is not traced by
// pgxpool):
//
//   - the duration from TraceAcquireStart to TraceAcquireEnd, in a histogram with the bounds
//     0.5ms 1ms 2.5ms 5ms 10ms 25ms 50ms 100ms 250ms 500ms 1s 2.5s 5s 10s 30s. It includes
//     waiting for a free connection, opening a new one, and pgxpool's liveness ping. Failed
//     acquires are observed as well: a caller that timed out waited too.
//   - pending: acquires that have started and not yet ended.
//   - failures by reason (dbpool_checkout_failures_total): timeout, an acquire that ended
//     with context.DeadlineExceeded or context.Canceled while the pool was at capacity
//     (acquired plus constructing connections >= MaxConns when the acquire gave up), i.e. the
//     caller stopped waiting because the pool was exhausted (also
//     dbpool_checkout_timeouts_total); cancelled, the same on a pool with room (the request
//     went away while a new connection was being opened); connect, opening a connection
//     failed (*pgconn.ConnectError: refused, too many clients, authentication); other. The
//     capacity is read when the acquire ends, so a connection released in that same instant
//     can turn one timeout into a cancellation; no acquire is counted twice.
//   - the hold: from TraceAcquireEnd to TraceRelease (pgxpool.ReleaseTracer), in
//     dbpool_connection_use_duration_seconds with the bounds 1ms 2.5ms 5ms 10ms 25ms 50ms
//     100ms 250ms 500ms 1s 2.5s 5s 10s 30s 60s. The acquire time rides on the connection
//     (pgconn's CustomData), so a hold is measured whichever goroutine releases it.
//   - opening a connection: from TraceConnectStart to TraceConnectEnd (pgx.ConnectTracer),
//     failed attempts included, in dbpool_connection_create_duration_seconds with the same
//     bounds.
//
// The hot path is a few atomic operations and one context value; no locks. One
// AcquireTracer belongs to one pool: counts of two pools sharing a tracer would mix.
// The zero value is not usable; use NewAcquireTracer or InstrumentConfig.
type AcquireTracer struct {
	next     any
	query    pgx.QueryTracer
	batch    pgx.BatchTracer
	copyFrom pgx.CopyFromTracer
	prepare  pgx.PrepareTracer
	connect  pgx.ConnectTracer
	acquire  pgxpool.AcquireTracer
	release  pgxpool.ReleaseTracer

	pending  atomic.Int64
	checkout *durations
	use      *durations
	create   *durations
	// failures counts failed acquires by metrics.FailureReasons; failures[0], the timeouts,
	// is also dbpool_checkout_timeouts_total.
	failures [4]atomic.Uint64
}

// The wrapper must implement every interface pgx looks for, or a wrapped tracer would
// silently stop receiving those calls.
var (
	_ pgx.QueryTracer       = (*AcquireTracer)(nil)
	_ pgx.BatchTracer       = (*AcquireTracer)(nil)
	_ pgx.CopyFromTracer    = (*AcquireTracer)(nil)
	_ pgx.PrepareTracer     = (*AcquireTracer)(nil)
	_ pgx.ConnectTracer     = (*AcquireTracer)(nil)
	_ pgxpool.AcquireTracer = (*AcquireTracer)(nil)
	_ pgxpool.ReleaseTracer = (*AcquireTracer)(nil)
)

// NewAcquireTracer returns a tracer that measures acquires and forwards every pgx tracer
// call to next for each of pgx.QueryTracer, pgx.BatchTracer, pgx.CopyFromTracer,
// pgx.PrepareTracer, pgx.ConnectTracer, pgxpool.AcquireTracer and pgxpool.ReleaseTracer that
// next implements. next may be nil. The result must be installed as the pool's
// ConnConfig.Tracer before pgxpool.NewWithConfig; InstrumentConfig does both.
func NewAcquireTracer(next any) *AcquireTracer {
	t := &AcquireTracer{next: next, checkout: newDurations(checkoutBuckets), use: newDurations(useBuckets), create: newDurations(useBuckets)}
	t.query, _ = next.(pgx.QueryTracer)
	t.batch, _ = next.(pgx.BatchTracer)
	t.copyFrom, _ = next.(pgx.CopyFromTracer)
	t.prepare, _ = next.(pgx.PrepareTracer)
	t.connect, _ = next.(pgx.ConnectTracer)
	t.acquire, _ = next.(pgxpool.AcquireTracer)
	t.release, _ = next.(pgxpool.ReleaseTracer)
	return t
}

// InstrumentConfig installs an AcquireTracer as cfg.ConnConfig.Tracer, wrapping the tracer
// that was there, and returns it. Call it before pgxpool.NewWithConfig: the pool reads the
// tracer once, when it is created. Calling it again on the same config returns the
// installed tracer instead of wrapping it twice.
func InstrumentConfig(cfg *pgxpool.Config) *AcquireTracer {
	if t, ok := cfg.ConnConfig.Tracer.(*AcquireTracer); ok {
		return t
	}
	var next any
	if cfg.ConnConfig.Tracer != nil {
		next = cfg.ConnConfig.Tracer
	}
	t := NewAcquireTracer(next)
	cfg.ConnConfig.Tracer = t
	return t
}

// Next returns the wrapped tracer, nil if there is none.
func (t *AcquireTracer) Next() any { return t.next }

// acquireStartKey carries the start time of one Acquire from TraceAcquireStart to
// TraceAcquireEnd; its presence also marks an acquire that this tracer counted as pending.
type acquireStartKey struct{}

// TraceAcquireStart implements pgxpool.AcquireTracer.
func (t *AcquireTracer) TraceAcquireStart(ctx context.Context, pool *pgxpool.Pool, data pgxpool.TraceAcquireStartData) context.Context {
	if t.acquire != nil {
		ctx = t.acquire.TraceAcquireStart(ctx, pool, data)
	}
	// Timed after the wrapped tracer so that its own work is not counted as waiting.
	t.pending.Add(1)
	return context.WithValue(ctx, acquireStartKey{}, time.Now())
}

// TraceAcquireEnd implements pgxpool.AcquireTracer.
func (t *AcquireTracer) TraceAcquireEnd(ctx context.Context, pool *pgxpool.Pool, data pgxpool.TraceAcquireEndData) {
	if start, ok := ctx.Value(acquireStartKey{}).(time.Time); ok {
		now := time.Now()
		t.checkout.observe(now.Sub(start))
		if data.Err != nil {
			t.failures[failureReason(pool, data.Err)].Add(1)
		} else if data.Conn != nil {
			holdStart(data.Conn).Store(now.UnixNano())
		}
		t.pending.Add(-1)
	}
	if t.acquire != nil {
		t.acquire.TraceAcquireEnd(ctx, pool, data)
	}
}

// Indexes into metrics.FailureReasons.
const (
	failTimeout = iota
	failConnect
	failCancelled
	failOther
)

// failureReason says why an acquire failed: the caller stopped waiting on an exhausted pool
// (timeout) or on one with room (cancelled), opening a connection failed (connect), or
// anything else (other: AfterConnect, a failed liveness ping, a closed pool).
func failureReason(pool *pgxpool.Pool, err error) int {
	var connect *pgconn.ConnectError
	switch {
	case isGiveUp(err) && pool != nil && atCapacity(pool):
		return failTimeout
	case isGiveUp(err):
		return failCancelled
	case errors.As(err, &connect):
		return failConnect
	}
	return failOther
}

// holdStartKey is the key in a connection's CustomData of the time it was last acquired.
const holdStartKey = "dbpool_exporter.pgxpoolcollector.acquired"

// holdStart is where a connection keeps the time it was acquired (Unix nanoseconds, from the
// monotonic clock's wall reading): one allocation per connection, none per acquire. Only
// the goroutine holding the connection touches it, between acquire and release; the
// atomic is for the race detector's peace across the pool's handovers.
func holdStart(c *pgx.Conn) *atomic.Int64 {
	data := c.PgConn().CustomData()
	if v, ok := data[holdStartKey].(*atomic.Int64); ok {
		return v
	}
	v := new(atomic.Int64)
	data[holdStartKey] = v
	return v
}

// isGiveUp reports whether an acquire ended because its caller stopped waiting.
func isGiveUp(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)
}

// atCapacity reports whether no further connection could be opened. It takes the pool's
// lock, which is fine on this path: it runs only for acquires that gave up.
func atCapacity(pool *pgxpool.Pool) bool {
	st := pool.Stat()
	return st.AcquiredConns()+st.ConstructingConns() >= st.MaxConns()
}

// TraceRelease implements pgxpool.ReleaseTracer: the end of a hold.
func (t *AcquireTracer) TraceRelease(pool *pgxpool.Pool, data pgxpool.TraceReleaseData) {
	if data.Conn != nil {
		if started := holdStart(data.Conn).Swap(0); started != 0 {
			t.use.observe(time.Duration(time.Now().UnixNano() - started))
		}
	}
	if t.release != nil {
		t.release.TraceRelease(pool, data)
	}
}

// connectStartKey carries the start of opening a connection to TraceConnectEnd.
type connectStartKey struct{}

// TraceConnectStart implements pgx.ConnectTracer: opening a new connection begins.
func (t *AcquireTracer) TraceConnectStart(ctx context.Context, data pgx.TraceConnectStartData) context.Context {
	if t.connect != nil {
		ctx = t.connect.TraceConnectStart(ctx, data)
	}
	return context.WithValue(ctx, connectStartKey{}, time.Now())
}

// TraceConnectEnd implements pgx.ConnectTracer: the connection is open, or opening it failed
// (a failed attempt is observed too, as OpenTelemetry's create_time does).
func (t *AcquireTracer) TraceConnectEnd(ctx context.Context, data pgx.TraceConnectEndData) {
	if start, ok := ctx.Value(connectStartKey{}).(time.Time); ok {
		t.create.observe(time.Since(start))
	}
	if t.connect != nil {
		t.connect.TraceConnectEnd(ctx, data)
	}
}

// snapshot reads the counters.
func (t *AcquireTracer) snapshot() (pending int, cs metrics.CheckoutStats, use, create metrics.DurationStats) {
	pending = int(t.pending.Load())
	cs.Count, cs.DurationSeconds, cs.Buckets = t.checkout.read()
	cs.Failures = make(map[string]uint64, len(metrics.FailureReasons))
	for i, reason := range metrics.FailureReasons {
		cs.Failures[reason] = t.failures[i].Load()
	}
	timeouts := cs.Failures[metrics.FailureTimeout]
	cs.Timeouts = &timeouts
	use.Count, use.SumSeconds, use.Buckets = t.use.read()
	create.Count, create.SumSeconds, create.Buckets = t.create.read()
	return pending, cs, use, create
}
