package collector

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dbpool/dbpool_exporter/internal/metrics"
)

// probeSource times what an application's pool does when it grows: a fresh login (TCP, TLS,
// authentication, first query). It is the only connection the exporter opens besides its
// monitoring pool. A refused login (too many clients, SQLSTATE 53300) shows here while
// dbpool_up, which the kept monitoring connection decides, can still be 1.
type probeSource struct {
	target string
	cfg    *pgx.ConnConfig
}

func (*probeSource) Name() string { return metrics.CollectorProbe }

func (s *probeSource) Scrape(ctx context.Context) (Scraped, error) {
	start := time.Now()
	// The login gives up soon after ctx ends; the answer does not wait for it to give up.
	done := make(chan error, 1)
	go func() { done <- login(ctx, s.cfg) }()
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		err = ctx.Err()
	}
	out := Scraped{Metrics: []prometheus.Metric{
		metrics.ProbeConnectSeconds.Metric(time.Since(start).Seconds(), s.target),
		metrics.ProbeConnectSuccess.Metric(metrics.Bool(err == nil), s.target),
	}}
	if err != nil {
		return out, fmt.Errorf("probe login: %w", err)
	}
	return out, nil
}

func login(ctx context.Context, cfg *pgx.ConnConfig) error {
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer func() {
		// Closing sends Terminate; a dead server must not hold the scrape.
		closeCtx, cancel := context.WithTimeout(context.Background(), closeTimeout)
		defer cancel()
		_ = conn.Close(closeCtx)
	}()
	_, err = conn.Exec(ctx, "SELECT 1")
	return err
}
