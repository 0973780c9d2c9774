//go:build acceptance

package acceptance

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/dbpool/dbpool_exporter/internal/health"
	"github.com/dbpool/dbpool_exporter/internal/metrics"
	"github.com/dbpool/dbpool_exporter/tools/childproc"
	"github.com/dbpool/dbpool_exporter/tools/testbin"
)

// loop runs the parts of the closed loop: the applications (openload.py, one process per
// instance, on fixed addresses so that the exporter finds them again after a restart) and the
// exporter, and collects the table of predicted against measured figures.
type loop struct {
	t               *testing.T
	python, script  string
	appDSN, monitor string
	bin             string
	addrs           []string // one per instance
	rows            [][5]string
}

// settings are an application's pool settings (DB_POOL_SIZE, DB_MAX_OVERFLOW, DB_POOL_TIMEOUT).
type settings struct {
	size, overflow int
	timeout        float64
}

// load is the open-loop load on every instance: requests per second, seconds each holds its
// connection.
type load struct{ rate, hold float64 }

type app struct {
	proc *childproc.Process
	base string
}

type exporter struct {
	proc *childproc.Process
	base string
}

// startApps starts one application per instance address and waits until each serves.
func (l *loop) startApps(s settings, ld load) []*app {
	l.t.Helper()
	var apps []*app
	for i, addr := range l.addrs {
		p := testbin.StartProcess(l.t, childproc.Spec{
			Name: fmt.Sprintf("openload-%d", i+1),
			Path: l.python,
			Args: []string{l.script, "--dsn", l.appDSN, "--listen", addr, "--name", "api",
				"--application-name", fmt.Sprintf("api-%d", i+1), "--seed", strconv.Itoa(i + 1),
				"--rate", fmtArg(ld.rate), "--hold-seconds", fmtArg(ld.hold),
				"--pool-size", strconv.Itoa(s.size), "--max-overflow", strconv.Itoa(s.overflow),
				"--pool-timeout", fmtArg(s.timeout)},
			Env: append(childproc.Environ("DB_", "DATABASE_URL="), "PYTHONDONTWRITEBYTECODE=1"),
		})
		if _, err := p.WaitMatch(context.Background(), 30*time.Second, regexp.MustCompile(`(?m)^listening on `)); err != nil {
			l.t.Fatalf("%s did not start: %v\n%s", p.Name, err, p.Tail(20))
		}
		apps = append(apps, &app{proc: p, base: "http://" + addr})
	}
	return apps
}

func fmtArg(x float64) string { return strconv.FormatFloat(x, 'f', -1, 64) }

func (l *loop) stopApps(apps []*app) {
	for _, a := range apps {
		if err := a.proc.Stop(syscall.SIGTERM, 15*time.Second); err != nil {
			l.t.Logf("%s: %v", a.proc.Name, err)
		}
	}
}

// startExporter starts the exporter binary watching the server and both application
// endpoints, with a short history window sampled every second.
func (l *loop) startExporter() *exporter {
	l.t.Helper()
	args := []string{"--pg.dsn=" + l.monitor, "--pg.target-name=db", "--pool.name=api",
		"--pool.application-name-regex=api-(?P<instance>[0-9]+)",
		"--health.window=" + window.String(), "--health.sample-interval=1s"}
	for _, addr := range l.addrs {
		args = append(args, "--app.url=http://"+addr+"/dbpool")
	}
	p, addr := testbin.StartServer(l.t, testbin.ServerSpec{
		Spec:      childproc.Spec{Name: "exporter", Path: l.bin, Env: childproc.Environ("DB_", "DATA_SOURCE_NAME=")},
		Args:      func(addr string) []string { return append([]string{"--web.listen-address=" + addr}, args...) },
		ReadyPath: "/-/healthy",
		Timeout:   30 * time.Second,
	})
	return &exporter{proc: p, base: "http://" + addr}
}

func (l *loop) stopExporter(e *exporter) {
	if err := e.proc.Stop(syscall.SIGTERM, 15*time.Second); err != nil {
		l.t.Logf("exporter: %v", err)
	}
}

// report is the daemon's answer for pool api as the application reports it.
func (l *loop) report(e *exporter) health.Report {
	l.t.Helper()
	var doc health.PoolsResponse
	l.getJSON(http.MethodGet, e.base+health.PoolsPath, &doc)
	for _, r := range doc.Pools {
		if r.Pool == "api" && r.Source == metrics.SourceApp {
			return r
		}
	}
	l.t.Fatalf("the exporter has no app report of pool api:\n%s", e.proc.Tail(30))
	return health.Report{}
}

// measured is what the applications' callers saw, summed over the instances.
type measured struct {
	seconds                                float64 // the longest of the instances' spans
	attempts, ok, timeouts, errors         float64
	waitSum, holdSum, busySum, poolSizeSum float64
	lastError                              string
}

type measuredDoc struct {
	Seconds         float64 `json:"seconds"`
	Attempts        float64 `json:"attempts"`
	OK              float64 `json:"ok"`
	Timeouts        float64 `json:"timeouts"`
	Errors          float64 `json:"errors"`
	LastError       string  `json:"last_error"`
	MeanWaitSeconds float64 `json:"mean_wait_seconds"`
	MeanHoldSeconds float64 `json:"mean_hold_seconds"`
	MeanInUse       float64 `json:"mean_in_use"`
	PoolSize        float64 `json:"pool_size"`
}

func (l *loop) reset(apps []*app) {
	for _, a := range apps {
		var d measuredDoc
		l.getJSON(http.MethodPost, a.base+"/reset", &d)
	}
}

func (l *loop) measure(apps []*app) measured {
	var m measured
	for _, a := range apps {
		var d measuredDoc
		l.getJSON(http.MethodGet, a.base+"/measured", &d)
		m.seconds = max(m.seconds, d.Seconds)
		m.attempts += d.Attempts
		m.ok += d.OK
		m.timeouts += d.Timeouts
		m.errors += d.Errors
		m.waitSum += d.MeanWaitSeconds * d.Attempts
		m.holdSum += d.MeanHoldSeconds * d.OK
		m.busySum += d.MeanInUse
		m.poolSizeSum += d.PoolSize
		if d.LastError != "" {
			m.lastError = d.LastError
		}
	}
	return m
}

func (m measured) attemptsPerSecond() float64 { return m.attempts / m.seconds }
func (m measured) timeoutsPerSecond() float64 { return m.timeouts / m.seconds }
func (m measured) timeoutRatio() float64      { return m.timeouts / max(m.attempts, 1) }
func (m measured) meanWait() float64          { return m.waitSum / max(m.attempts, 1) }
func (m measured) meanHold() float64          { return m.holdSum / max(m.ok, 1) }
func (m measured) utilization() float64       { return m.busySum / max(m.poolSizeSum, 1) }

func (l *loop) getJSON(method, url string, v any) {
	l.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		l.t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		l.t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		l.t.Fatalf("%s %s: %s %v\n%s", method, url, resp.Status, err, body)
	}
	if err := json.Unmarshal(body, v); err != nil {
		l.t.Fatalf("%s %s: %v\n%s", method, url, err, body)
	}
}

// row adds a line to the table of predicted against measured figures.
func (l *loop) row(phase, figure, predicted, measured, verdict string) {
	l.rows = append(l.rows, [5]string{phase, figure, predicted, measured, verdict})
}

// printTable logs the table; it runs when the test ends, failed or not.
func (l *loop) printTable() {
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "phase\tfigure\tpredicted\tmeasured\t")
	for _, r := range l.rows {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", r[0], r[1], r[2], r[3], r[4])
	}
	_ = w.Flush()
	l.t.Logf("predicted against measured (figures per instance unless said otherwise; measured by the application itself):\n%s", b.String())
}
