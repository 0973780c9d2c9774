package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dbpool/dbpool_exporter/tools/childproc"
	"github.com/dbpool/dbpool_exporter/tools/testbin"
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

// spec describes bin as a child whose output goes to dir/name.log. env is the complete
// environment (nil: a minimal one), so that DB_* or DATABASE_URL of the caller cannot change
// what the programs do.
func spec(dir, name, bin string, env []string) childproc.Spec {
	return childproc.Spec{
		Name:    name,
		Path:    bin,
		Env:     append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir, "LC_ALL=C"}, env...),
		Dir:     dir,
		LogFile: filepath.Join(dir, name+".log"),
	}
}

// startProcess starts bin (see spec) and stops it when the test ends (testbin.StartProcess).
// args and env are never printed: DSNs with passwords may be among them.
func startProcess(t *testing.T, dir, name, bin string, env []string, args ...string) *process {
	t.Helper()
	s := spec(dir, name, bin, env)
	s.Args = args
	return &process{name: name, Process: testbin.StartProcess(t, s)}
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

// startServer starts bin (see spec) on a free loopback port and waits until readyPath
// answers 200 (testbin.StartServer, which tries another port when the first was taken).
func startServer(t *testing.T, dir, name, bin string, env []string, readyPath string, args func(addr string) []string) (*process, string) {
	t.Helper()
	cp, addr := testbin.StartServer(t, testbin.ServerSpec{Spec: spec(dir, name, bin, env), Args: args, ReadyPath: readyPath})
	return &process{name: name, Process: cp}, addr
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
