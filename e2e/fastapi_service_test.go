package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
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

	"github.com/dbpool/dbpool_exporter/tools/pythonenv"
	"github.com/dbpool/dbpool_exporter/tools/testbin"
)

// The pieces of TestFastAPIService: the example service (examples/fastapi) under a server,
// the clients that load it, and the recorder of the exporter's scrapes.

// fastapiWorkers is the number of worker processes of every server.
const fastapiWorkers = 4

// fastapiServer is one way to run the service in production.
type fastapiServer struct {
	name string
	// args is the command line after the interpreter, serving on host:port.
	args func(example, host, port string) []string
	// recycles: the server replaces its workers after a number of requests.
	recycles bool
}

// gunicornMaxRequests is gunicorn's --max-requests: above what the phases before the churn
// send to any one worker (about 150 at most, the exporter's scrapes included), so that every
// worker is replaced only in the churn phase, and then several times. Each worker's limit is
// up to gunicornJitter higher, so that the workers are not all replaced at once (for seconds
// none would answer, as without jitter in production).
const (
	gunicornMaxRequests = 300
	gunicornJitter      = 150
)

var fastapiServers = []fastapiServer{
	{name: "uvicorn", args: func(_, host, port string) []string {
		return []string{"-m", "uvicorn", "app.main:app", "--workers", strconv.Itoa(fastapiWorkers),
			"--host", host, "--port", port, "--no-access-log"}
	}},
	{name: "gunicorn", recycles: true, args: func(example, host, port string) []string {
		return []string{"-m", "gunicorn", "-c", filepath.Join(example, "gunicorn.conf.py"),
			"-w", strconv.Itoa(fastapiWorkers), "--max-requests", strconv.Itoa(gunicornMaxRequests),
			"--max-requests-jitter", strconv.Itoa(gunicornJitter),
			"-b", host + ":" + port, "app.main:app"}
	}},
}

// fastapiService is the example service running under one server.
type fastapiService struct {
	*process
	base string // http://127.0.0.1:port
	// client opens a new connection per request, so that the kernel hands every request to
	// whichever worker accepts it, as it does for many independent clients.
	client *http.Client

	mu         sync.Mutex
	answeredBy map[int]int // requests of the test answered, by worker pid
}

// startFastAPI runs the service under srv in dir, whose .env holds the pool settings;
// databaseURL goes in the environment.
func startFastAPI(t *testing.T, dir string, srv fastapiServer, databaseURL string) *fastapiService {
	t.Helper()
	root := testbin.RepoRoot()
	example := filepath.Join(root, "examples", "fastapi")
	env := []string{
		"DATABASE_URL=" + databaseURL,
		"PYTHONPATH=" + example + string(os.PathListSeparator) + filepath.Join(root, "integrations", "python"),
		"PYTHONDONTWRITEBYTECODE=1", // no __pycache__ in the source tree
	}
	p, addr := startServer(t, dir, srv.name, testbin.Python(t, pythonenv.SA20), env, "/healthz", func(addr string) []string {
		host, port, _ := strings.Cut(addr, ":")
		return srv.args(example, host, port)
	})
	return &fastapiService{
		process:    p,
		base:       "http://" + addr,
		client:     &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}},
		answeredBy: map[int]int{},
	}
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

func (s *fastapiService) getJSON(ctx context.Context, path string, v any) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.base+path, nil)
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
	s.mu.Lock()
	s.answeredBy[by.PID]++
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
	return maps.Clone(s.answeredBy)
}

// workerPools asks GET /pool until every worker has answered once (the kernel picks the
// worker of each new connection) and returns the answers by pid.
func (s *fastapiService) workerPools(t *testing.T) map[int]workerPool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out := map[int]workerPool{}
	for range 400 {
		var wp workerPool
		if code, err := s.getJSON(ctx, "/pool", &wp); err != nil || code != http.StatusOK {
			t.Fatalf("GET /pool: HTTP %d %v", code, err)
		}
		out[wp.PID] = wp
		if len(out) == fastapiWorkers {
			return out
		}
	}
	t.Fatalf("only %d of %d workers answered GET /pool: %+v", len(out), fastapiWorkers, out)
	return nil
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

// work sends one GET /work?sleep= and counts its outcome in o.
func (s *fastapiService) work(ctx context.Context, sleep float64, o *outcomes) {
	code, err := s.getJSON(ctx, "/work?sleep="+strconv.FormatFloat(sleep, 'f', -1, 64), nil)
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
// other until until passes or max requests went out; the last ones are answered.
func (s *fastapiService) closedLoop(ctx context.Context, until time.Time, clients, max int, sleep float64, o *outcomes) {
	var sent atomic.Int64
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			for ctx.Err() == nil && time.Now().Before(until) && sent.Add(1) <= int64(max) {
				s.work(ctx, sleep, o)
			}
		})
	}
	wg.Wait()
}

// scrapeTimeout is the X-Prometheus-Scrape-Timeout-Seconds the recorder sends (Prometheus'
// default is 10 s): every scrape must answer within it. The exporter leaves itself 0.5 s of
// it (--scrape.timeout-offset); the rest is the app endpoint's deadline, of which a worker
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

// after waits for the first successful scrape that started after t.
func (r *scrapeRecorder) after(t *testing.T, at time.Time) exporterScrape {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		r.mu.Lock()
		for _, s := range r.all {
			if !s.start.Before(at) && s.err == nil {
				r.mu.Unlock()
				return s.mfs
			}
		}
		r.mu.Unlock()
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no successful scrape of the exporter since %v", at.Format(time.StampMilli))
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

// killWorker SIGKILLs a worker process whose counters the exporter has (one of the pids of
// known: a worker that has just replaced another may not have them yet) and returns its pid;
// the server must replace it.
func (s *fastapiService) killWorker(t *testing.T, known map[int]bool) int {
	t.Helper()
	var wp workerPool
	for i := 0; ; i++ {
		if code, err := s.getJSON(context.Background(), "/pool", &wp); err != nil || code != http.StatusOK {
			t.Fatalf("GET /pool: HTTP %d %v", code, err)
		}
		if known[wp.PID] {
			break
		}
		if i == 100 {
			t.Fatalf("100 answers to GET /pool, none from a worker the exporter reports: %v", known)
		}
	}
	// Only a child of the server this test started.
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", wp.PID))
	if err != nil {
		t.Fatal(err)
	}
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	if len(fields) < 2 || fields[1] != strconv.Itoa(s.Pid()) {
		t.Fatalf("GET /pool answered by pid %d, not a worker of the server %d (%s)", wp.PID, s.Pid(), stat)
	}
	if err := syscall.Kill(wp.PID, syscall.SIGKILL); err != nil {
		t.Fatalf("kill worker %d: %v", wp.PID, err)
	}
	return wp.PID
}
