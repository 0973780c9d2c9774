// PgBouncer's life: start in the foreground and wait until its console answers, its DSNs,
// stop, restart, close.

package pgtest

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dbpool/dbpool_exporter/tools/childproc"
)

// start runs pgbouncer in the foreground as a child of this process and
// returns once its admin console answers.
func (b *PgBouncer) start() error {
	// Messages from before the logfile is open (config errors) go to stderr.
	errPath := filepath.Join(b.Dir, "pgbouncer.stderr")
	offset := logSize(b.LogFile)
	pr, err := childproc.Start(b.owner.spec(errPath, b.bin, "-q", b.ConfigFile))
	if err != nil {
		return err
	}
	if err := b.waitReady(pr, offset); err != nil {
		_ = pr.Stop(syscall.SIGKILL, 5*time.Second)
		tail := childproc.Tail(logSince(b.LogFile, offset), logTailLines)
		return fmt.Errorf("pgbouncer on port %d: %w\n--- %s (tail) ---\n%s", b.Port, err, b.LogFile, tail)
	}
	b.mu.Lock()
	b.proc = pr
	b.mu.Unlock()
	return nil
}

// waitReady logs in to the admin console until it answers SHOW VERSION,
// first over the unix socket in its own directory, then over TCP. A
// PgBouncer that lost the port race keeps running on the unix socket alone
// and a TCP ping would reach whoever won, so the unix socket says when it is
// up and its log says whether the TCP bind failed.
func (b *PgBouncer) waitReady(pr *childproc.Process, logOffset int64) error {
	err := pr.WaitReady(context.Background(), startTimeout, 20*time.Millisecond, func() error {
		if err := b.bindFailed(logOffset); err != nil {
			return childproc.Abort(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return b.ping(ctx, b.Dir)
	})
	if err != nil {
		return err
	}
	if err := b.bindFailed(logOffset); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.ping(ctx, b.Host); err != nil {
		return fmt.Errorf("pgbouncer answers on its unix socket but not on %s:%d: %w", b.Host, b.Port, err)
	}
	return nil
}

func (b *PgBouncer) bindFailed(logOffset int64) error {
	if strings.Contains(logSince(b.LogFile, logOffset), "cannot listen on "+b.Host) {
		return fmt.Errorf("%w: pgbouncer cannot listen on %s:%d", errPortInUse, b.Host, b.Port)
	}
	return nil
}

// ping runs SHOW VERSION on the admin console via host (an address or the
// socket directory).
func (b *PgBouncer) ping(ctx context.Context, host string) error {
	cfg, err := pgx.ParseConfig(b.AdminDSN())
	if err != nil {
		return err
	}
	cfg.Host = host
	cfg.Fallbacks = nil
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, "SHOW VERSION")
	return err
}

// AdminDSN returns a URL DSN (sslmode=disable) to the admin console, database
// "pgbouncer", as a user listed in admin_users. The console speaks only the
// simple query protocol: use pgx.QueryExecModeSimpleProtocol.
func (b *PgBouncer) AdminDSN() string {
	return buildDSN(b.Host, b.Port, b.adminUser, b.adminPassword, "pgbouncer")
}

// StatsDSN is like AdminDSN for a user listed only in stats_users: it may run
// the SHOW commands but not PAUSE, RELOAD and friends.
func (b *PgBouncer) StatsDSN() string {
	return buildDSN(b.Host, b.Port, b.statsUser, b.statsPassword, "pgbouncer")
}

// DSN returns a URL DSN (sslmode=disable) through this PgBouncer; db "" means
// "app". user and password are those of a PostgreSQL role.
//
// In transaction pool mode (the default) named prepared statements do not
// survive a change of server connection (PgBouncer < 1.21), so pgx clients
// that run many transactions should use QueryExecModeExec,
// QueryExecModeDescribeExec or QueryExecModeSimpleProtocol.
func (b *PgBouncer) DSN(user, password, db string) string {
	if db == "" {
		db = "app"
	}
	return buildDSN(b.Host, b.Port, user, password, db)
}

// Stop shuts PgBouncer down (SIGTERM; SIGKILL if it is still there after the
// grace period) and keeps its directory for Restart. A no-op when stopped.
func (b *PgBouncer) Stop() error {
	b.mu.Lock()
	pr := b.proc
	b.proc = nil
	b.mu.Unlock()
	if pr == nil {
		return nil
	}
	// SIGTERM is an immediate shutdown up to PgBouncer 1.22 and waits for
	// clients from 1.23 on; the grace period bounds the latter.
	return pr.Stop(syscall.SIGTERM, 5*time.Second)
}

// Restart starts PgBouncer again on the same port with the same
// configuration; a running one is stopped first.
func (b *PgBouncer) Restart() error {
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		return errors.New("pgtest: restart after Close")
	}
	if err := b.Stop(); err != nil {
		return err
	}
	return b.start()
}

// Close stops PgBouncer and removes its directory; safe to call more than
// once.
func (b *PgBouncer) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	b.mu.Unlock()
	err := b.Stop()
	if b.pg != nil {
		b.pg.mu.Lock()
		for i, o := range b.pg.bouncers {
			if o == b {
				b.pg.bouncers = append(b.pg.bouncers[:i], b.pg.bouncers[i+1:]...)
				break
			}
		}
		b.pg.mu.Unlock()
	}
	return errors.Join(err, removeTempDir(b.Dir, b.lock))
}
