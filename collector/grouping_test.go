package collector

import (
	"context"
	"errors"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/dbpool/dbpool_exporter/internal/metrics"
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
			rows: []activityRow{row("api-0", metrics.StateActive, 4), row("api-1", metrics.StateIdle, 1)},
			// api-0: 4 open, 2 over its pool_size; api-1: 1 open, none over.
			wantOverflow: 2, wantInUse: 4, wantSessions: true,
			wantStates: map[string]int{metrics.StateActive: 4, metrics.StateIdle: 1, metrics.StateIdleInTransaction: 0, metrics.StateIdleInTransactionAborted: 0},
		},
		{
			// One application_name for all instances: only the group total is known.
			name:         "no instance capture: lower bound from the group",
			pool:         withoutInstance,
			rows:         []activityRow{row("api", metrics.StateActive, 9), row("api", metrics.StateIdleInTransaction, 1)},
			wantOverflow: 10 - 4*2, wantInUse: 10, wantSessions: true,
			wantStates: map[string]int{metrics.StateActive: 9, metrics.StateIdle: 0, metrics.StateIdleInTransaction: 1, metrics.StateIdleInTransactionAborted: 0},
		},
		{
			name:         "hidden states: ages and zero states left out",
			pool:         withInstance,
			rows:         []activityRow{row("api-0", metrics.StateUnknown, 3), row("api-1", metrics.StateActive, 1)},
			wantOverflow: 1, wantInUse: 1, wantSessions: false,
			wantStates: map[string]int{metrics.StateUnknown: 3, metrics.StateActive: 1},
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

// fakeSource returns what scrape returns.
type fakeSource struct {
	name   string
	scrape func(context.Context) (Scraped, error)
}

func (f *fakeSource) Name() string                                { return f.name }
func (f *fakeSource) Scrape(ctx context.Context) (Scraped, error) { return f.scrape(ctx) }

// TestRunSources: a source that panics fails alone, and one that ignores its deadline
// counts as failed at the scrape's deadline, in the sources' order.
func TestRunSources(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	release := make(chan struct{})
	defer close(release)
	start := time.Now()
	results := runSources(ctx, []Source{
		&fakeSource{"boom", func(context.Context) (Scraped, error) { panic("bad label value") }},
		&fakeSource{"fine", func(context.Context) (Scraped, error) { return Scraped{Reached: true}, nil }},
		&fakeSource{"stuck", func(context.Context) (Scraped, error) { <-release; return Scraped{}, nil }},
	})
	if elapsed := time.Since(start); elapsed > 2*time.Second {
		t.Errorf("runSources took %v past a 500 ms deadline", elapsed)
	}
	if len(results) != 3 || results[0].name != "boom" || results[1].name != "fine" || results[2].name != "stuck" {
		t.Fatalf("results %+v", results)
	}
	if err := results[0].err; err == nil || !strings.Contains(err.Error(), "bad label value") {
		t.Errorf("panicking source: err = %v, want the panic as error", err)
	}
	if results[1].err != nil || !results[1].Reached {
		t.Errorf("other source: err = %v, reached %v", results[1].err, results[1].Reached)
	}
	if err := results[2].err; !errors.Is(err, context.DeadlineExceeded) || results[2].duration < 400*time.Millisecond {
		t.Errorf("stuck source: err = %v after %v, want the deadline", err, results[2].duration)
	}
}
