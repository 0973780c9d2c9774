package main

import (
	"fmt"
	"math"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

func printHost(serverVersion string) {
	cpu := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	fmt.Printf("host: %d CPUs (%s), PostgreSQL %s, %s, load average %s\n", runtime.NumCPU(), cpu, serverVersion, runtime.Version(), loadAvg())
}

// loadAvg is the 1-minute load average: figures taken on a busy machine are noisy.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}

func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	// Nearest rank.
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }

func mib(kib int) string {
	if kib < 0 {
		return "?"
	}
	return fmt.Sprintf("%.1f MiB", float64(kib)/1024)
}

func ratio(a, b time.Duration) float64 {
	if b <= 0 {
		return math.NaN()
	}
	return float64(a) / float64(b)
}

func printResults(o options, results []levelResult) {
	fmt.Println()
	fmt.Printf("Scrape latency: %d sequential GET /metrics per exporter and level (after %d warm-up), interleaved with\n", o.scrapes, o.warmup)
	fmt.Printf("%d runs of the bare activity query over pgx; pgbench avg: -M prepared -t %d -c 1 with the same query.\n", o.queries, o.queries)
	fmt.Println("ratio = scrape / bare query (pgx), at the same percentile. RSS: exporter VmRSS after the level.")
	fmt.Println()
	head := []string{"backends", "exporter", "scrape p50", "scrape p95", "bare p50", "bare p95", "ratio p50", "ratio p95", "pgbench avg", "RSS", "series all/dbpool_"}
	var rows [][]string
	for _, r := range results {
		bp50, bp95 := percentile(r.bare, 50), percentile(r.bare, 95)
		for _, e := range r.exporters {
			sp50, sp95 := percentile(e.scrapes, 50), percentile(e.scrapes, 95)
			rows = append(rows, []string{
				strconv.Itoa(r.backends), e.label, ms(sp50), ms(sp95), ms(bp50), ms(bp95),
				fmt.Sprintf("%.2fx", ratio(sp50, bp50)), fmt.Sprintf("%.2fx", ratio(sp95, bp95)),
				ms(r.pgbenchAvg), mib(e.rssKiB), fmt.Sprintf("%d/%d", e.seriesAll, e.seriesDbpool),
			})
		}
	}
	printTable(head, rows)

	fmt.Println()
	fmt.Println("Inside the exporter (medians of its own dbpool_scrape_duration_seconds per job; the jobs run concurrently):")
	fmt.Println()
	head = []string{"backends", "exporter", "activity job p50", "probe job p50", "probe failures", "backends counted", "peak RSS"}
	rows = nil
	for _, r := range results {
		for _, e := range r.exporters {
			probe, failed := "-", "-"
			if len(e.probeJob) > 0 {
				probe, failed = ms(percentile(e.probeJob, 50)), fmt.Sprintf("%d/%d", e.probeFailed, len(e.probeJob))
			}
			rows = append(rows, []string{strconv.Itoa(r.backends), e.label, ms(percentile(e.activityJob, 50)), probe, failed,
				strconv.Itoa(e.seen), mib(e.hwmKiB)})
		}
	}
	printTable(head, rows)

	if len(results) == 0 {
		return
	}
	fmt.Println()
	last, first := results[len(results)-1], results[0]
	bare := percentile(last.bare, 50)
	for i, e := range last.exporters {
		r := ratio(percentile(e.scrapes, 50), bare)
		verdict := "met"
		if r > 1.5 {
			verdict = "not met"
		}
		fmt.Printf("target scrape p50 <= 1.5x bare query p50 at %d backends, %s: %.2fx (%s)\n", last.backends, e.label, r, verdict)
		f := first.exporters[i]
		fmt.Printf("memory %s: RSS %s at %d backends, %s at %d (%+.1f MiB)\n", e.label, mib(f.rssKiB), first.backends,
			mib(e.rssKiB), last.backends, float64(e.rssKiB-f.rssKiB)/1024)
	}
}

func printTable(head []string, rows [][]string) {
	width := make([]int, len(head))
	for i, h := range head {
		width[i] = len(h)
	}
	for _, r := range rows {
		for i, c := range r {
			width[i] = max(width[i], len(c))
		}
	}
	line := func(cells []string) {
		parts := make([]string, len(cells))
		for i, c := range cells {
			if i == 1 { // the label column reads better left-aligned
				parts[i] = fmt.Sprintf("%-*s", width[i], c)
			} else {
				parts[i] = fmt.Sprintf("%*s", width[i], c)
			}
		}
		fmt.Println(strings.TrimRight(strings.Join(parts, " | "), " "))
	}
	line(head)
	sep := make([]string, len(head))
	for i := range sep {
		sep[i] = strings.Repeat("-", width[i])
	}
	fmt.Println(strings.Join(sep, "-|-"))
	for _, r := range rows {
		line(r)
	}
}
