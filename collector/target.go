package collector

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"
)

// targetBase is what every target shares: its name, its health series, failure logging,
// and the one collection in flight that concurrent scrapes join.
type targetBase struct {
	name   string
	logger *slog.Logger
	states *stateLogger
	health *healthDescs
	flight singleflight.Group
}

func newTargetBase(name string, logger *slog.Logger) targetBase {
	return targetBase{name: name, logger: logger, states: newStateLogger(logger), health: newHealthDescs()}
}

// Name is the value of the target label.
func (b *targetBase) Name() string { return b.name }

// scrapeShared runs the jobs once for all concurrent callers, so that scrapes never stack up
// on the target. reached, set by a job once the target answered, becomes dbpool_up; after
// the jobs, finish (if not nil) may add what depends on their outcome.
func (b *targetBase) scrapeShared(ctx context.Context, jobs func(reached *atomic.Bool) []job, finish func(*Result)) Result {
	ch := b.flight.DoChan("scrape", func() (any, error) {
		// The shared collection must not die with the first caller's connection, but it
		// keeps that caller's deadline.
		c, cancel := withDeadlineOf(context.WithoutCancel(ctx), ctx)
		defer cancel()
		var reached atomic.Bool
		res := b.collectJobs(c, jobs(&reached))
		res.Metrics = append(res.Metrics, prometheus.MustNewConstMetric(b.health.up, prometheus.GaugeValue, boolToFloat(reached.Load()), b.name))
		if finish != nil {
			finish(&res)
		}
		return res, nil
	})
	select {
	case r := <-ch:
		return r.Val.(Result)
	case <-ctx.Done():
		// Joined a collection (the sampler's, say) that outlives this caller's deadline. The
		// target may be fine, only slower than this deadline: say that the collectors did not
		// finish, but not that the target is down (no dbpool_up).
		b.logger.Debug("scrape gave up waiting for the shared collection", "target", b.name, "err", ctx.Err())
		var res Result
		for _, j := range jobs(nil) {
			res.Metrics = append(res.Metrics, prometheus.MustNewConstMetric(b.health.scrapeSuccess, prometheus.GaugeValue, 0, b.name, j.name))
		}
		return res
	}
}

// collectJobs runs the jobs by ctx's deadline and adds each one's success and duration.
func (b *targetBase) collectJobs(ctx context.Context, jobs []job) Result {
	var res Result
	for _, r := range runJobs(ctx, jobs) {
		b.states.observe(b.name, r.name, r.err)
		res.Metrics = append(res.Metrics, r.metrics...)
		res.Pools = append(res.Pools, r.pools...)
		res.Metrics = append(res.Metrics,
			prometheus.MustNewConstMetric(b.health.scrapeSuccess, prometheus.GaugeValue, boolToFloat(r.err == nil), b.name, r.name),
			prometheus.MustNewConstMetric(b.health.scrapeDuration, prometheus.GaugeValue, r.duration.Seconds(), b.name, r.name))
	}
	return res
}

// withDeadlineOf gives parent the deadline of `of`, slightly earlier, so that the shared
// collection is done before the caller who started it stops waiting.
func withDeadlineOf(parent, of context.Context) (context.Context, context.CancelFunc) {
	if d, ok := of.Deadline(); ok {
		margin := min(50*time.Millisecond, time.Until(d)/10)
		return context.WithDeadline(parent, d.Add(-margin))
	}
	return context.WithCancel(parent)
}
