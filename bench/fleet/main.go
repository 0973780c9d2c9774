// Command fleet is tooling, not product: it measures one dbpool_exporter holding a fleet of
// targets through /probe (docs/sharding.md, `make bench-fleet`).
//
// It starts a throwaway PostgreSQL with max_connections raised, configures 200 targets on it
// (every one a name of its own with its own monitoring connection, as 200 servers would be),
// and for each exporter setting probes every target once to connect them all, then in rounds.
// It reads the exporter's RSS and Go heap before and after connecting, its CPU time over the
// measured probes, and the monitoring connections the server sees, and prints memory per
// connected target and CPU per probe next to their targets. It asserts nothing.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/alecthomas/kingpin/v2"

	"github.com/dbpool/dbpool_exporter/bench/benchkit"
	"github.com/dbpool/dbpool_exporter/tools/pgtest"
)

const monitorRole = "bench_monitor"

type options struct {
	exporter string
	targets  int
	rounds   int
	parallel int
}

// setting is one way of running the exporter for the fleet.
type setting struct {
	label string
	args  []string
	// connects is how many targets should hold a connection after a round.
	connects int
}

func main() { os.Exit(run()) }

func run() int {
	var o options
	app := kingpin.New("fleet", "Measures one dbpool_exporter probing a fleet of targets through /probe on a throwaway PostgreSQL.")
	app.Flag("exporter", "Path to the dbpool_exporter binary.").Default("./dbpool_exporter").StringVar(&o.exporter)
	app.Flag("targets", "Targets in the exporter's configuration, all on one server.").Default("200").IntVar(&o.targets)
	app.Flag("rounds", "Measured rounds; each probes every target once.").Default("10").IntVar(&o.rounds)
	app.Flag("parallel", "Probes in flight at once, as Prometheus spreads its scrapes.").Default("4").IntVar(&o.parallel)
	kingpin.MustParse(app.Parse(os.Args[1:]))
	abs, err := filepath.Abs(o.exporter)
	if err == nil {
		_, err = os.Stat(abs)
	}
	if err != nil || o.targets < 1 || o.rounds < 1 || o.parallel < 1 {
		fmt.Fprintf(os.Stderr, "fleet: --exporter must exist (run make build: %v); --targets, --rounds, --parallel at least 1\n", err)
		return 2
	}
	o.exporter = abs
	return benchkit.Run(app.Name, func(ctx context.Context) error { return bench(ctx, o) })
}

func bench(ctx context.Context, o options) (err error) {
	began := time.Now()
	// Every target holds one monitoring connection and each probe in flight logs in once more.
	// The background sampler (--health.sample-interval) probes every connected target at once:
	// on 200 servers that is one login each, here all 200 land on the one server.
	maxConns := 2*o.targets + 2*o.parallel + 20
	benchkit.Say("starting a throwaway PostgreSQL with max_connections %d", maxConns)
	pg, err := pgtest.Start(pgtest.Options{MaxConnections: maxConns})
	if err != nil {
		return err
	}
	defer benchkit.Stop(&err, "PostgreSQL", pg)
	password := benchkit.RandomPassword()
	if err := pg.CreateRole(monitorRole, password, false, "pg_monitor"); err != nil {
		return err
	}
	admin, err := benchkit.Connect(ctx, pg.SuperuserDSN("postgres"), benchkit.AppName)
	if err != nil {
		return err
	}
	defer admin.Close(context.Background())
	var version string
	if err := admin.QueryRow(ctx, "SHOW server_version").Scan(&version); err != nil {
		return err
	}

	work, err := os.MkdirTemp("", "dbpool-bench-fleet-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	names := make([]string, o.targets)
	var cfg strings.Builder
	cfg.WriteString("auth_modules:\n  monitor:\n    user: " + monitorRole + "\n    password_env: MONITOR_PASSWORD\n    options: {sslmode: disable}\ntargets:\n")
	for i := range names {
		names[i] = fmt.Sprintf("db-%03d", i)
		fmt.Fprintf(&cfg, "  - {name: %s, dsn: 'postgres://%s:%d/postgres', auth_module: monitor}\n", names[i], pg.Host, pg.Port)
	}
	cfgFile := filepath.Join(work, "fleet.yml")
	if err := os.WriteFile(cfgFile, []byte(cfg.String()), 0o600); err != nil {
		return err
	}

	all := strconv.Itoa(o.targets)
	settings := []setting{
		{label: "cap " + all + ", login probe on", args: []string{"--target.max-connected=" + all}, connects: o.targets},
		{label: "cap " + all + ", login probe off", args: []string{"--target.max-connected=" + all, "--no-collector.probe"}, connects: o.targets},
		{label: "cap 50 (default)", connects: min(50, o.targets)},
	}
	benchkit.PrintHost(version)
	fmt.Printf("fleet: %d targets on one PostgreSQL, %d measured rounds of %d probes, %d in flight\n\n", o.targets, o.rounds, o.targets, o.parallel)
	m := &meter{o: o, names: names, admin: admin}
	var results []result
	for _, s := range settings {
		benchkit.Say("exporter with %s", s.label)
		e, err := benchkit.StartExporter(ctx, benchkit.ExporterSpec{
			Label: s.label, Path: o.exporter, ReadyPath: "/-/healthy",
			Env: []string{"MONITOR_PASSWORD=" + password},
			Args: func(host string, port int) []string {
				return append([]string{"--web.listen-address=" + host + ":" + strconv.Itoa(port), "--config.file=" + cfgFile,
					"--no-metrics.scrape-targets", "--log.level=warn"}, s.args...)
			},
		})
		if err != nil {
			return err
		}
		r, err := m.measure(ctx, e, s)
		e.Stop()
		if err != nil {
			return err
		}
		results = append(results, r)
	}
	printResults(o, results)
	fmt.Printf("\nmeasured in %.0fs; load average at the end %s\n", time.Since(began).Seconds(), benchkit.LoadAvg())
	return nil
}
