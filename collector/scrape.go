// Package collector scrapes what dbpool_exporter watches: PostgreSQL servers and PgBouncers
// (targets), each through the sources of its configuration. One scrape, step by step:
//
//  1. main's handler (/metrics, or /probe?target=NAME for one target) turns Prometheus' scrape
//     timeout into a deadline (ScrapeTimeout) and asks the Exporter (exporter.go) for all
//     targets or one.
//  2. The Exporter scrapes each target concurrently: Target.Scrape, in this file. Concurrent
//     scrapes of one target share one collection, so that they never stack up on its server.
//  3. The target runs its sources concurrently, each under a deadline a little earlier than
//     the scrape's (the margins are below). A source is a name and one call (Source): activity
//     (activity.go: the monitoring connection, the server's settings, pg_stat_activity grouped
//     into pools; "connection" with --no-collector.activity), probe (probe.go: a fresh login),
//     pgxpool (postgres.go: the exporter's own connection pool), app (app.go: the
//     applications' own reports of their pools, from endpoints that app_discovery.go finds
//     on each scrape: URLs, DNS names, file_sd files) on a PostgreSQL target, which postgres.go
//     builds; pgbouncer (pgbouncer.go: the admin console) on a PgBouncer.
//  4. Each source returns its finished pool samples and its other series (Scraped). The target
//     turns the pool samples into the pool series (internal/metrics/contract.go, where every
//     series of the exporter is declared) and adds dbpool_up and, per source,
//     dbpool_scrape_success and dbpool_scrape_duration_seconds.
//     A source that fails, hangs or panics fails alone; the log says so once when it starts
//     failing and once when it recovers (stateLogger).
//  5. The Exporter gives the result (series, pool samples, server limits) to its observer,
//     the pool history of internal/health, and main writes the series out.
//
// What must outlive a scrape stays with the sources (connections, cached server settings);
// what must outlive a reload, which rebuilds every target, belongs to main: the app pools'
// counters (AppCounters), the pool history and the exporter's own counters (FleetMetrics).
package collector

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"

	"github.com/dbpool/dbpool_exporter/internal/metrics"
	"github.com/dbpool/dbpool_exporter/poolcfg"
)

// Source is one view of a target, in the shape of mysqld_exporter's Scraper: a name (the
// value of the collector label) and one call that returns this scrape's results. Scrape
// must return soon after ctx ends: every query and request takes ctx.
type Source interface {
	Name() string
	Scrape(ctx context.Context) (Scraped, error)
}

// Scraped is what one source saw in one scrape. Along with an error, it holds what the
// source saw before it failed.
type Scraped struct {
	// Pools are finished samples, one per pool; the target turns them into the pool series.
	Pools []metrics.PoolStats
	// Metrics are the source's series other than the pool series.
	Metrics []prometheus.Metric
	// Server is the server's connection limits, from the source that reads them.
	Server *ServerStats
	// Reached is set by the source that owns the target's monitoring connection once the
	// target answered on it: dbpool_up.
	Reached bool
}

// Result is what a scrape of one target, or of several, produced: the series and, for the
// pool history, the typed pool samples and server limits behind them.
type Result struct {
	Metrics []prometheus.Metric
	Pools   []metrics.PoolStats
	Servers []ServerStats
}

// ServerStats are a PostgreSQL server's connection limits, for the advice engine's
// per-instance budget.
type ServerStats struct {
	Target              string
	MaxConnections      int
	ReservedConnections int
}

// Target is one server the exporter watches: a name, the sources of its configuration, and
// the connections they keep between scrapes. Scrape never fails: failures are series
// (dbpool_up 0, dbpool_scrape_success 0), and it returns by the context's deadline.
type Target struct {
	name    string
	sources []Source
	// release closes the target's connections and keeps it usable (its next scrape connects
	// again); close closes them for good.
	release, close func()
	logger         *slog.Logger
	states         *stateLogger
	flight         singleflight.Group
}

func newTarget(name string, sources []Source, release, close func(), logger *slog.Logger) *Target {
	return &Target{name: name, sources: sources, release: release, close: close, logger: logger, states: newStateLogger(logger)}
}

// Name is the value of the target label.
func (t *Target) Name() string { return t.name }

// Close closes the target's connections for good.
func (t *Target) Close() { t.close() }

// ReleaseConnections closes the target's connections without waiting for them; its next
// scrape connects again. The Exporter calls it for idle targets.
func (t *Target) ReleaseConnections() { t.release() }

// Scrape collects the target once by ctx's deadline; concurrent scrapes share one collection.
func (t *Target) Scrape(ctx context.Context) Result {
	ch := t.flight.DoChan("scrape", func() (any, error) {
		// The shared collection must not die with the first caller's connection, but it
		// keeps that caller's deadline, a margin earlier (see sharedMargin).
		c, cancel := withMargin(context.WithoutCancel(ctx), ctx, sharedMargin)
		defer cancel()
		return t.collect(c), nil
	})
	select {
	case r := <-ch:
		return r.Val.(Result)
	case <-ctx.Done():
		// Joined a collection (the sampler's, say) that outlives this caller's deadline. The
		// target may be fine, only slower than this deadline: say that the sources did not
		// finish, but not that the target is down (no dbpool_up).
		t.logger.Debug("scrape gave up waiting for the shared collection", "target", t.name, "err", ctx.Err())
		var res Result
		for _, s := range t.sources {
			res.Metrics = append(res.Metrics, metrics.ScrapeSuccess.Metric(0, t.name, s.Name()))
		}
		return res
	}
}

// collect runs the sources and adds up what they saw.
func (t *Target) collect(ctx context.Context) Result {
	var res Result
	reached := false
	for _, r := range runSources(ctx, t.sources) {
		t.states.observe(t.name, r.name, r.err)
		reached = reached || r.Reached
		res.Metrics = append(res.Metrics, r.Metrics...)
		for i := range r.Pools {
			res.Metrics = metrics.AppendPool(res.Metrics, &r.Pools[i])
		}
		res.Pools = append(res.Pools, r.Pools...)
		if r.Server != nil {
			res.Servers = append(res.Servers, *r.Server)
		}
		res.Metrics = append(res.Metrics,
			metrics.ScrapeSuccess.Metric(metrics.Bool(r.err == nil), t.name, r.name),
			metrics.ScrapeDuration.Metric(r.duration.Seconds(), t.name, r.name))
	}
	return Result{
		Metrics: append(res.Metrics, metrics.Up.Metric(metrics.Bool(reached), t.name)),
		Pools:   res.Pools,
		Servers: res.Servers,
	}
}

// The deadlines of one scrape, from the outside in. Each step ends a little before the one
// around it, so that each can still report its own failure in time:
//
//   - Prometheus announces its scrape timeout (X-Prometheus-Scrape-Timeout-Seconds).
//   - ScrapeTimeout subtracts --scrape.timeout-offset, the time to send the answer; it is at
//     most --scrape.max-timeout (also the timeout without a header) and at least
//     minScrapeTimeout.
//   - The collection that concurrent scrapes of a target share ends sharedMargin before the
//     deadline of the scrape that started it, so that it is done before that one stops waiting.
//   - Each source's context ends sourceMargin before that: a source whose query is cancelled
//     still returns its failure, and what it saw, itself.
//   - A cancelled query asks the server to cancel it and gives the server cancelGrace to
//     confirm before pgx gives up on the socket (a frozen server); cancelGrace fits in
//     sourceMargin whenever at least 800 ms remain.
//   - Closing a connection on the way out (Terminate to a server that may be dead) waits at
//     most closeTimeout.
//   - On the server, statement_timeout and lock_timeout (--scrape.max-timeout) stop a query
//     whose scrape was abandoned.
const (
	minScrapeTimeout = 10 * time.Millisecond
	cancelGrace      = 200 * time.Millisecond
	closeTimeout     = 200 * time.Millisecond
)

func sharedMargin(remaining time.Duration) time.Duration {
	return min(50*time.Millisecond, remaining/10)
}
func sourceMargin(remaining time.Duration) time.Duration {
	return min(300*time.Millisecond, remaining/4)
}

// ScrapeTimeout is Prometheus' scrape timeout (the header's value, in seconds) minus offset,
// capped by maxTimeout; without a usable header (missing, not a finite positive number) it is
// maxTimeout. An offset larger than the timeout is ignored rather than leaving no time at
// all, and no deadline is shorter than minScrapeTimeout, in which not even a ping could answer.
func ScrapeTimeout(header string, offset, maxTimeout time.Duration) time.Duration {
	seconds, err := strconv.ParseFloat(strings.TrimSpace(header), 64)
	if err != nil || math.IsNaN(seconds) || math.IsInf(seconds, 0) || seconds <= 0 {
		return maxTimeout
	}
	if seconds > maxTimeout.Seconds()+offset.Seconds() {
		return maxTimeout // also keeps huge values from overflowing time.Duration
	}
	timeout := time.Duration(seconds * float64(time.Second))
	if timeout-offset > 0 {
		timeout -= offset
	}
	return min(max(timeout, minScrapeTimeout), maxTimeout)
}

// withMargin gives parent the deadline of `of`, margin(time left) earlier; without a
// deadline it only adds a cancel.
func withMargin(parent, of context.Context, margin func(time.Duration) time.Duration) (context.Context, context.CancelFunc) {
	if d, ok := of.Deadline(); ok {
		return context.WithDeadline(parent, d.Add(-margin(time.Until(d))))
	}
	return context.WithCancel(parent)
}

// sourceResult is what runSources knows of one source after the scrape.
type sourceResult struct {
	name string
	Scraped
	err      error
	duration time.Duration
}

// runSources runs the sources concurrently and returns by ctx's deadline at the latest, in
// the sources' order: a source still running then counts as failed with the context's error.
// Sources stop soon after their own, earlier, deadline, so that nothing piles up.
func runSources(ctx context.Context, sources []Source) []sourceResult {
	start := time.Now()
	sourceCtx, cancel := withMargin(ctx, ctx, sourceMargin)
	type done struct {
		i int
		r sourceResult
	}
	finished := make(chan done, len(sources)) // a source that ends late never blocks
	for i, s := range sources {
		go func() {
			t0 := time.Now()
			sc, err := scrapeRecovered(sourceCtx, s)
			finished <- done{i, sourceResult{name: s.Name(), Scraped: sc, err: err, duration: time.Since(t0)}}
		}()
	}
	out := make([]sourceResult, len(sources))
	got := make([]bool, len(sources))
wait:
	for range sources {
		select {
		case d := <-finished:
			out[d.i], got[d.i] = d.r, true
		case <-ctx.Done():
			break wait
		}
	}
	cancel() // sources still running stop soon after their context ends
	for i, s := range sources {
		if !got[i] {
			err := ctx.Err()
			if err == nil {
				err = context.DeadlineExceeded
			}
			out[i] = sourceResult{name: s.Name(), err: err, duration: time.Since(start)}
		}
	}
	return out
}

// scrapeRecovered runs one source and turns a panic into its error: a bug or a surprising
// value from a target must fail one source, not kill the daemon (the source runs in its own
// goroutine, where net/http's recovery does not reach).
func scrapeRecovered(ctx context.Context, s Source) (sc Scraped, err error) {
	defer func() {
		if r := recover(); r != nil {
			sc, err = Scraped{}, fmt.Errorf("source %s panicked: %v", s.Name(), r)
		}
	}()
	return s.Scrape(ctx)
}

// stateLogger logs a source's failure once when it starts failing and once when it
// recovers, instead of one line per scrape.
type stateLogger struct {
	logger *slog.Logger
	mu     sync.Mutex
	failed map[string]bool
	quiet  map[string]bool // failing sources whose parts log themselves (partsLogged)
}

func newStateLogger(logger *slog.Logger) *stateLogger {
	return &stateLogger{logger: logger, failed: map[string]bool{}, quiet: map[string]bool{}}
}

// partsLogged marks the error of a source that has logged its parts itself, each once when
// it started failing and once when it recovered (the app source: per apps entry and
// endpoint), so that the target does not log the same failure again.
type partsLogged struct{ error }

func (e partsLogged) Unwrap() error { return e.error }

// observe logs err as poolcfg.RedactError prints it: connection errors by their structured
// fields (user, database, host, cause), never the password that the library errors carry.
// A failure whose parts the source logged itself is left to the debug level, its recovery too.
func (s *stateLogger) observe(target, source string, err error) {
	var logged partsLogged
	quiet := errors.As(err, &logged)
	started, recovered := s.change(source, err != nil)
	if started {
		s.mu.Lock()
		s.quiet[source] = quiet
		s.mu.Unlock()
	}
	level := slog.LevelDebug
	msg := "collector still failing"
	switch {
	case started:
		msg = "collector failed"
		if !quiet {
			level = slog.LevelWarn
		}
	case recovered:
		msg = "collector recovered"
		s.mu.Lock()
		if !s.quiet[source] {
			level = slog.LevelInfo
		}
		delete(s.quiet, source)
		s.mu.Unlock()
	case err == nil:
		return
	}
	attrs := []any{"target", target, "collector", source}
	if err != nil {
		attrs = append(attrs, "err", poolcfg.RedactError(err))
	}
	s.logger.Log(context.Background(), level, msg, attrs...)
}

// change records whether key is failing now and reports whether it started or stopped.
func (s *stateLogger) change(key string, failing bool) (started, recovered bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	was := s.failed[key]
	if failing {
		s.failed[key] = true
	} else {
		delete(s.failed, key)
	}
	return failing && !was, was && !failing
}

// forget drops the keys that keep rejects, and returns those that were failing.
func (s *stateLogger) forget(keep func(key string) bool) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var gone []string
	for key := range s.failed {
		if !keep(key) {
			gone = append(gone, key)
			delete(s.failed, key)
		}
	}
	return gone
}
