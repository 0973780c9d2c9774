// Package childproc is tooling, not product: the one way the demo, the benchmark and the tests
// start and stop child processes (servers, exporters, simulators).
//
// A child runs in its own process group, so that a Ctrl-C in the terminal reaches only the
// program that started it (which then stops its children in order), and so that Stop reaches
// the child's own children too. It dies with its parent (a parent-death signal). Its output
// goes to a log file or, without one, to memory; Output and Tail read it back for failure
// messages, WaitReady polls a readiness condition with a deadline, and Stop sends a signal,
// waits a grace period and then kills the group.
package childproc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Spec describes a child process to start.
type Spec struct {
	// Name names the process in errors; default the base name of Path.
	Name string
	Path string
	Args []string
	// Env is the complete environment (see Environ); nil inherits this process's.
	Env []string
	// Dir is the working directory; "" is this process's.
	Dir string
	// LogFile, when set, receives stdout and stderr (appended; created with mode 0600).
	// Without it the output is kept in memory, which suits short-lived or quiet children.
	LogFile string
	// Stdout, when set, receives stdout instead of the log (stderr still goes to the log).
	Stdout io.Writer
	// Tee, when set, receives a copy of everything that goes to the log.
	Tee io.Writer
	// ExtraFiles are open files the child inherits as fds 3, 4, ... (a browser's DevTools
	// pipe); the caller closes its copies after Start.
	ExtraFiles []*os.File
	// Credential runs the child as another user (e.g. postgres when this process is root).
	Credential *syscall.Credential
	// DeathSignal is sent to the child when this process dies; default SIGKILL.
	DeathSignal syscall.Signal
}

// ErrExited is wrapped by WaitReady's error when the process exits before it is ready.
var ErrExited = errors.New("exited")

// killWait bounds the wait for a process to go after SIGKILL.
const killWait = 10 * time.Second

// Process is a running child that this process reaps.
type Process struct {
	// Name is Spec.Name.
	Name string

	cmd       *exec.Cmd
	logFile   string
	logOffset int64   // size of LogFile before the start: Output skips what earlier runs wrote
	mem       *Buffer // output when there is no LogFile
	done      chan struct{}
	err       error // Wait's result; valid once done is closed
}

// Start starts the process described by s.
func Start(s Spec) (*Process, error) {
	p := &Process{Name: s.Name, logFile: s.LogFile, done: make(chan struct{})}
	if p.Name == "" {
		p.Name = filepath.Base(s.Path)
	}
	var sink io.Writer
	var logf *os.File
	if s.LogFile != "" {
		f, err := os.OpenFile(s.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return nil, err
		}
		if fi, err := f.Stat(); err == nil {
			p.logOffset = fi.Size()
		}
		logf, sink = f, f
	} else {
		p.mem = &Buffer{}
		sink = p.mem
	}
	if s.Tee != nil {
		// A pipe instead of the file itself: exec copies from it in a goroutine.
		sink = io.MultiWriter(sink, s.Tee)
	}
	cmd := exec.Command(s.Path, s.Args...)
	cmd.Env, cmd.Dir, cmd.ExtraFiles = s.Env, s.Dir, s.ExtraFiles
	cmd.Stdout, cmd.Stderr = sink, sink
	if s.Stdout != nil {
		cmd.Stdout = s.Stdout
	}
	// A grandchild that keeps the output pipe open must not hold up the reaping.
	cmd.WaitDelay = time.Second
	death := s.DeathSignal
	if death == 0 {
		death = syscall.SIGKILL
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: death, Credential: s.Credential}
	if err := cmd.Start(); err != nil {
		if logf != nil {
			logf.Close()
		}
		return nil, fmt.Errorf("start %s: %w", p.Name, err)
	}
	p.cmd = cmd
	go func() {
		p.err = cmd.Wait()
		if logf != nil {
			logf.Close()
		}
		close(p.done)
	}()
	return p, nil
}

// Run starts the process described by s and waits for it to exit; ctx ending kills it. It
// returns what the process wrote; the error carries the tail of that.
func Run(ctx context.Context, s Spec) (string, error) {
	p, err := Start(s)
	if err != nil {
		return "", err
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		_ = p.Stop(syscall.SIGKILL, 0)
	}
	out := p.Output()
	if p.err != nil {
		return out, fmt.Errorf("%s: %w\n%s", p.Name, p.err, Tail(out, 20))
	}
	return out, nil
}

// Pid is the process's id (and its process group's).
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited and been reaped.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited and been reaped.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Err is the result of waiting for the process (nil for exit status 0); valid once Done.
func (p *Process) Err() error {
	if !p.Exited() {
		return nil
	}
	return p.err
}

// Stop sends sig to the process group and waits up to grace for the process to exit, then
// kills the group. SIGCONT goes first because tests freeze servers with SIGSTOP, and a
// stopped process does not act on sig until continued. Whatever is left of the group once
// the process has gone is killed. It is a no-op on an exited process; the error says that
// the process had to be killed or would not die.
func (p *Process) Stop(sig syscall.Signal, grace time.Duration) error {
	if p.Exited() {
		return nil
	}
	p.signal(syscall.SIGCONT)
	p.signal(sig)
	select {
	case <-p.done:
		p.signal(syscall.SIGKILL) // the grandchildren
		return nil
	case <-time.After(grace):
	}
	p.signal(syscall.SIGKILL)
	select {
	case <-p.done:
		if sig == syscall.SIGKILL {
			return nil
		}
		return fmt.Errorf("%s (pid %d) ignored %v for %v and was killed", p.Name, p.Pid(), sig, grace)
	case <-time.After(killWait):
		return fmt.Errorf("%s (pid %d) did not exit after SIGKILL", p.Name, p.Pid())
	}
}

// signal sends sig to the process group, or to the process alone if the group is gone.
func (p *Process) signal(sig syscall.Signal) {
	if err := syscall.Kill(-p.Pid(), sig); err != nil && !p.Exited() {
		_ = p.cmd.Process.Signal(sig)
	}
}

// Output returns what the process has written to its log (or memory) so far.
func (p *Process) Output() string {
	if p.mem != nil {
		return p.mem.String()
	}
	b, err := os.ReadFile(p.logFile)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", p.logFile, err)
	}
	if int64(len(b)) >= p.logOffset {
		b = b[p.logOffset:]
	}
	return string(b)
}

// Tail returns the last n lines of the process's output.
func (p *Process) Tail(n int) string { return Tail(p.Output(), n) }

// Tail returns the last n lines of s.
func Tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Environ returns this process's environment without the variables whose "NAME=value" starts
// with one of drop (e.g. "PG", "DB_", "DATABASE_URL="), so that the caller's settings cannot
// change what a child does.
func Environ(drop ...string) []string {
	var env []string
next:
	for _, kv := range os.Environ() {
		for _, d := range drop {
			if strings.HasPrefix(kv, d) {
				continue next
			}
		}
		env = append(env, kv)
	}
	return env
}
