package main

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alecthomas/kingpin/v2"

	"github.com/dbpool/dbpool_exporter/collector"
	"github.com/dbpool/dbpool_exporter/tools/testbin"
)

// testExporter builds the daemon's exporter from a YAML file and flags, as run does.
func testExporter(t *testing.T, yaml string, args ...string) *collector.Exporter {
	t.Helper()
	file := filepath.Join(t.TempDir(), "dbpool.yml")
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	app := kingpin.New("test", "")
	f := addFlags(app)
	if _, err := app.Parse(append([]string{"--config.file=" + file}, args...)); err != nil {
		t.Fatal(err)
	}
	cfg, err := f.loadConfig(func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	exp, err := f.buildExporter(cfg, slog.New(slog.DiscardHandler), lasting{appCounters: collector.NewAppCounters()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(exp.Close)
	return exp
}

func TestMultiTargetHandler(t *testing.T) {
	const secret = "Probe-S3cret-4711"
	pgAddr, pgAccepted := testbin.SilentListener(t)
	bouncerAddr, bouncerAccepted := testbin.SilentListener(t)
	exp := testExporter(t, fmt.Sprintf(`auth_modules:
  monitor: {user: monitor, password: %q, options: {sslmode: disable}}
targets:
  - {name: db, dsn: "postgres://%s/postgres", auth_module: monitor}
pgbouncers:
  - {name: edge, dsn: "postgres://%s/pgbouncer", auth_module: monitor}
`, secret, pgAddr, bouncerAddr))
	srv := httptest.NewServer(multiTargetHandler(func() *collector.Exporter { return exp }, 500*time.Millisecond, 10*time.Second,
		slog.New(slog.DiscardHandler)))
	defer srv.Close()

	get := func(query string, header string) (int, string, time.Duration) {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, srv.URL+"/probe"+query, nil)
		if err != nil {
			t.Fatal(err)
		}
		if header != "" {
			req.Header.Set("X-Prometheus-Scrape-Timeout-Seconds", header)
		}
		start := time.Now()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body), time.Since(start)
	}

	// Refused before anything connects.
	for _, tc := range []struct{ query, want, notWant string }{
		{"", "missing parameter target", ""},
		{"?target=", "missing parameter target", ""},
		{"?target=nope", `unknown target "nope"`, ""},
		{"?target=DB", `unknown target "DB"`, ""},
		{"?target=" + "postgres://monitor:" + secret + "@" + pgAddr + "/postgres", "not a DSN", secret},
		{"?target=host%3Ddb+password%3D" + secret, "not a DSN", secret},
	} {
		code, body, _ := get(tc.query, "")
		if code != http.StatusBadRequest || !strings.Contains(body, tc.want) {
			t.Errorf("GET /probe%s: %d %q, want 400 and %q", tc.query, code, body, tc.want)
		}
		if tc.notWant != "" && strings.Contains(body, tc.notWant) {
			t.Errorf("GET /probe%s echoes the password: %q", tc.query, body)
		}
	}
	time.Sleep(50 * time.Millisecond)
	if n := pgAccepted.Load() + bouncerAccepted.Load(); n != 0 {
		t.Fatalf("refused requests made %d connection attempts", n)
	}

	// A known target that hangs: the answer comes by Prometheus' timeout minus the offset,
	// with that target's failure and nothing process-wide.
	for _, tc := range []struct {
		target   string
		accepted *atomic.Int64
	}{{"db", pgAccepted}, {"edge", bouncerAccepted}} {
		code, body, took := get("?target="+tc.target, "1.5")
		if code != http.StatusOK {
			t.Fatalf("GET /probe?target=%s: %d %s", tc.target, code, body)
		}
		if took > 1500*time.Millisecond {
			t.Errorf("scrape of a hanging %s took %v, want about 1s (1.5s timeout - 0.5s offset)", tc.target, took)
		}
		if !strings.Contains(body, fmt.Sprintf(`dbpool_up{target=%q} 0`, tc.target)) {
			t.Errorf("scrape of %s: no dbpool_up 0:\n%s", tc.target, body)
		}
		for _, line := range strings.Split(body, "\n") {
			if strings.HasPrefix(line, "#") || line == "" {
				continue
			}
			if !strings.Contains(line, fmt.Sprintf("target=%q", tc.target)) {
				t.Errorf("scrape of %s returned a series of something else: %s", tc.target, line)
			}
			if strings.HasPrefix(line, "go_") || strings.HasPrefix(line, "process_") || strings.HasPrefix(line, "dbpool_exporter_") {
				t.Errorf("scrape of %s returned a process-wide series: %s", tc.target, line)
			}
		}
		if strings.Contains(body, secret) {
			t.Errorf("the password is in the answer")
		}
		if tc.accepted.Load() == 0 {
			t.Errorf("scrape of %s never dialled its server", tc.target)
		}
	}
}

func TestTargetFlags(t *testing.T) {
	parse := func(args ...string) (*flags, error) {
		t.Helper()
		app := kingpin.New("test", "")
		f := addFlags(app)
		if _, err := app.Parse(append([]string{"--pg.dsn=postgres://h/db"}, args...)); err != nil {
			t.Fatal(err)
		}
		_, err := f.loadConfig(func(string) (string, bool) { return "", false })
		return f, err
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--target.idle-timeout=10ms"}, "--target.idle-timeout=10ms: must be 0 (never) or at least 1s"},
		{[]string{"--target.max-connected=-1"}, "--target.max-connected=-1: must be 0 (no cap) or more"},
		{[]string{"--probe.max-connected-targets=-1"}, "--target.max-connected=-1: must be 0 (no cap) or more"},
		{[]string{"--web.telemetry-path=/probe"}, "/probe is served by the exporter itself"},
	} {
		if _, err := parse(tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.args, err, tc.want)
		}
	}

	// The former names still work, and say once each that they are deprecated.
	f, err := parse("--probe.idle-timeout=2m", "--probe.max-connected-targets=7")
	if err != nil {
		t.Fatal(err)
	}
	if f.targetIdleTimeout != 2*time.Minute || f.targetMaxConnected != 7 {
		t.Errorf("deprecated flags set idle timeout %v, cap %d; want 2m, 7", f.targetIdleTimeout, f.targetMaxConnected)
	}
	var logs strings.Builder
	f.warnDeprecated(slog.New(slog.NewTextHandler(&logs, nil)))
	for _, want := range []string{"--probe.idle-timeout is deprecated: use --target.idle-timeout", "--probe.max-connected-targets is deprecated: use --target.max-connected"} {
		if strings.Count(logs.String(), want) != 1 {
			t.Errorf("log should say %q once:\n%s", want, logs.String())
		}
	}
	if f, _ := parse("--target.idle-timeout=2m"); len(f.deprecated) != 0 {
		t.Errorf("current flags reported as deprecated: %v", f.deprecated)
	}
}
