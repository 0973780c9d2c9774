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
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/alecthomas/kingpin/v2"

	"github.com/dbpool/dbpool_exporter/bench/benchkit"
	"github.com/dbpool/dbpool_exporter/collector"
	"github.com/dbpool/dbpool_exporter/tools/pgtest"
)

const (
	monitorRole = "bench_monitor"
	appRole     = "bench_app"
)

type options struct {
	benchkit.Flags
	queries int
}

func main() { os.Exit(run()) }

func run() int {
	var o options
	app := kingpin.New("scrape", "Benchmarks dbpool_exporter's scrape against the bare pg_stat_activity query on a throwaway PostgreSQL.")
	o.Register(app, "10,500,2000", "")
	app.Flag("queries", "Measured bare queries (pgx, and pgbench transactions) per level.").Default("100").IntVar(&o.queries)
	return benchkit.Main(app, &o.Flags, benchkit.AtLeast("--queries", &o.queries, 1), func(ctx context.Context) error { return bench(ctx, o) })
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
	exporterBin := o.Exporter
	work, err := os.MkdirTemp("", "dbpool-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	maxLevel := o.Backends[len(o.Backends)-1]
	benchkit.Say("starting a throwaway PostgreSQL (max_connections %d)", maxLevel+300)
	pg, err := pgtest.Start(pgtest.Options{MaxConnections: maxLevel + 300})
	if err != nil {
		return err
	}
	defer benchkit.Stop(&err, "PostgreSQL", pg)
	roles, err := benchkit.Prepare(ctx, pg, monitorRole, appRole)
	if err != nil {
		return err
	}
	monitor := roles.Monitor
	defer monitor.Close(context.Background())
	sessions := benchkit.NewSessionSet(roles.App)
	defer func() {
		benchkit.Say("cancelling background queries and closing %d sessions", sessions.Len())
		sessions.Close(pg)
	}()

	monitorDSN := roles.MonitorDSN
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
		user: monitorRole, password: roles.Monitor.Config().Password,
	}

	client := &http.Client{Timeout: 30 * time.Second}
	var results []levelResult
	for _, n := range o.Backends {
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
