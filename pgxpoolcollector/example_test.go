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

// ExampleNew exports a service's own pool as the dbpool_* series.
func ExampleNew() {
	cfg, err := pgxpool.ParseConfig(os.Getenv("DATABASE_URL"))
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
