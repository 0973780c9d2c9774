package collector

import (
	"context"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Exporter scrapes every target concurrently. It is not a prometheus.Collector itself,
// because a scrape needs the request's deadline: ScrapeCollector binds one.
type Exporter struct {
	targets  []Target
	observer func(Result)
}

// NewExporter returns an exporter over targets. observer, if not nil, receives every
// scrape's result (the advice engine keeps the pool samples in its history).
func NewExporter(targets []Target, observer func(Result)) *Exporter {
	return &Exporter{targets: targets, observer: observer}
}

// Targets returns the watched targets.
func (e *Exporter) Targets() []Target { return e.targets }

// Scrape collects all targets by ctx's deadline.
func (e *Exporter) Scrape(ctx context.Context) Result {
	results := make([]Result, len(e.targets))
	var wg sync.WaitGroup
	for i, t := range e.targets {
		wg.Go(func() { results[i] = t.Scrape(ctx) })
	}
	wg.Wait()
	var all Result
	for _, r := range results {
		all.Metrics = append(all.Metrics, r.Metrics...)
		all.Pools = append(all.Pools, r.Pools...)
		all.Servers = append(all.Servers, r.Servers...)
	}
	if e.observer != nil && len(all.Pools) > 0 {
		e.observer(all)
	}
	return all
}

// Close closes every target's connections.
func (e *Exporter) Close() {
	for _, t := range e.targets {
		t.Close()
	}
}

// ScrapeCollector returns a collector that scrapes all targets under ctx, for a registry
// made for one HTTP request.
func (e *Exporter) ScrapeCollector(ctx context.Context) prometheus.Collector {
	return &scrapeCollector{ctx: ctx, e: e}
}

type scrapeCollector struct {
	ctx context.Context
	e   *Exporter
}

func (c *scrapeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, t := range c.e.targets {
		if d, ok := t.(interface{ Describe(chan<- *prometheus.Desc) }); ok {
			d.Describe(ch)
		}
	}
}

func (c *scrapeCollector) Collect(ch chan<- prometheus.Metric) {
	for _, m := range c.e.Scrape(c.ctx).Metrics {
		ch <- m
	}
}
