package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/dbpool/dbpool_exporter/bench/benchkit"
)

// rssFlatKiB is how much RSS may grow from the first level to the last and still count as
// flat.
const rssFlatKiB = 5 * 1024

func cpuMS(d time.Duration) string {
	return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
}

func per20(n, scrapes int) string {
	if scrapes == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f", float64(n)*20/float64(scrapes))
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT MET"
}

func printResults(o options, peers []*peer, results []levelResult, distinct distinctResult, bouncer map[*peer]*peerResult, skipped []string) {
	fmt.Println()
	fmt.Printf("PostgreSQL exporters: %d sequential GET /metrics per exporter and level (after %d warm-up), interleaved round by\n", o.Scrapes, o.Warmup)
	fmt.Println("round with the bare activity query (collector.ActivityQuery over pgx, prepared). x bare = scrape p50 / bare p50.")
	fmt.Println("statements and status reads: pg_stat_statements calls of the exporter's role per scrape; status reads are statements")
	fmt.Println("on pg_stat_activity/pg_stat_replication/... (each copies every backend's status). logins: log_connections lines of")
	fmt.Println("the role per 20 scrapes (in brackets: the dbpool_exporter probe's). held: most backends of the role between scrapes,")
	fmt.Println("probe logins left out. CPU: the exporter's utime+stime per scrape (10 ms ticks over all scrapes). RSS: VmRSS after.")
	fmt.Println()
	head := []string{"backends", "exporter", "scrape p50", "scrape p95", "x bare", "statements", "status reads", "logins/20", "held", "CPU/scrape", "RSS", "series"}
	var rows [][]string
	for _, r := range results {
		n := strconv.Itoa(r.backends)
		rows = append(rows, []string{n, "bare ActivityQuery (pgx)", benchkit.MS(benchkit.Percentile(r.bare, 50)), benchkit.MS(benchkit.Percentile(r.bare, 95)),
			"1.00x", "1", "1", "-", "-", "-", "-", "-"})
		bare := benchkit.Percentile(r.bare, 50)
		for _, p := range peers {
			pr, ok := r.peers[p]
			if !ok || len(pr.scrapes) == 0 {
				continue
			}
			p50 := benchkit.Percentile(pr.scrapes, 50)
			logins := per20(pr.logins, len(pr.scrapes))
			if p.dbpool && pr.probeLogins > 0 {
				logins += " (" + per20(pr.probeLogins, len(pr.scrapes)) + ")"
			}
			rows = append(rows, []string{n, p.label, benchkit.MS(p50), benchkit.MS(benchkit.Percentile(pr.scrapes, 95)),
				fmt.Sprintf("%.2fx", benchkit.Ratio(p50, bare)), fmt.Sprintf("%.1f", pr.statements), fmt.Sprintf("%.1f", pr.statusReads),
				logins, strconv.Itoa(pr.held), cpuMS(pr.cpu), benchkit.MiB(pr.rssKiB), strconv.Itoa(pr.series)})
		}
	}
	benchkit.PrintTable(head, rows)
	for _, s := range skipped {
		fmt.Printf("skipped: %s\n", s)
	}

	fmt.Println()
	fmt.Printf("Series count as the application_names of the sessions become distinct (last level; the renamed sessions are idle):\n\n")
	head = []string{"", "exporter"}
	for _, n := range distinct.names {
		head = append(head, fmt.Sprintf("%d names", n))
	}
	head = append(head, "RSS after")
	rows = nil
	for _, p := range peers {
		s, ok := distinct.series[p]
		if !ok {
			continue
		}
		row := []string{"", p.label}
		for _, v := range s {
			row = append(row, strconv.Itoa(v))
		}
		for len(row) < len(head)-1 {
			row = append(row, "-")
		}
		rows = append(rows, append(row, benchkit.MiB(distinct.rssKiB[p])))
	}
	benchkit.PrintTable(head, rows)

	fmt.Println()
	fmt.Printf("PgBouncer exporters (PgBouncer with %d idle clients): %d sequential scrapes each, interleaved. statements: what\n", pgbouncerClients, o.Scrapes)
	fmt.Println("its source sends (POOLS, STATS, DATABASES, USERS, CONFIG, VERSION; the Python one STATS, POOLS, DATABASES, LISTS:")
	fmt.Println("the admin console keeps no statement statistics); logins: PgBouncer's \"login attempt\" lines of its user.")
	fmt.Println()
	head = []string{"", "exporter", "scrape p50", "scrape p95", "statements", "logins/20", "CPU/scrape", "RSS", "series"}
	rows = nil
	for _, p := range peers {
		pr, ok := bouncer[p]
		if !ok || len(pr.scrapes) == 0 {
			continue
		}
		rows = append(rows, []string{"", p.label, benchkit.MS(benchkit.Percentile(pr.scrapes, 50)), benchkit.MS(benchkit.Percentile(pr.scrapes, 95)),
			p.statsSrc, per20(pr.logins, len(pr.scrapes)), cpuMS(pr.cpu), benchkit.MiB(pr.rssKiB), strconv.Itoa(pr.series)})
	}
	benchkit.PrintTable(head, rows)

	fmt.Println()
	for _, p := range peers {
		if p.failed != "" {
			fmt.Printf("not measured (fully): %s: %s\n", p.label, p.failed)
		}
	}
	printTargets(peers, results, distinct)
}

// printTargets prints issue 9's targets, met or not, for the dbpool_exporter peers.
func printTargets(peers []*peer, results []levelResult, distinct distinctResult) {
	if len(results) == 0 {
		return
	}
	// The speed targets are stated at 2,000 backends.
	at := results[len(results)-1]
	for _, r := range results {
		if r.backends == 2000 {
			at = r
		}
	}
	var pgexp *peer
	for _, p := range peers {
		if p.side == "postgres" && !p.dbpool {
			pgexp = p
		}
	}
	fmt.Println("Targets (issue 9):")
	bare := benchkit.Percentile(at.bare, 50)
	for _, p := range peers {
		if !p.dbpool || p.side != "postgres" {
			continue
		}
		pr, ok := at.peers[p]
		if !ok || len(pr.scrapes) == 0 {
			fmt.Printf("  %s: no figures at %d backends\n", p.label, at.backends)
			continue
		}
		p50 := benchkit.Percentile(pr.scrapes, 50)
		x := benchkit.Ratio(p50, bare)
		fmt.Printf("  %s: scrape p50 <= 1.5x bare query at %d backends: %.2fx (%s)\n", p.label, at.backends, x, verdict(x <= 1.5))
		if q, ok := at.peers[pgexp]; pgexp != nil && ok && len(q.scrapes) > 0 {
			f := benchkit.Ratio(benchkit.Percentile(q.scrapes, 50), p50)
			fmt.Printf("  %s: >= 5x faster than postgres_exporter at %d backends: %.1fx (%s)\n", p.label, at.backends, f, verdict(f >= 5))
		} else {
			fmt.Printf("  %s: >= 5x faster than postgres_exporter: no postgres_exporter figures\n", p.label)
		}
		held, logins, probe, scrapes := 0, 0, 0, 0
		for _, r := range results {
			if q, ok := r.peers[p]; ok {
				held = max(held, q.held)
				logins += q.logins - q.probeLogins
				probe += q.probeLogins
				scrapes += len(q.scrapes)
			}
		}
		fmt.Printf("  %s: one monitoring connection: at most %d held at every level (%s)\n", p.label, held, verdict(held == 1))
		churn := fmt.Sprintf("%d monitoring logins in %d scrapes", logins, scrapes)
		if probe > 0 {
			churn += fmt.Sprintf("; plus %d probe logins, one per scrape by design (--no-collector.probe turns them off)", probe)
		}
		fmt.Printf("  %s: no connection churn: %s (%s)\n", p.label, churn, verdict(logins == 0))
		if s := distinct.series[p]; len(s) >= 3 {
			fmt.Printf("  %s: series independent of distinct application names: %s with %s names (%s)\n", p.label,
				joinInts(s, " / "), joinInts(distinct.names, " / "), verdict(s[len(s)-1] == s[len(s)-2] && s[len(s)-1] >= 0))
		}
		first, last := results[0].peers[p], results[len(results)-1].peers[p]
		if first != nil && last != nil {
			grow := last.rssKiB - first.rssKiB
			fmt.Printf("  %s: RSS flat (grows <= %s from %d to %d backends): %s -> %s, %+.1f MiB (%s)\n", p.label, benchkit.MiB(rssFlatKiB),
				results[0].backends, results[len(results)-1].backends, benchkit.MiB(first.rssKiB), benchkit.MiB(last.rssKiB), float64(grow)/1024, verdict(grow <= rssFlatKiB))
		}
	}
}

func joinInts(v []int, sep string) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, sep)
}
