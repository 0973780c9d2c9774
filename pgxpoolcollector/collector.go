// Package pgxpoolcollector exports the *pgxpool.Pool of a Go service as the dbpool_* series
// that dbpool_exporter's alerts and dashboard understand (source "pgxpool"): connections by
// state, the pool's configuration, pending checkouts, histograms of checkout, hold and
// connect times, and the checkouts that failed, by reason (an exhausted pool, a failed
// connect, ...): what the exporter's sizing model needs to size the pool.
//
// A service adds three lines where it creates its pool:
//
//	tracer := pgxpoolcollector.InstrumentConfig(cfg) // before pgxpool.NewWithConfig
//	pool, err := pgxpool.NewWithConfig(ctx, cfg)
//	prometheus.MustRegister(pgxpoolcollector.New(pool, tracer, pgxpoolcollector.Options{Pool: "api"}))
//
// and serves its registry as usual (promhttp). Name the target as the dbpool_exporter
// watching the same server names it (Options.Target), so that the service's series line up
// with the server's view of the same pool.
package pgxpoolcollector

import (
	"errors"
	"fmt"
	"sync"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dbpool/dbpool_exporter/internal/metrics"
	"github.com/dbpool/dbpool_exporter/poolcfg"
)

// Options name a pool in the dbpool_* series and describe its configuration.
type Options struct {
	// Target is the value of the target label: the database server, named as the
	// dbpool_exporter watching that server names it, so that the service's pool series line
	// up with the server's. Empty means the pool's database name ("default" if that is
	// empty too).
	Target string
	// Pool is the value of the pool label, e.g. the service's name. Empty means "default".
	Pool string
	// Settings, if set, is reported as the pool's configuration as is. Nil means
	// SettingsOf of the pool's own configuration, which has no acquire timeout: set
	// Timeout on a copy to report the deadline the service puts on its acquires.
	Settings *poolcfg.Settings
}

// SettingsOf maps a pgxpool configuration onto the pool settings of the tuning guide:
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
func SettingsOf(cfg *pgxpool.Config) poolcfg.Settings {
	return poolcfg.Settings{
		PoolSize: int(cfg.MaxConns),
		Recycle:  cfg.MaxConnLifetime,
		PrePing:  true,
	}
}

// Collector exports *pgxpool.Pool instances of a Go process as the dbpool_* series
// (source "pgxpool"). Every Collect takes one fresh pool.Stat() per pool plus the pool's
// AcquireTracer counters.
//
// With an AcquireTracer the collector reports dbpool_pending_checkouts, histograms of
// checkout, hold (dbpool_connection_use_duration_seconds) and connect
// (dbpool_connection_create_duration_seconds) times, dbpool_checkout_failures_total by reason
// and dbpool_checkout_timeouts_total. Without one it falls back to what
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
type Collector struct {
	mu    sync.RWMutex
	pools []watched
}

// watched is one pool a Collector exports.
type watched struct {
	pool     *pgxpool.Pool
	tracer   *AcquireTracer
	target   string
	name     string
	settings poolcfg.Settings
}

// New returns a collector for pool. tracer is the pool's AcquireTracer from
// InstrumentConfig; when nil, the collector uses the AcquireTracer installed as the pool's
// ConnConfig.Tracer if there is one, and otherwise falls back to pool.Stat() alone (see
// Collector). A tracer that the pool does not call (installed after the pool was created,
// or on another pool's config) sees no acquire and reports zeros. It panics if pool is nil.
func New(pool *pgxpool.Pool, tracer *AcquireTracer, opts Options) *Collector {
	c := &Collector{}
	if err := c.Add(pool, tracer, opts); err != nil {
		panic(err)
	}
	return c
}

// Add exports one more pool through this collector, with the same rules as New. It fails if
// pool is nil, if the target and pool labels are already taken, if tracer already belongs to
// another pool of this collector, or if opts.Settings allows no connection at all.
func (c *Collector) Add(pool *pgxpool.Pool, tracer *AcquireTracer, opts Options) error {
	if pool == nil {
		return errors.New("pgxpool collector: nil pool")
	}
	cfg := pool.Config()
	if tracer == nil {
		tracer, _ = cfg.ConnConfig.Tracer.(*AcquireTracer)
	}
	w := watched{pool: pool, tracer: tracer, target: opts.Target, name: opts.Pool}
	if w.target == "" {
		w.target = cfg.ConnConfig.Database
	}
	if w.target == "" {
		w.target = "default"
	}
	if w.name == "" {
		w.name = "default"
	}
	if opts.Settings != nil {
		w.settings = *opts.Settings
		if w.settings.Capacity() < 1 {
			return fmt.Errorf("pgxpool collector: pool %q of target %q: settings allow %d connections", w.name, w.target, w.settings.Capacity())
		}
	} else {
		w.settings = SettingsOf(cfg)
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	for _, o := range c.pools {
		if o.target == w.target && o.name == w.name {
			return fmt.Errorf("pgxpool collector: pool %q of target %q added twice", w.name, w.target)
		}
		if tracer != nil && o.tracer == tracer {
			return fmt.Errorf("pgxpool collector: pool %q of target %q: its tracer already traces pool %q", w.name, w.target, o.name)
		}
	}
	c.pools = append(c.pools, w)
	return nil
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	metrics.Describe(ch, metrics.PoolGroup)
}

// Collect implements prometheus.Collector: one sample of every pool, in the order they
// were added.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	c.mu.RLock()
	var ms []prometheus.Metric
	for i := range c.pools {
		p := c.pools[i].sample()
		ms = metrics.AppendPool(ms, &p)
	}
	c.mu.RUnlock()
	for _, m := range ms {
		ch <- m
	}
}

func (w *watched) sample() metrics.PoolStats {
	st := w.pool.Stat()
	open := int(st.TotalConns())
	p := metrics.PoolStats{
		Target:     w.target,
		Pool:       w.name,
		Source:     metrics.SourcePgxpool,
		Configured: true,
		Settings:   w.settings,
		Instances:  1,
		Open:       open,
		InUse:      int(st.AcquiredConns()),
		Overflow:   max(0, open-w.settings.PoolSize),
		States: map[string]int{
			metrics.StateAcquired:     int(st.AcquiredConns()),
			metrics.StateIdle:         int(st.IdleConns()),
			metrics.StateConstructing: int(st.ConstructingConns()),
		},
	}
	if w.tracer != nil {
		pending, cs, use, create := w.tracer.snapshot()
		p.Pending, p.Checkouts, p.UseTime, p.CreateTime = &pending, &cs, &use, &create
		return p
	}
	timeouts := uint64(st.CanceledAcquireCount())
	p.Checkouts = &metrics.CheckoutStats{
		Count:           uint64(st.AcquireCount()),
		DurationSeconds: st.AcquireDuration().Seconds(),
		Timeouts:        &timeouts,
	}
	return p
}
