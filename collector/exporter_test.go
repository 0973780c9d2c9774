package collector

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/dbpool/dbpool_exporter/poolcfg"
	"github.com/dbpool/dbpool_exporter/tools/pgtest"
	"github.com/dbpool/dbpool_exporter/tools/testbin"
)

// monitorBackendsQuery counts the exporter's long-lived monitoring sessions on a server.
const monitorBackendsQuery = `SELECT count(*) FROM pg_stat_activity WHERE application_name = 'dbpool_exporter'`

// fleetTargets starts n servers and returns a function that builds one target per server
// from a YAML file that lists them as host DSNs with an auth module, as a fleet's
// configuration would.
func fleetTargets(t *testing.T, n int, mutate func(*PostgresOptions)) ([]*pgtest.Postgres, func() []*Target) {
	t.Helper()
	servers := make([]*pgtest.Postgres, n)
	for i := range n {
		servers[i] = testServer(t, pgtest.Options{})
	}
	var yaml strings.Builder
	fmt.Fprintf(&yaml, "auth_modules:\n  monitor:\n    user: %s\n    password: %q\n    options: {sslmode: disable}\ntargets:\n", monitorRole, monitorPassword)
	for i, pg := range servers {
		fmt.Fprintf(&yaml, "  - name: db%d\n    dsn: postgres://%s:%d/postgres\n    auth_module: monitor\n", i, pg.Host, pg.Port)
	}
	cfg, err := poolcfg.ParseWithDefaults([]byte(yaml.String()), "fleet.yml", poolcfg.DefaultSettings())
	if err != nil {
		t.Fatal(err)
	}
	opts := DefaultPostgresOptions()
	if mutate != nil {
		mutate(&opts)
	}
	logger := slog.New(slog.DiscardHandler)
	return servers, func() []*Target {
		var targets []*Target
		for _, tc := range cfg.Targets {
			if strings.Contains(tc.DSN.String(), monitorPassword) {
				t.Fatalf("the combined DSN does not redact: %s", tc.DSN)
			}
			pt, err := NewPostgresTarget(tc.Name, tc.DSN, nil, nil, opts, logger)
			if err != nil {
				t.Fatal(err)
			}
			targets = append(targets, pt)
		}
		return targets
	}
}

func targetGather(t *testing.T, e *Exporter, name string) map[string]*dto.MetricFamily {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := e.TargetCollector(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	return testbin.Gather(t, c)
}

// targetLabels returns the values of the target label over all series.
func targetLabels(mfs map[string]*dto.MetricFamily) map[string]bool {
	seen := map[string]bool{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "target" {
					seen[l.GetValue()] = true
				}
			}
		}
	}
	return seen
}

// TestScrapeTargetFleet: a scrape of one target touches exactly one server; an idle target
// closes its monitoring connection and reconnects on its next scrape; beyond the cap, the
// least recently used target is disconnected first.
func TestScrapeTargetFleet(t *testing.T) {
	servers, targets := fleetTargets(t, 3, func(o *PostgresOptions) { o.Probe = false })
	fleet := NewFleetMetrics(nil)
	e := NewExporter(targets(), ExporterOptions{MaxConnectedTargets: 2, Fleet: fleet})
	fleet.exporter = func() *Exporter { return e }
	defer e.Close()

	// A scrape of one target touches one server.
	mfs := targetGather(t, e, "db1")
	if v := mustValue(t, mfs, "dbpool_up", map[string]string{"target": "db1"}); v != 1 {
		t.Fatalf("dbpool_up{target=db1} = %v", v)
	}
	if got := targetLabels(mfs); len(got) != 1 || !got["db1"] {
		t.Errorf("scrape of db1 returned series of targets %v", got)
	}
	waitFor(t, servers[1], monitorBackendsQuery, 1)
	waitFor(t, servers[0], monitorBackendsQuery, 0)
	waitFor(t, servers[2], monitorBackendsQuery, 0)
	if n := e.ConnectedTargets(); n != 1 {
		t.Errorf("connected targets = %d, want 1", n)
	}

	// Cap 2: db1, db0, then db2 disconnects db1, the least recently used.
	time.Sleep(10 * time.Millisecond) // distinct last-use times
	targetGather(t, e, "db0")
	time.Sleep(10 * time.Millisecond)
	targetGather(t, e, "db2")
	waitFor(t, servers[1], monitorBackendsQuery, 0)
	waitFor(t, servers[0], monitorBackendsQuery, 1)
	waitFor(t, servers[2], monitorBackendsQuery, 1)
	if n := e.ConnectedTargets(); n != 2 {
		t.Errorf("connected targets after the cap = %d, want 2", n)
	}
	if err := testutil.CollectAndCompare(fleet, strings.NewReader(`
# HELP dbpool_exporter_connected_targets Targets that hold or may hold monitoring connections: scraped, and not disconnected since for being idle (--target.idle-timeout) or over the cap (--target.max-connected).
# TYPE dbpool_exporter_connected_targets gauge
dbpool_exporter_connected_targets 2
# HELP dbpool_exporter_target_disconnects_total Targets whose monitoring connections were closed, by reason: idle (not scraped for --target.idle-timeout) or cap (least recently used when a /probe scrape needed a connection beyond --target.max-connected).
# TYPE dbpool_exporter_target_disconnects_total counter
dbpool_exporter_target_disconnects_total{reason="cap"} 1
dbpool_exporter_target_disconnects_total{reason="idle"} 0
`), "dbpool_exporter_connected_targets", "dbpool_exporter_target_disconnects_total"); err != nil {
		t.Error(err)
	}
	testbin.LintClean(t, fleet)
	e.Close()
	for _, pg := range servers {
		waitFor(t, pg, monitorBackendsQuery, 0)
	}

	// Idle: nothing scrapes for longer than the idle timeout; both backends go.
	e = NewExporter(targets(), ExporterOptions{IdleTimeout: time.Second, Fleet: fleet})
	defer e.Close()
	targetGather(t, e, "db0")
	targetGather(t, e, "db2")
	waitFor(t, servers[0], monitorBackendsQuery, 0)
	waitFor(t, servers[2], monitorBackendsQuery, 0)
	if n := e.ConnectedTargets(); n != 0 {
		t.Errorf("connected targets after the idle timeout = %d, want 0", n)
	}
	// The next scrape reconnects.
	if v := mustValue(t, targetGather(t, e, "db0"), "dbpool_up", map[string]string{"target": "db0"}); v != 1 {
		t.Errorf("dbpool_up after reconnecting = %v", v)
	}
	waitFor(t, servers[0], monitorBackendsQuery, 1)
	if v, _ := value(gatherFleet(t, fleet), "dbpool_exporter_target_disconnects_total", map[string]string{"reason": "idle"}); v != 2 {
		t.Errorf("idle disconnects = %v, want 2", v)
	}
}

func gatherFleet(t *testing.T, fleet *FleetMetrics) map[string]*dto.MetricFamily {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(fleet)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

// TestUnknownTargetDoesNotConnect: an unknown name is refused before anything dials; the
// listener behind the configured target sees no connection until that target is scraped.
func TestUnknownTargetDoesNotConnect(t *testing.T) {
	addr, accepted := testbin.SilentListener(t)
	tgt := newTestTarget(t, fmt.Sprintf("postgres://u:ListenerS3cret@%s/db?sslmode=disable&connect_timeout=1", addr), nil, nil, nil)
	e := NewExporter([]*Target{tgt}, ExporterOptions{})
	for _, name := range []string{"", "nope", "DB", "postgres://u:p@h/db"} {
		if _, err := e.ScrapeTarget(context.Background(), name); !errors.Is(err, ErrUnknownTarget) {
			t.Errorf("ScrapeTarget(%q) = %v, want ErrUnknownTarget", name, err)
		}
		if _, err := e.TargetCollector(context.Background(), name); !errors.Is(err, ErrUnknownTarget) {
			t.Errorf("TargetCollector(%q) = %v, want ErrUnknownTarget", name, err)
		}
	}
	time.Sleep(100 * time.Millisecond)
	if n := accepted.Load(); n != 0 {
		t.Fatalf("unknown targets made %d connection attempts", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if _, err := e.ScrapeTarget(ctx, "db"); err != nil {
		t.Fatal(err)
	}
	if n := accepted.Load(); n == 0 {
		t.Error("scraping the configured target did not reach its listener: the counter is broken")
	}
}

// fakeTarget is a Target whose one source counts its scrapes (and, with block, waits for
// it to close); releases and closes are counted too.
type fakeTarget struct {
	*Target
	scrapes, releases, closes atomic.Int64
}

func newFakeTarget(name string, block chan struct{}) *fakeTarget {
	f := &fakeTarget{}
	source := &fakeSource{name: "fake", scrape: func(context.Context) (Scraped, error) {
		f.scrapes.Add(1)
		if block != nil {
			<-block
		}
		return Scraped{Reached: true}, nil
	}}
	f.Target = newTarget(name, []Source{source}, func() { f.releases.Add(1) }, func() { f.closes.Add(1) }, slog.New(slog.DiscardHandler))
	return f
}

// TestExporterLRU: the cap disconnects the least recently used idle target, never a busy
// one.
func TestExporterLRU(t *testing.T) {
	a, b, c := newFakeTarget("a", nil), newFakeTarget("b", nil), newFakeTarget("c", nil)
	now := time.Unix(1000, 0)
	var clock sync.Mutex
	e := NewExporter([]*Target{a.Target, b.Target, c.Target}, ExporterOptions{MaxConnectedTargets: 2})
	e.now = func() time.Time { clock.Lock(); defer clock.Unlock(); now = now.Add(time.Second); return now }
	ctx := context.Background()
	scrape := func(name string) {
		t.Helper()
		if _, err := e.ScrapeTarget(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	scrape("a")
	scrape("b")
	scrape("a") // b is now the least recently used
	if a.releases.Load()+b.releases.Load() != 0 || e.ConnectedTargets() != 2 {
		t.Fatalf("within the cap: releases a=%d b=%d, connected %d", a.releases.Load(), b.releases.Load(), e.ConnectedTargets())
	}
	scrape("c")
	if b.releases.Load() != 1 || a.releases.Load() != 0 {
		t.Errorf("over the cap: releases a=%d b=%d, want b released", a.releases.Load(), b.releases.Load())
	}
	scrape("b") // a (used before c) is the least recently used
	if a.releases.Load() != 1 {
		t.Errorf("scrape of b should release a (LRU): releases a=%d", a.releases.Load())
	}
	scrape("a") // c is the LRU
	if c.releases.Load() != 1 || c.scrapes.Load() != 1 || e.ConnectedTargets() != 2 {
		t.Errorf("c: released %d times, scraped %d, connected %d; want 1, 1, 2", c.releases.Load(), c.scrapes.Load(), e.ConnectedTargets())
	}
	e.Close()
	if a.closes.Load() != 1 || b.closes.Load() != 1 || c.closes.Load() != 1 {
		t.Errorf("closes after Close: a=%d b=%d c=%d, want 1 each", a.closes.Load(), b.closes.Load(), c.closes.Load())
	}

	// A busy target is not disconnected: the cap is exceeded while it runs and restored
	// when it ends.
	block := make(chan struct{})
	x, y := newFakeTarget("x", block), newFakeTarget("y", nil)
	e2 := NewExporter([]*Target{x.Target, y.Target}, ExporterOptions{MaxConnectedTargets: 1})
	defer e2.Close()
	done := make(chan struct{})
	go func() { defer close(done); _, _ = e2.ScrapeTarget(ctx, "x") }()
	for x.scrapes.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	if _, err := e2.ScrapeTarget(ctx, "y"); err != nil {
		t.Fatal(err)
	}
	if x.releases.Load() != 0 {
		t.Error("a busy target was disconnected")
	}
	// y is idle now and x busy: y goes, to restore the cap.
	if y.releases.Load() != 1 || e2.ConnectedTargets() != 1 {
		t.Errorf("after the scrape of y: y releases %d, connected %d", y.releases.Load(), e2.ConnectedTargets())
	}
	close(block)
	<-done
	if e2.ConnectedTargets() != 1 {
		t.Errorf("connected = %d, want 1", e2.ConnectedTargets())
	}
}

// TestExporterScrapeAllIsNotCapped: /metrics with every target connects them all; the
// sampler's ScrapeConnected does not count as a use, so idle targets still go.
func TestExporterScrapeAllIsNotCapped(t *testing.T) {
	var fakes []*fakeTarget
	var targets []*Target
	for _, n := range []string{"a", "b", "c"} {
		f := newFakeTarget(n, nil)
		fakes = append(fakes, f)
		targets = append(targets, f.Target)
	}
	e := NewExporter(targets, ExporterOptions{MaxConnectedTargets: 1, IdleTimeout: 200 * time.Millisecond})
	defer e.Close()
	e.Scrape(context.Background())
	if n := e.ConnectedTargets(); n != 3 {
		t.Errorf("after Scrape: connected %d, want 3", n)
	}
	deadline := time.Now().Add(5 * time.Second)
	for e.ConnectedTargets() > 0 {
		e.ScrapeConnected(context.Background())
		if time.Now().After(deadline) {
			t.Fatalf("ScrapeConnected kept %d targets connected past the idle timeout", e.ConnectedTargets())
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, f := range fakes {
		if f.releases.Load() != 1 {
			t.Errorf("%s released %d times, want 1", f.Name(), f.releases.Load())
		}
	}
	if r := e.ScrapeConnected(context.Background()); len(r.Metrics) != 0 {
		t.Errorf("ScrapeConnected with nothing connected scraped %d series", len(r.Metrics))
	}
}
