package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/dbpool/dbpool_exporter/tools/childproc"
	"github.com/dbpool/dbpool_exporter/tools/dnstest"
	"github.com/dbpool/dbpool_exporter/tools/pythonenv"
	"github.com/dbpool/dbpool_exporter/tools/testbin"
)

// The pieces of TestFastAPIService: the example service (examples/fastapi) as replicas under
// a server behind one DNS name, the clients that load it, and the recorder of the exporter's
// scrapes.

// The service's replicas: each a server with fastapiReplicaWorkers worker processes on an
// address of its own, all on one port, as the pods of a Kubernetes headless Service. The
// first fastapiReplicas run throughout; the next address is a replica that joins and leaves.
const (
	fastapiName           = "api.dbpool.test"
	fastapiReplicas       = 2
	fastapiReplicaWorkers = 2
	// fastapiWorkers is the number of worker processes that serve when no replica is joining.
	fastapiWorkers = fastapiReplicas * fastapiReplicaWorkers
)

var fastapiIPs = []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"}

// fastapiServer is one way to run the service in production.
type fastapiServer struct {
	name string
	// args is the command line after the interpreter: serve module:app on host:port with
	// fastapiReplicaWorkers workers, each replaced after maxRequests and up to jitter more.
	args func(example, module, host, port string) []string
}

// The workers' request limits (gunicorn's --max-requests, uvicorn's --limit-max-requests):
// above what the phases before the churn send to any one worker (about 150 at most, the
// exporter's scrapes included), so that workers are replaced only from the churn on, and
// then several times. Each worker's limit is up to recycleJitter higher, so that the workers
// are not all replaced at once (for seconds none would answer, as without jitter in
// production).
const (
	recycleAfter  = 300
	recycleJitter = 150
)

var fastapiServers = []fastapiServer{
	{name: "uvicorn", args: func(_, module, host, port string) []string {
		return []string{"-m", "uvicorn", module + ":app", "--workers", strconv.Itoa(fastapiReplicaWorkers),
			"--limit-max-requests", strconv.Itoa(recycleAfter), "--limit-max-requests-jitter", strconv.Itoa(recycleJitter),
			"--host", host, "--port", port, "--no-access-log"}
	}},
	{name: "gunicorn", args: func(example, module, host, port string) []string {
		return []string{"-m", "gunicorn", "-c", filepath.Join(example, "gunicorn.conf.py"),
			"-w", strconv.Itoa(fastapiReplicaWorkers), "--max-requests", strconv.Itoa(recycleAfter),
			"--max-requests-jitter", strconv.Itoa(recycleJitter),
			"-b", host + ":" + port, module + ":app"}
	}},
}

// fastapiReplica is one replica: a server and its worker processes on ip:port.
type fastapiReplica struct {
	*process
	ip, base string       // base: http://ip:port
	inFlight atomic.Int64 // the clients' requests to it not yet answered
	answered atomic.Int64 // the clients' requests it answered with 200
}

// fastapiService is the service's replicas, the DNS name the exporter finds them by, and the
// clients' view of them.
type fastapiService struct {
	srv       fastapiServer
	dir, port string
	env       []string
	dns       *dnstest.Server
	// client opens a new connection per request, so that the kernel hands every request to
	// whichever worker of the replica accepts it, as it does for many independent clients.
	client *http.Client

	mu       sync.Mutex
	all      []*fastapiReplica // every replica started
	rotation []*fastapiReplica // the replicas the clients send requests to, in turn
	next     int
	// answered counts the test's requests answered with 200 by each worker; worked holds
	// when each worker answered /work requests.
	answered map[int]int
	worked   map[int][]time.Time
}

// newFastAPIService prepares the replicas of the service under srv in dir, whose .env holds
// the pool settings, on a port free on every address of fastapiIPs; databaseURL and the
// leak detection threshold go in the environment.
func newFastAPIService(t *testing.T, dir string, srv fastapiServer, databaseURL string) *fastapiService {
	t.Helper()
	root := testbin.RepoRoot()
	return &fastapiService{
		srv: srv, dir: dir, port: sharedPort(t, fastapiIPs...), dns: dnstest.Start(t),
		env: []string{
			"DATABASE_URL=" + databaseURL,
			"DBPOOL_STATS_LEAK_THRESHOLD=" + strconv.Itoa(leakThresholdSeconds),
			"PYTHONPATH=" + strings.Join([]string{filepath.Join(root, "examples", "fastapi"), filepath.Join(root, "integrations", "python"),
				filepath.Join(root, "e2e", "testdata", "fastapi")}, string(os.PathListSeparator)),
			"PYTHONDONTWRITEBYTECODE=1", // no __pycache__ in the source tree
		},
		client:   &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}},
		answered: map[int]int{},
		worked:   map[int][]time.Time{},
	}
}

// start starts a replica on each of ips (their own shared directory each, as pods have) and
// waits until all answer.
func (s *fastapiService) start(t *testing.T, ips ...string) []*fastapiReplica {
	t.Helper()
	example := filepath.Join(testbin.RepoRoot(), "examples", "fastapi")
	python := testbin.Python(t, pythonenv.SA20)
	var out []*fastapiReplica
	for _, ip := range ips {
		name := s.srv.name + "-" + ip
		env := append(slices.Clone(s.env), "DBPOOL_STATS_DIR="+filepath.Join(s.dir, name))
		// leaky:app is app.main:app with one route more (e2e/testdata/fastapi/leaky.py).
		p := startProcess(t, s.dir, name, python, env, s.srv.args(example, "leaky", ip, s.port)...)
		out = append(out, &fastapiReplica{process: p, ip: ip, base: "http://" + net.JoinHostPort(ip, s.port)})
	}
	for _, r := range out {
		if err := r.WaitReady(context.Background(), 60*time.Second, 50*time.Millisecond, childproc.HTTPReady(r.base+"/healthz")); err != nil {
			t.Fatal(err)
		}
	}
	s.mu.Lock()
	s.all = append(s.all, out...)
	s.mu.Unlock()
	return out
}

// serve makes the name resolve to the replicas and the clients send their requests to them.
func (s *fastapiService) serve(replicas ...*fastapiReplica) {
	var addrs []netip.Addr
	for _, r := range replicas {
		addrs = append(addrs, netip.MustParseAddr(r.ip))
	}
	s.dns.Set(fastapiName, addrs...)
	s.setRotation(replicas...)
}

// setRotation makes the clients send their next requests to replicas.
func (s *fastapiService) setRotation(replicas ...*fastapiReplica) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rotation = slices.Clone(replicas)
}

// drain takes r out of the clients' rotation and waits until its requests are answered.
func (s *fastapiService) drain(t *testing.T, r *fastapiReplica, keep ...*fastapiReplica) {
	t.Helper()
	s.setRotation(keep...)
	for deadline := time.Now().Add(30 * time.Second); r.inFlight.Load() > 0; {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d requests still in flight 30 s after it left the rotation", r.name, r.inFlight.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (s *fastapiService) pick() *fastapiReplica {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.next++
	return s.rotation[s.next%len(s.rotation)]
}

// replicas returns the replicas in the rotation.
func (s *fastapiService) replicas() []*fastapiReplica {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.rotation)
}

// Output is the output of every replica started, one after the other.
func (s *fastapiService) Output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b strings.Builder
	for _, r := range s.all {
		b.WriteString(r.Output())
	}
	return b.String()
}

// logTail is the end of every replica's output.
func (s *fastapiService) logTail(n int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b strings.Builder
	for _, r := range s.all {
		fmt.Fprintf(&b, "%s:\n%s", r.name, indent(r.logTail(n)))
	}
	return b.String()
}

// workerPool is what one worker process reports of its own pool (GET /pool: SQLAlchemy's
// pool.checkedout(), overflow(), ...).
type workerPool struct {
	PID        int `json:"pid"`
	PoolSize   int `json:"pool_size"`
	CheckedOut int `json:"checked_out"`
	CheckedIn  int `json:"checked_in"`
	Overflow   int `json:"overflow"`
	Total      int `json:"total_connections"`
}

// getJSON sends GET path to r and decodes the answer into v; an answer with a pid counts
// for the worker that gave it.
func (s *fastapiService) getJSON(ctx context.Context, r *fastapiReplica, path string, v any) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.base+path, nil)
	if err != nil {
		return 0, err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return resp.StatusCode, err
	}
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode, nil
	}
	var by struct {
		PID int `json:"pid"`
	}
	if err := json.Unmarshal(body, &by); err != nil {
		return resp.StatusCode, fmt.Errorf("GET %s: %v: %s", path, err, body)
	}
	r.answered.Add(1)
	s.mu.Lock()
	s.answered[by.PID]++
	s.mu.Unlock()
	if v != nil {
		if err := json.Unmarshal(body, v); err != nil {
			return resp.StatusCode, fmt.Errorf("GET %s: %v: %s", path, err, body)
		}
	}
	return resp.StatusCode, nil
}

// answers returns how many of the test's requests each worker answered (with 200).
func (s *fastapiService) answers() map[int]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.answered)
}

// workedAfter counts the /work requests that worker pid answered after since.
func (s *fastapiService) workedAfter(pid int, since time.Time) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, a := range s.worked[pid] {
		if a.After(since) {
			n++
		}
	}
	return n
}

// lastWrite is when the worker pid of replica r, which was killed, last wrote its file:
// the collected_at of its final figures, which the replica serves among the exited.
func (s *fastapiService) lastWrite(t *testing.T, r *fastapiReplica, pid int) time.Time {
	t.Helper()
	var doc struct {
		Exited []struct {
			PID         int     `json:"pid"`
			CollectedAt float64 `json:"collected_at"`
		} `json:"exited"`
	}
	if code, err := s.getJSON(context.Background(), r, "/dbpool", &doc); err != nil || code != http.StatusOK {
		t.Fatalf("GET %s/dbpool: HTTP %d %v", r.base, code, err)
	}
	for _, e := range doc.Exited {
		if e.PID == pid {
			return time.Unix(0, int64(e.CollectedAt*1e9))
		}
	}
	t.Fatalf("%s/dbpool does not serve the final figures of its killed worker %d: %+v", r.base, pid, doc.Exited)
	return time.Time{}
}

// workerPools asks GET /pool of every replica in the rotation until each of its workers has
// answered once (the kernel picks the worker of each new connection) and returns the answers
// by pid.
func (s *fastapiService) workerPools(t *testing.T) map[int]workerPool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out := map[int]workerPool{}
	for _, r := range s.replicas() {
		mine := map[int]bool{}
		for i := 0; len(mine) < fastapiReplicaWorkers; i++ {
			if i == 400 {
				t.Fatalf("only %d of %d workers of %s answered GET /pool: %+v", len(mine), fastapiReplicaWorkers, r.name, out)
			}
			var wp workerPool
			if code, err := s.getJSON(ctx, r, "/pool", &wp); err != nil || code != http.StatusOK {
				t.Fatalf("GET %s/pool: HTTP %d %v", r.base, code, err)
			}
			out[wp.PID], mine[wp.PID] = wp, true
		}
	}
	return out
}

// outcomes counts the answers to /work requests as the clients saw them.
type outcomes struct {
	ok, unavailable, other, failed atomic.Int64 // 200, 503, another status, no answer
	mu                             sync.Mutex
	lastErr                        error
}

func (o *outcomes) answered() int64 { return o.ok.Load() + o.unavailable.Load() }

func (o *outcomes) String() string {
	return fmt.Sprintf("%d ok, %d 503, %d other status, %d without answer", o.ok.Load(), o.unavailable.Load(), o.other.Load(), o.failed.Load())
}

// sum adds up outcomes.
func sum(all ...*outcomes) *outcomes {
	out := &outcomes{}
	for _, o := range all {
		out.ok.Add(o.ok.Load())
		out.unavailable.Add(o.unavailable.Load())
		out.other.Add(o.other.Load())
		out.failed.Add(o.failed.Load())
		o.mu.Lock()
		if o.lastErr != nil {
			out.lastErr = o.lastErr
		}
		o.mu.Unlock()
	}
	return out
}

// work sends one GET /work?sleep= to the next replica in the rotation and counts its
// outcome in o.
func (s *fastapiService) work(ctx context.Context, sleep float64, o *outcomes) {
	r := s.pick()
	r.inFlight.Add(1)
	var answer struct {
		PID int `json:"pid"`
	}
	code, err := s.getJSON(ctx, r, "/work?sleep="+strconv.FormatFloat(sleep, 'f', -1, 64), &answer)
	r.inFlight.Add(-1)
	if err == nil && code == http.StatusOK {
		s.mu.Lock()
		s.worked[answer.PID] = append(s.worked[answer.PID], time.Now())
		s.mu.Unlock()
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	switch {
	case err != nil:
		o.failed.Add(1)
		o.lastErr = err
	case code == http.StatusOK:
		o.ok.Add(1)
	case code == http.StatusServiceUnavailable:
		o.unavailable.Add(1)
	default:
		o.other.Add(1)
		o.lastErr = fmt.Errorf("HTTP %d", code)
	}
}

// burst sends n concurrent /work requests and returns once all are answered.
func (s *fastapiService) burst(ctx context.Context, n int, sleep float64, o *outcomes) {
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() { s.work(ctx, sleep, o) })
	}
	wg.Wait()
}

// closedLoop runs clients that each send /work requests (bounded by ctx) one after the
// other until stop is done or max requests went out; the last ones are answered.
func (s *fastapiService) closedLoop(ctx, stop context.Context, clients, max int, sleep float64, o *outcomes) {
	var sent atomic.Int64
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			for ctx.Err() == nil && stop.Err() == nil && sent.Add(1) <= int64(max) {
				s.work(ctx, sleep, o)
			}
		})
	}
	wg.Wait()
}

// holdUntil waits at least least, then until done holds or most has passed: a phase lasts
// until what it is there for happened, however slow the machine (the checks after it say
// when it did not).
func holdUntil(least, most time.Duration, done func() bool) {
	start := time.Now()
	time.Sleep(least)
	for !done() && time.Since(start) < most {
		time.Sleep(50 * time.Millisecond)
	}
}

// recycled counts the workers that the servers replaced after their request limit (uvicorn
// logs it for both: gunicorn's worker class is uvicorn's).
func (s *fastapiService) recycled() int {
	return strings.Count(s.Output(), "Maximum request limit")
}

// killWorker SIGKILLs a worker process of a replica in the rotation whose counters the
// exporter has (a worker that has just replaced another may not have them yet) and returns
// its pid and replica; its server must replace it. The worker is found among the server's
// children in /proc, not by asking the service: under load the kernel hands new
// connections to whichever worker is free, which may for a long time be only the newest.
func (s *fastapiService) killWorker(t *testing.T, rec *scrapeRecorder) (int, *fastapiReplica) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		known := rec.processes(t)
		for _, r := range s.replicas() {
			for _, pid := range childProcesses(t, r.Pid()) {
				if !known[pid] {
					continue
				}
				if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
					t.Fatalf("kill worker %d: %v", pid, err)
				}
				return pid, r
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no worker of the replicas in the rotation is among the processes the exporter reports: %v", known)
		}
	}
}

// childProcesses returns the pids of the processes whose parent is ppid, from /proc.
func childProcesses(t *testing.T, ppid int) []int {
	t.Helper()
	dirs, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue // exited meanwhile
		}
		// The fields after the command's closing parenthesis: state, then ppid.
		fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(fields) >= 2 && fields[1] == strconv.Itoa(ppid) {
			out = append(out, pid)
		}
	}
	return out
}

// scrapeTimeout is the X-Prometheus-Scrape-Timeout-Seconds the recorder sends (Prometheus'
// default is 10 s): every scrape must answer within it. The exporter leaves itself 0.5 s of
// it (--scrape.timeout-offset); the rest is the app endpoints' deadline, of which a worker
// busy with the churn's requests on 2 shared cores has taken up to 1.8 s.
const scrapeTimeout = 5 * time.Second

// recordedScrape is one scrape of the exporter by the recorder.
type recordedScrape struct {
	start time.Time
	took  time.Duration
	err   error // transport error, status other than 200, or garbage
	mfs   exporterScrape
}

// scrapeRecorder scrapes the exporter's /metrics at a steady pace, as Prometheus would,
// and keeps every scrape.
type scrapeRecorder struct {
	url    string
	client *http.Client
	mu     sync.Mutex
	all    []recordedScrape
	stop   context.CancelFunc
	done   chan struct{}
}

func startScrapeRecorder(addr string, every time.Duration) *scrapeRecorder {
	ctx, cancel := context.WithCancel(context.Background())
	r := &scrapeRecorder{
		url: "http://" + addr + "/metrics",
		// Longer than the scrape timeout, so that an answer that comes too late is measured.
		client: &http.Client{Timeout: 5 * scrapeTimeout},
		stop:   cancel, done: make(chan struct{}),
	}
	go func() {
		defer close(r.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			s := r.scrape()
			r.mu.Lock()
			r.all = append(r.all, s)
			r.mu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return r
}

func (r *scrapeRecorder) scrape() recordedScrape {
	s := recordedScrape{start: time.Now()}
	req, _ := http.NewRequest(http.MethodGet, r.url, nil)
	req.Header.Set("X-Prometheus-Scrape-Timeout-Seconds", strconv.FormatFloat(scrapeTimeout.Seconds(), 'f', -1, 64))
	resp, err := r.client.Do(req)
	if err != nil {
		s.took, s.err = time.Since(s.start), err
		return s
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	s.took = time.Since(s.start)
	switch {
	case err != nil:
		s.err = err
	case resp.StatusCode != http.StatusOK:
		s.err = fmt.Errorf("HTTP %d", resp.StatusCode)
	default:
		parser := expfmt.NewTextParser(model.UTF8Validation)
		s.mfs, s.err = parser.TextToMetricFamilies(bytes.NewReader(body))
	}
	return s
}

// after waits for the first successful scrape that started after at, in which every app
// endpoint answered (dbpool_scrape_success of the app collector 1).
func (r *scrapeRecorder) after(t *testing.T, at time.Time) exporterScrape {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		r.mu.Lock()
		for _, s := range r.all {
			if ok, _ := s.mfs.value("dbpool_scrape_success", fastapiCollector); !s.start.Before(at) && s.err == nil && ok == 1 {
				r.mu.Unlock()
				return s.mfs
			}
		}
		r.mu.Unlock()
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no scrape of the exporter since %v with every app endpoint answering", at.Format(time.StampMilli))
	return nil
}

// processes returns the pids that the last successful scrape reports a pool of.
func (r *scrapeRecorder) processes(t *testing.T) map[int]bool {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(r.all) - 1; i >= 0; i-- {
		if s := r.all[i]; s.err == nil {
			out := map[int]bool{}
			for pid := range processValues(t, s.mfs, "dbpool_process_in_use_connections") {
				out[pid] = true
			}
			return out
		}
	}
	return nil
}

// finish stops the recorder and returns its scrapes.
func (r *scrapeRecorder) finish() []recordedScrape {
	r.stop()
	<-r.done
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.all
}

// counterSeries returns every counter and every histogram count and bucket of source="app"
// in s, keyed by name and labels.
func counterSeries(s exporterScrape) map[string]float64 {
	out := map[string]float64{}
	for name, mf := range s {
		for _, m := range mf.GetMetric() {
			var key strings.Builder
			key.WriteString(name + "{")
			app := false
			for _, l := range m.GetLabel() {
				app = app || (l.GetName() == "source" && l.GetValue() == "app")
				fmt.Fprintf(&key, "%s=%q,", l.GetName(), l.GetValue())
			}
			if !app {
				continue
			}
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				out[key.String()+"}"] = m.GetCounter().GetValue()
			case dto.MetricType_HISTOGRAM:
				h := m.GetHistogram()
				out[key.String()+"}_count"] = float64(h.GetSampleCount())
				for _, b := range h.GetBucket() {
					out[key.String()+"le="+strconv.FormatFloat(b.GetUpperBound(), 'g', -1, 64)+"}_bucket"] = float64(b.GetCumulativeCount())
				}
			}
		}
	}
	return out
}

// processPID is the pid in a process label (the integration's host:pid).
func processPID(label string) (int, error) {
	i := strings.LastIndexByte(label, ':')
	if i < 0 {
		return 0, errors.New("no pid in process label " + label)
	}
	return strconv.Atoi(label[i+1:])
}

// processValues returns the value of every series of name by the pid of its process label.
func processValues(t *testing.T, s exporterScrape, name string) map[int]float64 {
	t.Helper()
	out := map[int]float64{}
	for _, m := range s[name].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() != "process" {
				continue
			}
			pid, err := processPID(l.GetValue())
			if err != nil {
				t.Fatal(err)
			}
			out[pid] = m.GetGauge().GetValue()
		}
	}
	return out
}
