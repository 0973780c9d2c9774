package e2e

import (
	"crypto/md5"
	"encoding/binary"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dbpool/dbpool_exporter/tools/testbin"
)

// shardTargets are six names of the exporters' configuration, three on each of two
// PostgreSQL servers. With two shards their hashmod splits them 2 and 4.
var shardTargets = []string{"orders-db", "billing-db", "users-db", "search-db", "audit-db", "events-db"}

// shardingDocConfig returns the `# prometheus.yml` block of docs/sharding.md with its target
// lists and exporter addresses replaced: the test runs the documented relabel_configs.
func shardingDocConfig(t *testing.T, targets, exporters []string) string {
	t.Helper()
	doc, err := os.ReadFile(filepath.Join(testbin.RepoRoot(), "docs", "sharding.md"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)```yaml\n# prometheus.yml\n(.*?)```").FindSubmatch(doc)
	if m == nil {
		t.Fatal("docs/sharding.md: no ```yaml block starting with # prometheus.yml")
	}
	cfg := string(m[1])
	targetsRe := regexp.MustCompile(`(?m)^(\s*- targets: )\[[^\]]*\](\s*#.*names from dbpool.yml.*)$`)
	if n := len(targetsRe.FindAllString(cfg, -1)); n != len(exporters) {
		t.Fatalf("docs/sharding.md's prometheus.yml changed shape: want %d target lists marked 'names from dbpool.yml' (one per shard), found %d:\n%s",
			len(exporters), n, cfg)
	}
	cfg = targetsRe.ReplaceAllString(cfg, "${1}["+strings.Join(targets, ", ")+"]")
	for i, addr := range exporters {
		placeholder := fmt.Sprintf("dbpool-exporter-%d:9930", i)
		if !strings.Contains(cfg, placeholder) {
			t.Fatalf("docs/sharding.md's prometheus.yml has no %s:\n%s", placeholder, cfg)
		}
		cfg = strings.ReplaceAll(cfg, placeholder, addr)
	}
	// One scrape a second, so that the test counts scrapes per interval quickly.
	return "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n" + cfg
}

// hashmod is Prometheus' hashmod relabel action on one label value: the low 8 bytes of the
// value's MD5, big-endian, modulo m. The test uses it to say which exporter should probe a
// name; Prometheus decides.
func hashmod(value string, m int) int {
	sum := md5.Sum([]byte(value))
	return int(binary.BigEndian.Uint64(sum[8:]) % uint64(m))
}

type promTarget struct {
	ScrapePool string            `json:"scrapePool"`
	ScrapeURL  string            `json:"scrapeUrl"`
	Labels     map[string]string `json:"labels"`
	Health     string            `json:"health"`
}

// activeTargets returns Prometheus' active scrape targets.
func (p *prometheus) activeTargets() ([]promTarget, error) {
	var data struct {
		Active []promTarget `json:"activeTargets"`
	}
	err := p.api("/api/v1/targets", url.Values{"state": {"active"}}, &data)
	return data.Active, err
}

// TestShardedExporters: two exporters share six targets through the hashmod relabeling of
// docs/sharding.md, run by a real Prometheus. From Prometheus' own data: every name is one
// scrape target, through the exporter of its shard; each name is scraped once per interval;
// each exporter has connected exactly the targets of its shard.
func TestShardedExporters(t *testing.T) {
	promBin := findBinary(t, "PROMETHEUS", "prometheus")
	exporterBin := testbin.Exporter(t)
	dir := t.TempDir()

	// Six names on two servers; both exporters run the same configuration: every name.
	f := startFleet(t, dir, 2, shardTargets)
	exporters := make([]*process, 2)
	addrs := make([]string, 2)
	for i := range exporters {
		exporters[i], addrs[i] = f.startExporter(t, dir, fmt.Sprintf("exporter-%d", i), exporterBin)
	}
	prom := startPrometheusWith(t, dir, promBin, shardingDocConfig(t, shardTargets, addrs))
	promProc := prom.proc
	procs := append([]*process{promProc}, exporters...)
	checkAlive := func() {
		t.Helper()
		for _, p := range procs {
			if p.exited() {
				t.Fatalf("%s\n--- %s output (tail) ---\n%s", p.status(), p.name, p.logTail(30))
			}
		}
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range procs {
				t.Logf("%s output (tail):\n%s", p.name, p.logTail(15))
			}
		}
	})

	// Which exporter each name should go to, by the documented relabeling.
	shardOf := map[string]int{}
	shares := make([][]string, len(addrs))
	for _, name := range shardTargets {
		shardOf[name] = hashmod(name, len(addrs))
		shares[shardOf[name]] = append(shares[shardOf[name]], name)
	}
	for i, s := range shares {
		if len(s) == 0 {
			t.Fatalf("shard %d gets none of %v: pick names that exercise both exporters", i, shardTargets)
		}
	}

	waitFor(t, "Prometheus probing the six targets through their shards", checkAlive, func() string {
		up, err := prom.query(`dbpool_up{job="dbpool"} == 1`)
		if err != nil {
			return err.Error()
		}
		if len(up) != len(shardTargets) {
			return fmt.Sprintf("%d targets up, want %d: %v", len(up), len(shardTargets), up)
		}
		return ""
	})

	// Every name is one active scrape target, through its shard's exporter.
	active, err := prom.activeTargets()
	if err != nil {
		t.Fatal(err)
	}
	scrapedThrough := map[string][]string{}
	for _, a := range active {
		if a.Labels["job"] != "dbpool" {
			continue
		}
		u, err := url.Parse(a.ScrapeURL)
		if err != nil {
			t.Fatal(err)
		}
		name := u.Query().Get("target")
		scrapedThrough[name] = append(scrapedThrough[name], u.Host)
		if a.Labels["instance"] != name || a.Health != "up" {
			t.Errorf("scrape target %s (pool %s): labels %v, health %s; want instance=%s, up", a.ScrapeURL, a.ScrapePool, a.Labels, a.Health, name)
		}
	}
	for _, name := range shardTargets {
		if got, want := scrapedThrough[name], []string{addrs[shardOf[name]]}; !slices.Equal(got, want) {
			t.Errorf("%s is scraped through %v, want exactly %v (shard %d)", name, got, want, shardOf[name])
		}
	}
	if len(scrapedThrough) != len(shardTargets) {
		t.Errorf("scrape targets for names %v, want %v", scrapedThrough, shardTargets)
	}

	// Once per interval: over 10 one-second intervals each name's up series has about 10
	// samples, where two exporters scraping it would give about 20 (or two series).
	time.Sleep(11 * time.Second)
	samples, err := prom.query(`count_over_time(up{job="dbpool"}[10s])`)
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]float64{}
	for _, s := range samples {
		v, _ := strconv.ParseFloat(fmt.Sprint(s.Value[1]), 64)
		if _, dup := counts[s.Metric["instance"]]; dup {
			t.Errorf("two up series for %s", s.Metric["instance"])
		}
		counts[s.Metric["instance"]] = v
	}
	for _, name := range shardTargets {
		if c := counts[name]; c < 8 || c > 11 {
			t.Errorf("%s: %v scrapes in 10s at a 1s interval, want 10 (one per interval)", name, c)
		}
	}

	// Each exporter connected exactly its own share: a name probed through the other exporter
	// too would have connected there as well.
	var connected []string
	waitFor(t, "the exporters' own metrics", checkAlive, func() string {
		connected = connected[:0]
		total := 0
		for i, addr := range addrs {
			s, err := prom.query(fmt.Sprintf(`dbpool_exporter_connected_targets{job="dbpool_exporter", instance=%q}`, addr))
			if err != nil {
				return err.Error()
			}
			if len(s) != 1 {
				return fmt.Sprintf("exporter %s: %d connected_targets series", addr, len(s))
			}
			n, _ := strconv.Atoi(fmt.Sprint(s[0].Value[1]))
			if n != len(shares[i]) {
				return fmt.Sprintf("exporter %d (%s) has %d targets connected, want its share %v", i, addr, n, shares[i])
			}
			total += n
			connected = append(connected, fmt.Sprintf("exporter-%d %d", i, n))
		}
		if total != len(shardTargets) {
			return fmt.Sprintf("%d targets connected in all, want %d", total, len(shardTargets))
		}
		return ""
	})
	t.Logf("shards: 0 %v, 1 %v; each name one scrape target (%v), scrapes in 10s at 1s %v; connected targets %v",
		shares[0], shares[1], scrapedThrough, counts, connected)
}
