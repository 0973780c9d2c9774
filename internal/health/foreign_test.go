package health

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/dbpool/dbpool_exporter/collector"
	"github.com/dbpool/dbpool_exporter/internal/advice"
	"github.com/dbpool/dbpool_exporter/internal/metrics"
	"github.com/dbpool/dbpool_exporter/poolcfg"
)

// pgbouncerPool is a pool as the pgbouncer source reports it: default_pool_size size,
// reserve_pool_size reserve, server_check_query empty (no pre-ping).
func pgbouncerPool(target, name string, size, reserve, inUse int) metrics.PoolStats {
	pending := 0
	return metrics.PoolStats{
		Target: target, Pool: name, Source: metrics.SourcePgBouncer,
		Configured: true, Instances: 1,
		Settings: poolcfg.Settings{PoolSize: size, MaxOverflow: reserve, Timeout: 120 * time.Second},
		Open:     inUse, InUse: inUse, Overflow: max(0, inUse-size),
		States:  map[string]int{metrics.PgBouncerStateActive: inUse},
		Pending: &pending,
	}
}

// pgxPool is a pool as the pgxpool source reports it (PgxpoolSettings: no overflow).
func pgxPool(target, name string, maxConns, inUse int) metrics.PoolStats {
	pending := 0
	return metrics.PoolStats{
		Target: target, Pool: name, Source: metrics.SourcePgxpool,
		Configured: true, Instances: 1,
		Settings: poolcfg.Settings{PoolSize: maxConns, PrePing: true},
		Open:     inUse, InUse: inUse,
		States:  map[string]int{metrics.StateAcquired: inUse},
		Pending: &pending,
	}
}

// TestForeignSources: PgBouncer and pgxpool pools keep their health warnings, but nothing of
// the advice speaks of DB_* settings, overflow_2x does not apply, there are no .env lines and
// no recommendation metrics; their sizing is in their own settings. An application pool next
// to them keeps all of that.
func TestForeignSources(t *testing.T) {
	c := newClock()
	m := NewManager(Options{Window: 10 * time.Minute, Now: c.now}) // MinHistory 1m
	for range 10 {
		m.Observe(collector.Result{
			Pools: []metrics.PoolStats{
				// 18 of default_pool_size 20 busy: average 90% > 70%, peak 90% not > 90%.
				pgbouncerPool("bouncer", "app/app", 20, 5, 18),
				// All 10 of MaxConns busy on a 15-connection server: kept back 3, so 12 to share.
				pgxPool("db", "svc", 10, 10),
				// On another server, so that it does not share svc's budget.
				activityPool("db2", "api", 10, 20, 1, 9),
			},
			Servers: []collector.ServerStats{{Target: "db", MaxConnections: 15, ReservedConnections: 3}},
		})
		c.add(15 * time.Second)
	}

	tests := []struct {
		target, pool string
		names        SettingNames
		display      string   // the source's name in NoEnvReason
		warnings     []string // rules
		fixes        []string // substrings of the health recommendations
		size         int
		overflow     int
		rule         string
		sizing       string // substring of the sizing recommendation
	}{
		{
			target: "bouncer", pool: "app/app", display: "PgBouncer",
			names:    SettingNames{PoolSize: "pool_size in [databases] (or default_pool_size)", MaxOverflow: "reserve_pool_size", Timeout: "query_wait_timeout"},
			warnings: []string{advice.RuleUtilizationHigh},
			fixes:    []string{"raise pool_size in [databases] (or default_pool_size): the connections are busy", "recommended: pool_size in [databases] (or default_pool_size)=30, reserve_pool_size=5 (by scale_up_50pct"},
			// observed_peak gives 27, the seed's scale-up 30; the reserve pool stays at 5.
			size: 30, overflow: 5, rule: advice.RuleScaleUp,
			sizing: "peak 18 in use per instance (busiest instance) over the last 2m15s; +50% headroom = 27, a lower bound without hold times; average utilization 90% over the last 2m15s exceeds 70%: +50% of the current 20 is 30: set pool_size in [databases] (or default_pool_size) to 30 (now 20)",
		},
		{
			target: "db", pool: "svc", display: "pgxpool",
			names:    SettingNames{PoolSize: "MaxConns", MaxOverflow: "none (pgxpool has no overflow)", Timeout: "the deadline of the Acquire context"},
			warnings: []string{advice.RuleUtilizationHigh, advice.RuleUtilizationPeak},
			fixes:    []string{"raise MaxConns: the connections are busy", "size MaxConns for the demand plus headroom", "recommended: MaxConns=12 (by server_budget"},
			// The demand, 15, is capped at the server's share, 12, all of it for MaxConns:
			// advice's half-and-half split is for SQLAlchemy's overflow.
			size: 12, overflow: 0, rule: advice.RuleServerBudget,
			sizing: "(max_connections 15 - 3 kept back for admin) / 1 instances = 12 per instance: cap MaxConns at 12, so MaxConns=12: set MaxConns to 12 (now 10)",
		},
	}
	for _, tc := range tests {
		t.Run(tc.pool, func(t *testing.T) {
			r, err := m.Find(tc.target, tc.pool)
			if err != nil {
				t.Fatal(err)
			}
			o := r.Optimization
			if o.Env != "" || o.SettingNames != tc.names || !strings.Contains(r.NoEnvReason(), "not a "+tc.display+" pool") {
				t.Errorf("env %q, names %+v, no-env reason %q", o.Env, o.SettingNames, r.NoEnvReason())
			}
			if got := strings.Join(rulesOf(r.Health.Warnings), ","); got != strings.Join(tc.warnings, ",") {
				t.Errorf("warnings %v, want rules %v", r.Health.Warnings, tc.warnings)
			}
			for _, want := range tc.fixes {
				if !strings.Contains(findingText(r.Health.Recommendations), want) {
					t.Errorf("health recommendations lack %q: %v", want, r.Health.Recommendations)
				}
			}
			all := append(append([]advice.Finding{}, r.Health.Recommendations...), o.Recommendations...)
			if text := findingText(all); strings.Contains(text, "DB_") {
				t.Errorf("advice for a %s pool speaks of DB_* settings:\n%s", r.Source, text)
			}
			if rules := rulesOf(o.Recommendations); len(rules) == 0 || rules[0] != tc.rule || strings.Contains(strings.Join(rules, ","), advice.RuleOverflow2x) {
				t.Errorf("sizing rules %v, want %s first and no %s", rules, tc.rule, advice.RuleOverflow2x)
			}
			if o.RecommendedPoolSize != tc.size || o.RecommendedMaxOverflow != tc.overflow || o.PoolSizeRule != tc.rule ||
				!strings.Contains(findingText(o.Recommendations), tc.sizing) {
				t.Errorf("recommended %d/%d by %s, want %d/%d by %s; recommendations %v",
					o.RecommendedPoolSize, o.RecommendedMaxOverflow, o.PoolSizeRule, tc.size, tc.overflow, tc.rule, o.Recommendations)
			}
		})
	}

	bouncer, _ := m.Find("bouncer", "app/app")
	if !hasFinding(bouncer.Optimization.Recommendations, advice.RulePrePingDisabled, "server_check_query") {
		t.Errorf("no server_check_query advice for a PgBouncer without one: %v", bouncer.Optimization.Recommendations)
	}
	api, _ := m.Find("db2", "api")
	if api.Optimization.Env == "" || api.Optimization.SettingNames.PoolSize != "DB_POOL_SIZE" ||
		!hasFinding(api.Optimization.Recommendations, advice.RuleOverflow2x, "DB_MAX_OVERFLOW") || api.NoEnvReason() != "" {
		t.Errorf("the application pool lost its DB_* advice: %+v", api.Optimization)
	}

	// Only the application pool's recommendation is a metric.
	want := `
# HELP dbpool_recommended_size_connections Recommended permanent connections per instance (DB_POOL_SIZE) from the pool's history; the rules behind it are at /api/v1/optimize.
# TYPE dbpool_recommended_size_connections gauge
dbpool_recommended_size_connections{pool="api",target="db2"} 15
`
	if err := testutil.CollectAndCompare(m, strings.NewReader(want), "dbpool_recommended_size_connections"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(m); n != 2 {
		t.Errorf("%d recommendation series, want 2 (size and overflow of api)", n)
	}
}

// TestForeignServerBudgetFix: when a pgxpool pool may open more than its share of the
// server, the fix names MaxConns.
func TestForeignServerBudgetFix(t *testing.T) {
	c := newClock()
	m := NewManager(Options{Window: time.Minute, Now: c.now})
	m.Observe(collector.Result{
		Pools:   []metrics.PoolStats{pgxPool("db", "svc", 50, 1)},
		Servers: []collector.ServerStats{{Target: "db", MaxConnections: 20, ReservedConnections: 3}},
	})
	r, _ := m.Find("db", "svc")
	if !hasFinding(r.Health.Warnings, advice.RuleServerBudget, "may open 50 connections") ||
		!hasFinding(r.Health.Recommendations, advice.RuleServerBudget, "keep MaxConns at or below 16 per instance") {
		t.Errorf("warnings %v, recommendations %v", r.Health.Warnings, r.Health.Recommendations)
	}
	if n := strings.Count(strings.Join(rulesOf(r.Health.Recommendations), ","), advice.RuleServerBudget); n != 1 {
		t.Errorf("the budget's fix is said %d times: %v", n, r.Health.Recommendations)
	}
}

// TestMetricsGoStale: a pool that stops being seen (removed by a reload, or its target down)
// loses its recommendation series after StaleAfter, although its history, and so its report,
// lasts a whole window.
func TestMetricsGoStale(t *testing.T) {
	c := newClock()
	m := NewManager(Options{Window: time.Hour, Now: c.now}) // MinHistory 5m
	for range 30 {
		m.Observe(collector.Result{Pools: []metrics.PoolStats{activityPool("db", "api", 10, 20, 1, 2), activityPool("db", "kept", 10, 20, 1, 2)}})
		c.add(15 * time.Second)
	}
	if n := testutil.CollectAndCount(m); n != 4 {
		t.Fatalf("%d series, want 4 (api and kept)", n)
	}
	// A reload drops api; kept is still sampled every 15 s.
	series := func() int {
		return testutil.CollectAndCount(m)
	}
	var lastWith time.Duration
	for i := range 20 {
		m.Observe(collector.Result{Pools: []metrics.PoolStats{activityPool("db", "kept", 10, 20, 1, 2)}})
		c.add(15 * time.Second)
		if series() == 4 {
			lastWith = time.Duration(i+1) * 15 * time.Second
		}
	}
	// Without a sampler the default is 2 x 1m: api was last seen 15 s before the reload.
	if want := 2*time.Minute - 15*time.Second; lastWith != want {
		t.Errorf("api's series lasted %s after the reload, want %s (StaleAfter %s)", lastWith, want, m.StaleAfter())
	}
	if n := series(); n != 2 {
		t.Errorf("%d series, want 2 (kept only)", n)
	}
	if _, err := m.Find("db", "api"); err != nil {
		t.Errorf("api's report went with its metrics: %v", err)
	}
}

func TestStaleAfter(t *testing.T) {
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name    string
		opt     time.Duration
		sampler time.Duration // 0: no RunSampler
		want    time.Duration
	}{
		{"no sampler: two typical scrape intervals", 0, 0, 2 * time.Minute},
		{"default sampler of 15s: still two scrape intervals", 0, 15 * time.Second, 2 * time.Minute},
		{"slow sampler: two of its intervals", 0, 5 * time.Minute, 10 * time.Minute},
		{"option wins", 30 * time.Second, 5 * time.Minute, 30 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := NewManager(Options{StaleAfter: tc.opt})
			if tc.sampler > 0 {
				// A cancelled context: one scrape, then RunSampler returns.
				m.RunSampler(cancelled, tc.sampler, time.Second, func(context.Context) {})
			}
			if got := m.StaleAfter(); got != tc.want {
				t.Errorf("StaleAfter %s, want %s", got, tc.want)
			}
		})
	}
}

// TestPageForeignSources: the status page offers no .env lines for a PgBouncer pool: what to
// set is in PgBouncer's own settings.
func TestPageForeignSources(t *testing.T) {
	c := newClock()
	m := NewManager(Options{Window: time.Minute, Now: c.now})
	m.Observe(collector.Result{Pools: []metrics.PoolStats{pgbouncerPool("bouncer", "app/app", 20, 5, 18)}})
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/pools", nil))
	body := rec.Body.String()
	if strings.Contains(body, `<pre class="env">`) || strings.Contains(body, "DB_POOL_SIZE=") ||
		!strings.Contains(body, `<code>pool_size in [databases] (or default_pool_size) = <span data-key="optimization.recommended_pool_size"`) ||
		!strings.Contains(body, `<code>reserve_pool_size = <span data-key="optimization.recommended_max_overflow"`) {
		t.Errorf("page for a PgBouncer pool:\n%s", body)
	}
}
