package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/dbpool/dbpool_exporter/tools/childproc"
	"github.com/dbpool/dbpool_exporter/tools/pgtest"
	"github.com/dbpool/dbpool_exporter/tools/pythonenv"
)

// The FastAPI service (examples/fastapi) and integrations/python, relative to the
// repository root, where `make demo` runs.
var (
	fastapiDir  = filepath.Join("examples", "fastapi")
	integration = filepath.Join("integrations", "python")
)

// apiApp is the application behind the api pools.
type apiApp struct {
	proc     *childproc.Process
	python   bool   // the real FastAPI service, not poolsim
	statsURL string // its dbpool-stats endpoint (python only)
	truthURL string // its own count of its pool
	describe string
	// match is the exporter's matcher of the pool's backends: the service names all of
	// them api, poolsim api-<instance>.
	match   string
	workers int
	load    *loadGen // python only
}

// demoPython is the interpreter for the FastAPI service: flag, or by default the SQLAlchemy
// 2.0 environment of `make deps`, which the demo runs from the repository root. "none" asks
// for the simulation.
func demoPython(flag string) (string, error) {
	python := flag
	switch flag {
	case "none":
		return "", errors.New("--python=none")
	case "":
		var err error
		if python, err = pythonenv.Python(".", pythonenv.SA20); err != nil {
			return "", err
		}
	}
	// Absolute: the service runs in another working directory.
	if abs, err := exec.LookPath(python); err == nil {
		if python, err = filepath.Abs(abs); err != nil {
			return "", err
		}
	}
	if out, err := exec.Command(python, "-c", "import sqlalchemy, asyncpg, fastapi, pydantic_settings, uvicorn, uvicorn_worker, gunicorn").CombinedOutput(); err != nil {
		return "", fmt.Errorf("no SQLAlchemy, asyncpg, FastAPI, uvicorn and gunicorn for %s (run make deps): %v: %s", python, err, bytes.TrimSpace(out))
	}
	return python, nil
}

// serviceArgs is the command line that runs the service in dir with workers processes on
// addr.
func serviceArgs(server, dir, addr string, workers int) ([]string, error) {
	host, port, _ := strings.Cut(addr, ":")
	switch server {
	case "uvicorn":
		return []string{"-m", "uvicorn", "app.main:app", "--workers", strconv.Itoa(workers),
			"--host", host, "--port", port, "--no-access-log"}, nil
	case "gunicorn":
		// Workers are replaced after about 2000 requests each: the exporter's counters of
		// the pool keep growing through that.
		return []string{"-m", "gunicorn", "-c", filepath.Join(dir, "gunicorn.conf.py"),
			"-w", strconv.Itoa(workers), "--max-requests", "2000", "--max-requests-jitter", "200",
			"-b", addr, "app.main:app"}, nil
	}
	return nil, fmt.Errorf("--api-server %q: want uvicorn or gunicorn", server)
}

// startAPI starts the api pools: the FastAPI service with o.instances worker processes,
// each reporting its own pool (the app source), under a load of o.rate requests per second
// per worker, when the Python of o.python has its packages; else poolsim's simulation of the
// same QueuePool. Both read the demo's .env in work.
func startAPI(ctx context.Context, work string, o options, pg *pgtest.Postgres, appPW, simStatus string) (*apiApp, error) {
	python, err := demoPython(o.python)
	if err == nil {
		return startFastAPI(ctx, work, o, python, pg, appPW)
	}
	say(err.Error() + ": simulating the api pools with poolsim")
	p, err := start(filepath.Join(work, "poolsim.log"), append(envLines(appEnv), "DATABASE_URL="+pg.DSN(appRole, appPW, "postgres")), o.poolsim,
		"--app-name="+appName,
		"--instances="+strconv.Itoa(o.instances),
		"--rate="+strconv.FormatFloat(o.rate, 'f', -1, 64),
		"--query-time="+o.queryTime.String(),
		"--idle-in-tx-share=0.003", "--idle-in-tx-time=20s",
		"--long-query-share=0.0005", "--long-query-time=40s",
		"--hold-extra=10ms",
		"--status.listen="+simStatus,
		"--report-interval=0")
	if err != nil {
		return nil, err
	}
	return &apiApp{proc: p, truthURL: "http://" + simStatus + "/status", workers: o.instances,
		match:    fmt.Sprintf("application_name_regex: '%s-(?P<instance>[0-9]+)'", appName),
		describe: fmt.Sprintf("%d instances of a simulated SQLAlchemy-style QueuePool", o.instances)}, nil
}

func startFastAPI(ctx context.Context, work string, o options, python string, pg *pgtest.Postgres, appPW string) (*apiApp, error) {
	addr := freeAddr()
	if addr == "" {
		return nil, errors.New("no free loopback port")
	}
	root, err := os.Getwd()
	if err != nil {
		return nil, err
	}
	args, err := serviceArgs(o.apiServer, filepath.Join(root, fastapiDir), addr, o.instances)
	if err != nil {
		return nil, err
	}
	// The service reads .env in its working directory (work); the DSN goes in the
	// environment, not on a command line that ps shows.
	env := []string{
		"DATABASE_URL=" + fmt.Sprintf("postgresql+asyncpg://%s:%s@%s:%d/postgres", appRole, appPW, pg.Host, pg.Port),
		"PYTHONPATH=" + filepath.Join(root, fastapiDir) + string(os.PathListSeparator) + filepath.Join(root, integration),
		"PYTHONDONTWRITEBYTECODE=1", // no __pycache__ in the source tree
	}
	p, err := startIn(work, filepath.Join(work, "api.log"), env, python, args...)
	if err != nil {
		return nil, err
	}
	base := "http://" + addr
	if err := p.WaitReady(ctx, 60*time.Second, 100*time.Millisecond, childproc.HTTPReady(base+"/healthz")); err != nil {
		stop(p)
		return nil, fmt.Errorf("the FastAPI service did not start: %w", err)
	}
	return &apiApp{proc: p, python: true, statsURL: base + "/dbpool", truthURL: base + "/pool", workers: o.instances,
		match: "application_name: " + appName,
		load:  startLoad(ctx, base+"/work?sleep="+strconv.FormatFloat(o.queryTime.Seconds(), 'f', -1, 64), o.rate*float64(o.instances)),
		describe: fmt.Sprintf("the FastAPI service examples/fastapi (SQLAlchemy create_async_engine on asyncpg) under %s with %d worker processes, "+
			"%.0f requests/s of %v queries from the demo's clients; every worker reports its own pool at %s", o.apiServer, o.instances,
			o.rate*float64(o.instances), o.queryTime, base+"/dbpool")}, nil
}

// printTruth prints the application's own count of its pool, for comparison with the
// exporter's views.
func (a *apiApp) printTruth() {
	if a.python {
		a.printWorkers()
		return
	}
	var truth struct {
		Total struct {
			CheckedOut int     `json:"checked_out"`
			Open       int     `json:"open"`
			Overflow   int     `json:"overflow"`
			Pending    int     `json:"pending"`
			Timeouts   float64 `json:"timeouts_total"`
		} `json:"total"`
	}
	if err := getJSON(a.truthURL, &truth); err == nil {
		t := truth.Total
		fmt.Printf("  application's own count: checked out %d, open %d, overflow %d, waiting %d, timeouts %.0f\n",
			t.CheckedOut, t.Open, t.Overflow, t.Pending, t.Timeouts)
	}
}

// workerPool is one worker's answer to GET /pool: SQLAlchemy's own figures.
type workerPool struct {
	PID        int `json:"pid"`
	PoolSize   int `json:"pool_size"`
	CheckedOut int `json:"checked_out"`
	Overflow   int `json:"overflow"`
	Total      int `json:"total_connections"`
}

// poolClient opens a connection per request, so that each may reach another worker.
var poolClient = &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// printWorkers prints what the service's workers count themselves (GET /pool reaches one
// worker: asked until each answered, a few tries at most) and what the clients saw.
func (a *apiApp) printWorkers() {
	byPID := map[int]workerPool{}
	for range 10 * a.workers {
		var w workerPool
		resp, err := poolClient.Get(a.truthURL)
		if err == nil {
			err = decodeJSON(resp, &w)
		}
		if err == nil {
			byPID[w.PID] = w
		}
		if len(byPID) == a.workers {
			break
		}
	}
	var parts []string
	inUse, overflow, open := 0, 0, 0
	for _, pid := range slices.Sorted(maps.Keys(byPID)) {
		w := byPID[pid]
		parts = append(parts, fmt.Sprintf("%d", w.CheckedOut))
		inUse += w.CheckedOut
		overflow += max(0, w.Overflow)
		open += w.Total
	}
	fmt.Printf("  the workers' own pools (SQLAlchemy checkedout() of %d of %d workers): in use %d (%s), overflow %d, open %d\n",
		len(byPID), a.workers, inUse, strings.Join(parts, "+"), overflow, open)
	l := a.load
	fmt.Printf("  the clients: %d requests, %d answered 200, %d answered 503 (pool timeout), %d failed, %d not sent (too many in flight)\n",
		l.sent.Load(), l.ok.Load(), l.unavailable.Load(), l.failed.Load(), l.dropped.Load())
}
