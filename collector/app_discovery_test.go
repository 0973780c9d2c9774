package collector

import (
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/dbpool/dbpool_exporter/internal/metrics"
	"github.com/dbpool/dbpool_exporter/poolcfg"
	"github.com/dbpool/dbpool_exporter/tools/childproc"
	"github.com/dbpool/dbpool_exporter/tools/dnstest"
	"github.com/dbpool/dbpool_exporter/tools/testbin"
)

// replica is one application process behind a discovered endpoint: it serves a
// dbpool-stats document whose checkout count grows with every request.
type replica struct {
	addr     string // address:port
	requests atomic.Uint64
	mu       sync.Mutex
	hosts    map[string]bool // Host headers received
	auth     []string        // Authorization headers received
}

// startReplicas serves one replica on port of each loopback address of ips (the whole of
// 127/8 is local on Linux), all on one port, as the pods behind a headless Service.
func startReplicas(t *testing.T, ips ...string) (port string, replicas map[string]*replica) {
	t.Helper()
	for range 20 {
		first, err := net.Listen("tcp", ips[0]+":0")
		if err != nil {
			t.Fatal(err)
		}
		_, port, _ = net.SplitHostPort(first.Addr().String())
		listeners := []net.Listener{first}
		for _, ip := range ips[1:] {
			l, err := net.Listen("tcp", net.JoinHostPort(ip, port))
			if err != nil {
				break // the port is taken on this address: another port
			}
			listeners = append(listeners, l)
		}
		if len(listeners) < len(ips) {
			for _, l := range listeners {
				_ = l.Close()
			}
			continue
		}
		replicas = map[string]*replica{}
		for i, l := range listeners {
			r := &replica{addr: net.JoinHostPort(ips[i], port), hosts: map[string]bool{}}
			replicas[ips[i]] = r
			srv := &http.Server{Handler: r, ReadHeaderTimeout: 5 * time.Second}
			go func() { _ = srv.Serve(l) }()
			t.Cleanup(func() { _ = srv.Close() })
		}
		return port, replicas
	}
	t.Fatalf("no port free on all of %v", ips)
	return "", nil
}

func (r *replica) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	n := r.requests.Add(1)
	r.mu.Lock()
	r.hosts[req.Host] = true
	r.auth = append(r.auth, req.Header.Get("Authorization"))
	r.mu.Unlock()
	fmt.Fprint(w, appDocJSON(appInstanceJSON("api", r.addr+":1", 1, 1, 0, 2, 10*n, n)))
}

func addrs(ips ...string) []netip.Addr {
	out := make([]netip.Addr, len(ips))
	for i, ip := range ips {
		out[i] = netip.MustParseAddr(ip)
	}
	return out
}

const (
	endpointUpHelp = "1 if the app endpoint answered a valid dbpool-stats document during this scrape; one series per " +
		"endpoint (address:port) of an apps entry (app), at most 256 per entry."
	discoveryHelp = "1 if the DNS lookup (dns+ URL) or the file_sd file of an apps entry gave its endpoints during this scrape; " +
		"0 scrapes the endpoints of the last good answer, if any."
)

// endpointSeries is the exposition of dbpool_app_endpoint_up for the endpoints, all of app
// "api" of pool "api" on target "db".
func endpointSeries(up map[string]int) string {
	var b strings.Builder
	b.WriteString("# HELP dbpool_app_endpoint_up " + endpointUpHelp + "\n# TYPE dbpool_app_endpoint_up gauge\n")
	for _, ep := range slices.Sorted(maps.Keys(up)) {
		fmt.Fprintf(&b, "dbpool_app_endpoint_up{app=\"api\",endpoint=%q,pool=\"api\",target=\"db\"} %d\n", ep, up[ep])
	}
	return b.String()
}

// counterWatch fails the test when the app pool's checkouts fall from one scrape to the next.
type counterWatch struct{ last float64 }

func (c *counterWatch) check(t *testing.T, step string, mfs map[string]*dto.MetricFamily) {
	t.Helper()
	v, ok := value(mfs, "dbpool_checkouts_total", map[string]string{"source": "app"})
	if !ok {
		v = c.last // no instance answered: no series, which is no fall
	}
	if v < c.last {
		t.Errorf("%s: dbpool_checkouts_total{source=app} fell from %v to %v", step, c.last, v)
	}
	c.last = v
}

// TestAppDNSDiscovery: a dns+http entry reads every address of its name, looked up on each
// scrape, as endpoints come and go; a DNS server that is stopped or slow keeps the endpoints
// of its last answer and fails only the discovery; a name that is gone leaves none. Every
// scrape answers within its deadline, the pool's counters never fall, and each failure is
// logged once when it starts and once when it ends.
func TestAppDNSDiscovery(t *testing.T) {
	dns := dnstest.Start(t)
	port, replicas := startReplicas(t, "127.0.0.2", "127.0.0.3", "127.0.0.4")
	ep := func(ip string) string { return net.JoinHostPort(ip, port) }
	dns.Set("api.dbpool.test", addrs("127.0.0.2", "127.0.0.3")...)

	pools := []poolcfg.Pool{{Name: "api", Target: "db", Settings: poolcfg.DefaultSettings(), Instances: 3}}
	var logs childproc.Buffer
	url := mustAppURL(t, "dns+http://scraper:dns-Secret-77@api.dbpool.test:"+port+"/dbpool")
	tgt := newAppTarget(t, closedPortDSN(t), pools, []poolcfg.App{{Name: "api", URL: url, Pool: "api"}}, &logs,
		func(o *PostgresOptions) { o.Probe, o.AppDNSServer = false, dns.Addr() })
	var watch counterWatch
	scrape := func(step string, deadline time.Duration, up map[string]int, discovered, success int) {
		t.Helper()
		mfs := gatherWithin(t, tgt, deadline)
		watch.check(t, step, mfs)
		checkDiscovery(t, step, mfs, up, discovered)
		if got := mustValue(t, mfs, "dbpool_scrape_success", map[string]string{"collector": "app"}); got != float64(success) {
			t.Errorf("%s: dbpool_scrape_success{collector=app} = %v, want %d", step, got, success)
		}
		answered := 0
		for _, v := range up {
			answered += v
		}
		if got, _ := value(mfs, "dbpool_instances", map[string]string{"source": "app"}); got != float64(answered) {
			t.Errorf("%s: dbpool_instances{source=app} = %v, want the %d endpoints up", step, got, answered)
		}
	}

	scrape("two addresses", 3*time.Second, map[string]int{ep("127.0.0.2"): 1, ep("127.0.0.3"): 1}, 1, 1)
	dns.Set("api.dbpool.test", addrs("127.0.0.2", "127.0.0.3", "127.0.0.4")...)
	scrape("a third added", 3*time.Second, map[string]int{ep("127.0.0.2"): 1, ep("127.0.0.3"): 1, ep("127.0.0.4"): 1}, 1, 1)
	dns.Set("api.dbpool.test", addrs("127.0.0.3", "127.0.0.4")...)
	scrape("the first removed", 3*time.Second, map[string]int{ep("127.0.0.3"): 1, ep("127.0.0.4"): 1}, 1, 1)

	// An address in DNS where nothing answers (a pod gone before its record), then removed.
	dns.Set("api.dbpool.test", addrs("127.0.0.3", "127.0.0.4", "127.0.0.9")...)
	scrape("an address that refuses", 3*time.Second, map[string]int{ep("127.0.0.3"): 1, ep("127.0.0.4"): 1, ep("127.0.0.9"): 0}, 1, 0)
	scrape("still refusing", 3*time.Second, map[string]int{ep("127.0.0.3"): 1, ep("127.0.0.4"): 1, ep("127.0.0.9"): 0}, 1, 0)
	dns.Set("api.dbpool.test", addrs("127.0.0.3", "127.0.0.4")...)
	scrape("the refusing address removed", 3*time.Second, map[string]int{ep("127.0.0.3"): 1, ep("127.0.0.4"): 1}, 1, 1)

	dns.Stop()
	scrape("DNS server stopped", 3*time.Second, map[string]int{ep("127.0.0.3"): 1, ep("127.0.0.4"): 1}, 0, 0)
	scrape("DNS server still stopped", 3*time.Second, map[string]int{ep("127.0.0.3"): 1, ep("127.0.0.4"): 1}, 0, 0)
	dns.Restart(t)
	scrape("DNS server back", 3*time.Second, map[string]int{ep("127.0.0.3"): 1, ep("127.0.0.4"): 1}, 1, 1)

	dns.SetDelay(time.Minute)
	scrape("DNS server slow", time.Second, map[string]int{ep("127.0.0.3"): 1, ep("127.0.0.4"): 1}, 0, 0)
	dns.SetDelay(0)
	scrape("DNS server fast again", 3*time.Second, map[string]int{ep("127.0.0.3"): 1, ep("127.0.0.4"): 1}, 1, 1)

	dns.Set("api.dbpool.test")
	scrape("name gone", 3*time.Second, nil, 0, 0)
	dns.Set("api.dbpool.test", addrs("127.0.0.2")...)
	scrape("name back", 3*time.Second, map[string]int{ep("127.0.0.2"): 1}, 1, 1)

	for ip, r := range replicas {
		r.mu.Lock()
		if !r.hosts["api.dbpool.test:"+port] || len(r.hosts) != 1 {
			t.Errorf("replica %s got Host headers %v, want the name as written", ip, r.hosts)
		}
		for _, a := range r.auth {
			if !strings.HasPrefix(a, "Basic ") {
				t.Errorf("replica %s: Authorization %q, want the URL's basic auth", ip, a)
			}
		}
		r.mu.Unlock()
	}

	log := logs.String()
	defer func() {
		if t.Failed() {
			t.Logf("log:\n%s", log)
		}
	}()
	if strings.Contains(log, "dns-Secret-77") {
		t.Error("the URL's password reached the log")
	}
	for _, want := range []struct {
		text string
		n    int
	}{
		{`level=WARN msg="app endpoint failed" target=db collector=app app=api endpoint=` + ep("127.0.0.9") + ` err="GET http://scraper:xxxxx@` + ep("127.0.0.9") + `/dbpool: dial tcp ` + ep("127.0.0.9") + `: connect: connection refused"`, 1},
		{`level=INFO msg="app endpoint no longer found, after failing" target=db collector=app app=api endpoint=` + ep("127.0.0.9"), 1},
		{`level=WARN msg="app discovery failed" target=db collector=app app=api endpoints=2 err="DNS: lookup api.dbpool.test on ` + dns.Addr() + `: read udp`, 1},
		{`level=WARN msg="app discovery failed" target=db collector=app app=api endpoints=2 err="DNS: lookup api.dbpool.test on ` + dns.Addr() + `: i/o timeout; reading the 2 endpoints of the last answer"`, 1},
		{`level=INFO msg="app discovery recovered" target=db collector=app app=api endpoints=2`, 2},
		{`level=WARN msg="app discovery failed" target=db collector=app app=api endpoints=0 err="DNS: api.dbpool.test has no A or AAAA record (lookup api.dbpool.test on ` + dns.Addr() + `: no such host)"`, 1},
		{`level=INFO msg="app discovery recovered" target=db collector=app app=api endpoints=1`, 1},
		{`level=WARN msg="collector failed" target=db collector=app`, 0}, // the parts said it
		{`level=INFO msg="collector recovered" target=db collector=app`, 0},
	} {
		if got := strings.Count(log, want.text); got != want.n {
			t.Errorf("the log has %q %d times, want %d", want.text, got, want.n)
		}
	}
}

// checkDiscovery compares the app series of a scrape with the endpoints up (1) or down (0)
// of app "api" and its discovery's success.
func checkDiscovery(t *testing.T, step string, mfs map[string]*dto.MetricFamily, up map[string]int, discovered int) {
	t.Helper()
	want := discoverySeries("api", discovered)
	if len(up) > 0 {
		want += endpointSeries(up)
	}
	if err := compareFamilies(mfs, want, "dbpool_app_endpoint_up", "dbpool_app_discovery_success"); err != nil {
		t.Errorf("%s: %v", step, err)
	}
}

func discoverySeries(app string, v int) string {
	return fmt.Sprintf("# HELP dbpool_app_discovery_success %s\n# TYPE dbpool_app_discovery_success gauge\n"+
		"dbpool_app_discovery_success{app=%q,pool=\"api\",target=\"db\"} %d\n", discoveryHelp, app, v)
}

// compareFamilies compares the named families of one scrape with an exposition text.
func compareFamilies(mfs map[string]*dto.MetricFamily, want string, names ...string) error {
	return testutil.GatherAndCompare(prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) {
		var out []*dto.MetricFamily
		for _, name := range slices.Sorted(maps.Keys(mfs)) {
			out = append(out, mfs[name])
		}
		return out, nil
	}), strings.NewReader(want), names...)
}

// writeAtomic replaces path by a new file with content, as a config manager does (write,
// then rename over).
func writeAtomic(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Error(err)
		return
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Error(err)
	}
}

// writeInPlace truncates path and writes content in two halves, pause apart: a reader in
// between sees a half-written file.
func writeInPlace(t *testing.T, path, content string, pause time.Duration) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		t.Error(err)
		return
	}
	defer f.Close()
	half := len(content) / 2
	_, err1 := f.WriteString(content[:half])
	time.Sleep(pause)
	_, err2 := f.WriteString(content[half:])
	if err1 != nil || err2 != nil {
		t.Error(err1, err2)
	}
}

func fileSD(targets ...string) string {
	return fmt.Sprintf(`[{"targets": [%s], "labels": {"env": "test", "__metrics_path__": "/metrics"}}]`,
		`"`+strings.Join(targets, `", "`)+`"`)
}

// TestAppFileSD: a file_sd entry reads the targets of its file, again when the file is
// replaced (renamed over) or rewritten in place; a file that becomes garbage, is caught
// half-written or disappears leaves the last good version in force, failing only the
// discovery. Rewritten while scrapes run, every scrape answers in time with endpoints to read,
// and the pool's counters never fall.
func TestAppFileSD(t *testing.T) {
	port, replicas := startReplicas(t, "127.0.0.2", "127.0.0.3", "127.0.0.4")
	ep := func(ip string) string { return net.JoinHostPort(ip, port) }
	path := filepath.Join(t.TempDir(), "api.json")
	pools := []poolcfg.Pool{{Name: "api", Target: "db", Settings: poolcfg.DefaultSettings(), Instances: 3}}
	template, err := poolcfg.ParseAppURLTemplate("http://scraper:sd-Secret-55@/dbpool")
	if err != nil {
		t.Fatal(err)
	}
	var logs childproc.Buffer
	tgt := newAppTarget(t, closedPortDSN(t), pools, []poolcfg.App{{Name: "api", FileSD: path, URL: template, Pool: "api"}}, &logs,
		func(o *PostgresOptions) { o.Probe = false })
	var watch counterWatch
	scrape := func(step string, up map[string]int, discovered int) map[string]*dto.MetricFamily {
		t.Helper()
		mfs := gatherWithin(t, tgt, 2*time.Second)
		watch.check(t, step, mfs)
		checkDiscovery(t, step, mfs, up, discovered)
		return mfs
	}

	scrape("no file yet", nil, 0)
	writeAtomic(t, path, fileSD(ep("127.0.0.2")))
	scrape("written", map[string]int{ep("127.0.0.2"): 1}, 1)
	writeAtomic(t, path, fileSD(ep("127.0.0.2"), ep("127.0.0.3")))
	scrape("renamed over", map[string]int{ep("127.0.0.2"): 1, ep("127.0.0.3"): 1}, 1)
	writeInPlace(t, path, fileSD(ep("127.0.0.3"), ep("127.0.0.4")), 0)
	scrape("rewritten in place", map[string]int{ep("127.0.0.3"): 1, ep("127.0.0.4"): 1}, 1)
	writeInPlace(t, path, fileSD(ep("127.0.0.4"), ep("127.0.0.3")), 0) // the same size
	scrape("rewritten in place, same size", map[string]int{ep("127.0.0.3"): 1, ep("127.0.0.4"): 1}, 1)
	writeInPlace(t, path, `[{"targets": ["127.0.0.2:`, 0)
	scrape("garbage", map[string]int{ep("127.0.0.3"): 1, ep("127.0.0.4"): 1}, 0)
	scrape("still garbage", map[string]int{ep("127.0.0.3"): 1, ep("127.0.0.4"): 1}, 0)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	scrape("removed", map[string]int{ep("127.0.0.3"): 1, ep("127.0.0.4"): 1}, 0)
	writeAtomic(t, path, fileSD(ep("127.0.0.2")))
	scrape("back", map[string]int{ep("127.0.0.2"): 1}, 1)
	writeAtomic(t, path, "[]")
	scrape("no targets", nil, 0)
	writeAtomic(t, path, fileSD(ep("127.0.0.2"), ep("127.0.0.9")))
	mfs := scrape("a target that refuses", map[string]int{ep("127.0.0.2"): 1, ep("127.0.0.9"): 0}, 1)
	if got := mustValue(t, mfs, "dbpool_scrape_success", map[string]string{"collector": "app"}); got != 0 {
		t.Errorf("dbpool_scrape_success{collector=app} = %v with an endpoint down", got)
	}

	for ip, r := range replicas {
		r.mu.Lock()
		if len(r.hosts) != 1 || !r.hosts[ep(ip)] {
			t.Errorf("replica %s got Host headers %v, want its own address", ip, r.hosts)
		}
		r.mu.Unlock()
	}
	log := logs.String()
	if strings.Contains(log, "sd-Secret-55") {
		t.Error("the template's password reached the log")
	}
	for _, want := range []struct {
		text string
		n    int
	}{
		{`level=WARN msg="app discovery failed" target=db collector=app app=api endpoints=0 err="file_sd ` + path + `: no such file or directory; reading the 0 endpoints of the last good version"`, 1},
		{`level=INFO msg="app discovery recovered" target=db collector=app app=api endpoints=1`, 2},
		{`level=WARN msg="app discovery failed" target=db collector=app app=api endpoints=2 err="file_sd ` + path + `: not a file_sd JSON list of target groups: unexpected EOF; reading the 2 endpoints of the last good version"`, 1},
		{`level=WARN msg="app discovery failed" target=db collector=app app=api endpoints=0 err="file_sd ` + path + ` lists no targets"`, 1},
		{`level=WARN msg="app endpoint failed" target=db collector=app app=api endpoint=` + ep("127.0.0.9") + ` err="GET http://scraper:xxxxx@` + ep("127.0.0.9"), 1},
	} {
		if got := strings.Count(log, want.text); got != want.n {
			t.Errorf("the log has %q %d times, want %d", want.text, got, want.n)
		}
	}
	if t.Failed() {
		t.Logf("log:\n%s", log)
	}

	t.Run("rewritten while scrapes run", func(t *testing.T) {
		versions := []string{fileSD(ep("127.0.0.2"), ep("127.0.0.3")), fileSD(ep("127.0.0.3"), ep("127.0.0.4")), fileSD(ep("127.0.0.4"))}
		writeAtomic(t, path, versions[0])
		done := make(chan struct{})
		go func() {
			defer close(done)
			for i := range 40 {
				v := versions[i%len(versions)]
				if i%2 == 0 {
					writeAtomic(t, path, v)
				} else {
					writeInPlace(t, path, v, 20*time.Millisecond)
				}
				time.Sleep(10 * time.Millisecond)
			}
			writeAtomic(t, path, versions[0])
		}()
		scrapes, halfRead := 0, 0
		for running := true; running; {
			select {
			case <-done:
				running = false
			default:
			}
			mfs := gatherWithin(t, tgt, time.Second)
			scrapes++
			watch.check(t, "while rewriting", mfs)
			if v, _ := value(mfs, "dbpool_app_discovery_success", nil); v == 0 {
				halfRead++
			}
			if n := len(mfs["dbpool_app_endpoint_up"].GetMetric()); n == 0 {
				t.Error("a scrape had no endpoints: the last good version must stay in force")
			}
			if got, _ := value(mfs, "dbpool_instances", map[string]string{"source": "app"}); got < 1 {
				t.Errorf("dbpool_instances{source=app} = %v while rewriting", got)
			}
		}
		t.Logf("%d scrapes while the file was rewritten 40 times; %d of them caught it half-written", scrapes, halfRead)
		scrape("after the rewrites", map[string]int{ep("127.0.0.2"): 1, ep("127.0.0.3"): 1}, 1)
	})

}

// TestAppEndpointCap: an entry that finds more endpoints than it may have reads the first
// ones, and says so as a failed discovery.
func TestAppEndpointCap(t *testing.T) {
	closed := closedAddr(t)
	_, port, _ := net.SplitHostPort(closed)
	var targets []string
	for i := range metrics.MaxAppEndpoints + 44 {
		targets = append(targets, fmt.Sprintf("127.0.%d.%d:%s", 1+i/250, 1+i%250, port))
	}
	path := filepath.Join(t.TempDir(), "many.yml")
	if err := os.WriteFile(path, []byte("- targets: ["+strings.Join(targets, ", ")+"]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	template, _ := poolcfg.ParseAppURLTemplate(poolcfg.DefaultAppTemplate)
	var logs childproc.Buffer
	pools := []poolcfg.Pool{{Name: "api", Target: "db", Settings: poolcfg.DefaultSettings(), Instances: 1}}
	tgt := newAppTarget(t, closedPortDSN(t), pools, []poolcfg.App{{Name: "many", FileSD: path, URL: template, Pool: "api"}}, &logs,
		func(o *PostgresOptions) { o.Probe = false })
	mfs := gatherWithin(t, tgt, 3*time.Second)
	if n := len(mfs["dbpool_app_endpoint_up"].GetMetric()); n != metrics.MaxAppEndpoints {
		t.Errorf("%d endpoint series, want the cap %d", n, metrics.MaxAppEndpoints)
	}
	if v := mustValue(t, mfs, "dbpool_app_discovery_success", nil); v != 0 {
		t.Errorf("discovery success %v beyond the cap", v)
	}
	if want := "300 endpoints, more than the 256 an apps entry may have: reading the first 256"; !strings.Contains(logs.String(), want) {
		t.Errorf("the log does not say %q:\n%s", want, logs.String())
	}
	testbin.LintClean(t, withoutOwnPool{NewExporter([]*Target{tgt}, ExporterOptions{}).ScrapeCollector(t.Context())})
}
