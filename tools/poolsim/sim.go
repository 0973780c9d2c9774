package poolsim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dbpool/dbpool_exporter/pgxpoolcollector"
)

// simPool is what a request needs from an instance's pool, whichever the
// implementation.
type simPool interface {
	// acquireConn checks out a connection; release returns it. A pool
	// timeout matches ErrPoolTimeout.
	acquireConn(ctx context.Context) (conn *pgx.Conn, release func(), err error)
	Stats() PoolStats
	Close()
}

func (p *QueuePool) acquireConn(ctx context.Context) (*pgx.Conn, func(), error) {
	pc, err := p.Checkout(ctx)
	if err != nil {
		return nil, nil, err
	}
	return pc.Conn(), pc.Release, nil
}

func (p *PgxPool) acquireConn(ctx context.Context) (*pgx.Conn, func(), error) {
	c, err := p.Checkout(ctx)
	if err != nil {
		return nil, nil, err
	}
	return c.Conn(), c.Release, nil
}

type instance struct {
	idx      int
	pool     simPool
	requests atomic.Uint64
	errors   atomic.Uint64
	dropped  atomic.Uint64
	long     atomic.Uint64
	idleTx   atomic.Uint64
}

// Sim is a simulated process. Create it with New and start it with Run.
type Sim struct {
	cfg      Config
	log      *slog.Logger
	sem      chan struct{}
	started  atomic.Bool
	lastErr  atomic.Pointer[string]
	inflight atomic.Int64

	mu        sync.Mutex
	instances []*instance
}

// New returns a Sim for cfg; Run validates cfg.
func New(cfg Config) *Sim {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Sim{cfg: cfg, log: log}
}

// Config returns the Sim's configuration.
func (s *Sim) Config() Config { return s.cfg }

// Run opens the pools (lazily: no connection before the first request),
// generates requests until ctx is done or Duration has passed, then cancels
// requests still running and closes every connection. A normal stop returns
// nil; an invalid Config returns its validation errors.
func (s *Sim) Run(ctx context.Context) error {
	if err := s.cfg.Validate(); err != nil {
		return err
	}
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("poolsim: Run called twice")
	}
	insts, err := s.newPools()
	if err != nil {
		return err
	}
	s.sem = make(chan struct{}, s.cfg.MaxInflight)
	s.mu.Lock()
	s.instances = insts
	s.mu.Unlock()

	if s.cfg.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.cfg.Duration)
		defer cancel()
	}
	s.log.Info("poolsim started", "pool_impl", s.cfg.impl(), "instances", s.cfg.Instances, "application_names", s.cfg.AppName+"-0.."+strconv.Itoa(s.cfg.Instances-1),
		"pool_size", s.cfg.Pool.Size, "max_overflow", s.cfg.Pool.MaxOverflow, "rate_per_instance", s.cfg.Rate)

	var gens, reqs sync.WaitGroup
	for _, in := range insts {
		gens.Go(func() { s.generate(ctx, in, &reqs) })
	}
	gens.Wait()
	// ctx is done: requests still running see it, pgx cancels their queries.
	reqs.Wait()
	for _, in := range insts {
		in.pool.Close()
	}
	s.log.Info("poolsim stopped, all connections closed")
	return nil
}

// newPools creates every instance's pool (no connection is opened yet) and,
// for pgxpool, registers their collector. On error nothing is left open.
func (s *Sim) newPools() (insts []*instance, err error) {
	defer func() {
		if err != nil {
			for _, in := range insts {
				in.pool.Close()
			}
			insts = nil
		}
	}()
	var pc *pgxpoolcollector.Collector
	for i := range s.cfg.Instances {
		cfg := PoolConfig{DSN: s.cfg.DSN, ApplicationName: s.cfg.ApplicationName(i), PoolSettings: s.cfg.Pool}
		if s.cfg.impl() == ImplQueuePool {
			p, err := NewQueuePool(cfg)
			if err != nil {
				return insts, err
			}
			insts = append(insts, &instance{idx: i, pool: p})
			continue
		}
		p, err := NewPgxPool(cfg)
		if err != nil {
			return insts, err
		}
		insts = append(insts, &instance{idx: i, pool: p})
		set := p.CollectorSettings()
		opts := pgxpoolcollector.Options{Target: s.cfg.MetricsTarget, Pool: s.cfg.MetricsPool(i), Settings: &set}
		if pc == nil {
			pc = pgxpoolcollector.New(p.Pool(), p.Tracer(), opts)
		} else if err := pc.Add(p.Pool(), p.Tracer(), opts); err != nil {
			return insts, err
		}
	}
	if pc != nil && s.cfg.Registerer != nil {
		if err := s.cfg.Registerer.Register(pc); err != nil {
			return insts, fmt.Errorf("registering the pgxpool collector: %w", err)
		}
	}
	return insts, nil
}

// generate starts requests for one instance at the configured rate. It is
// open-loop: a slow server does not slow arrivals, which is what makes a pool
// run out of connections.
func (s *Sim) generate(ctx context.Context, in *instance, reqs *sync.WaitGroup) {
	if s.cfg.Rate == 0 {
		<-ctx.Done()
		return
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	next := time.Now()
	for {
		gap := 1 / s.cfg.Rate
		if s.cfg.Arrival == ArrivalPoisson {
			gap = rand.ExpFloat64() / s.cfg.Rate
		}
		next = next.Add(time.Duration(gap * float64(time.Second)))
		now := time.Now()
		if now.Sub(next) > time.Second {
			// Far behind (the process was paused): do not fire a burst to catch up.
			next = now
		}
		if d := next.Sub(now); d > 0 {
			timer.Reset(d)
			select {
			case <-ctx.Done():
				return
			case <-timer.C:
			}
		} else if ctx.Err() != nil {
			return
		}
		select {
		case s.sem <- struct{}{}:
		default:
			in.dropped.Add(1)
			continue
		}
		in.requests.Add(1)
		s.inflight.Add(1)
		reqs.Go(func() {
			defer func() {
				s.inflight.Add(-1)
				<-s.sem
			}()
			s.request(ctx, in)
		})
	}
}

// request is one simulated web request: check out, run statements, hold,
// return.
func (s *Sim) request(ctx context.Context, in *instance) {
	conn, release, err := in.pool.acquireConn(ctx)
	if err != nil {
		if !errors.Is(err, ErrPoolTimeout) && ctx.Err() == nil {
			s.fail(in, err)
		}
		return
	}
	defer release()
	u := rand.Float64()
	switch {
	case u < s.cfg.LongQueryShare:
		in.long.Add(1)
		err = sleepQuery(ctx, conn, s.cfg.LongQueryTime)
	case u < s.cfg.LongQueryShare+s.cfg.IdleInTxShare:
		in.idleTx.Add(1)
		err = idleInTransaction(ctx, conn, s.cfg.IdleInTxTime)
	default:
		err = sleepQuery(ctx, conn, s.cfg.QueryTime)
	}
	if err != nil {
		if ctx.Err() == nil {
			s.fail(in, err)
		}
		return
	}
	sleep(ctx, s.cfg.HoldExtra)
}

func (s *Sim) fail(in *instance, err error) {
	in.errors.Add(1)
	msg := err.Error()
	s.lastErr.Store(&msg)
}

func sleepQuery(ctx context.Context, conn *pgx.Conn, d time.Duration) error {
	_, err := conn.Exec(ctx, "SELECT pg_sleep($1)", d.Seconds())
	return err
}

// idleInTransaction is the classic idle-in-transaction bug:
// a transaction is opened and the connection then sits idle while holding it.
// If ctx ends first, Release rolls the transaction back.
func idleInTransaction(ctx context.Context, conn *pgx.Conn, d time.Duration) error {
	if _, err := conn.Exec(ctx, "BEGIN"); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, "SELECT 1"); err != nil {
		return err
	}
	if !sleep(ctx, d) {
		return ctx.Err()
	}
	_, err := conn.Exec(ctx, "COMMIT")
	return err
}

// sleep waits d or until ctx is done; it reports whether d elapsed.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
