package health

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/dbpool/dbpool_exporter/collector"
	"github.com/dbpool/dbpool_exporter/internal/advice"
	"github.com/dbpool/dbpool_exporter/internal/metrics"
	"github.com/dbpool/dbpool_exporter/poolcfg"
	"github.com/dbpool/dbpool_exporter/tools/testbin"
)

// clock is a manual clock for Manager.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func settings(size, overflow int) poolcfg.Settings {
	s := poolcfg.DefaultSettings()
	s.PoolSize, s.MaxOverflow = size, overflow
	return s
}

// activityPool is a configured pool as the activity source reports it.
func activityPool(target, name string, size, overflow, instances, inUse int) metrics.PoolStats {
	return metrics.PoolStats{
		Target: target, Pool: name, Source: metrics.SourceActivity,
		Configured: true, Settings: settings(size, overflow), Instances: instances,
		Open: inUse + 1, InUse: inUse, Overflow: max(0, inUse+1-instances*size),
		States:   map[string]int{metrics.StateActive: inUse, metrics.StateIdle: 1},
		Sessions: &metrics.SessionStats{LongestQuerySeconds: 0.5},
	}
}

func TestSampleFromStats(t *testing.T) {
	at := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	timeouts := uint64(3)
	pending := 2
	tests := []struct {
		name string
		in   metrics.PoolStats
		want advice.Sample
	}{
		{
			name: "activity: session states, idle in transaction (aborted too) and longest query",
			in: metrics.PoolStats{Source: metrics.SourceActivity, Open: 9, InUse: 6, Overflow: 1,
				States: map[string]int{metrics.StateActive: 3, metrics.StateIdle: 3,
					metrics.StateIdleInTransaction: 2, metrics.StateIdleInTransactionAborted: 1},
				Sessions: &metrics.SessionStats{LongestQuerySeconds: 7.5}},
			want: advice.Sample{Time: at, Open: 9, InUse: 6, Overflow: 1, Active: 3, Idle: 3,
				IdleInTransaction: new(3), LongestQuerySeconds: new(7.5)},
		},
		{
			name: "pgbouncer: waiting clients and checkout counters, no session states",
			in: metrics.PoolStats{Source: metrics.SourcePgBouncer, Open: 7, InUse: 4, Overflow: 2,
				States: map[string]int{metrics.PgBouncerStateActive: 4, metrics.PgBouncerStateIdle: 1,
					metrics.PgBouncerStateUsed: 1, metrics.PgBouncerStateTested: 0, metrics.PgBouncerStateLogin: 1},
				Pending:   &pending,
				Checkouts: &metrics.CheckoutStats{Count: 100, DurationSeconds: 2.5}},
			want: advice.Sample{Time: at, Open: 7, InUse: 4, Overflow: 2, Active: 4, Idle: 2,
				Pending: new(2), CheckoutsTotal: new(100.0), CheckoutSecondsTotal: new(2.5), BusiestInUse: new(4)},
		},
		{
			name: "pgxpool: acquired and idle, timeouts",
			in: metrics.PoolStats{Source: metrics.SourcePgxpool, Open: 3, InUse: 2,
				States:    map[string]int{metrics.StateAcquired: 2, metrics.StateIdle: 1},
				Pending:   &pending,
				Checkouts: &metrics.CheckoutStats{Count: 50, DurationSeconds: 1, Timeouts: &timeouts}},
			want: advice.Sample{Time: at, Open: 3, InUse: 2, Active: 2, Idle: 1,
				Pending: new(2), CheckoutsTotal: new(50.0), CheckoutSecondsTotal: new(1.0), TimeoutsTotal: new(3.0), BusiestInUse: new(2)},
		},
		{
			name: "app: hold and connect times, failures by reason, the oldest wait, the busiest process",
			in: metrics.PoolStats{Source: metrics.SourceApp, Instances: 2, Open: 5, InUse: 3, Pending: &pending, LongestWaitSeconds: new(0.25),
				States: map[string]int{metrics.StateCheckedOut: 3, metrics.StateCheckedIn: 2},
				Checkouts: &metrics.CheckoutStats{Count: 50, DurationSeconds: 1, Timeouts: &timeouts,
					Failures: map[string]uint64{metrics.FailureTimeout: 3, metrics.FailureConnect: 1}},
				UseTime:    &metrics.DurationStats{Count: 46, SumSeconds: 6.9, Buckets: map[float64]uint64{0.1: 0, 0.25: 46}},
				CreateTime: &metrics.DurationStats{Count: 4, SumSeconds: 0.02},
				Processes:  []metrics.ProcessStats{{Process: "a", InUse: 1}, {Process: "b", InUse: 2}}},
			want: advice.Sample{Time: at, Open: 5, InUse: 3, Active: 3, Idle: 2,
				Pending: new(2), CheckoutsTotal: new(50.0), CheckoutSecondsTotal: new(1.0), TimeoutsTotal: new(3.0),
				FailuresTotal:      map[string]float64{metrics.FailureTimeout: 3, metrics.FailureConnect: 1},
				Hold:               &advice.Histogram{Count: 46, Sum: 6.9, Buckets: []advice.Bucket{{LE: 0.1}, {LE: 0.25, Count: 46}, {LE: math.Inf(1), Count: 46}}},
				Create:             &advice.Histogram{Count: 4, Sum: 0.02},
				LongestWaitSeconds: new(0.25), BusiestInUse: new(2)},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := SampleFromStats(&tc.in, at)
			if !reflect.DeepEqual(got, tc.want) {
				a, _ := json.Marshal(got)
				b, _ := json.Marshal(tc.want)
				t.Errorf("got  %s\nwant %s", a, b)
			}
		})
	}
}

func TestHistoryBoundedWhateverTheScrapeRate(t *testing.T) {
	c := newClock()
	m := NewManager(Options{Window: time.Hour, Now: c.now})
	// Two hours of scrapes every 50 ms: 144,000 observations.
	for range 144_000 {
		m.Observe(collector.Result{Pools: []metrics.PoolStats{activityPool("db", "api", 10, 20, 1, 3)}})
		c.add(50 * time.Millisecond)
	}
	st := m.pools[key{"db", "api"}]
	if n, limit := st.hist.Len(), historyPoints+1; n > limit {
		t.Errorf("history holds %d points, want at most %d", n, limit)
	}
	rep, err := m.Find("", "api")
	if err != nil {
		t.Fatal(err)
	}
	if rep.Window.Samples < 71_000 || !rep.Window.Full {
		t.Errorf("window: %d samples, full %v; want the last hour's ~72000, full", rep.Window.Samples, rep.Window.Full)
	}
}

func TestPoolsBoundedAndForgotten(t *testing.T) {
	c := newClock()
	m := NewManager(Options{Window: time.Minute, MaxPools: 10, Now: c.now})
	configured := activityPool("db", "api", 5, 5, 1, 1)
	// A client inventing application names: three new ones per scrape.
	for i := range 100 {
		pools := []metrics.PoolStats{configured}
		for j := range 3 {
			pools = append(pools, metrics.PoolStats{Target: "db", Pool: fmt.Sprintf("application_name:x%d", 3*i+j), Source: metrics.SourceActivity, Open: 1})
		}
		m.Observe(collector.Result{Pools: pools})
		c.add(time.Second)
		if len(m.pools) > 10 {
			t.Fatalf("scrape %d: %d pools tracked, want at most 10", i, len(m.pools))
		}
	}
	if _, err := m.Find("db", "api"); err != nil {
		t.Errorf("the configured pool was evicted for churning application names: %v", err)
	}
	if _, err := m.Find("db", "application_name:x299"); err != nil {
		t.Errorf("the newest application is not tracked: %v", err)
	}

	// A pool not seen for a whole window is forgotten; one seen within it is kept.
	c.add(30 * time.Second)
	m.Observe(collector.Result{Pools: []metrics.PoolStats{configured}})
	c.add(31 * time.Second)
	m.Observe(collector.Result{Pools: []metrics.PoolStats{configured}})
	names := []string{}
	for _, r := range m.Reports() {
		names = append(names, r.Pool)
	}
	if !slices.Equal(names, []string{"api"}) {
		t.Errorf("after a window without them, pools %v are tracked, want only api", names)
	}
}

func TestServerBudget(t *testing.T) {
	c := newClock()
	m := NewManager(Options{Window: time.Minute, Now: c.now})
	for range 10 {
		m.Observe(collector.Result{
			// The seed's "Too Many Database Connections": 5 instances of 10/20 on a
			// 100-connection server, plus a 3-instance worker pool sharing it.
			Pools: []metrics.PoolStats{
				activityPool("db", "api", 10, 20, 5, 10),
				activityPool("db", "worker", 2, 4, 3, 1),
				{Target: "db", Pool: "application_name:psql", Source: metrics.SourceActivity, Open: 1, InUse: 1},
			},
			Servers: []collector.ServerStats{{Target: "db", MaxConnections: 100, ReservedConnections: 3}},
		})
		c.add(time.Second)
	}
	api, err := m.Find("db", "api")
	if err != nil {
		t.Fatal(err)
	}
	o := api.Optimization
	// (100 - 20 kept back) / 8 instances = 10 per instance, split 5/5.
	if o.PerInstanceBudget == nil || *o.PerInstanceBudget != 10 || o.RecommendedPoolSize != 5 ||
		o.RecommendedMaxOverflow != 5 || o.PoolSizeRule != advice.RuleServerBudget {
		t.Errorf("api: budget %v, recommended %d/%d by %s; want 10, 5/5 by server_budget",
			deref(o.PerInstanceBudget), o.RecommendedPoolSize, o.RecommendedMaxOverflow, o.PoolSizeRule)
	}
	if o.Env != "DB_POOL_SIZE=5\nDB_MAX_OVERFLOW=5\n" {
		t.Errorf("env %q", o.Env)
	}
	budgetWarning := "may open 168 connections together, more than the 80 available"
	if !hasFinding(api.Health.Warnings, advice.RuleServerBudget, budgetWarning) {
		t.Errorf("api warnings lack the server budget: %v", api.Health.Warnings)
	}
	if n := strings.Count(strings.Join(rulesOf(api.Health.Recommendations), ","), advice.RuleServerBudget); n != 1 ||
		!slices.Equal(api.StateReasons, []string{advice.RuleServerBudget}) {
		t.Errorf("the budget's fix is said %d times; state reasons %v", n, api.StateReasons)
	}
	worker, _ := m.Find("db", "worker")
	if !hasFinding(worker.Health.Warnings, advice.RuleServerBudget, budgetWarning) {
		t.Errorf("worker warnings lack the server budget: %v", worker.Health.Warnings)
	}
	psql, _ := m.Find("db", "application_name:psql")
	if psql.Configured || psql.Optimization.PerInstanceBudget != nil || psql.Optimization.Env != "" ||
		psql.Optimization.Recommendations[0].Rule != RuleUnconfigured {
		t.Errorf("unconfigured pool: configured %v, budget %v, env %q, recommendations %v",
			psql.Configured, psql.Optimization.PerInstanceBudget, psql.Optimization.Env, psql.Optimization.Recommendations)
	}
}

func TestUtilizationSemantics(t *testing.T) {
	c := newClock()
	m := NewManager(Options{Window: time.Minute, Now: c.now})
	// 2 instances of 5/10: 12 in use is 120% of the 10 permanent connections and 40% of the
	// capacity of 30, which is what dbpool_utilization_ratio says.
	p := activityPool("db", "api", 5, 10, 2, 12)
	m.Observe(collector.Result{Pools: []metrics.PoolStats{p}})
	r, _ := m.Find("", "api")
	ratio, _ := p.Utilization()
	if r.Health.UtilizationPct != 120 || r.Health.CapacityUtilizationPct == nil ||
		*r.Health.CapacityUtilizationPct != 100*ratio || *r.Health.CapacityUtilizationPct != 40 {
		t.Errorf("utilization_pct %v, capacity_utilization_pct %v; want 120 and 40 (= dbpool_utilization_ratio %v x 100)",
			r.Health.UtilizationPct, deref(r.Health.CapacityUtilizationPct), ratio)
	}
	if r.Status.Capacity == nil || *r.Status.Capacity != 30 || r.Status.MaxOverflow != 20 || r.Status.PoolSize != 10 {
		t.Errorf("status %+v", r.Status)
	}
}

func TestStates(t *testing.T) {
	pending := func(n int) *int { return &n }
	timeouts := func(n uint64) *metrics.CheckoutStats {
		return &metrics.CheckoutStats{Count: 10, Timeouts: &n}
	}
	pgx := func(inUse, waiting int) metrics.PoolStats {
		return metrics.PoolStats{Target: "db", Pool: "p", Source: metrics.SourcePgxpool, Configured: true, Settings: settings(4, 0),
			Instances: 1, Open: 4, InUse: inUse, Pending: pending(waiting)}
	}
	app := func(waiting int, longest float64) metrics.PoolStats {
		return metrics.PoolStats{Target: "db", Pool: "p", Source: metrics.SourceApp, Configured: true, Settings: settings(4, 8),
			Instances: 1, Open: 4, InUse: 1, Pending: pending(waiting), LongestWaitSeconds: &longest}
	}
	repeat := func(n int, p metrics.PoolStats) []metrics.PoolStats { return slices.Repeat([]metrics.PoolStats{p}, n) }
	tests := []struct {
		name    string
		samples []metrics.PoolStats
		want    State
	}{
		{"quiet", repeat(3, activityPool("db", "p", 10, 10, 1, 1)), StateOK},
		{"busy: warning", repeat(3, activityPool("db", "p", 10, 10, 1, 9)), StateWarning},
		{"all of the capacity in use in two samples: busy, not saturated", repeat(2, activityPool("db", "p", 4, 2, 1, 6)), StateWarning},
		{"all of the capacity in use in three samples", repeat(3, activityPool("db", "p", 4, 2, 1, 6)), StateSaturated},
		{"callers waiting in two samples (no ages): not yet", []metrics.PoolStats{pgx(2, 0), pgx(2, 3), pgx(2, 3)}, StateOK},
		{"callers waiting in three samples (no ages)", []metrics.PoolStats{pgx(2, 3), pgx(2, 3), pgx(2, 3)}, StateSaturated},
		{"a checkout in flight for 2 ms is no queue", repeat(3, app(1, 0.002)), StateOK},
		{"a caller waiting 500 ms", []metrics.PoolStats{app(0, 0), app(2, 0.5)}, StateSaturated},
		{"timeouts in the window",
			[]metrics.PoolStats{
				{Target: "db", Pool: "p", Source: metrics.SourcePgxpool, Configured: true, Settings: settings(4, 0), Instances: 1, Open: 4, InUse: 1, Checkouts: timeouts(0)},
				{Target: "db", Pool: "p", Source: metrics.SourcePgxpool, Configured: true, Settings: settings(4, 0), Instances: 1, Open: 4, InUse: 1, Checkouts: timeouts(2)},
			},
			StateSaturated},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newClock()
			m := NewManager(Options{Window: time.Minute, Now: c.now})
			for _, s := range tc.samples {
				m.Observe(collector.Result{Pools: []metrics.PoolStats{s}})
				c.add(5 * time.Second)
			}
			r, _ := m.Find("db", "p")
			if r.State != tc.want {
				t.Errorf("state %s (%v), want %s", r.State, r.StateReasons, tc.want)
			}
		})
	}
}

// TestStateSteadyLightLoad: 60 samples of a steady light load give one state. Now and then a
// sample catches a checkout in flight (a pre-ping, a new connection), once or twice in a row;
// the pool is not saturated for that, and its state does not flap.
func TestStateSteadyLightLoad(t *testing.T) {
	for _, src := range []metrics.Source{metrics.SourceApp, metrics.SourcePgxpool} {
		t.Run(string(src), func(t *testing.T) {
			c := newClock()
			m := NewManager(Options{Window: 10 * time.Minute, Now: c.now})
			seen := map[State]int{}
			var count uint64
			for i := range 60 {
				waiting, longest := 0, 0.0
				if i%7 == 3 || i%11 == 5 || i%11 == 6 { // caught in flight: 1, sometimes 2 samples in a row
					waiting, longest = 1, 0.001+0.0005*float64(i%3)
				}
				count += 75 // 5 checkouts/s
				p := metrics.PoolStats{Target: "db", Pool: "p", Source: src, Configured: true, Settings: settings(10, 20), Instances: 1,
					Open: 3, InUse: i % 3, Pending: &waiting,
					Checkouts: &metrics.CheckoutStats{Count: count, DurationSeconds: float64(count) * 0.0005, Timeouts: new(uint64(0))}}
				if src == metrics.SourceApp {
					p.LongestWaitSeconds = &longest
				}
				m.Observe(collector.Result{Pools: []metrics.PoolStats{p}})
				r, _ := m.Find("db", "p")
				seen[r.State]++
				c.add(15 * time.Second)
			}
			if len(seen) != 1 || seen[StateOK] != 60 {
				t.Errorf("states over 60 samples: %v, want ok in all", seen)
			}
		})
	}
}

func TestMetrics(t *testing.T) {
	c := newClock()
	m := NewManager(Options{Window: 10 * time.Minute, Now: c.now}) // MinHistory: 1m
	observe := func(pools ...metrics.PoolStats) {
		m.Observe(collector.Result{Pools: pools})
		c.add(15 * time.Second)
	}
	unconfigured := metrics.PoolStats{Target: "db", Pool: "application_name:psql", Source: metrics.SourceActivity, Open: 1, InUse: 1}
	for range 5 {
		observe(activityPool("db", "api", 10, 20, 1, 9), unconfigured)
	}
	observe(activityPool("db", "api", 10, 20, 1, 9), unconfigured, activityPool("db", "new", 10, 20, 1, 1))

	if problems, err := testutil.CollectAndLint(m); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
	// api: 75 s of 9 in use of 10 -> the seed's scale-up to 15/30. new: one sample, too short.
	// application_name:psql: not configured.
	want := `
# HELP dbpool_recommended_max_overflow_connections Recommended extra connections per instance beyond the pool size (DB_MAX_OVERFLOW) from the pool's history; the rules behind it are at /api/v1/optimize.
# TYPE dbpool_recommended_max_overflow_connections gauge
dbpool_recommended_max_overflow_connections{pool="api",target="db"} 30
# HELP dbpool_recommended_size_connections Recommended permanent connections per instance (DB_POOL_SIZE) from the pool's history; the rules behind it are at /api/v1/optimize.
# TYPE dbpool_recommended_size_connections gauge
dbpool_recommended_size_connections{pool="api",target="db"} 15
`
	if err := testutil.CollectAndCompare(m, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
}

func TestAPI(t *testing.T) {
	c := newClock()
	m := NewManager(Options{Window: time.Minute, Now: c.now})
	for range 3 {
		m.Observe(collector.Result{Pools: []metrics.PoolStats{
			activityPool("db1", "api", 5, 10, 1, 2),
			activityPool("db2", "api", 5, 10, 1, 3),
			activityPool("db1", "worker", 2, 4, 1, 1),
		}})
		c.add(time.Second)
	}
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()

	tests := []struct {
		method, path string
		code         int
		want         []string // substrings of the body
	}{
		{"GET", "/api/v1/pools", 200, []string{`"pool": "api"`, `"target": "db2"`, `"pool": "worker"`, `"window_seconds": 60`}},
		{"GET", "/api/v1/status?pool=worker", 200, []string{`"target": "db1"`, `"pool_size": 2`, `"checked_out": 1`, `"overflow": 0`, `"total_connections": 2`}},
		{"GET", "/api/v1/health?pool=api&target=db2", 200, []string{`"utilization_pct": 60`, `"capacity_utilization_pct": 20`, `"warnings": []`, `"recommendations": []`, `"state": "ok"`}},
		{"GET", "/api/v1/connections?pool=worker", 200, []string{`"total_connections": 2`, `"active_count": 1`, `"idle_count": 1`, `"idle_in_transaction": 0`, `"longest_query_seconds": 0.5`}},
		{"GET", "/api/v1/optimize?pool=worker&target=db1", 200, []string{`"current_settings"`, `"recommended_pool_size": 2`, `"recommended_max_overflow": 4`, `"recommendations"`, `"env": "DB_POOL_SIZE=2\nDB_MAX_OVERFLOW=4\n"`}},
		{"HEAD", "/api/v1/status?pool=worker", 200, nil},
		{"GET", "/api/v1/status?pool=nope", 404, []string{`"error": "unknown pool \"nope\""`}},
		{"GET", "/api/v1/health?pool=worker&target=db2", 404, []string{`"error": "unknown pool \"worker\" on target \"db2\""`}},
		{"GET", "/api/v1/optimize?pool=api", 400, []string{`several targets (db1, db2)`, `"targets": [`, `"db1"`, `"db2"`}},
		{"GET", "/api/v1/status", 400, []string{`missing query parameter pool`}},
		{"GET", "/api/v1/nope", 404, []string{`unknown endpoint /api/v1/nope`}},
		{"POST", "/api/v1/pools", 405, []string{`"error": "method POST not allowed: use GET"`}},
		{"DELETE", "/api/v1/status?pool=api", 405, []string{`not allowed`}},
	}
	for _, tc := range tests {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, srv.URL+tc.path, nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.code {
				t.Errorf("status %d, want %d\n%s", resp.StatusCode, tc.code, body)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
			if tc.code == 405 && resp.Header.Get("Allow") != "GET, HEAD" {
				t.Errorf("Allow %q", resp.Header.Get("Allow"))
			}
			if tc.method != "HEAD" && !json.Valid(body) {
				t.Errorf("not JSON: %s", body)
			}
			for _, w := range tc.want {
				if !strings.Contains(string(body), w) {
					t.Errorf("body lacks %s:\n%s", w, body)
				}
			}
		})
	}
}

func TestPageEscapes(t *testing.T) {
	c := newClock()
	m := NewManager(Options{Window: time.Minute, Now: c.now})
	evil := `application_name:<script>alert(1)</script>`
	m.Observe(collector.Result{Pools: []metrics.PoolStats{
		activityPool(`db"><b>x`, "api", 5, 10, 1, 2),
		{Target: "db", Pool: evil, Source: metrics.SourceActivity, Open: 1, InUse: 1,
			States: map[string]int{metrics.StateActive: 1}},
	}})
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/pools", nil))
	body := rec.Body.String()
	if rec.Code != 200 || rec.Header().Get("Content-Type") != "text/html; charset=utf-8" {
		t.Fatalf("status %d, type %q", rec.Code, rec.Header().Get("Content-Type"))
	}
	for _, bad := range []string{"<script", `"><b>`, "ZgotmplZ"} {
		if strings.Contains(body, bad) {
			t.Errorf("page contains %q", bad)
		}
	}
	for _, want := range []string{"application_name:&lt;script&gt;alert(1)&lt;/script&gt;", `data-key="health.capacity_utilization_pct" data-value="13.33">13.3%<`} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	rec = httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("POST", "/pools", nil))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST /pools: %d", rec.Code)
	}
}

func TestRunSampler(t *testing.T) {
	m := NewManager(Options{Window: time.Minute})
	ctx, cancel := context.WithCancel(context.Background())
	var running, most, calls atomic.Int32
	scrape := func(ctx context.Context) {
		n := running.Add(1)
		defer running.Add(-1)
		for {
			old := most.Load()
			if n <= old || most.CompareAndSwap(old, n) {
				break
			}
		}
		if calls.Add(1) == 5 {
			cancel()
		}
		// Slower than the interval: ticks come while a scrape runs.
		select {
		case <-ctx.Done():
		case <-time.After(30 * time.Millisecond):
		}
		if _, ok := ctx.Deadline(); !ok {
			t.Error("scrape without a deadline")
		}
	}
	done := make(chan struct{})
	go func() { m.RunSampler(ctx, 5*time.Millisecond, time.Second, scrape); close(done) }()
	// A second sampler on the same manager returns at once.
	second := make(chan struct{})
	go func() { m.RunSampler(ctx, 5*time.Millisecond, time.Second, scrape); close(second) }()
	for _, ch := range []chan struct{}{done, second} {
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			t.Fatal("sampler did not stop")
		}
	}
	if most.Load() != 1 {
		t.Errorf("%d scrapes ran at once", most.Load())
	}
	if calls.Load() != 5 {
		t.Errorf("%d scrapes, want 5 (it stops when its context ends)", calls.Load())
	}

	// Observations from Prometheus' scrapes make the sampler skip its ticks.
	c := newClock()
	m = NewManager(Options{Window: time.Minute, Now: c.now})
	m.Observe(collector.Result{Pools: []metrics.PoolStats{activityPool("db", "api", 5, 10, 1, 1)}})
	ctx, cancel = context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	calls.Store(0)
	m.RunSampler(ctx, 10*time.Millisecond, time.Second, func(context.Context) { calls.Add(1) })
	if calls.Load() != 0 {
		t.Errorf("sampler scraped %d times right after an observation", calls.Load())
	}
}

func hasFinding(fs []advice.Finding, rule, text string) bool {
	for _, f := range fs {
		if f.Rule == rule && strings.Contains(f.Message, text) {
			return true
		}
	}
	return false
}

func deref[T any](p *T) any {
	if p == nil {
		return nil
	}
	return *p
}

func TestPageShortensEstimateNote(t *testing.T) {
	c := newClock()
	m := NewManager(Options{Window: time.Minute, Now: c.now})
	m.Observe(collector.Result{Pools: []metrics.PoolStats{activityPool("db", "api", 5, 10, 1, 9)}})
	r, _ := m.Find("db", "api")
	// The note must be the text internal/advice appends, or the page would repeat it.
	if len(r.Health.Warnings) == 0 || !strings.Contains(r.Health.Warnings[0].Message, estimateNote) {
		t.Fatalf("advice's messages do not carry the estimate note any more: %v", r.Health.Warnings)
	}
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/pools", nil))
	if strings.Contains(rec.Body.String(), estimateNote) || !strings.Contains(rec.Body.String(), "utilization_peak") {
		t.Errorf("the page repeats the estimate note or lacks the warning:\n%s", rec.Body.String())
	}
}

// TestAuxiliaryPoolsNotAdvised: PgBouncer's own auth_user pool is exported as metrics but is
// not application traffic: no report, no advice, no share of the server budget.
func TestAuxiliaryPoolsNotAdvised(t *testing.T) {
	c := newClock()
	m := NewManager(Options{Window: time.Minute, Now: c.now})
	app := metrics.PoolStats{Target: "bouncer", Pool: "app/app", Source: metrics.SourcePgBouncer,
		Configured: true, Settings: settings(3, 2), Instances: 1, Open: 2, InUse: 1}
	auth := app
	auth.Pool, auth.Auxiliary = "app/postgres", true
	m.Observe(collector.Result{Pools: []metrics.PoolStats{app, auth}})
	var names []string
	for _, r := range m.Reports() {
		names = append(names, r.Pool)
	}
	if !slices.Equal(names, []string{"app/app"}) {
		t.Errorf("reports for %v, want only app/app", names)
	}
	if f := m.onServer["bouncer"]; f.instances != 1 || f.capacity != 5 {
		t.Errorf("pools on the server %+v, want only the application pool's 1 instance and capacity 5", f)
	}
}

// appPool is pool name on target as the application reports it itself (app source).
func appPool(target, name string, size, overflow, instances, inUse int) metrics.PoolStats {
	timeouts := uint64(2)
	return metrics.PoolStats{
		Target: target, Pool: name, Source: metrics.SourceApp,
		Configured: true, Settings: settings(size, overflow), Instances: instances,
		Open: inUse + 1, InUse: inUse, Overflow: max(0, inUse+1-instances*size),
		States:    map[string]int{metrics.StateCheckedOut: inUse, metrics.StateCheckedIn: 1},
		Pending:   new(0),
		Checkouts: &metrics.CheckoutStats{Count: 10, DurationSeconds: 0.1, Timeouts: &timeouts},
	}
}

// TestPrefersExactView: where the application reports its pool and pg_stat_activity sees the
// same pool, the report is the exact one, with idle-in-transaction and query ages from the
// server, counted once in the target's pools; a scrape that misses the app endpoint does not
// mix the estimate into the history.
func TestPrefersExactView(t *testing.T) {
	c := newClock()
	m := NewManager(Options{Window: time.Minute, Now: c.now})
	server := activityPool("db", "api", 5, 10, 2, 1) // sees 1 in use: the rest look idle
	server.States[metrics.StateIdleInTransaction] = 3
	server.Sessions.LongestQuerySeconds = 42
	for range 3 {
		m.Observe(collector.Result{Pools: []metrics.PoolStats{server, appPool("db", "api", 5, 10, 2, 7)}})
		c.add(time.Second)
	}
	m.Observe(collector.Result{Pools: []metrics.PoolStats{server}}) // the app endpoint failed
	reports := m.Reports()
	if len(reports) != 1 {
		t.Fatalf("%d reports, want one for db/api: %+v", len(reports), reports)
	}
	r := reports[0]
	if r.Source != metrics.SourceApp || !r.Exact {
		t.Errorf("source %q exact %v, want the app's exact view", r.Source, r.Exact)
	}
	w := r.Window
	if w.Latest.InUse != 7 || w.PeakInUse != 7 || w.Samples != 3 {
		t.Errorf("latest in use %d, peak %d, %d samples; want the app's 7 in use in all 3 samples", w.Latest.InUse, w.PeakInUse, w.Samples)
	}
	if got := deref(w.Latest.IdleInTransaction); got != 3 {
		t.Errorf("idle in transaction %v, want the server's 3", got)
	}
	if got := deref(w.Latest.LongestQuerySeconds); got != 42.0 {
		t.Errorf("longest query %v, want the server's 42", got)
	}
	if got := deref(w.Latest.TimeoutsTotal); got != 2.0 {
		t.Errorf("timeouts %v, want the app's 2", got)
	}
	if r.Optimization.Env == "" {
		t.Error("an app pool is configured by DB_*: the report should carry .env lines")
	}
	m.mu.Lock()
	f := m.onServer["db"]
	m.mu.Unlock()
	if f.instances != 2 || f.capacity != 30 {
		t.Errorf("pools on db: %+v, want the pool counted once (2 instances, capacity 30)", f)
	}
}

// TestPredictionMetrics: where the application reports hold times, the model's predictions
// for the current and the recommended settings are series next to the recommendation.
func TestPredictionMetrics(t *testing.T) {
	c := newClock()
	m := NewManager(Options{Window: 10 * time.Minute, Now: c.now})
	st := settings(2, 0)
	st.Timeout = time.Second
	for i := range 12 { // 40 attempts/s, 2/0.15 of them served for 150 ms, the rest time out
		secs := float64(15 * i)
		attempts, served := uint64(40*secs), uint64(secs*2/0.15)
		timeouts := attempts - served
		m.Observe(collector.Result{Pools: []metrics.PoolStats{{
			Target: "db", Pool: "api", Source: metrics.SourceApp, Configured: true, Settings: st, Instances: 1,
			Open: 2, InUse: 2, Pending: new(30), LongestWaitSeconds: new(0.9),
			Checkouts: &metrics.CheckoutStats{Count: attempts, DurationSeconds: 0.99 * float64(attempts), Timeouts: &timeouts,
				Failures: map[string]uint64{metrics.FailureTimeout: timeouts}},
			UseTime: &metrics.DurationStats{Count: served, SumSeconds: 0.15 * float64(served), Buckets: map[float64]uint64{0.1: 0, 0.25: served}},
		}}})
		c.add(15 * time.Second)
	}
	if problems, err := testutil.CollectAndLint(m); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
	mfs := testbin.Gather(t, m)
	value := func(name, settings string) float64 {
		v, ok := testbin.SeriesValue(mfs, name, map[string]string{"settings": settings})
		if !ok {
			t.Fatalf("no %s{settings=%q}", name, settings)
		}
		return v
	}
	if v, _ := testbin.SeriesValue(mfs, "dbpool_recommended_size_connections", nil); v != 9 {
		t.Errorf("recommended size %g, want 9", v)
	}
	if cur := value("dbpool_predicted_checkout_timeout_ratio", metrics.SettingsCurrent); cur < 0.6 || cur > 0.72 {
		t.Errorf("predicted timeouts at 2 + 0: %g, want about 2/3", cur)
	}
	if rec := value("dbpool_predicted_checkout_timeout_ratio", metrics.SettingsRecommended); rec != 0 {
		t.Errorf("predicted timeouts at the recommendation: %g, want 0", rec)
	}
	if w := value("dbpool_predicted_checkout_wait_seconds", metrics.SettingsRecommended); w < 0 || w >= 0.01 {
		t.Errorf("predicted wait at the recommendation: %g s, want below 10 ms", w)
	}
	if u := value("dbpool_predicted_utilization_ratio", metrics.SettingsRecommended); u <= 0.6 || u >= 0.7 {
		t.Errorf("predicted utilization at the recommendation: %g, want about 6/9", u)
	}
}
