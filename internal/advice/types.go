// Package advice turns a stream of pool samples into the four answers a pooled service gives
// about its own pool (check_pool_status, get_pool_health, get_active_connections and
// optimize_pool_settings), for any pool the exporter watches.
//
// It is pure: no database, no HTTP, no clock of its own. Collectors feed a History per pool;
// the JSON API, status page and CLI call Analyze (or the four functions) on its Summary.
// Every warning and recommendation names the rule that produced it, so that an operator can
// look the rule up and a test can assert it.
package advice

import (
	"math"
	"time"

	"github.com/dbpool/dbpool_exporter/internal/metrics"
	"github.com/dbpool/dbpool_exporter/poolcfg"
)

// Pool describes one pool group: the same settings on Instances processes.
type Pool struct {
	Name      string
	Source    metrics.Source
	Settings  poolcfg.Settings
	Instances int // processes that each hold one such pool; values < 1 count as 1
}

// instances is never below 1 so that per-instance arithmetic cannot divide by zero.
func (p Pool) instances() int {
	if p.Instances < 1 {
		return 1
	}
	return p.Instances
}

// Sample is one observation of a pool group. Counts are totals over all instances of the pool.
// Pointer fields are optional: nil means the source cannot observe the value, which is not the
// same as zero: a series the source cannot observe is absent, never a made-up zero.
type Sample struct {
	Time     time.Time `json:"time"`
	Open     int       `json:"open"`     // connections the pool holds: in use + idle
	InUse    int       `json:"in_use"`   // checked out by the application
	Overflow int       `json:"overflow"` // sum over instances of max(0, open - pool_size)
	Active   int       `json:"active"`   // running a query
	Idle     int       `json:"idle"`
	// PoolSize (instances x pool_size) and Capacity (instances x (pool_size + max_overflow))
	// are the group's limits when the sample was taken, so that a chart of the history shows
	// the limits each point was held against, across reloads; 0 when unknown.
	PoolSize int `json:"pool_size,omitempty"`
	Capacity int `json:"capacity,omitempty"`

	// IdleInTransaction and LongestQuerySeconds come from pg_stat_activity only.
	IdleInTransaction   *int     `json:"idle_in_transaction,omitempty"`
	LongestQuerySeconds *float64 `json:"longest_query_seconds,omitempty"`

	Pending              *int     `json:"pending,omitempty"`                // checkouts waiting now
	CheckoutsTotal       *float64 `json:"checkouts_total,omitempty"`        // counter
	CheckoutSecondsTotal *float64 `json:"checkout_seconds_total,omitempty"` // counter: sum of checkout waits
	TimeoutsTotal        *float64 `json:"timeouts_total,omitempty"`         // counter: checkouts that timed out

	// ArrivalRate (checkouts or transactions per second, whole group) and MeanHoldSeconds (how
	// long one is held) feed Little's law: in flight = rate x hold. PgBouncer's SHOW STATS gives
	// both (avg_xact_count, avg_xact_time). When only MeanHoldSeconds is known, the rate of
	// CheckoutsTotal stands in for ArrivalRate.
	ArrivalRate     *float64 `json:"arrival_rate,omitempty"`
	MeanHoldSeconds *float64 `json:"mean_hold_seconds,omitempty"`

	// Hold and Create are cumulative histograms of how long connections were held (checkout
	// to checkin) and how long opening one took; nil where the source cannot observe them.
	Hold   *Histogram `json:"hold,omitempty"`
	Create *Histogram `json:"create,omitempty"`
	// FailuresTotal counts failed checkouts by reason (metrics.FailureReasons), counters.
	FailuresTotal map[string]float64 `json:"failures_total,omitempty"`
	// LongestWaitSeconds is the age of the oldest checkout still waiting.
	LongestWaitSeconds *float64 `json:"longest_wait_seconds,omitempty"`
	// BusiestInUse is the in-use count of the busiest instance, where the source reports
	// each instance (or the group is one instance).
	BusiestInUse *int `json:"busiest_in_use,omitempty"`
}

// Histogram is a cumulative histogram of durations in seconds: counters.
type Histogram struct {
	Count float64 `json:"count"`
	Sum   float64 `json:"sum"`
	// Buckets are cumulative, bounds ascending; nil when the source has totals only.
	Buckets []Bucket `json:"buckets,omitempty"`
}

func (h *Histogram) clone() *Histogram {
	if h == nil {
		return nil
	}
	c := *h
	c.Buckets = append([]Bucket(nil), h.Buckets...)
	return &c
}

// DefaultAdminHeadroomFraction is the share of max_connections kept free for administrators,
// migrations and tools when Server.AdminHeadroom is 0: 20 of 100 connections.
const DefaultAdminHeadroomFraction = 0.20

// NoAdminHeadroom as Server.AdminHeadroom keeps back only the reserved connections.
const NoAdminHeadroom = -1

// Server is the connection budget of the PostgreSQL server that a pool's connections land on.
type Server struct {
	MaxConnections int // max_connections
	// ReservedConnections are slots ordinary roles cannot use: superuser_reserved_connections
	// plus reserved_connections (PostgreSQL 16+).
	ReservedConnections int
	// AdminHeadroom is how many connections to keep free for humans and tools. 0 means the
	// default, DefaultAdminHeadroomFraction of MaxConnections rounded up; NoAdminHeadroom
	// means none beyond ReservedConnections.
	AdminHeadroom int
	// TotalInstances is the number of pool instances of ALL pools on this server, which share
	// the budget. 0 (or fewer than the pool's own instances) means the pool's own instances.
	TotalInstances int
	// TotalCapacity is the sum over all pools on the server of instances x (pool_size +
	// max_overflow): what they may open together at worst. 0 means unknown.
	TotalCapacity int
}

// KeptBack is how many of max_connections the applications must leave alone:
// max(ReservedConnections, AdminHeadroom). The two are not added because the superuser-reserved
// slots are themselves admin headroom: of 100 connections with PostgreSQL's default 3
// reserved, keep back 20 and leave 80 to the applications.
func (s Server) KeptBack() int {
	h := s.AdminHeadroom
	switch {
	case h == 0:
		h = int(math.Ceil(float64(s.MaxConnections)*DefaultAdminHeadroomFraction - epsilon))
	case h < 0:
		h = 0
	}
	return max(s.ReservedConnections, h, 0)
}

// Available is what all application pools on the server may open together.
func (s Server) Available() int { return max(s.MaxConnections-s.KeptBack(), 0) }

// PerInstanceBudget is floor(Available / instances sharing the server): the ceiling on one
// instance's pool_size + max_overflow. poolInstances is the asking pool's own instance count,
// used when TotalInstances is not set.
func (s Server) PerInstanceBudget(poolInstances int) int {
	n := max(s.TotalInstances, poolInstances, 1)
	return s.Available() / n
}

// epsilon absorbs binary floating point error before rounding up, so that 100 x 0.05 x 1.5 is
// 7.5 and not 7.500000000000001 (harmless) and 5.000000000000001 does not become 6.
const epsilon = 1e-9

// ceil rounds up, forgiving floating point noise.
func ceil(x float64) int { return int(math.Ceil(x - epsilon)) }
