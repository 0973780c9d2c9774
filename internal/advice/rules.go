package advice

import "time"

// Rule names. Each warning and recommendation carries the name of the rule that produced it.
const (
	// Health rules: the levels a healthy pool stays within.
	RuleUtilizationHigh   = "utilization_high"    // average utilization over the window > 70%
	RuleUtilizationPeak   = "utilization_peak"    // peak utilization over the window > 90%
	RuleCheckoutSlow      = "checkout_slow"       // average checkout time over the window > 10 ms
	RuleCheckoutTimeouts  = "checkout_timeouts"   // any checkout timed out in the window
	RuleOverflowHigh      = "overflow_high"       // peak overflow > 50% of max_overflow
	RuleIdleInTransaction = "idle_in_transaction" // any connection idle in transaction now (> 5: alert level)
	RuleLongQuery         = "long_query"          // a query running > 5 s now (> 30 s: alert level)
	RuleCheckoutFailures  = "checkout_failures"   // checkouts failed to open a connection, or with another error, in the window
	RuleConnectionLeak    = "connection_leak"     // connections held past the application's leak threshold now

	// Sizing rules: size from traffic, grow a busy pool, fit the server's connection budget,
	// overflow twice the pool size.
	RuleLittlesLaw      = "littles_law"      // in flight = arrival rate x hold time, +50%: the floor
	RuleQueueing        = "queueing_model"   // above the floor: the smallest size the model finds meeting the targets
	RuleObservedPeak    = "observed_peak"    // peak in use per instance, +50%; also the floor
	RuleScaleUp         = "scale_up_50pct"   // utilization > 70% or timeouts: pool_size x 1.5
	RuleOverflow2x      = "overflow_2x"      // max_overflow = 2 x pool_size
	RuleOverflowKept    = "keep_overflow"    // PgBouncer's reserve pool stays as configured
	RuleNoOverflow      = "no_overflow"      // pgxpool has no overflow
	RuleServerBudget    = "server_budget"    // pool_size + max_overflow <= per-instance budget
	RuleShrinkOversized = "shrink_oversized" // utilization (or peak) < 30% of pool_size over a full window
	RuleKeepCurrent     = "keep_current"     // the current pool_size fits what was observed
	RuleNoData          = "no_data"          // no sample in the window

	// Settings rules: pre-ping on and echo off in production.
	RulePrePingDisabled = "pre_ping_disabled"
	RuleEchoEnabled     = "echo_enabled"
)

// Finding is one warning or recommendation.
type Finding struct {
	Rule    string `json:"rule"`
	Message string `json:"message"`
}

// Thresholds are the levels the rules compare against; DefaultThresholds gives the usual ones.
type Thresholds struct {
	AvgUtilization         float64       // utilization_high; also triggers scale_up_50pct
	PeakUtilization        float64       // utilization_peak
	AvgCheckout            time.Duration // checkout_slow
	TimeoutsAlertPerMinute float64       // checkout_timeouts says "alert level" above this
	OverflowFraction       float64       // overflow_high, of max_overflow
	IdleInTransactionAlert int           // idle_in_transaction says "alert level" above this
	LongQuery              time.Duration // long_query
	LongQueryAlert         time.Duration // long_query says "alert level" above this
	Buffer                 float64       // headroom added by littles_law and observed_peak
	ScaleUpFactor          float64       // scale_up_50pct
	OverflowFactor         float64       // overflow_2x
	OversizedFraction      float64       // shrink_oversized: peak below this share of pool_size
	// KeepTolerance: a pool that meets the targets is kept while it is at least this much
	// below the buffered demand (0.05: 9 for a demand of 6.1 x 1.5 = 9.15).
	KeepTolerance float64
	// SaturatedWait is how long a caller must have waited for a connection for the pool to
	// count as saturated, and SaturatedSamples in how many consecutive samples callers must
	// have waited (or all connections been in use) where the wait is not observed: one
	// checkout caught in flight (a pre-ping, a connect) is no queue.
	SaturatedWait    time.Duration
	SaturatedSamples int
}

// DefaultThresholds returns the levels a healthy pool stays within.
func DefaultThresholds() Thresholds {
	return Thresholds{
		AvgUtilization:         0.70,
		PeakUtilization:        0.90,
		AvgCheckout:            10 * time.Millisecond,
		TimeoutsAlertPerMinute: 1,
		OverflowFraction:       0.50,
		IdleInTransactionAlert: 5,
		LongQuery:              5 * time.Second,
		LongQueryAlert:         30 * time.Second,
		Buffer:                 0.50,
		ScaleUpFactor:          1.5,
		OverflowFactor:         2,
		OversizedFraction:      0.30,
		KeepTolerance:          0.05,
		SaturatedWait:          100 * time.Millisecond,
		SaturatedSamples:       3,
	}
}
