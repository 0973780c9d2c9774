// Package poolsim (tooling, not product) simulates an application that reaches PostgreSQL through
// SQLAlchemy's QueuePool configured by the DB_* variables
// (DB_POOL_SIZE, DB_MAX_OVERFLOW, DB_POOL_TIMEOUT, DB_POOL_RECYCLE,
// DB_POOL_PRE_PING). The demo and the end-to-end tests use it as the watched
// application: because the pool is ours, its true numbers (checked out,
// overflow, waiters, checkout time, timeouts) are known exactly and can be
// compared with what the exporter infers from the server side.
//
// With ImplPgxpool each instance uses a real *pgxpool.Pool instead (PgxPool),
// instrumented with the project's pgxpool source, so that the exporter's
// exact pool-side series of that pool can be shown next to the activity
// source's estimate of the same backends.
package poolsim

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// closeTimeout bounds the clean-up work done on behalf of a caller that has
// already finished (ROLLBACK on return, Terminate on close), so that a stalled
// server cannot make Release or Close hang.
const closeTimeout = 5 * time.Second

// ErrPoolTimeout is matched (errors.Is) by the *TimeoutError that Checkout
// returns when no connection became available within the pool timeout.
var ErrPoolTimeout = errors.New("pool checkout timed out")

// ErrPoolClosed is returned by Checkout once the pool has been closed.
var ErrPoolClosed = errors.New("pool is closed")

type poolConn struct {
	conn    *pgx.Conn
	created time.Time
}

// grant is what a waiter receives: a connection, or (c == nil, err == nil) a
// reserved slot for which the waiter opens a new connection, or an error.
type grant struct {
	c   *poolConn
	err error
}

type waiter struct {
	ch chan grant // buffered (1): the granter never blocks
}

// QueuePool is a Go rendition of SQLAlchemy's QueuePool on raw *pgx.Conn:
//   - at most Size connections are kept idle (FIFO, like QueuePool's default
//     use_lifo=False); they are opened lazily;
//   - up to MaxOverflow more are opened on demand; a connection returned
//     while Size connections are already idle is closed instead of kept;
//   - when Size+MaxOverflow connections are checked out, Checkout waits up to
//     Timeout and then fails with *TimeoutError;
//   - at checkout a connection older than Recycle is replaced, and with
//     PrePing a connection that does not answer a ping is replaced;
//   - on return an open transaction is rolled back (reset_on_return).
//
// One deliberate difference: when a connection is discarded (broken, failed
// to open) while callers wait, the freed slot goes to the first waiter at once;
// SQLAlchemy lets that waiter sleep until its timeout before it notices.
type QueuePool struct {
	cfg        PoolConfig
	connConfig *pgx.ConnConfig

	mu      sync.Mutex
	closed  bool
	idle    []*poolConn
	open    int // idle + checked out (including slots being connected)
	waiters []*waiter
	stats   PoolStats // counters only; gauges are computed in Stats
}

// NewQueuePool validates cfg and returns an empty pool; no connection is
// opened until the first Checkout.
func NewQueuePool(cfg PoolConfig) (*QueuePool, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cc, err := pgx.ParseConfig(cfg.DSN)
	if err != nil {
		// pgx redacts passwords only on a best-effort basis (a URL that fails
		// to parse is echoed by net/url), so no detail of the DSN is repeated.
		return nil, errors.New("cannot parse the DSN; check its syntax (details withheld: a DSN may contain a password)")
	}
	if cfg.ApplicationName != "" {
		cc.RuntimeParams["application_name"] = cfg.ApplicationName
	}
	return &QueuePool{cfg: cfg, connConfig: cc}, nil
}

// Settings returns the pool's settings.
func (p *QueuePool) Settings() PoolSettings { return p.cfg.PoolSettings }

// Stats returns a consistent snapshot of the pool's true numbers.
func (p *QueuePool) Stats() PoolStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.stats
	s.Size = p.cfg.Size
	s.MaxOverflow = p.cfg.MaxOverflow
	s.Idle = len(p.idle)
	s.Open = p.open
	s.CheckedOut = p.open - len(p.idle)
	s.Overflow = max(0, p.open-p.cfg.Size)
	s.Pending = len(p.waiters)
	return s
}

// PooledConn is a checked-out connection. Call Release (or Invalidate)
// exactly once; later calls do nothing.
type PooledConn struct {
	pool *QueuePool
	c    *poolConn
	once sync.Once
}

// Conn returns the underlying connection. Do not close it; call Invalidate.
func (pc *PooledConn) Conn() *pgx.Conn { return pc.c.conn }

// PID returns the server process id of the connection's backend.
func (pc *PooledConn) PID() uint32 { return pc.c.conn.PgConn().PID() }

// CreatedAt returns when the connection was opened (the recycle clock).
func (pc *PooledConn) CreatedAt() time.Time { return pc.c.created }

// Release returns the connection to the pool: it goes to a waiter, back to
// the idle queue, or, if Size connections are already idle, it is closed.
func (pc *PooledConn) Release() {
	pc.once.Do(func() { pc.pool.put(pc.c, false) })
}

// Invalidate closes the connection instead of returning it, like
// SQLAlchemy's ConnectionFairy.invalidate(); its slot becomes free.
func (pc *PooledConn) Invalidate() {
	pc.once.Do(func() { pc.pool.put(pc.c, true) })
}

// Checkout returns a connection, opening one if the pool is below its limit,
// or waits up to Timeout for one to be returned. A pool timeout returns a
// *TimeoutError (errors.Is ErrPoolTimeout) and counts in TimeoutsTotal; a
// cancelled ctx returns ctx.Err().
func (p *QueuePool) Checkout(ctx context.Context) (*PooledConn, error) {
	start := time.Now()
	c, err := p.acquire(ctx)
	if err != nil {
		return nil, err
	}
	c, err = p.prepare(ctx, c)
	if err != nil {
		p.freeSlot()
		return nil, err
	}
	p.mu.Lock()
	p.stats.CheckoutsTotal++
	p.stats.CheckoutWaitSecondsTotal += time.Since(start).Seconds()
	p.mu.Unlock()
	return &PooledConn{pool: p, c: c}, nil
}

// acquire returns an idle connection, or nil with a slot reserved (open
// already counts it) for which the caller must open a connection.
func (p *QueuePool) acquire(ctx context.Context) (*poolConn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, ErrPoolClosed
	}
	if len(p.idle) > 0 {
		c := p.idle[0]
		p.idle[0] = nil
		p.idle = p.idle[1:]
		p.mu.Unlock()
		return c, nil
	}
	if p.cfg.MaxOverflow < 0 || p.open < p.cfg.Size+p.cfg.MaxOverflow {
		p.open++
		p.mu.Unlock()
		return nil, nil
	}
	w := &waiter{ch: make(chan grant, 1)}
	p.waiters = append(p.waiters, w)
	p.mu.Unlock()

	timer := time.NewTimer(p.cfg.Timeout)
	defer timer.Stop()
	select {
	case g := <-w.ch:
		return g.c, g.err
	case <-timer.C:
		if p.removeWaiter(w, true) {
			return nil, &TimeoutError{Size: p.cfg.Size, MaxOverflow: p.cfg.MaxOverflow, Timeout: p.cfg.Timeout}
		}
		// A grant raced the timer and won: use it.
		g := <-w.ch
		return g.c, g.err
	case <-ctx.Done():
		if !p.removeWaiter(w, false) {
			// Granted meanwhile: hand it back so it is not lost.
			if g := <-w.ch; g.err == nil {
				if g.c != nil {
					p.put(g.c, false)
				} else {
					p.freeSlot()
				}
			}
		}
		return nil, ctx.Err()
	}
}

// removeWaiter takes w off the queue; false means w was already granted.
func (p *QueuePool) removeWaiter(w *waiter, timedOut bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	i := slices.Index(p.waiters, w)
	if i < 0 {
		return false
	}
	p.waiters = slices.Delete(p.waiters, i, i+1)
	if timedOut {
		p.stats.TimeoutsTotal++
	}
	return true
}

// prepare turns what acquire returned into a usable connection: it opens a
// connection for a reserved slot, and applies recycle and pre-ping to an idle
// one. On error the slot is still reserved; the caller frees it.
func (p *QueuePool) prepare(ctx context.Context, c *poolConn) (*poolConn, error) {
	if c == nil {
		return p.connect(ctx)
	}
	if p.cfg.Recycle > 0 && time.Since(c.created) > p.cfg.Recycle {
		p.count(func(s *PoolStats) { s.RecyclesTotal++ })
		closeConn(c)
		return p.connect(ctx)
	}
	if c.conn.IsClosed() {
		// pgx already knows the connection is gone (an earlier error closed it).
		closeConn(c)
		return p.connect(ctx)
	}
	if p.cfg.PrePing {
		if err := c.conn.Ping(ctx); err != nil {
			closeConn(c)
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			p.count(func(s *PoolStats) { s.PingFailuresTotal++ })
			return p.connect(ctx)
		}
	}
	return c, nil
}

func (p *QueuePool) connect(ctx context.Context) (*poolConn, error) {
	conn, err := pgx.ConnectConfig(ctx, p.connConfig)
	if err != nil {
		p.count(func(s *PoolStats) { s.ConnectErrorsTotal++ })
		return nil, err
	}
	p.count(func(s *PoolStats) { s.ConnectsTotal++ })
	return &poolConn{conn: conn, created: time.Now()}, nil
}

func (p *QueuePool) count(f func(*PoolStats)) {
	p.mu.Lock()
	f(&p.stats)
	p.mu.Unlock()
}

// freeSlot gives up a reserved slot whose connection was discarded. A waiter,
// if any, inherits the slot and opens its own connection.
func (p *QueuePool) freeSlot() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.open--
	if !p.closed && len(p.waiters) > 0 {
		w := p.waiters[0]
		p.waiters = slices.Delete(p.waiters, 0, 1)
		p.open++
		w.ch <- grant{}
	}
}

// put returns a checked-out connection (see Release and Invalidate).
func (p *QueuePool) put(c *poolConn, discard bool) {
	if !discard && !c.conn.IsClosed() && c.conn.PgConn().TxStatus() != 'I' {
		// SQLAlchemy's reset_on_return="rollback": a returned connection never
		// carries an open transaction to its next user.
		ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
		_, err := c.conn.Exec(ctx, "ROLLBACK")
		cancel()
		discard = err != nil
	}
	if discard || c.conn.IsClosed() {
		closeConn(c)
		p.freeSlot()
		return
	}
	p.mu.Lock()
	switch {
	case p.closed:
		p.open--
		p.mu.Unlock()
		closeConn(c)
	case len(p.waiters) > 0:
		w := p.waiters[0]
		p.waiters = slices.Delete(p.waiters, 0, 1)
		p.mu.Unlock()
		w.ch <- grant{c: c}
	case len(p.idle) < p.cfg.Size:
		p.idle = append(p.idle, c)
		p.mu.Unlock()
	default:
		// The queue of idle connections is full: this is the overflow
		// connection that QueuePool closes instead of keeping.
		p.open--
		p.stats.OverflowClosesTotal++
		p.mu.Unlock()
		closeConn(c)
	}
}

// Close closes the idle connections and fails pending and future checkouts
// with ErrPoolClosed. Connections still checked out are closed when released.
func (p *QueuePool) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	idle := p.idle
	p.idle = nil
	p.open -= len(idle)
	waiters := p.waiters
	p.waiters = nil
	p.mu.Unlock()
	for _, w := range waiters {
		w.ch <- grant{err: ErrPoolClosed}
	}
	for _, c := range idle {
		closeConn(c)
	}
}

func closeConn(c *poolConn) {
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	_ = c.conn.Close(ctx) // the connection is being discarded; a failed goodbye changes nothing
}
