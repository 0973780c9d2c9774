package collector

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dbpool/dbpool_exporter/internal/metrics"
)

// Exporter scrapes its targets: all of them concurrently (Scrape, for /metrics), or one by
// name (ScrapeTarget, for /probe?target=NAME). It is not a prometheus.Collector itself,
// because a scrape needs the request's deadline: ScrapeCollector and TargetCollector bind one.
//
// It also decides which targets hold connections (exporter_connections.go). A target is
// connected from its first scrape until it is released: after ExporterOptions.IdleTimeout
// without a scrape, or, when a scrape of one target connects it beyond
// ExporterOptions.MaxConnectedTargets, as the least recently used. A released target
// reconnects on its next scrape.
type Exporter struct {
	opts    ExporterOptions
	entries []*entry
	byName  map[string]*entry
	now     func() time.Time

	mu     sync.Mutex // guards the entries' mutable fields and closed
	closed bool
	stop   chan struct{}
	bg     sync.WaitGroup // the idle sweeper
}

// ExporterOptions are the plain, validated settings of an Exporter.
type ExporterOptions struct {
	// Observer, if not nil, receives every scrape's result (the pool history of
	// internal/health keeps the pool samples).
	Observer func(Result)
	// IdleTimeout releases the connections of a target that has not been scraped for this
	// long; 0 keeps them.
	IdleTimeout time.Duration
	// MaxConnectedTargets caps the connected targets when a scrape of one target connects
	// it: the least recently used other target is released first. 0 is no cap. A scrape of
	// all targets (Scrape) needs them all and is not capped.
	MaxConnectedTargets int
	// Fleet, if not nil, counts the releases (dbpool_exporter_target_disconnects_total).
	Fleet  *FleetMetrics
	Logger *slog.Logger
}

// entry is one target and its connection state.
type entry struct {
	target    *Target
	connected bool
	lastUsed  time.Time
	busy      int // scrapes in progress; a busy target is never released
}

// ErrUnknownTarget is returned (wrapped) by ScrapeTarget for a name that is not configured.
var ErrUnknownTarget = errors.New("unknown target")

// errClosed is returned by ScrapeTarget after Close (a reload replaced the exporter).
var errClosed = errors.New("the exporter is closed (configuration reloaded): retry")

// NewExporter returns an exporter over targets, whose names must be unique. With an
// IdleTimeout it runs a sweeper until Close.
func NewExporter(targets []*Target, opts ExporterOptions) *Exporter {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	e := &Exporter{opts: opts, byName: map[string]*entry{}, now: time.Now, stop: make(chan struct{})}
	for _, t := range targets {
		en := &entry{target: t}
		e.entries = append(e.entries, en)
		e.byName[t.Name()] = en
	}
	if opts.IdleTimeout > 0 {
		e.bg.Go(e.sweep)
	}
	return e
}

// Targets returns the watched targets, in configuration order.
func (e *Exporter) Targets() []*Target {
	out := make([]*Target, len(e.entries))
	for i, en := range e.entries {
		out[i] = en.target
	}
	return out
}

// HasTarget reports whether name is a configured target.
func (e *Exporter) HasTarget(name string) bool { return e.byName[name] != nil }

// Scrape collects all targets by ctx's deadline. It counts as a use of every target, and
// it is not capped: every target is connected while it runs.
func (e *Exporter) Scrape(ctx context.Context) Result {
	return e.scrapeEntries(ctx, e.entries, true)
}

// ScrapeConnected collects the targets that are connected now, without counting it as a
// use: the background sampler keeps the pool history of targets that /probe scrapes, but
// does not keep idle targets connected.
func (e *Exporter) ScrapeConnected(ctx context.Context) Result {
	e.mu.Lock()
	var connected []*entry
	for _, en := range e.entries {
		if en.connected {
			connected = append(connected, en)
		}
	}
	e.mu.Unlock()
	return e.scrapeEntries(ctx, connected, false)
}

func (e *Exporter) scrapeEntries(ctx context.Context, entries []*entry, use bool) Result {
	results := make([]Result, len(entries))
	var wg sync.WaitGroup
	for i, en := range entries {
		wg.Go(func() { results[i] = e.scrapeEntry(ctx, en, use, false) })
	}
	wg.Wait()
	var all Result
	for _, r := range results {
		all.Metrics = append(all.Metrics, r.Metrics...)
		all.Pools = append(all.Pools, r.Pools...)
		all.Servers = append(all.Servers, r.Servers...)
	}
	if e.opts.Observer != nil && len(all.Pools) > 0 {
		e.opts.Observer(all)
	}
	return all
}

// ScrapeTarget collects the one target name by ctx's deadline. An unknown name returns an
// error wrapping ErrUnknownTarget before anything connects.
func (e *Exporter) ScrapeTarget(ctx context.Context, name string) (Result, error) {
	en := e.byName[name]
	if en == nil {
		return Result{}, fmt.Errorf("%w %q", ErrUnknownTarget, name)
	}
	e.mu.Lock()
	closed := e.closed
	e.mu.Unlock()
	if closed {
		return Result{}, errClosed
	}
	r := e.scrapeEntry(ctx, en, true, true)
	if e.opts.Observer != nil && len(r.Pools) > 0 {
		e.opts.Observer(r)
	}
	return r, nil
}

// scrapeEntry scrapes one target. use refreshes its last use; capped enforces the cap on
// connected targets when it connects this one, and again when it is done (a cap that
// concurrent scrapes overran is restored as soon as they end).
func (e *Exporter) scrapeEntry(ctx context.Context, en *entry, use, capped bool) Result {
	e.mu.Lock()
	en.busy++
	if use {
		en.lastUsed = e.now()
		if !en.connected {
			en.connected = true
			if capped {
				e.enforceCapLocked(en)
			}
		}
	}
	e.mu.Unlock()
	defer func() {
		e.mu.Lock()
		en.busy--
		if capped {
			e.enforceCapLocked(nil)
		}
		e.mu.Unlock()
	}()
	return en.target.Scrape(ctx)
}

// Close stops the sweeper and closes every target's connections.
func (e *Exporter) Close() {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return
	}
	e.closed = true
	close(e.stop)
	e.mu.Unlock()
	e.bg.Wait()
	for _, en := range e.entries {
		en.target.Close()
	}
}

// ScrapeCollector returns a collector that scrapes all targets under ctx, for a registry
// made for one HTTP request.
func (e *Exporter) ScrapeCollector(ctx context.Context) prometheus.Collector {
	return &scrapeCollector{ctx: ctx, e: e}
}

// TargetCollector returns a collector that scrapes the one target name under ctx, for a
// registry made for one HTTP request. An unknown name is an error wrapping
// ErrUnknownTarget, returned before anything connects.
func (e *Exporter) TargetCollector(ctx context.Context, name string) (prometheus.Collector, error) {
	if !e.HasTarget(name) {
		return nil, fmt.Errorf("%w %q", ErrUnknownTarget, name)
	}
	return &scrapeCollector{ctx: ctx, e: e, target: name}, nil
}

type scrapeCollector struct {
	ctx    context.Context
	e      *Exporter
	target string // "" scrapes all targets
}

func (c *scrapeCollector) Describe(ch chan<- *prometheus.Desc) {
	metrics.Describe(ch, metrics.TargetGroup, metrics.PoolGroup)
}

func (c *scrapeCollector) Collect(ch chan<- prometheus.Metric) {
	var r Result
	if c.target == "" {
		r = c.e.Scrape(c.ctx)
	} else {
		var err error
		if r, err = c.e.ScrapeTarget(c.ctx, c.target); err != nil {
			ch <- prometheus.NewInvalidMetric(metrics.Up.Desc, err)
			return
		}
	}
	for _, m := range r.Metrics {
		ch <- m
	}
}
