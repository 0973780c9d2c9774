// The postmaster's life: start in the foreground and wait until ready, stop, restart, close.

package pgtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/dbpool/dbpool_exporter/tools/childproc"
)

// errPortInUse marks a startup that failed only because the port was taken.
var errPortInUse = errors.New("port in use")

// startServer runs postgres in the foreground as a child of this process (not
// via pg_ctl, which detaches it): the child is reaped here and killed if this
// process dies. It returns when the server accepts connections.
func (p *Postgres) startServer() error {
	logf, err := os.OpenFile(p.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	logf.Close()
	if err := p.owner.chown(p.LogFile); err != nil {
		return err
	}
	pr, err := childproc.Start(p.owner.spec(p.LogFile, filepath.Join(p.BinDir, "postgres"), "-D", p.DataDir))
	if err != nil {
		return err
	}
	if err := p.waitReady(pr); err != nil {
		_ = pr.Stop(syscall.SIGQUIT, 5*time.Second)
		if strings.Contains(pr.Output(), "Address already in use") {
			err = fmt.Errorf("%w: %w", errPortInUse, err)
		}
		return fmt.Errorf("postgres on port %d (log %s): %w", p.Port, p.LogFile, err)
	}
	p.mu.Lock()
	p.proc = pr
	p.mu.Unlock()
	return nil
}

// waitReady polls postmaster.pid until the postmaster reports "ready" (line
// 8, the same signal pg_ctl -w uses), which it writes after its sockets
// listen.
func (p *Postgres) waitReady(pr *childproc.Process) error {
	pid := strconv.Itoa(pr.Pid())
	return pr.WaitReady(context.Background(), startTimeout, 10*time.Millisecond, func() error {
		b, err := os.ReadFile(filepath.Join(p.DataDir, "postmaster.pid"))
		if err != nil {
			return err
		}
		lines := strings.Split(string(b), "\n")
		if len(lines) >= 8 && strings.TrimSpace(lines[0]) == pid && strings.HasPrefix(lines[7], "ready") {
			return nil
		}
		return errors.New("postmaster.pid does not say ready")
	})
}

// PostmasterPID returns the postmaster's PID as written in postmaster.pid,
// e.g. to freeze the server with SIGSTOP.
func (p *Postgres) PostmasterPID() (int, error) {
	b, err := os.ReadFile(filepath.Join(p.DataDir, "postmaster.pid"))
	if err != nil {
		return 0, fmt.Errorf("pgtest: server not running: %w", err)
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil {
		return 0, fmt.Errorf("pgtest: postmaster.pid: %w", err)
	}
	return pid, nil
}

// Freeze stops the postmaster with SIGSTOP: established sessions keep working, new logins
// hang. thaw (SIGCONT) may be called more than once; Stop and Close also thaw.
func (p *Postgres) Freeze() (thaw func(), err error) {
	pid, err := p.PostmasterPID()
	if err != nil {
		return nil, err
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		return nil, fmt.Errorf("pgtest: freeze postmaster: %w", err)
	}
	return func() { _ = syscall.Kill(pid, syscall.SIGCONT) }, nil
}

// Stop shuts the server down the way `pg_ctl stop -m fast` does (SIGINT:
// roll back open transactions, disconnect clients, checkpoint) and keeps the
// data directory for Restart. Stopping a stopped server is a no-op.
func (p *Postgres) Stop() error {
	p.mu.Lock()
	pr := p.proc
	p.proc = nil
	p.mu.Unlock()
	if pr == nil {
		return nil
	}
	return pr.Stop(syscall.SIGINT, stopGrace)
}

// Restart starts the server again on the same port with the same data and
// waits until it accepts connections; a running server is stopped first.
func (p *Postgres) Restart() error {
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	if closed {
		return errors.New("pgtest: restart after Close")
	}
	if err := p.Stop(); err != nil {
		return err
	}
	return p.startServer()
}

// Close stops the server at once (immediate shutdown, as `pg_ctl stop -m
// immediate`: the data is thrown away, so no checkpoint), stops PgBouncers
// started in front of it, and removes the temp directory. It is safe to call
// more than once and on a stopped server.
func (p *Postgres) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	pr := p.proc
	p.proc = nil
	bouncers := p.bouncers
	p.bouncers = nil
	p.mu.Unlock()

	var errs []error
	for _, b := range bouncers {
		errs = append(errs, b.Close())
	}
	if pr != nil {
		// The postmaster exits only after all its children have, so no
		// backend outlives this.
		errs = append(errs, pr.Stop(syscall.SIGQUIT, 10*time.Second))
	}
	errs = append(errs, removeTempDir(p.Dir, p.lock))
	return errors.Join(errs...)
}

// startOnFreePort calls start with a free loopback port, and again with a new one when
// another process took the port between freePort and the server's bind (errPortInUse).
func startOnFreePort(start func(port int) error) error {
	for attempt := 1; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return err
		}
		err = start(port)
		if err == nil || !errors.Is(err, errPortInUse) || attempt >= portAttempts {
			return err
		}
	}
}
