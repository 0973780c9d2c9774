package health

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dbpool/dbpool_exporter/internal/advice"
	"github.com/dbpool/dbpool_exporter/internal/metrics"
)

// Describe implements prometheus.Collector.
func (m *Manager) Describe(ch chan<- *prometheus.Desc) {
	metrics.Describe(ch, metrics.AdviceGroup)
}

// Collect implements prometheus.Collector: the recommendation of every configured pool of
// the activity and app sources whose history spans at least MinHistory and that was seen
// within StaleAfter, and, where the sizing model ran, its predictions for the current and the
// recommended settings.
//
// Only the activity source's configured pools are the application's own pool, which the
// metrics' DB_POOL_SIZE and DB_MAX_OVERFLOW configure: PgBouncer and pgxpool pools have other
// settings (their advice is in the API). A pool that matched no configuration gets none, since
// its current settings are unknown; neither does a pool just seen for the first time, so that a
// restart does not publish advice drawn from one sample, nor one not seen for StaleAfter (removed
// by a reload, or its target down), whose history would otherwise keep it for a whole window.
func (m *Manager) Collect(ch chan<- prometheus.Metric) {
	for _, r := range m.Reports() {
		if !r.Configured || !AppPool(r.Source) || !r.HasHistory(m.minHistory) || r.Stale {
			continue
		}
		o := r.Optimization
		ch <- metrics.RecommendedSize.Metric(float64(o.RecommendedPoolSize), r.Target, r.Pool)
		ch <- metrics.RecommendedMaxOverflow.Metric(float64(o.RecommendedMaxOverflow), r.Target, r.Pool)
		for _, p := range []struct {
			settings string
			p        *advice.Prediction
		}{{metrics.SettingsCurrent, o.Sizing.Current}, {metrics.SettingsRecommended, o.Sizing.Recommended}} {
			if p.p == nil || p.p.Unbounded {
				continue // no model without hold times; no average of a queue without end
			}
			ch <- metrics.PredictedCheckoutWait.Metric(p.p.MeanWaitSeconds, r.Target, r.Pool, p.settings)
			ch <- metrics.PredictedTimeoutRatio.Metric(p.p.TimeoutProbability, r.Target, r.Pool, p.settings)
			ch <- metrics.PredictedUtilization.Metric(p.p.Utilization, r.Target, r.Pool, p.settings)
		}
	}
}
