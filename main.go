// Command dbpool_exporter exports the health of PostgreSQL connection pools to Prometheus.
package main

import (
	"context"
	"errors"
	"fmt"
	"html"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	versioncollector "github.com/prometheus/client_golang/prometheus/collectors/version"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/promslog"
	promslogflag "github.com/prometheus/common/promslog/flag"
	"github.com/prometheus/common/version"
	"github.com/prometheus/exporter-toolkit/web"
	"github.com/prometheus/exporter-toolkit/web/kingpinflag"

	"github.com/dbpool/dbpool_exporter/collector"
	"github.com/dbpool/dbpool_exporter/internal/health"
	"github.com/dbpool/dbpool_exporter/poolcfg"
)

const exporterName = "dbpool_exporter"

// defaultListenAddress avoids 9187 (postgres_exporter) and 9127 (pgbouncer_exporter).
const defaultListenAddress = ":9930"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is main without os.Exit, so that deferred cleanup runs and tests can call it.
func run(args []string, stdout, stderr io.Writer) int {
	app := kingpin.New(exporterName, "Prometheus exporter for PostgreSQL connection pools: utilization, overflow, checkout time, timeouts, connection states and long queries.")
	app.UsageWriter(stdout)
	app.ErrorWriter(stderr)
	app.Terminate(nil)
	webFlags := kingpinflag.AddFlags(app, defaultListenAddress)
	f := addFlags(app)
	logCfg := &promslog.Config{Writer: stderr}
	promslogflag.AddFlags(app, logCfg)
	app.Version(version.Print(exporterName))
	app.HelpFlag.Short('h')
	// The daemon is the default command, so that existing invocations keep working.
	app.Command("serve", "Run the exporter daemon (the default command).").Default()
	adviseCmd := app.Command("advise", adviseHelp)
	af := addAdviseFlags(adviseCmd)

	exited := false
	code := 0
	app.Terminate(func(c int) { exited, code = true, c })
	command, err := app.Parse(args)
	if err != nil {
		fmt.Fprintf(stderr, "%s: error: %s\n", exporterName, err)
		return 2
	}
	if exited { // --help or --version
		return code
	}
	logger := promslog.New(logCfg)
	f.warnDeprecated(logger)
	if command == adviseCmd.FullCommand() && af.from != "" {
		return runAdviseFrom(af, stdout, stderr) // the daemon's configuration is the daemon's
	}

	cfg, err := f.loadConfig(os.LookupEnv)
	if err != nil {
		logger.Error("invalid configuration", "err", err)
		return 1
	}
	if f.configCheck {
		fmt.Fprintf(stdout, "configuration OK: %d target(s), %d pool(s), %d pgbouncer(s), %d app(s), %d auth module(s)\n",
			len(cfg.Targets), len(cfg.Pools), len(cfg.PgBouncers), len(cfg.Apps), len(cfg.AuthModules))
		return 0
	}
	if command == adviseCmd.FullCommand() {
		return runAdvise(f, af, cfg, logger, stdout, stderr)
	}
	logger.Info("starting "+exporterName, "version", version.Info(), "build_context", version.BuildContext())

	// What must outlive a reload lives here, and every exporter a reload builds uses it: the
	// pool history, the fleet series' counters and the app pools' counters.
	pools := health.NewManager(health.Options{Window: f.healthWindow})
	holder := &exporterHolder{}
	keep := lasting{observer: pools.Observe, fleet: collector.NewFleetMetrics(holder.get), appCounters: collector.NewAppCounters()}
	exp, err := f.buildExporter(cfg, logger, keep)
	if err != nil {
		logger.Error("cannot start", "err", err)
		return 1
	}
	holder.exp = exp
	defer holder.close()
	f.warnUncapped(cfg, logger)

	static := prometheus.NewRegistry()
	static.MustRegister(
		versioncollector.NewCollector(exporterName),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		pools,
		keep.fleet,
	)

	// The sampler keeps the pool history going when Prometheus scrapes rarely; it stops
	// before the exporter's connections are closed.
	samplerCtx, stopSampler := context.WithCancel(context.Background())
	var sampler sync.WaitGroup
	sampler.Go(func() {
		pools.RunSampler(samplerCtx, f.healthSampleInterval, f.maxTimeout, func(ctx context.Context) {
			if f.scrapeTargets {
				holder.get().Scrape(ctx)
			} else {
				// Targets that /probe scrapes: sample those connected now, so that the
				// sampler neither connects a whole fleet nor keeps idle targets connected.
				holder.get().ScrapeConnected(ctx)
			}
		})
	})
	defer func() { stopSampler(); sampler.Wait() }()

	// The landing page lists the targets, so a reload builds a new one.
	var landing atomic.Pointer[http.Handler]
	setLanding := func(cfg *poolcfg.Config) error {
		page, err := web.NewLandingPage(web.LandingConfig{
			Name:        exporterName,
			Description: "Prometheus exporter for PostgreSQL connection pools",
			Version:     version.Info(),
			Links: []web.LandingLinks{
				{Address: f.metricsPath, Text: "Metrics"},
				{Address: health.PagePath, Text: "Pool health"},
				{Address: health.PoolsPath, Text: "Pool health (JSON API)"},
			},
			ExtraHTML: targetsHTML(cfgTargets(cfg)),
		})
		if err != nil {
			return fmt.Errorf("landing page: %w", err)
		}
		var h http.Handler = page
		landing.Store(&h)
		return nil
	}
	if err := setLanding(cfg); err != nil {
		logger.Error("cannot start", "err", err)
		return 1
	}
	reload := func() error {
		newCfg, err := f.loadConfig(os.LookupEnv)
		if err != nil {
			return err
		}
		newExp, err := f.buildExporter(newCfg, logger, keep)
		if err != nil {
			return err
		}
		if err := setLanding(newCfg); err != nil {
			newExp.Close()
			return err
		}
		holder.swap(newExp)
		f.warnUncapped(newCfg, logger)
		logger.Info("configuration reloaded", "targets", len(newCfg.Targets), "pools", len(newCfg.Pools))
		return nil
	}

	mux := http.NewServeMux()
	metrics := metricsHandler(holder.get, static, f.timeoutOffset, f.maxTimeout, logger)
	if !f.scrapeTargets {
		metrics = promhttp.HandlerFor(static, promhttp.HandlerOpts{
			ErrorLog:      slog.NewLogLogger(logger.Handler(), slog.LevelError),
			ErrorHandling: promhttp.ContinueOnError,
		})
	}
	mux.Handle(f.metricsPath, promhttp.InstrumentMetricHandler(static, metrics))
	mux.Handle(multiTargetPath, multiTargetHandler(holder.get, f.timeoutOffset, f.maxTimeout, logger))
	mux.HandleFunc("/-/reload", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.WriteHeader(http.StatusMethodNotAllowed)
			fmt.Fprintln(w, "This endpoint requires a POST request.")
			return
		}
		if err := reload(); err != nil {
			logger.Error("reload failed, keeping the running configuration", "err", err)
			http.Error(w, "reload failed: "+err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprintln(w, "configuration reloaded")
	})
	mux.HandleFunc("/-/healthy", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "Healthy") })
	mux.Handle(health.APIPrefix, pools.Handler())
	mux.Handle(health.PagePath, pools.Handler())
	if f.metricsPath != "/" {
		mux.Handle("/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { (*landing.Load()).ServeHTTP(w, r) }))
	}

	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	serveErr := make(chan error, 1)
	go func() { serveErr <- web.ListenAndServe(srv, webFlags, logger) }()

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	for {
		select {
		case err := <-serveErr:
			if err != nil && !errors.Is(err, http.ErrServerClosed) {
				logger.Error("web server failed", "err", err)
				return 1
			}
			return 0
		case s := <-sigs:
			if s == syscall.SIGHUP {
				if err := reload(); err != nil {
					logger.Error("reload failed, keeping the running configuration", "err", err)
				}
				continue
			}
			logger.Info("shutting down", "signal", s.String())
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err := srv.Shutdown(ctx)
			cancel()
			if err != nil {
				logger.Error("graceful shutdown failed", "err", err)
				return 1
			}
			return 0
		}
	}
}

// exporterHolder lets a reload swap the exporter while scrapes run.
type exporterHolder struct {
	mu  sync.RWMutex
	exp *collector.Exporter
}

func (h *exporterHolder) get() *collector.Exporter {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.exp
}

func (h *exporterHolder) swap(e *collector.Exporter) {
	h.mu.Lock()
	old := h.exp
	h.exp = e
	h.mu.Unlock()
	// In-flight scrapes of the old exporter end by their deadline; closing waits for the
	// connections they hold.
	go old.Close()
}

func (h *exporterHolder) close() { h.get().Close() }

// metricsHandler scrapes all targets within the deadline Prometheus announces, so that a slow
// database yields dbpool_up 0 instead of a failed scrape.
func metricsHandler(exp func() *collector.Exporter, static prometheus.Gatherer, offset, maxTimeout time.Duration, logger *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		timeout := collector.ScrapeTimeout(r.Header.Get("X-Prometheus-Scrape-Timeout-Seconds"), offset, maxTimeout)
		ctx, cancel := context.WithTimeout(r.Context(), timeout)
		defer cancel()
		reg := prometheus.NewRegistry()
		if err := reg.Register(exp().ScrapeCollector(ctx)); err != nil {
			logger.Error("registering scrape collector", "err", err)
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		promhttp.HandlerFor(prometheus.Gatherers{static, reg}, promhttp.HandlerOpts{
			ErrorLog:      slog.NewLogLogger(logger.Handler(), slog.LevelError),
			ErrorHandling: promhttp.ContinueOnError,
		}).ServeHTTP(w, r)
	})
}

// multiTargetPath serves one target's metrics, /probe?target=NAME: Prometheus' multi-target
// exporter pattern, whose path blackbox_exporter named. (The exporter's own probe is the
// login it times on every scrape of a PostgreSQL target, collector "probe".)
const multiTargetPath = "/probe"

// multiTargetHandler scrapes the one configured target named by the target parameter,
// under the same deadline as metricsHandler, and answers with that target's metrics only
// (nothing process-wide: those are on the telemetry path). A missing or unknown name is a
// 400, before anything connects.
func multiTargetHandler(exp func() *collector.Exporter, offset, maxTimeout time.Duration, logger *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name := r.URL.Query().Get("target")
		e := exp()
		switch {
		case name == "":
			http.Error(w, "missing parameter target: /probe?target=NAME, where NAME is a target or pgbouncer name of the configuration (the landing page lists them)", http.StatusBadRequest)
			return
		case !e.HasTarget(name):
			// Never echo what looks like a connection string: it may hold a password, and
			// this exporter takes only names (the credentials stay in its configuration).
			shown := strconv.Quote(name)
			if strings.Contains(name, "://") || strings.Contains(name, "=") || len(name) > 200 {
				shown = "(a connection string?)"
			}
			http.Error(w, "unknown target "+shown+": /probe takes the name of a configured target or pgbouncer, not a DSN (the landing page lists them)", http.StatusBadRequest)
			return
		}
		timeout := collector.ScrapeTimeout(r.Header.Get("X-Prometheus-Scrape-Timeout-Seconds"), offset, maxTimeout)
		ctx, cancel := context.WithTimeout(r.Context(), timeout)
		defer cancel()
		c, err := e.TargetCollector(ctx, name)
		if err != nil { // the configuration was reloaded meanwhile
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		reg := prometheus.NewRegistry()
		if err := reg.Register(c); err != nil {
			logger.Error("registering target collector", "target", name, "err", err)
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		promhttp.HandlerFor(reg, promhttp.HandlerOpts{
			ErrorLog:      slog.NewLogLogger(logger.Handler(), slog.LevelError),
			ErrorHandling: promhttp.ContinueOnError,
		}).ServeHTTP(w, r)
	})
}

func targetsHTML(targets []landingItem) string {
	if len(targets) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("<h2>Targets</h2><ul>")
	for _, t := range targets {
		b.WriteString("<li>" + html.EscapeString(t.text))
		if t.target != "" {
			b.WriteString(` <a href="` + html.EscapeString(multiTargetPath+"?target="+url.QueryEscape(t.target)) + `">metrics</a>`)
		}
		b.WriteString("</li>")
	}
	b.WriteString("</ul>")
	return b.String()
}
