package collector

import (
	"context"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dbpool/dbpool_exporter/poolcfg"
)

// TestGroupActivity checks the pure grouping of pg_stat_activity rows into pools: overflow
// per instance, the lower-bound fallback, and hidden states.
func TestGroupActivity(t *testing.T) {
	settings := poolcfg.Settings{PoolSize: 2, MaxOverflow: 3, Timeout: time.Second}
	withInstance := poolcfg.Pool{Name: "api", Settings: settings, Instances: 4,
		Match: poolcfg.Matcher{ApplicationNameRegex: regexp.MustCompile(`^api-(?P<instance>[0-9]+)$`)}}
	withoutInstance := poolcfg.Pool{Name: "api", Settings: settings, Instances: 4,
		Match: poolcfg.Matcher{ApplicationName: "api"}}
	row := func(app, state string, n int) activityRow {
		return activityRow{applicationName: app, user: "app", database: "db", state: state, connections: n,
			longestQuery: 1, oldestConnection: 5, clientAddr: netip.MustParseAddr("10.0.0.1")}
	}
	for _, tc := range []struct {
		name         string
		pool         poolcfg.Pool
		rows         []activityRow
		wantOverflow int
		wantInUse    int
		wantSessions bool
		wantStates   map[string]int
	}{
		{
			// Only 2 of 4 instances are up (a rollout, autoscaling): still per instance.
			name: "instance capture, fewer instances seen than configured",
			pool: withInstance,
			rows: []activityRow{row("api-0", StateActive, 4), row("api-1", StateIdle, 1)},
			// api-0: 4 open, 2 over its pool_size; api-1: 1 open, none over.
			wantOverflow: 2, wantInUse: 4, wantSessions: true,
			wantStates: map[string]int{StateActive: 4, StateIdle: 1, StateIdleInTransaction: 0, StateIdleInTransactionAborted: 0},
		},
		{
			// One application_name for all instances: only the group total is known.
			name:         "no instance capture: lower bound from the group",
			pool:         withoutInstance,
			rows:         []activityRow{row("api", StateActive, 9), row("api", StateIdleInTransaction, 1)},
			wantOverflow: 10 - 4*2, wantInUse: 10, wantSessions: true,
			wantStates: map[string]int{StateActive: 9, StateIdle: 0, StateIdleInTransaction: 1, StateIdleInTransactionAborted: 0},
		},
		{
			name:         "hidden states: ages and zero states left out",
			pool:         withInstance,
			rows:         []activityRow{row("api-0", StateUnknown, 3), row("api-1", StateActive, 1)},
			wantOverflow: 1, wantInUse: 1, wantSessions: false,
			wantStates: map[string]int{StateUnknown: 3, StateActive: 1},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sample := groupActivity("db", []poolcfg.Pool{tc.pool}, tc.rows, 10)
			if len(sample.pools) != 1 {
				t.Fatalf("got %d pools, want 1: %+v", len(sample.pools), sample.pools)
			}
			p := sample.pools[0]
			if p.Overflow != tc.wantOverflow || p.InUse != tc.wantInUse {
				t.Errorf("overflow %d in use %d, want %d %d", p.Overflow, p.InUse, tc.wantOverflow, tc.wantInUse)
			}
			if (p.Sessions != nil) != tc.wantSessions {
				t.Errorf("sessions present = %v, want %v", p.Sessions != nil, tc.wantSessions)
			}
			if len(p.States) != len(tc.wantStates) {
				t.Errorf("states %v, want %v", p.States, tc.wantStates)
			}
			for st, n := range tc.wantStates {
				if got, ok := p.States[st]; !ok || got != n {
					t.Errorf("state %q = %d (present %v), want %d", st, got, ok, n)
				}
			}
		})
	}
}

// TestRunJobsRecoversPanics: a collector that panics fails its own job, not the daemon.
func TestRunJobsRecoversPanics(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	results := runJobs(ctx, []job{
		{name: "boom", run: func(context.Context) ([]prometheus.Metric, []PoolStats, error) { panic("bad label value") }},
		{name: "fine", run: func(context.Context) ([]prometheus.Metric, []PoolStats, error) { return nil, nil, nil }},
	})
	if len(results) != 2 {
		t.Fatalf("got %d results", len(results))
	}
	if err := results[0].err; err == nil || !strings.Contains(err.Error(), "bad label value") {
		t.Errorf("panicking job: err = %v, want the panic as error", err)
	}
	if results[1].err != nil {
		t.Errorf("other job: err = %v", results[1].err)
	}
}
