package advice

import (
	"fmt"
	"strings"
	"time"

	"github.com/dbpool/dbpool_exporter/internal/metrics"
)

// OptimizePoolSettings recommends per-instance pool_size and max_overflow, the answer of
// optimize_pool_settings: one size and one overflow, each with the rule that settled it
// (PoolSizeRule, MaxOverflowRule) and the figures behind it (Sizing).
//
// Where the source measures hold times (the application's own report, pgxpool with its
// tracer, PgBouncer), sizeByModel applies: Little's law with the guide's buffer is the floor,
// and the queueing model finds the smallest size at or above it that meets the targets.
// Otherwise (pg_stat_activity) sizeByRules falls back to observed peaks and utilization,
// and says that its figure is a lower bound. Either way a pool shrinks only over a full
// window, and the server's connection budget caps the result.
func OptimizePoolSettings(in Input, th Thresholds) Optimization {
	p, s := in.Pool, in.Summary
	set := p.Settings
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
		Instances:       p.instances(),
		Source:          p.Source,
		Exact:           p.Source.Exact(),
		Estimated:       []string{},
		Sizing:          Sizing{Curve: []Prediction{}, Targets: targetsOf(th)},
	}
	if s.Samples > 0 {
		o.PeakInUsePerInstance, o.PeakInUseBasis = peakPerInstance(p, s)
	}
	if load, ok := loadOf(p, s); ok && s.Samples > 0 {
		sizeByModel(&o, in, th, load)
	} else {
		sizeByRules(&o, in, th)
	}
	switch {
	case !set.PrePing && p.Source == metrics.SourcePgBouncer:
		o.Recommendations = append(o.Recommendations, Finding{RulePrePingDisabled, "server_check_query is empty, so PgBouncer hands out server connections without checking them: set it (PgBouncer's default is select 1)"})
	case !set.PrePing:
		o.Recommendations = append(o.Recommendations, Finding{RulePrePingDisabled, "set DB_POOL_PRE_PING=true in production: a stale connection then fails the ping instead of the request"})
	}
	if set.Echo && AppSource(p.Source) {
		o.Recommendations = append(o.Recommendations, Finding{RuleEchoEnabled, "set DB_ECHO=false in production: logging every statement costs time and writes query data to the logs"})
	}
	return o
}

// Bases of PeakInUsePerInstance.
const (
	PeakBusiestInstance = "busiest instance"
	PeakRoundedUp       = "group peak / instances, rounded up"
)

// peakPerInstance is the peak in use of one instance as a whole number: the busiest
// instance's where the source reports each, else the group's peak per instance rounded up.
func peakPerInstance(p Pool, s Summary) (int, string) {
	if s.PeakInUseBusiest != nil {
		return *s.PeakInUseBusiest, PeakBusiestInstance
	}
	return ceil(float64(s.PeakInUse) / float64(p.instances())), PeakRoundedUp
}

// overflowRule is the rule behind the overflow of a source's pool before any budget.
func overflowRule(src metrics.Source) string {
	switch src {
	case metrics.SourcePgxpool:
		return RuleNoOverflow
	case metrics.SourcePgBouncer:
		return RuleOverflowKept
	}
	return RuleOverflow2x
}

// sizeByModel sizes a pool whose hold times are known (see OptimizePoolSettings).
func sizeByModel(o *Optimization, in Input, th Thresholds, load Load) {
	p, s := in.Pool, in.Summary
	set := p.Settings
	inst := p.instances()
	n := NamesOf(p.Source)
	rec := func(rule, msg string) { o.Recommendations = append(o.Recommendations, Finding{rule, msg}) }
	z := &sizer{load: load, targets: targetsOf(th), source: p.Source, current: set.MaxOverflow,
		factor: th.OverflowFactor, memo: map[int]Prediction{}, cache: in.Predictions}
	if in.Server != nil && in.Server.MaxConnections > 0 {
		b := in.Server.PerInstanceBudget(inst)
		o.PerInstanceBudget, z.budget = &b, &b
	}
	demand := load.Demand()
	floor := max(1, ceil(demand*(1+th.Buffer)))
	hi := 4*floor + 16
	if z.budget != nil {
		hi = max(*z.budget, 1)
	}
	cur := in.Predictions.predict(load, set.PoolSize, set.MaxOverflow)
	cur.MeetsTargets = z.targets.meets(cur)
	need, found := z.smallest(min(floor, hi), hi)

	sz := &o.Sizing
	sz.Model, sz.ArrivalRate, sz.Demand, sz.Buffer, sz.Floor = ModelQueueing, load.Rate, demand, th.Buffer, floor
	sz.Hold, sz.MeanCreateSeconds, sz.TimeoutSeconds = &load.Hold, load.CreateSeconds, load.TimeoutSeconds
	sz.LoadFrom, sz.LoadTo, sz.BusiestSpanSeconds = s.LoadFrom, s.LoadTo, s.BusiestSpanSeconds
	sz.HoldDistribution = HoldExponential
	if len(load.Hold.Buckets) > 0 {
		sz.HoldDistribution = HoldFromHistogram
	}
	sz.Note = fmt.Sprintf("Little's law and a queueing model of %s simulated checkouts per size (Poisson arrivals, hold times drawn from the %s, overflow connections paying the connect time, callers giving up after %s); figures per instance",
		num(SimCheckouts), map[string]string{HoldFromHistogram: "measured histogram", HoldExponential: "an exponential distribution with the measured mean"}[sz.HoldDistribution], n.Timeout)

	win, window := spanText(s), human(time.Duration(s.WindowSeconds*float64(time.Second)))
	demandMsg := fmt.Sprintf("Little's law over %s: %s checkouts/s x %s ms held = %s connections in use per instance; +%s%% buffer = %s -> %d",
		loadSpanText(s), num(load.Rate), num(load.Hold.MeanSeconds*1000), num(demand), num(pct(th.Buffer)), num(demand*(1+th.Buffer)), floor)
	now := fmt.Sprintf("now at %s: %s", sizeText(p.Source, set.PoolSize, set.MaxOverflow), predictionText(cur))

	// A pool that meets the targets and falls short of the buffered demand by no more than
	// KeepTolerance is kept: 9 for a floor of 9.15 -> 10 would flip with every small change
	// of the load.
	nearFloor := float64(set.PoolSize) >= demand*(1+th.Buffer)*(1-th.KeepTolerance)
	size, rule, msg := set.PoolSize, RuleKeepCurrent, ""
	switch {
	case !found:
		size, rule = hi, RuleServerBudget
		msg = fmt.Sprintf("%s; even %s=%d, all of %s, does not meet the targets. WARNING: this pool group needs fewer instances, a bigger max_connections, or PgBouncer in front; %s",
			demandMsg, n.PoolSize, hi, budgetText(*in.Server, inst), now)
	case !cur.MeetsTargets || (need > set.PoolSize && !nearFloor):
		size, rule = need, RuleLittlesLaw
		msg = demandMsg
		if need > floor {
			rule = RuleQueueing
			msg += fmt.Sprintf("; the queueing model needs %d to meet the targets", need)
		}
		msg += fmt.Sprintf(": set %s to %d (%s)", n.PoolSize, need, now)
	case need < set.PoolSize && s.Full && cur.Utilization < th.OversizedFraction:
		size, rule = need, RuleShrinkOversized
		msg = fmt.Sprintf("%s; over the full %s window the current %s=%d is %s%% utilized, below %s%%: shrink it to %d, the smallest size that meets the targets (%s)",
			demandMsg, win, n.PoolSize, set.PoolSize, num(pct(cur.Utilization)), num(pct(th.OversizedFraction)), need, now)
	default:
		msg = fmt.Sprintf("%s: the current %s=%d meets the targets (%s)", demandMsg, n.PoolSize, set.PoolSize, now)
		if need > set.PoolSize {
			msg += fmt.Sprintf(" and is within %s%% of the buffered demand %s, so it is kept rather than changed for a small change of the load",
				num(pct(th.KeepTolerance)), num(demand*(1+th.Buffer)))
		}
		if need < set.PoolSize {
			if !s.Full {
				msg += fmt.Sprintf("; %d would do, but %s of history is short of the %s window, and a short history never shrinks a pool", need, historyText(s), window)
			} else {
				msg += fmt.Sprintf("; %d would do, but at %s%% utilized it is not oversized (below %s%%)", need, num(pct(cur.Utilization)), num(pct(th.OversizedFraction)))
			}
		}
	}
	if z.budget != nil && size > hi {
		size, rule = hi, RuleServerBudget
		msg += fmt.Sprintf("; but %s: %s=%d", budgetText(*in.Server, inst), n.PoolSize, hi)
	}
	overflow, oRule := z.overflowFor(size), overflowRule(p.Source)
	if uncapped := (&sizer{source: p.Source, current: set.MaxOverflow, factor: th.OverflowFactor}).overflowFor(size); overflow < uncapped {
		oRule = RuleServerBudget
		rec(RuleServerBudget, fmt.Sprintf("%s: cap %s at %d, so %s=%d with %s=%d",
			budgetText(*in.Server, inst), n.capacity(p.Source), *z.budget, n.MaxOverflow, overflow, n.PoolSize, size))
	}
	after := z.predict(size)
	if size != set.PoolSize || overflow != set.MaxOverflow {
		msg += fmt.Sprintf(". Predicted at %s: %s", sizeText(p.Source, size, overflow), predictionText(after))
	}
	o.Recommendations = append([]Finding{{rule, msg}}, o.Recommendations...)
	if oRule == RuleOverflow2x && overflow != set.MaxOverflow {
		rec(RuleOverflow2x, fmt.Sprintf("set %s to %s x %s = %d (now %d) to absorb traffic spikes",
			n.MaxOverflow, num(th.OverflowFactor), n.PoolSize, overflow, set.MaxOverflow))
	}
	sz.Current, sz.Recommended = &cur, &after
	sz.Curve = z.curve(set.PoolSize, size)
	o.RecommendedPoolSize, o.RecommendedMaxOverflow, o.PoolSizeRule, o.MaxOverflowRule = size, overflow, rule, oRule
}

// sizeText is "size + overflow", or the size alone where the pool has no overflow.
func sizeText(src metrics.Source, size, overflow int) string {
	if !hasOverflow(src) {
		return itoa(size)
	}
	return itoa(size) + " + " + itoa(overflow)
}

// AppSource reports whether a source watches the application's own pool, the one that the
// DB_* settings configure.
func AppSource(src metrics.Source) bool {
	return src == metrics.SourceActivity || src == metrics.SourceApp || src == ""
}

// spanText is the time the "over the last ..." of a message covers: the window when the
// history fills it, else the history's own span.
func spanText(s Summary) string {
	if s.Full || s.Samples < 2 {
		return human(time.Duration(s.WindowSeconds * float64(time.Second)))
	}
	return human(s.To.Sub(s.From).Round(time.Second))
}

// loadSpanText says which span the offered load was taken from: "the busiest 5m of the 1h
// window, 14:05:00-14:10:00 UTC", or "the last 30s" when it is the whole window.
func loadSpanText(s Summary) string {
	if s.BusiestSpanSeconds == 0 {
		return "the last " + spanText(s)
	}
	return fmt.Sprintf("the busiest %s of the %s window, %s-%s UTC", human(durationOf(s.BusiestSpanSeconds)), human(durationOf(s.WindowSeconds)),
		s.LoadFrom.UTC().Format(time.TimeOnly), s.LoadTo.UTC().Format(time.TimeOnly))
}

func durationOf(x float64) time.Duration { return time.Duration(x * float64(time.Second)) }

// historyText says how much history a summary holds.
func historyText(s Summary) string {
	if s.Samples == 0 {
		return "no sample"
	}
	return human(s.To.Sub(s.From).Round(time.Second))
}

// sizeByRules sizes a pool without hold times from observed peaks and utilization, today's
// rules:
//
//  1. demand: the observed peak in use per instance x 1.5 (observed_peak). Demand only ever
//     raises pool_size; lowering is shrink_oversized's job.
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
//
// Its figure is a lower bound: the peak of a saturated pool is its capacity.
func sizeByRules(o *Optimization, in Input, th Thresholds) {
	p, s := in.Pool, in.Summary
	set := p.Settings
	inst := p.instances()
	n := NamesOf(p.Source)
	win, window := spanText(s), human(time.Duration(s.WindowSeconds*float64(time.Second)))
	note := estimateNote(p)
	size, rule := set.PoolSize, RuleKeepCurrent
	peak := o.PeakInUsePerInstance
	o.Sizing.Model, o.Sizing.LowerBound = ModelRules, true
	without := "without hold times"
	o.Sizing.Note = "no hold times from this source"
	if h := s.Hold; h != nil && h.Count > 0 && h.Count < MinHolds {
		// The source measures them, but the window holds too few for the model to size by.
		without = "without enough hold times"
		o.Sizing.Note = fmt.Sprintf("only %s checkouts held and returned in the last %s, fewer than the %d the model needs", num(h.Count), win, MinHolds)
	}
	o.Sizing.Note += ": sized from the observed peak in use and utilization, a lower bound (the peak of a saturated pool is its capacity, so the demand may be higher); no prediction"
	// steps are the figures that led to size; the one sizing finding says them and the size.
	var steps []string

	if s.Samples == 0 {
		rule = RuleNoData
		steps = append(steps, fmt.Sprintf("no sample in the last %s: nothing to size it by until there is traffic", win))
	} else {
		if !o.Exact {
			o.Estimated = append(o.Estimated, "recommended_pool_size", "recommended_max_overflow", "peak_in_use_per_instance")
		}
		demand := ceil(float64(peak) * (1 + th.Buffer))
		steps = append(steps, fmt.Sprintf("peak %d in use per instance (%s) over the last %s; +%s%% headroom = %d, a lower bound %s%s",
			peak, o.PeakInUseBasis, win, num(pct(th.Buffer)), demand, without, note))
		if demand > size {
			size, rule = demand, RuleObservedPeak
		}

		var why []string
		if s.AvgUtilization > th.AvgUtilization {
			why = append(why, fmt.Sprintf("average utilization %s%% over the last %s exceeds %s%%%s",
				num(pct(s.AvgUtilization)), win, num(pct(th.AvgUtilization)), note))
		}
		if s.Timeouts != nil && *s.Timeouts > 0 {
			why = append(why, fmt.Sprintf("%s checkouts timed out in the last %s", num(*s.Timeouts), win))
		}
		if len(why) > 0 {
			scaled := ceil(float64(set.PoolSize) * th.ScaleUpFactor)
			steps = append(steps, fmt.Sprintf("%s: +%s%% of the current %d is %d", strings.Join(why, "; "), num(pct(th.ScaleUpFactor-1)), set.PoolSize, scaled))
			if scaled > size {
				size, rule = scaled, RuleScaleUp
			}
		}
		if size < peak {
			steps = append(steps, fmt.Sprintf("never below the peak of %d in use per instance%s", peak, note))
			size, rule = peak, RuleObservedPeak
		}
		if rule == RuleKeepCurrent && float64(peak) < th.OversizedFraction*float64(set.PoolSize) {
			target := max(1, peak, demand)
			switch {
			case target < size && s.Full:
				steps = append(steps, fmt.Sprintf("the peak stayed below %s%% of %s=%d over the full %s window: oversized (never below the peak)%s",
					num(pct(th.OversizedFraction)), n.PoolSize, set.PoolSize, win, note))
				size, rule = target, RuleShrinkOversized
			case target < size:
				steps = append(steps, fmt.Sprintf("%d might do, but %s of history is short of the %s window, and a short history never shrinks a pool", target, historyText(s), window))
			}
		}
	}

	overflow, oRule := (&sizer{source: p.Source, current: set.MaxOverflow, factor: th.OverflowFactor}).overflowFor(size), overflowRule(p.Source)
	var budgetMsg string
	if in.Server != nil && in.Server.MaxConnections > 0 {
		srv := *in.Server
		budget := srv.PerInstanceBudget(inst)
		o.PerInstanceBudget = &budget
		if size+overflow > budget {
			newSize := min(size, budget-budget/2)
			if oRule != RuleOverflow2x {
				// The overflow is not ours to split (PgBouncer's reserve) or absent (pgxpool).
				newSize = budget - overflow
			}
			newSize = max(newSize, min(peak, budget))
			// Never 0: for SQLAlchemy, pool_size=0 means no limit at all.
			newSize = max(newSize, 1)
			if oRule == RuleOverflow2x {
				overflow, oRule = max(budget-newSize, 0), RuleServerBudget
			}
			budgetMsg = fmt.Sprintf("%s: cap %s at %d, so %s", budgetText(srv, inst), n.capacity(p.Source), budget, n.settings(p.Source, newSize, overflow))
			if peak > newSize || budget < 1 {
				budgetMsg += fmt.Sprintf(". WARNING: the budget cannot hold the peak of %d in use per instance: this pool group needs fewer instances, a bigger max_connections, or PgBouncer in front", peak)
			}
			size, rule = newSize, RuleServerBudget
		}
	}

	action := fmt.Sprintf("set %s to %d (now %d)", n.PoolSize, size, set.PoolSize)
	if size == set.PoolSize {
		action = fmt.Sprintf("keep %s at %d", n.PoolSize, size)
	}
	if budgetMsg != "" {
		steps = append(steps, budgetMsg)
	}
	o.Recommendations = append(o.Recommendations, Finding{rule, strings.Join(steps, "; ") + ": " + action})
	if oRule == RuleOverflow2x && overflow != set.MaxOverflow {
		o.Recommendations = append(o.Recommendations, Finding{RuleOverflow2x, fmt.Sprintf("set %s to %s x %s = %d (now %d) to absorb traffic spikes",
			n.MaxOverflow, num(th.OverflowFactor), n.PoolSize, overflow, set.MaxOverflow)})
	}
	o.RecommendedPoolSize, o.RecommendedMaxOverflow, o.PoolSizeRule, o.MaxOverflowRule = size, overflow, rule, oRule
}

// EnvLines renders a recommendation as .env lines, ready to paste.
func EnvLines(rec Optimization) string {
	return fmt.Sprintf("DB_POOL_SIZE=%d\nDB_MAX_OVERFLOW=%d\n", rec.RecommendedPoolSize, rec.RecommendedMaxOverflow)
}
