package collector

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Exporter scrapes its targets: all of them concurrently (Scrape, for /metrics), or one by
// name (Probe, for /probe?target=NAME). It is not a prometheus.Collector itself, because a
// scrape needs the request's deadline: ScrapeCollector and ProbeCollector bind one.
//
// It also decides which targets hold connections. A target is connected from its first
// scrape until it is released: after ExporterOptions.IdleTimeout without a scrape, or, when
// a probe connects a target beyond ExporterOptions.MaxConnectedTargets, as the least
// recently used. A released target reconnects on its next scrape.
type Exporter struct {
	opts    ExporterOptions
	entries []*entry
	byName  map[string]*entry
	now     func() time.Time

	mu     sync.Mutex // guards the entries' mutable fields and closed
	closed bool
	stop   chan struct{}
	bg     sync.WaitGroup // the idle sweeper and the closing of released targets
}

// ExporterOptions are the plain, validated settings of an Exporter.
type ExporterOptions struct {
	// Observer, if not nil, receives every scrape's result (the advice engine keeps the
	// pool samples in its history).
	Observer func(Result)
	// IdleTimeout releases the connections of a target that has not been scraped for this
	// long; 0 keeps them.
	IdleTimeout time.Duration
	// MaxConnectedTargets caps the connected targets when a probe connects one: the least
	// recently used other target is released first. 0 is no cap. A scrape of all targets
	// (Scrape) needs them all and is not capped.
	MaxConnectedTargets int
	// Reopen recreates a target that cannot release its connections in place (one that is
	// not a ConnectionReleaser, such as a PgBouncer): it is closed when released and
	// reopened by name before its next scrape. nil: such targets are never released.
	Reopen func(name string) (Target, error)
	// Fleet, if not nil, counts the releases (dbpool_exporter_target_disconnects_total).
	Fleet  *FleetMetrics
	Logger *slog.Logger
}

// ConnectionReleaser is a target that can close its connections and stay usable: its next
// scrape connects again. PostgresTarget is one.
type ConnectionReleaser interface {
	ReleaseConnections()
}

// entry is one target and its connection state.
type entry struct {
	name      string
	target    Target // nil while a released target that had to be closed waits to be reopened
	inPlace   bool   // the target is a ConnectionReleaser
	connected bool
	lastUsed  time.Time
	busy      int // scrapes in progress; a busy target is never released
}

// Release reasons, the values of the reason label of dbpool_exporter_target_disconnects_total.
const (
	releaseIdle = "idle"
	releaseCap  = "cap"
)

// ErrUnknownTarget is returned (wrapped) by Probe for a name that is not configured.
var ErrUnknownTarget = errors.New("unknown target")

// errClosed is returned by Probe after Close (a reload replaced the exporter).
var errClosed = errors.New("the exporter is closed (configuration reloaded): retry")

// NewExporter returns an exporter over targets that keeps every connection (no idle
// timeout, no cap). observer, if not nil, receives every scrape's result.
func NewExporter(targets []Target, observer func(Result)) *Exporter {
	return NewExporterWithOptions(targets, ExporterOptions{Observer: observer})
}

// NewExporterWithOptions returns an exporter over targets, whose names must be unique.
// With an IdleTimeout it runs a sweeper until Close.
func NewExporterWithOptions(targets []Target, opts ExporterOptions) *Exporter {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	e := &Exporter{opts: opts, byName: map[string]*entry{}, now: time.Now, stop: make(chan struct{})}
	for _, t := range targets {
		_, inPlace := t.(ConnectionReleaser)
		en := &entry{name: t.Name(), target: t, inPlace: inPlace}
		e.entries = append(e.entries, en)
		e.byName[en.name] = en
	}
	if opts.IdleTimeout > 0 {
		e.bg.Go(e.sweep)
	}
	return e
}

// Targets returns the watched targets that are open (a released PgBouncer is not, until
// its next scrape).
func (e *Exporter) Targets() []Target {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []Target
	for _, en := range e.entries {
		if en.target != nil {
			out = append(out, en.target)
		}
	}
	return out
}

// TargetNames returns the names of all configured targets, in configuration order.
func (e *Exporter) TargetNames() []string {
	out := make([]string, len(e.entries))
	for i, en := range e.entries {
		out[i] = en.name
	}
	return out
}

// HasTarget reports whether name is a configured target.
func (e *Exporter) HasTarget(name string) bool { return e.byName[name] != nil }

// ConnectedTargets is the number of targets that hold, or may hold, monitoring connections:
// scraped at least once and not released since.
func (e *Exporter) ConnectedTargets() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.connectedLocked()
}

func (e *Exporter) connectedLocked() int {
	n := 0
	for _, en := range e.entries {
		if en.connected {
			n++
		}
	}
	return n
}

// Scrape collects all targets by ctx's deadline. It counts as a use of every target, and
// it is not capped: every target is connected while it runs.
func (e *Exporter) Scrape(ctx context.Context) Result {
	return e.scrapeEntries(ctx, e.entries, true)
}

// ScrapeConnected collects the targets that are connected now, without counting it as a
// use: the background sampler keeps the pool history of probed targets, but does not keep
// idle targets connected.
func (e *Exporter) ScrapeConnected(ctx context.Context) Result {
	e.mu.Lock()
	var connected []*entry
	for _, en := range e.entries {
		if en.connected && en.target != nil {
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

// Probe collects the one target name by ctx's deadline. An unknown name returns an error
// wrapping ErrUnknownTarget before anything connects.
func (e *Exporter) Probe(ctx context.Context, name string) (Result, error) {
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

// scrapeEntry scrapes one target. use refreshes its last use; probe enforces the cap on
// connected targets when it connects this one, and again when it is done (a cap that
// concurrent probes overran is restored as soon as they end).
func (e *Exporter) scrapeEntry(ctx context.Context, en *entry, use, probe bool) Result {
	e.mu.Lock()
	en.busy++
	if use {
		en.lastUsed = e.now()
	}
	var victims []Target
	var openErr error
	if en.target == nil && e.opts.Reopen != nil {
		en.target, openErr = e.opts.Reopen(en.name)
	}
	t := en.target
	if t != nil && !en.connected && use {
		en.connected = true
		if probe {
			victims = e.enforceCapLocked(en)
		}
	}
	e.mu.Unlock()
	e.closeInBackground(victims)
	defer func() {
		e.mu.Lock()
		en.busy--
		var victims []Target
		if probe {
			victims = e.enforceCapLocked(nil)
		}
		e.mu.Unlock()
		e.closeInBackground(victims)
	}()
	if t == nil {
		if openErr == nil {
			openErr = errors.New("target closed")
		}
		e.opts.Logger.Error("cannot reopen target", "target", en.name, "err", openErr)
		return Result{Metrics: []prometheus.Metric{prometheus.MustNewConstMetric(reopenHealth.up, prometheus.GaugeValue, 0, en.name)}}
	}
	return t.Scrape(ctx)
}

var reopenHealth = newHealthDescs()

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
	for _, t := range e.Targets() {
		t.Close()
	}
}

// ScrapeCollector returns a collector that scrapes all targets under ctx, for a registry
// made for one HTTP request.
func (e *Exporter) ScrapeCollector(ctx context.Context) prometheus.Collector {
	return &scrapeCollector{ctx: ctx, e: e}
}

// ProbeCollector returns a collector that scrapes the one target name under ctx, for a
// registry made for one HTTP request. An unknown name is an error wrapping
// ErrUnknownTarget, returned before anything connects.
func (e *Exporter) ProbeCollector(ctx context.Context, name string) (prometheus.Collector, error) {
	if !e.HasTarget(name) {
		return nil, fmt.Errorf("%w %q", ErrUnknownTarget, name)
	}
	return &scrapeCollector{ctx: ctx, e: e, probe: name}, nil
}

type scrapeCollector struct {
	ctx   context.Context
	e     *Exporter
	probe string // "" scrapes all targets
}

func (c *scrapeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, t := range c.e.Targets() {
		if c.probe != "" && t.Name() != c.probe {
			continue
		}
		if d, ok := t.(interface{ Describe(chan<- *prometheus.Desc) }); ok {
			d.Describe(ch)
		}
	}
}

func (c *scrapeCollector) Collect(ch chan<- prometheus.Metric) {
	var r Result
	if c.probe == "" {
		r = c.e.Scrape(c.ctx)
	} else {
		var err error
		if r, err = c.e.Probe(c.ctx, c.probe); err != nil {
			ch <- prometheus.NewInvalidMetric(reopenHealth.up, err)
			return
		}
	}
	for _, m := range r.Metrics {
		ch <- m
	}
}
