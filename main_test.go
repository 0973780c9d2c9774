package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dbpool/dbpool_exporter/tools/childproc"
	"github.com/dbpool/dbpool_exporter/tools/pgtest"
	"github.com/dbpool/dbpool_exporter/tools/testbin"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testbin.Cleanup()
	os.Exit(code)
}

// runBinary runs the exporter to completion with a clean DB_* environment.
func runBinary(t *testing.T, bin string, env []string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out testbin.Buffer
	stderr, err := childproc.Run(ctx, childproc.Spec{Path: bin, Args: args, Env: append(cleanEnv(), env...), Stdout: &out})
	var ee *exec.ExitError
	if err != nil && (!errors.As(err, &ee) || ee.ExitCode() < 0) {
		t.Fatalf("%v: %v", args, err)
	}
	if ee != nil {
		code = ee.ExitCode()
	}
	return code, out.String(), stderr
}

// cleanEnv is the environment without the DB_* settings and DSN of the developer's shell.
func cleanEnv() []string { return childproc.Environ("DB_", "DATA_SOURCE_NAME=") }

// startExporter starts the exporter on a free port with a clean DB_* environment and waits
// until it answers /-/healthy; it is stopped when the test ends.
func startExporter(t *testing.T, bin string, env []string, args ...string) (*childproc.Process, string) {
	t.Helper()
	return testbin.StartServer(t, testbin.ServerSpec{
		Spec:      childproc.Spec{Name: "exporter", Path: bin, Env: append(cleanEnv(), env...)},
		Args:      func(addr string) []string { return append([]string{"--web.listen-address", addr}, args...) },
		ReadyPath: "/-/healthy",
		Timeout:   15 * time.Second,
	})
}

func TestBinary(t *testing.T) {
	bin := testbin.Exporter(t)
	pg := pgtest.StartT(t, pgtest.Options{})
	const password = "Bin-Secret-90210"
	if err := pg.CreateRole("monitor", password, false, "pg_monitor"); err != nil {
		t.Fatal(err)
	}
	dsn := pg.DSN("monitor", password, "postgres")

	t.Run("help", func(t *testing.T) {
		code, out, _ := runBinary(t, bin, nil, "--help")
		if code != 0 {
			t.Errorf("--help exit code %d", code)
		}
		for _, flag := range []string{"web.listen-address", "web.telemetry-path", "web.config.file", "log.level",
			"log.format", "config.file", "config.check", "pool.env-file", "pg.dsn", "pg.max-connections",
			"scrape.timeout-offset", "collector.activity", "collector.probe", "collector.activity.max-applications", "app.url", "app.dns-server"} {
			if !strings.Contains(out, "--"+flag) && !strings.Contains(out, "--[no-]"+flag) {
				t.Errorf("--help does not mention %s", flag)
			}
		}
	})
	t.Run("version", func(t *testing.T) {
		code, out, errOut := runBinary(t, bin, nil, "--version")
		if code != 0 || !strings.Contains(out+errOut, testbin.Version) {
			t.Errorf("--version: code %d, output %q", code, out+errOut)
		}
	})
	t.Run("bad flag", func(t *testing.T) {
		code, _, errOut := runBinary(t, bin, nil, "--no-such-flag")
		if code != 2 || !strings.Contains(errOut, "no-such-flag") {
			t.Errorf("bad flag: code %d, stderr %q", code, errOut)
		}
	})
	t.Run("bad env value", func(t *testing.T) {
		code, _, errOut := runBinary(t, bin, []string{"DB_POOL_SIZE=abc", "DB_MAX_OVERFLOW=-1"}, "--pg.dsn", dsn)
		if code != 1 {
			t.Errorf("exit code %d, want 1", code)
		}
		for _, want := range []string{"DB_POOL_SIZE", "abc", "DB_MAX_OVERFLOW", "-1"} {
			if !strings.Contains(errOut, want) {
				t.Errorf("error does not name %q: %s", want, errOut)
			}
		}
		if strings.Contains(errOut, password) {
			t.Error("password in error output")
		}
	})
	t.Run("bad env file", func(t *testing.T) {
		envFile := filepath.Join(t.TempDir(), "app.env")
		if err := os.WriteFile(envFile, []byte("# app\nDB_POOL_SIZE=5\nDB_POOL_TIMEOUT=soon\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		code, _, errOut := runBinary(t, bin, nil, "--pg.dsn", dsn, "--pool.env-file", envFile)
		if code != 1 || !strings.Contains(errOut, "app.env:3") || !strings.Contains(errOut, "soon") {
			t.Errorf("code %d, stderr %s", code, errOut)
		}
	})
	t.Run("bad flag values", func(t *testing.T) {
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"--web.telemetry-path=metrics"}, "must start with /"},
			{[]string{"--web.telemetry-path=/pools"}, "served by the exporter itself"},
			{[]string{"--web.telemetry-path=/api/v1/x"}, "served by the exporter itself"},
			{[]string{"--health.sample-interval=1ms"}, "at least 1s"},
			{[]string{"--scrape.max-timeout=1us"}, "at least 100ms"},
			{[]string{"--pool.application-name-regex=api-(?P<other>[0-9]+)"}, "pool.application-name-regex"},
			{[]string{"--app.dns-server=127.0.0.1:99999"}, `--app.dns-server=\"127.0.0.1:99999\": port \"99999\" is not 1-65535`},
			{[]string{"--app.url=dns+http://api.svc/dbpool"}, "--app.url: a dns+ URL needs a port"},
		} {
			code, _, errOut := runBinary(t, bin, nil, append([]string{"--pg.dsn", dsn}, tc.args...)...)
			if code != 1 || !strings.Contains(errOut, tc.want) {
				t.Errorf("%v: code %d, stderr %q, want 1 and %q", tc.args, code, errOut, tc.want)
			}
			if strings.Contains(errOut, "panic") || strings.Contains(errOut, "goroutine ") {
				t.Errorf("%v: crashed instead of a clean error:\n%s", tc.args, errOut)
			}
		}
	})
	t.Run("config check", func(t *testing.T) {
		code, out, errOut := runBinary(t, bin, nil, "--pg.dsn", dsn, "--config.check")
		if code != 0 || !strings.Contains(out, "configuration OK") {
			t.Errorf("--config.check: code %d, out %q, err %q", code, out, errOut)
		}
		code, _, _ = runBinary(t, bin, []string{"DB_POOL_SIZE=0", "DB_MAX_OVERFLOW=5"}, "--pg.dsn", dsn, "--config.check")
		if code != 1 {
			t.Errorf("--config.check with DB_POOL_SIZE=0 and overflow: code %d, want 1", code)
		}
	})
	t.Run("reload", func(t *testing.T) {
		cfgFile := filepath.Join(t.TempDir(), "dbpool.yml")
		writeConfig := func(target, extra string) {
			t.Helper()
			body := "targets:\n  - name: " + target + "\n    dsn_env: RELOAD_TEST_DSN\n" + extra
			if err := os.WriteFile(cfgFile, []byte(body), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		writeConfig("first", "")
		exporter, addr := startExporter(t, bin, []string{"RELOAD_TEST_DSN=" + dsn}, "--config.file", cfgFile)
		base := "http://" + addr
		post := func() int {
			t.Helper()
			resp, err := http.Post(base+"/-/reload", "", nil)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return resp.StatusCode
		}
		if _, body := testbin.Get(t, base+"/metrics"); !strings.Contains(body, `dbpool_up{target="first"} 1`) {
			t.Fatalf("before reload: no dbpool_up for target first")
		}
		writeConfig("second", "")
		if code := post(); code != 200 {
			t.Fatalf("reload of a good config: status %d\n%s", code, exporter.Output())
		}
		_, body := testbin.Get(t, base+"/metrics")
		if !strings.Contains(body, `dbpool_up{target="second"} 1`) || strings.Contains(body, `target="first"`) {
			t.Errorf("after reload /metrics still shows the old target or lacks the new one")
		}
		if _, landing := testbin.Get(t, base+"/"); !strings.Contains(landing, "second") || strings.Contains(landing, "first") {
			t.Errorf("landing page not rebuilt on reload:\n%s", landing)
		}
		// A broken configuration is refused and the running one kept.
		writeConfig("third", "bogus_key: 1\n")
		if code := post(); code != http.StatusInternalServerError {
			t.Errorf("reload of a broken config: status %d, want 500", code)
		}
		if _, body := testbin.Get(t, base+"/metrics"); !strings.Contains(body, `dbpool_up{target="second"} 1`) {
			t.Errorf("after a failed reload the running configuration is gone")
		}
		if !strings.Contains(exporter.Output(), "bogus_key") {
			t.Errorf("the failed reload's log does not name the bad key:\n%s", exporter.Output())
		}
		// SIGHUP reloads too.
		writeConfig("fourth", "")
		if err := syscall.Kill(exporter.Pid(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			if _, body := testbin.Get(t, base+"/metrics"); strings.Contains(body, `dbpool_up{target="fourth"} 1`) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("SIGHUP did not reload:\n%s", exporter.Output())
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	t.Run("serve and shut down", func(t *testing.T) {
		exporter, addr := startExporter(t, bin, []string{"DATA_SOURCE_NAME=" + dsn, "DB_POOL_SIZE=4", "DB_MAX_OVERFLOW=6"},
			"--pool.application-name-regex", `api-(?P<instance>\d+)`, "--pool.instances", "2", "--log.level", "debug")
		base := "http://" + addr
		code, body := testbin.Get(t, base+"/metrics")
		if code != 200 {
			t.Fatalf("/metrics status %d", code)
		}
		target := fmt.Sprintf("127.0.0.1:%d/postgres", pg.Port)
		for _, want := range []string{
			`dbpool_up{target="` + target + `"} 1`,
			`dbpool_size_connections{pool="default",source="activity",target="` + target + `"} 4`,
			`dbpool_max_connections{pool="default",source="activity",target="` + target + `"} 20`,
			`dbpool_exporter_build_info{`, `version="` + testbin.Version + `"`,
			`go_goroutines `, `process_resident_memory_bytes `, `promhttp_metric_handler_requests_total`,
		} {
			if !strings.Contains(body, want) {
				t.Errorf("/metrics lacks %q", want)
			}
		}
		code, landing := testbin.Get(t, base+"/")
		if code != 200 || !strings.Contains(landing, "dbpool_exporter") || !strings.Contains(landing, "/metrics") {
			t.Errorf("landing page: status %d\n%s", code, landing)
		}
		if resp, err := http.Get(base + "/-/reload"); err == nil {
			if resp.StatusCode != http.StatusMethodNotAllowed {
				t.Errorf("GET /-/reload: status %d", resp.StatusCode)
			}
			resp.Body.Close()
		}
		resp, err := http.Post(base+"/-/reload", "", nil)
		if err != nil || resp.StatusCode != 200 {
			t.Errorf("POST /-/reload: %v %v", resp, err)
		} else {
			resp.Body.Close()
		}
		if err := exporter.Stop(syscall.SIGTERM, 15*time.Second); err != nil {
			t.Fatalf("no exit 15 s after SIGTERM: %v", err)
		}
		if err := exporter.Err(); err != nil {
			t.Errorf("exit after SIGTERM: %v\n%s", err, exporter.Output())
		}
		for name, text := range map[string]string{"metrics": body, "landing page": landing, "logs": exporter.Output()} {
			if strings.Contains(text, password) {
				t.Errorf("password appears in %s", name)
			}
		}
		if !strings.Contains(exporter.Output(), "shutting down") {
			t.Errorf("no shutdown log line:\n%s", exporter.Output())
		}
	})
}
