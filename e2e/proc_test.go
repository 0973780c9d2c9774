package e2e

import (
	"bytes"
	"context"
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

	"github.com/dbpool/dbpool_exporter/tools/childproc"
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
	name string
	*childproc.Process
}

// startProcess starts bin and registers its termination with t.Cleanup. args and env are
// never printed: DSNs with passwords may be among them. env is the complete environment
// (nil: a minimal one), so that DB_* or DATABASE_URL of the caller cannot change what the
// programs do.
func startProcess(t *testing.T, dir, name, bin string, env []string, args ...string) *process {
	t.Helper()
	cp, err := childproc.Start(childproc.Spec{
		Name:    name,
		Path:    bin,
		Args:    args,
		Env:     append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir, "LC_ALL=C"}, env...),
		Dir:     dir,
		LogFile: filepath.Join(dir, name+".log"),
	})
	if err != nil {
		t.Fatalf("start %s (%s): %v", name, bin, err)
	}
	p := &process{name: name, Process: cp}
	t.Cleanup(func() {
		if err := p.Stop(syscall.SIGTERM, 10*time.Second); err != nil {
			t.Log(err)
		}
	})
	return p
}

func (p *process) exited() bool { return p.Exited() }

// logTail returns the last n lines of the process's output.
func (p *process) logTail(n int) string { return p.Tail(n) }

// status describes a process that exited, for failure messages.
func (p *process) status() string {
	if !p.Exited() {
		return p.name + " is running"
	}
	return fmt.Sprintf("%s exited (%v)", p.name, p.Err())
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
		err = p.WaitReady(context.Background(), 60*time.Second, 100*time.Millisecond, childproc.HTTPReady("http://"+addr+readyPath))
		if errors.Is(err, childproc.ErrExited) && strings.Contains(p.Output(), "address already in use") {
			err = fmt.Errorf("%w: %w", errPortTaken, err)
		}
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
