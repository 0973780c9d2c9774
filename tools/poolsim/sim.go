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
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dbpool/dbpool_exporter/collector"
)

// Arrival is how request start times are spaced.
type Arrival string

const (
	// ArrivalPoisson spaces requests by exponential gaps (a Poisson process),
	// which gives the bursts that make overflow and waiting visible.
	ArrivalPoisson Arrival = "poisson"
	// ArrivalEven spaces requests exactly 1/rate apart.
	ArrivalEven Arrival = "even"
)

// Config describes one simulated process: Instances independent pools, each
// driven by its own open-loop request generator.
type Config struct {
	// DSN is a PostgreSQL URL or keyword/value string.
	DSN string
	// AppName prefixes application_name: instance i uses "<AppName>-<i>".
	AppName string
	// Instances is the number of independent pools (processes or workers).
	Instances int
	Pool      PoolSettings
	// PoolImpl is the pool every instance uses; "" means ImplQueuePool. With
	// ImplPgxpool, Pool.MaxOverflow must not be -1 and Pool.Timeout must be
	// more than 0 (see PgxPool for how the settings map onto pgxpool).
	PoolImpl PoolImpl
	// Registerer, when set and PoolImpl is ImplPgxpool, receives one
	// collector.PgxpoolCollector that exports every instance's pool as the
	// dbpool_* series of source "pgxpool". Run registers it once the pools
	// exist and leaves it registered after returning, so that the final
	// numbers can still be read. The QueuePool implementation registers
	// nothing.
	Registerer prometheus.Registerer
	// MetricsTarget is the target label of those series: the name under
	// which the exporter watching the same server reports it, so that exact
	// and estimated series of one pool line up. "" means the collector's
	// default, the database name.
	MetricsTarget string

	// Rate is the number of requests per second per instance; 0 sends none.
	Rate    float64
	Arrival Arrival
	// QueryTime is how long a normal request runs SELECT pg_sleep on the
	// checked-out connection.
	QueryTime time.Duration
	// LongQueryShare (0..1) of requests run a LongQueryTime pg_sleep instead.
	LongQueryShare float64
	LongQueryTime  time.Duration
	// IdleInTxShare (0..1) of requests run BEGIN; SELECT 1; then keep the
	// connection idle in transaction for IdleInTxTime before COMMIT.
	IdleInTxShare float64
	IdleInTxTime  time.Duration
	// HoldExtra keeps the connection checked out, idle outside a transaction,
	// after the request's statements: the server sees "idle", the pool sees
	// "checked out".
	HoldExtra time.Duration
	// Duration stops Run after this long; 0 runs until ctx is done.
	Duration time.Duration
	// MaxInflight caps concurrent requests over all instances; a request that
	// would exceed it is dropped (DroppedTotal), so that a stalled server
	// cannot grow memory without bound.
	MaxInflight int
	// Logger receives start and stop messages; nil discards them.
	Logger *slog.Logger
}

// DefaultConfig returns the seed's pool defaults and a light workload.
func DefaultConfig() Config {
	return Config{
		AppName:       "api",
		Instances:     1,
		Pool:          DefaultPoolSettings(),
		PoolImpl:      ImplQueuePool,
		MetricsTarget: "postgres",
		Rate:          10,
		Arrival:       ArrivalPoisson,
		QueryTime:     50 * time.Millisecond,
		LongQueryTime: 40 * time.Second,
		IdleInTxTime:  30 * time.Second,
		MaxInflight:   1000,
	}
}

// Validate reports every invalid setting at once.
func (c Config) Validate() error {
	var errs []error
	if c.DSN == "" {
		errs = append(errs, errors.New("a DSN is required"))
	} else if _, err := pgx.ParseConfig(c.DSN); err != nil {
		errs = append(errs, errors.New("cannot parse the DSN; check its syntax (details withheld: a DSN may contain a password)"))
	}
	if c.Instances < 1 {
		errs = append(errs, fmt.Errorf("instances must be at least 1, got %d", c.Instances))
	}
	if err := c.Pool.Validate(); err != nil {
		errs = append(errs, err)
	}
	switch c.PoolImpl {
	case "", ImplQueuePool:
	case ImplPgxpool:
		if err := c.Pool.validatePgxpool(); err != nil {
			errs = append(errs, err)
		}
	default:
		errs = append(errs, fmt.Errorf("pool implementation must be %q or %q, got %q", ImplQueuePool, ImplPgxpool, c.PoolImpl))
	}
	if c.Rate < 0 {
		errs = append(errs, fmt.Errorf("rate must not be negative, got %g", c.Rate))
	}
	if c.Arrival != ArrivalPoisson && c.Arrival != ArrivalEven {
		errs = append(errs, fmt.Errorf("arrival must be %q or %q, got %q", ArrivalPoisson, ArrivalEven, c.Arrival))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"query time", c.QueryTime}, {"long query time", c.LongQueryTime}, {"idle in transaction time", c.IdleInTxTime}, {"hold extra", c.HoldExtra}, {"duration", c.Duration}} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%s must not be negative, got %s", d.name, d.v))
		}
	}
	for _, s := range []struct {
		name string
		v    float64
	}{{"long query share", c.LongQueryShare}, {"idle in transaction share", c.IdleInTxShare}} {
		if s.v < 0 || s.v > 1 {
			errs = append(errs, fmt.Errorf("%s must be between 0 and 1, got %g", s.name, s.v))
		}
	}
	if c.LongQueryShare+c.IdleInTxShare > 1 {
		errs = append(errs, fmt.Errorf("long query share + idle in transaction share must not exceed 1, got %g", c.LongQueryShare+c.IdleInTxShare))
	}
	if c.MaxInflight < 1 {
		errs = append(errs, fmt.Errorf("max inflight must be at least 1, got %d", c.MaxInflight))
	}
	return errors.Join(errs...)
}

// ApplicationName returns the application_name of instance i.
func (c Config) ApplicationName(i int) string { return c.AppName + "-" + strconv.Itoa(i) }

// MetricsPool returns the pool label of instance i in the pgxpool series:
// AppName when there is one instance, so that it is the pool the exporter's
// activity source reports for the same backends, and otherwise
// ApplicationName(i), one series per instance (the activity source groups
// all instances into one pool; the collector has no instance label).
func (c Config) MetricsPool(i int) string {
	if c.Instances == 1 {
		return c.AppName
	}
	return c.ApplicationName(i)
}

// impl returns the pool implementation, "" read as ImplQueuePool.
func (c Config) impl() PoolImpl {
	if c.PoolImpl == "" {
		return ImplQueuePool
	}
	return c.PoolImpl
}

// WorkloadStats are one instance's pool numbers plus its request counters.
type WorkloadStats struct {
	PoolStats
	// RequestsTotal counts requests started (not dropped).
	RequestsTotal uint64 `json:"requests_total"`
	// ErrorsTotal counts requests that failed for a reason other than a pool
	// timeout (those are TimeoutsTotal) or shutdown.
	ErrorsTotal uint64 `json:"errors_total"`
	// DroppedTotal counts requests not started because MaxInflight requests
	// were already running.
	DroppedTotal     uint64 `json:"dropped_total"`
	LongQueriesTotal uint64 `json:"long_queries_total"`
	IdleInTxTotal    uint64 `json:"idle_in_transaction_total"`
}

// Add returns the sum of two WorkloadStats.
func (s WorkloadStats) Add(o WorkloadStats) WorkloadStats {
	return WorkloadStats{
		PoolStats:        s.PoolStats.Add(o.PoolStats),
		RequestsTotal:    s.RequestsTotal + o.RequestsTotal,
		ErrorsTotal:      s.ErrorsTotal + o.ErrorsTotal,
		DroppedTotal:     s.DroppedTotal + o.DroppedTotal,
		LongQueriesTotal: s.LongQueriesTotal + o.LongQueriesTotal,
		IdleInTxTotal:    s.IdleInTxTotal + o.IdleInTxTotal,
	}
}

// InstanceStats are the numbers of one instance.
type InstanceStats struct {
	Instance        int    `json:"instance"`
	ApplicationName string `json:"application_name"`
	WorkloadStats
}

// SettingsStats repeats the pool settings in the units of the seed's env.
type SettingsStats struct {
	PoolSize       int     `json:"pool_size"`
	MaxOverflow    int     `json:"max_overflow"`
	TimeoutSeconds float64 `json:"timeout_seconds"`
	RecycleSeconds float64 `json:"recycle_seconds"`
	PrePing        bool    `json:"pre_ping"`
}

// Stats is a snapshot of a Sim: every instance and their sum.
type Stats struct {
	Instances int `json:"instances"`
	// PoolImpl is "queuepool" or "pgxpool".
	PoolImpl    PoolImpl        `json:"pool_impl"`
	Settings    SettingsStats   `json:"settings"`
	Inflight    int             `json:"inflight"`
	MaxInflight int             `json:"max_inflight"`
	Total       WorkloadStats   `json:"total"`
	PerInstance []InstanceStats `json:"per_instance"`
	// LastError is the most recent request error (not a pool timeout).
	// pgx errors name user and database, never the password.
	LastError string `json:"last_error,omitempty"`
}

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
	var pc *collector.PgxpoolCollector
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
		opts := collector.PgxpoolOptions{Target: s.cfg.MetricsTarget, Pool: s.cfg.MetricsPool(i), Settings: &set}
		if pc == nil {
			pc = collector.NewPgxpoolCollector(p.Pool(), p.Tracer(), opts)
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

// idleInTransaction is the seed's "Bad: potential idle-in-transaction" code:
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

// Stats returns the current numbers; before Run it has no instances.
func (s *Sim) Stats() Stats {
	s.mu.Lock()
	insts := s.instances
	s.mu.Unlock()
	st := Stats{
		Instances: s.cfg.Instances,
		PoolImpl:  s.cfg.impl(),
		Settings: SettingsStats{
			PoolSize:       s.cfg.Pool.Size,
			MaxOverflow:    s.cfg.Pool.MaxOverflow,
			TimeoutSeconds: s.cfg.Pool.Timeout.Seconds(),
			RecycleSeconds: s.cfg.Pool.Recycle.Seconds(),
			PrePing:        s.cfg.Pool.PrePing,
		},
		Inflight:    int(s.inflight.Load()),
		MaxInflight: s.cfg.MaxInflight,
		PerInstance: make([]InstanceStats, 0, len(insts)),
	}
	for _, in := range insts {
		w := WorkloadStats{
			PoolStats:        in.pool.Stats(),
			RequestsTotal:    in.requests.Load(),
			ErrorsTotal:      in.errors.Load(),
			DroppedTotal:     in.dropped.Load(),
			LongQueriesTotal: in.long.Load(),
			IdleInTxTotal:    in.idleTx.Load(),
		}
		st.PerInstance = append(st.PerInstance, InstanceStats{Instance: in.idx, ApplicationName: s.cfg.ApplicationName(in.idx), WorkloadStats: w})
		st.Total = st.Total.Add(w)
	}
	if m := s.lastErr.Load(); m != nil {
		st.LastError = *m
	}
	return st
}
