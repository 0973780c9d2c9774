package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"html"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dbpool/dbpool_exporter/tools/childproc"
	"github.com/dbpool/dbpool_exporter/tools/pgtest"
	"github.com/dbpool/dbpool_exporter/tools/pythonenv"
	"github.com/dbpool/dbpool_exporter/tools/testbin"
)

// The example FastAPI service (examples/fastapi: SQLAlchemy's create_async_engine on asyncpg,
// instrumented with integrations/python) as replicas under uvicorn --workers 2 and under
// gunicorn -w 2, whose workers are replaced after a few hundred requests, behind one DNS name;
// loaded by HTTP clients in the test and watched by the exporter binary, which finds the
// replicas through DNS and reads each one's /dbpool endpoint, where any worker serves all
// workers of its replica through their shared directory.

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
`

// leakThresholdSeconds is the service's DBPOOL_STATS_LEAK_THRESHOLD: a connection held
// longer is a leak, with the line that took it.
const leakThresholdSeconds = 1

// fastapiApps is the apps: section that tells the exporter where the service's workers
// report their pools: every address of the service's DNS name on port, one endpoint per
// replica, which answers for all its workers. It is the one place that says how the
// exporter finds them.
func fastapiApps(port string) string {
	return fmt.Sprintf("apps:\n  - {name: api, url: %q, pool: api}\n", "dns+http://"+fastapiName+":"+port+"/dbpool")
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
	// The churn phase: closed-loop clients with short queries while the servers replace
	// their workers and a replica joins and leaves; churnTime is its least length.
	churnClients  = 8
	churnTime     = 15 * time.Second
	churnMax      = 20000
	churnQuerySec = 0.005
	// The kill phase: the same clients for killTime, and a worker SIGKILLed half way.
	killTime = 6 * time.Second
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
	writeFile(t, envFile, fmt.Sprintf(fastapiEnv, fastapiPoolSize, fastapiMaxOverflow, fastapiPoolTimeout))
	svc := newFastAPIService(t, dir, srv, databaseURL)
	// All replicas start together; the last one joins the name and the load only in the churn.
	replicas := svc.start(t, fastapiIPs...)
	steady, joining := replicas[:fastapiReplicas], replicas[fastapiReplicas]
	svc.serve(steady...)
	cfg := filepath.Join(dir, "exporter.yml")
	writeFile(t, cfg, fmt.Sprintf(fastapiExporterConfig, monitorDSN, fastapiWorkers, fastapiApps(svc.port)))
	exporter, addr := startServer(t, dir, "exporter", exporterBin, nil, "/metrics", func(addr string) []string {
		return []string{"--web.listen-address=" + addr, "--config.file=" + cfg, "--pool.env-file=" + envFile,
			"--health.sample-interval=0", "--app.dns-server=" + svc.dns.Addr()}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

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
	if got := slices.Sorted(maps.Keys(processValues(t, beforeChurn, "dbpool_process_in_use_connections"))); !slices.Equal(got, slices.Sorted(maps.Keys(workers))) {
		t.Fatalf("the workers changed before the churn phase (request limit %d too low?): %v, then %v; the test's requests answered by each: %v",
			recycleAfter, slices.Sorted(maps.Keys(workers)), got, svc.answers())
	}
	t.Logf("%s: requests of the test answered by each worker before the churn: %v", srv.name, svc.answers())
	checkExact(t, srv.name+", steady and timeout phases", base, beforeChurn, held, burst)

	// Churn: short requests from closed-loop clients while the servers replace their workers;
	// a third replica joins the name and the load for a third of the time, then leaves: it is
	// drained, scraped once more, taken out of DNS and stopped.
	// Each part lasts until it did what it is there for: on a loaded machine, workers being
	// replaced can hold every client for seconds.
	churn := &outcomes{}
	var load sync.WaitGroup
	churning, endChurn := context.WithCancel(ctx)
	defer endChurn()
	load.Go(func() { svc.closedLoop(ctx, churning, churnClients, churnMax, churnQuerySec, churn) })
	time.Sleep(churnTime / 3)
	svc.serve(append(slices.Clone(steady), joining)...)
	holdUntil(churnTime/3, time.Minute, func() bool { return joining.answered.Load() >= churnClients })
	svc.drain(t, joining, steady...)
	checkJoined(t, joining, settled())
	svc.serve(steady...)
	if err := joining.Stop(syscall.SIGTERM, 10*time.Second); err != nil {
		t.Logf("%s: %v", joining.name, err)
	}
	holdUntil(churnTime/3, time.Minute, func() bool { return svc.recycled() > 0 })
	endChurn()
	load.Wait()
	waitAllWorkers(ctx, t, svc, addr, churn) // the replacements, then everything settles
	afterChurn := settled()
	recycled := svc.recycled()
	t.Logf("%s: %d workers replaced after %d to %d requests in the churn", srv.name, recycled, recycleAfter, recycleAfter+recycleJitter)
	if recycled == 0 {
		t.Errorf("no worker was replaced after its request limit %d in the churn: the phase tested nothing", recycleAfter)
	}
	checkExact(t, srv.name+", churn", beforeChurn, afterChurn, churn)

	// A worker killed: what it did since it last wrote its file (at most one interval, 1 s,
	// before) is lost, no more.
	kill := &outcomes{}
	killing, endKill := context.WithTimeout(ctx, killTime)
	defer endKill()
	load.Go(func() { svc.closedLoop(ctx, killing, churnClients, churnMax, churnQuerySec, kill) })
	time.Sleep(killTime / 2)
	killed, killedIn := svc.killWorker(t, rec)
	killedAt := time.Now()
	load.Wait()
	waitAllWorkers(ctx, t, svc, addr, kill)
	final := settled()
	all := rec.finish()
	lastWrite := svc.lastWrite(t, killedIn, killed)
	t.Logf("%s: worker %d killed %v after it last wrote its file", srv.name, killed, killedAt.Sub(lastWrite).Round(time.Millisecond))
	checkKillLoss(t, srv.name, afterChurn, final, kill, svc.workedAfter(killed, lastWrite))

	app := map[string]string{"pool": "api", "source": "app"}
	unavailable := sum(held, burst, churn, kill).unavailable.Load()
	timeouts := final.must(t, "dbpool_checkout_timeouts_total", app) - base.must(t, "dbpool_checkout_timeouts_total", app)
	t.Logf("%s: the clients saw %d 503s over the run, dbpool_checkout_timeouts_total rose by %v", srv.name, unavailable, timeouts)
	if timeouts != float64(unavailable) {
		t.Errorf("dbpool_checkout_timeouts_total rose by %v over the run, the clients saw %d 503s", timeouts, unavailable)
	}
	if failed := checkScrapes(t, all, []int{killed}, svc.recycled()+1); failed > 0 || t.Failed() {
		var warnings []string
		for _, l := range strings.Split(exporter.Output(), "\n") {
			if strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") {
				warnings = append(warnings, l)
			}
		}
		t.Logf("the exporter's warnings:\n%s", indent(strings.Join(warnings, "\n")))
	}

	checkLeak(t, steady[0], addr)
	if t.Failed() {
		t.Logf("%s logs (tail):\n%s", srv.name, svc.logTail(40))
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
// and their sum with what the workers report of themselves. The connections are held for
// longer than the leak threshold: every one in use is leaked.
func checkWorkersMatch(t *testing.T, s exporterScrape, workers map[int]workerPool) {
	t.Helper()
	inUse := processValues(t, s, "dbpool_process_in_use_connections")
	overflow := processValues(t, s, "dbpool_process_overflow_connections")
	open := processValues(t, s, "dbpool_process_open_connections")
	leaked := processValues(t, s, "dbpool_process_leaked_connections")
	var sum workerPool
	for pid, w := range workers {
		if w.PoolSize != fastapiPoolSize {
			t.Errorf("worker %d: pool_size %d, the .env says %d", pid, w.PoolSize, fastapiPoolSize)
		}
		want := max(0, w.Overflow)
		t.Logf("worker %d: checkedout() %d, overflow() %d, open %d; exporter: in use %v, overflow %v, open %v, leaked %v",
			pid, w.CheckedOut, w.Overflow, w.Total, inUse[pid], overflow[pid], open[pid], leaked[pid])
		if inUse[pid] != float64(w.CheckedOut) || overflow[pid] != float64(want) || open[pid] != float64(w.Total) || leaked[pid] != float64(w.CheckedOut) {
			t.Errorf("worker %d: exporter in use %v, overflow %v, open %v, leaked %v; the worker: checked out %d, overflow %d (max 0, that), open %d",
				pid, inUse[pid], overflow[pid], open[pid], leaked[pid], w.CheckedOut, w.Overflow, w.Total)
		}
		sum.CheckedOut += w.CheckedOut
		sum.Overflow += want
		sum.Total += w.Total
	}
	if len(inUse) != len(workers) {
		t.Errorf("the exporter reports %d processes, %d workers answered: %v", len(inUse), len(workers), inUse)
	}
	app := map[string]string{"pool": "api", "source": "app"}
	t.Logf("pool: the workers hold %d, %d of them overflow, %d open; exporter: in use %v, overflow %v, open %v, leaked %v",
		sum.CheckedOut, sum.Overflow, sum.Total, s.must(t, "dbpool_in_use_connections", app),
		s.must(t, "dbpool_overflow_connections", app), s.must(t, "dbpool_open_connections", app), s.must(t, "dbpool_leaked_connections", app))
	for name, want := range map[string]int{"dbpool_in_use_connections": sum.CheckedOut, "dbpool_overflow_connections": sum.Overflow,
		"dbpool_open_connections": sum.Total, "dbpool_leaked_connections": sum.CheckedOut, "dbpool_instances": len(workers)} {
		if got := s.must(t, name, app); got != float64(want) {
			t.Errorf("%s %v, the workers' add up to %d", name, got, want)
		}
	}
}

// checkExact checks that the pool's counters rose from scrape a to scrape b by exactly what
// the clients saw in between: every answered /work request made one checkout (a 503 one
// that timed out), and every 200 one hold of a connection. (A request without answer is one
// that a worker shutting down closed unread: it made no checkout.)
func checkExact(t *testing.T, phase string, a, b exporterScrape, seen ...*outcomes) {
	t.Helper()
	o := sum(seen...)
	app := map[string]string{"pool": "api", "source": "app"}
	timeout := map[string]string{"pool": "api", "source": "app", "reason": "timeout"}
	delta := func(name string, labels map[string]string) float64 {
		return b.must(t, name, labels) - a.must(t, name, labels)
	}
	checkouts, timeouts, holds := delta("dbpool_checkouts_total", app), delta("dbpool_checkout_failures_total", timeout),
		delta("dbpool_connection_use_duration_seconds", app)
	t.Logf("%s: clients %v; exporter: %v checkouts, %v timed out, %v holds", phase, o, checkouts, timeouts, holds)
	if o.failed.Load() != 0 {
		t.Logf("%s: the last request without answer: %v", phase, o.lastErr)
	}
	if o.other.Load() != 0 {
		t.Errorf("%s: answers other than 200 and 503 (%v): %v", phase, o, o.lastErr)
	}
	if checkouts != float64(o.answered()) || timeouts != float64(o.unavailable.Load()) || holds != float64(o.ok.Load()) {
		t.Errorf("%s: the exporter counted %v checkouts, %v of them timed out, and %v holds; the clients got %d answers, %d of them 503",
			phase, checkouts, timeouts, holds, o.answered(), o.unavailable.Load())
	}
}

// checkKillLoss checks the kill phase (scrape a to b): the pool's counters count no request
// that did not reach a worker, and miss at most the /work requests that the killed worker
// answered after it last wrote its file (unwritten).
func checkKillLoss(t *testing.T, server string, a, b exporterScrape, o *outcomes, unwritten int) {
	t.Helper()
	app := map[string]string{"pool": "api", "source": "app"}
	checkouts := b.must(t, "dbpool_checkouts_total", app) - a.must(t, "dbpool_checkouts_total", app)
	holds := b.must(t, "dbpool_connection_use_duration_seconds", app) - a.must(t, "dbpool_connection_use_duration_seconds", app)
	lost := float64(o.answered()) - checkouts
	t.Logf("%s, kill phase: clients %v; exporter: %v checkouts, %v holds; %v answered requests not counted, the killed worker answered %d after its last write",
		server, o, checkouts, holds, lost, unwritten)
	if reached := o.answered() + o.failed.Load(); checkouts > float64(reached) {
		t.Errorf("dbpool_checkouts_total rose by %v, more than the %d requests that reached a worker", checkouts, reached)
	}
	if lost > float64(unwritten) || float64(o.ok.Load())-holds > float64(unwritten) {
		t.Errorf("the exporter missed %v checkouts and %v holds, more than the %d requests the killed worker answered after its last write",
			lost, float64(o.ok.Load())-holds, unwritten)
	}
	if o.other.Load() != 0 {
		t.Errorf("kill phase: %v (%v)", o, o.lastErr)
	}
}

// checkJoined checks that the replica r, which joined and is leaving, was measured: the
// clients got answers from it, and in the last scrape before it leaves (last) processes of it
// are among the pool's.
func checkJoined(t *testing.T, r *fastapiReplica, last exporterScrape) {
	t.Helper()
	var pids []int
	reported := processValues(t, last, "dbpool_process_in_use_connections")
	for _, pid := range childProcesses(t, r.Pid()) { // a worker replaced since is not among them
		if _, ok := reported[pid]; ok {
			pids = append(pids, pid)
		}
	}
	t.Logf("%s: %d requests of the test answered; its workers %v in the last scrape before it left", r.name, r.answered.Load(), pids)
	if len(pids) == 0 || r.answered.Load() == 0 {
		t.Errorf("%s joined and left unmeasured: %d requests answered, workers %v in the exporter's last scrape of it", r.name, r.answered.Load(), pids)
	}
}

// checkScrapes checks every scrape the recorder made: answered in time, the app endpoints
// collected, instances only of live processes, and no counter of the app source ever lower
// than in the scrape before. The app collector may fail once per worker that died
// (replaced): the exporter's request in flight on its connection has no answer. It returns
// how many scrapes had the app collector failed.
func checkScrapes(t *testing.T, all []recordedScrape, killed []int, died int) int {
	t.Helper()
	var slowest time.Duration
	last := map[string]float64{} // every counter's value in the last scrape that had it
	processes := map[int]bool{}
	slowestCollector := map[string]float64{} // seconds, by collector
	failed, mostInstances := 0, 0.0
	app := map[string]string{"pool": "api", "source": "app"}
	for i, s := range all {
		at := s.start.Format(time.StampMilli)
		slowest = max(slowest, s.took)
		if s.err != nil {
			t.Errorf("scrape %d at %s: %v after %v", i, at, s.err, s.took)
			continue
		}
		if s.took > scrapeTimeout {
			t.Errorf("scrape %d at %s took %v, longer than its timeout %v", i, at, s.took, scrapeTimeout)
		}
		switch v, ok := s.mfs.value("dbpool_scrape_success", fastapiCollector); {
		case !ok:
			t.Errorf("scrape %d at %s: no dbpool_scrape_success%v", i, at, fastapiCollector)
		case v != 1:
			failed++
			t.Logf("scrape %d at %s: dbpool_scrape_success%v = %v", i, at, fastapiCollector, v)
		}
		for _, m := range s.mfs["dbpool_scrape_duration_seconds"].GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "collector" {
					slowestCollector[l.GetValue()] = max(slowestCollector[l.GetValue()], m.GetGauge().GetValue())
				}
			}
		}
		inUse := processValues(t, s.mfs, "dbpool_process_in_use_connections")
		for pid := range inUse {
			processes[pid] = true
		}
		// Processes that exited count in the counters only: the instances are the processes
		// that answer, at most every worker of every replica.
		if n, _ := s.mfs.value("dbpool_instances", app); n != float64(len(inUse)) || n > float64(len(fastapiIPs)*fastapiReplicaWorkers) {
			t.Errorf("scrape %d at %s: dbpool_instances %v with %d processes' series", i, at, n, len(inUse))
		} else {
			mostInstances = max(mostInstances, n)
		}
		for k, v := range counterSeries(s.mfs) {
			if p, ok := last[k]; ok && v < p {
				t.Errorf("scrape %d at %s: %s fell from %v to %v", i, at, k, p, v)
			}
			last[k] = v
		}
	}
	for _, pid := range killed {
		if !processes[pid] {
			t.Errorf("the killed worker %d never showed in the exporter's process series: its counters were not tested", pid)
		}
	}
	t.Logf("%d scrapes every %v, slowest %v (timeout %v), %d with the app collector failed (%d workers died); %d worker processes seen, at most %v at once; slowest collectors (s): %v",
		len(all), scrapeEvery, slowest, scrapeTimeout, failed, died, len(processes), mostInstances, slowestCollector)
	if failed > died {
		t.Errorf("the app collector failed in %d scrapes, more than the %d workers that died", failed, died)
	}
	return failed
}

// checkLeak requests the guide's "Bad: Potential idle-in-transaction" route of replica r
// (e2e/testdata/fastapi/leaky.py) and finds its connection, once held past the leak
// threshold, in the exporter's leaked connections of the pool and of that worker, idle in a
// transaction on the server, and with its file and line in /api/v1/pools and on /pools.
func checkLeak(t *testing.T, r *fastapiReplica, addr string) {
	t.Helper()
	code, body, err := httpGet(r.base + "/bad/idle-in-transaction")
	var failed struct {
		PID int `json:"pid"`
	}
	if err != nil || code != 500 || json.Unmarshal(body, &failed) != nil || failed.PID == 0 {
		t.Fatalf("GET /bad/idle-in-transaction: HTTP %d %v %s, want 500 with the pid", code, err, body)
	}
	app := map[string]string{"pool": "api", "source": "app"}
	idleInTx := map[string]string{"pool": "api", "source": "activity", "state": "idle in transaction"}
	var s exporterScrape
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		s, _ = scrapeExporter(t, addr)
		leaked, _ := s.value("dbpool_leaked_connections", app)
		if leaked == 1 && processValues(t, s, "dbpool_process_leaked_connections")[failed.PID] == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("15 s after the leak: dbpool_leaked_connections %v, by process %v (the leak is in %d)",
				leaked, processValues(t, s, "dbpool_process_leaked_connections"), failed.PID)
		}
	}
	if got := s.must(t, "dbpool_connections", idleInTx); got != 1 {
		t.Errorf("the server sees %v sessions of the pool idle in a transaction, want the leaked one", got)
	}
	// Where: the pool's report names the checkout's file, line and function, and so does
	// the page.
	file, line := leakyLine(t)
	l := poolReport(t, addr, "api").Health.Leaks
	if l == nil || l.Count != 1 || len(l.Sites) != 1 {
		t.Fatalf("/api/v1/pools: leaks %+v, want 1 from one place", l)
	}
	t.Logf("the leak, in worker %d: /api/v1/pools: %+v", failed.PID, *l)
	if got := l.Sites[0]; got.File != file || got.Line != line || got.Function != "idle_in_transaction" || got.Count != 1 {
		t.Errorf("leak site %+v, want 1 connection from %s:%d in idle_in_transaction", got, file, line)
	}
	code, page, err := httpGet("http://" + addr + "/pools")
	if err != nil || code != 200 {
		t.Fatalf("GET /pools: %d %v", code, err)
	}
	if want := html.EscapeString(fmt.Sprintf("%s:%d", file, line)); !strings.Contains(string(page), want) {
		t.Errorf("/pools lacks the leak's %s", want)
	}
}

// leakyLine is where the bad route checks its connection out: the line of leaky.py with its
// session.execute().
func leakyLine(t *testing.T) (string, int) {
	t.Helper()
	file := filepath.Join(testbin.RepoRoot(), "e2e", "testdata", "fastapi", "leaky.py")
	return file, lineOf(t, file, func(line string) bool {
		return strings.HasPrefix(strings.TrimSpace(line), "result = await session.execute(query)")
	})
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
