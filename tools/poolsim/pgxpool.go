package poolsim

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

	"github.com/dbpool/dbpool_exporter/pgxpoolcollector"
	"github.com/dbpool/dbpool_exporter/poolcfg"
)

// PoolImpl selects the pool each simulated instance uses.
type PoolImpl string

const (
	// ImplQueuePool is the SQLAlchemy QueuePool rendition in this package
	// (QueuePool): a SQLAlchemy service.
	ImplQueuePool PoolImpl = "queuepool"
	// ImplPgxpool is a real *pgxpool.Pool instrumented with the project's
	// pgxpool source (pgxpoolcollector.InstrumentConfig), so that its exact checkout
	// times and timeouts can be exported next to the activity source's
	// estimate of the same pool.
	ImplPgxpool PoolImpl = "pgxpool"
)

// validatePgxpool reports the settings a pgxpool cannot represent.
func (s PoolSettings) validatePgxpool() error {
	var errs []error
	if s.MaxOverflow < 0 {
		// pgxpool needs a finite MaxConns; it has no "unlimited".
		errs = append(errs, fmt.Errorf("pool max overflow must be 0 or more with the pgxpool implementation (it has no unlimited pool), got %d", s.MaxOverflow))
	}
	if s.Timeout <= 0 {
		// An Acquire whose deadline has already passed fails at once even
		// when a connection is idle; QueuePool's "0 fails only when it would
		// wait" has no pgxpool equivalent.
		errs = append(errs, fmt.Errorf("pool timeout must be more than 0 with the pgxpool implementation, got %s", s.Timeout))
	}
	if s.Size > 0 && s.MaxOverflow >= 0 && int64(s.Size)+int64(s.MaxOverflow) > math.MaxInt32 {
		errs = append(errs, fmt.Errorf("pool size + max overflow must not exceed %d with the pgxpool implementation, got %d", math.MaxInt32, int64(s.Size)+int64(s.MaxOverflow)))
	}
	return errors.Join(errs...)
}

// connectCounter counts the connections pgxpool opens. It is installed as the
// pool's tracer before pgxpoolcollector.InstrumentConfig, which wraps it: the
// AcquireTracer forwards pgx.ConnectTracer calls to the tracer it wraps.
type connectCounter struct {
	connects, errors atomic.Uint64
}

// ConnConfig.Tracer has the type pgx.QueryTracer: the query methods are
// required and do nothing.
var (
	_ pgx.QueryTracer   = (*connectCounter)(nil)
	_ pgx.ConnectTracer = (*connectCounter)(nil)
)

func (c *connectCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	return ctx
}

func (c *connectCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (c *connectCounter) TraceConnectStart(ctx context.Context, _ pgx.TraceConnectStartData) context.Context {
	return ctx
}

func (c *connectCounter) TraceConnectEnd(_ context.Context, data pgx.TraceConnectEndData) {
	if data.Err != nil {
		c.errors.Add(1)
	} else {
		c.connects.Add(1)
	}
}

// PgxPool is one instance's *pgxpool.Pool configured from the DB_*
// settings, with the sim's own checkout accounting next to the collector's
// AcquireTracer, so that the two can be compared:
//
//   - MaxConns is Size + MaxOverflow: pgxpool has no overflow, every
//     connection it opens is kept until idle for MaxConnIdleTime (pgxpool's
//     default, 30 min) or older than Recycle;
//   - MinConns is 0: QueuePool opens connections lazily, so both
//     implementations start with no backend and ramp up the same way on the
//     server (MinConns = Size would open Size connections at start and reopen
//     them in the background after every recycle, which QueuePool never does);
//   - MaxConnLifetime is Recycle (0 or less: never), enforced by pgxpool at
//     acquire time and by its health check;
//   - PrePing keeps pgxpool's own liveness ping of connections idle for more
//     than a second; without PrePing nothing is pinged;
//   - Checkout is Acquire with a deadline of Timeout. A checkout that runs
//     into that deadline is a pool timeout; unlike QueuePool's, the deadline
//     also covers opening a new connection.
type PgxPool struct {
	pool     *pgxpool.Pool
	tracer   *pgxpoolcollector.AcquireTracer
	connects *connectCounter
	set      PoolSettings

	pending  atomic.Int64
	mu       sync.Mutex
	checkout struct {
		count    uint64
		seconds  float64
		timeouts uint64
	}
}

// errPoolTimeoutCause marks the deadline Checkout puts on Acquire, so that
// its expiry is told apart from a deadline of the caller's context.
var errPoolTimeoutCause = errors.New("pool timeout")

// NewPgxPool validates cfg and returns a pgxpool with no connection open yet.
func NewPgxPool(cfg PoolConfig) (*PgxPool, error) {
	if err := errors.Join(cfg.Validate(), cfg.validatePgxpool()); err != nil {
		return nil, err
	}
	pc, err := pgxpool.ParseConfig(cfg.DSN)
	if err != nil {
		// As in NewQueuePool: a parse error may echo the DSN and its password.
		return nil, errors.New("cannot parse the DSN; check its syntax (details withheld: a DSN may contain a password)")
	}
	if cfg.ApplicationName != "" {
		pc.ConnConfig.RuntimeParams["application_name"] = cfg.ApplicationName
	}
	pc.MaxConns = int32(cfg.Size + cfg.MaxOverflow) // validatePgxpool bounds it
	pc.MinConns = 0
	pc.MinIdleConns = 0
	pc.MaxConnLifetime = max(0, cfg.Recycle) // pgxpool reads 0 as "never"
	pc.MaxConnLifetimeJitter = 0
	if !cfg.PrePing {
		pc.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return false }
	}
	p := &PgxPool{connects: &connectCounter{}, set: cfg.PoolSettings}
	pc.ConnConfig.Tracer = p.connects
	p.tracer = pgxpoolcollector.InstrumentConfig(pc)
	p.pool, err = pgxpool.NewWithConfig(context.Background(), pc)
	if err != nil {
		return nil, fmt.Errorf("creating the pgxpool: %w", err)
	}
	return p, nil
}

// Pool returns the underlying pool.
func (p *PgxPool) Pool() *pgxpool.Pool { return p.pool }

// Tracer returns the collector's AcquireTracer installed on the pool.
func (p *PgxPool) Tracer() *pgxpoolcollector.AcquireTracer { return p.tracer }

// Settings returns the pool's settings.
func (p *PgxPool) Settings() PoolSettings { return p.set }

// CollectorSettings are the settings to report through the collector: the
// DB_* settings as the activity source of the same application knows them,
// so that size, overflow and capacity series agree; capacity is MaxConns.
func (p *PgxPool) CollectorSettings() poolcfg.Settings {
	return poolcfg.Settings{
		PoolSize:    p.set.Size,
		MaxOverflow: p.set.MaxOverflow,
		Timeout:     p.set.Timeout,
		Recycle:     max(0, p.set.Recycle),
		PrePing:     p.set.PrePing,
	}
}

// Checkout acquires a connection, waiting at most Timeout. Release it with
// (*pgxpool.Conn).Release. When the pool timeout expires first the error
// matches ErrPoolTimeout and the checkout counts in TimeoutsTotal; when ctx
// ends first the error is ctx's.
func (p *PgxPool) Checkout(ctx context.Context) (*pgxpool.Conn, error) {
	start := time.Now()
	actx, cancel := context.WithTimeoutCause(ctx, p.set.Timeout, errPoolTimeoutCause)
	defer cancel()
	p.pending.Add(1)
	// The counters are updated before pending drops, and Stats reads pending
	// first: a snapshot with no checkout pending has counted every checkout
	// that started before it.
	defer p.pending.Add(-1)
	c, err := p.pool.Acquire(actx)
	if err != nil {
		if ctx.Err() == nil && errors.Is(context.Cause(actx), errPoolTimeoutCause) {
			p.mu.Lock()
			p.checkout.timeouts++
			p.mu.Unlock()
			return nil, fmt.Errorf("pgxpool of max conns %d: no connection within the pool timeout %s: %w (%w)",
				p.set.Size+p.set.MaxOverflow, p.set.Timeout, ErrPoolTimeout, err)
		}
		return nil, err
	}
	p.mu.Lock()
	p.checkout.count++
	p.checkout.seconds += time.Since(start).Seconds()
	p.mu.Unlock()
	return c, nil
}

// Stats returns the pool's true numbers, in QueuePool's terms: CheckedOut is
// pgxpool's acquired connections; Open is all of its connections, including
// those being opened; Overflow is max(0, Open - Size); Pending counts
// checkouts in progress, as the collector's dbpool_pending_checkouts does
// (QueuePool counts only callers queued for a connection). pgxpool does not
// report failed pings, and has no overflow connections to close on return:
// PingFailuresTotal and OverflowClosesTotal stay 0. RecyclesTotal counts
// connections pgxpool closed for their age.
func (p *PgxPool) Stats() PoolStats {
	st := p.pool.Stat()
	open := int(st.TotalConns())
	s := PoolStats{
		Size:               p.set.Size,
		MaxOverflow:        p.set.MaxOverflow,
		CheckedOut:         int(st.AcquiredConns()),
		Idle:               int(st.IdleConns()),
		Open:               open,
		Overflow:           max(0, open-p.set.Size),
		Pending:            int(p.pending.Load()), // before the counters: see Checkout
		ConnectsTotal:      p.connects.connects.Load(),
		ConnectErrorsTotal: p.connects.errors.Load(),
		RecyclesTotal:      uint64(st.MaxLifetimeDestroyCount()),
	}
	p.mu.Lock()
	s.CheckoutsTotal = p.checkout.count
	s.CheckoutWaitSecondsTotal = p.checkout.seconds
	s.TimeoutsTotal = p.checkout.timeouts
	p.mu.Unlock()
	return s
}

// Close closes the pool; it waits until every acquired connection is released.
func (p *PgxPool) Close() { p.pool.Close() }
