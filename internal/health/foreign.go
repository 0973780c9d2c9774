package health

import (
	"fmt"
	"math"
	"strconv"

	"github.com/dbpool/dbpool_exporter/internal/advice"
	"github.com/dbpool/dbpool_exporter/internal/metrics"
)

// Pools that are not the application's own (sources pgbouncer and pgxpool) keep advice's
// warnings, but its fixes and sizing speak of DB_POOL_SIZE and DB_MAX_OVERFLOW, which do not
// configure them, and its overflow_2x rule is SQLAlchemy's habit, not theirs. This file
// words the fixes in the pool's own settings and sizes only what the pool has: its maximum
// size. The overflow (PgBouncer's reserve pool) is left as it is.

// foreignFixes rewrites the fixes of advice's health rules that name a DB_* setting.
func (m *Manager) foreignFixes(s *snapshot, fs []advice.Finding) []advice.Finding {
	n := settingNames(s.pool.Source)
	set := s.pool.Settings
	overflow := n.MaxOverflow
	if s.pool.Source == metrics.SourcePgBouncer {
		overflow = "the reserve pool (reserve_pool_size)"
	}
	capacity := n.PoolSize + " + " + n.MaxOverflow
	if s.pool.Source == metrics.SourcePgxpool {
		capacity = n.PoolSize
	}
	out := make([]advice.Finding, 0, len(fs))
	for _, f := range fs {
		switch f.Rule {
		case advice.RuleUtilizationHigh:
			f.Message = fmt.Sprintf("raise %s by %s%% (%d -> %d)", n.PoolSize, fmtPct(m.th.ScaleUpFactor-1),
				set.PoolSize, ceilInt(float64(set.PoolSize)*m.th.ScaleUpFactor))
		case advice.RuleUtilizationPeak:
			f.Message = fmt.Sprintf("size %s for the peak plus %s%% headroom", n.PoolSize, fmtPct(m.th.Buffer))
		case advice.RuleCheckoutSlow:
			f.Message = fmt.Sprintf("clients queue for connections: raise %s, or shorten how long connections are held (slow queries, idle in transaction)", n.PoolSize)
		case advice.RuleCheckoutTimeouts:
			f.Message = fmt.Sprintf("raise %s rather than %s, and check for idle-in-transaction connections and slow queries that hold connections", n.PoolSize, n.Timeout)
		case advice.RuleOverflowHigh:
			f.Message = fmt.Sprintf("raise %s so that %s serves bursts only", n.PoolSize, overflow)
		case advice.RuleServerBudget:
			if s.server != nil {
				f.Message = fmt.Sprintf("keep %s at or below %d per instance, run fewer instances, raise max_connections, or put PgBouncer in front",
					capacity, s.server.PerInstanceBudget(s.pool.Instances))
			}
		}
		out = append(out, f)
	}
	return out
}

// foreignSizing recommends the pool's maximum size by advice's demand rules (littles_law,
// observed_peak, scale_up_50pct, shrink_oversized, keep_current) and, where the server is
// known, caps size + overflow at the per-instance budget. The overflow stays as configured:
// overflow_2x does not apply. The one recommendation says it in the pool's own settings.
func (m *Manager) foreignSizing(s *snapshot, in advice.Input) advice.Optimization {
	n := settingNames(s.pool.Source)
	set := s.pool.Settings
	in.Server = nil // advice's budget step splits it for SQLAlchemy's overflow; done below
	o := advice.OptimizePoolSettings(in, m.th)
	size, rule := o.RecommendedPoolSize, o.PoolSizeRule
	why := map[string]string{
		advice.RuleLittlesLaw:      fmt.Sprintf("Little's law (arrival rate x time held) +%s%% buffer", fmtPct(m.th.Buffer)),
		advice.RuleObservedPeak:    fmt.Sprintf("the peak in use +%s%% headroom, and never below the peak", fmtPct(m.th.Buffer)),
		advice.RuleScaleUp:         fmt.Sprintf("average utilization above %s%% or checkout timeouts: +%s%%", fmtPct(m.th.AvgUtilization), fmtPct(m.th.ScaleUpFactor-1)),
		advice.RuleShrinkOversized: fmt.Sprintf("the peak stayed below %s%% of it over a full window", fmtPct(m.th.OversizedFraction)),
	}[rule]
	o.PerInstanceBudget = nil
	if s.server != nil {
		budget := s.server.PerInstanceBudget(s.pool.Instances)
		o.PerInstanceBudget = &budget
		if size+set.MaxOverflow > budget {
			size, rule = max(budget-set.MaxOverflow, 1), advice.RuleServerBudget
			why = fmt.Sprintf("its share of the server is %d connections per instance", budget)
			if o.PeakInUsePerInstance > size {
				why += fmt.Sprintf(", below the peak of %d in use: this needs fewer instances, a bigger max_connections, or PgBouncer in front", o.PeakInUsePerInstance)
			}
		}
	}
	var msg string
	switch {
	case rule == advice.RuleNoData:
		msg = fmt.Sprintf("no sample in the window: %s stays at %d until there is traffic to size it by", n.PoolSize, set.PoolSize)
	case size == set.PoolSize:
		msg = fmt.Sprintf("keep %s at %d: it covers the peak of %d in use per instance", n.PoolSize, size, o.PeakInUsePerInstance)
	default:
		msg = fmt.Sprintf("set %s to %d (now %d; peak %d in use per instance): %s", n.PoolSize, size, set.PoolSize, o.PeakInUsePerInstance, why)
	}
	if s.pool.Source != metrics.SourcePgxpool {
		msg += fmt.Sprintf("; keep %s at %d", n.MaxOverflow, set.MaxOverflow)
	}
	o.Recommendations = []advice.Finding{{Rule: rule, Message: msg}}
	if s.pool.Source == metrics.SourcePgBouncer && !set.PrePing {
		o.Recommendations = append(o.Recommendations, advice.Finding{Rule: advice.RulePrePingDisabled,
			Message: "server_check_query is empty, so PgBouncer hands out server connections without checking them: set it (PgBouncer's default is select 1)"})
	}
	o.RecommendedPoolSize, o.RecommendedMaxOverflow, o.PoolSizeRule = size, set.MaxOverflow, rule
	return o
}

// ceilInt rounds up, forgiving floating point noise (10 x 1.5 must stay 15).
func ceilInt(x float64) int { return int(math.Ceil(x - 1e-9)) }

// fmtPct prints a ratio as a percentage without trailing zeros: 0.5 -> "50".
func fmtPct(ratio float64) string {
	return strconv.FormatFloat(math.Round(ratio*10000)/100, 'f', -1, 64)
}
