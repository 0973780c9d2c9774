// The QueuePool's settings, its timeout error and its counters.

package poolsim

import (
	"errors"
	"fmt"
	"time"
)

// TimeoutError is SQLAlchemy's sqlalchemy.exc.TimeoutError: every permanent
// and overflow connection stayed checked out for the whole pool timeout.
type TimeoutError struct {
	Size        int
	MaxOverflow int
	Timeout     time.Duration
}

// Error returns the same text as SQLAlchemy, so that logs and alerts written
// for the real application also match the simulation.
func (e *TimeoutError) Error() string {
	return fmt.Sprintf("QueuePool limit of size %d overflow %d reached, connection timed out, timeout %0.2f",
		e.Size, e.MaxOverflow, e.Timeout.Seconds())
}

// Is makes errors.Is(err, ErrPoolTimeout) true.
func (e *TimeoutError) Is(target error) bool { return target == ErrPoolTimeout }

// PoolSettings are the DB_* pool settings, in SQLAlchemy's meaning.
type PoolSettings struct {
	// Size is pool_size: connections kept open once created. They are
	// opened lazily, on demand, as QueuePool does.
	Size int
	// MaxOverflow is max_overflow: connections allowed beyond Size. A
	// connection returned while Size connections already sit idle is closed.
	// -1 means no limit, as in SQLAlchemy.
	MaxOverflow int
	// Timeout is pool_timeout: how long Checkout waits when Size+MaxOverflow
	// connections are all checked out. 0 fails at once.
	Timeout time.Duration
	// Recycle is pool_recycle: a connection older than this is closed and
	// replaced at checkout. 0 or less disables recycling (SQLAlchemy: -1).
	Recycle time.Duration
	// PrePing is pool_pre_ping: ping at checkout, replace a dead connection.
	PrePing bool
}

// DefaultPoolSettings returns the DB_* defaults: 10, 20, 30 s, 3600 s, true.
func DefaultPoolSettings() PoolSettings {
	return PoolSettings{Size: 10, MaxOverflow: 20, Timeout: 30 * time.Second, Recycle: time.Hour, PrePing: true}
}

// Validate reports every invalid setting at once.
func (s PoolSettings) Validate() error {
	var errs []error
	if s.Size < 1 {
		// SQLAlchemy reads pool_size=0 as "no limit"; a pool without a size is
		// not a configuration this simulation models, so it is refused rather than guessed.
		errs = append(errs, fmt.Errorf("pool size must be at least 1, got %d", s.Size))
	}
	if s.MaxOverflow < -1 {
		errs = append(errs, fmt.Errorf("pool max overflow must be -1 (unlimited) or more, got %d", s.MaxOverflow))
	}
	if s.Timeout < 0 {
		errs = append(errs, fmt.Errorf("pool timeout must not be negative, got %s", s.Timeout))
	}
	return errors.Join(errs...)
}

// PoolConfig configures one QueuePool.
type PoolConfig struct {
	// DSN is a PostgreSQL URL or keyword/value string.
	DSN string
	// ApplicationName, when set, overrides application_name of every
	// connection, so that the pool's backends can be told apart on the server.
	ApplicationName string
	PoolSettings
}

// PoolStats are the true numbers of one pool (or a sum of pools).
type PoolStats struct {
	Size        int `json:"pool_size"`
	MaxOverflow int `json:"max_overflow"`
	// CheckedOut counts connections handed to callers, including slots whose
	// connection is still being opened for a caller.
	CheckedOut int `json:"checked_out"`
	Idle       int `json:"idle"`
	// Open is Idle + CheckedOut.
	Open int `json:"open"`
	// Overflow is max(0, Open - Size), summed per pool when pools are added.
	Overflow int `json:"overflow"`
	// Pending counts callers waiting for a connection.
	Pending                  int     `json:"pending"`
	CheckoutsTotal           uint64  `json:"checkouts_total"`
	CheckoutWaitSecondsTotal float64 `json:"checkout_wait_seconds_total"`
	TimeoutsTotal            uint64  `json:"timeouts_total"`
	ConnectsTotal            uint64  `json:"connects_total"`
	ConnectErrorsTotal       uint64  `json:"connect_errors_total"`
	RecyclesTotal            uint64  `json:"recycles_total"`
	PingFailuresTotal        uint64  `json:"ping_failures_total"`
	// OverflowClosesTotal counts connections closed on return because Size
	// connections were already idle.
	OverflowClosesTotal uint64 `json:"overflow_closes_total"`
}

// Add returns the sum of two PoolStats. An unlimited MaxOverflow stays -1.
func (s PoolStats) Add(o PoolStats) PoolStats {
	r := PoolStats{
		Size:                     s.Size + o.Size,
		MaxOverflow:              s.MaxOverflow + o.MaxOverflow,
		CheckedOut:               s.CheckedOut + o.CheckedOut,
		Idle:                     s.Idle + o.Idle,
		Open:                     s.Open + o.Open,
		Overflow:                 s.Overflow + o.Overflow,
		Pending:                  s.Pending + o.Pending,
		CheckoutsTotal:           s.CheckoutsTotal + o.CheckoutsTotal,
		CheckoutWaitSecondsTotal: s.CheckoutWaitSecondsTotal + o.CheckoutWaitSecondsTotal,
		TimeoutsTotal:            s.TimeoutsTotal + o.TimeoutsTotal,
		ConnectsTotal:            s.ConnectsTotal + o.ConnectsTotal,
		ConnectErrorsTotal:       s.ConnectErrorsTotal + o.ConnectErrorsTotal,
		RecyclesTotal:            s.RecyclesTotal + o.RecyclesTotal,
		PingFailuresTotal:        s.PingFailuresTotal + o.PingFailuresTotal,
		OverflowClosesTotal:      s.OverflowClosesTotal + o.OverflowClosesTotal,
	}
	if s.MaxOverflow < 0 || o.MaxOverflow < 0 {
		r.MaxOverflow = -1
	}
	return r
}
