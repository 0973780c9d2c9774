package health

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dbpool/dbpool_exporter/internal/metrics"
	"github.com/dbpool/dbpool_exporter/pgxpoolcollector"
	"github.com/dbpool/dbpool_exporter/poolcfg"
	"github.com/dbpool/dbpool_exporter/tools/pgtest"
	"github.com/dbpool/dbpool_exporter/tools/testbin"
)

// Application names a hostile client could choose; unmatched backends become pool
// "application_name:<application_name>", which the page must show as text, in HTML and in
// the SVG alike. The second tries to leave an attribute, an SVG <title>, a <style> and CDATA.
const (
	xssName     = `<script>alert(1)</script>`
	xssBreakout = `"'></title></svg></style><svg onload=alert(2)>&amp;]]>`
)

// chromiumPath finds Debian's chromium. Missing is a failure, not a skip: make test installs
// it (scripts/install-deps.sh --with-chromium).
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "/usr/bin/chromium"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("chromium not found: install it with scripts/install-deps.sh --with-chromium (make test does)")
	return ""
}

// chromiumFlags run headless Chromium on a closed network with a throwaway profile.
func chromiumFlags(profile string) []string {
	return []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir=" + profile}
}

// frozenClock is the wall clock until frozen: the history fills in real time, then the API
// and the page are read at one instant, so that they must agree to the last figure.
type frozenClock struct {
	mu sync.Mutex
	at time.Time
}

func (c *frozenClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.at.IsZero() {
		return c.at
	}
	return time.Now()
}

func (c *frozenClock) freeze() {
	c.mu.Lock()
	c.at = time.Now()
	c.mu.Unlock()
}

// goService is a Go service's pgxpool under load, exported by pgxpoolcollector: the
// exporter's pgxpool source, with the hold times the sizing model needs.
type goService struct {
	name     string
	settings poolcfg.Settings
	col      *pgxpoolcollector.Collector
	reported time.Duration // how long its samples reach the Manager; 0: all along
}

// load is what a service asks of its pool: requests arriving at rateAt(elapsed) per second
// (an open loop: a slow pool makes callers queue), or, with workers set, that many workers
// each taking a connection again as soon as they gave one back (a closed loop: never more
// than workers in use, however slow the machine).
type load struct {
	rateAt  func(time.Duration) float64
	workers int
}

func rate(r float64) load { return load{rateAt: func(time.Duration) float64 { return r }} }

// startGoService runs its load until ctx ends, each request holding a connection for hold
// and giving up on a checkout after timeout.
func startGoService(t *testing.T, ctx context.Context, wg *sync.WaitGroup, dsn, name string, maxConns int,
	timeout, hold time.Duration, l load) *goService {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = int32(maxConns)
	cfg.ConnConfig.RuntimeParams["application_name"] = name
	tracer := pgxpoolcollector.InstrumentConfig(cfg)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close) // after the load has stopped: cleanups run last in, first out
	st := pgxpoolcollector.SettingsOf(cfg)
	st.Timeout = timeout
	svc := &goService{name: name, settings: st,
		col: pgxpoolcollector.New(pool, tracer, pgxpoolcollector.Options{Target: "svc", Pool: name, Settings: &st})}
	request := func() {
		c, cancel := context.WithTimeout(ctx, timeout)
		conn, err := pool.Acquire(c)
		cancel()
		if err != nil {
			return
		}
		_, _ = conn.Exec(ctx, "SELECT pg_sleep($1)", hold.Seconds())
		conn.Release()
	}
	for range l.workers {
		wg.Go(func() {
			for ctx.Err() == nil {
				request()
			}
		})
	}
	if l.rateAt == nil {
		return svc
	}
	start := time.Now()
	wg.Go(func() {
		next := time.Now()
		for {
			interval := time.Duration(float64(time.Second) / l.rateAt(time.Since(start)))
			// A stalled test machine skips the arrivals it missed rather than firing them
			// all at once: a burst of its own would make a pool look busier than its load.
			if next = next.Add(interval); time.Until(next) < -interval {
				next = time.Now()
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Until(next)):
			}
			wg.Go(request)
		}
	})
	return svc
}

// leakyApp is leaky's own report of its pool (source app, as integrations/python sends it)
// after running for d: the six connections the test holds idle in transaction are checked
// out, and leaked once held past the 5 s threshold, taken at two places in its code.
func leakyApp(d time.Duration) metrics.PoolStats {
	timeouts := uint64(0)
	p := metrics.PoolStats{
		Target: scenarioTarget, Pool: "leaky", Source: metrics.SourceApp,
		Configured: true, Settings: regexPool("leaky", "leaky", 5, 5, 1).Settings, Instances: 1,
		Open: 6, InUse: 6, Overflow: 1,
		States:    map[string]int{metrics.StateCheckedOut: 6, metrics.StateCheckedIn: 0},
		Pending:   new(0),
		Checkouts: &metrics.CheckoutStats{Count: 6, DurationSeconds: 0.012, Timeouts: &timeouts},
		Leaks:     &metrics.LeakStats{ThresholdSeconds: 5, Instances: 1, Sites: []metrics.LeakSite{}},
	}
	if held := d.Seconds(); held > 5 {
		p.Leaks.Count = 6
		p.Leaks.Sites = []metrics.LeakSite{
			{File: "/srv/leaky/app/jobs/nightly_settlement_report.py", Line: 88, Function: "<lambda>", Count: 4, OldestSeconds: held},
			{File: "/srv/leaky/app/api/orders.py", Line: 214, Function: "create_order", Count: 2, OldestSeconds: held - 0.4},
		}
	}
	return p
}

// TestStatusPageInChromium renders /pools in headless Chromium at a desktop's and a phone's
// width while four Go services and a PostgreSQL server report real pools: api (2
// connections) gets busy half way and saturates; reports keeps 7 of its 8 connections busy
// (warning: 87.5% of its pool size on average, never all of it, so never saturated, however
// slow the machine); billing idles (ok); batch stops reporting (stale); on the server, six sessions
// of leaky sit idle in transaction, which leaky's own report counts as leaked, and two
// clients chose hostile application names. The page must fit both widths, draw every chart
// with points, show the API's figures, and keep the hostile names text.
func TestStatusPageInChromium(t *testing.T) {
	chromium := chromiumPath(t)
	const (
		window  = 15 * time.Second
		run     = 14 * time.Second
		rampAt  = 6 * time.Second
		sampled = 250 * time.Millisecond
	)
	clk := &frozenClock{}
	s := startScenarioManager(t, pgtest.Options{}, Options{Window: window, StaleAfter: 5 * time.Second, Now: clk.now},
		regexPool("leaky", "leaky", 5, 5, 1))

	// The Go services run against a server of their own, which the exporter does not watch.
	apps := pgtest.StartT(t, pgtest.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	dsn := apps.SuperuserDSN("postgres")
	services := []*goService{
		startGoService(t, ctx, &wg, dsn, "api", 2, 200*time.Millisecond, 100*time.Millisecond, load{rateAt: func(d time.Duration) float64 {
			if d < rampAt {
				return 4
			}
			return 30 // 3 connections' worth of work for 2
		}}),
		startGoService(t, ctx, &wg, dsn, "reports", 8, 5*time.Second, 100*time.Millisecond, load{workers: 7}),
		startGoService(t, ctx, &wg, dsn, "billing", 10, 5*time.Second, 20*time.Millisecond, rate(10)),
		startGoService(t, ctx, &wg, dsn, "batch", 3, 5*time.Second, 50*time.Millisecond, rate(5)),
	}
	services[3].reported = 3 * time.Second
	t.Cleanup(func() { cancel(); wg.Wait() })

	for i, name := range []string{"leaky-0", "leaky-0", "leaky-0", "leaky-0", "leaky-0", "leaky-0", xssName, xssBreakout} {
		cfg, err := pgx.ParseConfig(s.appDSN)
		if err != nil {
			t.Fatal(err)
		}
		cfg.RuntimeParams["application_name"] = name
		conn, err := pgx.ConnectConfig(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close(context.Background()) })
		if strings.HasPrefix(name, "leaky") {
			if _, err := conn.Exec(context.Background(), "BEGIN; SELECT "+strconv.Itoa(i)); err != nil {
				t.Fatal(err)
			}
		}
	}

	// Every 250 ms, one scrape of the server, of the services and of leaky's own report, as
	// the exporter's sampler and its app and pgxpool sources would feed the Manager.
	start := time.Now()
	s.also = func() []metrics.PoolStats {
		pools := []metrics.PoolStats{leakyApp(time.Since(start))}
		for _, svc := range services {
			if svc.reported == 0 || time.Since(start) < svc.reported {
				pools = append(pools, readPgxpoolHolds(t, svc.col, "svc", svc.name, svc.settings))
			}
		}
		return pools
	}
	for time.Since(start) < run {
		c, done := context.WithTimeout(context.Background(), 2*time.Second)
		s.exp.Scrape(c)
		done()
		time.Sleep(sampled)
	}
	clk.freeze()

	api, apiJSON := fetchPools(t, s.api.URL)
	want := map[string]State{"api": StateSaturated, "reports": StateWarning, "billing": StateOK, "leaky": StateWarning,
		"application_name:" + xssName: StateOK, "application_name:" + xssBreakout: StateOK}
	for _, r := range api.Pools {
		if w, ok := want[r.Pool]; ok && r.State != w {
			logReport(t, r)
			t.Errorf("pool %s: state %s, want %s", r.Pool, r.State, w)
		}
		if r.Stale != (r.Pool == "batch") {
			t.Errorf("pool %s: stale %v", r.Pool, r.Stale)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	resp, err := http.Get(s.api.URL + PagePath)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, bad := range []string{"<script", "<svg onload", "</title></svg></style>"} {
		if strings.Contains(string(raw), bad) {
			t.Errorf("the page does not escape a hostile application name: it holds %q", bad)
		}
	}

	// A pool whose source stopped answering says so beside its state, which is from before.
	for _, card := range strings.Split(string(raw), `<section class="card`)[1:] {
		badge := strings.Contains(card, `>stale</span>`)
		if batch := strings.Contains(card, `data-pool="batch"`); badge != batch {
			t.Errorf("a card with a stale badge %v, of the stale pool batch %v: %.200s", badge, batch, card)
		}
	}

	dir := filepath.Join(testbin.RepoRoot(), "testdata-artifacts")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	d := startDevtools(t, chromium)
	for _, vp := range []struct{ w, h int }{{1280, 800}, {390, 844}} {
		t.Run(fmt.Sprintf("%dpx", vp.w), func(t *testing.T) {
			d.t = t
			d.open(s.api.URL+PagePath, vp.w, vp.h)
			var page pageSeen
			d.eval(pageProbe, &page)
			shot := func(name string, full bool) {
				d.screenshot(filepath.Join(dir, name), vp.w, vp.h, full)
				t.Logf("screenshot: %s", filepath.Join(dir, name))
			}
			shot(fmt.Sprintf("pools-%d.png", vp.w), false)
			shot(fmt.Sprintf("pools-%d-full.png", vp.w), true)
			checkPage(t, page, vp.w, api, apiJSON)
			// Opened, the findings (with the leak's places) and the sizing fit as well.
			var opened pageSeen
			var n int
			d.eval(`document.querySelectorAll('details').forEach(d => d.open = true), document.querySelectorAll('details[open]').length`, &n)
			if n < 10 {
				t.Errorf("%d details opened, want a finding or more per pool", n)
			}
			d.eval(pageProbe, &opened)
			if opened.InnerWidth != float64(vp.w) || opened.ScrollWidth > opened.InnerWidth || len(opened.Overflowing) > 0 {
				t.Errorf("with the details open: layout viewport %v, scrollWidth %v; beyond the right edge: %q", opened.InnerWidth, opened.ScrollWidth, opened.Overflowing)
			}
			shot(fmt.Sprintf("pools-%d-open.png", vp.w), true)
		})
	}
}

// fetchPools reads /api/v1/pools, typed and as plain JSON (to look figures up by path).
func fetchPools(t *testing.T, base string) (PoolsResponse, map[[2]string]any) {
	t.Helper()
	resp, err := http.Get(base + PoolsPath)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var typed PoolsResponse
	var plain struct {
		Pools []map[string]any `json:"pools"`
	}
	if err := json.Unmarshal(body, &typed); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(body, &plain); err != nil {
		t.Fatal(err)
	}
	byPool := map[[2]string]any{}
	for _, p := range plain.Pools {
		byPool[[2]string{p["target"].(string), p["pool"].(string)}] = p
	}
	return typed, byPool
}

// pageSeen is what pageProbe reads from the rendered page.
type pageSeen struct {
	ScrollWidth, InnerWidth   float64
	Scripts, Styles, Handlers int
	Overflowing               []string
	StaleAlert                string
	Attention                 []struct {
		Target, Pool string
		Figures      []struct{ Key, Value, Scale, Text string }
	}
	Cards []struct {
		Target, Pool, State string
		Right               float64
		Text                string
		Figures             []struct{ Key, Value, Scale, Text string }
		Charts              []struct {
			Name, Title string
			Points      int
			Series      map[string]int
			Width       float64
		}
	}
}

// pageProbe runs in the page: what a person sees, in numbers.
const pageProbe = `(() => {
  const de = document.documentElement;
  const all = [...document.querySelectorAll('body *')];
  const figures = el => [...el.querySelectorAll('[data-key]')].map(e => ({Key: e.dataset.key, Value: e.dataset.value, Scale: e.dataset.scale || '', Text: e.textContent}));
  return {
    ScrollWidth: de.scrollWidth, InnerWidth: innerWidth,
    Scripts: document.querySelectorAll('script').length,
    Styles: document.querySelectorAll('style').length,
    Handlers: all.filter(e => [...e.attributes].some(a => a.name.toLowerCase().startsWith('on'))).length,
    Overflowing: all.filter(e => e.getBoundingClientRect().right > innerWidth + 0.5).slice(0, 10)
      .map(e => e.tagName + '.' + (e.className.baseVal ?? e.className) + ' ' + Math.round(e.getBoundingClientRect().right)),
    StaleAlert: (document.querySelector('.alert') || {}).textContent || '',
    Attention: [...document.querySelectorAll('.attention li')].map(li => ({Target: li.dataset.target, Pool: li.dataset.pool, Figures: figures(li)})),
    Cards: [...document.querySelectorAll('section.card')].map(c => ({
      Target: c.dataset.target, Pool: c.dataset.pool, State: c.dataset.state,
      Right: c.getBoundingClientRect().right, Text: c.innerText,
      Figures: figures(c),
      Charts: [...c.querySelectorAll('figure[data-chart]')].map(f => {
        const svg = f.querySelector('svg'), series = {};
        svg.querySelectorAll('[data-series]').forEach(e => {
          const n = e.tagName === 'polyline' ? e.getAttribute('points').trim().split(/\s+/).length : 1;
          series[e.dataset.series] = (series[e.dataset.series] || 0) + n;
        });
        return {Name: f.dataset.chart, Title: svg.querySelector('title').textContent, Points: +svg.dataset.points,
          Series: series, Width: svg.getBoundingClientRect().width};
      }),
    })),
  };
})()`

var firstNumber = regexp.MustCompile(`-?[0-9]+(\.[0-9]+)?(e[-+]?[0-9]+)?`)

// checkPage holds what the page shows to the API's answer.
func checkPage(t *testing.T, page pageSeen, width int, api PoolsResponse, apiJSON map[[2]string]any) {
	t.Helper()
	// A phone's browser widens its layout viewport to fit content that does not fit, and
	// zooms out: then scrollWidth <= innerWidth holds, but innerWidth is not the phone's.
	if page.InnerWidth != float64(width) {
		t.Errorf("the layout viewport is %v px wide on a %d px screen: the page does not fit and was zoomed out", page.InnerWidth, width)
	}
	if page.ScrollWidth > page.InnerWidth || len(page.Overflowing) > 0 {
		t.Errorf("horizontal overflow: scrollWidth %v, innerWidth %v; elements beyond the right edge: %q", page.ScrollWidth, page.InnerWidth, page.Overflowing)
	}
	if page.Scripts != 0 || page.Handlers != 0 || page.Styles != 1 {
		t.Errorf("%d script elements, %d elements with event handlers, %d style elements (want 0, 0, 1)", page.Scripts, page.Handlers, page.Styles)
	}
	if !strings.Contains(page.StaleAlert, "batch") || !strings.Contains(page.StaleAlert, "stopped reporting") {
		t.Errorf("no alert at the top for the pool that stopped reporting: %q", page.StaleAlert)
	}
	if len(page.Cards) != len(api.Pools) {
		t.Fatalf("%d pools on the page, %d in the API", len(page.Cards), len(api.Pools))
	}
	reports := map[[2]string]Report{}
	for _, r := range api.Pools {
		reports[[2]string{r.Target, r.Pool}] = r
	}
	attention := 0
	for _, r := range api.Pools {
		if r.State == StateSaturated || r.State == StateWarning {
			attention++
		}
	}
	if len(page.Attention) != attention {
		t.Errorf("%d pools under \"needs attention\", %d saturated or in warning in the API", len(page.Attention), attention)
	}
	for _, a := range page.Attention {
		k := [2]string{a.Target, a.Pool}
		if _, ok := reports[k]; !ok || len(a.Figures) == 0 {
			t.Errorf("needs attention: pool %q on %q: %d figures, in the API: %v", a.Pool, a.Target, len(a.Figures), ok)
			continue
		}
		checkFigures(t, a.Pool, a.Figures, apiJSON[k])
	}
	prev := -1
	for _, c := range page.Cards {
		k := [2]string{c.Target, c.Pool}
		r, ok := reports[k]
		if !ok {
			t.Errorf("the page shows pool %q on %q, which the API does not have", c.Pool, c.Target)
			continue
		}
		if c.State != string(r.State) || stateOrder[r.State] < prev {
			t.Errorf("pool %s: state %s (API %s), or out of order", c.Pool, c.State, r.State)
		}
		prev = stateOrder[r.State]
		if c.Right > page.InnerWidth+0.5 {
			t.Errorf("pool %s: the card ends at %v, beyond the viewport's %v", c.Pool, c.Right, page.InnerWidth)
		}
		if len(c.Figures) < 5 {
			t.Errorf("pool %s: only %d figures on the page", c.Pool, len(c.Figures))
		}
		checkFigures(t, c.Pool, c.Figures, apiJSON[k])
		checkCharts(t, r, c.Charts)
		if r.State == StateSaturated && !strings.Contains(c.Text, "under load since") {
			t.Errorf("pool %s: the card does not say since when:\n%s", c.Pool, c.Text)
		}
		if r.Stale && !strings.Contains(c.Text, "stopped answering") {
			t.Errorf("pool %s: the card does not say its source stopped answering", c.Pool)
		}
		if l := r.Health.Leaks; l != nil && l.Count > 0 {
			for _, want := range []string{"Leaked connections", "connection_leak", "idle_in_transaction"} {
				if !strings.Contains(c.Text, want) {
					t.Errorf("pool %s: the card's findings lack %q", c.Pool, want)
				}
			}
		}
	}
}

func checkFigures(t *testing.T, pool string, figs []struct{ Key, Value, Scale, Text string }, report any) {
	t.Helper()
	for _, f := range figs {
		v, ok := jsonPath(report, f.Key)
		if !ok {
			t.Errorf("pool %s: figure %s is not in the API's report", pool, f.Key)
			continue
		}
		switch v := v.(type) {
		case string: // a time
			at, err := time.Parse(time.RFC3339Nano, v)
			if f.Value != v || err != nil || f.Text != at.UTC().Format("15:04:05 MST") {
				t.Errorf("pool %s: %s shows %q (data-value %q), the API says %q", pool, f.Key, f.Text, f.Value, v)
			}
		case float64:
			got, err := strconv.ParseFloat(f.Value, 64)
			scale := 1.0
			if f.Scale != "" {
				scale, _ = strconv.ParseFloat(f.Scale, 64)
			}
			shown, err2 := strconv.ParseFloat(firstNumber.FindString(f.Text), 64)
			want := v * scale
			if err != nil || err2 != nil || got != v || math.Abs(shown-want) > 0.005+0.05*math.Abs(want) {
				t.Errorf("pool %s: %s shows %q (data-value %q x %q), the API says %v", pool, f.Key, f.Text, f.Value, f.Scale, v)
			}
		default:
			t.Errorf("pool %s: figure %s is %T in the API", pool, f.Key, v)
		}
	}
}

// jsonPath looks a dotted path up in decoded JSON.
func jsonPath(v any, path string) (any, bool) {
	for _, k := range strings.Split(path, ".") {
		switch node := v.(type) {
		case map[string]any:
			v = node[k]
		case []any:
			i, err := strconv.Atoi(k)
			if err != nil || i < 0 || i >= len(node) {
				return nil, false
			}
			v = node[i]
		default:
			return nil, false
		}
		if v == nil {
			return nil, false
		}
	}
	return v, true
}

// checkCharts: each chart has data points, as many as the report's series has values, and
// names the pool in its SVG title.
func checkCharts(t *testing.T, r Report, charts []struct {
	Name, Title string
	Points      int
	Series      map[string]int
	Width       float64
}) {
	t.Helper()
	count := func(has func(i int) bool) int {
		n := 0
		for i := range r.Window.Series {
			if has(i) {
				n++
			}
		}
		return n
	}
	ser := r.Window.Series
	bounded := 0
	for _, p := range r.Optimization.Sizing.Curve {
		if !p.Unbounded {
			bounded++
		}
	}
	want := map[string]map[string]int{
		"in_use":     {"in_use": len(ser)},
		"pending":    {"pending": count(func(i int) bool { return ser[i].Pending != nil })},
		"checkout":   {"checkout_ms": count(func(i int) bool { return ser[i].CheckoutSeconds != nil })},
		"timeouts":   {"timeouts": count(func(i int) bool { return ser[i].Timeouts != nil })},
		"prediction": {"predicted_wait_ms": bounded, "predicted_timeout_pct": bounded},
	}
	names := map[string]bool{}
	for _, c := range charts {
		names[c.Name] = true
		total := 0
		for _, n := range c.Series {
			total += n
		}
		if c.Points == 0 || total != c.Points || fmt.Sprint(c.Series) != fmt.Sprint(want[c.Name]) {
			t.Errorf("pool %s, chart %s: %d points drawn (%v), want %v", r.Pool, c.Name, c.Points, c.Series, want[c.Name])
		}
		if !strings.Contains(c.Title, r.Pool+" on "+r.Target) || c.Width < 200 {
			t.Errorf("pool %s, chart %s: title %q, %v px wide", r.Pool, c.Name, c.Title, c.Width)
		}
	}
	expect := []string{"in_use"}
	if r.Source == metrics.SourcePgxpool && !r.Stale {
		expect = []string{"in_use", "pending", "checkout", "timeouts", "prediction"}
	}
	for _, n := range expect {
		if !names[n] {
			t.Errorf("pool %s: no %s chart", r.Pool, n)
		}
	}
}
