// Package collector turns samples of connection pools into Prometheus metrics in one language
// (namespace dbpool), whichever source observed them: pg_stat_activity on the PostgreSQL server
// (activity), the PgBouncer admin console (pgbouncer), or a *pgxpool.Pool in a Go process (pgxpool).
// It is part of the product.
package collector

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dbpool/dbpool_exporter/poolcfg"
)

const namespace = "dbpool"

// Target is one thing the exporter watches (a PostgreSQL server or a PgBouncer). Scrape never
// fails: failures are metrics (dbpool_up 0, dbpool_scrape_success 0) and it returns by the
// context's deadline.
type Target interface {
	Name() string
	Scrape(ctx context.Context) Result
	Close()
}

// Result is what one scrape of a target produced: its metrics and, for the advice engine,
// the typed pool samples behind them.
type Result struct {
	Metrics []prometheus.Metric
	Pools   []PoolStats
	Servers []ServerStats
}

// ServerStats are a PostgreSQL server's connection limits, for the advice engine's
// per-instance budget.
type ServerStats struct {
	Target              string
	MaxConnections      int
	ReservedConnections int
}

// healthDescs are the per-target health series every target emits.
type healthDescs struct {
	up             *prometheus.Desc
	scrapeDuration *prometheus.Desc
	scrapeSuccess  *prometheus.Desc
}

func newHealthDescs() *healthDescs {
	return &healthDescs{
		up: prometheus.NewDesc(prometheus.BuildFQName(namespace, "", "up"),
			"1 if the exporter reached the target over its monitoring connection during this scrape.", []string{"target"}, nil),
		scrapeDuration: prometheus.NewDesc(prometheus.BuildFQName(namespace, "scrape", "duration_seconds"),
			"Time one collector took during this scrape.", []string{"target", "collector"}, nil),
		scrapeSuccess: prometheus.NewDesc(prometheus.BuildFQName(namespace, "scrape", "success"),
			"1 if the collector succeeded during this scrape.", []string{"target", "collector"}, nil),
	}
}

func (d *healthDescs) describe(ch chan<- *prometheus.Desc) {
	ch <- d.up
	ch <- d.scrapeDuration
	ch <- d.scrapeSuccess
}

// job is one collector of a target; run returns its metrics and pool samples. timedOut, if
// set, gives the metrics to report when run did not finish in time.
type job struct {
	name     string
	run      func(ctx context.Context) ([]prometheus.Metric, []PoolStats, error)
	timedOut func(elapsed time.Duration) []prometheus.Metric
}

// jobGrace is how much earlier than the scrape deadline a job's own context ends: pgx needs a
// moment after cancellation to give up on a server that does not answer, and the job should
// still report its failure itself.
func jobGrace(remaining time.Duration) time.Duration {
	return min(300*time.Millisecond, remaining/4)
}

type jobResult struct {
	name     string
	metrics  []prometheus.Metric
	pools    []PoolStats
	err      error
	duration time.Duration
}

// runJobs runs the jobs concurrently and returns by ctx's deadline at the latest: a job still
// running then counts as failed with the context's error. Jobs must themselves stop soon after
// ctx ends (every query takes ctx) so that nothing piles up.
func runJobs(ctx context.Context, jobs []job) []jobResult {
	start := time.Now()
	jobCtx, cancel := ctx, context.CancelFunc(func() {})
	if d, ok := ctx.Deadline(); ok {
		jobCtx, cancel = context.WithDeadline(ctx, d.Add(-jobGrace(time.Until(d))))
	}
	done := make(chan jobResult, len(jobs))
	var running sync.WaitGroup
	for _, j := range jobs {
		running.Add(1)
		go func() {
			defer running.Done()
			t0 := time.Now()
			ms, pools, err := runRecovered(jobCtx, j.run)
			done <- jobResult{name: j.name, metrics: ms, pools: pools, err: err, duration: time.Since(t0)}
		}()
	}
	results := make(map[string]jobResult, len(jobs))
wait:
	for len(results) < len(jobs) {
		select {
		case r := <-done:
			results[r.name] = r
		case <-ctx.Done():
			break wait
		}
	}
	// Jobs still running stop soon after their context ends; cancel them now.
	go func() { running.Wait(); cancel() }()
	if len(results) < len(jobs) {
		cancel()
	}
	out := make([]jobResult, 0, len(jobs))
	for _, j := range jobs {
		r, ok := results[j.name]
		if !ok {
			err := ctx.Err()
			if err == nil {
				err = context.DeadlineExceeded
			}
			r = jobResult{name: j.name, err: err, duration: time.Since(start)}
			if j.timedOut != nil {
				r.metrics = j.timedOut(r.duration)
			}
		}
		out = append(out, r)
	}
	return out
}

// stateLogger logs a collector's failure once when it starts failing and once when it
// recovers, instead of one line per scrape.
type stateLogger struct {
	logger *slog.Logger
	mu     sync.Mutex
	failed map[string]bool
}

func newStateLogger(logger *slog.Logger) *stateLogger {
	return &stateLogger{logger: logger, failed: map[string]bool{}}
}

// observe logs err as poolcfg.RedactError prints it: connection errors by their structured
// fields (user, database, host, cause), never the password that the library errors carry.
func (s *stateLogger) observe(target, collector string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	was := s.failed[collector]
	switch {
	case err != nil && !was:
		s.logger.Warn("collector failed", "target", target, "collector", collector, "err", poolcfg.RedactError(err))
	case err != nil:
		s.logger.Debug("collector still failing", "target", target, "collector", collector, "err", poolcfg.RedactError(err))
	case was:
		s.logger.Info("collector recovered", "target", target, "collector", collector)
	}
	s.failed[collector] = err != nil
}

// runRecovered runs a job and turns a panic into the job's error: a bug or a surprising value
// from a target must fail one collector, not kill the daemon (the job runs in its own
// goroutine, where net/http's recovery does not reach).
func runRecovered(ctx context.Context, run func(context.Context) ([]prometheus.Metric, []PoolStats, error)) (ms []prometheus.Metric, pools []PoolStats, err error) {
	defer func() {
		if r := recover(); r != nil {
			ms, pools, err = nil, nil, fmt.Errorf("collector panicked: %v", r)
		}
	}()
	return run(ctx)
}
