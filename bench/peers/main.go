// Command peers is tooling, not product: it measures dbpool_exporter next to the exporters
// users would otherwise run, Debian's prometheus-postgres-exporter and
// prometheus-pgbouncer-exporter, on the same throwaway PostgreSQL and PgBouncer.
//
// At 10, 500, 2,000 (and 5,000 when the machine holds it) client backends in the mix of
// bench/scrape, it scrapes every exporter in turn, round by round, next to the bare activity
// query, and counts per exporter what the server saw: statements (pg_stat_statements, loaded
// with shared_preload_libraries), backend-status reads, logins (log_connections) and the
// backends each holds, plus the exporter's CPU time and memory from /proc. It prints the
// figures next to the targets of issue 9; it asserts nothing. See bench/README.md.
package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/jackc/pgx/v5"

	"github.com/dbpool/dbpool_exporter/bench/benchkit"
	"github.com/dbpool/dbpool_exporter/tools/childproc"
	"github.com/dbpool/dbpool_exporter/tools/pgtest"
)

const (
	appRole     = "bench_app"
	monitorRole = "bench_monitor" // the bare query and the benchmark's own sampling
	// bouncerRole is the role of the clients through PgBouncer, apart from appRole whose
	// sessions make up the levels.
	bouncerRole = "bench_bouncer_app"
	// pgbouncerClients are application clients kept open through PgBouncer, so that its
	// pools have something to show.
	pgbouncerClients = 10
)

type options struct {
	benchkit.Flags
	postgresExporter, pgbouncerExporter string
	distinct                            int
	budget                              time.Duration
}

func main() {
	var o options
	app := kingpin.New("peers", "Measures dbpool_exporter next to prometheus-postgres-exporter and prometheus-pgbouncer-exporter on a throwaway PostgreSQL and PgBouncer.")
	o.Register(app, "10,500,2000,5000", " Levels above 2000 are skipped, with the reason, when memory or --budget would not hold them.")
	app.Flag("postgres-exporter", "Path to Debian's postgres_exporter.").Default("/usr/bin/prometheus-postgres-exporter").StringVar(&o.postgresExporter)
	app.Flag("pgbouncer-exporter", "Path to Debian's pgbouncer exporter.").Default("/usr/bin/prometheus-pgbouncer-exporter").StringVar(&o.pgbouncerExporter)
	app.Flag("distinct", "Distinct application_names for the series-count check (also half of it).").Default("2000").IntVar(&o.distinct)
	app.Flag("budget", "Time after which levels above 2000 backends are not started.").Default("6m").DurationVar(&o.budget)
	os.Exit(benchkit.Main(app, &o.Flags, benchkit.AtLeast("--distinct", &o.distinct, 2), func(ctx context.Context) error { return bench(ctx, o) }))
}

// peer is one exporter under measurement: how to start it, which role it logs in as (so that
// the server's statistics tell the exporters apart), and what it has measured.
type peer struct {
	label    string
	side     string // "postgres" or "pgbouncer"
	role     string // PostgreSQL role or PgBouncer console user it logs in as
	spec     benchkit.ExporterSpec
	proc     *benchkit.Exporter
	failed   string // why it is not measured (any more)
	dbpool   bool
	statsSrc string // how statements per scrape are known
}

// startPostgres starts the cluster with max_connections for the largest level; when that
// does not start, it tries the largest level up to 2000 and says so.
func startPostgres(levels []int) (*pgtest.Postgres, []int, error) {
	conf := map[string]string{
		"shared_preload_libraries": "pg_stat_statements",
		"pg_stat_statements.max":   "10000",
		"log_connections":          "on",
	}
	maxLevel := levels[len(levels)-1]
	pg, err := pgtest.Start(pgtest.Options{MaxConnections: maxLevel + 300, ExtraConf: conf})
	if err == nil || maxLevel <= 2000 {
		return pg, levels, err
	}
	var fit []int
	for _, n := range levels {
		if n <= 2000 {
			fit = append(fit, n)
		}
	}
	fmt.Printf("skipped: %d backends: PostgreSQL did not start with max_connections %d: %s\n", maxLevel, maxLevel+300, firstLine(err))
	pg, err = pgtest.Start(pgtest.Options{MaxConnections: fit[len(fit)-1] + 300, ExtraConf: conf})
	return pg, fit, err
}

// lastOutput is the last line of the process output quoted in err (e.g. a Python
// exception), after "; it said: ".
func lastOutput(err error) string {
	_, tail, ok := strings.Cut(err.Error(), "output (tail) ---\n")
	lines := strings.Split(strings.TrimSpace(tail), "\n")
	if !ok || len(lines) == 0 {
		return ""
	}
	return "; it said: " + lines[len(lines)-1]
}

func firstLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}

func bench(ctx context.Context, o options) (err error) {
	began := time.Now()
	exporterBin := o.Exporter
	benchkit.Say("starting a throwaway PostgreSQL with pg_stat_statements and log_connections")
	pg, levels, err := startPostgres(o.Backends)
	if err != nil {
		return err
	}
	defer benchkit.Stop(&err, "PgBouncer and PostgreSQL", pg)
	if err := pg.Exec(ctx, "CREATE EXTENSION pg_stat_statements"); err != nil {
		return err
	}
	roles, err := benchkit.Prepare(ctx, pg, monitorRole, appRole)
	if err != nil {
		return err
	}
	monitor := roles.Monitor
	defer monitor.Close(context.Background())
	bouncerPW := benchkit.RandomPassword()
	if err := pg.CreateRole(bouncerRole, bouncerPW, false); err != nil {
		return err
	}
	printVersions(ctx, o)

	bouncer, err := pgtest.StartPgBouncer(pg, pgtest.PgBouncerOptions{})
	if err != nil {
		return err
	}
	clients, err := openBouncerClients(ctx, bouncer.DSN(bouncerRole, bouncerPW, ""))
	if err != nil {
		return err
	}
	defer func() {
		for _, c := range clients {
			_ = c.Close(context.Background())
		}
	}()

	peers, err := definePeers(pg, bouncer, exporterBin, o)
	if err != nil {
		return err
	}
	for _, p := range peers {
		if p.failed != "" {
			continue
		}
		e, err := benchkit.StartExporter(ctx, p.spec)
		if err != nil {
			p.failed = "did not start: " + firstLine(err) + lastOutput(err)
			fmt.Printf("peer %s: %s\n", p.label, p.failed)
			continue
		}
		p.proc = e
	}
	defer func() {
		for _, p := range peers {
			if p.proc != nil {
				p.proc.Stop()
			}
		}
	}()

	sessions := benchkit.NewSessionSet(roles.App)
	defer func() {
		benchkit.Say("cancelling background queries and closing %d sessions", sessions.Len())
		sessions.Close(pg)
	}()

	m := &meter{o: o, pg: pg, bouncerLog: bouncer.LogFile, monitor: monitor, client: &http.Client{Timeout: 60 * time.Second}}
	var results []levelResult
	var skipped []string
	for _, n := range levels {
		if n > 2000 {
			if why := wontFit(n, sessions.Len(), began, o.budget, results); why != "" {
				skipped = append(skipped, fmt.Sprintf("%d backends: %s", n, why))
				benchkit.Say("skipping %d backends: %s", n, why)
				continue
			}
		}
		want := benchkit.MixFor(n)
		benchkit.Say("opening sessions up to %d backends: %s", n, want)
		start := time.Now()
		memBefore := memAvailableKiB()
		if err := sessions.Grow(ctx, want); err != nil {
			if n > 2000 && ctx.Err() == nil {
				skipped = append(skipped, fmt.Sprintf("%d backends: opening the sessions failed: %s", n, firstLine(err)))
				break
			}
			return err
		}
		if err := benchkit.WaitForMix(ctx, monitor, appRole, want); err != nil {
			return err
		}
		opened := time.Since(start)
		benchkit.Say("  %d sessions ready in %.1fs; measuring", n, opened.Seconds())
		r, err := m.level(ctx, n, peers)
		if err != nil {
			return err
		}
		r.openTime, r.memUsedKiB = opened, memBefore-memAvailableKiB()
		results = append(results, r)
	}

	benchkit.Say("distinct application_names: %d, then %d", o.distinct/2, o.distinct)
	distinct, err := m.distinctNames(ctx, sessions, peers)
	if err != nil {
		return err
	}
	bouncerResult, err := m.pgbouncerRound(ctx, peers)
	if err != nil {
		return err
	}
	printResults(o, peers, results, distinct, bouncerResult, skipped)
	fmt.Printf("\nmeasured in %.0fs; load average at the end %s\n", time.Since(began).Seconds(), benchkit.LoadAvg())
	return nil
}

// wontFit says why a level above 2000 backends is not attempted: the memory its sessions
// would take (extrapolated from the last level) or the time (the open rate so far plus the
// last level's measuring time), or "" when it fits.
func wontFit(n, have int, began time.Time, budget time.Duration, done []levelResult) string {
	if len(done) == 0 {
		return ""
	}
	last := done[len(done)-1]
	extra := n - have
	prevN := 0
	if len(done) > 1 {
		prevN = done[len(done)-2].backends
	}
	grown := last.backends - prevN
	if grown > 0 && last.memUsedKiB > 0 {
		need := last.memUsedKiB / grown * extra
		if avail := memAvailableKiB(); need*2 > avail {
			return fmt.Sprintf("%d more sessions need about %s (%s per backend at the last level), more than half of the %s available",
				extra, benchkit.MiB(need), benchkit.MiB(last.memUsedKiB/grown), benchkit.MiB(avail))
		}
	}
	if grown > 0 {
		est := time.Duration(float64(last.openTime) / float64(grown) * float64(extra) * 1.5) // opening slows as backends grow
		est += last.measureTime * time.Duration(n) / time.Duration(last.backends)
		if left := budget - time.Since(began); est > left {
			return fmt.Sprintf("opening and measuring would take about %.0fs, %.0fs left of --budget %v", est.Seconds(), max(0, left.Seconds()), budget)
		}
	}
	return ""
}

// memAvailableKiB is MemAvailable from /proc/meminfo, or 0.
func memAvailableKiB() int {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "MemAvailable:"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return n
		}
	}
	return 0
}

func openBouncerClients(ctx context.Context, dsn string) ([]*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	// PgBouncer 1.18 in transaction mode keeps no prepared statements.
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	var out []*pgx.Conn
	for i := range pgbouncerClients {
		c := cfg.Copy()
		c.RuntimeParams["application_name"] = "api-" + strconv.Itoa(i)
		conn, err := pgx.ConnectConfig(ctx, c)
		if err != nil {
			return out, fmt.Errorf("client through PgBouncer: %w", err)
		}
		out = append(out, conn)
		if _, err := conn.Exec(ctx, "SELECT 1"); err != nil {
			return out, err
		}
	}
	return out, nil
}

// definePeers creates a role per PostgreSQL exporter (pg_monitor, the privilege each
// exporter's documentation asks for) and says how each exporter starts.
func definePeers(pg *pgtest.Postgres, bouncer *pgtest.PgBouncer, dbpoolBin string, o options) ([]*peer, error) {
	listen := func(flag string) func(string, int) []string {
		return func(host string, port int) []string {
			return []string{flag + net.JoinHostPort(host, strconv.Itoa(port))}
		}
	}
	pool := []string{"--pool.application-name-regex=api-(?P<instance>[0-9]+)", "--pool.instances=10", "--log.level=warn"}
	var peers []*peer
	for _, v := range []struct{ label, role, flag string }{
		{"dbpool_exporter (probe on)", "peer_dbpool", ""},
		{"dbpool_exporter (probe off)", "peer_dbpool_noprobe", "--no-collector.probe"},
		{"postgres_exporter 0.11 (defaults)", "peer_postgres_exporter", ""},
	} {
		pw := benchkit.RandomPassword()
		if err := pg.CreateRole(v.role, pw, false, "pg_monitor"); err != nil {
			return nil, err
		}
		p := &peer{label: v.label, side: "postgres", role: v.role}
		dsn := pg.DSN(v.role, pw, "")
		if strings.HasPrefix(v.label, "dbpool") {
			args := pool
			if v.flag != "" {
				args = append([]string{v.flag}, pool...)
			}
			p.dbpool = true
			p.spec = benchkit.ExporterSpec{Label: v.label, Path: dbpoolBin, Env: []string{"DATA_SOURCE_NAME=" + dsn}, ReadyPath: "/-/healthy",
				Args: func(host string, port int) []string {
					return append(listen("--web.listen-address=")(host, port), args...)
				}}
		} else {
			p.spec = benchkit.ExporterSpec{Label: v.label, Path: o.postgresExporter, Env: []string{"DATA_SOURCE_NAME=" + dsn}, ReadyPath: "/",
				Args: listen("--web.listen-address=")}
			if _, err := os.Stat(o.postgresExporter); err != nil {
				p.failed = fmt.Sprintf("%v (scripts/install-deps.sh --with-peers installs it)", err)
			}
		}
		peers = append(peers, p)
	}

	stats, err := url.Parse(bouncer.StatsDSN())
	if err != nil {
		return nil, err
	}
	admin, err := url.Parse(bouncer.AdminDSN())
	if err != nil {
		return nil, err
	}
	dbpoolBouncer := &peer{label: "dbpool_exporter (pgbouncer source)", side: "pgbouncer", role: stats.User.Username(), dbpool: true,
		statsSrc: "6 SHOW"}
	dbpoolBouncer.spec = benchkit.ExporterSpec{Label: dbpoolBouncer.label, Path: dbpoolBin, ReadyPath: "/-/healthy",
		Env: []string{"PGBOUNCER_DSN=" + bouncer.StatsDSN()},
		Args: func(host string, port int) []string {
			return []string{"--web.listen-address=" + net.JoinHostPort(host, strconv.Itoa(port)), "--log.level=warn"}
		}}
	// The Python exporter takes host, port and user; libpq reads the password from
	// PGPASSWORD. It logs in as the admin user so that PgBouncer's log tells the two apart.
	adminPW, _ := admin.User.Password()
	pyBouncer := &peer{label: "pgbouncer_exporter 1.7 (Python)", side: "pgbouncer", role: admin.User.Username(),
		statsSrc: "4 SHOW"}
	pyBouncer.spec = benchkit.ExporterSpec{Label: pyBouncer.label, Path: o.pgbouncerExporter, ReadyPath: "/",
		Env: []string{"PGPASSWORD=" + adminPW},
		Args: func(host string, port int) []string {
			return []string{"--host", host, "--port", strconv.Itoa(port), "--pgbouncer-host", bouncer.Host,
				"--pgbouncer-port", strconv.Itoa(bouncer.Port), "--pgbouncer-user", admin.User.Username()}
		}}
	if _, err := os.Stat(o.pgbouncerExporter); err != nil {
		pyBouncer.failed = fmt.Sprintf("%v (scripts/install-deps.sh --with-peers installs it)", err)
	}
	return append(peers, dbpoolBouncer, pyBouncer), nil
}

func printVersions(ctx context.Context, o options) {
	for _, pkg := range []string{"prometheus-postgres-exporter", "prometheus-pgbouncer-exporter"} {
		out, err := childproc.Run(ctx, childproc.Spec{Path: "dpkg-query", Args: []string{"-W", "-f=${Version}", pkg}})
		if err != nil || out == "" {
			out = "not installed"
		}
		fmt.Printf("peer package %s: %s\n", pkg, out)
	}
	fmt.Printf("paths: %s, %s\n", o.postgresExporter, o.pgbouncerExporter)
}
