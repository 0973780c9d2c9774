package testbin

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dbpool/dbpool_exporter/tools/childproc"
)

// stopGrace is how long a child has to exit after SIGTERM at the end of a test.
const stopGrace = 10 * time.Second

// StartProcess starts the child s describes and, when the test ends, stops it with
// childproc's Stop: SIGTERM, then SIGKILL after 10 s (a kill is logged, not failed). Stop is
// a no-op on a child that has exited, so a test may stop it itself. A failure to start fails
// the test; s's Args and Env are never printed, DSNs with passwords may be among them.
func StartProcess(t testing.TB, s childproc.Spec) *childproc.Process {
	t.Helper()
	p, err := childproc.Start(s)
	if err != nil {
		t.Fatal(err) // "start NAME: …", or the log file's error
	}
	t.Cleanup(func() {
		if err := p.Stop(syscall.SIGTERM, stopGrace); err != nil {
			t.Log(err)
		}
	})
	return p
}

// ServerSpec describes a server for StartServer.
type ServerSpec struct {
	// Spec is the process; its Args are replaced by those of Args.
	Spec childproc.Spec
	// Args returns the command line that makes the server listen on addr (host:port).
	Args func(addr string) []string
	// ReadyPath is fetched until it answers 200 (e.g. "/-/ready").
	ReadyPath string
	// Timeout bounds the wait for ReadyPath; default 60 s.
	Timeout time.Duration
}

// errPortTaken means the server lost the race for its free port to another process.
var errPortTaken = errors.New("port taken")

// StartServer starts a server on a free loopback port (FreeAddr), waits until ReadyPath
// answers 200 and returns the process and its host:port; the process is stopped when the
// test ends, as with StartProcess. Between finding a free port and the server binding it
// another process may take it; then the server exits ("address already in use") and
// StartServer tries again with another port, three times at most. A server that exits or is
// not ready within the timeout fails the test, with the tail of its output.
func StartServer(t testing.TB, s ServerSpec) (*childproc.Process, string) {
	t.Helper()
	timeout := s.Timeout
	if timeout == 0 {
		timeout = 60 * time.Second
	}
	var (
		name    string
		lastErr error
	)
	for range 3 {
		addr := FreeAddr(t)
		spec := s.Spec
		spec.Args = s.Args(addr)
		p := StartProcess(t, spec)
		name = p.Name
		err := p.WaitReady(context.Background(), timeout, 50*time.Millisecond, childproc.HTTPReady("http://"+addr+s.ReadyPath))
		if err == nil {
			return p, addr
		}
		if errors.Is(err, childproc.ErrExited) && strings.Contains(p.Output(), "address already in use") {
			err = fmt.Errorf("%w: %w", errPortTaken, err)
		}
		lastErr = err
		if !errors.Is(err, errPortTaken) {
			break
		}
		t.Logf("%s: %s was taken, trying another port", name, addr)
	}
	t.Fatalf("%s did not start: %v", name, lastErr)
	return nil, ""
}
