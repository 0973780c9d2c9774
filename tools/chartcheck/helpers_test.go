package chartcheck

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// program returns the path of a program that `make deps` installs (promtool, prometheus),
// or $envVar. A missing program fails the test: chartcheck is part of `make test`, where a
// missing tool is a failure, not a skip.
func program(t *testing.T, envVar, name string) string {
	t.Helper()
	if p := os.Getenv(envVar); p != "" {
		return p
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/bin", "/usr/local/bin"} {
		if p := filepath.Join(dir, name); isExecutable(p) {
			return p
		}
	}
	t.Fatalf("%s not found on PATH: run `make deps` (scripts/install-deps.sh) or set $%s", name, envVar)
	return ""
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

var (
	exporterOnce sync.Once
	exporterBin  string
	exporterErr  error
)

// exporterBinary builds the exporter from the repository once per test run (Go's build cache
// makes that quick when `make test` built it already).
func exporterBinary(t *testing.T) string {
	t.Helper()
	exporterOnce.Do(func() {
		dir, err := os.MkdirTemp("", "chartcheck-bin-")
		if err != nil {
			exporterErr = err
			return
		}
		exporterBin = filepath.Join(dir, "dbpool_exporter")
		cmd := exec.Command("go", "build", "-o", exporterBin, ".")
		cmd.Dir = RepoRoot()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			exporterErr = fmt.Errorf("go build the exporter: %v\n%s", err, out)
		}
	})
	if exporterErr != nil {
		t.Fatal(exporterErr)
	}
	return exporterBin
}

func TestMain(m *testing.M) {
	// Helm logs every `fail` of a template at INFO; the tests check the errors themselves.
	slog.SetDefault(slog.New(slog.DiscardHandler))
	code := m.Run()
	if exporterBin != "" {
		_ = os.RemoveAll(filepath.Dir(exporterBin))
	}
	os.Exit(code)
}

// process is a child process whose output is kept for failure messages.
type process struct {
	name string
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan struct{}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// start runs bin with args and env (the complete environment) and stops it when the test ends.
func start(t *testing.T, name, bin string, env []string, args ...string) *process {
	t.Helper()
	p := &process{name: name, cmd: exec.Command(bin, args...), out: &lockedBuffer{}, done: make(chan struct{})}
	p.cmd.Env = env
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("--- %s output ---\n%s", name, tail(p.out.String(), 30))
		}
	})
	return p
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// get fetches url with Prometheus' scrape timeout header and returns the status and body.
func get(url string, timeout time.Duration) (int, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout+2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("X-Prometheus-Scrape-Timeout-Seconds", fmt.Sprintf("%g", timeout.Seconds()))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	return resp.StatusCode, string(body), err
}

// waitFor polls cond until it returns "" (done) or 30 s have passed; alive reports a dead
// process early.
func waitFor(t *testing.T, what string, procs []*process, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		for _, p := range procs {
			if p.exited() {
				t.Fatalf("waiting for %s: %s exited:\n%s", what, p.name, tail(p.out.String(), 30))
			}
		}
		problem := cond()
		if problem == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: not done after 30s: %s", what, problem)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
