package advice

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/dbpool/dbpool_exporter/internal/metrics"
)

// Input is what the four answers are computed from.
type Input struct {
	Pool    Pool
	Summary Summary // from the pool's History
	Server  *Server // nil when the server's connection budget is unknown
	// Predictions, if set, remembers the model's predictions across calls.
	Predictions *Predictions
	// Leaks are the connections held past the application's leak threshold at the latest
	// sample; nil where no instance detects leaks.
	Leaks *metrics.LeakStats
}

// Status is check_pool_status. Counts are for the whole pool group (all instances); for a
// single-instance pool they are that pool's own.
type Status struct {
	PoolSize         int `json:"pool_size"` // instances x DB_POOL_SIZE
	CheckedOut       int `json:"checked_out"`
	Overflow         int `json:"overflow"`
	TotalConnections int `json:"total_connections"`
	Instances        int `json:"instances"`

	Source metrics.Source `json:"source"`
	Exact  bool           `json:"exact"`
	// Estimated lists the keys of this object whose values are lower-bound estimates.
	Estimated []string `json:"estimated"`
}

// Health is get_pool_health.
type Health struct {
	UtilizationPct     float64   `json:"utilization_pct"` // latest sample
	AvgUtilizationPct  float64   `json:"avg_utilization_pct"`
	PeakUtilizationPct float64   `json:"peak_utilization_pct"`
	Warnings           []Finding `json:"warnings"`
	Recommendations    []Finding `json:"recommendations"`

	Source    metrics.Source `json:"source"`
	Exact     bool           `json:"exact"`
	Estimated []string       `json:"estimated"`
}

// Connections is get_active_connections. IdleInTransaction and
// LongestQuerySeconds are null when the source cannot observe them.
type Connections struct {
	TotalConnections    int      `json:"total_connections"`
	ActiveCount         int      `json:"active_count"`
	IdleCount           int      `json:"idle_count"`
	IdleInTransaction   *int     `json:"idle_in_transaction"`
	LongestQuerySeconds *float64 `json:"longest_query_seconds"`

	Source    metrics.Source `json:"source"`
	Exact     bool           `json:"exact"`
	Estimated []string       `json:"estimated"`
}

// CurrentSettings are a pool's settings as optimize_pool_settings reports them
// (durations in seconds, like DB_POOL_TIMEOUT and DB_POOL_RECYCLE).
type CurrentSettings struct {
	PoolSize    int     `json:"pool_size"`
	MaxOverflow int     `json:"max_overflow"`
	Timeout     float64 `json:"timeout"`
	Recycle     float64 `json:"recycle"`
	PrePing     bool    `json:"pre_ping"`
	Echo        bool    `json:"echo"`
}

// Optimization is optimize_pool_settings. Sizes are per instance, as in .env.
type Optimization struct {
	CurrentSettings        CurrentSettings `json:"current_settings"`
	RecommendedPoolSize    int             `json:"recommended_pool_size"`
	RecommendedMaxOverflow int             `json:"recommended_max_overflow"`
	Recommendations        []Finding       `json:"recommendations"`

	// PoolSizeRule is the rule that settled recommended_pool_size, MaxOverflowRule the one
	// that settled recommended_max_overflow.
	PoolSizeRule    string `json:"pool_size_rule"`
	MaxOverflowRule string `json:"max_overflow_rule"`
	Instances       int    `json:"instances"`
	// PeakInUsePerInstance is a whole number of connections: the peak of the busiest
	// instance where the source reports each one, otherwise the group's peak divided by the
	// instances and rounded up; PeakInUseBasis says which.
	PeakInUsePerInstance int    `json:"peak_in_use_per_instance"`
	PeakInUseBasis       string `json:"peak_in_use_basis"`
	// PerInstanceBudget is the server's ceiling on pool_size + max_overflow, when known.
	PerInstanceBudget *int `json:"per_instance_budget,omitempty"`
	// Sizing is how the sizes were reached, with the model's predictions.
	Sizing Sizing `json:"sizing"`

	Source    metrics.Source `json:"source"`
	Exact     bool           `json:"exact"`
	Estimated []string       `json:"estimated"`
}

// Report is all four answers for one pool, with the window they were computed over.
type Report struct {
	Pool         string         `json:"pool"`
	Source       metrics.Source `json:"source"`
	Exact        bool           `json:"exact"`
	Window       Summary        `json:"window"`
	Status       Status         `json:"status"`
	Health       Health         `json:"health"`
	Connections  Connections    `json:"active_connections"`
	Optimization Optimization   `json:"optimization"`
}

// Analyze computes all four answers. The fixes of the health warnings name the one
// recommended size and overflow (AlignFixes).
func Analyze(in Input, th Thresholds) Report {
	o := OptimizePoolSettings(in, th)
	h := PoolHealth(in, th)
	h.Recommendations = AlignFixes(h.Recommendations, o)
	return Report{
		Pool:         in.Pool.Name,
		Source:       in.Pool.Source,
		Exact:        in.Pool.Source.Exact(),
		Window:       in.Summary,
		Status:       CheckPoolStatus(in),
		Health:       h,
		Connections:  ActiveConnections(in),
		Optimization: o,
	}
}

// sizingRules are the health rules whose fix is a different size.
var sizingRules = []string{RuleUtilizationHigh, RuleUtilizationPeak, RuleCheckoutSlow, RuleCheckoutTimeouts, RuleOverflowHigh, RuleServerBudget}

// AlignFixes ends the fix of every sizing warning with the one recommendation of o, so
// that no output names a size of its own.
func AlignFixes(fixes []Finding, o Optimization) []Finding {
	out := make([]Finding, 0, len(fixes))
	n := NamesOf(o.Source)
	for _, f := range fixes {
		if slices.Contains(sizingRules, f.Rule) && o.PoolSizeRule != RuleNoData {
			f.Message += fmt.Sprintf("; recommended: %s (by %s, see optimize_pool_settings)",
				n.settings(o.Source, o.RecommendedPoolSize, o.RecommendedMaxOverflow), o.PoolSizeRule)
		}
		out = append(out, f)
	}
	return out
}

// CheckPoolStatus reports the latest sample, as check_pool_status does.
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

// ActiveConnections reports the latest sample, as get_active_connections does.
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

// PoolHealth applies the health thresholds, as get_pool_health does. Utilization,
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
	win := spanText(s)
	note := estimateNote(p)
	n := NamesOf(p.Source)
	dependOn, overflowFix := "overflow connections", "overflow connections, which are opened and closed per use, serve bursts only"
	switch p.Source {
	case metrics.SourcePgBouncer:
		dependOn, overflowFix = "the reserve pool", "the reserve pool (reserve_pool_size) serves bursts only"
	case metrics.SourcePgxpool:
		dependOn = "waiting for a connection"
	}

	if s.Samples == 0 {
		h.Recommendations = append(h.Recommendations, Finding{RuleNoData,
			fmt.Sprintf("no sample of pool %q in the last %s: nothing to judge yet", p.Name, win)})
	} else {
		if s.AvgUtilization > th.AvgUtilization {
			warn(RuleUtilizationHigh,
				fmt.Sprintf("average utilization %s%% over the last %s exceeds %s%%%s",
					num(pct(s.AvgUtilization)), win, num(pct(th.AvgUtilization)), note),
				fmt.Sprintf("raise %s: the connections are busy most of the time, so bursts queue", n.PoolSize))
		}
		if s.PeakUtilization > th.PeakUtilization {
			warn(RuleUtilizationPeak,
				fmt.Sprintf("peak utilization %s%% (%d of %d permanent connections in use) over the last %s exceeds %s%%%s",
					num(pct(s.PeakUtilization)), s.PeakInUse, p.instances()*set.PoolSize, win,
					num(pct(th.PeakUtilization)), note),
				fmt.Sprintf("size %s for the demand plus headroom so that bursts do not depend on %s", n.PoolSize, dependOn))
		}
		if s.AvgCheckoutSeconds != nil && *s.AvgCheckoutSeconds > th.AvgCheckout.Seconds() {
			warn(RuleCheckoutSlow,
				fmt.Sprintf("average checkout time %s ms over the last %s exceeds %s ms",
					num(*s.AvgCheckoutSeconds*1000), win, num(float64(th.AvgCheckout)/float64(time.Millisecond))),
				fmt.Sprintf("requests queue for connections: raise %s, or shorten how long connections are held (slow queries, idle in transaction)", n.PoolSize))
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
				fmt.Sprintf("raise %s rather than %s, and check for idle-in-transaction connections and slow queries that hold connections", n.PoolSize, n.Timeout))
		}
		if groupOverflow := p.instances() * set.MaxOverflow; groupOverflow > 0 &&
			float64(s.PeakOverflow) > th.OverflowFraction*float64(groupOverflow) {
			warn(RuleOverflowHigh,
				fmt.Sprintf("peak overflow %d of max_overflow %d (%s%%) over the last %s exceeds %s%%%s",
					s.PeakOverflow, groupOverflow, num(100*float64(s.PeakOverflow)/float64(groupOverflow)), win,
					num(pct(th.OverflowFraction)), note),
				fmt.Sprintf("raise %s so that %s", n.PoolSize, overflowFix))
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
		if msg, ok := failedCheckouts(s, win); ok {
			warn(RuleCheckoutFailures, msg, failedCheckoutsFix)
		}
		if l := in.Leaks; l != nil && l.Count > 0 {
			warn(RuleConnectionLeak, leakMessage(l, p.instances()), leakFix)
		}
	}
	if in.Server != nil && in.Server.MaxConnections > 0 {
		srv := *in.Server
		budget := srv.PerInstanceBudget(p.instances())
		fix := fmt.Sprintf("keep %s at or below %d per instance, run fewer instances, raise max_connections, or put PgBouncer in front",
			n.capacity(p.Source), budget)
		if c := set.Capacity(); c > budget {
			warn(RuleServerBudget,
				fmt.Sprintf("each instance may open %d connections (pool_size %d + max_overflow %d), more than its share of the server: %s",
					c, set.PoolSize, set.MaxOverflow, budgetText(srv, p.instances())), fix)
		}
		if srv.TotalCapacity > srv.Available() {
			warn(RuleServerBudget,
				fmt.Sprintf("the pools on this server may open %d connections together, more than the %d available (max_connections %d - %d kept back); at peak, logins fail with \"too many clients\"",
					srv.TotalCapacity, srv.Available(), srv.MaxConnections, srv.KeptBack()), fix)
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
