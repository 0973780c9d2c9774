package collector

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/dbpool/dbpool_exporter/internal/metrics"
	"github.com/dbpool/dbpool_exporter/poolcfg"
	"github.com/dbpool/dbpool_exporter/tools/pgtest"
	"github.com/dbpool/dbpool_exporter/tools/testbin"
)

func apiPool() poolcfg.Pool {
	return poolcfg.Pool{
		Name:      "api",
		Target:    "db",
		Match:     poolcfg.Matcher{ApplicationNameRegex: regexp.MustCompile(`^api-(?P<instance>[0-9]+)$`)},
		Settings:  poolcfg.Settings{PoolSize: 1, MaxOverflow: 2, Timeout: 30 * time.Second, Recycle: time.Hour, PrePing: true},
		Instances: 2,
	}
}

// TestActivityRealSessions creates every kind of session the activity source must tell apart
// on a real server and checks the exposition text.
func TestActivityRealSessions(t *testing.T) {
	pg := testServer(t, pgtest.Options{})
	ctx := context.Background()
	if err := pg.Exec(ctx, "CREATE TABLE locked (id int); GRANT ALL ON locked TO "+appRole); err != nil {
		t.Fatal(err)
	}

	// Pool "api", instance 0: one running query, one idle in transaction, one idle.
	sleeper := session(t, pg, "api-0")
	background(t, sleeper, "SELECT pg_sleep(60)")
	inTx := session(t, pg, "api-0")
	if _, err := inTx.Exec(ctx, "BEGIN; SELECT 1"); err != nil {
		t.Fatal(err)
	}
	session(t, pg, "api-0")
	// Instance 1: two idle connections.
	session(t, pg, "api-1")
	session(t, pg, "api-1")
	// Unmatched applications: a lock holder, a lock waiter and three idle batch jobs.
	locker := session(t, pg, "locker")
	if _, err := locker.Exec(ctx, "BEGIN; LOCK TABLE locked IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	waiter := session(t, pg, "waiter")
	background(t, waiter, "SELECT * FROM locked")
	for _, name := range []string{"batch-a", "batch-b", "batch-c"} {
		session(t, pg, name)
	}
	waitFor(t, pg, `SELECT count(*) FROM pg_stat_activity WHERE application_name = 'waiter' AND wait_event_type = 'Lock'`, 1)
	waitFor(t, pg, `SELECT count(*) FROM pg_stat_activity WHERE application_name = 'api-0' AND state = 'active'`, 1)

	tgt := newTestTarget(t, pg.DSN(monitorRole, monitorPassword, "postgres"), []poolcfg.Pool{apiPool()}, nil,
		func(o *PostgresOptions) { o.MaxApplications = 3 })
	exp := NewExporter([]*Target{tgt}, ExporterOptions{})
	// The exporter's own pool is sampled while the scrape uses it: its numbers vary.
	c := withoutOwnPool{exp.ScrapeCollector(context.Background())}

	// Three unmatched applications fit under the cap of 3 only as 2 + "application_name:other": the two
	// first by size then name (batch-a, batch-b) keep their name.
	want := `
# HELP dbpool_connections Open connections by state, a disjoint breakdown of dbpool_open_connections in the source's own state names.
# TYPE dbpool_connections gauge
dbpool_connections{pool="api",source="activity",state="active",target="db"} 1
dbpool_connections{pool="api",source="activity",state="idle",target="db"} 3
dbpool_connections{pool="api",source="activity",state="idle in transaction",target="db"} 1
dbpool_connections{pool="api",source="activity",state="idle in transaction (aborted)",target="db"} 0
dbpool_connections{pool="application_name:batch-a",source="activity",state="active",target="db"} 0
dbpool_connections{pool="application_name:batch-a",source="activity",state="idle",target="db"} 1
dbpool_connections{pool="application_name:batch-a",source="activity",state="idle in transaction",target="db"} 0
dbpool_connections{pool="application_name:batch-a",source="activity",state="idle in transaction (aborted)",target="db"} 0
dbpool_connections{pool="application_name:batch-b",source="activity",state="active",target="db"} 0
dbpool_connections{pool="application_name:batch-b",source="activity",state="idle",target="db"} 1
dbpool_connections{pool="application_name:batch-b",source="activity",state="idle in transaction",target="db"} 0
dbpool_connections{pool="application_name:batch-b",source="activity",state="idle in transaction (aborted)",target="db"} 0
dbpool_connections{pool="application_name:other",source="activity",state="active",target="db"} 1
dbpool_connections{pool="application_name:other",source="activity",state="idle",target="db"} 1
dbpool_connections{pool="application_name:other",source="activity",state="idle in transaction",target="db"} 1
dbpool_connections{pool="application_name:other",source="activity",state="idle in transaction (aborted)",target="db"} 0
# HELP dbpool_in_use_connections Connections checked out or busy; never counts idle ones. A lower bound for the activity source.
# TYPE dbpool_in_use_connections gauge
dbpool_in_use_connections{pool="api",source="activity",target="db"} 2
dbpool_in_use_connections{pool="application_name:batch-a",source="activity",target="db"} 0
dbpool_in_use_connections{pool="application_name:batch-b",source="activity",target="db"} 0
dbpool_in_use_connections{pool="application_name:other",source="activity",target="db"} 2
# HELP dbpool_lock_waiting_connections Connections waiting for a heavyweight lock.
# TYPE dbpool_lock_waiting_connections gauge
dbpool_lock_waiting_connections{pool="api",source="activity",target="db"} 0
dbpool_lock_waiting_connections{pool="application_name:batch-a",source="activity",target="db"} 0
dbpool_lock_waiting_connections{pool="application_name:batch-b",source="activity",target="db"} 0
dbpool_lock_waiting_connections{pool="application_name:other",source="activity",target="db"} 1
# HELP dbpool_max_connections Capacity of the pool group: instances x (pool size + max overflow).
# TYPE dbpool_max_connections gauge
dbpool_max_connections{pool="api",source="activity",target="db"} 6
# HELP dbpool_open_connections Connections the pool group has open (in use plus idle).
# TYPE dbpool_open_connections gauge
dbpool_open_connections{pool="api",source="activity",target="db"} 5
dbpool_open_connections{pool="application_name:batch-a",source="activity",target="db"} 1
dbpool_open_connections{pool="application_name:batch-b",source="activity",target="db"} 1
dbpool_open_connections{pool="application_name:other",source="activity",target="db"} 3
# HELP dbpool_overflow_connections Connections beyond the pool size: per instance max(0, open - pool size), summed.
# TYPE dbpool_overflow_connections gauge
dbpool_overflow_connections{pool="api",source="activity",target="db"} 3
# HELP dbpool_server_connections Client backends by state, the exporter's own excluded; unknown where the monitoring role may not see the state.
# TYPE dbpool_server_connections gauge
dbpool_server_connections{state="active",target="db"} 2
dbpool_server_connections{state="idle",target="db"} 6
dbpool_server_connections{state="idle in transaction",target="db"} 2
dbpool_server_connections{state="idle in transaction (aborted)",target="db"} 0
# HELP dbpool_server_activity_restricted 1 if the monitoring role lacks pg_read_all_stats (pg_monitor) and cannot see other roles' session states.
# TYPE dbpool_server_activity_restricted gauge
dbpool_server_activity_restricted{target="db"} 0
# HELP dbpool_utilization_ratio In-use connections over the pool group's capacity (0..1).
# TYPE dbpool_utilization_ratio gauge
dbpool_utilization_ratio{pool="api",source="activity",target="db"} 0.3333333333333333
# HELP dbpool_up 1 if the exporter reached the target over its monitoring connection during this scrape.
# TYPE dbpool_up gauge
dbpool_up{target="db"} 1
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want),
		"dbpool_connections", "dbpool_in_use_connections", "dbpool_lock_waiting_connections", "dbpool_max_connections",
		"dbpool_open_connections", "dbpool_overflow_connections", "dbpool_server_connections",
		"dbpool_server_activity_restricted", "dbpool_utilization_ratio", "dbpool_up"); err != nil {
		t.Error(err)
	}

	testbin.LintClean(t, c)

	mfs := gather(t, tgt, 10*time.Second)
	api := map[string]string{"pool": "api"}
	if v := mustValue(t, mfs, "dbpool_longest_query_seconds", api); v <= 0 || v > 120 {
		t.Errorf("longest query = %v s, want the running pg_sleep's age", v)
	}
	if v := mustValue(t, mfs, "dbpool_longest_idle_in_transaction_seconds", api); v <= 0 || v > 120 {
		t.Errorf("longest idle in transaction = %v s", v)
	}
	if v := mustValue(t, mfs, "dbpool_oldest_connection_seconds", api); v <= 0 {
		t.Errorf("oldest connection = %v s", v)
	}
	if v := mustValue(t, mfs, "dbpool_server_max_connections", nil); v != 100 {
		t.Errorf("max_connections = %v, want 100", v)
	}
	// Not observable from the server: absent, never a made-up zero. (The exporter's own
	// pgxpool, pool "dbpool_exporter", does have them.)
	for _, name := range []string{"dbpool_pending_checkouts", "dbpool_checkout_timeouts_total", "dbpool_checkout_duration_seconds"} {
		if _, ok := value(mfs, name, api); ok {
			t.Errorf("%s exported by the activity source", name)
		}
		if _, ok := value(mfs, name, map[string]string{"pool": metrics.OwnPool}); !ok {
			t.Errorf("%s missing for the exporter's own pool", name)
		}
	}
}

// TestActivityRestrictedRole: a role without pg_monitor sees other roles' sessions without
// state; the exporter says so in a metric and one warning that names the fix.
func TestActivityRestrictedRole(t *testing.T) {
	pg := testServer(t, pgtest.Options{})
	if err := pg.CreateRole("nobody", "nobody-Secret-1", false); err != nil {
		t.Fatal(err)
	}
	session(t, pg, "api-0")
	session(t, pg, "api-1")
	logs := &testbin.Buffer{}
	tgt := newTestTarget(t, pg.DSN("nobody", "nobody-Secret-1", "postgres"), []poolcfg.Pool{apiPool()}, logs, nil)
	for range 2 {
		mfs := gather(t, tgt, 10*time.Second)
		if v := mustValue(t, mfs, "dbpool_server_connections", map[string]string{"state": metrics.StateUnknown}); v != 2 {
			t.Errorf("unknown-state connections = %v, want 2", v)
		}
		if v := mustValue(t, mfs, "dbpool_server_activity_restricted", nil); v != 1 {
			t.Errorf("activity_restricted = %v, want 1", v)
		}
		if v := mustValue(t, mfs, "dbpool_open_connections", map[string]string{"pool": "api"}); v != 2 {
			t.Errorf("open = %v, want 2 (counts stay right, states are hidden)", v)
		}
		// Ages and per-state zeros cannot be known for hidden sessions: absent, not 0.
		for _, name := range []string{"dbpool_longest_query_seconds", "dbpool_longest_transaction_seconds",
			"dbpool_longest_idle_in_transaction_seconds", "dbpool_oldest_connection_seconds", "dbpool_lock_waiting_connections"} {
			if v, ok := value(mfs, name, map[string]string{"pool": "api"}); ok {
				t.Errorf("%s = %v for a pool whose sessions are hidden, want absent", name, v)
			}
		}
		for _, st := range []string{metrics.StateActive, metrics.StateIdle, metrics.StateIdleInTransaction} {
			if v, ok := value(mfs, "dbpool_connections", map[string]string{"pool": "api", "state": st}); ok {
				t.Errorf("dbpool_connections{state=%q} = %v with states hidden, want absent", st, v)
			}
			if v, ok := value(mfs, "dbpool_server_connections", map[string]string{"state": st}); ok {
				t.Errorf("dbpool_server_connections{state=%q} = %v with states hidden, want absent", st, v)
			}
		}
	}
	if n := strings.Count(logs.String(), "GRANT pg_monitor"); n != 1 {
		t.Errorf("warning naming GRANT pg_monitor logged %d times, want once; logs:\n%s", n, logs)
	}
	if strings.Contains(logs.String(), "nobody-Secret-1") {
		t.Error("password in logs")
	}
}

// TestActivityOwnSessionsExcluded: the exporter's monitoring and probe sessions never count.
func TestActivityOwnSessionsExcluded(t *testing.T) {
	pg := testServer(t, pgtest.Options{})
	tgt := newTestTarget(t, pg.DSN(monitorRole, monitorPassword, "postgres"), nil, nil, nil)
	for range 3 {
		mfs := gather(t, tgt, 10*time.Second)
		var total float64
		for _, s := range []string{metrics.StateActive, metrics.StateIdle, metrics.StateIdleInTransaction} {
			total += mustValue(t, mfs, "dbpool_server_connections", map[string]string{"state": s})
		}
		if total != 0 {
			t.Errorf("server connections = %v with only the exporter connected, want 0", total)
		}
	}
}
