package advice

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Input is what the four answers are computed from.
type Input struct {
	Pool    Pool
	Summary Summary // from the pool's History
	Server  *Server // nil when the server's connection budget is unknown
}

// Status mirrors the seed's check_pool_status. Counts are for the whole pool group (all
// instances); for a single-instance pool they are the seed's numbers.
type Status struct {
	PoolSize         int `json:"pool_size"` // instances x DB_POOL_SIZE
	CheckedOut       int `json:"checked_out"`
	Overflow         int `json:"overflow"`
	TotalConnections int `json:"total_connections"`
	Instances        int `json:"instances"`

	Source Source `json:"source"`
	Exact  bool   `json:"exact"`
	// Estimated lists the keys of this object whose values are lower-bound estimates.
	Estimated []string `json:"estimated"`
}

// Health mirrors the seed's get_pool_health.
type Health struct {
	UtilizationPct     float64   `json:"utilization_pct"` // latest sample
	AvgUtilizationPct  float64   `json:"avg_utilization_pct"`
	PeakUtilizationPct float64   `json:"peak_utilization_pct"`
	Warnings           []Finding `json:"warnings"`
	Recommendations    []Finding `json:"recommendations"`

	Source    Source   `json:"source"`
	Exact     bool     `json:"exact"`
	Estimated []string `json:"estimated"`
}

// Connections mirrors the seed's get_active_connections. IdleInTransaction and
// LongestQuerySeconds are null when the source cannot observe them.
type Connections struct {
	TotalConnections    int      `json:"total_connections"`
	ActiveCount         int      `json:"active_count"`
	IdleCount           int      `json:"idle_count"`
	IdleInTransaction   *int     `json:"idle_in_transaction"`
	LongestQuerySeconds *float64 `json:"longest_query_seconds"`

	Source    Source   `json:"source"`
	Exact     bool     `json:"exact"`
	Estimated []string `json:"estimated"`
}

// CurrentSettings are a pool's settings as the seed's optimize_pool_settings reports them
// (durations in seconds, like DB_POOL_TIMEOUT and DB_POOL_RECYCLE).
type CurrentSettings struct {
	PoolSize    int     `json:"pool_size"`
	MaxOverflow int     `json:"max_overflow"`
	Timeout     float64 `json:"timeout"`
	Recycle     float64 `json:"recycle"`
	PrePing     bool    `json:"pre_ping"`
	Echo        bool    `json:"echo"`
}

// Optimization mirrors the seed's optimize_pool_settings. Sizes are per instance, as in .env.
type Optimization struct {
	CurrentSettings        CurrentSettings `json:"current_settings"`
	RecommendedPoolSize    int             `json:"recommended_pool_size"`
	RecommendedMaxOverflow int             `json:"recommended_max_overflow"`
	Recommendations        []Finding       `json:"recommendations"`

	// PoolSizeRule is the rule that settled recommended_pool_size.
	PoolSizeRule         string `json:"pool_size_rule"`
	Instances            int    `json:"instances"`
	PeakInUsePerInstance int    `json:"peak_in_use_per_instance"`
	// PerInstanceBudget is the server's ceiling on pool_size + max_overflow, when known.
	PerInstanceBudget *int `json:"per_instance_budget,omitempty"`

	Source    Source   `json:"source"`
	Exact     bool     `json:"exact"`
	Estimated []string `json:"estimated"`
}

// Report is all four answers for one pool, with the window they were computed over.
type Report struct {
	Pool         string       `json:"pool"`
	Source       Source       `json:"source"`
	Exact        bool         `json:"exact"`
	Window       Summary      `json:"window"`
	Status       Status       `json:"status"`
	Health       Health       `json:"health"`
	Connections  Connections  `json:"active_connections"`
	Optimization Optimization `json:"optimization"`
}

// Analyze computes all four answers.
func Analyze(in Input, th Thresholds) Report {
	return Report{
		Pool:         in.Pool.Name,
		Source:       in.Pool.Source,
		Exact:        in.Pool.Source.Exact(),
		Window:       in.Summary,
		Status:       CheckPoolStatus(in),
		Health:       PoolHealth(in, th),
		Connections:  ActiveConnections(in),
		Optimization: OptimizePoolSettings(in, th),
	}
}

// CheckPoolStatus reports the latest sample as the seed's check_pool_status does.
func CheckPoolStatus(in Input) Status {
	l := in.Summary.Latest
	st := Status{
		PoolSize:         in.Pool.instances() * in.Pool.Settings.PoolSize,
		CheckedOut:       l.InUse,
		Overflow:         l.Overflow,
		TotalConnections: l.Open,
		Instances:        in.Pool.instances(),
		Source:           in.Pool.Source,
		Exact:            in.Pool.Source.Exact(),
		Estimated:        []string{},
	}
	if !st.Exact {
		st.Estimated = append(st.Estimated, "checked_out", "overflow")
	}
	return st
}

// ActiveConnections reports the latest sample as the seed's get_active_connections does.
func ActiveConnections(in Input) Connections {
	l := in.Summary.Latest
	return Connections{
		TotalConnections:    l.Open,
		ActiveCount:         l.Active,
		IdleCount:           l.Idle,
		IdleInTransaction:   clonePtr(l.IdleInTransaction),
		LongestQuerySeconds: clonePtr(l.LongestQuerySeconds),
		Source:              in.Pool.Source,
		Exact:               in.Pool.Source.Exact(),
		// Backend counts and states are exact whatever the source; only in-use is estimated.
		Estimated: []string{},
	}
}

// utilization is in-use over the group's permanent connections (see Summary).
func utilization(inUse int, p Pool) float64 {
	if d := p.instances() * p.Settings.PoolSize; d > 0 {
		return float64(inUse) / float64(d)
	}
	if d := p.instances() * p.Settings.Capacity(); d > 0 {
		return float64(inUse) / float64(d)
	}
	return 0
}

// lowerBound is appended to messages whose number comes from pg_stat_activity.
const lowerBound = " (estimate from pg_stat_activity: a lower bound, since a connection checked out" +
	" without an open transaction looks idle on the server)"

func estimateNote(p Pool) string {
	if p.Source.Exact() {
		return ""
	}
	return lowerBound
}

// PoolHealth applies the seed's health thresholds, as get_pool_health does. Utilization,
// checkout time, timeouts and overflow are judged over the window; idle-in-transaction and
// long queries on the latest sample, since they describe what is stuck right now.
func PoolHealth(in Input, th Thresholds) Health {
	p, s := in.Pool, in.Summary
	set := p.Settings
	h := Health{
		UtilizationPct:     pct(utilization(s.Latest.InUse, p)),
		AvgUtilizationPct:  pct(s.AvgUtilization),
		PeakUtilizationPct: pct(s.PeakUtilization),
		Warnings:           []Finding{},
		Recommendations:    []Finding{},
		Source:             p.Source,
		Exact:              p.Source.Exact(),
		Estimated:          []string{},
	}
	if !h.Exact {
		h.Estimated = append(h.Estimated, "utilization_pct", "avg_utilization_pct", "peak_utilization_pct")
	}
	warn := func(rule, msg, advice string) {
		h.Warnings = append(h.Warnings, Finding{rule, msg})
		if advice != "" {
			h.Recommendations = append(h.Recommendations, Finding{rule, advice})
		}
	}
	win := human(time.Duration(s.WindowSeconds * float64(time.Second)))
	note := estimateNote(p)

	if s.Samples == 0 {
		h.Recommendations = append(h.Recommendations, Finding{RuleNoData,
			fmt.Sprintf("no sample of pool %q in the last %s: nothing to judge yet", p.Name, win)})
	} else {
		if s.AvgUtilization > th.AvgUtilization {
			warn(RuleUtilizationHigh,
				fmt.Sprintf("average utilization %s%% over the last %s exceeds %s%%%s",
					num(pct(s.AvgUtilization)), win, num(pct(th.AvgUtilization)), note),
				fmt.Sprintf("increase DB_POOL_SIZE by 50%% (%d -> %d) and DB_MAX_OVERFLOW with it (%d -> %d)",
					set.PoolSize, ceil(float64(set.PoolSize)*th.ScaleUpFactor),
					set.MaxOverflow, ceil(float64(set.MaxOverflow)*th.ScaleUpFactor)))
		}
		if s.PeakUtilization > th.PeakUtilization {
			warn(RuleUtilizationPeak,
				fmt.Sprintf("peak utilization %s%% (%d of %d permanent connections in use) over the last %s exceeds %s%%%s",
					num(pct(s.PeakUtilization)), s.PeakInUse, p.instances()*set.PoolSize, win,
					num(pct(th.PeakUtilization)), note),
				"size DB_POOL_SIZE for the peak plus 50% headroom so that bursts do not depend on overflow connections")
		}
		if s.AvgCheckoutSeconds != nil && *s.AvgCheckoutSeconds > th.AvgCheckout.Seconds() {
			warn(RuleCheckoutSlow,
				fmt.Sprintf("average checkout time %s ms over the last %s exceeds %s ms",
					num(*s.AvgCheckoutSeconds*1000), win, num(float64(th.AvgCheckout)/float64(time.Millisecond))),
				"requests queue for connections: increase DB_POOL_SIZE, or shorten how long connections are held (slow queries, idle in transaction)")
		}
		if s.Timeouts != nil && *s.Timeouts > 0 {
			msg := fmt.Sprintf("%s checkouts timed out in the last %s", num(*s.Timeouts), win)
			if s.TimeoutsPerSecond != nil {
				perMin := *s.TimeoutsPerSecond * 60
				msg += fmt.Sprintf(" (%s per minute)", num(perMin))
				if perMin > th.TimeoutsAlertPerMinute {
					msg += fmt.Sprintf("; alert level is %s per minute", num(th.TimeoutsAlertPerMinute))
				}
			}
			warn(RuleCheckoutTimeouts, msg,
				"increase DB_POOL_SIZE rather than DB_POOL_TIMEOUT, and check for idle-in-transaction connections and slow queries that hold connections")
		}
		if groupOverflow := p.instances() * set.MaxOverflow; groupOverflow > 0 &&
			float64(s.PeakOverflow) > th.OverflowFraction*float64(groupOverflow) {
			warn(RuleOverflowHigh,
				fmt.Sprintf("peak overflow %d of max_overflow %d (%s%%) over the last %s exceeds %s%%%s",
					s.PeakOverflow, groupOverflow, num(100*float64(s.PeakOverflow)/float64(groupOverflow)), win,
					num(pct(th.OverflowFraction)), note),
				"increase DB_POOL_SIZE so that overflow connections, which are opened and closed per use, serve bursts only")
		}
		if n := s.Latest.IdleInTransaction; n != nil && *n > 0 {
			msg := fmt.Sprintf("%d connections are idle in transaction", *n)
			if *n > th.IdleInTransactionAlert {
				msg += fmt.Sprintf(", above the alert level of %d: a transaction leak", th.IdleInTransactionAlert)
			}
			warn(RuleIdleInTransaction, msg,
				"commit or roll back every transaction (use context managers), and set idle_in_transaction_session_timeout so that a leak cannot hold connections forever")
		}
		if q := s.Latest.LongestQuerySeconds; q != nil && *q > th.LongQuery.Seconds() {
			msg := fmt.Sprintf("longest running query has run %s s, over %s s", num(*q), num(th.LongQuery.Seconds()))
			if *q > th.LongQueryAlert.Seconds() {
				msg += fmt.Sprintf("; alert level is %s s", num(th.LongQueryAlert.Seconds()))
			}
			warn(RuleLongQuery, msg,
				"optimize slow queries (EXPLAIN ANALYZE, indexes, no N+1): a slow query holds its connection and drains the pool")
		}
	}
	if in.Server != nil && in.Server.MaxConnections > 0 {
		srv := *in.Server
		budget := srv.PerInstanceBudget(p.instances())
		fix := fmt.Sprintf("keep DB_POOL_SIZE + DB_MAX_OVERFLOW at or below %d per instance (e.g. DB_POOL_SIZE=%d, DB_MAX_OVERFLOW=%d), run fewer instances, raise max_connections, or put PgBouncer in front",
			budget, budget-budget/2, budget/2)
		if c := set.Capacity(); c > budget {
			warn(RuleServerBudget,
				fmt.Sprintf("each instance may open %d connections (pool_size %d + max_overflow %d), more than its share of the server: %s",
					c, set.PoolSize, set.MaxOverflow, budgetText(srv, p.instances())), fix)
		}
		if srv.FleetCapacity > srv.Available() {
			warn(RuleServerBudget,
				fmt.Sprintf("the pools on this server may open %d connections together, more than the %d available (max_connections %d - %d kept back); at peak, logins fail with \"too many clients\"",
					srv.FleetCapacity, srv.Available(), srv.MaxConnections, srv.KeptBack()), fix)
		}
	}
	return h
}

// budgetText explains the per-instance budget arithmetic.
func budgetText(srv Server, poolInstances int) string {
	n := max(srv.TotalInstances, poolInstances, 1)
	return fmt.Sprintf("(max_connections %d - %d kept back for admin) / %d instances = %d per instance",
		srv.MaxConnections, srv.KeptBack(), n, srv.PerInstanceBudget(poolInstances))
}

// OptimizePoolSettings recommends per-instance pool_size and max_overflow, as the seed's
// optimize_pool_settings does. The rules apply in this order, each recorded when it changes
// the numbers:
//
//  1. demand: Little's law when an arrival rate and hold time are known (in flight per instance
//     x 1.5, rounded up: 100/s x 50 ms = 5 -> 8), otherwise the observed peak in use per instance
//     x 1.5. Demand only ever raises pool_size; lowering is shrink_oversized's job.
//  2. scale_up_50pct: average utilization above the threshold, or any checkout timeout, raises
//     pool_size to 1.5 x the current one (the seed's 10/20 -> 15/30).
//  3. observed_peak as a floor: pool_size is never below the peak in use per instance.
//  4. shrink_oversized: when nothing asked for more and, over a full window, the peak stayed below
//     30% of pool_size, pool_size shrinks to the demand, never below the peak nor below 1.
//  5. overflow_2x: max_overflow = 2 x pool_size.
//  6. server_budget: pool_size + max_overflow may not exceed the per-instance budget
//     (max_connections - kept back) / instances on the server. It wins over everything: the
//     budget is split half and half (the seed's 16 -> 8/8), except that pool_size stays at a
//     smaller demand or rises to the observed peak while the budget allows; if even the peak
//     does not fit, a loud recommendation says the fleet needs fewer instances, a bigger
//     max_connections or PgBouncer.
func OptimizePoolSettings(in Input, th Thresholds) Optimization {
	p, s := in.Pool, in.Summary
	set := p.Settings
	inst := p.instances()
	o := Optimization{
		CurrentSettings: CurrentSettings{
			PoolSize:    set.PoolSize,
			MaxOverflow: set.MaxOverflow,
			Timeout:     set.Timeout.Seconds(),
			Recycle:     set.Recycle.Seconds(),
			PrePing:     set.PrePing,
			Echo:        set.Echo,
		},
		Recommendations: []Finding{},
		Instances:       inst,
		Source:          p.Source,
		Exact:           p.Source.Exact(),
		Estimated:       []string{},
	}
	rec := func(rule, msg string) { o.Recommendations = append(o.Recommendations, Finding{rule, msg}) }
	win := human(time.Duration(s.WindowSeconds * float64(time.Second)))
	note := estimateNote(p)
	size, rule := set.PoolSize, RuleKeepCurrent
	peak := 0

	if s.Samples == 0 {
		rule = RuleNoData
		rec(RuleNoData, fmt.Sprintf("no sample in the last %s: DB_POOL_SIZE stays at %d until there is traffic to size it by", win, size))
	} else {
		peakF := float64(s.PeakInUse) / float64(inst)
		peak = ceil(peakF)
		o.PeakInUsePerInstance = peak
		if !o.Exact {
			o.Estimated = append(o.Estimated, "recommended_pool_size", "recommended_max_overflow", "peak_in_use_per_instance")
		}

		var demand int
		var demandRule, demandMsg string
		if s.InFlight != nil {
			perInst := *s.InFlight / float64(inst)
			demand, demandRule = ceil(perInst*(1+th.Buffer)), RuleLittlesLaw
			demandMsg = fmt.Sprintf("Little's law: %s connections in flight per instance", num(perInst))
			if s.ArrivalRate != nil && s.MeanHoldSeconds != nil {
				demandMsg = fmt.Sprintf("Little's law: %s/s x %s ms held = %s connections in flight per instance",
					num(*s.ArrivalRate/float64(inst)), num(*s.MeanHoldSeconds*1000), num(perInst))
			}
			demandMsg += fmt.Sprintf("; +%s%% buffer = %s -> %d", num(pct(th.Buffer)), num(perInst*(1+th.Buffer)), demand)
		} else {
			demand, demandRule = ceil(peakF*(1+th.Buffer)), RuleObservedPeak
			demandMsg = fmt.Sprintf("peak %s in use per instance over the last %s; +%s%% headroom = %d%s",
				num(peakF), win, num(pct(th.Buffer)), demand, note)
		}
		if demand > size {
			rec(demandRule, fmt.Sprintf("%s: raise DB_POOL_SIZE from %d to %d", demandMsg, set.PoolSize, demand))
			size, rule = demand, demandRule
		}

		var why []string
		if s.AvgUtilization > th.AvgUtilization {
			why = append(why, fmt.Sprintf("average utilization %s%% over the last %s exceeds %s%%%s",
				num(pct(s.AvgUtilization)), win, num(pct(th.AvgUtilization)), note))
		}
		if s.Timeouts != nil && *s.Timeouts > 0 {
			why = append(why, fmt.Sprintf("%s checkouts timed out in the last %s", num(*s.Timeouts), win))
		}
		if scaled := ceil(float64(set.PoolSize) * th.ScaleUpFactor); len(why) > 0 && scaled > size {
			rec(RuleScaleUp, fmt.Sprintf("%s: increase DB_POOL_SIZE by %s%%, from %d to %d",
				strings.Join(why, "; "), num(pct(th.ScaleUpFactor-1)), set.PoolSize, scaled))
			size, rule = scaled, RuleScaleUp
		}

		if size < peak {
			rec(RuleObservedPeak, fmt.Sprintf("DB_POOL_SIZE %d is below the peak of %d in use per instance over the last %s: raise it to %d%s",
				size, peak, win, peak, note))
			size, rule = peak, RuleObservedPeak
		}

		if rule == RuleKeepCurrent && s.Full && peakF < th.OversizedFraction*float64(set.PoolSize) {
			target := max(1, peak, demand)
			if target < size {
				rec(RuleShrinkOversized, fmt.Sprintf("peak %s in use per instance over the full %s window is below %s%% of DB_POOL_SIZE=%d: shrink it to %d (never below the peak)%s",
					num(peakF), win, num(pct(th.OversizedFraction)), set.PoolSize, target, note))
				size, rule = target, RuleShrinkOversized
			}
		}
		if rule == RuleKeepCurrent {
			rec(RuleKeepCurrent, fmt.Sprintf("%s: the current DB_POOL_SIZE=%d covers it", demandMsg, set.PoolSize))
		}
	}

	overflow := ceil(float64(size) * th.OverflowFactor)
	if overflow != set.MaxOverflow {
		rec(RuleOverflow2x, fmt.Sprintf("set DB_MAX_OVERFLOW to %s x DB_POOL_SIZE = %d (now %d) to absorb traffic spikes",
			num(th.OverflowFactor), overflow, set.MaxOverflow))
	}

	if in.Server != nil && in.Server.MaxConnections > 0 {
		srv := *in.Server
		budget := srv.PerInstanceBudget(inst)
		o.PerInstanceBudget = &budget
		if size+overflow > budget {
			newSize := min(size, budget-budget/2)
			newSize = max(newSize, min(peak, budget))
			// Never 0: for SQLAlchemy, pool_size=0 means no limit at all.
			newSize = max(newSize, 1)
			newOverflow := max(budget-newSize, 0)
			msg := fmt.Sprintf("%s: cap DB_POOL_SIZE + DB_MAX_OVERFLOW at %d, so DB_POOL_SIZE=%d, DB_MAX_OVERFLOW=%d",
				budgetText(srv, inst), budget, newSize, newOverflow)
			if peak > newSize || budget < 1 {
				msg += fmt.Sprintf(". WARNING: the budget cannot hold the peak of %d in use per instance: this fleet needs fewer instances, a bigger max_connections, or PgBouncer in front", peak)
			}
			rec(RuleServerBudget, msg)
			size, overflow, rule = newSize, newOverflow, RuleServerBudget
		}
	}

	if !set.PrePing {
		rec(RulePrePingDisabled, "set DB_POOL_PRE_PING=true in production: a stale connection then fails the ping instead of the request")
	}
	if set.Echo {
		rec(RuleEchoEnabled, "set DB_ECHO=false in production: logging every statement costs time and writes query data to the logs")
	}

	o.RecommendedPoolSize, o.RecommendedMaxOverflow, o.PoolSizeRule = size, overflow, rule
	return o
}

// EnvLines renders a recommendation as .env lines, ready to paste.
func EnvLines(rec Optimization) string {
	return fmt.Sprintf("DB_POOL_SIZE=%d\nDB_MAX_OVERFLOW=%d\n", rec.RecommendedPoolSize, rec.RecommendedMaxOverflow)
}

func pct(ratio float64) float64 { return ratio * 100 }

// num prints a number with at most two decimals and no trailing zeros.
func num(x float64) string {
	return strconv.FormatFloat(math.Round(x*100)/100, 'f', -1, 64)
}

// human prints a duration without the zero units Duration.String adds ("1h", not "1h0m0s").
func human(d time.Duration) string {
	str := d.String()
	if strings.HasSuffix(str, "m0s") {
		str = str[:len(str)-2]
	}
	if strings.HasSuffix(str, "h0m") {
		str = str[:len(str)-2]
	}
	return str
}
