package collector

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/dbpool/dbpool_exporter/internal/metrics"
	"github.com/dbpool/dbpool_exporter/poolcfg"
	"github.com/dbpool/dbpool_exporter/tools/pgtest"
	"github.com/dbpool/dbpool_exporter/tools/testbin"
)

const (
	monitorRole     = "monitor"
	monitorPassword = "monitor-Secret-4242"
	appRole         = "app"
	appPassword     = "app-Secret-7373"
)

// testServer is a throwaway PostgreSQL with a pg_monitor role for the exporter and a plain
// role for the simulated application.
func testServer(t *testing.T, opts pgtest.Options) *pgtest.Postgres {
	t.Helper()
	pg := pgtest.StartT(t, opts)
	if err := pg.CreateRole(monitorRole, monitorPassword, false, "pg_monitor"); err != nil {
		t.Fatal(err)
	}
	if err := pg.CreateRole(appRole, appPassword, false); err != nil {
		t.Fatal(err)
	}
	return pg
}

func mustDSN(t *testing.T, s string) poolcfg.DSN {
	t.Helper()
	d, err := poolcfg.ParseDSN(s)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func newTestTarget(t *testing.T, dsn string, pools []poolcfg.Pool, logs io.Writer, mutate func(*PostgresOptions)) *Target {
	t.Helper()
	return newAppTarget(t, dsn, pools, nil, logs, mutate)
}

// newAppTarget is newTestTarget with app endpoints, whose counters last as long as the test.
func newAppTarget(t *testing.T, dsn string, pools []poolcfg.Pool, apps []poolcfg.App, logs io.Writer, mutate func(*PostgresOptions)) *Target {
	t.Helper()
	opts := DefaultPostgresOptions()
	opts.AppCounters = NewAppCounters()
	if mutate != nil {
		mutate(&opts)
	}
	if logs == nil {
		logs = io.Discard
	}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	tgt, err := NewPostgresTarget("db", mustDSN(t, dsn), pools, apps, opts, logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tgt.Close)
	return tgt
}

// gather scrapes the target once under a deadline and returns the metric families by name.
func gather(t *testing.T, tgt *Target, timeout time.Duration) map[string]*dto.MetricFamily {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return testbin.Gather(t, NewExporter([]*Target{tgt}, ExporterOptions{}).ScrapeCollector(ctx))
}

// value returns the value of the series of name whose labels include want.
func value(mfs map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	return testbin.SeriesValue(mfs, name, want)
}

func mustValue(t *testing.T, mfs map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	t.Helper()
	v, ok := value(mfs, name, want)
	if !ok {
		t.Fatalf("no series %s%v", name, want)
	}
	return v
}

// session opens a connection as the application role with the given application_name.
func session(t *testing.T, pg *pgtest.Postgres, appName string) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(pg.DSN(appRole, appPassword, "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.RuntimeParams["application_name"] = appName
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("session %s: %v", appName, err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// waitFor polls a superuser query returning one integer until it equals want.
func waitFor(t *testing.T, pg *pgtest.Postgres, query string, want int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cfg, err := pgx.ParseConfig(pg.SuperuserDSN(""))
	if err != nil {
		t.Fatal(err)
	}
	// Named like the exporter so that this helper's own backend is never counted.
	cfg.RuntimeParams["application_name"] = ApplicationName + "_test"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var got int
	for {
		if err := conn.QueryRow(ctx, query).Scan(&got); err != nil {
			t.Fatalf("%s: %v", query, err)
		}
		if got == want {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: got %d, want %d", query, got, want)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// background runs sql on conn in a goroutine until the test ends; the cleanup cancels it and
// waits, so that the connection is never closed while a query runs on it.
func background(t *testing.T, conn *pgx.Conn, sql string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = conn.Exec(ctx, sql)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

// gatherWithin scrapes under deadline and fails the test if the answer came more than a
// second late: a down, frozen or blocked target must still answer in time.
func gatherWithin(t *testing.T, tgt *Target, deadline time.Duration) map[string]*dto.MetricFamily {
	t.Helper()
	start := time.Now()
	mfs := gather(t, tgt, deadline)
	if elapsed := time.Since(start); elapsed > deadline+time.Second {
		t.Errorf("scrape took %v, deadline %v", elapsed, deadline)
	}
	return mfs
}

// withoutOwnPool hides the series of the exporter's own monitoring pool: it is sampled while
// the scrape uses it, so its numbers vary from scrape to scrape.
type withoutOwnPool struct{ prometheus.Collector }

func (w withoutOwnPool) Collect(ch chan<- prometheus.Metric) {
	all := make(chan prometheus.Metric)
	go func() { w.Collector.Collect(all); close(all) }()
	for m := range all {
		var d dto.Metric
		if err := m.Write(&d); err == nil && !slices.ContainsFunc(d.GetLabel(), func(l *dto.LabelPair) bool {
			return l.GetName() == "pool" && l.GetValue() == metrics.OwnPool
		}) {
			ch <- m
		}
	}
}
