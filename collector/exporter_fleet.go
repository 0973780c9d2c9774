package collector

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dbpool/dbpool_exporter/internal/metrics"
)

// FleetMetrics are the exporter's own series about its fleet of targets: how many are
// configured and connected, the cap, and how often targets were disconnected. They belong on
// /metrics, not on /probe, and outlive reloads: main keeps one, and exporter returns the
// current Exporter.
type FleetMetrics struct {
	exporter  func() *Exporter
	idle, cap atomic.Uint64
}

// NewFleetMetrics returns the collector of the fleet series of the Exporter that exporter
// returns at the time of each scrape.
func NewFleetMetrics(exporter func() *Exporter) *FleetMetrics {
	return &FleetMetrics{exporter: exporter}
}

func (m *FleetMetrics) countDisconnect(reason string) {
	if reason == metrics.DisconnectCap {
		m.cap.Add(1)
	} else {
		m.idle.Add(1)
	}
}

// Describe sends every descriptor of the fleet series.
func (m *FleetMetrics) Describe(ch chan<- *prometheus.Desc) {
	metrics.Describe(ch, metrics.ExporterGroup)
}

// Collect sends the fleet series of the current Exporter.
func (m *FleetMetrics) Collect(ch chan<- prometheus.Metric) {
	ch <- metrics.ExporterTargetDisconnects.Metric(float64(m.idle.Load()), metrics.DisconnectIdle)
	ch <- metrics.ExporterTargetDisconnects.Metric(float64(m.cap.Load()), metrics.DisconnectCap)
	e := m.exporter()
	if e == nil {
		return
	}
	ch <- metrics.ExporterTargets.Metric(float64(len(e.entries)))
	ch <- metrics.ExporterConnectedTargets.Metric(float64(e.ConnectedTargets()))
	if e.opts.MaxConnectedTargets > 0 {
		ch <- metrics.ExporterMaxConnectedTargets.Metric(float64(e.opts.MaxConnectedTargets))
	}
}
