package collector

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
)

// probeDescs time what an application's pool does when it grows: a fresh login, and a
// checkout plus pre-ping from an existing pool.
type probeDescs struct {
	connectSeconds  *prometheus.Desc
	connectSuccess  *prometheus.Desc
	checkoutSeconds *prometheus.Desc
}

func newProbeDescs() *probeDescs {
	desc := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(namespace, "probe", name), help, []string{"target"}, nil)
	}
	return &probeDescs{
		connectSeconds:  desc("connect_seconds", "Time to open a fresh connection (TCP, TLS, authentication, first query), or until it failed."),
		connectSuccess:  desc("connect_success", "1 if a fresh login succeeded; 0 when logins fail, e.g. too many clients (SQLSTATE 53300)."),
		checkoutSeconds: desc("checkout_seconds", "Time to check out the exporter's own monitoring connection and pre-ping it."),
	}
}

func (d *probeDescs) describe(ch chan<- *prometheus.Desc) {
	ch <- d.connectSeconds
	ch <- d.connectSuccess
	ch <- d.checkoutSeconds
}

// collectProbe opens one fresh connection, runs a trivial query and closes it. It is the only
// connection the exporter opens besides its monitoring pool.
func (t *PostgresTarget) collectProbe(ctx context.Context) ([]prometheus.Metric, []PoolStats, error) {
	start := time.Now()
	err := probeLogin(ctx, t.connCfg)
	elapsed := time.Since(start)
	ms := []prometheus.Metric{
		prometheus.MustNewConstMetric(t.probe.connectSeconds, prometheus.GaugeValue, elapsed.Seconds(), t.name),
		prometheus.MustNewConstMetric(t.probe.connectSuccess, prometheus.GaugeValue, boolToFloat(err == nil), t.name),
	}
	if err != nil {
		return ms, nil, fmt.Errorf("probe login: %w", err)
	}
	return ms, nil, nil
}

// probeTimedOut reports a login that did not finish before the scrape deadline: as failed.
func (t *PostgresTarget) probeTimedOut(elapsed time.Duration) []prometheus.Metric {
	return []prometheus.Metric{
		prometheus.MustNewConstMetric(t.probe.connectSeconds, prometheus.GaugeValue, elapsed.Seconds(), t.name),
		prometheus.MustNewConstMetric(t.probe.connectSuccess, prometheus.GaugeValue, 0, t.name),
	}
}

func probeLogin(ctx context.Context, cfg *pgx.ConnConfig) error {
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer func() {
		// Closing sends Terminate; do not let a dead server hold the scrape.
		closeCtx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = conn.Close(closeCtx)
	}()
	_, err = conn.Exec(ctx, "SELECT 1")
	return err
}
