package health

import "github.com/prometheus/client_golang/prometheus"

// Describe implements prometheus.Collector.
func (m *Manager) Describe(ch chan<- *prometheus.Desc) {
	ch <- m.sizeDesc
	ch <- m.overflowDesc
}

// Collect implements prometheus.Collector: the recommendation of every configured pool whose
// history spans at least MinHistory. A pool that matched no configuration gets none, since
// its current settings are unknown; neither does a pool just seen for the first time, so that
// a restart does not publish advice drawn from one sample.
func (m *Manager) Collect(ch chan<- prometheus.Metric) {
	for _, r := range m.Reports() {
		if !r.Configured || !r.HasHistory(m.minHistory) {
			continue
		}
		o := r.Optimization
		ch <- prometheus.MustNewConstMetric(m.sizeDesc, prometheus.GaugeValue, float64(o.RecommendedPoolSize), r.Target, r.Pool)
		ch <- prometheus.MustNewConstMetric(m.overflowDesc, prometheus.GaugeValue, float64(o.RecommendedMaxOverflow), r.Target, r.Pool)
	}
}
