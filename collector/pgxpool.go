package collector

import (
	"errors"
	"fmt"
	"sync"

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
