package childproc

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestStartOutputStop(t *testing.T) {
	log := filepath.Join(t.TempDir(), "child.log")
	if err := os.WriteFile(log, []byte("from an earlier run\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := Start(Spec{Path: "sh", Args: []string{"-c", `echo ready; echo "$X" >&2; exec sleep 60`}, Env: []string{"X=hello", "PATH=" + os.Getenv("PATH")}, LogFile: log})
	if err != nil {
		t.Fatal(err)
	}
	err = p.WaitReady(context.Background(), 10*time.Second, 10*time.Millisecond, func() error {
		if !strings.Contains(p.Output(), "hello") {
			return errors.New("no hello yet")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if out := p.Output(); out != "ready\nhello\n" {
		t.Errorf("Output = %q, want only this run's lines", out)
	}
	if err := p.Stop(syscall.SIGTERM, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if !p.Exited() {
		t.Error("not exited after Stop")
	}
}

func TestStopKillsIgnorerAndGrandchildren(t *testing.T) {
	// The shell ignores SIGTERM and waits for a grandchild that would outlive it.
	p, err := Start(Spec{Path: "sh", Args: []string{"-c", `trap '' TERM; sleep 60 & echo $!; wait`}})
	if err != nil {
		t.Fatal(err)
	}
	var grandchild int
	err = p.WaitReady(context.Background(), 10*time.Second, 10*time.Millisecond, func() error {
		n, err := strconv.Atoi(strings.TrimSpace(p.Output()))
		grandchild = n
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	err = p.Stop(syscall.SIGTERM, 200*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "was killed") {
		t.Errorf("Stop = %v, want the kill reported", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for syscall.Kill(grandchild, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("grandchild %d still runs", grandchild)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestWaitReadyExitAndTimeout(t *testing.T) {
	p, err := Start(Spec{Name: "failer", Path: "sh", Args: []string{"-c", "echo boom >&2; exit 3"}})
	if err != nil {
		t.Fatal(err)
	}
	err = p.WaitReady(context.Background(), 10*time.Second, 10*time.Millisecond, func() error { return errors.New("not yet") })
	if !errors.Is(err, ErrExited) || !strings.Contains(err.Error(), "boom") || !strings.Contains(err.Error(), "failer") {
		t.Errorf("WaitReady = %v, want ErrExited with the output's tail", err)
	}

	p, err = Start(Spec{Path: "sleep", Args: []string{"60"}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop(syscall.SIGKILL, 0)
	notYet := errors.New("not yet")
	err = p.WaitReady(context.Background(), 50*time.Millisecond, 10*time.Millisecond, func() error { return notYet })
	if !errors.Is(err, notYet) {
		t.Errorf("WaitReady = %v, want the check's last error", err)
	}
	fatal := errors.New("hopeless")
	err = p.WaitReady(context.Background(), time.Minute, 10*time.Millisecond, func() error { return Abort(fatal) })
	if !errors.Is(err, fatal) {
		t.Errorf("WaitReady = %v, want the aborting error", err)
	}
}

func TestWaitMatch(t *testing.T) {
	p, err := Start(Spec{Path: "sh", Args: []string{"-c", "sleep 0.1; echo listening on 127.0.0.1:1234; exec sleep 60"}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop(syscall.SIGKILL, 0)
	m, err := p.WaitMatch(context.Background(), 10*time.Second, regexp.MustCompile(`(?m)^listening on (\S+)$`))
	if err != nil || len(m) != 2 || m[1] != "127.0.0.1:1234" {
		t.Errorf("WaitMatch = %q, %v", m, err)
	}
	_, err = p.WaitMatch(context.Background(), 50*time.Millisecond, regexp.MustCompile("never"))
	if err == nil || !strings.Contains(err.Error(), "no output matching never") {
		t.Errorf("WaitMatch = %v, want a timeout naming the pattern", err)
	}
}

func TestRun(t *testing.T) {
	out, err := Run(context.Background(), Spec{Path: "sh", Args: []string{"-c", "echo one; echo two >&2"}})
	if err != nil || out != "one\ntwo\n" {
		t.Errorf("Run = %q, %v", out, err)
	}
	_, err = Run(context.Background(), Spec{Path: "sh", Args: []string{"-c", "echo why; exit 2"}})
	if err == nil || !strings.Contains(err.Error(), "why") {
		t.Errorf("Run = %v, want the exit status and the output", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := Run(ctx, Spec{Path: "sleep", Args: []string{"60"}}); err == nil || time.Since(start) > 10*time.Second {
		t.Errorf("Run after ctx ended = %v after %v", err, time.Since(start))
	}
}

func TestEnviron(t *testing.T) {
	t.Setenv("DB_POOL_SIZE", "3")
	t.Setenv("CHILDPROC_KEEP", "1")
	env := strings.Join(Environ("DB_"), "\n")
	if strings.Contains(env, "DB_POOL_SIZE") || !strings.Contains(env, "CHILDPROC_KEEP=1") {
		t.Errorf("Environ(DB_) = %s", env)
	}
}
