package health

import (
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/dbpool/dbpool_exporter/internal/advice"
	"github.com/dbpool/dbpool_exporter/internal/metrics"
)

// State sums a pool up in one word, for the status page and the CLI's exit code.
type State string

// The states, worst last.
const (
	// StateUnknown: no sample in the window.
	StateUnknown State = "unknown"
	// StateOK: no warning.
	StateOK State = "ok"
	// StateWarning: at least one health rule fired.
	StateWarning State = "warning"
	// StateSaturated: the pool is at its limit: checkouts timed out in the window, a caller
	// has waited long for a connection, or callers waited (or every connection of the
	// capacity was in use) in each of the last few samples (Manager.state).
	StateSaturated State = "saturated"
)

// RuleUnconfigured names the note on pools that matched no configured pool.
const RuleUnconfigured = "unconfigured_pool"

// Report is the four answers for one pool, as the JSON API serves them. Status, Health,
// Connections and Optimization carry the keys of the four questions (check_pool_status,
// get_pool_health, get_active_connections, optimize_pool_settings) plus, in each, the
// source and whether its numbers are exact or which of them are estimated.
type Report struct {
	Target string         `json:"target"`
	Pool   string         `json:"pool"`
	Source metrics.Source `json:"source"`
	Exact  bool           `json:"exact"`
	// Configured is false for backends that matched no configured pool (pool "application_name:<name>"):
	// their DB_* settings, capacity and server budget are unknown.
	Configured   bool     `json:"configured"`
	State        State    `json:"state"`
	StateReasons []string `json:"state_reasons"`
	// PressureSince is the time of the first point of the newest run of the history's points
	// (window.series) under load: callers waiting, checkouts timed out or slower than the
	// checkout target, every connection of the capacity in use, or more in use than the
	// utilization target of pool_size. Null when the newest point is not under load (a warning
	// about something else, such as idle in transaction). It equals the first point's time
	// when the load lasted the whole window.
	PressureSince *time.Time `json:"pressure_since"`
	LastSeen      time.Time  `json:"last_seen"`
	// Stale is set when the pool has not been seen for Manager.StaleAfter: its source
	// stopped answering (a target down, an app endpoint gone, a pool removed by a reload) and
	// the figures are from before. Its recommendation metrics are gone by then.
	Stale bool `json:"stale"`

	Window       advice.Summary     `json:"window"`
	Status       Status             `json:"status"`
	Health       Health             `json:"health"`
	Connections  advice.Connections `json:"active_connections"`
	Optimization Optimization       `json:"optimization"`
}

// Status is check_pool_status plus the group's limits and waiters.
type Status struct {
	advice.Status
	MaxOverflow int  `json:"max_overflow"` // instances x DB_MAX_OVERFLOW
	Capacity    *int `json:"capacity"`     // instances x (DB_POOL_SIZE + DB_MAX_OVERFLOW); null when unknown
	Pending     *int `json:"pending"`      // callers waiting now; null when the source cannot see them
}

// Health is get_pool_health. utilization_pct is in use
// over the permanent connections (instances x pool_size): above 100 when overflow
// connections are in use, and what the sizing rules judge. capacity_utilization_pct is in use
// over the whole capacity (instances x (pool_size + max_overflow)): exactly
// dbpool_utilization_ratio x 100, which the alert compares with 80.
type Health struct {
	advice.Health
	CapacityUtilizationPct *float64 `json:"capacity_utilization_pct"`
	// Leaks are the connections held now past the application's leak detection threshold
	// and where they were checked out (the connection_leak warning); null where no instance
	// of the pool detects leaks.
	Leaks *metrics.LeakStats `json:"leaks"`
}

// Optimization is optimize_pool_settings plus the .env lines.
type Optimization struct {
	advice.Optimization
	// SettingNames say which settings current_settings and the recommended sizes stand for:
	// the application's DB_* for the activity source, the pool's own settings otherwise.
	SettingNames SettingNames `json:"setting_names"`
	// Env holds DB_POOL_SIZE= and DB_MAX_OVERFLOW= lines ready to paste into .env; empty for
	// a pool whose settings are unknown and for pools that are not the application's own
	// (sources pgbouncer and pgxpool), which DB_* do not configure.
	Env string `json:"env"`
}

// SettingNames name a pool's size, overflow and checkout timeout settings in its source's
// own terms (advice.NamesOf).
type SettingNames = advice.SettingNames

// AppPool reports whether a source watches the application's own pool, the one that the
// DB_* settings, the .env lines and the dbpool_recommended_* metrics are about.
func AppPool(src metrics.Source) bool {
	return src == metrics.SourceActivity || src == metrics.SourceApp
}

// NoEnvReason says in one line why the report has no .env lines; empty when it has them.
func (r *Report) NoEnvReason() string {
	switch {
	case r.Optimization.Env != "":
		return ""
	case !r.Configured:
		return "this pool matched no configured pool, so its DB_* settings are unknown"
	}
	name := map[metrics.Source]string{metrics.SourcePgBouncer: "PgBouncer"}[r.Source]
	if name == "" {
		name = string(r.Source)
	}
	return fmt.Sprintf("DB_* configure an application's own pool, not a %s pool: its sizing is in %s's own settings above", name, name)
}

// HasHistory reports whether the pool's history spans at least min: enough to publish its
// recommendation as a metric.
func (r *Report) HasHistory(min time.Duration) bool {
	return r.Window.Samples >= 2 && r.Window.To.Sub(r.Window.From) >= min
}

func (m *Manager) analyze(s *snapshot, now time.Time) Report {
	in := advice.Input{Pool: s.pool, Summary: s.hist.Summary(now, s.pool), Server: s.server, Predictions: &m.predictions, Leaks: s.leaks}
	a := advice.Analyze(in, m.th)
	r := Report{
		Target:       s.key.target,
		Pool:         s.key.pool,
		Source:       a.Source,
		Exact:        a.Exact,
		Configured:   s.configured,
		LastSeen:     s.lastSeen,
		Window:       a.Window,
		Status:       Status{Status: a.Status, Pending: a.Window.Latest.Pending},
		Health:       Health{Health: a.Health, Leaks: cloneLeaks(s.leaks)},
		Connections:  a.Connections,
		Optimization: Optimization{Optimization: a.Optimization},
		StateReasons: []string{},
	}
	h := &r.Health
	r.Optimization.SettingNames = advice.NamesOf(a.Source)
	// Two server_budget warnings (per instance, all pools on the server) come with the same fix: say it once.
	h.Recommendations = dedupe(h.Recommendations)
	h.UtilizationPct = round2(h.UtilizationPct)
	h.AvgUtilizationPct = round2(h.AvgUtilizationPct)
	h.PeakUtilizationPct = round2(h.PeakUtilizationPct)
	inst := max(s.pool.Instances, 1)
	if s.configured {
		r.Status.MaxOverflow = inst * s.pool.Settings.MaxOverflow
		if s.capacity > 0 {
			r.Status.Capacity = ptr(s.capacity)
			h.CapacityUtilizationPct = ptr(round2(100 * float64(a.Window.Latest.InUse) / float64(s.capacity)))
		}
		if AppPool(a.Source) {
			r.Optimization.Env = advice.EnvLines(a.Optimization)
		}
	} else {
		// The sizing rules compare with the current settings, which are unknown here (zero):
		// their messages would be about a pool_size of 0. Say what can be said instead.
		o := &r.Optimization
		msg := "these backends matched no configured pool, so the application's DB_* settings are unknown"
		if o.RecommendedPoolSize > 0 {
			msg += fmt.Sprintf("; from what was observed alone (peak %d in use) DB_POOL_SIZE=%d and DB_MAX_OVERFLOW=%d would do",
				a.Window.PeakInUse, o.RecommendedPoolSize, o.RecommendedMaxOverflow)
		}
		msg += ": add the pool to the configuration (--config.file or --pool.*) for advice that weighs its settings"
		o.Recommendations = []advice.Finding{{Rule: RuleUnconfigured, Message: msg}}
		o.PoolSizeRule = RuleUnconfigured
	}
	r.State, r.StateReasons = m.state(&r)
	r.PressureSince = pressureSince(r.Window.Series, m.th)
	r.Stale = now.Sub(s.lastSeen) > m.StaleAfter()
	return r
}

// pressureSince is Report.PressureSince of a series. One point without load inside a run
// does not end it (a load near a threshold flickers across it); two in a row do.
func pressureSince(series []advice.Point, th advice.Thresholds) *time.Time {
	loaded := func(p advice.Point) bool {
		return (p.Pending != nil && *p.Pending > 0) || (p.Timeouts != nil && *p.Timeouts > 0) ||
			(p.CheckoutSeconds != nil && *p.CheckoutSeconds > th.AvgCheckout.Seconds()) ||
			(p.Capacity > 0 && p.InUse >= p.Capacity) ||
			(p.PoolSize > 0 && float64(p.InUse) > th.AvgUtilization*float64(p.PoolSize))
	}
	var since *time.Time
	for i := len(series) - 1; i >= 0; i-- {
		if !loaded(series[i]) {
			if since != nil && i > 0 && loaded(series[i-1]) {
				continue
			}
			break
		}
		t := series[i].Time
		since = &t
	}
	return since
}

// state classifies a report; the reasons say why in words. Saturation must last: a checkout
// caught in flight (a pre-ping, a connect) is no queue, so waiting callers count when one
// has waited at least Thresholds.SaturatedWait, or, where the source cannot tell how long,
// when callers waited in each of the last Thresholds.SaturatedSamples samples; likewise all
// connections of the capacity in use. Timeouts in the window count at once: the pool ran out.
func (m *Manager) state(r *Report) (State, []string) {
	w := r.Window
	if w.Samples == 0 {
		return StateUnknown, []string{"no sample in the window"}
	}
	n := m.th.SaturatedSamples
	recent := w.Recent
	lasting := func(ok func(advice.Recent) bool) bool {
		if len(recent) < n {
			return false
		}
		for _, s := range recent[len(recent)-n:] {
			if !ok(s) {
				return false
			}
		}
		return true
	}
	var reasons []string
	if c := r.Status.Capacity; c != nil && lasting(func(s advice.Recent) bool { return s.InUse >= *c }) {
		reasons = append(reasons, fmt.Sprintf("all %d connections of the pool's capacity were in use in each of the last %d samples", *c, n))
	}
	switch l := w.Latest; {
	case l.LongestWaitSeconds != nil:
		if *l.LongestWaitSeconds >= m.th.SaturatedWait.Seconds() {
			reasons = append(reasons, fmt.Sprintf("a caller has waited %s ms for a connection (saturated from %s ms)",
				fmtNum(*l.LongestWaitSeconds*1000), fmtNum(float64(m.th.SaturatedWait)/float64(time.Millisecond))))
		}
	case lasting(func(s advice.Recent) bool { return s.Pending != nil && *s.Pending > 0 }):
		reasons = append(reasons, fmt.Sprintf("callers waited for a connection in each of the last %d samples (%d now)", n, *l.Pending))
	}
	if t := w.Timeouts; t != nil && *t > 0 {
		reasons = append(reasons, fmt.Sprintf("%s checkouts timed out in the window", fmtNum(*t)))
	}
	if len(reasons) > 0 {
		return StateSaturated, reasons
	}
	if len(r.Health.Warnings) > 0 {
		for _, f := range r.Health.Warnings {
			if !slices.Contains(reasons, f.Rule) {
				reasons = append(reasons, f.Rule)
			}
		}
		return StateWarning, reasons
	}
	return StateOK, []string{}
}

// dedupe drops findings equal to an earlier one, keeping the order.
func dedupe(fs []advice.Finding) []advice.Finding {
	out := make([]advice.Finding, 0, len(fs))
	for _, f := range fs {
		if !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	return out
}

func round2(x float64) float64 { return math.Round(x*100) / 100 }

func fmtNum(x float64) string { return fmt.Sprint(round2(x)) }
