package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"time"

	"github.com/dbpool/dbpool_exporter/tools/childproc"
	"github.com/dbpool/dbpool_exporter/tools/pgtest"
	"github.com/dbpool/dbpool_exporter/tools/pythonenv"
)

// loadApp is integrations/python's runnable SQLAlchemy application, relative to the
// repository root, where `make demo` runs.
var loadApp = filepath.Join("integrations", "python", "examples", "loadapp.py")

// apiApp is the application behind the api pools.
type apiApp struct {
	proc     *childproc.Process
	python   bool   // a real SQLAlchemy application, not poolsim
	statsURL string // its dbpool-stats endpoint (python only)
	truthURL string // its own count of its pool
	describe string
}

var listeningRe = regexp.MustCompile(`listening on (http://\S+/dbpool)`)

// demoPython is the interpreter for loadapp.py: flag, or by default the SQLAlchemy 2.0
// environment of `make deps`, which the demo runs from the repository root. "none" asks for
// the simulation.
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
	if out, err := exec.Command(python, "-c", "import sqlalchemy, psycopg").CombinedOutput(); err != nil {
		return "", fmt.Errorf("no SQLAlchemy and psycopg for %s (run make deps): %v: %s", python, err, bytes.TrimSpace(out))
	}
	return python, nil
}

// startAPI starts the api pools: o.instances worker processes of a real SQLAlchemy
// application that reports its own pool (the app source) when the Python of o.python has
// SQLAlchemy and psycopg, else poolsim's simulation of the same QueuePool. Both read the
// demo's .env and name their backends api-<instance>.
func startAPI(ctx context.Context, work string, o options, pg *pgtest.Postgres, appPW, simStatus string) (*apiApp, error) {
	env := envLines(appEnv)
	python, err := demoPython(o.python)
	if err == nil {
		// The DSN goes in the environment (loadapp.py reads DATABASE_URL), not on a command line
		// that ps shows.
		dsn := fmt.Sprintf("postgresql+psycopg://%s:%s@%s:%d/postgres", appRole, appPW, pg.Host, pg.Port)
		p, err := start(filepath.Join(work, "api.log"), append(env, "DATABASE_URL="+dsn), python,
			"-u", loadApp, "--name", poolName, "--workers", strconv.Itoa(o.instances),
			"--application-name", appName+"-{worker}", "--listen", "127.0.0.1:0",
			// Closed-loop callers: 6 per worker (pool size 5) holding a connection for the query
			// time, with a short pause between requests, so that overflow comes and goes.
			"--concurrency", "6", "--query-seconds", strconv.FormatFloat(o.queryTime.Seconds(), 'f', -1, 64),
			"--think-seconds", "0.03")
		if err != nil {
			return nil, err
		}
		var url string
		err = p.WaitReady(ctx, 60*time.Second, 100*time.Millisecond, func() error {
			if m := listeningRe.FindStringSubmatch(p.Output()); m != nil {
				url = m[1]
				return nil
			}
			return errors.New("not listening yet")
		})
		if err != nil {
			stop(p)
			return nil, fmt.Errorf("the SQLAlchemy application did not start: %w", err)
		}
		base := url[:len(url)-len("/dbpool")]
		return &apiApp{proc: p, python: true, statsURL: url, truthURL: base + "/truth",
			describe: fmt.Sprintf("%d worker processes of a real SQLAlchemy application (integrations/python/examples/loadapp.py) that reports its own pool at %s", o.instances, url)}, nil
	}
	say(err.Error() + ": simulating the api pools with poolsim")
	p, err := start(filepath.Join(work, "poolsim.log"), append(env, "DATABASE_URL="+pg.DSN(appRole, appPW, "postgres")), o.poolsim,
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
	return &apiApp{proc: p, truthURL: "http://" + simStatus + "/status",
		describe: fmt.Sprintf("%d instances of a simulated SQLAlchemy-style QueuePool", o.instances)}, nil
}

// printTruth prints the application's own count of its pool, for comparison with the
// exporter's views.
func (a *apiApp) printTruth() {
	if a.python {
		var t struct {
			CheckedOut int `json:"checked_out"`
			CheckedIn  int `json:"checked_in"`
			Timeouts   int `json:"timeouts_seen"`
			Attempts   int `json:"checkouts_attempted"`
		}
		if err := getJSON(a.truthURL, &t); err == nil {
			fmt.Printf("  application's own count (SQLAlchemy checkedout()): checked out %d, idle in pool %d, checkouts %d, timeouts %d\n",
				t.CheckedOut, t.CheckedIn, t.Attempts, t.Timeouts)
		}
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
