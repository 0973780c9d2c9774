package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/dbpool/dbpool_exporter/tools/pgtest"
)

// fleet is throwaway PostgreSQL servers, each with a dbpool_monitor role (pg_monitor), and an
// exporter configuration that lists named targets on them as host DSNs with one auth module.
type fleet struct {
	servers  []*pgtest.Postgres
	password string
	config   string // the exporter's YAML file
}

// startFleet starts n servers in parallel and writes dir/exporter.yml naming target i on
// server i % n.
func startFleet(t *testing.T, dir string, n int, names []string) *fleet {
	t.Helper()
	f := &fleet{servers: make([]*pgtest.Postgres, n), password: randomPassword(t), config: filepath.Join(dir, "exporter.yml")}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { f.servers[i], errs[i] = pgtest.Start(pgtest.Options{}) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("pgtest: start PostgreSQL: %v", err)
		}
		t.Cleanup(func() { _ = f.servers[i].Close() })
	}
	for _, pg := range f.servers {
		if err := pg.CreateRole("dbpool_monitor", f.password, false, "pg_monitor"); err != nil {
			t.Fatal(err)
		}
	}
	var targets strings.Builder
	for i, name := range names {
		pg := f.servers[i%n]
		// Host DSNs without credentials: the auth module adds them.
		fmt.Fprintf(&targets, "  - name: %s\n    dsn: postgres://%s:%d/postgres\n    auth_module: monitor\n", name, pg.Host, pg.Port)
	}
	writeFile(t, f.config, "auth_modules:\n  monitor:\n    user: dbpool_monitor\n    password_env: MONITOR_PASSWORD\n"+
		"    options: {sslmode: disable}\ntargets:\n"+targets.String())
	return f
}

// startExporter starts an exporter on the fleet's configuration that serves the targets
// through /probe only, and returns it and its address.
func (f *fleet) startExporter(t *testing.T, dir, name, bin string) (*process, string) {
	t.Helper()
	return startServer(t, dir, name, bin, []string{"MONITOR_PASSWORD=" + f.password}, "/metrics", func(addr string) []string {
		return []string{
			"--web.listen-address=" + addr,
			"--config.file=" + f.config,
			"--no-metrics.scrape-targets",
			"--scrape.timeout-offset=200ms", // Prometheus' timeout in these tests is 1s
			"--log.level=info",
		}
	})
}

// startPrometheusWith starts Prometheus in dir/prometheus with the given prometheus.yml.
func startPrometheusWith(t *testing.T, dir, bin, config string) *prometheus {
	t.Helper()
	promDir := filepath.Join(dir, "prometheus")
	if err := os.Mkdir(promDir, 0o700); err != nil {
		t.Fatal(err)
	}
	p := &prometheus{config: filepath.Join(promDir, "prometheus.yml")}
	writeFile(t, p.config, config)
	p.proc, p.addr = startServer(t, promDir, "prometheus", bin, nil, "/-/ready", func(addr string) []string {
		return []string{
			"--config.file=" + p.config,
			"--storage.tsdb.path=" + filepath.Join(promDir, "data"),
			"--web.listen-address=" + addr,
			"--log.level=info",
		}
	})
	return p
}
