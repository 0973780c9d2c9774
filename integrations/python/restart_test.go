package python_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dbpool/dbpool_exporter/tools/childproc"
)

// restartCounters are the figures of one instance that a restart and a stop change.
type restartCounters struct {
	Checkouts struct {
		Count    int            `json:"count"`
		Failed   int            `json:"failed"`
		Failures map[string]int `json:"failures"`
	} `json:"checkouts"`
	CreateTime struct {
		Count  int `json:"count"`
		Failed int `json:"failed"`
	} `json:"create_time"`
	UseTime struct {
		Count int `json:"count"`
	} `json:"use_time"`
	Connects        int `json:"connects"`
	Invalidations   int `json:"invalidations"`
	PrePingFailures int `json:"pre_ping_failures"`
	Recycles        int `json:"recycles"`
	Closes          int `json:"closes"`
	Held            int `json:"held_connections"`
	Pending         int `json:"pending_checkouts"`
}

type restartStep struct {
	Errors []struct {
		Type    string `json:"type"`
		Refused bool   `json:"refused"`
	} `json:"errors"`
	Snapshot restartCounters `json:"snapshot"`
}

// TestServerRestart restarts, stops and starts a real PostgreSQL under
// tests/restart_scenario.py (a sync and an async engine, pre-ping on, 4 pooled connections),
// on every environment and driver, and checks what the counters say. SQLAlchemy invalidates
// the whole pool when one pre-ping fails: after a restart, pre_ping_failures and
// invalidations count that one event, not the 4 dead connections, and connects shows the 4
// replacements. While the server is down, every checkout fails to connect and is counted so.
func TestServerRestart(t *testing.T) {
	for _, run := range suiteRuns {
		t.Run(run.env+"/"+run.syncDriver+"+"+run.asyncDriver, func(t *testing.T) {
			t.Parallel()
			py := python(t, run.env)
			s := startServer(t, 0)
			result := runRestartScenario(t, py, s,
				sqlalchemyURL(t, s.appDSN, run.syncDriver), sqlalchemyURL(t, s.appDSN, run.asyncDriver))
			for _, kind := range []string{"sync", "async"} {
				t.Run(kind, func(t *testing.T) { checkRestart(t, result[kind]) })
			}
		})
	}
}

// runRestartScenario runs the script, does what its ACTION lines ask to the server, and
// returns its RESULT: per engine kind, per step.
func runRestartScenario(t *testing.T, py string, s server, dsn, asyncDSN string) map[string]map[string]restartStep {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, py, filepath.Join(dir(), "tests", "restart_scenario.py"), "--dsn", dsn, "--async-dsn", asyncDSN)
	cmd.Env = append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1", "DBPOOL_STATS_DIR=")
	var stderr childproc.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Wait() }()
	defer cancel() // kills the script if a check below fails first
	lines := bufio.NewScanner(stdout)
	lines.Buffer(nil, 1<<22)
	for lines.Scan() {
		line := lines.Text()
		switch {
		case strings.HasPrefix(line, "ACTION "):
			act := strings.TrimPrefix(line, "ACTION ")
			var err error
			switch act {
			case "stop":
				err = s.pg.Stop()
			case "restart", "start": // Restart starts a stopped server
				err = s.pg.Restart()
			default:
				err = fmt.Errorf("unknown action %q", act)
			}
			if err != nil {
				t.Fatalf("%s: %v\nscript stderr:\n%s", act, err, childproc.Tail(stderr.String(), 40))
			}
			if _, err := fmt.Fprintln(stdin, "done"); err != nil {
				t.Fatal(err)
			}
		case strings.HasPrefix(line, "RESULT "):
			var result map[string]map[string]restartStep
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "RESULT ")), &result); err != nil {
				t.Fatal(err)
			}
			return result
		default:
			t.Logf("script: %s", line)
		}
	}
	t.Fatalf("restart_scenario.py ended without RESULT (%v)\nstderr:\n%s", lines.Err(), childproc.Tail(stderr.String(), 60))
	return nil
}

func checkRestart(t *testing.T, steps map[string]restartStep) {
	t.Logf("%-9s %6s %5s %6s %8s %6s %13s %17s %8s %13s", "step", "errors", "count", "failed",
		"connects", "closes", "invalidations", "pre_ping_failures", "recycles", "create.failed")
	for _, name := range []string{"warm", "restarted", "stopped", "started"} {
		c := steps[name].Snapshot
		t.Logf("%-9s %6d %5d %6d %8d %6d %13d %17d %8d %13d", name, len(steps[name].Errors), c.Checkouts.Count,
			c.Checkouts.Failed, c.Connects, c.Closes, c.Invalidations, c.PrePingFailures, c.Recycles, c.CreateTime.Failed)
	}
	want := []struct {
		step                            string
		errors, count, failed           int
		connects, closes, invalidations int
		prePingFailures, failedCx       int // failedCx: checkouts that failed to connect, and failed creates
	}{
		{"warm", 0, 4, 0, 4, 0, 0, 0, 0},
		// One pre-ping fails; SQLAlchemy invalidates the pool and closes and replaces the
		// other three when they are checked out, without pinging them and without an
		// invalidate event.
		{"restarted", 0, 8, 0, 8, 4, 1, 1, 0},
		// The first checkout's pre-ping fails again (one more event), its reconnect is
		// refused; the other three are closed and reconnect at once, refused too; the fifth
		// checkout reconnects the first one's record, refused.
		{"stopped", 5, 13, 5, 8, 8, 2, 2, 5},
		{"started", 0, 17, 5, 12, 8, 2, 2, 5},
	}
	for _, w := range want {
		st, ok := steps[w.step]
		if !ok {
			t.Errorf("no step %q", w.step)
			continue
		}
		c := st.Snapshot
		got := []int{len(st.Errors), c.Checkouts.Count, c.Checkouts.Failed, c.Connects, c.Closes, c.Invalidations,
			c.PrePingFailures, c.Checkouts.Failures["connect"], c.CreateTime.Failed}
		exp := []int{w.errors, w.count, w.failed, w.connects, w.closes, w.invalidations, w.prePingFailures, w.failedCx, w.failedCx}
		if fmt.Sprint(got) != fmt.Sprint(exp) {
			t.Errorf("%s: errors, checkouts, failed, connects, closes, invalidations, pre_ping_failures, "+
				"connect failures, failed creates = %v, want %v", w.step, got, exp)
		}
		if c.Checkouts.Failed != c.Checkouts.Failures["connect"] || c.Recycles != 0 || c.Held != 0 || c.Pending != 0 {
			t.Errorf("%s: %+v", w.step, c)
		}
		for _, e := range st.Errors {
			if !e.Refused {
				t.Errorf("%s: the application saw %s, not a refused connection", w.step, e.Type)
			}
		}
	}
}
