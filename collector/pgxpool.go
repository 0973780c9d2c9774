package collector

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dbpool/dbpool_exporter/poolcfg"
)

// Connection states of a pgxpool, as pgxpool.Stat names them. Together with StateIdle they
// break dbpool_open_connections down for the pgxpool source.
const (
	StateAcquired     = "acquired"
	StateConstructing = "constructing"
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
func (t *AcquireTracer) snapshot() (pending int, cs CheckoutStats) {
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

// TraceQueryStart implements pgx.QueryTracer by forwarding to the wrapped tracer.
func (t *AcquireTracer) TraceQueryStart(ctx context.Context, conn *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	if t.query != nil {
		return t.query.TraceQueryStart(ctx, conn, data)
	}
	return ctx
}

// TraceQueryEnd implements pgx.QueryTracer by forwarding to the wrapped tracer.
func (t *AcquireTracer) TraceQueryEnd(ctx context.Context, conn *pgx.Conn, data pgx.TraceQueryEndData) {
	if t.query != nil {
		t.query.TraceQueryEnd(ctx, conn, data)
	}
}

// TraceBatchStart implements pgx.BatchTracer by forwarding to the wrapped tracer.
func (t *AcquireTracer) TraceBatchStart(ctx context.Context, conn *pgx.Conn, data pgx.TraceBatchStartData) context.Context {
	if t.batch != nil {
		return t.batch.TraceBatchStart(ctx, conn, data)
	}
	return ctx
}

// TraceBatchQuery implements pgx.BatchTracer by forwarding to the wrapped tracer.
func (t *AcquireTracer) TraceBatchQuery(ctx context.Context, conn *pgx.Conn, data pgx.TraceBatchQueryData) {
	if t.batch != nil {
		t.batch.TraceBatchQuery(ctx, conn, data)
	}
}

// TraceBatchEnd implements pgx.BatchTracer by forwarding to the wrapped tracer.
func (t *AcquireTracer) TraceBatchEnd(ctx context.Context, conn *pgx.Conn, data pgx.TraceBatchEndData) {
	if t.batch != nil {
		t.batch.TraceBatchEnd(ctx, conn, data)
	}
}

// TraceCopyFromStart implements pgx.CopyFromTracer by forwarding to the wrapped tracer.
func (t *AcquireTracer) TraceCopyFromStart(ctx context.Context, conn *pgx.Conn, data pgx.TraceCopyFromStartData) context.Context {
	if t.copyFrom != nil {
		return t.copyFrom.TraceCopyFromStart(ctx, conn, data)
	}
	return ctx
}

// TraceCopyFromEnd implements pgx.CopyFromTracer by forwarding to the wrapped tracer.
func (t *AcquireTracer) TraceCopyFromEnd(ctx context.Context, conn *pgx.Conn, data pgx.TraceCopyFromEndData) {
	if t.copyFrom != nil {
		t.copyFrom.TraceCopyFromEnd(ctx, conn, data)
	}
}

// TracePrepareStart implements pgx.PrepareTracer by forwarding to the wrapped tracer.
func (t *AcquireTracer) TracePrepareStart(ctx context.Context, conn *pgx.Conn, data pgx.TracePrepareStartData) context.Context {
	if t.prepare != nil {
		return t.prepare.TracePrepareStart(ctx, conn, data)
	}
	return ctx
}

// TracePrepareEnd implements pgx.PrepareTracer by forwarding to the wrapped tracer.
func (t *AcquireTracer) TracePrepareEnd(ctx context.Context, conn *pgx.Conn, data pgx.TracePrepareEndData) {
	if t.prepare != nil {
		t.prepare.TracePrepareEnd(ctx, conn, data)
	}
}

// TraceConnectStart implements pgx.ConnectTracer by forwarding to the wrapped tracer.
func (t *AcquireTracer) TraceConnectStart(ctx context.Context, data pgx.TraceConnectStartData) context.Context {
	if t.connect != nil {
		return t.connect.TraceConnectStart(ctx, data)
	}
	return ctx
}

// TraceConnectEnd implements pgx.ConnectTracer by forwarding to the wrapped tracer.
func (t *AcquireTracer) TraceConnectEnd(ctx context.Context, data pgx.TraceConnectEndData) {
	if t.connect != nil {
		t.connect.TraceConnectEnd(ctx, data)
	}
}

// TraceRelease implements pgxpool.ReleaseTracer by forwarding to the wrapped tracer.
func (t *AcquireTracer) TraceRelease(pool *pgxpool.Pool, data pgxpool.TraceReleaseData) {
	if t.release != nil {
		t.release.TraceRelease(pool, data)
	}
}

// PgxpoolOptions name a pool in the dbpool_* series and describe its configuration.
type PgxpoolOptions struct {
	// Target is the value of the target label: the database server, named as the
	// dbpool_exporter watching that server names it, so that the service's pool series line
	// up with the server's. Empty means the pool's database name ("default" if that is
	// empty too).
	Target string
	// Pool is the value of the pool label, e.g. the service's name. Empty means "default".
	Pool string
	// Settings, if set, is reported as the pool's configuration as is. Nil means
	// PgxpoolSettings of the pool's own configuration, which has no acquire timeout: set
	// Timeout on a copy to report the deadline the service puts on its acquires.
	Settings *poolcfg.Settings
}

// PgxpoolSettings maps a pgxpool configuration onto the pool settings of the tuning guide:
//
//   - PoolSize is MaxConns: pgxpool keeps every connection it opened until it is idle for
//     MaxConnIdleTime or older than MaxConnLifetime, so all of MaxConns are "permanent" in
//     the guide's sense;
//   - MaxOverflow is 0: pgxpool has no connections that are closed on return;
//   - Timeout is 0: pgxpool has no acquire timeout of its own, an Acquire waits as long as
//     its context allows. Set it to the deadline your service uses;
//   - Recycle is MaxConnLifetime;
//   - PrePing is true: by default pgxpool pings a connection that was idle for a second or
//     more before handing it out (ShouldPing may narrow that; it cannot be inspected).
//
// Instances is always 1 for this source: every process exports its own pool and is its
// own scrape target, and the alert rules sum across instances.
func PgxpoolSettings(cfg *pgxpool.Config) poolcfg.Settings {
	return poolcfg.Settings{
		PoolSize: int(cfg.MaxConns),
		Recycle:  cfg.MaxConnLifetime,
		PrePing:  true,
	}
}

// PgxpoolCollector exports *pgxpool.Pool instances of a Go process as the dbpool_* series
// (source "pgxpool") that dbpool_exporter's alerts and dashboard understand. Every Collect
// takes one fresh pool.Stat() per pool plus the pool's AcquireTracer counters.
//
// With an AcquireTracer the collector reports dbpool_pending_checkouts, a histogram of
// checkout durations and dbpool_checkout_timeouts_total. Without one it falls back to what
// pool.Stat() keeps: successful acquires and their total wait (the histogram then has the
// +Inf bucket only), timeouts from CanceledAcquireCount, which also counts cancellations
// while a new connection was being opened and so is an upper bound on exhaustion timeouts,
// and no pending gauge (the series is absent).
//
// Connections are broken down as acquired, idle and constructing. dbpool_overflow_connections
// is max(0, open - Settings.PoolSize), which is 0 with the default settings: pgxpool has no
// overflow.
//
// The dbpool_* descriptors can be registered only once per registry, so a process with
// several pools exports them all through one collector: see Add.
type PgxpoolCollector struct {
	descs *poolDescs

	mu    sync.RWMutex
	pools []pgxpoolSource
}

type pgxpoolSource struct {
	pool      *pgxpool.Pool
	tracer    *AcquireTracer
	target    string
	name      string
	settings  poolcfg.Settings
	instances int
}

// NewPgxpoolCollector returns a collector for pool. tracer is the pool's AcquireTracer from
// InstrumentConfig; when nil, the collector uses the AcquireTracer installed as the pool's
// ConnConfig.Tracer if there is one, and otherwise falls back to pool.Stat() alone (see
// PgxpoolCollector). A tracer that the pool does not call (installed after the pool was
// created, or on another pool's config) sees no acquire and reports zeros. It panics if
// pool is nil.
func NewPgxpoolCollector(pool *pgxpool.Pool, tracer *AcquireTracer, opts PgxpoolOptions) *PgxpoolCollector {
	c := &PgxpoolCollector{descs: newPoolDescs()}
	if err := c.Add(pool, tracer, opts); err != nil {
		panic(err)
	}
	return c
}

// Add exports one more pool through this collector, with the same rules as
// NewPgxpoolCollector. It fails if pool is nil, if the target and pool labels are already
// taken, if tracer already belongs to another pool of this collector, or if opts.Settings
// allows no connection at all.
func (c *PgxpoolCollector) Add(pool *pgxpool.Pool, tracer *AcquireTracer, opts PgxpoolOptions) error {
	if pool == nil {
		return errors.New("pgxpool collector: nil pool")
	}
	cfg := pool.Config()
	if tracer == nil {
		tracer, _ = cfg.ConnConfig.Tracer.(*AcquireTracer)
	}
	s := pgxpoolSource{pool: pool, tracer: tracer, target: opts.Target, name: opts.Pool, instances: 1}
	if s.target == "" {
		s.target = cfg.ConnConfig.Database
	}
	if s.target == "" {
		s.target = "default"
	}
	if s.name == "" {
		s.name = "default"
	}
	if opts.Settings != nil {
		s.settings = *opts.Settings
		if s.settings.Capacity() < 1 {
			return fmt.Errorf("pgxpool collector: pool %q of target %q: settings allow %d connections", s.name, s.target, s.settings.Capacity())
		}
	} else {
		s.settings = PgxpoolSettings(cfg)
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	for _, o := range c.pools {
		if o.target == s.target && o.name == s.name {
			return fmt.Errorf("pgxpool collector: pool %q of target %q added twice", s.name, s.target)
		}
		if tracer != nil && o.tracer == tracer {
			return fmt.Errorf("pgxpool collector: pool %q of target %q: its tracer already traces pool %q", s.name, s.target, o.name)
		}
	}
	c.pools = append(c.pools, s)
	return nil
}

// Describe implements prometheus.Collector.
func (c *PgxpoolCollector) Describe(ch chan<- *prometheus.Desc) {
	c.descs.describe(ch)
}

// Collect implements prometheus.Collector.
func (c *PgxpoolCollector) Collect(ch chan<- prometheus.Metric) {
	var ms []prometheus.Metric
	for _, p := range c.Samples() {
		ms = c.descs.appendMetrics(ms, &p)
	}
	for _, m := range ms {
		ch <- m
	}
}

// Samples takes one sample of every pool, in the order they were added. It is what Collect
// exports, for callers that keep pool history or emit the series themselves.
func (c *PgxpoolCollector) Samples() []PoolStats {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]PoolStats, 0, len(c.pools))
	for i := range c.pools {
		out = append(out, c.pools[i].sample())
	}
	return out
}

func (s *pgxpoolSource) sample() PoolStats {
	st := s.pool.Stat()
	open := int(st.TotalConns())
	p := PoolStats{
		Target:     s.target,
		Pool:       s.name,
		Source:     SourcePgxpool,
		Exact:      true,
		Configured: true,
		Settings:   s.settings,
		Instances:  s.instances,
		Open:       open,
		InUse:      int(st.AcquiredConns()),
		Overflow:   max(0, open-s.settings.PoolSize),
		States: map[string]int{
			StateAcquired:     int(st.AcquiredConns()),
			StateIdle:         int(st.IdleConns()),
			StateConstructing: int(st.ConstructingConns()),
		},
	}
	if s.tracer != nil {
		pending, cs := s.tracer.snapshot()
		p.Pending = &pending
		p.Checkouts = &cs
		return p
	}
	timeouts := uint64(st.CanceledAcquireCount())
	p.Checkouts = &CheckoutStats{
		Count:           uint64(st.AcquireCount()),
		DurationSeconds: st.AcquireDuration().Seconds(),
		Timeouts:        &timeouts,
	}
	return p
}
