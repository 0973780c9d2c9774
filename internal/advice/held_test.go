package advice

import (
	"slices"
	"strings"
	"testing"

	"github.com/dbpool/dbpool_exporter/internal/metrics"
)

// TestFailedCheckoutsAndLeaks: checkouts that failed to connect (or with another error) over
// the window, and connections leaked now, are warnings with a fix; timeouts and cancelled
// callers are not failed checkouts here, and leak detection with nothing leaked is quiet.
func TestFailedCheckoutsAndLeaks(t *testing.T) {
	app := withSource(pool(2, 1, 2), metrics.SourceApp)
	// Ten minutes of samples; failures counted by reason grow by 1 per sample from the second
	// on (40 samples: 40 failures of each reason that moves).
	withFailures := func(reasons ...string) Summary {
		return summarize(app, series(600, 15, func(i int) Sample {
			f := map[string]float64{}
			for _, r := range metrics.FailureReasons {
				f[r] = 0
			}
			for _, r := range reasons {
				f[r] = float64(i)
			}
			return Sample{InUse: 1, Open: 2, CheckoutsTotal: new(float64(10 * i)), CheckoutSecondsTotal: new(0.0), FailuresTotal: f}
		}))
	}
	quiet := withFailures()
	site := func(file string, line, count int, oldest float64) metrics.LeakSite {
		return metrics.LeakSite{File: file, Line: line, Function: "get_user", Count: count, OldestSeconds: oldest}
	}
	tests := []struct {
		name      string
		in        Input
		warnings  []string
		wantText  []string
		avoidText []string
	}{
		{"nothing failed, nothing leaked", Input{Pool: app, Summary: quiet,
			Leaks: &metrics.LeakStats{ThresholdSeconds: 60, Instances: 2, Count: 0, Sites: []metrics.LeakSite{}}}, nil, nil, nil},
		{"timeouts and cancelled callers only", Input{Pool: app, Summary: withFailures(metrics.FailureCancelled)}, nil, nil, nil},
		{"failed to connect", Input{Pool: app, Summary: withFailures(metrics.FailureConnect)}, []string{RuleCheckoutFailures},
			[]string{"40 checkouts failed to open a connection in the last 10m (server down, unreachable or refusing logins): 10% of 400 checkouts",
				"lower the average checkout time"}, []string{"another error"}},
		{"another error", Input{Pool: app, Summary: withFailures(metrics.FailureOther)}, []string{RuleCheckoutFailures},
			[]string{"40 checkouts failed with an error other than a timeout"}, []string{"open a connection"}},
		{"both", Input{Pool: app, Summary: withFailures(metrics.FailureConnect, metrics.FailureOther)}, []string{RuleCheckoutFailures},
			[]string{"40 checkouts failed to open a connection (server down, unreachable or refusing logins) and 40 with another error", "20% of 400"}, nil},
		{"leaks in every instance", Input{Pool: app, Summary: quiet, Leaks: &metrics.LeakStats{ThresholdSeconds: 60, Instances: 2, Count: 3,
			Sites: []metrics.LeakSite{site("/srv/api/users.py", 42, 2, 75.25), site("/srv/api/orders.py", 7, 1, 90)}}},
			[]string{RuleConnectionLeak},
			[]string{"3 connections have been held longer than the leak threshold of 60 s, the oldest for 90 s; 2 checked out at /srv/api/users.py:42 in get_user, and from 1 more place (leaks.sites)",
				"async with AsyncSessionLocal() as session:"},
			[]string{"leak detection is on in"}},
		{"leaks where half the instances detect them, from no place of the application", Input{Pool: app, Summary: quiet,
			Leaks: &metrics.LeakStats{ThresholdSeconds: 30, Instances: 1, Count: 1, Sites: []metrics.LeakSite{{Count: 1, OldestSeconds: 31}}}},
			[]string{RuleConnectionLeak},
			[]string{"(leak detection is on in 1 of 2 instances); 1 checked out at a place outside the application's code"}, []string{"more place"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := PoolHealth(tt.in, DefaultThresholds())
			if got := rules(h.Warnings); !slices.Equal(got, append([]string{}, tt.warnings...)) {
				t.Fatalf("warnings %v, want %v\n%s", got, tt.warnings, messages(h.Warnings))
			}
			if got := rules(h.Recommendations); !slices.Equal(got, append([]string{}, tt.warnings...)) {
				t.Errorf("recommendations %v, want a fix for each warning %v", got, tt.warnings)
			}
			text := messages(h.Warnings) + messages(h.Recommendations)
			for _, w := range tt.wantText {
				if !strings.Contains(text, w) {
					t.Errorf("lacks %q:\n%s", w, text)
				}
			}
			for _, w := range tt.avoidText {
				if strings.Contains(text, w) {
					t.Errorf("says %q:\n%s", w, text)
				}
			}
		})
	}
}
