// The AcquireTracer: what one *pgxpool.Pool's checkouts took, how many wait, and how many
// gave up on an exhausted pool.

package pgxpoolcollector

import (
	"context"
	"errors"
	"math"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dbpool/dbpool_exporter/internal/metrics"
)

// checkoutBuckets are the upper bounds, in seconds, of dbpool_checkout_duration_seconds. They
// resolve the tuning guide's average-checkout target (10 ms) and alert threshold (50 ms) and
// reach up to the 30 s default DB_POOL_TIMEOUT.
var checkoutBuckets = [...]float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

// checkoutBounds are checkoutBuckets as durations, so that an observation is placed with
// integer comparisons only.
var checkoutBounds = func() (b [len(checkoutBuckets)]time.Duration) {
	for i, s := range checkoutBuckets {
		b[i] = time.Duration(math.Round(s * float64(time.Second)))
	}
	return b
}()

// AcquireTracer measures checkouts of one *pgxpool.Pool: how long every Acquire took, how
// many are in progress right now, and how many gave up because the pool was exhausted.
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
//   - timeouts: acquires that ended with context.DeadlineExceeded or context.Canceled while
//     the pool was at capacity (acquired plus constructing connections >= MaxConns when the
//     acquire gave up), i.e. the caller stopped waiting because the pool was exhausted. A
//     cancellation on a pool with room (e.g. the request went away while a new connection was
//     being opened) is counted in the histogram but is not a timeout. The capacity is read
//     when the acquire ends, so a connection released in that same instant can hide one
//     timeout; the counter never counts an acquire twice.
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

	pending atomic.Int64
	// counts holds per-bucket (not cumulative) observation counts; the last element counts
	// observations above the highest bound.
	counts   [len(checkoutBuckets) + 1]atomic.Uint64
	sumNanos atomic.Uint64
	timeouts atomic.Uint64
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
	t := &AcquireTracer{next: next}
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
		t.observe(time.Since(start))
		if data.Err != nil && isGiveUp(data.Err) && pool != nil && atCapacity(pool) {
			t.timeouts.Add(1)
		}
		t.pending.Add(-1)
	}
	if t.acquire != nil {
		t.acquire.TraceAcquireEnd(ctx, pool, data)
	}
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

func (t *AcquireTracer) observe(d time.Duration) {
	if d < 0 {
		d = 0
	}
	i := 0
	for i < len(checkoutBounds) && d > checkoutBounds[i] {
		i++
	}
	t.counts[i].Add(1)
	t.sumNanos.Add(uint64(d))
}

// snapshot reads the counters. Count is the sum of the bucket counts read, so buckets and
// count always agree; the sum may include an observation or two that the buckets do not
// yet, which is harmless for rate(_sum)/rate(_count).
func (t *AcquireTracer) snapshot() (pending int, cs metrics.CheckoutStats) {
	pending = int(t.pending.Load())
	cs.Buckets = make(map[float64]uint64, len(checkoutBuckets))
	var cum uint64
	for i := range t.counts {
		cum += t.counts[i].Load()
		if i < len(checkoutBuckets) {
			cs.Buckets[checkoutBuckets[i]] = cum
		}
	}
	cs.Count = cum
	cs.DurationSeconds = float64(t.sumNanos.Load()) / float64(time.Second)
	timeouts := t.timeouts.Load()
	cs.Timeouts = &timeouts
	return pending, cs
}
