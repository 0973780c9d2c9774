package e2e

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dbpool/dbpool_exporter/tools/dnstest"
	"github.com/dbpool/dbpool_exporter/tools/testbin"
)

// Replicas that come and go, end to end: real SQLAlchemy applications (loadapp.py on the
// pinned SQLAlchemy 2.0 environment) found by the exporter binary through DNS (a test DNS
// server, --app.dns-server, answering a name with loopback addresses behind which the
// replicas listen, all on one port as the pods of a headless Service) and through a
// Prometheus file_sd file.

// sharedPort returns a TCP port free on every address of ips.
func sharedPort(t *testing.T, ips ...string) string {
	t.Helper()
	for range 20 {
		first, err := net.Listen("tcp", ips[0]+":0")
		if err != nil {
			t.Fatal(err)
		}
		_, port, _ := net.SplitHostPort(first.Addr().String())
		listeners := []net.Listener{first}
		for _, ip := range ips[1:] {
			if l, err := net.Listen("tcp", net.JoinHostPort(ip, port)); err == nil {
				listeners = append(listeners, l)
			}
		}
		for _, l := range listeners {
			_ = l.Close()
		}
		if len(listeners) == len(ips) {
			return port
		}
	}
	t.Fatalf("no port free on all of %v", ips)
	return ""
}

// discoveryScrape is a scrape of the exporter checked for what must hold throughout: it
// answers within the scrape deadline, and the app pools' counters never fall.
type discoveryScrape struct {
	t        *testing.T
	addr     string
	deadline time.Duration
	last     map[string]float64 // dbpool_checkouts_total by pool
	scrapes  int
	slowest  time.Duration
}

func (d *discoveryScrape) scrape(step string) exporterScrape {
	d.t.Helper()
	s, elapsed := scrapeExporter(d.t, d.addr)
	d.scrapes, d.slowest = d.scrapes+1, max(d.slowest, elapsed)
	if elapsed > d.deadline+time.Second {
		d.t.Errorf("%s: the scrape took %v, deadline %v", step, elapsed, d.deadline)
	}
	for _, pool := range []string{"api", "jobs"} {
		v, ok := s.value("dbpool_checkouts_total", map[string]string{"pool": pool, "source": "app"})
		if ok && v < d.last[pool] {
			d.t.Errorf("%s: dbpool_checkouts_total{pool=%s,source=app} fell from %v to %v", step, pool, d.last[pool], v)
		}
		if ok {
			d.last[pool] = v
		}
	}
	return s
}

// expect scrapes until check passes (the exporter sees a change at its next scrape, but the
// replicas' own reports may lag by their snapshot interval), failing after 15 s.
func (d *discoveryScrape) expect(step string, check func(s exporterScrape) string) exporterScrape {
	d.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		s := d.scrape(step)
		problem := check(s)
		if problem == "" {
			return s
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("%s: %s", step, problem)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func TestAppDiscoveryEndToEnd(t *testing.T) {
	exporterBin := testbin.Exporter(t)
	dir := t.TempDir()
	pg, monitorPW, appPW := appDatabase(t)
	dsn := fmt.Sprintf("postgresql+psycopg2://app:%s@127.0.0.1:%d/postgres", appPW, pg.Port)
	urlPW := randomPassword(t)

	ips := []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"}
	port := sharedPort(t, ips...)
	ep := func(ip string) string { return net.JoinHostPort(ip, port) }
	replicas := map[string]*loadApp{}
	for i, ip := range ips {
		replicas[ip] = startLoadApp(t, dir, "api-"+ip, "--dsn", dsn, "--name", "api", "--pool-size", "4", "--max-overflow", "0",
			"--concurrency", "0", "--listen", ep(ip), "--application-name", fmt.Sprintf("api-%d", i))
	}
	jobs := []*loadApp{
		startLoadApp(t, dir, "jobs-0", "--dsn", dsn, "--name", "jobs", "--pool-size", "1", "--concurrency", "0", "--application-name", "jobs-0"),
		startLoadApp(t, dir, "jobs-1", "--dsn", dsn, "--name", "jobs", "--pool-size", "1", "--concurrency", "0", "--application-name", "jobs-1"),
	}
	hostport := func(a *loadApp) string { return strings.TrimPrefix(a.base, "http://") }
	// Each replica checks out a known number of connections: the pool's counters are then
	// exact sums of the replicas' own counts.
	checkouts := func(apps ...*loadApp) float64 {
		sum := 0
		for _, a := range apps {
			sum += a.truth(t).CheckoutsAttempted
		}
		return float64(sum)
	}
	for i, ip := range ips {
		replicas[ip].post(t, fmt.Sprintf("/hold?n=%d", i+1))
		replicas[ip].post(t, "/release")
	}
	for _, j := range jobs {
		j.post(t, "/hold?n=1")
		j.post(t, "/release")
	}

	dns := dnstest.Start(t)
	setDNS := func(ips ...string) {
		var addrs []netip.Addr
		for _, ip := range ips {
			addrs = append(addrs, netip.MustParseAddr(ip))
		}
		dns.Set("api.dbpool.test", addrs...)
	}
	setDNS("127.0.0.2", "127.0.0.3")
	sd := filepath.Join(dir, "jobs.json")
	writeSD := func(apps ...*loadApp) {
		var targets []string
		for _, a := range apps {
			targets = append(targets, `"`+hostport(a)+`"`)
		}
		writeFile(t, sd+".new", `[{"targets": [`+strings.Join(targets, ", ")+`], "labels": {"job": "jobs"}}]`)
		if err := os.Rename(sd+".new", sd); err != nil {
			t.Fatal(err)
		}
	}
	writeSD(jobs[0])

	cfg := filepath.Join(dir, "exporter.yml")
	writeFile(t, cfg, fmt.Sprintf(`targets:
  - {name: main, dsn: %q}
pools:
  - {name: api, match: {application_name_regex: "api-.*"}, pool_size: 4, max_overflow: 0, instances: 3}
  - {name: jobs, match: {application_name_regex: "jobs-.*"}, pool_size: 1, max_overflow: 0, instances: 2}
apps:
  - {name: api, url: "dns+http://scraper:%s@api.dbpool.test:%s/dbpool", pool: api}
  - {name: jobs, file_sd: jobs.json, url: "http://scraper:%s@/dbpool", pool: jobs}
`, pg.DSN("dbpool_monitor", monitorPW, "postgres"), urlPW, port, urlPW))
	const maxTimeout = 3 * time.Second
	exporter, addr := startServer(t, dir, "exporter", exporterBin, nil, "/metrics", func(addr string) []string {
		return []string{"--web.listen-address=" + addr, "--config.file=" + cfg, "--health.sample-interval=0",
			"--app.dns-server=" + dns.Addr(), "--scrape.max-timeout=" + maxTimeout.String()}
	})
	d := &discoveryScrape{t: t, addr: addr, deadline: maxTimeout, last: map[string]float64{}}

	pool := func(name string) map[string]string { return map[string]string{"pool": name, "source": "app"} }
	endpoint := func(app, e string) map[string]string { return map[string]string{"app": app, "endpoint": e} }
	// state checks the app pool's instances and checkouts, and which endpoints are up.
	state := func(name string, instances int, checkouts float64, up map[string]float64) func(exporterScrape) string {
		return func(s exporterScrape) string {
			gotN, _ := s.value("dbpool_instances", pool(name))
			gotC, _ := s.value("dbpool_checkouts_total", pool(name))
			if gotN != float64(instances) || gotC != checkouts {
				return fmt.Sprintf("pool %s: %v instances and %v checkouts, want %d and %v", name, gotN, gotC, instances, checkouts)
			}
			n := 0
			for _, m := range s["dbpool_app_endpoint_up"].GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "app" && l.GetValue() == name {
						n++
					}
				}
			}
			if n != len(up) {
				return fmt.Sprintf("app %s has %d endpoint series, want %d", name, n, len(up))
			}
			for e, want := range up {
				if got, ok := s.value("dbpool_app_endpoint_up", endpoint(name, e)); !ok || got != want {
					return fmt.Sprintf("dbpool_app_endpoint_up{app=%s,endpoint=%s} = %v (present %v), want %v", name, e, got, ok, want)
				}
			}
			return ""
		}
	}
	discovery := func(app string, want float64) func(exporterScrape) string {
		return func(s exporterScrape) string {
			if got, ok := s.value("dbpool_app_discovery_success", map[string]string{"app": app}); !ok || got != want {
				return fmt.Sprintf("dbpool_app_discovery_success{app=%s} = %v (present %v), want %v", app, got, ok, want)
			}
			return ""
		}
	}
	success := func(want float64) func(exporterScrape) string {
		return func(s exporterScrape) string {
			if got := s.must(t, "dbpool_scrape_success", map[string]string{"collector": "app"}); got != want {
				return fmt.Sprintf("dbpool_scrape_success{collector=app} = %v, want %v", got, want)
			}
			return ""
		}
	}
	all := func(checks ...func(exporterScrape) string) func(exporterScrape) string {
		return func(s exporterScrape) string {
			for _, c := range checks {
				if p := c(s); p != "" {
					return p
				}
			}
			return ""
		}
	}
	r2, r3, r4 := replicas["127.0.0.2"], replicas["127.0.0.3"], replicas["127.0.0.4"]

	t.Run("DNS: replicas come and go", func(t *testing.T) {
		d.expect("two addresses", all(success(1), discovery("api", 1),
			state("api", 2, checkouts(r2, r3), map[string]float64{ep("127.0.0.2"): 1, ep("127.0.0.3"): 1})))
		setDNS("127.0.0.2", "127.0.0.3", "127.0.0.4")
		d.expect("a third added", all(success(1),
			state("api", 3, checkouts(r2, r3, r4), map[string]float64{ep("127.0.0.2"): 1, ep("127.0.0.3"): 1, ep("127.0.0.4"): 1})))
		// A replica out of DNS still runs and checks out more: unseen, its last counts stay
		// in the pool's; back in DNS, it continues where it was.
		setDNS("127.0.0.3", "127.0.0.4")
		seen := checkouts(r2, r3, r4)
		d.expect("the first removed", all(success(1), state("api", 2, seen, map[string]float64{ep("127.0.0.3"): 1, ep("127.0.0.4"): 1})))
		r2.post(t, "/hold?n=2")
		r2.post(t, "/release")
		d.expect("the removed one checked out more, unseen", state("api", 2, seen, map[string]float64{ep("127.0.0.3"): 1, ep("127.0.0.4"): 1}))
		setDNS("127.0.0.2", "127.0.0.3", "127.0.0.4")
		d.expect("the first back", all(success(1),
			state("api", 3, checkouts(r2, r3, r4), map[string]float64{ep("127.0.0.2"): 1, ep("127.0.0.3"): 1, ep("127.0.0.4"): 1})))

		// A replica killed before its record goes: its endpoint fails, its counts stay.
		last3 := checkouts(r3)
		if err := r3.Stop(syscall.SIGKILL, 0); err != nil {
			t.Log(err)
		}
		d.expect("a replica killed", all(success(0), discovery("api", 1),
			state("api", 2, checkouts(r2, r4)+last3, map[string]float64{ep("127.0.0.2"): 1, ep("127.0.0.3"): 0, ep("127.0.0.4"): 1})))
		setDNS("127.0.0.2", "127.0.0.4")
		d.expect("its record removed", all(success(1),
			state("api", 2, checkouts(r2, r4)+last3, map[string]float64{ep("127.0.0.2"): 1, ep("127.0.0.4"): 1})))
	})

	t.Run("DNS server down and slow", func(t *testing.T) {
		// The pool's checkouts as they are, the killed replica's last counts included.
		want := d.scrape("before").must(t, "dbpool_checkouts_total", pool("api"))
		running := map[string]float64{ep("127.0.0.2"): 1, ep("127.0.0.4"): 1}
		dns.Stop()
		d.expect("DNS server stopped", all(success(0), discovery("api", 0), state("api", 2, want, running)))
		dns.Restart(t)
		d.expect("DNS server back", all(success(1), discovery("api", 1), state("api", 2, want, running)))
		dns.SetDelay(time.Minute)
		d.expect("DNS server slow", all(success(0), discovery("api", 0), state("api", 2, want, running)))
		dns.SetDelay(0)
		d.expect("DNS server fast again", all(success(1), discovery("api", 1), state("api", 2, want, running)))
		setDNS()
		d.expect("the name gone", all(success(0), discovery("api", 0), state("api", 0, 0, nil)))
		setDNS("127.0.0.2", "127.0.0.4")
		d.expect("the name back", all(success(1), discovery("api", 1), state("api", 2, want, running)))
	})

	t.Run("file_sd: rewritten, garbage, removed", func(t *testing.T) {
		j0, j1 := jobs[0], jobs[1]
		d.expect("one target", all(discovery("jobs", 1), state("jobs", 1, checkouts(j0), map[string]float64{hostport(j0): 1})))
		writeSD(j0, j1)
		both := map[string]float64{hostport(j0): 1, hostport(j1): 1}
		d.expect("renamed over with two", all(success(1), discovery("jobs", 1), state("jobs", 2, checkouts(j0, j1), both)))
		// Rewritten in place with the second only.
		f, err := os.OpenFile(sd, os.O_WRONLY|os.O_TRUNC, 0)
		if err != nil {
			t.Fatal(err)
		}
		_, err = fmt.Fprintf(f, `[{"targets": ["%s"]}]`, hostport(j1))
		_ = f.Close()
		if err != nil {
			t.Fatal(err)
		}
		total := checkouts(j0, j1) // j0's last counts stay in the pool's
		d.expect("rewritten in place", all(success(1), discovery("jobs", 1), state("jobs", 1, total, map[string]float64{hostport(j1): 1})))
		writeFile(t, sd, `[{"targets": ["`+hostport(j0)+`", `)
		d.expect("garbage", all(success(0), discovery("jobs", 0), state("jobs", 1, total, map[string]float64{hostport(j1): 1})))
		if err := os.Remove(sd); err != nil {
			t.Fatal(err)
		}
		d.expect("removed", all(success(0), discovery("jobs", 0), state("jobs", 1, total, map[string]float64{hostport(j1): 1})))
		writeSD(j0, j1)
		d.expect("back", all(success(1), discovery("jobs", 1), state("jobs", 2, total, both)))
	})

	t.Logf("%d scrapes, the slowest %v (deadline %v); dbpool_checkouts_total at the end: %v", d.scrapes, d.slowest, maxTimeout, d.last)

	// Each failure is logged once when it starts and once when it ends (a file that is garbage
	// and then removed is one failure).
	log := exporter.Output()
	lines := strings.Split(log, "\n")
	for _, want := range []struct {
		parts []string
		n     int
	}{
		{[]string{`level=WARN`, `msg="app endpoint failed" target=main collector=app app=api endpoint=` + ep("127.0.0.3"),
			`err="GET http://scraper:xxxxx@` + ep("127.0.0.3") + `/dbpool: dial tcp ` + ep("127.0.0.3") + `: connect: connection refused"`}, 1},
		{[]string{`level=INFO`, `msg="app endpoint no longer found, after failing" target=main collector=app app=api endpoint=` + ep("127.0.0.3")}, 1},
		{[]string{`level=WARN`, `msg="app discovery failed" target=main collector=app app=api endpoints=2`,
			`err="DNS: lookup api.dbpool.test on ` + dns.Addr() + `: `, `reading the 2 endpoints of the last answer"`}, 2},
		{[]string{`level=INFO`, `msg="app discovery recovered" target=main collector=app app=api endpoints=2`}, 3},
		{[]string{`level=WARN`, `msg="app discovery failed" target=main collector=app app=api endpoints=0`,
			`err="DNS: api.dbpool.test has no A or AAAA record (lookup api.dbpool.test on ` + dns.Addr() + `: no such host)"`}, 1},
		{[]string{`level=WARN`, `msg="app discovery failed" target=main collector=app app=jobs endpoints=1`,
			`err="file_sd ` + sd + `: not a file_sd JSON list of target groups: unexpected EOF; reading the 1 endpoints of the last good version"`}, 1},
		{[]string{`level=INFO`, `msg="app discovery recovered" target=main collector=app app=jobs endpoints=2`}, 1},
		{[]string{`msg="collector failed"`, `collector=app`}, 0}, // the parts said it
	} {
		n := 0
		for _, l := range lines {
			found := true
			for _, p := range want.parts {
				found = found && strings.Contains(l, p)
			}
			if found {
				n++
			}
		}
		if n != want.n {
			t.Errorf("the exporter's log has %d lines with %q, want %d", n, want.parts, want.n)
		}
	}
	if strings.Contains(log, urlPW) || strings.Contains(log, appPW) || strings.Contains(log, monitorPW) {
		t.Error("a password reached the exporter's log")
	}
	for _, page := range []string{"/", "/metrics"} {
		code, body, err := httpGet("http://" + addr + page)
		if err != nil || code != http.StatusOK || strings.Contains(string(body), urlPW) {
			t.Errorf("GET %s: %d %v, or it shows the URL's password", page, code, err)
		}
	}
	if t.Failed() {
		t.Logf("exporter log:\n%s", indent(exporter.logTail(80)))
	}
}
