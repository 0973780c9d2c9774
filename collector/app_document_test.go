package collector

import (
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/dbpool/dbpool_exporter/internal/metrics"
)

// timedInstanceJSON is one instance as integrations/python writes it since hold time, connect
// time, failures by reason and leak detection were added (README's contract example), with
// leak detection on and one leaked connection.
const timedInstanceJSON = `{"pool": "api", "instance": "web-1:12345", "pid": 12345, "pool_class": "QueuePool", "collected_at": 1.1,
  "settings": {"pool_size": 10, "max_overflow": 20, "timeout_seconds": 30.0, "recycle_seconds": 3600, "pre_ping": true, "echo": false},
  "status": {"pool_size": 10, "max_overflow": 20, "checked_out": 3, "checked_in": 2, "overflow": -5, "total_connections": 5},
  "pending_checkouts": 0, "longest_checkout_wait_seconds": 0.0,
  "checkouts": {"count": 1234, "failed": 7, "sum_seconds": 0.789,
    "buckets": [{"le": 0.0005, "count": 900}, {"le": 0.001, "count": 1000}, {"le": 30, "count": 1234}],
    "timeouts": 2, "failures": {"timeout": 2, "connect": 5, "cancelled": 0, "other": 0}},
  "use_time": {"count": 1224, "sum_seconds": 61.2,
    "buckets": [{"le": 0.001, "count": 3}, {"le": 0.0025, "count": 40}, {"le": 60, "count": 1224}]},
  "create_time": {"count": 12, "failed": 5, "sum_seconds": 0.061,
    "buckets": [{"le": 0.001, "count": 5}, {"le": 0.0025, "count": 5}, {"le": 60, "count": 12}]},
  "held_connections": 3, "longest_held_seconds": 75.2,
  "leaks": {"threshold_seconds": 60.0, "count": 1,
    "sites": [{"file": "/app/api/users.py", "line": 42, "function": "get_user", "count": 1, "oldest_seconds": 75.2}]},
  "connects": 7, "invalidations": 1, "recycles": 0, "pre_ping_failures": 1, "soft_invalidations": 0, "closes": 2}`

// parseInstance runs one instance of a document through the parser as the app source does.
func parseInstance(body string) (metrics.PoolStats, error) {
	doc, err := parseAppDoc([]byte(appDocJSON(body)))
	if err != nil {
		return metrics.PoolStats{}, err
	}
	ins, _, err := selectInstances(doc, "")
	if err != nil {
		return metrics.PoolStats{}, err
	}
	if len(ins) != 1 {
		return metrics.PoolStats{}, fmt.Errorf("%d instances", len(ins))
	}
	return instanceStats(&ins[0])
}

func TestAppDocumentTimingsAndLeaks(t *testing.T) {
	u64 := func(v uint64) *uint64 { return &v }
	longName := "/srv/" + strings.Repeat("deep/", 200) + "handlers.py"
	tests := []struct {
		name string
		body string
		// what the sample must hold
		failures            map[string]uint64
		useTime, createTime *metrics.DurationStats
		openFailures        *uint64
		longestHeld         *float64
		leaks               *metrics.LeakStats
	}{
		{
			name:     "timings, failures and a leak",
			body:     timedInstanceJSON,
			failures: map[string]uint64{"timeout": 2, "connect": 5, "cancelled": 0, "other": 0},
			useTime:  &metrics.DurationStats{Count: 1224, SumSeconds: 61.2, Buckets: map[float64]uint64{0.001: 3, 0.0025: 40, 60: 1224}},
			createTime: &metrics.DurationStats{Count: 12, SumSeconds: 0.061,
				Buckets: map[float64]uint64{0.001: 5, 0.0025: 5, 60: 12}},
			openFailures: u64(5),
			longestHeld:  ptrTo(75.2),
			leaks: &metrics.LeakStats{ThresholdSeconds: 60, Instances: 1, Count: 1,
				Sites: []metrics.LeakSite{{File: "/app/api/users.py", Line: 42, Function: "get_user", Count: 1, OldestSeconds: 75.2}}},
		},
		{
			// dbpool_stats 0.4.0 and any integration that predates the fields: no series,
			// rather than made-up zeros.
			name: "an older integration",
			body: appInstanceJSON("api", "h:1", 1, 1, 0, 2, 5, 1),
		},
		{
			name: "leak detection off",
			body: strings.Replace(timedInstanceJSON, `"leaks": {"threshold_seconds": 60.0, "count": 1,
    "sites": [{"file": "/app/api/users.py", "line": 42, "function": "get_user", "count": 1, "oldest_seconds": 75.2}]}`,
				`"leaks": {"threshold_seconds": null, "count": null, "sites": []}`, 1),
			failures:     map[string]uint64{"timeout": 2, "connect": 5, "cancelled": 0, "other": 0},
			useTime:      &metrics.DurationStats{Count: 1224, SumSeconds: 61.2, Buckets: map[float64]uint64{0.001: 3, 0.0025: 40, 60: 1224}},
			createTime:   &metrics.DurationStats{Count: 12, SumSeconds: 0.061, Buckets: map[float64]uint64{0.001: 5, 0.0025: 5, 60: 12}},
			openFailures: u64(5),
			longestHeld:  ptrTo(75.2),
		},
		{
			// A reason added by a later integration is counted, as other: the label stays
			// bounded and the reasons still add up to failed.
			name: "a reason this exporter does not know",
			body: strings.Replace(timedInstanceJSON, `"failures": {"timeout": 2, "connect": 5, "cancelled": 0, "other": 0}`,
				`"failures": {"timeout": 2, "connect": 3, "cancelled": 0, "other": 1, "server_shutdown": 1}`, 1),
			failures:     map[string]uint64{"timeout": 2, "connect": 3, "cancelled": 0, "other": 2},
			useTime:      &metrics.DurationStats{Count: 1224, SumSeconds: 61.2, Buckets: map[float64]uint64{0.001: 3, 0.0025: 40, 60: 1224}},
			createTime:   &metrics.DurationStats{Count: 12, SumSeconds: 0.061, Buckets: map[float64]uint64{0.001: 5, 0.0025: 5, 60: 12}},
			openFailures: u64(5),
			longestHeld:  ptrTo(75.2),
			leaks: &metrics.LeakStats{ThresholdSeconds: 60, Instances: 1, Count: 1,
				Sites: []metrics.LeakSite{{File: "/app/api/users.py", Line: 42, Function: "get_user", Count: 1, OldestSeconds: 75.2}}},
		},
		{
			// A checkout with no frame of the application has a site without a place; a
			// name longer than anyone reads keeps its end.
			name: "a site without a place, one with a very long file name",
			body: `{"pool": "api", "instance": "h:1", "status": {"checked_out": 3, "checked_in": 0, "total_connections": 3},
  "held_connections": 3, "longest_held_seconds": 90,
  "leaks": {"threshold_seconds": 30, "count": 3, "sites": [
    {"file": null, "line": null, "function": null, "count": 1, "oldest_seconds": 31},
    {"file": "` + longName + `", "line": 7, "function": "f", "count": 2, "oldest_seconds": 90}]}}`,
			longestHeld: ptrTo(90.0),
			leaks: &metrics.LeakStats{ThresholdSeconds: 30, Instances: 1, Count: 3, Sites: []metrics.LeakSite{
				{File: "…" + longName[len(longName)-maxLeakSiteText+len("…"):], Line: 7, Function: "f", Count: 2, OldestSeconds: 90},
				{Count: 1, OldestSeconds: 31}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := parseInstance(tt.body)
			if err != nil {
				t.Fatal(err)
			}
			var failures map[string]uint64
			if p.Checkouts != nil {
				failures = p.Checkouts.Failures
			}
			var openFailures *uint64
			if p.Lifecycle != nil {
				openFailures = p.Lifecycle.OpenFailures
			}
			for _, c := range []struct {
				what      string
				got, want any
			}{
				{"failures", failures, tt.failures},
				{"use time", p.UseTime, tt.useTime},
				{"create time", p.CreateTime, tt.createTime},
				{"open failures", openFailures, tt.openFailures},
				{"longest held", p.LongestHeldSeconds, tt.longestHeld},
				{"leaks", p.Leaks, tt.leaks},
				{"the process's use time", p.Processes[0].UseTime, tt.useTime},
			} {
				if !reflect.DeepEqual(c.got, c.want) {
					t.Errorf("%s: %s, want %s", c.what, show(c.got), show(c.want))
				}
			}
			var leaked *int
			if tt.leaks != nil {
				leaked = &tt.leaks.Count
			}
			if got := p.Processes[0].Leaked; !reflect.DeepEqual(got, leaked) {
				t.Errorf("the process's leaked connections %s, want %s", show(got), show(leaked))
			}
			if s := p.Leaks; s != nil && len(s.Sites[0].File) > maxLeakSiteText {
				t.Errorf("a site's file of %d bytes is kept", len(s.Sites[0].File))
			}
		})
	}
}

// show prints a value behind a pointer, for messages.
func show(v any) string {
	r := reflect.ValueOf(v)
	if r.Kind() == reflect.Pointer {
		if r.IsNil() {
			return "nil"
		}
		return fmt.Sprintf("&%+v", r.Elem().Interface())
	}
	return fmt.Sprintf("%+v", v)
}

// TestAppDocumentRefusesImpossibleTimings: values that no pool can have refuse the instance,
// and the error says which field and why.
func TestAppDocumentRefusesImpossibleTimings(t *testing.T) {
	bad := func(old, new string) string {
		if !strings.Contains(timedInstanceJSON, old) {
			panic("not in the document: " + old)
		}
		return strings.Replace(timedInstanceJSON, old, new, 1)
	}
	const leaks = `"leaks": {"threshold_seconds": 60.0, "count": 1,
    "sites": [{"file": "/app/api/users.py", "line": 42, "function": "get_user", "count": 1, "oldest_seconds": 75.2}]}`
	tests := []struct{ name, body, want string }{
		{"failures above failed", bad(`"connect": 5`, `"connect": 6`), "checkouts.failures add up to 8, but checkouts.failed is 7"},
		{"timeout reason is not timeouts", bad(`"timeouts": 2, "failures": {"timeout": 2, "connect": 5`, `"timeouts": 2, "failures": {"timeout": 1, "connect": 6`),
			"checkouts.failures.timeout 1 differs from checkouts.timeouts 2"},
		{"failed above count", bad(`"count": 1234, "failed": 7`, `"count": 1234, "failed": 1235`), "checkouts.failed 1235 is more than its count 1234"},
		{"negative failure", bad(`"connect": 5`, `"connect": -5`), "not a dbpool-stats JSON document"},
		{"failures above count", `{"pool": "api", "instance": "h:1", "status": {"checked_out": 0},
  "checkouts": {"count": 3, "sum_seconds": 0.1, "buckets": [], "failures": {"timeout": 0, "connect": 4, "cancelled": 0, "other": 0}}}`,
			"checkouts.failures add up to 4, more than the 3 checkouts"},
		{"use_time buckets fall", bad(`{"le": 0.0025, "count": 40}`, `{"le": 0.0025, "count": 2}`), "use_time.buckets: le 0.0025 count 2 after le 0.001 count 3"},
		{"use_time bounds fall", bad(`{"le": 0.0025, "count": 40}`, `{"le": 0.0001, "count": 40}`), "use_time.buckets: le 0.0001"},
		{"use_time bucket above count", bad(`{"le": 60, "count": 1224}`, `{"le": 60, "count": 1225}`), "counts must be cumulative"},
		{"use_time +Inf bound", bad(`{"le": 60, "count": 1224}`, `{"le": 1e999, "count": 1224}`), "not a dbpool-stats JSON document"},
		{"use_time NaN sum", bad(`"sum_seconds": 61.2`, `"sum_seconds": NaN`), "not a dbpool-stats JSON document"},
		{"use_time negative sum", bad(`"sum_seconds": 61.2`, `"sum_seconds": -1`), "use_time.sum_seconds -1: must be a number of seconds"},
		{"negative use count", bad(`"use_time": {"count": 1224`, `"use_time": {"count": -1`), "not a dbpool-stats JSON document"},
		{"create_time failed above count", bad(`"count": 12, "failed": 5`, `"count": 12, "failed": 13`), "create_time.failed 13 is more than its count 12"},
		{"negative held", bad(`"held_connections": 3`, `"held_connections": -3`), "held_connections -3 is negative"},
		{"negative longest held", bad(`"longest_held_seconds": 75.2`, `"longest_held_seconds": -75.2`), "longest_held_seconds -75.2"},
		{"more leaks than held", bad(`"held_connections": 3`, `"held_connections": 0`), "leaks.count 1 is more than the 0 held connections"},
		{"negative leaks", bad(`"threshold_seconds": 60.0, "count": 1`, `"threshold_seconds": 60.0, "count": -1`), "leaks.count -1 is negative"},
		{"count without threshold", bad(`"threshold_seconds": 60.0`, `"threshold_seconds": null`), "both be null (detection off) or both be set"},
		{"zero threshold", bad(`"threshold_seconds": 60.0`, `"threshold_seconds": 0`), "leaks.threshold_seconds 0: must be a positive number"},
		{"sites while off", bad(leaks, `"leaks": {"threshold_seconds": null, "count": null, "sites": [{"file": "a.py", "line": 1, "function": "f", "count": 1, "oldest_seconds": 1}]}`),
			"leaks.sites while leaks.count is null"},
		{"sites above count", bad(`"function": "get_user", "count": 1`, `"function": "get_user", "count": 2`), "leaks.sites add up to more than leaks.count 1"},
		{"empty site", bad(`"function": "get_user", "count": 1`, `"function": "get_user", "count": 0`), "leaks.sites[0].count 0"},
		{"site younger than the threshold", bad(`"count": 1, "oldest_seconds": 75.2`, `"count": 1, "oldest_seconds": 5`), "leaks.sites[0].oldest_seconds 5"},
		{"negative line", bad(`"line": 42`, `"line": -42`), "leaks.sites[0].line -42 is negative"},
		{"line as text", bad(`"line": 42`, `"line": "42"`), "not a dbpool-stats JSON document"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseInstance(tt.body)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one containing %q", err, tt.want)
			}
		})
	}
}

// TestAppDocumentExited: the exited entries of the pool are read beside the live ones, those
// of other pools skipped, and one of a process that is also live is left out (a pid used
// again: the live one is newer).
func TestAppDocumentExited(t *testing.T) {
	doc, err := parseAppDoc([]byte(withExited(
		appDocJSON(appInstanceJSON("api", "h:1", 1, 1, 0, 2, 5, 1), appInstanceJSON("jobs", "h:1", 0, 1, -1, 1, 2, 0)),
		appInstanceJSON("api", "h:1", 0, 0, -2, 0, 3, 0), appInstanceJSON("api", "h:2", 0, 0, -2, 0, 9, 2), appInstanceJSON("jobs", "h:3", 0, 0, -2, 0, 1, 0))))
	if err != nil {
		t.Fatal(err)
	}
	live, exited, err := docSamples(doc, "api", "db", "api")
	if err != nil {
		t.Fatal(err)
	}
	names := func(ps []metrics.PoolStats) (out []string) {
		for _, p := range ps {
			out = append(out, fmt.Sprintf("%s %d", p.Processes[0].Process, p.Checkouts.Count))
		}
		return out
	}
	if got, want := names(live), []string{"h:1 5"}; !reflect.DeepEqual(got, want) {
		t.Errorf("live %v, want %v", got, want)
	}
	if got, want := names(exited), []string{"h:2 9"}; !reflect.DeepEqual(got, want) {
		t.Errorf("exited %v, want %v", got, want)
	}
	// An older integration's document has no exited entries.
	doc, _ = parseAppDoc([]byte(appDocJSON(appInstanceJSON("api", "h:1", 1, 1, 0, 2, 5, 1))))
	if _, exited, err := docSamples(doc, "", "db", "api"); err != nil || len(exited) != 0 {
		t.Errorf("exited %v, err %v, want none", exited, err)
	}
}
