package metrics_test

import (
	"context"
	"log/slog"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	versioncollector "github.com/prometheus/client_golang/prometheus/collectors/version"
	dto "github.com/prometheus/client_model/go"

	"github.com/dbpool/dbpool_exporter/collector"
	"github.com/dbpool/dbpool_exporter/internal/health"
	"github.com/dbpool/dbpool_exporter/internal/metrics"
	"github.com/dbpool/dbpool_exporter/pgxpoolcollector"
	"github.com/dbpool/dbpool_exporter/poolcfg"
)

// metricsDoc holds the metric table: the contract as users, alerts and dashboards read it.
const metricsDoc = "../../docs/metrics.md"

// buildInfo is the one series that client_golang builds (versioncollector): the table lists
// its first labels and "...".
const buildInfo = "dbpool_exporter_build_info"

// docRow is one row of the metric table.
type docRow struct {
	typ    string
	labels []string // sorted; ends with "..." when the table does not list them all
}

// readTable returns the metric table of metricsDoc by metric name.
func readTable(t *testing.T) map[string]docRow {
	t.Helper()
	data, err := os.ReadFile(metricsDoc)
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("(?m)^\\| `(dbpool_[a-z_]+)` \\| ([a-z]+) \\|([^|]*)\\|")
	out := map[string]docRow{}
	for _, m := range row.FindAllStringSubmatch(string(data), -1) {
		var labels []string
		for _, l := range strings.Split(m[3], ",") {
			if l = strings.TrimSpace(l); l != "" {
				labels = append(labels, l)
			}
		}
		slices.Sort(labels)
		if _, dup := out[m[1]]; dup {
			t.Errorf("%s: %s has two rows", metricsDoc, m[1])
		}
		out[m[1]] = docRow{typ: m[2], labels: labels}
	}
	if len(out) < 20 {
		t.Fatalf("%s: only %d rows in the metric table; the parsing is broken", metricsDoc, len(out))
	}
	return out
}

// everyCollector returns every collector the daemon registers that exports dbpool_* series:
// the scrape of a PostgreSQL and a PgBouncer target, the pgxpool library, the fleet series,
// the pool history's recommendations and the build information. None of them connects.
func everyCollector(t *testing.T) []prometheus.Collector {
	t.Helper()
	logger := slog.New(slog.DiscardHandler)
	dsn, err := poolcfg.ParseDSN("postgres://monitor@127.0.0.1:1/postgres?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	opts := collector.DefaultPostgresOptions()
	opts.AppCounters = collector.NewAppCounters()
	pg, err := collector.NewPostgresTarget("db", dsn, nil, nil, opts, logger)
	if err != nil {
		t.Fatal(err)
	}
	bouncer, err := collector.NewPgBouncerTarget("bouncer", dsn, collector.DefaultPgBouncerOptions(), logger)
	if err != nil {
		t.Fatal(err)
	}
	exp := collector.NewExporter([]*collector.Target{pg, bouncer}, collector.ExporterOptions{})
	t.Cleanup(exp.Close)
	pool, err := pgxpool.New(context.Background(), dsn.ConnString())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return []prometheus.Collector{
		exp.ScrapeCollector(context.Background()),
		pgxpoolcollector.New(pool, nil, pgxpoolcollector.Options{}),
		collector.NewFleetMetrics(func() *collector.Exporter { return exp }),
		health.NewManager(health.Options{}),
		versioncollector.NewCollector("dbpool_exporter"),
	}
}

// TestMetricContract: what every collector describes is the contract of internal/metrics,
// and the contract is the metric table of the documentation, both ways: the same names,
// types and labels.
func TestMetricContract(t *testing.T) {
	contract := map[*prometheus.Desc]metrics.Series{}
	for _, s := range metrics.Contract() {
		contract[s.Desc] = s
	}
	described := map[*prometheus.Desc]bool{}
	for _, c := range everyCollector(t) {
		ch := make(chan *prometheus.Desc)
		go func() { c.Describe(ch); close(ch) }()
		for d := range ch {
			described[d] = true
			if _, ok := contract[d]; !ok && !strings.Contains(d.String(), `"`+buildInfo+`"`) {
				t.Errorf("%T describes a series built outside internal/metrics: %s", c, d)
			}
		}
	}
	code := map[string]docRow{}
	for _, s := range metrics.Contract() {
		if !described[s.Desc] {
			t.Errorf("%s is in the contract, but no collector describes it", s.Name)
		}
		labels := slices.Clone(s.Labels)
		slices.Sort(labels)
		code[s.Name] = docRow{typ: s.Type, labels: labels}
	}
	code[buildInfo] = gatherBuildInfo(t)

	table := readTable(t)
	for name, c := range code {
		d, ok := table[name]
		switch {
		case !ok:
			t.Errorf("%s (%s, labels %v) is exported but not in the metric table of %s", name, c.typ, c.labels, metricsDoc)
		case d.typ != c.typ:
			t.Errorf("%s is a %s, the metric table says %s", name, c.typ, d.typ)
		case !sameLabels(d.labels, c.labels):
			t.Errorf("%s has labels %v, the metric table says %v", name, c.labels, d.labels)
		}
	}
	for name := range table {
		if _, ok := code[name]; !ok {
			t.Errorf("%s is in the metric table of %s, but the exporter does not export it", name, metricsDoc)
		}
	}
}

// gatherBuildInfo reads the type and labels of the build information series.
func gatherBuildInfo(t *testing.T) docRow {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(versioncollector.NewCollector("dbpool_exporter"))
	mfs, err := reg.Gather()
	if err != nil || len(mfs) != 1 || len(mfs[0].GetMetric()) != 1 {
		t.Fatalf("build info: %v, %v", mfs, err)
	}
	var row docRow
	row.typ = strings.ToLower(mfs[0].GetType().String())
	for _, l := range mfs[0].GetMetric()[0].GetLabel() {
		row.labels = append(row.labels, l.GetName())
	}
	slices.Sort(row.labels)
	if mfs[0].GetType() != dto.MetricType_GAUGE {
		t.Errorf("build info is a %s", row.typ)
	}
	return row
}

// sameLabels compares the table's labels with the code's; a table list with "..." names
// some of them.
func sameLabels(table, code []string) bool {
	if i := slices.Index(table, "..."); i >= 0 {
		for _, l := range slices.Delete(slices.Clone(table), i, i+1) {
			if !slices.Contains(code, l) {
				return false
			}
		}
		return true
	}
	return slices.Equal(table, code)
}
