package main

import (
	"fmt"
	"strconv"

	"github.com/dbpool/dbpool_exporter/bench/benchkit"
)

func printResults(o options, results []levelResult) {
	fmt.Println()
	fmt.Printf("Scrape latency: %d sequential GET /metrics per exporter and level (after %d warm-up), interleaved with\n", o.Scrapes, o.Warmup)
	fmt.Printf("%d runs of the bare activity query over pgx; pgbench avg: -M prepared -t %d -c 1 with the same query.\n", o.queries, o.queries)
	fmt.Println("ratio = scrape / bare query (pgx), at the same percentile. RSS: exporter VmRSS after the level.")
	fmt.Println()
	head := []string{"backends", "exporter", "scrape p50", "scrape p95", "bare p50", "bare p95", "ratio p50", "ratio p95", "pgbench avg", "RSS", "series all/dbpool_"}
	var rows [][]string
	for _, r := range results {
		bp50, bp95 := benchkit.Percentile(r.bare, 50), benchkit.Percentile(r.bare, 95)
		for _, e := range r.exporters {
			sp50, sp95 := benchkit.Percentile(e.scrapes, 50), benchkit.Percentile(e.scrapes, 95)
			rows = append(rows, []string{
				strconv.Itoa(r.backends), e.label, benchkit.MS(sp50), benchkit.MS(sp95), benchkit.MS(bp50), benchkit.MS(bp95),
				fmt.Sprintf("%.2fx", benchkit.Ratio(sp50, bp50)), fmt.Sprintf("%.2fx", benchkit.Ratio(sp95, bp95)),
				benchkit.MS(r.pgbenchAvg), benchkit.MiB(e.rssKiB), fmt.Sprintf("%d/%d", e.seriesAll, e.seriesDbpool),
			})
		}
	}
	benchkit.PrintTable(head, rows)

	fmt.Println()
	fmt.Println("Inside the exporter (medians of its own dbpool_scrape_duration_seconds per job; the jobs run concurrently):")
	fmt.Println()
	head = []string{"backends", "exporter", "activity job p50", "probe job p50", "probe failures", "backends counted", "peak RSS"}
	rows = nil
	for _, r := range results {
		for _, e := range r.exporters {
			probe, failed := "-", "-"
			if len(e.probeJob) > 0 {
				probe, failed = benchkit.MS(benchkit.Percentile(e.probeJob, 50)), fmt.Sprintf("%d/%d", e.probeFailed, len(e.probeJob))
			}
			rows = append(rows, []string{strconv.Itoa(r.backends), e.label, benchkit.MS(benchkit.Percentile(e.activityJob, 50)), probe, failed,
				strconv.Itoa(e.seen), benchkit.MiB(e.hwmKiB)})
		}
	}
	benchkit.PrintTable(head, rows)

	if len(results) == 0 {
		return
	}
	fmt.Println()
	last, first := results[len(results)-1], results[0]
	bare := benchkit.Percentile(last.bare, 50)
	for i, e := range last.exporters {
		r := benchkit.Ratio(benchkit.Percentile(e.scrapes, 50), bare)
		verdict := "met"
		if r > 1.5 {
			verdict = "not met"
		}
		fmt.Printf("target scrape p50 <= 1.5x bare query p50 at %d backends, %s: %.2fx (%s)\n", last.backends, e.label, r, verdict)
		f := first.exporters[i]
		fmt.Printf("memory %s: RSS %s at %d backends, %s at %d (%+.1f MiB)\n", e.label, benchkit.MiB(f.rssKiB), first.backends,
			benchkit.MiB(e.rssKiB), last.backends, float64(e.rssKiB-f.rssKiB)/1024)
	}
}
