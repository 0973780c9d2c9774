// Package health keeps a bounded history of every pool the exporter watches and answers the
// four questions a pooled service asks about its pool (check_pool_status, get_pool_health,
// get_active_connections, optimize_pool_settings) for each of them: as a JSON API under /api/v1/, an HTML status page
// at /pools, and the dbpool_recommended_* metrics. The rules themselves live in
// internal/advice; this package feeds them from collector samples and serves their answers.
//
// A Manager is fed by the exporter's observer (every Prometheus scrape) and by a light
// background sampler (RunSampler), so that the history has points even when nobody scrapes.
package health

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dbpool/dbpool_exporter/collector"
	"github.com/dbpool/dbpool_exporter/internal/advice"
	"github.com/dbpool/dbpool_exporter/internal/metrics"
)

// Defaults of a Manager.
const (
	DefaultWindow = advice.DefaultWindow
	// DefaultMaxPools bounds how many pools a Manager tracks at once. Configured pools and the
	// capped application groups of each target stay far below it; it only matters when
	// application names churn, each new name being a new pool for a window.
	DefaultMaxPools = 500
	// TypicalScrapeInterval is Prometheus' default scrape_interval. When the sampler is off,
	// scrapes alone feed the history; StaleAfter's default allows two of them.
	TypicalScrapeInterval = time.Minute
	// historyPoints is how many coalesced points one pool's history holds at most: the
	// window is cut into this many slots, so memory does not grow with the scrape rate.
	historyPoints = 720
)

// Options configure a Manager. Zero values mean the defaults.
type Options struct {
	// Window is how far back the history reaches (and after how long without a sample a pool
	// is forgotten).
	Window time.Duration
	// MinSpacing is the shortest distance between two points of a pool's history; samples
	// closer together are coalesced, keeping peaks. Default: Window/720, at least 10 ms.
	MinSpacing time.Duration
	// MinHistory is how much history a configured pool needs before it gets the
	// dbpool_recommended_* series, so that a restart does not publish advice from one sample.
	// Default: a tenth of the window, at most 5 minutes.
	MinHistory time.Duration
	// MaxPools bounds the pools tracked at once; default DefaultMaxPools.
	MaxPools int
	// StaleAfter is how long after a pool was last seen its dbpool_recommended_* series
	// disappear, so that a pool removed by a reload, or behind a target that is down, stops
	// publishing advice. Default: twice the longer of the sampler's interval (RunSampler) and
	// a typical Prometheus scrape interval (TypicalScrapeInterval): a pool seen every sample
	// never goes stale between two of them, even when the Prometheus scrape that reads the
	// metric runs before the observation it triggers.
	StaleAfter time.Duration
	// Thresholds default to advice.DefaultThresholds.
	Thresholds *advice.Thresholds
	// Now is the clock; default time.Now.
	Now func() time.Time
}

type key struct{ target, pool string }

type poolState struct {
	key        key
	hist       *advice.History
	pool       advice.Pool
	configured bool
	capacity   int // instances x (pool_size + max_overflow); 0 when unknown
	lastSeen   time.Time
	// leaks are the latest sample's leaked connections: what is held now, no history.
	leaks *metrics.LeakStats
}

// serverPools is what the configured pools of one target may open together.
type serverPools struct{ instances, capacity int }

// Manager keeps one advice.History per (target, pool) and analyzes them on demand. It is
// safe for concurrent use; it is also a prometheus.Collector of the recommendations.
type Manager struct {
	window, spacing, minHistory time.Duration
	staleAfter                  time.Duration // 0: the default, see Options.StaleAfter
	maxPools                    int
	th                          advice.Thresholds
	now                         func() time.Time

	mu            sync.Mutex
	pools         map[key]*poolState
	servers       map[string]collector.ServerStats
	onServer      map[string]serverPools
	lastObserved  time.Time
	firstObserved time.Time

	// predictions remembers the sizing model's runs: every report of a pool whose load has
	// not changed since the last one reuses them.
	predictions advice.Predictions

	sampling atomic.Bool
	// sampleInterval is the interval of the last RunSampler, for StaleAfter's default.
	sampleInterval atomic.Int64
}

// NewManager returns an empty Manager.
func NewManager(o Options) *Manager {
	if o.Window <= 0 {
		o.Window = DefaultWindow
	}
	if o.MinSpacing <= 0 {
		o.MinSpacing = max(o.Window/historyPoints, 10*time.Millisecond)
	}
	if o.MinHistory <= 0 {
		o.MinHistory = min(o.Window/10, 5*time.Minute)
	}
	if o.MaxPools <= 0 {
		o.MaxPools = DefaultMaxPools
	}
	th := advice.DefaultThresholds()
	if o.Thresholds != nil {
		th = *o.Thresholds
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Manager{
		window:     o.Window,
		spacing:    o.MinSpacing,
		minHistory: o.MinHistory,
		staleAfter: o.StaleAfter,
		maxPools:   o.MaxPools,
		th:         th,
		now:        o.Now,
		pools:      map[key]*poolState{},
		servers:    map[string]collector.ServerStats{},
		onServer:   map[string]serverPools{},
	}
}

// Window is how far back the history reaches.
func (m *Manager) Window() time.Duration { return m.window }

// StaleAfter is how long after a pool was last seen its recommendation metrics disappear
// (see Options.StaleAfter).
func (m *Manager) StaleAfter() time.Duration {
	if m.staleAfter > 0 {
		return m.staleAfter
	}
	return 2 * max(time.Duration(m.sampleInterval.Load()), TypicalScrapeInterval)
}

// Observe records the pool samples and server limits of one scrape. It is the exporter's
// observer (collector.NewExporter) and is cheap: it runs inside every Prometheus scrape.
func (m *Manager) Observe(r collector.Result) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	m.lastObserved = now
	if m.firstObserved.IsZero() {
		m.firstObserved = now
	}
	for _, s := range r.Servers {
		m.servers[s.Target] = s
	}
	// The configured pools of a target appear in every successful sample of it, so one
	// result gives all the pools sharing that server's connections.
	pools := preferExact(r.Pools)
	onServer := map[string]serverPools{}
	for _, o := range pools {
		p := o.stats
		if p.Configured && !p.Auxiliary {
			f := onServer[p.Target]
			f.instances += max(p.Instances, 1)
			f.capacity += p.Capacity()
			onServer[p.Target] = f
		}
	}
	for t, f := range onServer {
		m.onServer[t] = f
	}
	for _, o := range pools {
		p := o.stats
		if p.Auxiliary {
			continue // the pooler's own pool (PgBouncer's auth_user): nothing to advise
		}
		k := key{p.Target, p.Pool}
		st := m.pools[k]
		if st != nil && st.pool.Source == metrics.SourceApp && p.Source == metrics.SourceActivity &&
			now.Sub(st.lastSeen) < m.StaleAfter() {
			// The app endpoint missed this scrape: keep the history exact rather than mix
			// in the estimate, until the app has been silent for long.
			continue
		}
		if st == nil {
			if len(m.pools) >= m.maxPools && !m.makeRoom(now, p.Configured) {
				continue
			}
			st = &poolState{key: k, hist: advice.NewHistory(m.window, m.spacing)}
			m.pools[k] = st
		}
		st.pool = PoolFromStats(p)
		st.configured = p.Configured
		st.capacity = p.Capacity()
		st.lastSeen = now
		st.leaks = cloneLeaks(p.Leaks)
		sample := o.sample(now)
		if p.Configured {
			sample.PoolSize, sample.Capacity = max(p.Instances, 1)*p.Settings.PoolSize, st.capacity
		}
		st.hist.Add(sample)
	}
	m.forget(now)
}

// makeRoom drops the least recently seen pool, unconfigured ones first, but never one seen in
// the current observation and never a configured one for an unconfigured newcomer.
func (m *Manager) makeRoom(now time.Time, forConfigured bool) bool {
	var victim *poolState
	for _, st := range m.pools {
		if !st.lastSeen.Before(now) || (st.configured && !forConfigured) {
			continue
		}
		if victim == nil || (victim.configured && !st.configured) ||
			(victim.configured == st.configured && st.lastSeen.Before(victim.lastSeen)) {
			victim = st
		}
	}
	if victim == nil {
		return false
	}
	delete(m.pools, victim.key)
	return true
}

// forget drops pools not seen for a whole window: their history holds nothing any more.
func (m *Manager) forget(now time.Time) {
	cutoff := now.Add(-m.window)
	for k, st := range m.pools {
		if st.lastSeen.Before(cutoff) {
			delete(m.pools, k)
		}
	}
}

// sinceObserved is the time since the last observation (a long time when there was none).
func (m *Manager) sinceObserved() time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.lastObserved.IsZero() {
		return math.MaxInt64
	}
	return m.now().Sub(m.lastObserved)
}

// RunSampler scrapes every interval until ctx ends, so that the history has points when
// Prometheus scrapes rarely or not at all. scrape should end by its context's deadline
// (timeout) and feed the Manager, normally through the exporter's observer. A tick is skipped
// when a scrape fed the Manager less than half an interval ago: the sampler only fills gaps.
// It never runs two scrapes at once (a slow scrape delays the next tick), and a second
// RunSampler on the same Manager returns at once. It returns when ctx ends, after the
// scrape in progress, if any.
func (m *Manager) RunSampler(ctx context.Context, interval, timeout time.Duration, scrape func(context.Context)) {
	if interval <= 0 || !m.sampling.CompareAndSwap(false, true) {
		return
	}
	defer m.sampling.Store(false)
	m.sampleInterval.Store(int64(interval))
	if timeout <= 0 {
		timeout = interval
	}
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		if m.sinceObserved() >= interval/2 {
			c, cancel := context.WithTimeout(ctx, timeout)
			scrape(c)
			cancel()
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

// snapshot is what a report needs from a pool's state, copied under the lock.
type snapshot struct {
	poolState
	server *advice.Server
}

func (m *Manager) snapshots(match func(key) bool) []snapshot {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []snapshot
	for k, st := range m.pools {
		if match != nil && !match(k) {
			continue
		}
		s := snapshot{poolState: *st}
		// Only a configured pool has settings to hold against the server's budget; the
		// budget is shared by the configured pools of the same target.
		if srv, ok := m.servers[k.target]; ok && st.configured && srv.MaxConnections > 0 {
			f := m.onServer[k.target]
			s.server = &advice.Server{
				MaxConnections:      srv.MaxConnections,
				ReservedConnections: srv.ReservedConnections,
				TotalInstances:      f.instances,
				TotalCapacity:       f.capacity,
			}
		}
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b snapshot) int {
		return cmp.Or(strings.Compare(a.key.target, b.key.target), strings.Compare(a.key.pool, b.key.pool))
	})
	return out
}

// FirstObserved is the time of the first observation; zero before it.
func (m *Manager) FirstObserved() time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.firstObserved
}

// Reports analyzes every tracked pool, sorted by target and pool.
func (m *Manager) Reports() []Report { return m.ReportsAt(m.now()) }

// ReportsAt is Reports over the window that ends at now. A one-shot run that sampled for
// exactly one window passes FirstObserved + window, so that its first sample opens the
// window and the history counts as covering all of it.
func (m *Manager) ReportsAt(now time.Time) []Report {
	snaps := m.snapshots(nil)
	out := make([]Report, 0, len(snaps))
	for i := range snaps {
		out = append(out, m.analyze(&snaps[i], now))
	}
	return out
}

// NotFoundError is returned by Find for a pool the Manager does not track.
type NotFoundError struct{ Target, Pool string }

func (e *NotFoundError) Error() string {
	if e.Target != "" {
		return fmt.Sprintf("unknown pool %q on target %q", e.Pool, e.Target)
	}
	return fmt.Sprintf("unknown pool %q", e.Pool)
}

// AmbiguousError is returned by Find when no target was given and several targets have a
// pool of that name.
type AmbiguousError struct {
	Pool    string
	Targets []string
}

func (e *AmbiguousError) Error() string {
	return fmt.Sprintf("pool %q exists on several targets (%s): add target=", e.Pool, strings.Join(e.Targets, ", "))
}

// Find analyzes one pool. target may be empty when the pool name is unique.
func (m *Manager) Find(target, pool string) (Report, error) {
	snaps := m.snapshots(func(k key) bool { return k.pool == pool && (target == "" || k.target == target) })
	switch len(snaps) {
	case 0:
		return Report{}, &NotFoundError{Target: target, Pool: pool}
	case 1:
		return m.analyze(&snaps[0], m.now()), nil
	}
	targets := make([]string, len(snaps))
	for i, s := range snaps {
		targets[i] = s.key.target
	}
	return Report{}, &AmbiguousError{Pool: pool, Targets: targets}
}
