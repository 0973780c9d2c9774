// How a simulation is configured: instances, workload and pool implementation.

package poolsim

import (
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
)

// Arrival is how request start times are spaced.
type Arrival string

const (
	// ArrivalPoisson spaces requests by exponential gaps (a Poisson process),
	// which gives the bursts that make overflow and waiting visible.
	ArrivalPoisson Arrival = "poisson"
	// ArrivalEven spaces requests exactly 1/rate apart.
	ArrivalEven Arrival = "even"
)

// Config describes one simulated process: Instances independent pools, each
// driven by its own open-loop request generator.
type Config struct {
	// DSN is a PostgreSQL URL or keyword/value string.
	DSN string
	// AppName prefixes application_name: instance i uses "<AppName>-<i>".
	AppName string
	// Instances is the number of independent pools (processes or workers).
	Instances int
	Pool      PoolSettings
	// PoolImpl is the pool every instance uses; "" means ImplQueuePool. With
	// ImplPgxpool, Pool.MaxOverflow must not be -1 and Pool.Timeout must be
	// more than 0 (see PgxPool for how the settings map onto pgxpool).
	PoolImpl PoolImpl
	// Registerer, when set and PoolImpl is ImplPgxpool, receives one
	// pgxpoolcollector.Collector that exports every instance's pool as the
	// dbpool_* series of source "pgxpool". Run registers it once the pools
	// exist and leaves it registered after returning, so that the final
	// numbers can still be read. The QueuePool implementation registers
	// nothing.
	Registerer prometheus.Registerer
	// MetricsTarget is the target label of those series: the name under
	// which the exporter watching the same server reports it, so that exact
	// and estimated series of one pool line up. "" means the collector's
	// default, the database name.
	MetricsTarget string

	// Rate is the number of requests per second per instance; 0 sends none.
	Rate    float64
	Arrival Arrival
	// QueryTime is how long a normal request runs SELECT pg_sleep on the
	// checked-out connection.
	QueryTime time.Duration
	// LongQueryShare (0..1) of requests run a LongQueryTime pg_sleep instead.
	LongQueryShare float64
	LongQueryTime  time.Duration
	// IdleInTxShare (0..1) of requests run BEGIN; SELECT 1; then keep the
	// connection idle in transaction for IdleInTxTime before COMMIT.
	IdleInTxShare float64
	IdleInTxTime  time.Duration
	// HoldExtra keeps the connection checked out, idle outside a transaction,
	// after the request's statements: the server sees "idle", the pool sees
	// "checked out".
	HoldExtra time.Duration
	// Duration stops Run after this long; 0 runs until ctx is done.
	Duration time.Duration
	// MaxInflight caps concurrent requests over all instances; a request that
	// would exceed it is dropped (DroppedTotal), so that a stalled server
	// cannot grow memory without bound.
	MaxInflight int
	// Logger receives start and stop messages; nil discards them.
	Logger *slog.Logger
}

// DefaultConfig returns the DB_* defaults and a light workload.
func DefaultConfig() Config {
	return Config{
		AppName:       "api",
		Instances:     1,
		Pool:          DefaultPoolSettings(),
		PoolImpl:      ImplQueuePool,
		MetricsTarget: "postgres",
		Rate:          10,
		Arrival:       ArrivalPoisson,
		QueryTime:     50 * time.Millisecond,
		LongQueryTime: 40 * time.Second,
		IdleInTxTime:  30 * time.Second,
		MaxInflight:   1000,
	}
}

// Validate reports every invalid setting at once.
func (c Config) Validate() error {
	var errs []error
	if c.DSN == "" {
		errs = append(errs, errors.New("a DSN is required"))
	} else if _, err := pgx.ParseConfig(c.DSN); err != nil {
		errs = append(errs, errors.New("cannot parse the DSN; check its syntax (details withheld: a DSN may contain a password)"))
	}
	if c.Instances < 1 {
		errs = append(errs, fmt.Errorf("instances must be at least 1, got %d", c.Instances))
	}
	if err := c.Pool.Validate(); err != nil {
		errs = append(errs, err)
	}
	switch c.PoolImpl {
	case "", ImplQueuePool:
	case ImplPgxpool:
		if err := c.Pool.validatePgxpool(); err != nil {
			errs = append(errs, err)
		}
	default:
		errs = append(errs, fmt.Errorf("pool implementation must be %q or %q, got %q", ImplQueuePool, ImplPgxpool, c.PoolImpl))
	}
	if c.Rate < 0 {
		errs = append(errs, fmt.Errorf("rate must not be negative, got %g", c.Rate))
	}
	if c.Arrival != ArrivalPoisson && c.Arrival != ArrivalEven {
		errs = append(errs, fmt.Errorf("arrival must be %q or %q, got %q", ArrivalPoisson, ArrivalEven, c.Arrival))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"query time", c.QueryTime}, {"long query time", c.LongQueryTime}, {"idle in transaction time", c.IdleInTxTime}, {"hold extra", c.HoldExtra}, {"duration", c.Duration}} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%s must not be negative, got %s", d.name, d.v))
		}
	}
	for _, s := range []struct {
		name string
		v    float64
	}{{"long query share", c.LongQueryShare}, {"idle in transaction share", c.IdleInTxShare}} {
		if s.v < 0 || s.v > 1 {
			errs = append(errs, fmt.Errorf("%s must be between 0 and 1, got %g", s.name, s.v))
		}
	}
	if c.LongQueryShare+c.IdleInTxShare > 1 {
		errs = append(errs, fmt.Errorf("long query share + idle in transaction share must not exceed 1, got %g", c.LongQueryShare+c.IdleInTxShare))
	}
	if c.MaxInflight < 1 {
		errs = append(errs, fmt.Errorf("max inflight must be at least 1, got %d", c.MaxInflight))
	}
	return errors.Join(errs...)
}

// ApplicationName returns the application_name of instance i.
func (c Config) ApplicationName(i int) string { return c.AppName + "-" + strconv.Itoa(i) }

// MetricsPool returns the pool label of instance i in the pgxpool series:
// AppName when there is one instance, so that it is the pool the exporter's
// activity source reports for the same backends, and otherwise
// ApplicationName(i), one series per instance (the activity source groups
// all instances into one pool; the collector has no instance label).
func (c Config) MetricsPool(i int) string {
	if c.Instances == 1 {
		return c.AppName
	}
	return c.ApplicationName(i)
}

// impl returns the pool implementation, "" read as ImplQueuePool.
func (c Config) impl() PoolImpl {
	if c.PoolImpl == "" {
		return ImplQueuePool
	}
	return c.PoolImpl
}
