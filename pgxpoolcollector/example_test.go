package pgxpoolcollector_test

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/tracelog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/dbpool/dbpool_exporter/pgxpoolcollector"
)

// ExampleNew exports a service's own pool as the dbpool_* series. Nothing connects until the
// service uses its pool: the configuration series are there at once.
func ExampleNew() {
	cfg, err := pgxpool.ParseConfig("postgres://app@orders-db.internal:5432/orders?pool_max_conns=4")
	if err != nil {
		log.Fatal(err)
	}
	// Before NewWithConfig: the pool picks its tracer up once, when it is created.
	tracer := pgxpoolcollector.InstrumentConfig(cfg)
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()

	// Report the deadline the service puts on its acquires as the checkout timeout.
	settings := pgxpoolcollector.SettingsOf(cfg)
	settings.Timeout = 2 * time.Second

	reg := prometheus.NewRegistry()
	reg.MustRegister(pgxpoolcollector.New(pool, tracer, pgxpoolcollector.Options{
		Target:   "orders-db", // as the dbpool_exporter watching that server names it
		Pool:     "api",
		Settings: &settings,
	}))
	http.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))

	mfs, err := reg.Gather()
	if err != nil {
		log.Fatal(err)
	}
	for _, mf := range mfs {
		switch mf.GetName() {
		case "dbpool_max_connections", "dbpool_checkout_timeout_seconds", "dbpool_open_connections":
			fmt.Println(mf.GetName(), mf.GetMetric()[0].GetGauge().GetValue())
		}
	}
	// Output:
	// dbpool_checkout_timeout_seconds 2
	// dbpool_max_connections 4
	// dbpool_open_connections 0
}

// ExampleInstrumentConfig keeps the tracer a service already has: it still receives every
// call it received before.
func ExampleInstrumentConfig() {
	cfg, err := pgxpool.ParseConfig(os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	logTracer := &tracelog.TraceLog{
		Logger: tracelog.LoggerFunc(func(_ context.Context, level tracelog.LogLevel, msg string, _ map[string]any) {
			log.Println(level, msg)
		}),
		LogLevel: tracelog.LogLevelWarn,
	}
	cfg.ConnConfig.Tracer = logTracer

	tracer := pgxpoolcollector.InstrumentConfig(cfg)
	fmt.Println(cfg.ConnConfig.Tracer == tracer, tracer.Next() == logTracer)
	// Output: true true
}
