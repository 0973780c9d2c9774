package e2e

import (
	"context"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dbpool/dbpool_exporter/tools/childproc"
	"github.com/dbpool/dbpool_exporter/tools/pgtest"
	"github.com/dbpool/dbpool_exporter/tools/pythonenv"
	"github.com/dbpool/dbpool_exporter/tools/testbin"
)

// The example FastAPI service (examples/fastapi: SQLAlchemy's create_async_engine on asyncpg,
// instrumented with integrations/python) under uvicorn --workers 4 and under gunicorn -w 4
// --max-requests, loaded by HTTP clients in the test, watched by the exporter binary through
// the service's own /dbpool endpoint, which serves every worker through the shared directory.

// The service's pool, per worker process, in the .env it reads.
const (
	fastapiPoolSize    = 2
	fastapiMaxOverflow = 3
	fastapiPoolTimeout = 1 // seconds
)

const fastapiEnv = `# The pool of every worker process
DB_POOL_SIZE=%d
DB_MAX_OVERFLOW=%d
DB_POOL_TIMEOUT=%d
DB_POOL_RECYCLE=3600
DB_POOL_PRE_PING=true
DB_ECHO=false
APP_NAME=api
DBPOOL_STATS_DIR=%s
`

// fastapiApps is the apps: section that tells the exporter where the service's workers
// report their pools: here one URL, which any worker answers for all of them. It is the one
// place that says how the exporter finds them.
func fastapiApps(serviceBase string) string {
	return fmt.Sprintf("apps:\n  - {name: api, url: %q, pool: api}\n", serviceBase+"/dbpool")
}

// The collector of the target's app endpoints: one for all of them, failed when any failed.
var fastapiCollector = map[string]string{"target": "main", "collector": "app"}

const fastapiExporterConfig = `targets:
  - name: main
    dsn: %q
pools:
  - {name: api, match: {application_name: api}, instances: %d}
%s`

const (
	// statsSettle is how long after the last change of a pool every worker has written it
	// to the shared directory (every second) with room to spare.
	statsSettle = 2 * time.Second
	// scrapeEvery is the recorder's pace, throughout each server's run.
	scrapeEvery = 250 * time.Millisecond
	// fastapiHolds requests hold a connection for holdSeconds in the steady phase: more
	// than the workers' pool_size together, fewer than their capacity.
	fastapiHolds = 12
	holdSeconds  = 10
	// In the timeout phase, timeoutBurst requests of burstSeconds meet the capacity of 4 x 5:
	// at least 10 of them wait DB_POOL_TIMEOUT in vain.
	timeoutBurst = 30
	burstSeconds = 3
	// The churn phase: closed-loop clients with short queries, while workers are recycled
	// (gunicorn) and killed.
	churnClients  = 8
	churnTime     = 15 * time.Second
	churnMax      = 20000
	churnKills    = 2
	churnQuerySec = 0.005
)

func TestFastAPIService(t *testing.T) {
	exporterBin := testbin.Exporter(t)
	pg := pgtest.StartT(t, pgtest.Options{})
	monitorPW, appPW := randomPassword(t), randomPassword(t)
	if err := pg.CreateRole("dbpool_monitor", monitorPW, false, "pg_monitor"); err != nil {
		t.Fatal(err)
	}
	if err := pg.CreateRole("app", appPW, false); err != nil {
		t.Fatal(err)
	}
	databaseURL := fmt.Sprintf("postgresql+asyncpg://app:%s@127.0.0.1:%d/postgres", appPW, pg.Port)
	monitorDSN := pg.DSN("dbpool_monitor", monitorPW, "postgres")
	for _, srv := range fastapiServers {
		t.Run(srv.name, func(t *testing.T) {
			runFastAPIService(t, exporterBin, srv, databaseURL, monitorDSN)
		})
	}
}

func runFastAPIService(t *testing.T, exporterBin string, srv fastapiServer, databaseURL, monitorDSN string) {
	dir := t.TempDir()
	envFile := filepath.Join(dir, ".env")
	writeFile(t, envFile, fmt.Sprintf(fastapiEnv, fastapiPoolSize, fastapiMaxOverflow, fastapiPoolTimeout, filepath.Join(dir, "dbpool")))
	svc := startFastAPI(t, dir, srv, databaseURL)
	cfg := filepath.Join(dir, "exporter.yml")
	writeFile(t, cfg, fmt.Sprintf(fastapiExporterConfig, monitorDSN, fastapiWorkers, fastapiApps(svc.base)))
	exporter, addr := startServer(t, dir, "exporter", exporterBin, nil, "/metrics", func(addr string) []string {
		return []string{"--web.listen-address=" + addr, "--config.file=" + cfg, "--pool.env-file=" + envFile, "--health.sample-interval=0"}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	app := map[string]string{"pool": "api", "source": "app"}

	waitAllWorkers(ctx, t, svc, addr, &outcomes{})
	rec := startScrapeRecorder(addr, scrapeEvery)
	defer rec.finish()
	settled := func() exporterScrape { return rec.after(t, time.Now().Add(statsSettle)) }
	base := settled()

	held, workers := steadyPhase(ctx, t, svc, settled)

	// Timeouts: more requests than the workers have connections; the ones that wait
	// DB_POOL_TIMEOUT in vain are answered 503.
	burst := &outcomes{}
	svc.burst(ctx, timeoutBurst, burstSeconds, burst)
	if burst.unavailable.Load() == 0 {
		t.Fatalf("%d requests of %d s on a capacity of %d x %d got no 503: %v", timeoutBurst, burstSeconds,
			fastapiWorkers, fastapiPoolSize+fastapiMaxOverflow, burst)
	}
	beforeChurn := settled()
	// Until here no worker was replaced: the exporter's counters must equal the clients' counts.
	if got := slices.Sorted(maps.Keys(processValues(t, beforeChurn, "dbpool_process_in_use_connections"))); !slices.Equal(got, slices.Sorted(maps.Keys(workers))) {
		t.Fatalf("the workers changed before the churn phase (--max-requests %d too low?): %v, then %v; the test's requests answered by each: %v",
			gunicornMaxRequests, slices.Sorted(maps.Keys(workers)), got, svc.answers())
	}
	t.Logf("%s: requests of the test answered by each worker before the churn: %v", srv.name, svc.answers())
	for _, o := range []*outcomes{held, burst} {
		if o.failed.Load() != 0 || o.other.Load() != 0 {
			t.Errorf("requests failed before any worker was replaced: %v (%v)", o, o.lastErr)
		}
	}
	delta := func(name string, a, b exporterScrape) float64 { return b.must(t, name, app) - a.must(t, name, app) }
	answered := held.answered() + burst.answered()
	if got := delta("dbpool_checkouts_total", base, beforeChurn); got != float64(answered) {
		t.Errorf("dbpool_checkouts_total rose by %v, the clients got %d answers from /work (each one checkout)", got, answered)
	}
	t.Logf("%s, steady and timeout phases: clients %v / %v; exporter: %v checkouts, %v timeouts", srv.name, held, burst,
		delta("dbpool_checkouts_total", base, beforeChurn), delta("dbpool_checkout_timeouts_total", base, beforeChurn))

	// Churn: short requests from closed-loop clients while workers are recycled and killed.
	churn := &outcomes{}
	var load sync.WaitGroup
	load.Go(func() { svc.closedLoop(ctx, time.Now().Add(churnTime), churnClients, churnMax, churnQuerySec, churn) })
	var killed []int
	for i := range churnKills {
		time.Sleep(churnTime / (churnKills + 1))
		killed = append(killed, svc.killWorker(t, rec.processes(t)))
		t.Logf("%s: killed worker %d at %d/%d of the churn", srv.name, killed[i], i+1, churnKills+1)
	}
	load.Wait()
	waitAllWorkers(ctx, t, svc, addr, churn) // the replacements, then everything settles
	final := settled()
	all := rec.finish()

	unavailable := held.unavailable.Load() + burst.unavailable.Load() + churn.unavailable.Load()
	timeouts := delta("dbpool_checkout_timeouts_total", base, final)
	t.Logf("%s: the clients saw %d 503s over the run, dbpool_checkout_timeouts_total rose by %v", srv.name, unavailable, timeouts)
	if timeouts != float64(unavailable) {
		t.Errorf("dbpool_checkout_timeouts_total rose by %v over the run, the clients saw %d 503s", timeouts, unavailable)
	}
	// Checkouts of the churn: at most the requests that reached a worker; the ones a worker
	// recorded in its last second before it was replaced or killed never reach a file.
	churnCheckouts := delta("dbpool_checkouts_total", beforeChurn, final)
	reached := churn.answered() + churn.failed.Load()
	t.Logf("%s churn: clients %v, exporter %v checkouts (%d answered requests not counted)", srv.name, churn, churnCheckouts, churn.answered()-int64(churnCheckouts))
	if churnCheckouts > float64(reached) {
		t.Errorf("dbpool_checkouts_total rose by %v in the churn, more than the %d requests that reached a worker", churnCheckouts, reached)
	}
	if churn.failed.Load() != 0 {
		t.Logf("%s churn: the last request without answer: %v", srv.name, churn.lastErr)
	}
	if churn.other.Load() != 0 {
		t.Errorf("churn: %v (%v)", churn, churn.lastErr)
	}
	recycled := strings.Count(svc.Output(), "Maximum request limit")
	if srv.recycles {
		t.Logf("%s: %d workers recycled after %d to %d requests, %d killed", srv.name, recycled,
			gunicornMaxRequests, gunicornMaxRequests+gunicornJitter, len(killed))
		if recycled == 0 {
			t.Errorf("no worker was recycled by --max-requests %d in %v of churn: the phase tested nothing", gunicornMaxRequests, churnTime)
		}
	}
	if failed := checkScrapes(t, all, killed, len(killed)+recycled); failed > 0 || t.Failed() {
		var warnings []string
		for _, l := range strings.Split(exporter.Output(), "\n") {
			if strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") {
				warnings = append(warnings, l)
			}
		}
		t.Logf("the exporter's warnings:\n%s", indent(strings.Join(warnings, "\n")))
	}
	if t.Failed() {
		t.Logf("%s log (tail):\n%s", srv.name, indent(svc.logTail(40)))
	}
}

// waitAllWorkers sends requests until the exporter sees every worker: a worker becomes an
// instance at its first checkout. Their outcomes count in o.
func waitAllWorkers(ctx context.Context, t *testing.T, svc *fastapiService, addr string, o *outcomes) {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); ; {
		svc.burst(ctx, 2*fastapiWorkers, 0, o)
		s, _ := scrapeExporter(t, addr)
		if n, _ := s.value("dbpool_instances", map[string]string{"pool": "api", "source": "app"}); n == fastapiWorkers {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the exporter does not see %d workers after 60 s of requests (%v)\n%s", fastapiWorkers, o, svc.logTail(30))
		}
	}
}

// steadyPhase holds connections with requests and, while they are held, compares each
// worker's own count with the exporter's (settled is a scrape after the workers' files
// caught up). It returns the requests' outcomes and the workers' pools.
func steadyPhase(ctx context.Context, t *testing.T, svc *fastapiService, settled func() exporterScrape) (*outcomes, map[int]workerPool) {
	t.Helper()
	held := &outcomes{}
	var holds sync.WaitGroup
	defer holds.Wait()
	holds.Go(func() { svc.burst(ctx, fastapiHolds, holdSeconds, held) })
	var workers map[int]workerPool
	for deadline := time.Now().Add(holdSeconds * time.Second / 2); ; {
		workers = svc.workerPools(t)
		checkedOut := 0
		for _, w := range workers {
			checkedOut += w.CheckedOut
		}
		// Every hold is either checked out or was refused (a worker that got more than its
		// capacity); none is still waiting.
		if checkedOut+int(held.unavailable.Load()) == fastapiHolds {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the workers do not hold the %d connections: %+v (%v)", fastapiHolds, workers, held)
		}
		time.Sleep(100 * time.Millisecond)
	}
	s := settled()
	if again := svc.workerPools(t); !maps.Equal(workers, again) {
		t.Fatalf("the workers' pools changed while the connections were held: %+v, then %+v", workers, again)
	}
	checkWorkersMatch(t, s, workers)
	return held, workers
}

// checkWorkersMatch compares, in the exporter's scrape s, the pool of every worker process
// and their sum with what the workers report of themselves.
func checkWorkersMatch(t *testing.T, s exporterScrape, workers map[int]workerPool) {
	t.Helper()
	inUse := processValues(t, s, "dbpool_process_in_use_connections")
	overflow := processValues(t, s, "dbpool_process_overflow_connections")
	open := processValues(t, s, "dbpool_process_open_connections")
	var sum workerPool
	for pid, w := range workers {
		if w.PoolSize != fastapiPoolSize {
			t.Errorf("worker %d: pool_size %d, the .env says %d", pid, w.PoolSize, fastapiPoolSize)
		}
		want := max(0, w.Overflow)
		t.Logf("worker %d: checkedout() %d, overflow() %d, open %d; exporter: in use %v, overflow %v, open %v",
			pid, w.CheckedOut, w.Overflow, w.Total, inUse[pid], overflow[pid], open[pid])
		if inUse[pid] != float64(w.CheckedOut) || overflow[pid] != float64(want) || open[pid] != float64(w.Total) {
			t.Errorf("worker %d: exporter in use %v, overflow %v, open %v; the worker: checked out %d, overflow %d (max 0, that), open %d",
				pid, inUse[pid], overflow[pid], open[pid], w.CheckedOut, w.Overflow, w.Total)
		}
		sum.CheckedOut += w.CheckedOut
		sum.Overflow += want
		sum.Total += w.Total
	}
	if len(inUse) != len(workers) {
		t.Errorf("the exporter reports %d processes, %d workers answered: %v", len(inUse), len(workers), inUse)
	}
	app := map[string]string{"pool": "api", "source": "app"}
	t.Logf("pool: the workers hold %d, %d of them overflow, %d open; exporter: in use %v, overflow %v, open %v",
		sum.CheckedOut, sum.Overflow, sum.Total, s.must(t, "dbpool_in_use_connections", app),
		s.must(t, "dbpool_overflow_connections", app), s.must(t, "dbpool_open_connections", app))
	if got := s.must(t, "dbpool_in_use_connections", app); got != float64(sum.CheckedOut) {
		t.Errorf("pool in use %v, the workers hold %d", got, sum.CheckedOut)
	}
	if got := s.must(t, "dbpool_overflow_connections", app); got != float64(sum.Overflow) {
		t.Errorf("pool overflow %v, the workers' overflow adds up to %d", got, sum.Overflow)
	}
	if got := s.must(t, "dbpool_open_connections", app); got != float64(sum.Total) {
		t.Errorf("pool open %v, the workers have %d open", got, sum.Total)
	}
	if got := s.must(t, "dbpool_instances", app); got != float64(len(workers)) {
		t.Errorf("dbpool_instances %v, %d workers", got, len(workers))
	}
}

// checkScrapes checks every scrape the recorder made: answered in time, the app endpoint
// collected, and no counter of the app source ever lower than in the scrape before. The app
// collector may fail once per worker that died (replaced): the exporter's request in flight
// on its connection has no answer. It returns how many scrapes had the app collector failed.
func checkScrapes(t *testing.T, all []recordedScrape, killed []int, replaced int) int {
	t.Helper()
	var slowest time.Duration
	last := map[string]float64{} // every counter's value in the last scrape that had it
	processes := map[int]bool{}
	slowestCollector := map[string]float64{} // seconds, by collector
	failed := 0
	for i, s := range all {
		slowest = max(slowest, s.took)
		if s.err != nil {
			t.Errorf("scrape %d at %s: %v after %v", i, s.start.Format(time.StampMilli), s.err, s.took)
			continue
		}
		if s.took > scrapeTimeout {
			t.Errorf("scrape %d at %s took %v, longer than its timeout %v", i, s.start.Format(time.StampMilli), s.took, scrapeTimeout)
		}
		switch v, ok := s.mfs.value("dbpool_scrape_success", fastapiCollector); {
		case !ok:
			t.Errorf("scrape %d at %s: no dbpool_scrape_success%v", i, s.start.Format(time.StampMilli), fastapiCollector)
		case v != 1:
			failed++
			t.Logf("scrape %d at %s: dbpool_scrape_success%v = %v", i, s.start.Format(time.StampMilli), fastapiCollector, v)
		}
		for _, m := range s.mfs["dbpool_scrape_duration_seconds"].GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "collector" {
					slowestCollector[l.GetValue()] = max(slowestCollector[l.GetValue()], m.GetGauge().GetValue())
				}
			}
		}
		for pid := range processValues(t, s.mfs, "dbpool_process_in_use_connections") {
			processes[pid] = true
		}
		for k, v := range counterSeries(s.mfs) {
			if p, ok := last[k]; ok && v < p {
				t.Errorf("scrape %d at %s: %s fell from %v to %v", i, s.start.Format(time.StampMilli), k, p, v)
			}
			last[k] = v
		}
	}
	for _, pid := range killed {
		if !processes[pid] {
			t.Errorf("the killed worker %d never showed in the exporter's process series: its counters were not tested", pid)
		}
	}
	t.Logf("%d scrapes every %v, slowest %v (timeout %v), %d with the app collector failed (%d workers died); %d worker processes seen; slowest collectors (s): %v",
		len(all), scrapeEvery, slowest, scrapeTimeout, failed, replaced, len(processes), slowestCollector)
	if failed > replaced {
		t.Errorf("the app collector failed in %d scrapes, more than the %d workers that died", failed, replaced)
	}
	return failed
}

// TestFastAPISettings checks where the service takes its settings from: the environment,
// then .env in its working directory, then the DB_* defaults (10, 20, 30, 3600, true,
// false); a bad value stops it with a message naming the variable and the value.
func TestFastAPISettings(t *testing.T) {
	python := testbin.Python(t, pythonenv.SA20)
	const show = "from app.config import settings; print(settings.model_dump_json())"
	for _, tc := range []struct {
		name, dotenv string
		env          []string
		want         []string // in the output
		fails        bool
	}{
		{name: "the defaults", env: []string{"DATABASE_URL=postgresql+asyncpg://u@h/d"},
			want: []string{`"db_pool_size":10,`, `"db_max_overflow":20,`, `"db_pool_timeout":30.0,`, `"db_pool_recycle":3600,`,
				`"db_pool_pre_ping":true,`, `"db_echo":false,`, `"app_name":"api"`, `"dbpool_stats_dir":null`}},
		{name: "the environment wins over .env", env: []string{"DATABASE_URL=postgresql+asyncpg://u@h/d", "DB_POOL_SIZE=7"},
			dotenv: "DB_POOL_SIZE=3              # Number of permanent connections\nDB_MAX_OVERFLOW=6\nDB_POOL_PRE_PING=false\nDBPOOL_STATS_DIR=/run/api/dbpool\n",
			want:   []string{`"db_pool_size":7,`, `"db_max_overflow":6,`, `"db_pool_pre_ping":false,`, `"dbpool_stats_dir":"/run/api/dbpool"`}},
		{name: "a bad value", env: []string{"DATABASE_URL=postgresql+asyncpg://u@h/d", "DB_POOL_TIMEOUT=soon"}, fails: true,
			want: []string{"db_pool_timeout", "input_value='soon'"}},
		{name: "no database", fails: true, want: []string{"database_url", "Field required"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if tc.dotenv != "" {
				writeFile(t, filepath.Join(dir, ".env"), tc.dotenv)
			}
			s := spec(dir, "settings", python, append(tc.env, "PYTHONDONTWRITEBYTECODE=1",
				"PYTHONPATH="+filepath.Join(testbin.RepoRoot(), "examples", "fastapi")))
			s.Args, s.LogFile = []string{"-c", show}, ""
			out, err := childproc.Run(context.Background(), s)
			if (err != nil) != tc.fails {
				t.Fatalf("error %v, want failure %v; output:\n%s", err, tc.fails, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %s:\n%s", w, out)
				}
			}
		})
	}
}
