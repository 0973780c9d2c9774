package advice

import (
	"fmt"
	"strings"
	"time"
)

// OptimizePoolSettings recommends per-instance pool_size and max_overflow, the answer of
// optimize_pool_settings. The rules apply in this order, each recorded when it changes
// the numbers:
//
//  1. demand: Little's law when an arrival rate and hold time are known (in flight per instance
//     x 1.5, rounded up: 100/s x 50 ms = 5 -> 8), otherwise the observed peak in use per instance
//     x 1.5. Demand only ever raises pool_size; lowering is shrink_oversized's job.
//  2. scale_up_50pct: average utilization above the threshold, or any checkout timeout, raises
//     pool_size to 1.5 x the current one (10/20 -> 15/30).
//  3. observed_peak as a floor: pool_size is never below the peak in use per instance.
//  4. shrink_oversized: when nothing asked for more and, over a full window, the peak stayed below
//     30% of pool_size, pool_size shrinks to the demand, never below the peak nor below 1.
//  5. overflow_2x: max_overflow = 2 x pool_size.
//  6. server_budget: pool_size + max_overflow may not exceed the per-instance budget
//     (max_connections - kept back) / instances on the server. It wins over everything: the
//     budget is split half and half (16 -> 8/8), except that pool_size stays at a
//     smaller demand or rises to the observed peak while the budget allows; if even the peak
//     does not fit, a loud recommendation says the pool group needs fewer instances, a bigger
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
				msg += fmt.Sprintf(". WARNING: the budget cannot hold the peak of %d in use per instance: this pool group needs fewer instances, a bigger max_connections, or PgBouncer in front", peak)
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
