package main

import (
	"fmt"
	"time"

	"github.com/dbpool/dbpool_exporter/bench/benchkit"
)

// The targets, from the Helm chart's defaults (charts/dbpool-exporter/values.yaml): one
// exporter probing 200 targets every 30 s should fit its memory limit and its CPU request.
const (
	chartMemoryLimitKiB = 128 << 10 // resources.limits.memory 128Mi
	chartCPURequest     = 0.1       // resources.requests.cpu 100m
	targetInterval      = 30 * time.Second
	targetTargets       = 200
	// memPerTargetKiB leaves the chart's limit room for a 32 MiB base at 200 targets.
	memPerTargetKiB = (chartMemoryLimitKiB - 32<<10) / targetTargets
)

// cpuPerProbeTarget is the CPU one probe may take so that 200 targets every 30 s stay within
// the chart's CPU request: 0.1 core x 30 s / 200 = 15 ms.
var cpuPerProbeTarget = time.Duration(chartCPURequest * float64(targetInterval) / targetTargets)

func printResults(o options, results []result) {
	var rows [][]string
	for _, r := range results {
		rows = append(rows, []string{
			fmt.Sprint(o.targets),
			r.label,
			fmt.Sprintf("%.0f", r.after.connected),
			fmt.Sprint(r.after.held),
			benchkit.MiB(r.before.rssKiB),
			benchkit.MiB(r.connected.rssKiB),
			benchkit.MiB(r.after.rssKiB),
			perTarget(float64(r.after.rssKiB-r.before.rssKiB), r.after.connected),
			perTarget((r.after.heapBytes-r.before.heapBytes)/1024, r.after.connected),
			cpuMS(r.cpu, r.probes),
			benchkit.MS(benchkit.Percentile(r.latencies, 50)),
			benchkit.MS(benchkit.Percentile(r.latencies, 95)),
			fmt.Sprintf("%.0f", r.after.capDrops-r.connected.capDrops),
			fmt.Sprintf("%d/%d", r.failed, r.probes),
		})
	}
	benchkit.PrintTable([]string{"targets", "exporter", "connected", "server conns", "RSS before", "RSS connected", "RSS after",
		"RSS/target", "heap/target", "CPU/probe", "probe p50", "probe p95", "cap drops", "failed"}, rows)
	fmt.Println(`
RSS before: started, configuration loaded, nothing connected. RSS connected: after two rounds.
RSS after: after the measured rounds. RSS/target and heap/target: (after - before) / connected.
CPU/probe: the exporter's utime+stime over the measured rounds / probes (10 ms ticks).
cap drops: targets disconnected by --target.max-connected during the measured rounds.
Not in these figures: the pool history behind /pools and the advice, which grows over
--health.window (at most 720 points per pool, 500 pools) and holds a few points here.`)

	var on *result
	for i := range results {
		if results[i].connects == o.targets && on == nil {
			on = &results[i]
		}
	}
	if on == nil || on.after.connected == 0 {
		return
	}
	fmt.Println()
	memPer := float64(on.after.rssKiB-on.before.rssKiB) / on.after.connected
	cpuPer := on.cpu / time.Duration(max(on.probes, 1))
	projected := on.before.rssKiB + int(memPer*targetTargets)
	benchkit.PrintTable([]string{"", "target", "figure (" + on.label + ")", "verdict"}, [][]string{
		{"1", fmt.Sprintf("memory per connected target <= %d KiB (%d targets + 32 MiB base in the chart's 128 MiB limit)", memPerTargetKiB, targetTargets),
			fmt.Sprintf("%.0f KiB", memPer), verdict(memPer <= float64(memPerTargetKiB))},
		{"2", fmt.Sprintf("RSS with %d targets connected <= 128 MiB (the chart's limit)", targetTargets),
			benchkit.MiB(projected), verdict(projected <= chartMemoryLimitKiB)},
		{"3", fmt.Sprintf("CPU per probe <= %s (%d targets every %s within 0.1 core)", benchkit.MS(cpuPerProbeTarget), targetTargets, targetInterval),
			benchkit.MS(cpuPer), verdict(cpuPer <= cpuPerProbeTarget)},
		{"4", "one monitoring connection per connected target",
			fmt.Sprintf("%d server connections for %.0f targets", on.after.held, on.after.connected), verdict(float64(on.after.held) == on.after.connected)},
	})
}

func perTarget(kib, connected float64) string {
	if connected <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f KiB", kib/connected)
}

func cpuMS(cpu time.Duration, probes int) string {
	if cpu < 0 || probes == 0 {
		return "?"
	}
	return benchkit.MS(cpu / time.Duration(probes))
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}
