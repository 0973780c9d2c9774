package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dbpool/dbpool_exporter/tools/pgtest"
)

// findBinary returns the program named by $envVar, else the first of names found on PATH or
// in the usual system directories. A missing program fails the test: the e2e test is part of
// `make test` and must not silently turn into a skip.
func findBinary(t *testing.T, envVar string, names ...string) string {
	t.Helper()
	if p := os.Getenv(envVar); p != "" {
		if _, err := exec.LookPath(p); err != nil {
			t.Fatalf("$%s=%s: %v", envVar, p, err)
		}
		return p
	}
	for _, n := range names {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
		for _, d := range []string{"/usr/bin", "/usr/sbin", "/usr/local/bin"} {
			p := filepath.Join(d, n)
			if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
				return p
			}
		}
	}
	t.Fatalf("%s not found on PATH or in /usr/bin, /usr/sbin, /usr/local/bin: run `make deps` "+
		"(scripts/install-deps.sh) to install it, or point $%s at it", strings.Join(names, " or "), envVar)
	return ""
}

// process is a child process whose output goes to a log file in the test's temp dir.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	err     error // Wait's result, valid once done is closed
}

// startProcess starts bin and registers its termination with t.Cleanup. args and env are
// never printed: DSNs with passwords may be among them. env is the complete environment
// (nil: a minimal one), so that DB_* or DATABASE_URL of the caller cannot change what the
// programs do.
func startProcess(t *testing.T, dir, name, bin string, env []string, args ...string) *process {
	t.Helper()
	logPath := filepath.Join(dir, name+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir, "LC_ALL=C"}, env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// A test binary that dies (timeout, Ctrl-C) takes its children along.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s (%s): %v", name, bin, err)
	}
	p := &process{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() { p.stop(t) })
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

// stop sends SIGTERM, and SIGKILL if the process is still there after a grace period.
func (p *process) stop(t *testing.T) {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return
	case <-time.After(10 * time.Second):
	}
	_ = p.cmd.Process.Kill()
	<-p.done
	t.Logf("%s ignored SIGTERM for 10s and was killed", p.name)
}

// logTail returns the last n lines of the process's output.
func (p *process) logTail(n int) string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", p.logPath, err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// status describes a process that exited, for failure messages.
func (p *process) status() string {
	if !p.exited() {
		return p.name + " is running"
	}
	return fmt.Sprintf("%s exited (%v)", p.name, p.err)
}

// errPortTaken means the server lost the race for its free port to another process.
var errPortTaken = errors.New("port taken")

// startServer starts a server on a free loopback port and waits until readyPath answers 200.
// Between finding a free port and the server binding it another process may take it; then
// the server exits and startServer tries again with another port.
func startServer(t *testing.T, dir, name, bin string, env []string, readyPath string, args func(addr string) []string) (*process, string) {
	t.Helper()
	var lastErr error
	for range 3 {
		port, err := pgtest.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		p := startProcess(t, dir, name, bin, env, args(addr)...)
		err = waitHTTP(p, "http://"+addr+readyPath, 60*time.Second)
		if err == nil {
			return p, addr
		}
		lastErr = err
		if !errors.Is(err, errPortTaken) {
			break
		}
		t.Logf("%s: port %d was taken, trying another", name, port)
	}
	t.Fatalf("%s did not start: %v", name, lastErr)
	return nil, ""
}

// waitHTTP polls url until it answers 200, p exits, or timeout passes.
func waitHTTP(p *process, url string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last string
	for {
		if p.exited() {
			tail := p.logTail(30)
			err := fmt.Errorf("%s\n--- %s output (tail) ---\n%s", p.status(), p.name, tail)
			if strings.Contains(tail, "address already in use") {
				err = fmt.Errorf("%w: %w", errPortTaken, err)
			}
			return err
		}
		code, body, err := httpGet(url)
		if err == nil && code == http.StatusOK {
			return nil
		}
		if err != nil {
			last = err.Error()
		} else {
			last = fmt.Sprintf("HTTP %d: %.200s", code, body)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %v (last answer: %s)\n--- %s output (tail) ---\n%s", url, timeout, last, p.name, p.logTail(30))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

var httpClient = &http.Client{Timeout: 5 * time.Second}

func httpGet(url string) (int, []byte, error) {
	resp, err := httpClient.Get(url)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	return resp.StatusCode, body, err
}

// writeFile writes a private file: some configs hold DSNs with passwords.
func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// indent prefixes every line of s, to set dumps apart in failure messages.
func indent(s string) string {
	var b bytes.Buffer
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		b.WriteString("    " + l + "\n")
	}
	return b.String()
}
