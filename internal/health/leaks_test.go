package health

import (
	"io"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dbpool/dbpool_exporter/collector"
	"github.com/dbpool/dbpool_exporter/internal/advice"
	"github.com/dbpool/dbpool_exporter/internal/metrics"
)

// TestLeaksAndFailedCheckoutsReported: the application's leaked connections, with the places
// that took them, reach the pool's report (API and page) beside the server's idle-in-transaction
// count, with a connection_leak warning; checkouts that failed to connect are a warning and
// stand next to the average checkout. When nothing leaks any more the warning goes, and with
// detection off the leaks are null, not 0.
func TestLeaksAndFailedCheckoutsReported(t *testing.T) {
	c := newClock()
	m := NewManager(Options{Window: time.Minute, Now: c.now})
	server := activityPool("db", "api", 5, 10, 2, 1)
	server.States[metrics.StateIdleInTransaction] = 2
	evil := `/srv/app/<script>alert(1)</script>.py`
	leaks := &metrics.LeakStats{ThresholdSeconds: 1, Instances: 2, Count: 3, Sites: []metrics.LeakSite{
		{File: "/srv/app/handlers.py", Line: 12, Function: "get_user", Count: 2, OldestSeconds: 75.5},
		{File: evil, Line: 3, Function: "<lambda>", Count: 1, OldestSeconds: 2}}}
	observe := func(connectFailures uint64, l *metrics.LeakStats) {
		app := appPool("db", "api", 5, 10, 2, 3)
		app.Checkouts.Count = 100 + 10*connectFailures
		app.Checkouts.Failures = map[string]uint64{metrics.FailureTimeout: 2, metrics.FailureConnect: connectFailures,
			metrics.FailureCancelled: 0, metrics.FailureOther: 0}
		app.Leaks = l
		m.Observe(collector.Result{Pools: []metrics.PoolStats{server, app}})
		c.add(time.Second)
	}
	for i := range 3 {
		observe(uint64(6*i), leaks)
	}
	leaks.Sites[0].Count = 99 // the report holds its own copy

	r, err := m.Find("db", "api")
	if err != nil {
		t.Fatal(err)
	}
	if r.Health.Leaks == nil || r.Health.Leaks.Sites[0].Count != 2 || r.Health.Leaks.Count != 3 {
		t.Fatalf("leaks %+v, want the latest sample's 3 (2 from handlers.py)", r.Health.Leaks)
	}
	if r.State != StateWarning || !slices.Contains(r.StateReasons, advice.RuleConnectionLeak) || !slices.Contains(r.StateReasons, advice.RuleCheckoutFailures) {
		t.Errorf("state %s %v, want a warning for the leak and the failed checkouts", r.State, r.StateReasons)
	}
	for _, rule := range []string{advice.RuleConnectionLeak, advice.RuleCheckoutFailures, advice.RuleIdleInTransaction} {
		if !hasFinding(r.Health.Warnings, rule, "") {
			t.Errorf("no %s warning: %+v", rule, r.Health.Warnings)
		}
	}
	for rule, want := range map[string]string{
		advice.RuleConnectionLeak:   "3 connections have been held longer than the leak threshold of 1 s, the oldest for 75.5 s; 2 checked out at /srv/app/handlers.py:12 in get_user, and from 1 more place",
		advice.RuleCheckoutFailures: "12 checkouts failed to open a connection",
	} {
		if !hasFinding(r.Health.Warnings, rule, want) {
			t.Errorf("no %s warning says %q: %+v", rule, want, r.Health.Warnings)
		}
	}

	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	get := func(path string) string {
		resp, err := srv.Client().Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	for _, path := range []string{"/api/v1/pools", "/api/v1/health?pool=api"} {
		body := get(path)
		for _, want := range []string{`"leaks": {`, `"threshold_seconds": 1,`, `"instances": 2,`, `"file": "/srv/app/handlers.py",`,
			`"line": 12,`, `"function": "get_user",`, `"oldest_seconds": 75.5`, `"rule": "connection_leak"`, `"rule": "idle_in_transaction"`} {
			if !strings.Contains(body, want) {
				t.Errorf("%s lacks %s:\n%s", path, want, body)
			}
		}
	}
	page := get("/pools")
	// The leak and the server's idle-in-transaction count stand together, the places folded
	// under the leak; the leaked count and the failed checkouts are key figures.
	for _, want := range []string{`<h3>Leaked connections <span class="n">2</span></h3>`, `data-rule="connection_leak"`, `data-rule="idle_in_transaction"`,
		"<code>/srv/app/handlers.py:12</code>", "<code>get_user</code>", `data-key="health.leaks.sites.0.oldest_seconds" data-value="75.5">75.5</span> s`,
		`data-key="health.leaks.count" data-value="3">3<`, `data-key="window.failures.connect" data-value="12">12</span> connect`,
		"/srv/app/&lt;script&gt;alert(1)&lt;/script&gt;.py:3"} {
		if !strings.Contains(page, want) {
			t.Errorf("the page lacks %q", want)
		}
	}
	if strings.Contains(page, "<script") {
		t.Error("a leak site's file name reached the page unescaped")
	}

	// Every leaked connection returned: the warning goes, the leak section too.
	observe(12, &metrics.LeakStats{ThresholdSeconds: 1, Instances: 2, Count: 0, Sites: []metrics.LeakSite{}})
	r, _ = m.Find("db", "api")
	if hasFinding(r.Health.Warnings, advice.RuleConnectionLeak, "") || r.Health.Leaks == nil || r.Health.Leaks.Count != 0 {
		t.Errorf("after the leaks were returned: leaks %+v, warnings %+v", r.Health.Leaks, r.Health.Warnings)
	}
	if page := get("/pools"); strings.Contains(page, `data-rule="connection_leak"`) || !strings.Contains(page, `data-key="health.leaks.count" data-value="0"`) {
		t.Error("the page still has a leak finding with nothing leaked, or no leaked count of 0")
	}
	// Detection off: not observed, which the JSON says with null.
	observe(12, nil)
	r, _ = m.Find("db", "api")
	if r.Health.Leaks != nil {
		t.Errorf("leaks %+v with detection off, want null", r.Health.Leaks)
	}
	if body := get("/api/v1/health?pool=api"); !strings.Contains(body, `"leaks": null`) {
		t.Errorf("/api/v1/health lacks \"leaks\": null:\n%s", body)
	}
}

// TestCloneLeaks: the report's leaks share nothing with the sample they came from.
func TestCloneLeaks(t *testing.T) {
	in := &metrics.LeakStats{ThresholdSeconds: 5, Instances: 1, Count: 1, Sites: []metrics.LeakSite{{File: "a.py", Line: 1, Count: 1, OldestSeconds: 6}}}
	out := cloneLeaks(in)
	if !reflect.DeepEqual(in, out) {
		t.Fatalf("clone %+v of %+v", out, in)
	}
	in.Sites[0].Count = 2
	if out.Sites[0].Count != 1 {
		t.Error("the clone shares its sites")
	}
	if cloneLeaks(nil) != nil {
		t.Error("no leaks cloned into some")
	}
}
