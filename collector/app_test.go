package collector

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/dbpool/dbpool_exporter/internal/metrics"
	"github.com/dbpool/dbpool_exporter/poolcfg"
	"github.com/dbpool/dbpool_exporter/tools/testbin"
)

// appInstanceJSON is one instance of a dbpool-stats document, as integrations/python
// writes it.
func appInstanceJSON(pool, instance string, out, in, overflow, total int, count, timeouts uint64) string {
	return fmt.Sprintf(`{"pool": %q, "instance": %q, "pid": 1, "pool_class": "QueuePool", "collected_at": 1.5,
  "settings": {"pool_size": 2, "max_overflow": 3, "timeout_seconds": 0.5, "recycle_seconds": 60, "pre_ping": true, "echo": false},
  "status": {"pool_size": 2, "max_overflow": 3, "checked_out": %d, "checked_in": %d, "overflow": %d, "total_connections": %d},
  "pending_checkouts": 1, "longest_checkout_wait_seconds": 0.25,
  "checkouts": {"count": %d, "failed": %d, "sum_seconds": 1.5,
    "buckets": [{"le": 0.001, "count": 1}, {"le": 0.05, "count": %d}, {"le": 30, "count": %d}], "timeouts": %d},
  "connects": 4, "invalidations": 1, "recycles": 2, "pre_ping_failures": 1, "a_future_field": {"ignored": true}}`,
		pool, instance, out, in, overflow, total, count, timeouts, count-timeouts, count, timeouts)
}

func appDocJSON(instances ...string) string {
	return `{"format": "dbpool-stats", "version": 1, "generated_at": 2.5, "instances": [` + strings.Join(instances, ",") + `]}`
}

// withExited adds the final entries of processes that exited to doc.
func withExited(doc string, exited ...string) string {
	return strings.TrimSuffix(doc, "}") + `, "exited": [` + strings.Join(exited, ",") + `]}`
}

func TestAppDocumentRejectsGarbage(t *testing.T) {
	good := appInstanceJSON("api", "h:1", 1, 1, 0, 2, 5, 1)
	tests := []struct {
		name, body, appPool, want string
	}{
		{"not JSON", `<html>oops</html>`, "", "not a dbpool-stats JSON document"},
		{"other format", `{"format": "prometheus", "version": 1, "instances": []}`, "", `"format" must be "dbpool-stats"`},
		{"no version", `{"format": "dbpool-stats", "instances": []}`, "", `without "version"`},
		{"future version", `{"format": "dbpool-stats", "version": 2, "instances": []}`, "", "version 2: this exporter reads version 1"},
		{"wrong type", `{"format": "dbpool-stats", "version": 1, "instances": [{"instance": "h:1", "status": {"checked_out": "three"}}]}`, "", "not a dbpool-stats JSON document"},
		{"no instance id", appDocJSON(`{"pool": "api", "status": {}}`), "", `an instance without "instance"`},
		{"twice", appDocJSON(good, good), "", `instance "h:1" of pool "api" is reported twice`},
		{"several pools", appDocJSON(good, appInstanceJSON("jobs", "h:1", 0, 0, -2, 0, 0, 0)), "", `several pools ("api", "jobs"): set app_pool`},
		{"no status", appDocJSON(`{"pool": "api", "instance": "h:2"}`), "", `instance "h:2": no "status"`},
		{"negative count", appDocJSON(appInstanceJSON("api", "h:1", -1, 0, 0, 0, 0, 0)), "", "negative connection count"},
		{"bounds fall", appDocJSON(strings.Replace(good, `{"le": 0.05`, `{"le": 0.0001`, 1)), "", "bounds must rise"},
		{"counts fall", appDocJSON(strings.Replace(good, `{"le": 0.001, "count": 1}`, `{"le": 0.001, "count": 5}`, 1)), "", "counts must be cumulative"},
		{"bucket above count", appDocJSON(strings.Replace(good, `"count": 5, "failed"`, `"count": 3, "failed"`, 1)), "", "counts must be cumulative"},
		{"negative pending", appDocJSON(strings.Replace(good, `"pending_checkouts": 1`, `"pending_checkouts": -1`, 1)), "", "pending_checkouts -1 is negative"},
		{"bad recycle", appDocJSON(strings.Replace(good, `"recycle_seconds": 60`, `"recycle_seconds": -5`, 1)), "", "recycle_seconds -5"},
		{"exited without instance id", withExited(appDocJSON(good), `{"pool": "api", "status": {}}`), "", `exited: an instance without "instance"`},
		{"exited twice", withExited(appDocJSON(good), appInstanceJSON("api", "h:2", 0, 0, -2, 0, 5, 1), appInstanceJSON("api", "h:2", 0, 0, -2, 0, 5, 1)), "",
			`exited: instance "h:2" of pool "api" is reported twice`},
		{"exited garbage", withExited(appDocJSON(good), appInstanceJSON("api", "h:2", -1, 0, 0, 0, 0, 0)), "", `exited instance "h:2": negative connection count`},
		{"exited of another pool", withExited(appDocJSON(good), appInstanceJSON("jobs", "h:2", 0, 0, -2, 0, 0, 0)), "", `several pools ("api", "jobs")`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc, err := parseAppDoc([]byte(tt.body))
			if err == nil {
				_, _, err = docSamples(doc, tt.appPool, "db", "api")
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one containing %q", err, tt.want)
			}
		})
	}
}

// closedAddr is a loopback address where nothing listens.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return addr
}

// closedPortDSN is a DSN of a port where nothing listens: the server part of a target
// fails at once, which leaves the app endpoints to show.
func closedPortDSN(t *testing.T) string {
	return "postgres://monitor:db-Secret-1@" + closedAddr(t) + "/postgres?sslmode=disable&connect_timeout=2"
}

func mustAppURL(t *testing.T, s string) poolcfg.AppURL {
	t.Helper()
	u, err := poolcfg.ParseAppURL(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// TestAppEndpointsMergeIntoOnePool: two endpoints of pool "api" (one with two instances and a
// process that exited, and one that also reports a pool the exporter must skip) add up to
// one exact sample, while the database itself is down.
func TestAppEndpointsMergeIntoOnePool(t *testing.T) {
	var mu sync.Mutex
	var auth []string
	serve := func(body string) *httptest.Server {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			auth = append(auth, r.Header.Get("Authorization"))
			mu.Unlock()
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprint(w, body)
		}))
		t.Cleanup(s.Close)
		return s
	}
	// a:3 exited: its final counters count, nothing else of it does (its pending_checkouts
	// of 1 included).
	a := serve(withExited(appDocJSON(appInstanceJSON("api", "a:1", 2, 0, 0, 2, 10, 2), appInstanceJSON("api", "a:2", 4, 1, 3, 5, 20, 0)),
		appInstanceJSON("api", "a:3", 0, 0, -2, 0, 8, 1)))
	b := serve(appDocJSON(appInstanceJSON("api", "b:1", 1, 1, 0, 2, 5, 1), appInstanceJSON("jobs", "b:1", 9, 9, 9, 18, 99, 9)))

	pools := []poolcfg.Pool{{Name: "api", Target: "db", Settings: poolcfg.DefaultSettings(), Instances: 3}}
	var logs bytes.Buffer
	withAuth := strings.Replace(b.URL, "http://", "http://scraper:app-Secret-99@", 1)
	tgt := newAppTarget(t, closedPortDSN(t), pools, []poolcfg.App{
		{Name: "a", URL: mustAppURL(t, a.URL), Pool: "api"},
		{Name: "b", URL: mustAppURL(t, withAuth), Pool: "api", AppPool: "api"},
	}, &logs, func(o *PostgresOptions) { o.Probe = false })

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c := withoutOwnPool{NewExporter([]*Target{tgt}, ExporterOptions{}).ScrapeCollector(ctx)}
	// Three instances: 2+4+1 checked out, overflow 0+3+0, open 2+5+2; four processes' counters.
	want := `
# HELP dbpool_in_use_connections Connections checked out or busy; never counts idle ones. A lower bound for the activity source.
# TYPE dbpool_in_use_connections gauge
dbpool_in_use_connections{pool="api",source="app",target="db"} 7
# HELP dbpool_open_connections Connections the pool group has open (in use plus idle).
# TYPE dbpool_open_connections gauge
dbpool_open_connections{pool="api",source="app",target="db"} 9
# HELP dbpool_overflow_connections Connections beyond the pool size: per instance max(0, open - pool size), summed.
# TYPE dbpool_overflow_connections gauge
dbpool_overflow_connections{pool="api",source="app",target="db"} 3
# HELP dbpool_connections Open connections by state, a disjoint breakdown of dbpool_open_connections in the source's own state names.
# TYPE dbpool_connections gauge
dbpool_connections{pool="api",source="app",state="checked_in",target="db"} 2
dbpool_connections{pool="api",source="app",state="checked_out",target="db"} 7
# HELP dbpool_instances Processes that each hold one such pool: as configured, or for the app source those that reported.
# TYPE dbpool_instances gauge
dbpool_instances{pool="api",source="app",target="db"} 3
# HELP dbpool_max_connections Capacity of the pool group: instances x (pool size + max overflow).
# TYPE dbpool_max_connections gauge
dbpool_max_connections{pool="api",source="app",target="db"} 15
# HELP dbpool_utilization_ratio In-use connections over the pool group's capacity (0..1).
# TYPE dbpool_utilization_ratio gauge
dbpool_utilization_ratio{pool="api",source="app",target="db"} 0.4666666666666667
# HELP dbpool_pending_checkouts Callers waiting for a connection right now.
# TYPE dbpool_pending_checkouts gauge
dbpool_pending_checkouts{pool="api",source="app",target="db"} 3
# HELP dbpool_checkout_timeouts_total Checkouts that gave up waiting because the pool was exhausted.
# TYPE dbpool_checkout_timeouts_total counter
dbpool_checkout_timeouts_total{pool="api",source="app",target="db"} 4
# HELP dbpool_checkout_duration_seconds Time callers waited to check out a connection.
# TYPE dbpool_checkout_duration_seconds histogram
dbpool_checkout_duration_seconds_bucket{pool="api",source="app",target="db",le="0.001"} 4
dbpool_checkout_duration_seconds_bucket{pool="api",source="app",target="db",le="0.05"} 39
dbpool_checkout_duration_seconds_bucket{pool="api",source="app",target="db",le="30"} 43
dbpool_checkout_duration_seconds_bucket{pool="api",source="app",target="db",le="+Inf"} 43
dbpool_checkout_duration_seconds_sum{pool="api",source="app",target="db"} 6
dbpool_checkout_duration_seconds_count{pool="api",source="app",target="db"} 43
# HELP dbpool_pre_ping_failures_total Pre-pings (DB_POOL_PRE_PING) that found a connection dead before handing it out.
# TYPE dbpool_pre_ping_failures_total counter
dbpool_pre_ping_failures_total{pool="api",source="app",target="db"} 4
# HELP dbpool_connection_recycles_total Connections the pool replaced because they reached the recycle age (DB_POOL_RECYCLE).
# TYPE dbpool_connection_recycles_total counter
dbpool_connection_recycles_total{pool="api",source="app",target="db"} 8
# HELP dbpool_checkout_timeout_seconds Configured time a checkout may wait for a connection (DB_POOL_TIMEOUT); absent when it waits forever.
# TYPE dbpool_checkout_timeout_seconds gauge
dbpool_checkout_timeout_seconds{pool="api",source="app",target="db"} 0.5
# HELP dbpool_process_in_use_connections Connections one process of the pool group has checked out.
# TYPE dbpool_process_in_use_connections gauge
dbpool_process_in_use_connections{pool="api",process="a:1",source="app",target="db"} 2
dbpool_process_in_use_connections{pool="api",process="a:2",source="app",target="db"} 4
dbpool_process_in_use_connections{pool="api",process="b:1",source="app",target="db"} 1
# HELP dbpool_process_checkout_timeouts_total Checkouts of one process that gave up waiting because its pool was exhausted.
# TYPE dbpool_process_checkout_timeouts_total counter
dbpool_process_checkout_timeouts_total{pool="api",process="a:1",source="app",target="db"} 2
dbpool_process_checkout_timeouts_total{pool="api",process="a:2",source="app",target="db"} 0
dbpool_process_checkout_timeouts_total{pool="api",process="b:1",source="app",target="db"} 1
# HELP dbpool_process_checkout_duration_seconds Time callers of one process waited to check out a connection (_sum and _count only; the pool's histogram has the buckets).
# TYPE dbpool_process_checkout_duration_seconds histogram
dbpool_process_checkout_duration_seconds_bucket{pool="api",process="a:1",source="app",target="db",le="+Inf"} 10
dbpool_process_checkout_duration_seconds_sum{pool="api",process="a:1",source="app",target="db"} 1.5
dbpool_process_checkout_duration_seconds_count{pool="api",process="a:1",source="app",target="db"} 10
dbpool_process_checkout_duration_seconds_bucket{pool="api",process="a:2",source="app",target="db",le="+Inf"} 20
dbpool_process_checkout_duration_seconds_sum{pool="api",process="a:2",source="app",target="db"} 1.5
dbpool_process_checkout_duration_seconds_count{pool="api",process="a:2",source="app",target="db"} 20
dbpool_process_checkout_duration_seconds_bucket{pool="api",process="b:1",source="app",target="db",le="+Inf"} 5
dbpool_process_checkout_duration_seconds_sum{pool="api",process="b:1",source="app",target="db"} 1.5
dbpool_process_checkout_duration_seconds_count{pool="api",process="b:1",source="app",target="db"} 5
# HELP dbpool_up 1 if the exporter reached the target over its monitoring connection during this scrape.
# TYPE dbpool_up gauge
dbpool_up{target="db"} 0
# HELP dbpool_scrape_success 1 if the collector succeeded during this scrape.
# TYPE dbpool_scrape_success gauge
dbpool_scrape_success{collector="activity",target="db"} 0
dbpool_scrape_success{collector="app",target="db"} 1
dbpool_scrape_success{collector="pgxpool",target="db"} 1
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want),
		"dbpool_in_use_connections", "dbpool_open_connections", "dbpool_overflow_connections", "dbpool_connections",
		"dbpool_instances", "dbpool_max_connections", "dbpool_utilization_ratio", "dbpool_pending_checkouts",
		"dbpool_checkout_timeouts_total", "dbpool_checkout_duration_seconds", "dbpool_pre_ping_failures_total",
		"dbpool_connection_recycles_total", "dbpool_checkout_timeout_seconds", "dbpool_up", "dbpool_scrape_success",
		"dbpool_process_in_use_connections", "dbpool_process_checkout_timeouts_total", "dbpool_process_checkout_duration_seconds"); err != nil {
		t.Fatal(err)
	}
	testbin.LintClean(t, c)

	mu.Lock()
	defer mu.Unlock()
	if !strings.HasPrefix(auth[len(auth)-1], "Basic ") && !strings.HasPrefix(auth[len(auth)-2], "Basic ") {
		t.Errorf("the URL's user info was not sent as basic auth: %q", auth)
	}
	if strings.Contains(logs.String(), "app-Secret-99") || strings.Contains(logs.String(), "db-Secret-1") {
		t.Errorf("a password reached the log:\n%s", logs.String())
	}
}

// TestAppEndpointFailures: an endpoint that is down, answers an error, answers garbage or
// hangs fails the app source within the deadline, the log names it and says why, and the
// instances of the others still count.
func TestAppEndpointFailures(t *testing.T) {
	good := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, appDocJSON(appInstanceJSON("api", "g:1", 1, 0, 0, 1, 1, 0)))
	}))
	defer good.Close()
	failing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "worker restarting", http.StatusServiceUnavailable)
	}))
	defer failing.Close()
	redirect := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/dbpool/", http.StatusTemporaryRedirect)
	}))
	defer redirect.Close()
	garbage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, `{"format": "dbpool-stats", "version": 1, "instances": [{"instance": "x", "status": {"checked_out": -4}}]}`)
	}))
	defer garbage.Close()
	release := make(chan struct{})
	hanging := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer hanging.Close()
	defer close(release)
	down := "http://" + closedAddr(t) + "/dbpool"

	pools := []poolcfg.Pool{{Name: "api", Target: "db", Settings: poolcfg.DefaultSettings(), Instances: 1}}
	var logs bytes.Buffer
	tgt := newAppTarget(t, closedPortDSN(t), pools, []poolcfg.App{
		{Name: "good", URL: mustAppURL(t, good.URL), Pool: "api"},
		{Name: "failing", URL: mustAppURL(t, failing.URL), Pool: "api"},
		{Name: "garbage", URL: mustAppURL(t, garbage.URL), Pool: "api"},
		{Name: "redirect", URL: mustAppURL(t, redirect.URL+"/dbpool"), Pool: "api"},
		{Name: "hanging", URL: mustAppURL(t, hanging.URL), Pool: "api"},
		{Name: "down", URL: mustAppURL(t, down), Pool: "api"},
	}, &logs, func(o *PostgresOptions) { o.Probe = false })
	mfs := gatherWithin(t, tgt, 2*time.Second)
	if got := mustValue(t, mfs, "dbpool_scrape_success", map[string]string{"collector": "app"}); got != 0 {
		t.Errorf("dbpool_scrape_success{collector=app} = %v with five of six endpoints failing", got)
	}
	if got := mustValue(t, mfs, "dbpool_in_use_connections", map[string]string{"source": "app"}); got != 1 {
		t.Errorf("in use from the good endpoint = %v, want 1", got)
	}
	for app, want := range map[string]string{
		"failing": "HTTP 503 Service Unavailable", "redirect": "redirects are not followed", "garbage": "negative connection count",
		"down": "connection refused", "hanging": "context deadline exceeded",
	} {
		if !regexp.MustCompile(`level=WARN msg="app endpoint failed" target=db collector=app app=` + app + ` endpoint=127\.0\.0\.1:\d+ err=".*` + want).MatchString(logs.String()) {
			t.Errorf("log lacks the failure of %s, %q:\n%s", app, want, logs.String())
		}
		if got := mustValue(t, mfs, "dbpool_app_endpoint_up", map[string]string{"app": app}); got != 0 {
			t.Errorf("dbpool_app_endpoint_up{app=%q} = %v", app, got)
		}
	}
	if got := mustValue(t, mfs, "dbpool_app_endpoint_up", map[string]string{"app": "good", "endpoint": strings.TrimPrefix(good.URL, "http://")}); got != 1 {
		t.Errorf("dbpool_app_endpoint_up{app=good} = %v", got)
	}
	if strings.Contains(logs.String(), "app=good") {
		t.Errorf("the log blames the good endpoint:\n%s", logs.String())
	}
}

// TestAppEndpointListedTwice: one application reachable under two URLs reports the same
// processes twice; they are counted once.
func TestAppEndpointListedTwice(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, appDocJSON(appInstanceJSON("api", "h:1", 3, 0, 1, 3, 7, 0)))
	}))
	defer srv.Close()
	pools := []poolcfg.Pool{{Name: "api", Target: "db", Settings: poolcfg.DefaultSettings(), Instances: 1}}
	other := strings.Replace(srv.URL, "127.0.0.1", "localhost", 1)
	tgt := newAppTarget(t, closedPortDSN(t), pools, []poolcfg.App{
		{Name: "ip", URL: mustAppURL(t, srv.URL), Pool: "api"},
		{Name: "name", URL: mustAppURL(t, other), Pool: "api"},
	}, nil, func(o *PostgresOptions) { o.Probe = false })
	mfs := gatherWithin(t, tgt, 2*time.Second)
	app := map[string]string{"source": "app"}
	if in, n := mustValue(t, mfs, "dbpool_in_use_connections", app), mustValue(t, mfs, "dbpool_instances", app); in != 3 || n != 1 {
		t.Errorf("in use %v over %v instances, want the one process's 3 once", in, n)
	}
}

// TestAppTargetRefusals: an app of a pool on another target, and app endpoints without the
// counters that outlive the target, are refused.
func TestAppTargetRefusals(t *testing.T) {
	pools := []poolcfg.Pool{{Name: "api", Target: "db", Settings: poolcfg.DefaultSettings(), Instances: 1}}
	opts := DefaultPostgresOptions()
	opts.AppCounters = NewAppCounters()
	logger := slog.New(slog.DiscardHandler)
	_, err := NewPostgresTarget("db", mustDSN(t, closedPortDSN(t)), pools,
		[]poolcfg.App{{Name: "x", URL: mustAppURL(t, "http://127.0.0.1:1/"), Pool: "jobs"}}, opts, logger)
	if err == nil || !strings.Contains(err.Error(), `pool "jobs", which is not on this target`) {
		t.Errorf("foreign pool: err = %v", err)
	}
	opts.AppCounters = nil
	_, err = NewPostgresTarget("db", mustDSN(t, closedPortDSN(t)), pools,
		[]poolcfg.App{{Name: "x", URL: mustAppURL(t, "http://127.0.0.1:1/"), Pool: "api"}}, opts, logger)
	if err == nil || !strings.Contains(err.Error(), "app counters") {
		t.Errorf("no app counters: err = %v", err)
	}
}

// TestAppPoolCountersNeverFall: the pool's counters hold the last values of a process that
// missed a scrape, continue when it is back, fold in a process whose counters restarted, and
// keep a process gone for good; they never fall, so rate() sees no false reset.
func TestAppPoolCountersNeverFall(t *testing.T) {
	instance := func(name string, count, timeouts uint64) metrics.PoolStats {
		return metrics.PoolStats{Target: "db", Pool: "api", Source: metrics.SourceApp, Configured: true, Instances: 1,
			Open: 2, InUse: 1, States: map[string]int{metrics.StateCheckedOut: 1, metrics.StateCheckedIn: 1},
			Checkouts: &metrics.CheckoutStats{Count: count, DurationSeconds: float64(count) / 100,
				Buckets: map[float64]uint64{0.01: count / 2, 30: count}, Timeouts: &timeouts},
			Processes: []metrics.ProcessStats{{Process: name, InUse: 1, Open: 2}}}
	}
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	// A process that exited: its final counters, and the gauges of no pool.
	exited := func(name string, count, timeouts uint64) metrics.PoolStats {
		p := instance(name, count, timeouts)
		p.Open, p.InUse, p.States = 0, 0, map[string]int{metrics.StateCheckedOut: 0, metrics.StateCheckedIn: 0}
		p.Processes[0].InUse, p.Processes[0].Open = 0, 0
		return p
	}
	steps := []struct {
		name         string
		at           time.Duration
		instances    []metrics.PoolStats
		exited       []metrics.PoolStats
		count, tmo   uint64
		inUse, procs int
	}{
		{"two processes", 0, []metrics.PoolStats{instance("a", 10, 5), instance("b", 7, 3)}, nil, 17, 8, 2, 2},
		{"b's endpoint missed the scrape", 15 * time.Second, []metrics.PoolStats{instance("a", 12, 6)}, nil, 19, 9, 1, 1},
		{"b is back", 30 * time.Second, []metrics.PoolStats{instance("a", 12, 6), instance("b", 9, 4)}, nil, 21, 10, 2, 2},
		{"a restarted its counters under the same name", 45 * time.Second, []metrics.PoolStats{instance("a", 2, 1), instance("b", 9, 4)}, nil, 23, 11, 2, 2},
		// b exits after 3 more checkouts than the last scrape saw, d exits before any scrape
		// saw it: their final counters count, they are no instance, no process series.
		{"b and d exited", time.Minute, []metrics.PoolStats{instance("a", 2, 1)}, []metrics.PoolStats{exited("b", 12, 5), exited("d", 4, 1)}, 30, 13, 1, 1},
		{"the exited ones served again", 75 * time.Second, []metrics.PoolStats{instance("a", 3, 1)}, []metrics.PoolStats{exited("b", 12, 5), exited("d", 4, 1)}, 31, 13, 1, 1},
		// One endpoint still has a live, another already serves its final figures: live wins.
		{"a live and exited at once", 90 * time.Second, []metrics.PoolStats{instance("a", 4, 1)}, []metrics.PoolStats{exited("a", 5, 1)}, 32, 13, 1, 1},
		{"the exited files expired", 6 * time.Minute, []metrics.PoolStats{instance("a", 5, 1)}, nil, 33, 13, 1, 1},
		{"a and b gone for good, c new", 20 * time.Minute, []metrics.PoolStats{instance("c", 1, 0)}, nil, 34, 13, 1, 1},
		{"reported twice", 20*time.Minute + 15*time.Second, []metrics.PoolStats{instance("c", 3, 0), instance("c", 3, 0)}, nil, 36, 13, 1, 1},
	}
	c := NewAppCounters()
	var prevCount, prevTimeouts uint64
	for _, st := range steps {
		pools := c.merge("db", st.instances, st.exited, start.Add(st.at))
		if len(pools) != 1 || pools[0].Pool != "api" {
			t.Fatalf("%s: pools %+v", st.name, pools)
		}
		p := pools[0]
		got := p.Checkouts
		if got.Count != st.count || *got.Timeouts != st.tmo || p.InUse != st.inUse || len(p.Processes) != st.procs || p.Instances != st.procs {
			t.Errorf("%s: checkouts %d, timeouts %d, in use %d, %d processes, %d instances; want %d, %d, %d, %d",
				st.name, got.Count, *got.Timeouts, p.InUse, len(p.Processes), p.Instances, st.count, st.tmo, st.inUse, st.procs)
		}
		if got.Count < prevCount || *got.Timeouts < prevTimeouts {
			t.Errorf("%s: a counter fell: %d -> %d checkouts, %d -> %d timeouts", st.name, prevCount, got.Count, prevTimeouts, *got.Timeouts)
		}
		if got.Buckets[30] != got.Count || got.Buckets[0.01] > got.Buckets[30] {
			t.Errorf("%s: buckets %v do not add up to %d checkouts", st.name, got.Buckets, got.Count)
		}
		prevCount, prevTimeouts = got.Count, *got.Timeouts
	}
}
