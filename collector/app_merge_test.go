package collector

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/dbpool/dbpool_exporter/internal/metrics"
	"github.com/dbpool/dbpool_exporter/poolcfg"
	"github.com/dbpool/dbpool_exporter/tools/testbin"
)

// timedInstance is one process's sample with hold and connect times, failures by reason and
// failed connects, all derived from n (its checkouts so far) so that a step's totals are
// easy to state.
func timedInstance(name string, n uint64, connectFailures uint64) metrics.PoolStats {
	timeouts := n / 10
	return metrics.PoolStats{Target: "db", Pool: "api", Source: metrics.SourceApp, Configured: true, Instances: 1,
		Open: 1, InUse: 1, States: map[string]int{metrics.StateCheckedOut: 1},
		Checkouts: &metrics.CheckoutStats{Count: n, DurationSeconds: float64(n) / 1000, Buckets: map[float64]uint64{0.01: n},
			Timeouts: &timeouts, Failures: map[string]uint64{metrics.FailureTimeout: timeouts, metrics.FailureConnect: connectFailures,
				metrics.FailureCancelled: 0, metrics.FailureOther: 0}},
		UseTime:    &metrics.DurationStats{Count: n, SumSeconds: float64(n) / 10, Buckets: map[float64]uint64{0.1: n / 2, 60: n}},
		CreateTime: &metrics.DurationStats{Count: 2 + connectFailures, SumSeconds: 0.01, Buckets: map[float64]uint64{0.01: 2 + connectFailures}},
		Lifecycle:  &metrics.LifecycleStats{Opened: ptrTo(uint64(2)), OpenFailures: &connectFailures},
		Processes:  []metrics.ProcessStats{{Process: name, InUse: 1, Open: 1}}}
}

// TestAppTimingsNeverFall: the pool's hold and connect histograms, its failures by reason and
// its failed connects are counters of the pool group like its checkouts: they keep a process
// that missed a scrape, continue when it is back, fold in a process whose counters restarted
// (also when only a failure reason fell) and never fall.
func TestAppTimingsNeverFall(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	restarted := timedInstance("a", 130, 0)
	restarted.CreateTime, restarted.Lifecycle = timedInstance("a", 130, 3).CreateTime, timedInstance("a", 130, 3).Lifecycle
	steps := []struct {
		name      string
		at        time.Duration
		instances []metrics.PoolStats
		// the pool's checkouts (= holds), connect failures, failed opens
		checkouts, connectFailures, openFailures uint64
	}{
		{"two processes", 0, []metrics.PoolStats{timedInstance("a", 100, 3), timedInstance("b", 50, 0)}, 150, 3, 3},
		{"b missed the scrape", 15 * time.Second, []metrics.PoolStats{timedInstance("a", 120, 3)}, 170, 3, 3},
		{"b is back", 30 * time.Second, []metrics.PoolStats{timedInstance("a", 120, 3), timedInstance("b", 60, 1)}, 180, 4, 4},
		// a restarted under the same name (a reused pid) and has made more checkouts and
		// failed opens since than before: only its connect failures fell, and that is enough.
		{"a restarted, only a failure reason fell", 45 * time.Second, []metrics.PoolStats{restarted, timedInstance("b", 60, 1)}, 310, 4, 7},
		{"a and b gone for good, c new", 20 * time.Minute, []metrics.PoolStats{timedInstance("c", 10, 2)}, 320, 6, 9},
	}
	c := NewAppCounters()
	var prev *metrics.PoolStats
	for _, st := range steps {
		pools := c.merge("db", st.instances, nil, start.Add(st.at))
		if len(pools) != 1 {
			t.Fatalf("%s: %d pools", st.name, len(pools))
		}
		p := &pools[0]
		if p.UseTime == nil || p.CreateTime == nil || p.Checkouts.Failures == nil || p.Lifecycle.OpenFailures == nil {
			t.Fatalf("%s: a counter is missing: %+v", st.name, p)
		}
		f := p.Checkouts.Failures
		timeouts := *p.Checkouts.Timeouts
		if p.UseTime.Count != st.checkouts || f[metrics.FailureConnect] != st.connectFailures || *p.Lifecycle.OpenFailures != st.openFailures ||
			f[metrics.FailureTimeout] != timeouts || p.CreateTime.Count != *p.Lifecycle.Opened+st.openFailures {
			t.Errorf("%s: holds %d, connect failures %d, failed opens %d, timeout failures %d (timeouts %d), connects %d of %d opened; want %d holds, %d connect failures, %d failed opens",
				st.name, p.UseTime.Count, f[metrics.FailureConnect], *p.Lifecycle.OpenFailures, f[metrics.FailureTimeout], timeouts,
				p.CreateTime.Count, *p.Lifecycle.Opened, st.checkouts, st.connectFailures, st.openFailures)
		}
		if p.UseTime.Buckets[60] != p.UseTime.Count || p.UseTime.Buckets[0.1] > p.UseTime.Buckets[60] {
			t.Errorf("%s: hold buckets %v do not add up to %d", st.name, p.UseTime.Buckets, p.UseTime.Count)
		}
		if prev != nil {
			if fell := countersFell(p, prev); fell {
				t.Errorf("%s: a pool counter fell: %+v after %+v", st.name, p, prev)
			}
		}
		prev = p
	}
}

// TestAppLeaksMerge: leaked connections of a pool's instances add up, a site that several
// instances report is one site, the pool keeps the top MaxLeakSites, and the leaks are
// absent when no instance detects them.
func TestAppLeaksMerge(t *testing.T) {
	site := func(file string, line, count int, oldest float64) metrics.LeakSite {
		return metrics.LeakSite{File: file, Line: line, Function: "handler", Count: count, OldestSeconds: oldest}
	}
	instance := func(name string, leaks *metrics.LeakStats) metrics.PoolStats {
		p := timedInstance(name, 10, 0)
		p.Leaks = leaks
		if leaks != nil {
			p.Processes[0].Leaked = &leaks.Count
		}
		return p
	}
	var many []metrics.LeakSite
	for i := range 12 {
		many = append(many, site("jobs.py", 100+i, 1, 40))
	}
	tests := []struct {
		name      string
		instances []metrics.PoolStats
		want      *metrics.LeakStats
	}{
		{"no instance detects leaks", []metrics.PoolStats{instance("a", nil), instance("b", nil)}, nil},
		{
			"one site in two instances, one instance without detection",
			[]metrics.PoolStats{
				instance("a", &metrics.LeakStats{ThresholdSeconds: 60, Instances: 1, Count: 3,
					Sites: []metrics.LeakSite{site("users.py", 42, 2, 75), site("orders.py", 7, 1, 61)}}),
				instance("b", nil),
				instance("c", &metrics.LeakStats{ThresholdSeconds: 30, Instances: 1, Count: 2,
					Sites: []metrics.LeakSite{site("admin.py", 9, 1, 500), site("users.py", 42, 1, 300)}}),
			},
			// The most leaked connections first, then the oldest.
			&metrics.LeakStats{ThresholdSeconds: 30, Instances: 2, Count: 5,
				Sites: []metrics.LeakSite{site("users.py", 42, 3, 300), site("admin.py", 9, 1, 500), site("orders.py", 7, 1, 61)}},
		},
		{
			"more sites than a pool keeps",
			[]metrics.PoolStats{
				instance("a", &metrics.LeakStats{ThresholdSeconds: 30, Instances: 1, Count: 12, Sites: many[:6]}),
				instance("b", &metrics.LeakStats{ThresholdSeconds: 30, Instances: 1, Count: 7,
					Sites: append([]metrics.LeakSite{site("jobs.py", 111, 1, 99)}, many[6:]...)}),
			},
			&metrics.LeakStats{ThresholdSeconds: 30, Instances: 2, Count: 19,
				Sites: append([]metrics.LeakSite{site("jobs.py", 111, 2, 99)}, many[:9]...)},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pools := NewAppCounters().merge("db", tt.instances, nil, time.Now())
			if got := pools[0].Leaks; !reflect.DeepEqual(got, tt.want) {
				t.Errorf("leaks %s\nwant %s", show(got), show(tt.want))
			}
			for i, pr := range pools[0].Processes {
				if want := tt.instances[i].Leaks; (pr.Leaked == nil) != (want == nil) || (want != nil && *pr.Leaked != want.Count) {
					t.Errorf("process %s: leaked %s, want %s", pr.Process, show(pr.Leaked), show(want))
				}
			}
		})
	}
}

// TestAppTimingsExposition: two processes of pool api with the new fields, and pool jobs of
// an older integration without them, read from real endpoints: the series of api add up,
// jobs has none of them (absent, not 0), and the exposition passes the linter.
func TestAppTimingsExposition(t *testing.T) {
	second := strings.NewReplacer(`"instance": "web-1:12345"`, `"instance": "web-2:23456"`,
		`"timeouts": 2, "failures": {"timeout": 2, "connect": 5, "cancelled": 0, "other": 0}`,
		`"timeouts": 2, "failures": {"timeout": 2, "connect": 0, "cancelled": 4, "other": 1}`,
		`"longest_held_seconds": 75.2`, `"longest_held_seconds": 130`,
		`"oldest_seconds": 75.2`, `"oldest_seconds": 130`).Replace(timedInstanceJSON)
	serve := func(body string) string {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, body) }))
		t.Cleanup(s.Close)
		return s.URL
	}
	api, jobs := serve(appDocJSON(timedInstanceJSON, second)), serve(appDocJSON(appInstanceJSON("jobs", "j:1", 1, 1, 0, 2, 5, 1)))
	pools := []poolcfg.Pool{
		{Name: "api", Target: "db", Settings: poolcfg.DefaultSettings(), Instances: 2},
		{Name: "jobs", Target: "db", Settings: poolcfg.DefaultSettings(), Instances: 1},
	}
	tgt := newAppTarget(t, closedPortDSN(t), pools, []poolcfg.App{
		{Name: "api", URL: mustAppURL(t, api), Pool: "api"},
		{Name: "jobs", URL: mustAppURL(t, jobs), Pool: "jobs"},
	}, nil, func(o *PostgresOptions) { o.Probe = false })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c := withoutOwnPool{NewExporter([]*Target{tgt}, ExporterOptions{}).ScrapeCollector(ctx)}
	want := `
# HELP dbpool_checkout_failures_total Checkouts that failed, by reason: timeout (the pool was exhausted), connect (opening a connection failed), cancelled (the caller went away), other.
# TYPE dbpool_checkout_failures_total counter
dbpool_checkout_failures_total{pool="api",reason="cancelled",source="app",target="db"} 4
dbpool_checkout_failures_total{pool="api",reason="connect",source="app",target="db"} 5
dbpool_checkout_failures_total{pool="api",reason="other",source="app",target="db"} 1
dbpool_checkout_failures_total{pool="api",reason="timeout",source="app",target="db"} 4
# HELP dbpool_connection_use_duration_seconds Time connections were held, from checkout to checkin.
# TYPE dbpool_connection_use_duration_seconds histogram
dbpool_connection_use_duration_seconds_bucket{pool="api",source="app",target="db",le="0.001"} 6
dbpool_connection_use_duration_seconds_bucket{pool="api",source="app",target="db",le="0.0025"} 80
dbpool_connection_use_duration_seconds_bucket{pool="api",source="app",target="db",le="60"} 2448
dbpool_connection_use_duration_seconds_bucket{pool="api",source="app",target="db",le="+Inf"} 2448
dbpool_connection_use_duration_seconds_sum{pool="api",source="app",target="db"} 122.4
dbpool_connection_use_duration_seconds_count{pool="api",source="app",target="db"} 2448
# HELP dbpool_connection_create_duration_seconds Time opening a new connection took (connect, authentication and the pool's setup of it), failed attempts included.
# TYPE dbpool_connection_create_duration_seconds histogram
dbpool_connection_create_duration_seconds_bucket{pool="api",source="app",target="db",le="0.001"} 10
dbpool_connection_create_duration_seconds_bucket{pool="api",source="app",target="db",le="0.0025"} 10
dbpool_connection_create_duration_seconds_bucket{pool="api",source="app",target="db",le="60"} 24
dbpool_connection_create_duration_seconds_bucket{pool="api",source="app",target="db",le="+Inf"} 24
dbpool_connection_create_duration_seconds_sum{pool="api",source="app",target="db"} 0.122
dbpool_connection_create_duration_seconds_count{pool="api",source="app",target="db"} 24
# HELP dbpool_connection_open_failures_total Attempts to open a new connection that failed (refused, timed out, authentication failed).
# TYPE dbpool_connection_open_failures_total counter
dbpool_connection_open_failures_total{pool="api",source="app",target="db"} 10
# HELP dbpool_longest_connection_use_seconds Time the longest-held connection checked out now has been held so far (checkout to now); 0 when none is checked out.
# TYPE dbpool_longest_connection_use_seconds gauge
dbpool_longest_connection_use_seconds{pool="api",source="app",target="db"} 130
# HELP dbpool_leaked_connections Connections checked out now for longer than the application's leak detection threshold; absent when no instance detects leaks. Where they were taken is in /api/v1/pools and on /pools.
# TYPE dbpool_leaked_connections gauge
dbpool_leaked_connections{pool="api",source="app",target="db"} 2
# HELP dbpool_process_leaked_connections Connections one process has held longer than its leak detection threshold; absent where it does not detect leaks.
# TYPE dbpool_process_leaked_connections gauge
dbpool_process_leaked_connections{pool="api",process="web-1:12345",source="app",target="db"} 1
dbpool_process_leaked_connections{pool="api",process="web-2:23456",source="app",target="db"} 1
# HELP dbpool_process_connection_use_duration_seconds Time one process held connections, checkout to checkin (_sum and _count only; the pool's histogram has the buckets).
# TYPE dbpool_process_connection_use_duration_seconds histogram
dbpool_process_connection_use_duration_seconds_bucket{pool="api",process="web-1:12345",source="app",target="db",le="+Inf"} 1224
dbpool_process_connection_use_duration_seconds_sum{pool="api",process="web-1:12345",source="app",target="db"} 61.2
dbpool_process_connection_use_duration_seconds_count{pool="api",process="web-1:12345",source="app",target="db"} 1224
dbpool_process_connection_use_duration_seconds_bucket{pool="api",process="web-2:23456",source="app",target="db",le="+Inf"} 1224
dbpool_process_connection_use_duration_seconds_sum{pool="api",process="web-2:23456",source="app",target="db"} 61.2
dbpool_process_connection_use_duration_seconds_count{pool="api",process="web-2:23456",source="app",target="db"} 1224
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want),
		"dbpool_checkout_failures_total", "dbpool_connection_use_duration_seconds", "dbpool_connection_create_duration_seconds",
		"dbpool_connection_open_failures_total", "dbpool_longest_connection_use_seconds", "dbpool_leaked_connections",
		"dbpool_process_leaked_connections", "dbpool_process_connection_use_duration_seconds"); err != nil {
		t.Fatal(err)
	}
	testbin.LintClean(t, c)
	// The older integration's pool is there, with its checkouts, and without the new series.
	mfs := gatherWithin(t, tgt, 2*time.Second)
	if _, ok := value(mfs, "dbpool_checkouts_total", map[string]string{"pool": "jobs"}); !ok {
		t.Error("pool jobs of the older integration lost its checkouts")
	}
}

// TestAppExitedOnlyPool: a pool of which only processes that exited are reported has no
// sample, and its counters keep their final figures for when a live process answers.
func TestAppExitedOnlyPool(t *testing.T) {
	jobs := func(name string, n uint64) metrics.PoolStats {
		p := timedInstance(name, n, 0)
		p.Pool = "jobs"
		return p
	}
	c := NewAppCounters()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	pools := c.merge("db", []metrics.PoolStats{timedInstance("a", 10, 0)}, []metrics.PoolStats{jobs("j", 5)}, now)
	if len(pools) != 1 || pools[0].Pool != "api" {
		t.Fatalf("pools %+v, want only api", pools)
	}
	pools = c.merge("db", []metrics.PoolStats{timedInstance("a", 10, 0), jobs("k", 1)}, nil, now.Add(15*time.Second))
	if len(pools) != 2 || pools[1].Pool != "jobs" || pools[1].Checkouts.Count != 6 || pools[1].Instances != 1 {
		t.Fatalf("pools %+v, want jobs with 5 + 1 checkouts over 1 instance", pools)
	}
}
