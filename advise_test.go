package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dbpool/dbpool_exporter/tools/childproc"
	"github.com/dbpool/dbpool_exporter/tools/pgtest"
	"github.com/dbpool/dbpool_exporter/tools/testbin"
)

// adviseJSON is the part of `advise --output=json` the tests read.
type adviseJSON struct {
	Samples  int  `json:"samples"`
	Healthy  bool `json:"healthy"`
	ExitCode int  `json:"exit_code"`
	Targets  []struct {
		Target  string `json:"target"`
		Reached bool   `json:"reached"`
	} `json:"targets"`
	Pools []struct {
		Target string `json:"target"`
		Pool   string `json:"pool"`
		State  string `json:"state"`
		Health struct {
			Warnings []struct {
				Rule    string `json:"rule"`
				Message string `json:"message"`
			} `json:"warnings"`
		} `json:"health"`
		Connections struct {
			IdleInTransaction *int `json:"idle_in_transaction"`
		} `json:"active_connections"`
		Optimization struct {
			RecommendedPoolSize    int    `json:"recommended_pool_size"`
			RecommendedMaxOverflow int    `json:"recommended_max_overflow"`
			PoolSizeRule           string `json:"pool_size_rule"`
			Env                    string `json:"env"`
		} `json:"optimization"`
	} `json:"pools"`
}

func TestAdviseCommand(t *testing.T) {
	bin := testbin.Exporter(t)
	pg := pgtest.StartT(t, pgtest.Options{})
	const password = "Advise-Secret-31337"
	if err := pg.CreateRole("monitor", password, false, "pg_monitor"); err != nil {
		t.Fatal(err)
	}
	if err := pg.CreateRole("app", "App-Pw-1", false); err != nil {
		t.Fatal(err)
	}
	dsn := pg.DSN("monitor", password, "postgres")
	short := []string{"advise", "--advise.duration=3s", "--advise.interval=250ms", "--no-collector.probe"}
	pool := []string{"--pool.name=leaky", "--pool.application-name=leaky"}
	env := []string{"DATA_SOURCE_NAME=" + dsn, "DB_POOL_SIZE=10", "DB_MAX_OVERFLOW=20"}
	noPassword := func(t *testing.T, texts ...string) {
		t.Helper()
		for _, s := range texts {
			if strings.Contains(s, password) {
				t.Errorf("password in output:\n%s", s)
			}
		}
	}

	t.Run("healthy pool: exit 0 and .env lines", func(t *testing.T) {
		code, out, errOut := runBinary(t, bin, env, append(short, pool...)...)
		t.Logf("advise output:\n%s", out)
		if code != adviseHealthy {
			t.Errorf("exit code %d, want %d\nstdout:\n%s\nstderr:\n%s", code, adviseHealthy, out, errOut)
		}
		// No backend was in use, but 3 s of history is far short of the 1h window: the
		// oversized 10/20 pool keeps its size, and the output says why.
		for _, want := range []string{"== pool leaky on 127.0.0.1:", ": OK\n", "(window 1h0m0s)",
			"of a 1h0m0s window: short, so no pool shrinks on it",
			"[keep_current]", "1 might do, but ", "a short history never shrinks a pool: keep DB_POOL_SIZE at 10",
			"recommended:  DB_POOL_SIZE=10 (by keep_current), DB_MAX_OVERFLOW=20 (by overflow_2x); per instance",
			"recommended settings for .env (by keep_current):\nDB_POOL_SIZE=10\nDB_MAX_OVERFLOW=20\n",
			"summary: 1 pool(s): 1 ok, 0 warning, 0 saturated; exit code 0"} {
			if !strings.Contains(out, want) {
				t.Errorf("output lacks %q", want)
			}
		}
		noPassword(t, out, errOut)
	})

	// Six sessions of the application that began a transaction and left it open.
	for i := range 6 {
		cfg, err := pgx.ParseConfig(pg.DSN("app", "App-Pw-1", "postgres"))
		if err != nil {
			t.Fatal(err)
		}
		cfg.RuntimeParams["application_name"] = "leaky"
		conn, err := pgx.ConnectConfig(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		if _, err := conn.Exec(context.Background(), fmt.Sprintf("BEGIN; SELECT %d", i)); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("leak: exit 3, text", func(t *testing.T) {
		code, out, errOut := runBinary(t, bin, env, append(short, pool...)...)
		t.Logf("advise output:\n%s", out)
		if code != adviseUnhealthy {
			t.Errorf("exit code %d, want %d\nstderr:\n%s", code, adviseUnhealthy, errOut)
		}
		for _, want := range []string{": WARNING\n", "connections:  active 0, idle 0, idle in transaction 6",
			"  - [idle_in_transaction] 6 connections are idle in transaction, above the alert level of 5: a transaction leak",
			"recommended settings for .env (by ", "DB_POOL_SIZE=", "DB_MAX_OVERFLOW=", "exit code 3"} {
			if !strings.Contains(out, want) {
				t.Errorf("output lacks %q", want)
			}
		}
	})

	t.Run("leak: exit 3, json", func(t *testing.T) {
		code, out, errOut := runBinary(t, bin, env, append(append(short, pool...), "--output=json")...)
		if code != adviseUnhealthy {
			t.Errorf("exit code %d, want %d\nstderr:\n%s", code, adviseUnhealthy, errOut)
		}
		var doc adviseJSON
		if err := json.Unmarshal([]byte(out), &doc); err != nil {
			t.Fatalf("not JSON: %v\n%s", err, out)
		}
		if doc.ExitCode != 3 || doc.Healthy || doc.Samples < 4 || len(doc.Targets) != 1 || !doc.Targets[0].Reached || len(doc.Pools) != 1 {
			t.Fatalf("document: %+v", doc)
		}
		p := doc.Pools[0]
		rules := []string{}
		for _, w := range p.Health.Warnings {
			rules = append(rules, w.Rule)
		}
		// 6 idle in transaction count as in use: 60% of pool_size 10, not above 70%.
		if p.Pool != "leaky" || p.State != "warning" || strings.Join(rules, ",") != "idle_in_transaction" ||
			p.Connections.IdleInTransaction == nil || *p.Connections.IdleInTransaction != 6 {
			t.Errorf("pool: %+v, rules %v", p, rules)
		}
		// Peak 6 in use, +50% = 9: observed_peak raises nothing (10 covers it) and the pool is
		// not oversized (6 is not below 30% of 10), so the current size stays.
		if o := p.Optimization; o.RecommendedPoolSize != 10 || o.RecommendedMaxOverflow != 20 || o.PoolSizeRule != "keep_current" ||
			o.Env != "DB_POOL_SIZE=10\nDB_MAX_OVERFLOW=20\n" {
			t.Errorf("optimization: %+v", o)
		}
		noPassword(t, out, errOut)
	})

	// The same six sessions when the configuration names another pool: they form the
	// unconfigured group application_name:leaky, like an ad-hoc psql would. Its warning prints, but it
	// fails the run only with --advise.include-unconfigured.
	t.Run("leak in an unconfigured group: exit 0 unless --advise.include-unconfigured", func(t *testing.T) {
		other := append(append([]string{}, short...), "--pool.name=api", "--pool.application-name=api")
		code, out, errOut := runBinary(t, bin, env, other...)
		t.Logf("advise output:\n%s", out)
		if code != adviseHealthy {
			t.Errorf("exit code %d, want %d\nstderr:\n%s", code, adviseHealthy, errOut)
		}
		for _, want := range []string{"== pool api on 127.0.0.1:", "== pool application_name:leaky on 127.0.0.1:", ": WARNING\n",
			"  - [idle_in_transaction] 6 connections are idle in transaction",
			"summary: 2 pool(s): 1 ok, 1 warning, 0 saturated; exit code 0 (not counted: 1 unconfigured pool(s) with warnings, application_name:leaky on 127.0.0.1:",
			"--advise.include-unconfigured counts them)"} {
			if !strings.Contains(out, want) {
				t.Errorf("output lacks %q", want)
			}
		}

		for _, tc := range []struct {
			include    bool
			code       int
			notCounted int
		}{{false, adviseHealthy, 1}, {true, adviseUnhealthy, 0}} {
			args := append(append([]string{}, other...), "--output=json")
			if tc.include {
				args = append(args, "--advise.include-unconfigured")
			}
			code, out, errOut := runBinary(t, bin, env, args...)
			var doc struct {
				adviseJSON
				IncludeUnconfigured bool     `json:"include_unconfigured"`
				NotCounted          []string `json:"not_counted"`
			}
			if err := json.Unmarshal([]byte(out), &doc); err != nil {
				t.Fatalf("not JSON: %v\n%s", err, out)
			}
			if code != tc.code || doc.ExitCode != tc.code || doc.Healthy != (tc.code == 0) ||
				doc.IncludeUnconfigured != tc.include || len(doc.NotCounted) != tc.notCounted {
				t.Errorf("--advise.include-unconfigured=%v: exit code %d, document healthy %v, exit_code %d, include_unconfigured %v, not_counted %v; want %d\nstderr:\n%s",
					tc.include, code, doc.Healthy, doc.ExitCode, doc.IncludeUnconfigured, doc.NotCounted, tc.code, errOut)
			}
		}
	})

	t.Run("database unreachable: exit 1", func(t *testing.T) {
		down := fmt.Sprintf("postgres://monitor:%s@127.0.0.1:%d/postgres?sslmode=disable", password, freePort(t))
		code, out, errOut := runBinary(t, bin, []string{"DATA_SOURCE_NAME=" + down}, short...)
		if code != adviseError || !strings.Contains(errOut, "unreachable for the whole run") {
			t.Errorf("exit code %d, want %d\nstdout:\n%s\nstderr:\n%s", code, adviseError, out, errOut)
		}
		noPassword(t, out, errOut)
	})

	for _, tc := range []struct {
		name string
		env  []string
		args []string
		code int
		want string
	}{
		{"bad configuration", []string{"DATA_SOURCE_NAME=" + dsn, "DB_POOL_SIZE=abc"}, short, adviseError, "DB_POOL_SIZE"},
		{"no target", nil, short, adviseError, "no target"},
		{"bad interval", env, []string{"advise", "--advise.interval=0s"}, adviseError, "--advise.interval=0s"},
		{"bad output", env, []string{"advise", "--output=xml"}, 2, "xml"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runBinary(t, bin, tc.env, tc.args...)
			if code != tc.code || !strings.Contains(errOut, tc.want) {
				t.Errorf("exit code %d, want %d; stderr lacks %q?\nstdout:\n%s\nstderr:\n%s", code, tc.code, tc.want, out, errOut)
			}
		})
	}

	t.Run("help", func(t *testing.T) {
		code, out, _ := runBinary(t, bin, nil, "--help")
		for _, want := range []string{"serve*", "advise [<flags>]", "--health.window", "--health.sample-interval"} {
			if code != 0 || !strings.Contains(out, want) {
				t.Errorf("--help (code %d) lacks %q", code, want)
			}
		}
		code, out, _ = runBinary(t, bin, nil, "advise", "--help")
		for _, want := range []string{"--advise.interval=5s", "--advise.duration=1m", "--output=text", "--pg.dsn",
			"--[no-]advise.include-unconfigured", "3 a configured pool has warnings"} {
			if code != 0 || !strings.Contains(out, want) {
				t.Errorf("advise --help (code %d) lacks %q", code, want)
			}
		}
	})
}

// TestAdvisePgBouncer: a PgBouncer pool gets its warnings and a size in PgBouncer's own
// settings, but no DB_* lines and no overflow_2x: those are about an application's pool.
func TestAdvisePgBouncer(t *testing.T) {
	bin := testbin.Exporter(t)
	pg := pgtest.StartT(t, pgtest.Options{})
	if err := pg.CreateRole("app", "App-Pw-7", false); err != nil {
		t.Fatal(err)
	}
	b := pgtest.StartPgBouncerT(t, pg, pgtest.PgBouncerOptions{DefaultPoolSize: 2})
	// Two clients in open transactions hold both server connections of pool app/app
	// (transaction pooling): all of its capacity is in use.
	for range 2 {
		cfg, err := pgx.ParseConfig(b.DSN("app", "App-Pw-7", "app"))
		if err != nil {
			t.Fatal(err)
		}
		cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
		conn, err := pgx.ConnectConfig(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		if _, err := conn.Exec(context.Background(), "BEGIN; SELECT 1"); err != nil {
			t.Fatal(err)
		}
	}
	args := []string{"advise", "--advise.duration=2s", "--advise.interval=250ms", "--pgbouncer.dsn=" + b.StatsDSN()}
	code, out, errOut := runBinary(t, bin, []string{"DB_POOL_SIZE=10", "DB_MAX_OVERFLOW=20"}, args...)
	t.Logf("advise output:\n%s", out)
	if code != adviseUnhealthy {
		t.Errorf("exit code %d, want %d\nstderr:\n%s", code, adviseUnhealthy, errOut)
	}
	i := strings.Index(out, "== pool app/app ")
	if i < 0 {
		t.Fatalf("no pool app/app:\n%s\nstderr:\n%s", out, errOut)
	}
	pool := out[i:]
	if end := strings.Index(pool[1:], "\n== pool "); end >= 0 {
		pool = pool[:end+1]
	}
	for _, want := range []string{"(source pgbouncer, exact): SATURATED",
		"  - [utilization_high] raise pool_size in [databases] (or default_pool_size): the connections are busy most of the time, so bursts queue; recommended: pool_size in [databases] (or default_pool_size)=3, reserve_pool_size=0 (by observed_peak",
		"  - [observed_peak] peak 2 in use per instance (busiest instance) over the last ", "; +50% headroom = 3, a lower bound without hold times",
		": set pool_size in [databases] (or default_pool_size) to 3 (now 2)",
		"recommended:  pool_size in [databases] (or default_pool_size)=3 (by observed_peak), reserve_pool_size=0 (by keep_overflow); per instance",
		"recommended settings for .env: none (DB_* configure an application's own pool, not a PgBouncer pool: its sizing is in PgBouncer's own settings above)"} {
		if !strings.Contains(pool, want) {
			t.Errorf("pool app/app lacks %q", want)
		}
	}
	for _, bad := range []string{"DB_POOL_SIZE", "DB_MAX_OVERFLOW", "overflow_2x"} {
		if strings.Contains(out, bad) {
			t.Errorf("advice on PgBouncer pools speaks of %s", bad)
		}
	}
}

// TestDaemonServesAdvice: the daemon, started as before without a command, serves the API,
// the status page (linked from the landing page) and the recommendation metrics.
func TestDaemonServesAdvice(t *testing.T) {
	bin := testbin.Exporter(t)
	pg := pgtest.StartT(t, pgtest.Options{})
	if err := pg.CreateRole("monitor", "Mon-Pw-2", false, "pg_monitor"); err != nil {
		t.Fatal(err)
	}
	for _, command := range [][]string{nil, {"serve"}} {
		t.Run(fmt.Sprintf("command %v", command), func(t *testing.T) {
			// The sampler alone fills the history: after MinHistory (a tenth of the window)
			// the recommendation is a metric. The deadline includes the start.
			deadline := time.Now().Add(20 * time.Second)
			exporter, addr := testbin.StartServer(t, testbin.ServerSpec{
				Spec: childproc.Spec{Name: "exporter", Path: bin, Env: cleanEnv()},
				Args: func(addr string) []string {
					return append(command, "--web.listen-address="+addr, "--pg.dsn="+pg.DSN("monitor", "Mon-Pw-2", "postgres"),
						"--pg.target-name=db", "--health.window=10s", "--health.sample-interval=1s")
				},
				ReadyPath: "/metrics",
				Timeout:   20 * time.Second,
			})
			base := "http://" + addr
			for {
				if resp, err := http.Get(base + "/metrics"); err == nil {
					var b bytes.Buffer
					_, _ = b.ReadFrom(resp.Body)
					resp.Body.Close()
					if strings.Contains(b.String(), `dbpool_recommended_size_connections{pool="default",target="db"} `) &&
						strings.Contains(b.String(), `dbpool_recommended_max_overflow_connections{pool="default",target="db"} `) {
						break
					}
				}
				if time.Now().After(deadline) {
					t.Fatalf("no recommendation metrics; logs:\n%s", exporter.Output())
				}
				time.Sleep(200 * time.Millisecond)
			}
			code, landing := testbin.Get(t, base+"/")
			if code != 200 || !strings.Contains(landing, `href="/pools"`) || !strings.Contains(landing, `href="/api/v1/pools"`) {
				t.Errorf("landing page (%d) does not link the pool pages:\n%s", code, landing)
			}
			code, page := testbin.Get(t, base+"/pools")
			if code != 200 || !strings.Contains(page, `data-pool="default"`) {
				t.Errorf("/pools: %d\n%s", code, page)
			}
			code, body := testbin.Get(t, base+"/api/v1/optimize?pool=default")
			if code != 200 || !strings.Contains(body, `"target": "db"`) || !strings.Contains(body, `"recommended_pool_size"`) {
				t.Errorf("/api/v1/optimize: %d\n%s", code, body)
			}
			code, body = testbin.Get(t, base+"/api/v1/status?pool=missing")
			if code != 404 || !strings.Contains(body, `"error": "unknown pool \"missing\""`) {
				t.Errorf("/api/v1/status?pool=missing: %d\n%s", code, body)
			}

			// advise --advise.from prints the daemon's answer: the same size and overflow as
			// its API, from its history, whatever the local configuration says.
			code, out, errOut := runBinary(t, bin, []string{"DB_POOL_SIZE=3"}, "advise", "--advise.from="+base, "--output=json")
			var doc adviseJSON
			if err := json.Unmarshal([]byte(out), &doc); err != nil || len(doc.Pools) == 0 || (code != adviseHealthy && code != adviseUnhealthy) {
				t.Fatalf("advise --advise.from: exit %d, %v\n%s\nstderr:\n%s", code, err, out, errOut)
			}
			code, body = testbin.Get(t, base+"/api/v1/optimize?pool=default")
			var api struct {
				RecommendedPoolSize    int `json:"recommended_pool_size"`
				RecommendedMaxOverflow int `json:"recommended_max_overflow"`
			}
			if err := json.Unmarshal([]byte(body), &api); err != nil || code != 200 {
				t.Fatalf("/api/v1/optimize: %d %v", code, err)
			}
			if o := doc.Pools[0].Optimization; o.RecommendedPoolSize != api.RecommendedPoolSize || o.RecommendedMaxOverflow != api.RecommendedMaxOverflow {
				t.Errorf("advise --advise.from says %d/%d, the API %d/%d", o.RecommendedPoolSize, o.RecommendedMaxOverflow, api.RecommendedPoolSize, api.RecommendedMaxOverflow)
			}
			_, text, _ := runBinary(t, bin, nil, "advise", "--advise.from="+base)
			for _, want := range []string{"the answer of the daemon at " + base + ", from its history (window 10s)", "== pool default on db ", "history:      ", "recommended:  DB_POOL_SIZE="} {
				if !strings.Contains(text, want) {
					t.Errorf("advise --advise.from text lacks %q:\n%s", want, text)
				}
			}
			for _, bad := range []string{"http://127.0.0.1:1", "ftp://x", "http://user:Secret-99@127.0.0.1:1"} {
				code, out, errOut := runBinary(t, bin, nil, "advise", "--advise.from="+bad)
				if code != adviseError || !strings.Contains(errOut, "--advise.from") || strings.Contains(out+errOut, "Secret-99") {
					t.Errorf("advise --advise.from=%s: exit %d\n%s%s", bad, code, out, errOut)
				}
			}
		})
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	p, err := pgtest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return p
}
