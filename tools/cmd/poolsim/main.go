// Command poolsim is tooling, not product: a simulated application whose connections go through
// SQLAlchemy-style QueuePools, one per instance, configured by the
// DB_* variables. It gives the exporter something real to watch, and prints
// and serves the pool's true numbers so they can be compared with what the
// exporter reports. With --pool.impl=pgxpool the instances use real pgxpools
// instrumented with dbpool_exporter's pgxpool source, whose exact dbpool_*
// series it serves at /metrics.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/promslog"
	promslogflag "github.com/prometheus/common/promslog/flag"
	"github.com/prometheus/common/version"

	"github.com/dbpool/dbpool_exporter/tools/poolsim"
)

func main() { os.Exit(run()) }

// setting is the value of a pool flag whose default can come from one of the
// DB_* variables. kingpin's own parse errors do not say which flag or
// variable was wrong, and with a value read from an .env file that is the
// first thing a user needs to know.
type setting struct {
	label  string // "--pool.size ($DB_POOL_SIZE)"
	parse  func(string) error
	str    func() string
	isBool bool
}

func (v *setting) Set(s string) error {
	if err := v.parse(strings.TrimSpace(s)); err != nil {
		return fmt.Errorf("%s: %w", v.label, err)
	}
	return nil
}

func (v *setting) String() string   { return v.str() }
func (v *setting) IsBoolFlag() bool { return v.isBool }

func poolFlag(app *kingpin.Application, name, env, def, help string, v *setting) {
	v.label = "--" + name + " ($" + env + ")"
	app.Flag(name, help).Envar(env).Default(def).SetValue(v)
}

func intSetting(p *int) *setting {
	return &setting{
		parse: func(s string) error {
			n, err := strconv.Atoi(s)
			if err != nil {
				return fmt.Errorf("%q is not an integer", s)
			}
			*p = n
			return nil
		},
		str: func() string { return strconv.Itoa(*p) },
	}
}

// parseSeconds accepts a bare number of seconds, because
// DB_POOL_TIMEOUT and DB_POOL_RECYCLE are written "30" and "3600", or a Go
// duration such as 30s.
func parseSeconds(s string) (time.Duration, error) {
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		return time.Duration(f * float64(time.Second)), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q is neither a number of seconds nor a duration such as 30s", s)
	}
	return d, nil
}

func secondsSetting(p *time.Duration) *setting {
	return &setting{
		parse: func(s string) error {
			d, err := parseSeconds(s)
			if err == nil {
				*p = d
			}
			return err
		},
		str: func() string { return p.String() },
	}
}

// parseBool accepts what a Python settings loader (pydantic) accepts
// in an .env file, so the same file configures both.
func parseBool(s string) (bool, error) {
	switch strings.ToLower(s) {
	case "1", "t", "true", "y", "yes", "on":
		return true, nil
	case "0", "f", "false", "n", "no", "off":
		return false, nil
	}
	return false, fmt.Errorf("%q is not a boolean (true/false, yes/no, on/off, 1/0)", s)
}

func boolSetting(p *bool) *setting {
	return &setting{
		parse: func(s string) error {
			b, err := parseBool(s)
			if err == nil {
				*p = b
			}
			return err
		},
		str:    func() string { return strconv.FormatBool(*p) },
		isBool: true,
	}
}

func run() int {
	cfg := poolsim.DefaultConfig()
	app := kingpin.New("poolsim", "A simulated application that holds PostgreSQL connections through SQLAlchemy-style QueuePools "+
		"(one independent pool per instance, application_name <app-name>-<index>), for demos and end-to-end tests of dbpool_exporter. "+
		"Pool settings default to the DB_* environment variables. "+
		"Prints the true pool numbers every --report-interval and serves them as JSON at /status. "+
		"With --pool.impl=pgxpool each instance uses a real pgxpool instead, and its exact dbpool_* series (checkout times, "+
		"pending checkouts, timeouts) are served at --metrics.listen, next to what the exporter's activity source estimates for the same backends.")
	app.HelpFlag.Short('h')
	app.Version(version.Print("poolsim"))

	app.Flag("dsn", "PostgreSQL URL or key=value connection string of the database to load.").
		Envar("DATABASE_URL").StringVar(&cfg.DSN)
	app.Flag("app-name", "Prefix of application_name; instance i connects as <app-name>-<i>.").
		Default(cfg.AppName).StringVar(&cfg.AppName)
	app.Flag("instances", "Number of simulated processes, each with its own independent pool.").
		Default(strconv.Itoa(cfg.Instances)).IntVar(&cfg.Instances)

	impl := app.Flag("pool.impl", "Pool implementation of every instance: queuepool (SQLAlchemy's QueuePool rebuilt on raw pgx connections) "+
		"or pgxpool (a real github.com/jackc/pgx/v5/pgxpool pool, instrumented with dbpool_exporter's pgxpool source). "+
		"pgxpool has no overflow concept: MaxConns is pool.size + pool.max-overflow, and every connection it opens stays open "+
		"until idle for 30 minutes or older than pool.recycle; connections open on demand (MinConns 0), as QueuePool's do. "+
		"pool.timeout is the deadline of each Acquire (must be more than 0); pool.max-overflow -1 (unlimited) is refused; "+
		"pool.pre-ping keeps pgxpool's own ping of connections idle for more than a second.").
		Default(string(poolsim.ImplQueuePool)).Enum(string(poolsim.ImplQueuePool), string(poolsim.ImplPgxpool))
	poolFlag(app, "pool.size", "DB_POOL_SIZE", "10",
		"pool_size: permanent connections per instance, opened on demand.", intSetting(&cfg.Pool.Size))
	poolFlag(app, "pool.max-overflow", "DB_MAX_OVERFLOW", "20",
		"max_overflow: extra connections per instance, closed on return; -1 is unlimited (queuepool only; pgxpool adds it to MaxConns).", intSetting(&cfg.Pool.MaxOverflow))
	poolFlag(app, "pool.timeout", "DB_POOL_TIMEOUT", "30",
		"pool_timeout: how long a checkout waits for a connection before failing with a pool timeout (seconds, or a duration such as 500ms).", secondsSetting(&cfg.Pool.Timeout))
	poolFlag(app, "pool.recycle", "DB_POOL_RECYCLE", "3600",
		"pool_recycle: a connection older than this is replaced at checkout (seconds, or a duration); 0 or -1 disables.", secondsSetting(&cfg.Pool.Recycle))
	poolFlag(app, "pool.pre-ping", "DB_POOL_PRE_PING", "true",
		"pool_pre_ping: ping each connection at checkout and replace it if dead (default true; --no-pool.pre-ping disables).", boolSetting(&cfg.Pool.PrePing))

	app.Flag("rate", "Requests per second per instance; 0 sends none.").
		Default("10").Float64Var(&cfg.Rate)
	arrival := app.Flag("arrival", "Spacing of requests: poisson (random, bursty) or even.").
		Default(string(poolsim.ArrivalPoisson)).Enum(string(poolsim.ArrivalPoisson), string(poolsim.ArrivalEven))
	app.Flag("query-time", "Each request runs SELECT pg_sleep(query-time) on its connection.").
		Default("50ms").DurationVar(&cfg.QueryTime)
	app.Flag("long-query-share", "Share (0..1) of requests that run a long query instead.").
		Default("0").Float64Var(&cfg.LongQueryShare)
	app.Flag("long-query-time", "Duration of a long query.").
		Default("40s").DurationVar(&cfg.LongQueryTime)
	app.Flag("idle-in-tx-share", "Share (0..1) of requests that run BEGIN; SELECT 1 and then stay idle in transaction.").
		Default("0").Float64Var(&cfg.IdleInTxShare)
	app.Flag("idle-in-tx-time", "How long such a request stays idle in transaction before COMMIT.").
		Default("30s").DurationVar(&cfg.IdleInTxTime)
	app.Flag("hold-extra", "How long each request keeps its connection checked out after its statements, idle outside a transaction "+
		"(the server then reports it idle: pg_stat_activity undercounts connections in use).").
		Default("0s").DurationVar(&cfg.HoldExtra)
	app.Flag("duration", "Stop after this long; 0 runs until SIGINT or SIGTERM.").
		Default("0s").DurationVar(&cfg.Duration)
	app.Flag("max-inflight", "Most requests in flight over all instances; further requests are dropped and counted.").
		Default(strconv.Itoa(cfg.MaxInflight)).IntVar(&cfg.MaxInflight)

	statusListen := app.Flag("status.listen", "Address to serve the true pool numbers as JSON at /status, e.g. :9188; empty disables.").
		Default("").String()
	metricsListen := app.Flag("metrics.listen", "Address to serve the pgxpool pools' dbpool_* series (source pgxpool) at /metrics, e.g. :9189; "+
		"empty disables. The pool label is <app-name> with one instance and <app-name>-<i> with several (the exporter's activity source "+
		"reports all instances as one pool). With --pool.impl=queuepool there are no such series. May equal --status.listen.").
		Default("").String()
	app.Flag("metrics.target", "Value of the target label of those series: the target name of the dbpool_exporter that watches the same server, so that both views line up.").
		Default(cfg.MetricsTarget).StringVar(&cfg.MetricsTarget)
	reportInterval := app.Flag("report-interval", "Print one line of pool numbers this often (avg_checkout_ms covers the interval); 0 disables.").
		Default("10s").Duration()

	logCfg := &promslog.Config{}
	promslogflag.AddFlags(app, logCfg)
	kingpin.MustParse(app.Parse(os.Args[1:]))
	cfg.Arrival = poolsim.Arrival(*arrival)
	cfg.PoolImpl = poolsim.PoolImpl(*impl)
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg

	logger := promslog.New(logCfg)
	cfg.Logger = logger
	if err := cfg.Validate(); err != nil {
		if cfg.DSN == "" {
			err = errors.Join(err, errors.New("set --dsn or DATABASE_URL"))
		}
		logger.Error("invalid configuration", "err", err)
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		// After the first signal, restore the default handling so that a
		// second Ctrl-C kills a shutdown that hangs on an unresponsive server.
		<-ctx.Done()
		stop()
	}()
	sim := poolsim.New(cfg)

	if *metricsListen != "" && cfg.PoolImpl != poolsim.ImplPgxpool {
		logger.Warn("--metrics.listen serves no dbpool_* series with --pool.impl=queuepool; use --pool.impl=pgxpool", "address", *metricsListen)
	}
	srvs, err := serve(*statusListen, *metricsListen, sim, reg, logger)
	if err != nil {
		logger.Error("cannot listen", "err", err)
		return 1
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for _, srv := range srvs {
			_ = srv.Shutdown(sctx) // exiting anyway; a slow client only loses its answer
		}
	}()

	reportDone := make(chan struct{})
	reportStop := make(chan struct{})
	go func() {
		defer close(reportDone)
		report(os.Stdout, sim, *reportInterval, reportStop)
	}()
	err = sim.Run(ctx)
	close(reportStop)
	<-reportDone
	if err != nil {
		logger.Error("simulation failed", "err", err)
		return 1
	}
	return 0
}

// report prints a line every interval and a final line when stop closes.
func report(w io.Writer, sim *poolsim.Sim, interval time.Duration, stop <-chan struct{}) {
	if interval <= 0 {
		<-stop
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	var prev poolsim.Stats
	for {
		select {
		case <-stop:
			fmt.Fprintln(w, formatLine(sim.Stats(), prev))
			return
		case <-t.C:
			cur := sim.Stats()
			fmt.Fprintln(w, formatLine(cur, prev))
			prev = cur
		}
	}
}

// formatLine renders the summed numbers; counters are totals since start,
// avg_checkout_ms is the mean checkout time since prev.
func formatLine(cur, prev poolsim.Stats) string {
	t, p := cur.Total, prev.Total
	avg := 0.0
	if n := t.CheckoutsTotal - p.CheckoutsTotal; n > 0 {
		avg = (t.CheckoutWaitSecondsTotal - p.CheckoutWaitSecondsTotal) / float64(n) * 1000
	}
	line := fmt.Sprintf("poolsim: instances=%d checked_out=%d open=%d overflow=%d pending=%d requests=%d checkouts=%d timeouts=%d errors=%d dropped=%d avg_checkout_ms=%.1f",
		cur.Instances, t.CheckedOut, t.Open, t.Overflow, t.Pending, t.RequestsTotal, t.CheckoutsTotal, t.TimeoutsTotal, t.ErrorsTotal, t.DroppedTotal, avg)
	if t.ErrorsTotal > p.ErrorsTotal && cur.LastError != "" {
		line += " last_error=" + strconv.Quote(cur.LastError)
	}
	return line
}

// serve starts the HTTP servers: /status at statusAddr and /metrics at
// metricsAddr, one server when both are the same; an empty address disables
// its path. On error no server is left running.
func serve(statusAddr, metricsAddr string, sim *poolsim.Sim, reg *prometheus.Registry, logger *slog.Logger) ([]*http.Server, error) {
	type route struct {
		addr, path, what string
		h                http.Handler
	}
	var routes []route
	if statusAddr != "" {
		routes = append(routes, route{statusAddr, "/status", "pool status", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			enc := json.NewEncoder(w)
			enc.SetIndent("", "  ")
			_ = enc.Encode(sim.Stats()) // the client went away; nothing to do
		})})
	}
	if metricsAddr != "" {
		routes = append(routes, route{metricsAddr, "/metrics", "pool metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{})})
	}
	var (
		srvs  []*http.Server
		muxes = map[string]*http.ServeMux{}
		lns   = map[string]net.Listener{}
		order []string
	)
	for _, r := range routes {
		if muxes[r.addr] == nil {
			ln, err := net.Listen("tcp", r.addr)
			if err != nil {
				for _, ln := range lns {
					_ = ln.Close() // nothing served yet
				}
				return nil, fmt.Errorf("%s at %s: %w", r.path, r.addr, err)
			}
			muxes[r.addr], lns[r.addr] = http.NewServeMux(), ln
			order = append(order, r.addr)
		}
		muxes[r.addr].Handle("GET "+r.path, r.h)
		logger.Info("serving "+r.what, "address", lns[r.addr].Addr().String(), "path", r.path)
	}
	for _, addr := range order {
		srv := &http.Server{Handler: muxes[addr], ReadHeaderTimeout: 10 * time.Second}
		srvs = append(srvs, srv)
		go func() {
			if err := srv.Serve(lns[addr]); err != nil && !errors.Is(err, http.ErrServerClosed) {
				logger.Error("HTTP server failed", "address", addr, "err", err)
			}
		}()
	}
	return srvs, nil
}
