package collector

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// FleetMetrics are the exporter's own series about its targets: how many are configured and
// connected, the cap, and how often targets were disconnected. They belong on /metrics, not
// on /probe, and outlive reloads: exporter returns the current Exporter.
type FleetMetrics struct {
	exporter     func() *Exporter
	idle, cap    atomic.Uint64
	targets      *prometheus.Desc
	connected    *prometheus.Desc
	maxConnected *prometheus.Desc
	disconnects  *prometheus.Desc
}

// NewFleetMetrics returns the collector of the fleet series of the Exporter that exporter
// returns at the time of each scrape.
func NewFleetMetrics(exporter func() *Exporter) *FleetMetrics {
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(namespace, "exporter", name), help, labels, nil)
	}
	return &FleetMetrics{
		exporter: exporter,
		targets:  desc("targets", "Configured targets (PostgreSQL servers and PgBouncers) that /metrics or /probe can scrape."),
		connected: desc("connected_targets", "Targets that hold or may hold monitoring connections: scraped, and not disconnected "+
			"since for being idle (--probe.idle-timeout) or over the cap (--probe.max-connected-targets)."),
		maxConnected: desc("max_connected_targets", "The cap on connected targets (--probe.max-connected-targets) that a probe enforces; absent without a cap."),
		disconnects: desc("target_disconnects_total", "Targets whose monitoring connections were closed, by reason: idle (not scraped for "+
			"--probe.idle-timeout) or cap (least recently used when a probe needed a connection beyond --probe.max-connected-targets).", "reason"),
	}
}

func (m *FleetMetrics) countRelease(reason string) {
	if reason == releaseCap {
		m.cap.Add(1)
	} else {
		m.idle.Add(1)
	}
}

// Describe sends every descriptor of the fleet series.
func (m *FleetMetrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- m.targets
	ch <- m.connected
	ch <- m.maxConnected
	ch <- m.disconnects
}

// Collect sends the fleet series of the current Exporter.
func (m *FleetMetrics) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(m.disconnects, prometheus.CounterValue, float64(m.idle.Load()), releaseIdle)
	ch <- prometheus.MustNewConstMetric(m.disconnects, prometheus.CounterValue, float64(m.cap.Load()), releaseCap)
	e := m.exporter()
	if e == nil {
		return
	}
	ch <- prometheus.MustNewConstMetric(m.targets, prometheus.GaugeValue, float64(len(e.entries)))
	ch <- prometheus.MustNewConstMetric(m.connected, prometheus.GaugeValue, float64(e.ConnectedTargets()))
	if e.opts.MaxConnectedTargets > 0 {
		ch <- prometheus.MustNewConstMetric(m.maxConnected, prometheus.GaugeValue, float64(e.opts.MaxConnectedTargets))
	}
}
