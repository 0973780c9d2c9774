package e2e

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dbpool/dbpool_exporter/tools/pgtest"
	"github.com/dbpool/dbpool_exporter/tools/testbin"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testbin.Cleanup()
	os.Exit(code)
}

const (
	// quietPhase runs before any scenario starts. It is longer than the shortened `for:` of
	// the alerts that could fire on a healthy setup (5s), plus Alertmanager's group_wait, so
	// that a wrongly firing rule would have reached the webhook by its end.
	quietPhase = 10 * time.Second
	// alertDeadline bounds the wait for the scenarios' notifications. The slowest is the long
	// query: about 31s until it passes the 30s threshold, 2s of shortened `for:`, then
	// evaluation, group_wait and delivery.
	alertDeadline = 100 * time.Second

	runbookPrefix = "https://github.com/dbpool/dbpool_exporter/blob/main/docs/runbook.md#"
	// oldRunbookPrefix is the form from before the runbook moved out of README.md, accepted
	// while the rules change over (alerts/check.sh checks the anchors either way).
	oldRunbookPrefix = "https://github.com/dbpool/dbpool_exporter/blob/main/README.md#"
)

// scenario is one pool of the exporter's configuration and the poolsim process that loads it.
type scenario struct {
	pool                      string // pool label; poolsim's --app-name, so backends are <pool>-<i>
	size, overflow, instances int    // pool settings, the same in the exporter and in poolsim
	timeout                   string
	workload                  []string // poolsim flags that shape the load
	alert                     string   // alert expected for this pool; "" expects none
}

// scenarios run concurrently, each on its own pool of the target "main".
var scenarios = []scenario{
	// Saturated: 8 requests/s of 1s queries per instance want 8 connections, each instance
	// has 2+1: every connection is in an active query (the activity source counts only
	// non-idle sessions as in use) and the rest wait and time out. Utilization ~1 > 0.8.
	{pool: "saturated", size: 2, overflow: 1, instances: 2, timeout: "2s", alert: "DbPoolHighUtilization",
		workload: []string{"--rate=8", "--arrival=even", "--query-time=1s"}},
	// One 40s query at a time (--max-inflight=1 drops the requests that arrive meanwhile):
	// longer than the rule's 30s threshold, which the test does not change.
	{pool: "longquery", size: 2, overflow: 0, instances: 1, timeout: "30s", alert: "DbPoolLongQuery",
		workload: []string{"--rate=1", "--arrival=even", "--long-query-share=1", "--long-query-time=40s", "--max-inflight=1"}},
	// Six sessions that open a transaction and sit idle in it for longer than the test runs;
	// capacity 15 keeps utilization (6/15) below the utilization alert.
	{pool: "idletx", size: 10, overflow: 5, instances: 1, timeout: "30s", alert: "DbPoolIdleInTransaction",
		workload: []string{"--rate=10", "--arrival=even", "--idle-in-tx-share=1", "--idle-in-tx-time=10m", "--max-inflight=6"}},
	// A healthy pool: 2 requests/s of 20ms per instance, a few percent of its capacity. It
	// runs from the start, through the quiet phase, and must never alert.
	{pool: "quiet", size: 5, overflow: 5, instances: 2, timeout: "30s",
		workload: []string{"--rate=2", "--query-time=20ms"}},
}

// alertKey identifies a notification group: the route groups by these labels.
type alertKey struct{ alertname, target, pool string }

func keyOf(labels map[string]string) alertKey {
	return alertKey{labels["alertname"], labels["target"], labels["pool"]}
}

// tolerated are alerts that follow from a scenario by design, besides the one it is about.
// They may or may not fire within the test's time; any other alert fails the test.
var tolerated = map[alertKey]string{
	{"DbPoolOverflowHigh", "main", "saturated"}: "the saturated pool lives on all of its overflow connections",
}

// TestAlertsEndToEnd proves that the shipped alert rules fire from the exporter's real metrics
// and reach a receiver through Alertmanager: PostgreSQL, the exporter, poolsim, Prometheus and
// Alertmanager all run as real processes on loopback.
func TestAlertsEndToEnd(t *testing.T) {
	promBin := findBinary(t, "PROMETHEUS", "prometheus")
	amBin := findBinary(t, "ALERTMANAGER", "prometheus-alertmanager", "alertmanager")
	exporterBin := testbin.Exporter(t)
	poolsimBin := testbin.Poolsim(t)
	dir := t.TempDir() // first, so that it is removed after every process is gone

	// Two servers: "main" carries the scenarios, "replica" is stopped when they start.
	mainPG := pgtest.StartT(t, pgtest.Options{})
	replicaPG := pgtest.StartT(t, pgtest.Options{})
	monitorPW, appPW := randomPassword(t), randomPassword(t)
	for _, pg := range []*pgtest.Postgres{mainPG, replicaPG} {
		if err := pg.CreateRole("dbpool_monitor", monitorPW, false, "pg_monitor"); err != nil {
			t.Fatal(err)
		}
	}
	if err := mainPG.CreateRole("app", appPW, false); err != nil {
		t.Fatal(err)
	}

	hook := startWebhook(t)
	am, amAddr := startAlertmanager(t, amBin, dir, hook.URL)
	rulesFile, alertNames := writeShortRules(t, dir)

	exporterCfg := filepath.Join(dir, "exporter.yml")
	writeFile(t, exporterCfg, exporterConfig(mainPG.DSN("dbpool_monitor", monitorPW, ""), replicaPG.DSN("dbpool_monitor", monitorPW, "")))
	exporter, exporterAddr := startServer(t, dir, "exporter", exporterBin, nil, "/metrics", func(addr string) []string {
		return []string{
			"--web.listen-address=" + addr,
			"--config.file=" + exporterCfg,
			// Prometheus scrapes every second with a 1s timeout; the default 500ms offset
			// would leave the scrape only half of it.
			"--scrape.timeout-offset=200ms",
			"--log.level=info",
		}
	})
	prom := startPrometheus(t, promBin, dir, amAddr, exporterAddr)

	appDSN := mainPG.DSN("app", appPW, "")
	sims := map[string]*process{}
	startSim := func(s scenario) {
		args := append([]string{
			"--app-name=" + s.pool,
			"--instances=" + strconv.Itoa(s.instances),
			"--pool.size=" + strconv.Itoa(s.size),
			"--pool.max-overflow=" + strconv.Itoa(s.overflow),
			"--pool.timeout=" + s.timeout,
			"--report-interval=5s",
		}, s.workload...)
		// The DSN goes in the environment, not on the command line that ps shows.
		sims[s.pool] = startProcess(t, dir, "poolsim-"+s.pool, poolsimBin, []string{"DATABASE_URL=" + appDSN}, args...)
	}
	var quiet scenario
	for _, s := range scenarios {
		if s.alert == "" {
			quiet = s
		}
	}
	startSim(quiet)

	procs := func() []*process {
		ps := []*process{exporter, prom.proc, am}
		for _, name := range slices.Sorted(maps.Keys(sims)) {
			ps = append(ps, sims[name])
		}
		return ps
	}
	// On failure the state is dumped once, while every process still runs: by the failing
	// check where it can, else by this cleanup (which runs before the processes are stopped,
	// except the scenarios' poolsims, which start later).
	dumped := false
	diagnostics := func() string {
		dumped = true
		return dumpState(prom, exporterAddr, hook, procs())
	}
	t.Cleanup(func() {
		if t.Failed() && !dumped {
			t.Logf("state after the failure:\n%s", diagnostics())
		}
	})
	checkAlive := func() {
		t.Helper()
		for _, p := range procs() {
			if p.exited() {
				t.Fatalf("%s\n--- %s output (tail) ---\n%s", p.status(), p.name, p.logTail(30))
			}
		}
	}

	waitFor(t, "Prometheus scraping the exporter and sending to Alertmanager", checkAlive, func() string { return scrapeProblem(prom) })
	prom.loadRules(t, rulesFile)
	waitFor(t, "Prometheus evaluating the rules", checkAlive, func() string { return rulesProblem(prom, alertNames) })

	// Quiet phase: nothing but the quiet pool runs, both servers are up; nothing may alert.
	t.Logf("quiet phase: %v", quietPhase)
	quietEnd := time.Now().Add(quietPhase)
	for time.Now().Before(quietEnd) {
		checkAlive()
		if got, errs := hook.received(); len(got) > 0 || len(errs) > 0 {
			t.Fatalf("the webhook received notifications during the quiet phase, before any scenario started: %v %v\n%s", got, errs, diagnostics())
		}
		time.Sleep(500 * time.Millisecond)
	}
	if firing := filterAlerts(t, prom, func(a promAlert) bool { return a.State == "firing" }); len(firing) > 0 {
		t.Fatalf("alerts firing at the end of the quiet phase: %v\n%s", firing, diagnostics())
	}

	// Scenarios, all at once.
	start := time.Now()
	if err := replicaPG.Stop(); err != nil {
		t.Fatalf("stop the replica server: %v", err)
	}
	want := []alertKey{{"DbPoolExporterTargetDown", "replica", ""}}
	for _, s := range scenarios {
		if s.alert == "" {
			continue // the quiet pool, running since the start
		}
		startSim(s)
		want = append(want, alertKey{s.alert, "main", s.pool})
	}
	t.Logf("scenarios started; waiting up to %v for %v", alertDeadline, want)

	got := map[alertKey]receivedAlert{}
	for len(got) < len(want) {
		checkAlive()
		alerts, errs := hook.received()
		if len(errs) > 0 {
			t.Fatalf("the webhook could not decode notifications: %v", errs)
		}
		for _, a := range alerts {
			k := keyOf(a.Labels)
			if _, seen := got[k]; !seen && a.Status == "firing" && slices.Contains(want, k) {
				got[k] = a
				t.Logf("%v after %v", a, a.At.Sub(start).Round(100*time.Millisecond))
			}
		}
		if time.Since(start) > alertDeadline {
			var missing []alertKey
			for _, k := range want {
				if _, ok := got[k]; !ok {
					missing = append(missing, k)
				}
			}
			t.Fatalf("after %v, no firing notification for %v\n%s", alertDeadline, missing, diagnostics())
		}
		time.Sleep(250 * time.Millisecond)
	}

	for _, k := range want {
		checkNotification(t, k, got[k])
	}

	// Nothing else alerted: not the quiet pool, not the healthy target "main", not a pool
	// through a side effect of another scenario.
	alerts, _ := hook.received()
	for _, a := range alerts {
		k := keyOf(a.Labels)
		switch {
		case slices.Contains(want, k):
		case tolerated[k] != "":
			t.Logf("also received %v: %s", a, tolerated[k])
		default:
			t.Errorf("unexpected notification: %v (labels %v)", a, a.Labels)
		}
	}
	if pending := filterAlerts(t, prom, func(a promAlert) bool { return a.Labels["pool"] == quiet.pool }); len(pending) > 0 {
		t.Errorf("Prometheus has alerts for the quiet pool: %v", pending)
	}
	// The quiet pool did have connections, so "no alert" is not for want of data.
	if s, err := prom.query(fmt.Sprintf(`max_over_time(dbpool_open_connections{target="main",pool=%q}[5m]) > 0`, quiet.pool)); err != nil || len(s) == 0 {
		t.Errorf("Prometheus never saw connections of the quiet pool (err %v)", err)
	}
	if t.Failed() {
		t.Logf("state after the failures above:\n%s", diagnostics())
	}
}

// exporterConfig is the exporter's config file: both targets, one pool per scenario.
func exporterConfig(mainDSN, replicaDSN string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "targets:\n  - name: main\n    dsn: %q\n  - name: replica\n    dsn: %q\npools:\n", mainDSN, replicaDSN)
	for _, s := range scenarios {
		fmt.Fprintf(&b, `  - name: %s
    target: main
    match:
      application_name_regex: '%s-(?P<instance>[0-9]+)'
    pool_size: %d
    max_overflow: %d
    timeout: %s
    recycle: 3600
    instances: %d
`, s.pool, s.pool, s.size, s.overflow, s.timeout, s.instances)
	}
	return b.String()
}

// waitFor polls problem until it returns "" (ready), for at most 30s.
func waitFor(t *testing.T, what string, checkAlive func(), problem func() string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		checkAlive()
		p := problem()
		if p == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: not ready after 30s: %s", what, p)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// scrapeProblem says why Prometheus does not yet see both targets and the quiet pool, or
// cannot send alerts.
func scrapeProblem(prom *prometheus) string {
	ams, err := prom.activeAlertmanagers()
	if err != nil || len(ams) != 1 {
		return fmt.Sprintf("active Alertmanagers %v (err %v), want one", ams, err)
	}
	up, err := prom.query("dbpool_up == 1")
	if err != nil {
		return err.Error()
	}
	if len(up) != 2 {
		return fmt.Sprintf("dbpool_up == 1 has %d series, want 2 (main and replica)", len(up))
	}
	if s, err := prom.query(`dbpool_utilization_ratio{pool="quiet"}`); err != nil || len(s) != 1 {
		return fmt.Sprintf("no dbpool_utilization_ratio for the quiet pool yet (err %v)", err)
	}
	return ""
}

// rulesProblem says why Prometheus has not yet evaluated every shipped alert without error.
func rulesProblem(prom *prometheus, alertNames []string) string {
	rules, err := prom.rules()
	if err != nil {
		return err.Error()
	}
	loaded := map[string]bool{}
	for _, r := range rules {
		if r.Health != "ok" {
			return fmt.Sprintf("rule %s has health %q %s", r.Name, r.Health, r.LastError)
		}
		if r.Type == "alerting" {
			loaded[r.Name] = true
		}
	}
	for _, a := range alertNames {
		if !loaded[a] {
			return fmt.Sprintf("alert %s is not loaded", a)
		}
	}
	return ""
}

// checkNotification checks what a receiver needs to act on a firing alert: its labels and
// annotations with every template expanded.
func checkNotification(t *testing.T, k alertKey, a receivedAlert) {
	t.Helper()
	if a.Status != "firing" {
		t.Errorf("%v: status %q, want firing", k, a.Status)
	}
	if a.Labels["target"] != k.target || a.Labels["pool"] != k.pool {
		t.Errorf("%v: labels %v", k, a.Labels)
	}
	if sev := a.Labels["severity"]; sev != "warning" && sev != "critical" {
		t.Errorf("%v: severity %q, want warning or critical", k, sev)
	}
	for _, name := range []string{"summary", "description", "runbook_url"} {
		v := a.Annotations[name]
		switch {
		case strings.TrimSpace(v) == "":
			t.Errorf("%v: annotation %s is missing or empty (annotations %v)", k, name, a.Annotations)
		case strings.Contains(v, "{{") || strings.Contains(v, "<no value>") || strings.Contains(v, "error expanding"):
			t.Errorf("%v: annotation %s was not expanded: %q", k, name, v)
		}
	}
	if u := a.Annotations["runbook_url"]; !strings.HasPrefix(u, runbookPrefix) && !strings.HasPrefix(u, oldRunbookPrefix) {
		t.Errorf("%v: runbook_url %q does not start with %s", k, a.Annotations["runbook_url"], runbookPrefix)
	}
	// The texts name what is affected, so the receiver needs no other lookup.
	for _, name := range []string{"summary", "description"} {
		for _, want := range []string{k.target, k.pool} {
			if want != "" && !strings.Contains(a.Annotations[name], want) {
				t.Errorf("%v: annotation %s does not name %q: %q", k, name, want, a.Annotations[name])
			}
		}
	}
}

// filterAlerts returns Prometheus' alerts (pending or firing) for which keep is true.
func filterAlerts(t *testing.T, prom *prometheus, keep func(promAlert) bool) []promAlert {
	t.Helper()
	alerts, err := prom.alerts()
	if err != nil {
		t.Fatalf("Prometheus /api/v1/alerts: %v", err)
	}
	var out []promAlert
	for _, a := range alerts {
		if keep(a) {
			out = append(out, a)
		}
	}
	return out
}

// dumpState gathers what explains a missing or unexpected alert: Prometheus' alerts, the
// exporter's metrics, the notifications received and the processes' recent output.
func dumpState(prom *prometheus, exporterAddr string, hook *webhook, procs []*process) string {
	var b strings.Builder
	b.WriteString("=== Prometheus /api/v1/alerts\n")
	if code, body, err := httpGet("http://" + prom.addr + "/api/v1/alerts"); err != nil {
		fmt.Fprintf(&b, "    (%v)\n", err)
	} else {
		var pretty bytes.Buffer
		if json.Indent(&pretty, body, "", "  ") != nil {
			pretty.Reset()
			pretty.Write(body)
		}
		fmt.Fprintf(&b, "    HTTP %d\n%s", code, indent(pretty.String()))
	}
	b.WriteString("=== Prometheus scrape of the exporter\n")
	var targets struct {
		Active []struct {
			Health             string    `json:"health"`
			LastError          string    `json:"lastError"`
			LastScrape         time.Time `json:"lastScrape"`
			LastScrapeDuration float64   `json:"lastScrapeDuration"`
		} `json:"activeTargets"`
	}
	if err := prom.api("/api/v1/targets", nil, &targets); err != nil {
		fmt.Fprintf(&b, "    (%v)\n", err)
	}
	for _, tg := range targets.Active {
		fmt.Fprintf(&b, "    health %s, last scrape %s took %.3fs, last error %q\n", tg.Health, tg.LastScrape.Format("15:04:05.000"), tg.LastScrapeDuration, tg.LastError)
	}
	b.WriteString("=== exporter /metrics (dbpool_ series)\n")
	b.WriteString(indent(exporterMetrics(exporterAddr)))
	b.WriteString("=== webhook notifications\n")
	alerts, errs := hook.received()
	var lines []string
	for _, a := range alerts {
		lines = append(lines, a.String())
	}
	lines = append(lines, errs...)
	if len(lines) == 0 {
		lines = []string{"(none)"}
	}
	b.WriteString(indent(strings.Join(lines, "\n")))
	for _, p := range procs {
		fmt.Fprintf(&b, "=== %s (%s), output (tail)\n", p.name, map[bool]string{true: "exited", false: "running"}[p.exited()])
		b.WriteString(indent(p.logTail(15)))
	}
	return b.String()
}

func randomPassword(t *testing.T) string {
	t.Helper()
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}
