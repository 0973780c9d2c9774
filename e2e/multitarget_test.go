package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/dbpool/dbpool_exporter/tools/testbin"
)

// multiTargets are the exporter's target names, one PostgreSQL server each.
var multiTargets = []string{"alpha", "beta", "gamma"}

// docFile holds the Multi-target scraping section, relative to the repository's root.
const docFile = "docs/configuration.md"

// docPrometheusConfig returns the `# prometheus.yml` block of docFile's Multi-target scraping
// section, with its target list and exporter address replaced: the test runs the documented
// relabel_configs, not a copy that could drift from them.
func docPrometheusConfig(t *testing.T, targets []string, exporterAddr string) string {
	t.Helper()
	doc, err := os.ReadFile(filepath.Join(testbin.RepoRoot(), docFile))
	if err != nil {
		t.Fatal(err)
	}
	section := string(doc)
	if i := strings.Index(section, "## Multi-target scraping\n"); i >= 0 {
		section = section[i:]
	} else {
		t.Fatalf("%s has no section Multi-target scraping", docFile)
	}
	m := regexp.MustCompile("(?s)```yaml\n# prometheus.yml\n(.*?)```").FindStringSubmatch(section)
	if m == nil {
		t.Fatalf("%s: no ```yaml block starting with # prometheus.yml in Multi-target scraping", docFile)
	}
	cfg := m[1]
	targetsRe := regexp.MustCompile(`(?m)^(\s*- targets: )\[[^\]]*\](\s*#.*names from dbpool.yml.*)$`)
	if !targetsRe.MatchString(cfg) || !strings.Contains(cfg, "dbpool-exporter:9930") || !strings.Contains(cfg, "__param_target") {
		t.Fatalf("%s: prometheus.yml changed shape; the test expects a target list marked "+
			"'names from dbpool.yml', __param_target and the address dbpool-exporter:9930:\n%s", docFile, cfg)
	}
	cfg = targetsRe.ReplaceAllString(cfg, "${1}["+strings.Join(targets, ", ")+"]")
	cfg = strings.ReplaceAll(cfg, "dbpool-exporter:9930", exporterAddr)
	// Prometheus' defaults (1m) would make the test wait; the documented part is unchanged.
	return "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n" + cfg
}

// TestMultiTargetEndToEnd: a real Prometheus scrapes three PostgreSQL servers through one exporter
// with the documented relabel_configs: one series of dbpool_up per server, each with its own
// instance label, and the exporter's own metrics in their own job.
func TestMultiTargetEndToEnd(t *testing.T) {
	promBin := findBinary(t, "PROMETHEUS", "prometheus")
	exporterBin := testbin.Exporter(t)
	dir := t.TempDir() // first, so that it is removed after every process is gone

	f := startFleet(t, dir, len(multiTargets), multiTargets) // one server per target
	servers, password := f.servers, f.password
	exporter, exporterAddr := f.startExporter(t, dir, "exporter", exporterBin)
	prom := startPrometheusWith(t, dir, promBin, docPrometheusConfig(t, multiTargets, exporterAddr))
	prom.exporterAddr = exporterAddr
	promProc := prom.proc
	checkAlive := func() {
		t.Helper()
		for _, p := range []*process{exporter, promProc} {
			if p.exited() {
				t.Fatalf("%s\n--- %s output (tail) ---\n%s", p.status(), p.name, p.logTail(30))
			}
		}
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("exporter output (tail):\n%s\nprometheus output (tail):\n%s", exporter.logTail(20), promProc.logTail(20))
		}
	})

	// The exporter refuses what is not a configured name, before Prometheus is involved.
	for _, q := range []string{"", "?target=delta", "?target=" + servers[0].DSN("dbpool_monitor", password, "")} {
		code, body, err := httpGet("http://" + exporterAddr + "/probe" + q)
		if err != nil || code != 400 || strings.Contains(string(body), password) {
			t.Errorf("GET /probe%s: %d %q (err %v), want 400 without the password", strings.ReplaceAll(q, password, "xxxxx"), code, body, err)
		}
	}

	waitFor(t, "Prometheus probing the three servers through the exporter", checkAlive, func() string {
		up, err := prom.query(`dbpool_up{job="dbpool"} == 1`)
		if err != nil {
			return err.Error()
		}
		var got []string
		instances := map[string]bool{}
		for _, s := range up {
			got = append(got, s.Metric["target"])
			if s.Metric["instance"] != s.Metric["target"] {
				return fmt.Sprintf("dbpool_up%v: instance should be the target name", s.Metric)
			}
			instances[s.Metric["instance"]] = true
		}
		slices.Sort(got)
		if !slices.Equal(got, multiTargets) || len(instances) != len(multiTargets) {
			return fmt.Sprintf("dbpool_up == 1 for targets %v (instances %v), want %v, each its own instance", got, instances, multiTargets)
		}
		return ""
	})

	// Each probe carries only its own target: one dbpool_up series per scrape (instance).
	for _, name := range multiTargets {
		s, err := prom.query(fmt.Sprintf(`count by (target) ({job="dbpool", instance=%q, target!=""})`, name))
		if err != nil {
			t.Fatal(err)
		}
		if len(s) != 1 || s[0].Metric["target"] != name {
			t.Errorf("probe of %s carries series of targets %v", name, s)
		}
	}
	// No process-wide series in the probes; they are in the exporter's own job, which
	// sees every target connected.
	if s, err := prom.query(`{job="dbpool", __name__=~"go_.*|process_.*|dbpool_exporter_.*"}`); err != nil || len(s) != 0 {
		t.Errorf("process-wide series in the probe job: %d (err %v)", len(s), err)
	}
	waitFor(t, "the exporter's own job", checkAlive, func() string {
		s, err := prom.query(`dbpool_exporter_connected_targets{job="dbpool_exporter"}`)
		if err != nil {
			return err.Error()
		}
		if len(s) != 1 || s[0].Value[1] != "3" {
			return fmt.Sprintf("dbpool_exporter_connected_targets = %v, want one series of 3", s)
		}
		if s, err := prom.query(`dbpool_up{job="dbpool_exporter"}`); err != nil || len(s) != 0 {
			return fmt.Sprintf("/metrics with --no-metrics.scrape-targets has dbpool_up: %v (err %v)", s, err)
		}
		return ""
	})
}
