package advice

import (
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dbpool/dbpool_exporter/internal/metrics"
)

// series makes one sample every step seconds from 0 to to (inclusive).
func series(to, step float64, f func(i int) Sample) []Sample {
	var out []Sample
	for i := 0; float64(i)*step <= to; i++ {
		s := f(i)
		s.Time = at(float64(i) * step)
		out = append(out, s)
	}
	return out
}

// summarize runs samples through a one-hour History and summarises at the last sample.
func summarize(p Pool, samples []Sample) Summary {
	h := NewHistory(time.Hour, time.Second)
	now := t0
	for _, s := range samples {
		h.Add(s)
		now = s.Time
	}
	return h.Summary(now, p)
}

func withSource(p Pool, s metrics.Source) Pool { p.Source = s; return p }

func rules(fs []Finding) []string {
	out := []string{}
	for _, f := range fs {
		out = append(out, f.Rule)
	}
	return out
}

func messages(fs []Finding) string {
	var b strings.Builder
	for _, f := range fs {
		b.WriteString(f.Rule + ": " + f.Message + "\n")
	}
	return b.String()
}

// Scenarios shared by the optimization and health tests.
var (
	// The seed's "start conservative" 5/10 pool serving 100 requests/s that hold a connection
	// 50 ms each (only the mean known: exponential holds).
	littlePool    = withSource(pool(5, 10, 1), metrics.SourceApp)
	littleSamples = series(600, 15, func(int) Sample {
		return Sample{InUse: 3, Open: 5, ArrivalRate: new(100.0), MeanHoldSeconds: new(0.05)}
	})

	// The seed's "High Pool Utilization": 10/20 consistently above 80%.
	busyPool    = pool(10, 20, 1)
	busySamples = series(600, 15, func(i int) Sample { return Sample{InUse: 8 + i%2, Open: 10} })

	// The seed's "Too Many Database Connections": 5 instances of the default 10/20 pool on a
	// server with max_connections 100 (PostgreSQL's default 3 superuser-reserved slots).
	groupPool    = pool(10, 20, 5)
	groupSamples = series(600, 15, func(int) Sample { return Sample{InUse: 15, Open: 50} })
	seedServer   = &Server{MaxConnections: 100, ReservedConnections: 3}

	// Undersized: 5/10 serving up to 12 at once, with waits and timeouts.
	smallPool    = pool(5, 10, 1)
	smallSamples = series(600, 15, func(i int) Sample {
		inUse := 5 + i%8 // 5..12
		return Sample{InUse: inUse, Open: max(inUse, 5), Overflow: max(inUse-5, 0), Active: inUse,
			Pending:              new(i % 4),
			CheckoutsTotal:       new(float64(100 * i)),
			CheckoutSecondsTotal: new(float64(100*i) * 0.04), // 40 ms each
			TimeoutsTotal:        new(float64(i / 10)),
		}
	})

	// Oversized: 20/40 never using more than 3, for over an hour.
	bigPool    = pool(20, 40, 1)
	bigSamples = series(3700, 15, func(i int) Sample { return Sample{InUse: i % 4, Open: 20} })

	// A pool group of 4 instances of 10/20 among 10 instances in all on a 100-connection server.
	crowdServer = &Server{MaxConnections: 100, ReservedConnections: 3, TotalInstances: 10, TotalCapacity: 300}
)

func TestOptimizePoolSettings(t *testing.T) {
	tests := []struct {
		name         string
		in           Input
		wantSize     int
		wantOverflow int
		wantRule     string
		wantRules    []string
		wantText     []string // substrings of the recommendations
		wantBudget   int      // 0: no budget reported
		estimated    bool
	}{
		{
			name:         "seed: Little's law 100 req/s x 50 ms = 5, +50% = 7.5 -> 8",
			in:           Input{Pool: littlePool, Summary: summarize(littlePool, littleSamples)},
			wantSize:     8,
			wantOverflow: 16,
			wantRule:     RuleLittlesLaw,
			wantRules:    []string{RuleLittlesLaw, RuleOverflow2x},
			wantText:     []string{"100 checkouts/s x 50 ms held = 5 connections in use per instance; +50% buffer = 7.5 -> 8: set DB_POOL_SIZE to 8", "Predicted at 8 + 16: average checkout 0 ms"},
		},
		{
			name:         "the same load behind PgBouncer: its reserve pool stays as configured",
			in:           Input{Pool: withSource(littlePool, metrics.SourcePgBouncer), Summary: summarize(littlePool, littleSamples)},
			wantSize:     8,
			wantOverflow: 10,
			wantRule:     RuleLittlesLaw,
			wantRules:    []string{RuleLittlesLaw},
			wantText:     []string{"Predicted at 8 + 10"},
		},
		{
			name:         "seed: 10/20 above 80% utilization -> 15/30",
			in:           Input{Pool: busyPool, Summary: summarize(busyPool, busySamples)},
			wantSize:     15,
			wantOverflow: 30,
			wantRule:     RuleScaleUp,
			wantRules:    []string{RuleScaleUp, RuleOverflow2x},
			wantText:     []string{"average utilization 84.", "+50% of the current 10 is 15: set DB_POOL_SIZE to 15 (now 10)", "= 30 (now 20)"},
		},
		{
			name:         "seed: 5 instances, max_connections 100, 20 for admin -> 16 per instance -> 8/8",
			in:           Input{Pool: groupPool, Summary: summarize(groupPool, groupSamples), Server: seedServer},
			wantSize:     8,
			wantOverflow: 8,
			wantRule:     RuleServerBudget,
			wantRules:    []string{RuleServerBudget},
			wantText:     []string{"(max_connections 100 - 20 kept back for admin) / 5 instances = 16 per instance", "DB_POOL_SIZE=8, DB_MAX_OVERFLOW=8"},
			wantBudget:   16,
		},
		{
			name: "seed: the same budget with no sample yet and explicit headroom",
			in: Input{Pool: groupPool, Server: &Server{MaxConnections: 100, AdminHeadroom: 20, TotalInstances: 5},
				Summary: summarize(groupPool, nil)},
			wantSize:     8,
			wantOverflow: 8,
			wantRule:     RuleServerBudget,
			wantRules:    []string{RuleServerBudget},
			wantBudget:   16,
		},
		{
			name:         "no sample and no server: keep the settings, overflow to 2x",
			in:           Input{Pool: pool(10, 5, 1)},
			wantSize:     10,
			wantOverflow: 20,
			wantRule:     RuleNoData,
			wantRules:    []string{RuleNoData, RuleOverflow2x},
		},
		{
			name:         "undersized: peak 12 of a 5-connection pool -> 18/36",
			in:           Input{Pool: smallPool, Summary: summarize(smallPool, smallSamples)},
			wantSize:     18,
			wantOverflow: 36,
			wantRule:     RuleObservedPeak,
			wantRules:    []string{RuleObservedPeak, RuleOverflow2x},
			wantText:     []string{"peak 12 in use per instance (group peak / instances, rounded up) over the last 10m; +50% headroom = 18, a lower bound"},
		},
		{
			name:         "oversized over a full window: shrink to peak 3 +50% -> 5/10",
			in:           Input{Pool: bigPool, Summary: summarize(bigPool, bigSamples)},
			wantSize:     5,
			wantOverflow: 10,
			wantRule:     RuleShrinkOversized,
			wantRules:    []string{RuleShrinkOversized, RuleOverflow2x},
			wantText:     []string{"the peak stayed below 30% of DB_POOL_SIZE=20 over the full 1h window: oversized (never below the peak): set DB_POOL_SIZE to 5 (now 20)"},
		},
		{
			name:         "oversized but the window is not full yet: keep",
			in:           Input{Pool: bigPool, Summary: summarize(bigPool, bigSamples[:100])},
			wantSize:     20,
			wantOverflow: 40,
			wantRule:     RuleKeepCurrent,
			wantRules:    []string{RuleKeepCurrent},
			wantText:     []string{"5 might do, but 24m45s of history is short of the 1h window, and a short history never shrinks a pool"},
		},
		{
			name: "oversized seen from pg_stat_activity: shrink, and say it is a lower bound",
			in: Input{Pool: withSource(bigPool, metrics.SourceActivity),
				Summary: summarize(withSource(bigPool, metrics.SourceActivity), bigSamples)},
			wantSize:     5,
			wantOverflow: 10,
			wantRule:     RuleShrinkOversized,
			wantRules:    []string{RuleShrinkOversized, RuleOverflow2x},
			wantText:     []string{"estimate from pg_stat_activity: a lower bound"},
			estimated:    true,
		},
		{
			name: "an unused pool shrinks to 1, never 0",
			in: Input{Pool: bigPool, Summary: summarize(bigPool, series(3700, 15, func(int) Sample {
				return Sample{Open: 20, Idle: 20}
			}))},
			wantSize:     1,
			wantOverflow: 2,
			wantRule:     RuleShrinkOversized,
			wantRules:    []string{RuleShrinkOversized, RuleOverflow2x},
		},
		{
			name: "a momentary peak does not override the model: overflow connections serve it",
			in: Input{Pool: littlePool, Summary: summarize(littlePool, series(600, 15, func(i int) Sample {
				s := Sample{InUse: 2, ArrivalRate: new(100.0), MeanHoldSeconds: new(0.05)}
				if i == 7 {
					s.InUse = 10
				}
				return s
			}))},
			wantSize:     8,
			wantOverflow: 16,
			wantRule:     RuleLittlesLaw,
			wantRules:    []string{RuleLittlesLaw, RuleOverflow2x},
		},
		{
			name: "pools over max_connections, the peak fits the budget: keep the peak as pool_size",
			in: Input{Pool: pool(10, 20, 4), Server: crowdServer,
				Summary: summarize(pool(10, 20, 4), series(600, 15, func(int) Sample { return Sample{InUse: 24} }))},
			wantSize:     6,
			wantOverflow: 2,
			wantRule:     RuleServerBudget,
			wantRules:    []string{RuleServerBudget},
			wantText:     []string{"/ 10 instances = 8 per instance"},
			wantBudget:   8,
		},
		{
			name: "pools over max_connections, the peak does not fit: warn loudly",
			in: Input{Pool: pool(10, 20, 4), Server: crowdServer,
				Summary: summarize(pool(10, 20, 4), series(600, 15, func(int) Sample { return Sample{InUse: 48} }))},
			wantSize:     8,
			wantOverflow: 0,
			wantRule:     RuleServerBudget,
			wantRules:    []string{RuleServerBudget},
			wantText:     []string{"WARNING: the budget cannot hold the peak of 12", "fewer instances, a bigger max_connections, or PgBouncer"},
			wantBudget:   8,
		},
		{
			name: "a server too small for the pool group still gets pool_size 1",
			in: Input{Pool: pool(10, 20, 10), Server: &Server{MaxConnections: 10, ReservedConnections: 3},
				Summary: summarize(pool(10, 20, 10), nil)},
			wantSize:     1,
			wantOverflow: 0,
			wantRule:     RuleServerBudget,
			wantRules:    []string{RuleServerBudget},
			wantText:     []string{"WARNING"},
		},
		{
			name: "pre_ping off and echo on",
			in: func() Input {
				p := pool(10, 20, 1)
				p.Settings.PrePing, p.Settings.Echo = false, true
				return Input{Pool: p, Summary: summarize(p, series(600, 15, func(int) Sample { return Sample{InUse: 4} }))}
			}(),
			wantSize:     10,
			wantOverflow: 20,
			wantRule:     RuleKeepCurrent,
			wantRules:    []string{RuleKeepCurrent, RulePrePingDisabled, RuleEchoEnabled},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := OptimizePoolSettings(tt.in, DefaultThresholds())
			if got.RecommendedPoolSize != tt.wantSize || got.RecommendedMaxOverflow != tt.wantOverflow || got.PoolSizeRule != tt.wantRule {
				t.Errorf("got %d/%d by %s, want %d/%d by %s\n%s", got.RecommendedPoolSize, got.RecommendedMaxOverflow,
					got.PoolSizeRule, tt.wantSize, tt.wantOverflow, tt.wantRule, messages(got.Recommendations))
			}
			if !slices.Equal(rules(got.Recommendations), tt.wantRules) {
				t.Errorf("rules = %v, want %v\n%s", rules(got.Recommendations), tt.wantRules, messages(got.Recommendations))
			}
			text := messages(got.Recommendations)
			for _, w := range tt.wantText {
				if !strings.Contains(text, w) {
					t.Errorf("recommendations lack %q:\n%s", w, text)
				}
			}
			switch {
			case tt.wantBudget == 0 && got.PerInstanceBudget != nil && tt.in.Server == nil:
				t.Errorf("budget = %d without a server", *got.PerInstanceBudget)
			case tt.wantBudget != 0 && (got.PerInstanceBudget == nil || *got.PerInstanceBudget != tt.wantBudget):
				t.Errorf("budget = %v, want %d", got.PerInstanceBudget, tt.wantBudget)
			}
			if est := len(got.Estimated) > 0; est != tt.estimated || got.Exact == tt.estimated {
				t.Errorf("estimated = %v, exact = %v, want estimated %v", got.Estimated, got.Exact, tt.estimated)
			}
		})
	}
}

func TestEnvLines(t *testing.T) {
	got := EnvLines(OptimizePoolSettings(Input{Pool: groupPool, Server: seedServer}, DefaultThresholds()))
	if want := "DB_POOL_SIZE=8\nDB_MAX_OVERFLOW=8\n"; got != want {
		t.Errorf("EnvLines = %q, want %q", got, want)
	}
}

func TestServerBudget(t *testing.T) {
	tests := []struct {
		name          string
		srv           Server
		poolInstances int
		keptBack      int
		available     int
		perInstance   int
	}{
		{"seed: 100 with 3 reserved keeps back 20% = 20", Server{MaxConnections: 100, ReservedConnections: 3}, 5, 20, 80, 16},
		{"reserved above the headroom wins", Server{MaxConnections: 100, ReservedConnections: 30}, 5, 30, 70, 14},
		{"explicit headroom", Server{MaxConnections: 100, ReservedConnections: 3, AdminHeadroom: 10}, 5, 10, 90, 18},
		{"no headroom keeps back the reserved only", Server{MaxConnections: 100, ReservedConnections: 3, AdminHeadroom: NoAdminHeadroom}, 5, 3, 97, 19},
		{"20% is rounded up", Server{MaxConnections: 101}, 1, 21, 80, 80},
		{"all pools' instances share the budget", Server{MaxConnections: 100, TotalInstances: 8}, 5, 20, 80, 10},
		{"a total below the pool's own instances is ignored", Server{MaxConnections: 100, TotalInstances: 2}, 5, 20, 80, 16},
		{"more kept back than exists", Server{MaxConnections: 10, ReservedConnections: 20}, 1, 20, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if k, a, b := tt.srv.KeptBack(), tt.srv.Available(), tt.srv.PerInstanceBudget(tt.poolInstances); k != tt.keptBack || a != tt.available || b != tt.perInstance {
				t.Errorf("kept back %d, available %d, per instance %d; want %d, %d, %d", k, a, b, tt.keptBack, tt.available, tt.perInstance)
			}
		})
	}
}

func TestPoolHealth(t *testing.T) {
	activity := withSource(pool(10, 20, 1), metrics.SourceActivity)
	latest := func(s Sample) []Sample { s.Time = t0; return []Sample{s} }
	tests := []struct {
		name      string
		in        Input
		warnings  []string
		recs      []string
		wantText  []string
		avoidText []string
		utilPct   float64
	}{
		{
			name:     "healthy",
			in:       Input{Pool: busyPool, Summary: summarize(busyPool, series(600, 15, func(int) Sample { return Sample{InUse: 5} }))},
			warnings: []string{},
			recs:     []string{},
			utilPct:  50,
		},
		{
			name: "undersized: utilization, waits, timeouts and overflow",
			in:   Input{Pool: smallPool, Summary: summarize(smallPool, smallSamples)},
			warnings: []string{RuleUtilizationHigh, RuleUtilizationPeak, RuleCheckoutSlow,
				RuleCheckoutTimeouts, RuleOverflowHigh},
			recs: []string{RuleUtilizationHigh, RuleUtilizationPeak, RuleCheckoutSlow,
				RuleCheckoutTimeouts, RuleOverflowHigh},
			wantText: []string{"peak utilization 240% (12 of 5", "average checkout time 40 ms", "4 checkouts timed out",
				"raise DB_POOL_SIZE rather than DB_POOL_TIMEOUT", "peak overflow 7 of max_overflow 10 (70%)"},
			avoidText: []string{"alert level"}, // 4 in 10 minutes is below 1 per minute
			utilPct:   100,                     // the latest sample (i=40) has 5 + 40%8 = 5 in use of 5
		},
		{
			name:     "idle in transaction leak above the alert level",
			in:       Input{Pool: activity, Summary: summarize(activity, latest(Sample{InUse: 8, Open: 10, IdleInTransaction: new(7)}))},
			warnings: []string{RuleUtilizationHigh, RuleIdleInTransaction},
			recs:     []string{RuleUtilizationHigh, RuleIdleInTransaction},
			wantText: []string{"7 connections are idle in transaction, above the alert level of 5: a transaction leak",
				"idle_in_transaction_session_timeout", "a lower bound"},
			utilPct: 80,
		},
		{
			name:      "a few idle in transaction: a warning, not yet the alert level",
			in:        Input{Pool: activity, Summary: summarize(activity, latest(Sample{InUse: 2, IdleInTransaction: new(2)}))},
			warnings:  []string{RuleIdleInTransaction},
			recs:      []string{RuleIdleInTransaction},
			avoidText: []string{"alert level"},
			utilPct:   20,
		},
		{
			name:     "long query",
			in:       Input{Pool: activity, Summary: summarize(activity, latest(Sample{InUse: 1, LongestQuerySeconds: new(45.0)}))},
			warnings: []string{RuleLongQuery},
			recs:     []string{RuleLongQuery},
			wantText: []string{"has run 45 s, over 5 s; alert level is 30 s"},
			utilPct:  10,
		},
		{
			name: "pools over max_connections",
			in: Input{Pool: pool(10, 20, 4), Server: crowdServer,
				Summary: summarize(pool(10, 20, 4), series(600, 15, func(int) Sample { return Sample{InUse: 8} }))},
			warnings: []string{RuleServerBudget, RuleServerBudget},
			recs:     []string{RuleServerBudget, RuleServerBudget},
			wantText: []string{"each instance may open 30 connections", "may open 300 connections together, more than the 80 available",
				"keep DB_POOL_SIZE + DB_MAX_OVERFLOW at or below 8 per instance"},
			utilPct: 20,
		},
		{
			name:     "no data",
			in:       Input{Pool: busyPool},
			warnings: []string{},
			recs:     []string{RuleNoData},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := PoolHealth(tt.in, DefaultThresholds())
			if !slices.Equal(rules(got.Warnings), tt.warnings) || !slices.Equal(rules(got.Recommendations), tt.recs) {
				t.Errorf("warnings %v, recommendations %v; want %v, %v\n%s%s", rules(got.Warnings), rules(got.Recommendations),
					tt.warnings, tt.recs, messages(got.Warnings), messages(got.Recommendations))
			}
			text := messages(got.Warnings) + messages(got.Recommendations)
			for _, w := range tt.wantText {
				if !strings.Contains(text, w) {
					t.Errorf("findings lack %q:\n%s", w, text)
				}
			}
			for _, w := range tt.avoidText {
				if strings.Contains(text, w) {
					t.Errorf("findings contain %q:\n%s", w, text)
				}
			}
			if !approx(got.UtilizationPct, tt.utilPct) {
				t.Errorf("utilization_pct = %v, want %v", got.UtilizationPct, tt.utilPct)
			}
			if est := len(got.Estimated) > 0; est != !tt.in.Pool.Source.Exact() {
				t.Errorf("estimated = %v for source %s", got.Estimated, tt.in.Pool.Source)
			}
		})
	}
}

// TestReportJSON pins the seed's keys and the shape of a finding.
func TestReportJSON(t *testing.T) {
	p := withSource(pool(10, 20, 1), metrics.SourcePgxpool)
	in := Input{Pool: p, Summary: summarize(p, series(60, 15, func(int) Sample {
		return Sample{InUse: 9, Open: 10, Active: 9, Idle: 1}
	}))}
	raw, err := json.Marshal(Analyze(in, DefaultThresholds()))
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	obj := func(v any) map[string]any { m, _ := v.(map[string]any); return m }
	hasKeys := func(where string, m map[string]any, keys ...string) {
		t.Helper()
		for _, k := range keys {
			if _, ok := m[k]; !ok {
				t.Errorf("%s lacks key %q: %v", where, k, slices.Sorted(maps.Keys(m)))
			}
		}
	}
	hasKeys("report", doc, "pool", "source", "exact", "window", "status", "health", "active_connections", "optimization")
	hasKeys("status", obj(doc["status"]), "pool_size", "checked_out", "overflow", "total_connections", "source", "exact", "estimated")
	hasKeys("health", obj(doc["health"]), "utilization_pct", "warnings", "recommendations", "source", "exact", "estimated")
	hasKeys("active_connections", obj(doc["active_connections"]), "total_connections", "active_count", "idle_count",
		"idle_in_transaction", "longest_query_seconds", "source", "exact")
	opt := obj(doc["optimization"])
	hasKeys("optimization", opt, "current_settings", "recommended_pool_size", "recommended_max_overflow", "recommendations", "source", "exact")
	cur := obj(opt["current_settings"])
	hasKeys("current_settings", cur, "pool_size", "max_overflow", "timeout", "recycle", "pre_ping", "echo")
	if cur["timeout"] != 30.0 || cur["recycle"] != 3600.0 || cur["pre_ping"] != true {
		t.Errorf("current_settings = %v, want timeout 30, recycle 3600, pre_ping true", cur)
	}
	// pgxpool cannot see transactions: null, not a made-up zero.
	if ac := obj(doc["active_connections"]); ac["idle_in_transaction"] != nil || ac["longest_query_seconds"] != nil {
		t.Errorf("unobservable values not null: %v", ac)
	}
	warnings, _ := obj(doc["health"])["warnings"].([]any)
	if len(warnings) == 0 {
		t.Fatalf("no warning at 90%% average utilization: %s", raw)
	}
	if keys := slices.Sorted(maps.Keys(obj(warnings[0]))); !slices.Equal(keys, []string{"message", "rule"}) {
		t.Errorf("finding keys = %v, want [message rule]", keys)
	}
	if obj(warnings[0])["rule"] != RuleUtilizationHigh {
		t.Errorf("first warning = %v, want rule %s", warnings[0], RuleUtilizationHigh)
	}
}

func TestStatusAndConnections(t *testing.T) {
	p := withSource(pool(10, 20, 3), metrics.SourceActivity)
	in := Input{Pool: p, Summary: summarize(p, []Sample{{Time: t0, Open: 33, InUse: 12, Overflow: 3, Active: 9, Idle: 21,
		IdleInTransaction: new(3), LongestQuerySeconds: new(1.5)}})}
	st := CheckPoolStatus(in)
	if st.PoolSize != 30 || st.CheckedOut != 12 || st.Overflow != 3 || st.TotalConnections != 33 || st.Instances != 3 ||
		st.Exact || !slices.Equal(st.Estimated, []string{"checked_out", "overflow"}) {
		t.Errorf("status = %+v", st)
	}
	c := ActiveConnections(in)
	if c.TotalConnections != 33 || c.ActiveCount != 9 || c.IdleCount != 21 || c.IdleInTransaction == nil ||
		*c.IdleInTransaction != 3 || c.LongestQuerySeconds == nil || *c.LongestQuerySeconds != 1.5 || len(c.Estimated) != 0 {
		t.Errorf("connections = %+v", c)
	}
}
