// Command pgxpool is a tiny HTTP service that exports its own *pgxpool.Pool as the dbpool_*
// series that dbpool_exporter's alerts and dashboard understand: checkout-time histogram,
// pending checkouts, checkout timeouts, connections by state and the pool's configuration.
//
//	DATABASE_URL=postgres://app:secret@localhost:5432/app go run ./examples/pgxpool
//	curl 'localhost:8080/work?sleep=0.2'   # holds a connection for 200 ms
//	curl localhost:8080/metrics
//
// Send more concurrent /work requests than -max-conns to watch dbpool_pending_checkouts
// rise; requests that wait longer than -acquire-timeout get 503 and count in
// dbpool_checkout_timeouts_total.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/dbpool/dbpool_exporter/pgxpoolcollector"
	"github.com/dbpool/dbpool_exporter/poolcfg"
)

// maxSleep bounds the hold time a /work request may ask for.
const maxSleep = 10 * time.Second

type options struct {
	listen         string
	maxConns       int
	acquireTimeout time.Duration
	target, pool   string
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(ctx, os.Args[1:], os.Getenv, logger); err != nil {
		logger.Error("exiting", "err", err)
		stop()
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, getenv func(string) string, logger *slog.Logger) error {
	fs := flag.NewFlagSet("pgxpool", flag.ContinueOnError)
	var o options
	fs.StringVar(&o.listen, "listen", "127.0.0.1:8080", "address to serve /work and /metrics on")
	fs.IntVar(&o.maxConns, "max-conns", 4, "pool size (pgxpool MaxConns)")
	fs.DurationVar(&o.acquireTimeout, "acquire-timeout", 2*time.Second, "how long a request waits for a connection")
	fs.StringVar(&o.target, "target", "", "target label: the database server as dbpool_exporter names it (default: the database name)")
	fs.StringVar(&o.pool, "pool", "example", "pool label")
	if err := fs.Parse(args); err != nil {
		return err
	}
	dsn := getenv("DATABASE_URL")
	if dsn == "" {
		return errors.New("DATABASE_URL is not set")
	}
	handler, closePool, err := newService(ctx, dsn, o)
	if err != nil {
		return err
	}
	defer closePool()

	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), maxSleep+time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	logger.Info("listening", "address", ln.Addr().String())
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// newService opens the instrumented pool and returns the service's handler.
func newService(ctx context.Context, dsn string, o options) (http.Handler, func(), error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// pgx masks the password in its parse errors only on a best-effort basis.
		return nil, nil, fmt.Errorf("DATABASE_URL: %w", poolcfg.RedactError(err))
	}
	if o.maxConns < 1 {
		return nil, nil, fmt.Errorf("-max-conns %d: must be at least 1", o.maxConns)
	}
	cfg.MaxConns = int32(o.maxConns)
	// Install the acquire tracer before the pool exists: pgxpool reads it once, at creation.
	tracer := pgxpoolcollector.InstrumentConfig(cfg)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}

	// The configured acquire timeout is ours, not pgxpool's: report it.
	settings := pgxpoolcollector.SettingsOf(cfg)
	settings.Timeout = o.acquireTimeout
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		pgxpoolcollector.New(pool, tracer, pgxpoolcollector.Options{Target: o.target, Pool: o.pool, Settings: &settings}),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)

	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /work", func(w http.ResponseWriter, r *http.Request) {
		work(w, r, pool, o.acquireTimeout)
	})
	return mux, pool.Close, nil
}

// work checks a connection out (waiting at most acquireTimeout) and runs a query that holds
// it for ?sleep= seconds.
func work(w http.ResponseWriter, r *http.Request, pool *pgxpool.Pool, acquireTimeout time.Duration) {
	sleep := 0.0
	if s := r.URL.Query().Get("sleep"); s != "" {
		v, err := strconv.ParseFloat(s, 64)
		if err != nil || v < 0 || v > maxSleep.Seconds() {
			http.Error(w, fmt.Sprintf("sleep: want seconds between 0 and %g", maxSleep.Seconds()), http.StatusBadRequest)
			return
		}
		sleep = v
	}
	acquireCtx, cancel := context.WithTimeout(r.Context(), acquireTimeout)
	defer cancel()
	conn, err := pool.Acquire(acquireCtx)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			http.Error(w, "no free database connection", http.StatusServiceUnavailable)
			return
		}
		http.Error(w, "database unavailable", http.StatusInternalServerError)
		return
	}
	defer conn.Release()
	var one int
	if err := conn.QueryRow(r.Context(), "SELECT 1 FROM pg_sleep($1)", sleep).Scan(&one); err != nil {
		http.Error(w, "query failed", http.StatusInternalServerError)
		return
	}
	_, _ = io.WriteString(w, "ok\n")
}
