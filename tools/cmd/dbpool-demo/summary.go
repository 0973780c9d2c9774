package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/dbpool/dbpool_exporter/internal/health"
)

// printSummary prints one line per pool and source of what the exporter sees, and the
// application's own numbers for the same moment.
func printSummary(metricsURL string, api *apiApp, workerURL string) {
	mfs, err := scrape(metricsURL)
	if err != nil {
		fmt.Println("scrape failed:", err)
		return
	}
	fmt.Printf("%s  dbpool_up: postgres %g, pgbouncer %g  probe login %.1f ms\n", time.Now().Format("15:04:05"),
		get(mfs, "dbpool_up", map[string]string{"target": "demo"}), get(mfs, "dbpool_up", map[string]string{"target": "pgbouncer"}),
		1000*get(mfs, "dbpool_probe_connect_seconds", nil))
	views := poolViews(mfs)
	width := 14 // the pool column fits the longest name, e.g. application_name:psql
	for _, v := range views {
		width = max(width, len(v.pool))
	}
	for _, v := range views {
		if v.pool == "dbpool_exporter" {
			continue // the exporter's own connection
		}
		l := map[string]string{"pool": v.pool, "source": v.source}
		capacity := get(mfs, "dbpool_max_connections", l)
		line := fmt.Sprintf("  pool %-*s in use %3.0f", width, v.pool, get(mfs, "dbpool_in_use_connections", l))
		if capacity > 0 {
			line += fmt.Sprintf("/%-3.0f (%3.0f%%)  overflow %2.0f/%-3.0f", capacity, 100*get(mfs, "dbpool_utilization_ratio", l),
				get(mfs, "dbpool_overflow_connections", l), get(mfs, "dbpool_max_overflow_connections", l)*get(mfs, "dbpool_instances", l))
		}
		line += fmt.Sprintf("  open %3.0f", get(mfs, "dbpool_open_connections", l))
		if has(mfs, "dbpool_longest_query_seconds", l) {
			line += fmt.Sprintf("  idle in tx %2.0f  longest query %5.1fs",
				get(mfs, "dbpool_connections", map[string]string{"pool": v.pool, "source": v.source, "state": "idle in transaction"}),
				get(mfs, "dbpool_longest_query_seconds", l))
		}
		if has(mfs, "dbpool_pending_checkouts", l) {
			line += fmt.Sprintf("  waiting %2.0f  longest wait %4.0f ms  avg wait %s", get(mfs, "dbpool_pending_checkouts", l),
				1000*get(mfs, "dbpool_longest_checkout_wait_seconds", l), avgCheckout(mfs, l))
		}
		if has(mfs, "dbpool_checkout_timeouts_total", l) {
			line += fmt.Sprintf("  timeouts %.0f", get(mfs, "dbpool_checkout_timeouts_total", l))
		}
		fmt.Printf("%s   [%s]\n", line, describeSource(v.source))
	}
	if wm, err := scrape(workerURL); err == nil {
		l := map[string]string{"pool": workerName}
		fmt.Printf("  worker's own pgxpool (exact): in use %.0f/%.0f  waiting %.0f  avg checkout %s  timeouts %.0f\n",
			get(wm, "dbpool_in_use_connections", l), get(wm, "dbpool_max_connections", l), get(wm, "dbpool_pending_checkouts", l),
			avgCheckout(wm, l), get(wm, "dbpool_checkout_timeouts_total", l))
	}
	api.printTruth()
}

// printAdvice prints the exporter's health warnings and recommended .env lines for pool.
func printAdvice(url, pool string) {
	var body health.PoolsResponse
	if err := getJSON(url, &body); err != nil {
		fmt.Println("advice: cannot read", url+":", err)
		return
	}
	for _, r := range body.Pools {
		if r.Pool != pool {
			continue
		}
		fmt.Printf("==> the exporter's advice for pool %s (%s, from %s):\n", r.Pool, r.State, url)
		line := fmt.Sprintf("  utilization %.0f%% of pool_size (peak %.0f%%)", r.Health.UtilizationPct, r.Health.PeakUtilizationPct)
		if c := r.Health.CapacityUtilizationPct; c != nil {
			line += fmt.Sprintf(", %.0f%% of capacity", *c)
		}
		fmt.Println(line)
		if !r.Exact {
			fmt.Println("  " + health.EstimateNote)
		}
		if len(r.Health.Warnings) == 0 {
			fmt.Println("  no warnings")
		}
		for _, w := range health.WithoutEstimateNote(r.Health.Warnings) {
			fmt.Printf("  warning [%s] %s\n", w.Rule, w.Message)
		}
		for _, rec := range health.WithoutEstimateNote(r.Optimization.Recommendations) {
			fmt.Printf("  recommendation [%s] %s\n", rec.Rule, rec.Message)
		}
		fmt.Printf("  recommended .env (by %s):\n", r.Optimization.PoolSizeRule)
		for _, l := range strings.Split(strings.TrimSpace(r.Optimization.Env), "\n") {
			fmt.Println("    " + l)
		}
		return
	}
	fmt.Println("advice: the exporter has no report for pool", pool, "yet")
}

// avgCheckout is the mean checkout wait since start, from the histogram's sum and count.
func avgCheckout(mfs map[string]*dto.MetricFamily, l map[string]string) string {
	mf, ok := mfs["dbpool_checkout_duration_seconds"]
	if !ok {
		return "n/a"
	}
	for _, m := range mf.GetMetric() {
		if labelsMatch(m, l) && m.GetHistogram().GetSampleCount() > 0 {
			h := m.GetHistogram()
			return fmt.Sprintf("%.1f ms", 1000*h.GetSampleSum()/float64(h.GetSampleCount()))
		}
	}
	return "n/a"
}

// describeSource says how far a source's numbers can be trusted.
func describeSource(src string) string {
	if src == "activity" {
		return "activity: estimate from pg_stat_activity"
	}
	return src + ": exact"
}

// poolView is one pool as one source sees it.
type poolView struct{ pool, source string }

// poolViews lists the (pool, source) pairs of the scrape, in its order: a pool that the
// application reports itself is there twice, its exact and its server-side view.
func poolViews(mfs map[string]*dto.MetricFamily) []poolView {
	var views []poolView
	if mf, ok := mfs["dbpool_open_connections"]; ok {
		for _, m := range mf.GetMetric() {
			var v poolView
			for _, lp := range m.GetLabel() {
				switch lp.GetName() {
				case "pool":
					v.pool = lp.GetValue()
				case "source":
					v.source = lp.GetValue()
				}
			}
			views = append(views, v)
		}
	}
	return views
}

func scrape(url string) (map[string]*dto.MetricFamily, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	return parser.TextToMetricFamilies(resp.Body)
}

func labelsMatch(m *dto.Metric, want map[string]string) bool {
	have := map[string]string{}
	for _, lp := range m.GetLabel() {
		have[lp.GetName()] = lp.GetValue()
	}
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

func has(mfs map[string]*dto.MetricFamily, name string, want map[string]string) bool {
	for _, m := range mfs[name].GetMetric() {
		if labelsMatch(m, want) {
			return true
		}
	}
	return false
}

// get returns the first series of name whose labels include want (0 if none).
func get(mfs map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	mf, ok := mfs[name]
	if !ok {
		return 0
	}
	for _, m := range mf.GetMetric() {
		if !labelsMatch(m, want) {
			continue
		}
		if g := m.GetGauge(); g != nil {
			return g.GetValue()
		}
		if c := m.GetCounter(); c != nil {
			return c.GetValue()
		}
	}
	return 0
}

func getJSON(url string, v any) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(v)
}
