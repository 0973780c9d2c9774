// Command scrape is tooling, not product: it benchmarks one dbpool_exporter scrape against
// the bare activity query.
//
// It starts a throwaway PostgreSQL, opens 10, 500 and 2,000 application sessions in a
// realistic mix of states, and for each level times sequential scrapes of /metrics from two
// exporter processes (the default, whose login probe runs beside the activity query, and one
// with --no-collector.probe) next to collector.ActivityQuery run alone, once through pgx and
// once through pgbench. It prints the figures; it asserts nothing. bench/run.sh runs it.
package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/jackc/pgx/v5"

	"github.com/dbpool/dbpool_exporter/bench/benchkit"
	"github.com/dbpool/dbpool_exporter/collector"
	"github.com/dbpool/dbpool_exporter/tools/pgtest"
)

const (
	monitorRole = "bench_monitor"
	appRole     = "bench_app"
)

type options struct {
	exporter string
	backends []int
	scrapes  int
	warmup   int
	queries  int
}

func main() { os.Exit(run()) }

func run() int {
	var o options
	var levels string
	app := kingpin.New("scrape", "Benchmarks dbpool_exporter's scrape against the bare pg_stat_activity query on a throwaway PostgreSQL.")
	app.Flag("exporter", "Path to the dbpool_exporter binary.").Default("./dbpool_exporter").StringVar(&o.exporter)
	app.Flag("backends", "Comma-separated numbers of application sessions, in increasing order.").Default("10,500,2000").StringVar(&levels)
	app.Flag("scrapes", "Measured scrapes per exporter and level.").Default("100").IntVar(&o.scrapes)
	app.Flag("warmup", "Unmeasured scrapes and queries per exporter and level.").Default("10").IntVar(&o.warmup)
	app.Flag("queries", "Measured bare queries (pgx, and pgbench transactions) per level.").Default("100").IntVar(&o.queries)
	kingpin.MustParse(app.Parse(os.Args[1:]))
	var err error
	if o.backends, err = parseLevels(levels); err != nil {
		fmt.Fprintln(os.Stderr, "scrape: --backends:", err)
		return 2
	}
	if o.scrapes < 1 || o.queries < 1 || o.warmup < 0 {
		fmt.Fprintln(os.Stderr, "scrape: --scrapes and --queries must be at least 1, --warmup at least 0")
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := bench(ctx, o); err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(os.Stderr, "scrape: interrupted; sessions, exporters and PostgreSQL are gone")
			return 130
		}
		fmt.Fprintln(os.Stderr, "scrape:", err)
		return 1
	}
	return 0
}

func parseLevels(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q is not a positive number", f)
		}
		if len(out) > 0 && n <= out[len(out)-1] {
			return nil, fmt.Errorf("levels must increase: %d after %d", n, out[len(out)-1])
		}
		out = append(out, n)
	}
	return out, nil
}

// levelResult is everything measured at one number of backends.
type levelResult struct {
	backends   int
	bare       []time.Duration
	pgbenchAvg time.Duration
	exporters  []exporterResult
}

type exporterResult struct {
	label        string
	scrapes      []time.Duration
	activityJob  []time.Duration // the exporter's own dbpool_scrape_duration_seconds{collector="activity"}
	probeJob     []time.Duration
	probeFailed  int
	seen         int // sum of dbpool_server_connections in the last scrape
	seriesAll    int
	seriesDbpool int
	rssKiB       int
	hwmKiB       int
}

func bench(ctx context.Context, o options) (err error) {
	began := time.Now()
	exporterBin, err := filepath.Abs(o.exporter)
	if err != nil {
		return err
	}
	if _, err := os.Stat(exporterBin); err != nil {
		return fmt.Errorf("exporter binary: %w (run make build)", err)
	}
	work, err := os.MkdirTemp("", "dbpool-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	maxLevel := o.backends[len(o.backends)-1]
	benchkit.Say("starting a throwaway PostgreSQL (max_connections %d)", maxLevel+300)
	pg, err := pgtest.Start(pgtest.Options{MaxConnections: maxLevel + 300})
	if err != nil {
		return err
	}
	defer func() {
		benchkit.Say("stopping PostgreSQL")
		if cerr := pg.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	monitorPW, appPW := benchkit.RandomPassword(), benchkit.RandomPassword()
	if err := pg.CreateRole(monitorRole, monitorPW, false, "pg_monitor"); err != nil {
		return err
	}
	if err := pg.CreateRole(appRole, appPW, false); err != nil {
		return err
	}
	// Lock waiters queue on this table behind one session that holds it.
	if err := benchkit.CreateLockTable(ctx, pg, appRole); err != nil {
		return err
	}

	monitor, err := benchkit.Connect(ctx, pg.DSN(monitorRole, monitorPW, ""), benchkit.AppName)
	if err != nil {
		return fmt.Errorf("monitoring connection: %w", err)
	}
	defer monitor.Close(context.Background())
	var serverVersion string
	if err := monitor.QueryRow(ctx, "SHOW server_version").Scan(&serverVersion); err != nil {
		return err
	}
	benchkit.PrintHost(serverVersion)

	appCfg, err := pgx.ParseConfig(pg.DSN(appRole, appPW, ""))
	if err != nil {
		return err
	}
	sessions := benchkit.NewSessionSet(appCfg)
	defer func() {
		benchkit.Say("cancelling background queries and closing %d sessions", sessions.Len())
		sessions.Close(pg)
	}()

	monitorDSN := pg.DSN(monitorRole, monitorPW, "")
	common := []string{
		"--pool.application-name-regex=api-(?P<instance>[0-9]+)",
		"--pool.instances=10",
		"--log.level=warn",
	}
	variants := []struct{ label, flag string }{
		{"probe on (default)", ""},
		{"probe off", "--no-collector.probe"},
	}
	var exporters []*benchkit.Exporter
	defer func() {
		for _, e := range exporters {
			e.Stop()
		}
	}()
	for _, v := range variants {
		args := slices.Clone(common)
		if v.flag != "" {
			args = append(args, v.flag)
		}
		e, err := startExporter(ctx, exporterBin, v.label, monitorDSN, args)
		if err != nil {
			return err
		}
		exporters = append(exporters, e)
	}

	script := filepath.Join(work, "activity.sql")
	if err := os.WriteFile(script, []byte(collector.ActivityQuery+";\n"), 0o644); err != nil {
		return err
	}
	pgb := pgbench{
		bin:    filepath.Join(pg.BinDir, "pgbench"),
		script: script,
		host:   pg.Host, port: pg.Port,
		user: monitorRole, password: monitorPW,
	}

	client := &http.Client{Timeout: 30 * time.Second}
	var results []levelResult
	for _, n := range o.backends {
		want := benchkit.MixFor(n)
		benchkit.Say("opening sessions up to %d backends: %s", n, want)
		start := time.Now()
		if err := sessions.Grow(ctx, want); err != nil {
			return err
		}
		if err := benchkit.WaitForMix(ctx, monitor, appRole, want); err != nil {
			return err
		}
		benchkit.Say("  %d sessions ready in %.1fs; measuring", n, time.Since(start).Seconds())
		r, err := measure(ctx, o, n, client, exporters, monitor, pgb)
		if err != nil {
			return err
		}
		results = append(results, r)
	}
	printResults(o, results)
	fmt.Printf("\nmeasured in %.0fs; load average at the end %s\n", time.Since(began).Seconds(), benchkit.LoadAvg())
	return nil
}

// startExporter starts dbpool_exporter watching dsn and waits until it is healthy.
func startExporter(ctx context.Context, bin, label, dsn string, args []string) (*benchkit.Exporter, error) {
	return benchkit.StartExporter(ctx, benchkit.ExporterSpec{
		Label: label,
		Path:  bin,
		Args: func(host string, port int) []string {
			return append([]string{"--web.listen-address=" + net.JoinHostPort(host, strconv.Itoa(port))}, args...)
		},
		Env:       []string{"DATA_SOURCE_NAME=" + dsn},
		ReadyPath: "/-/healthy",
	})
}
