package main

import (
	"context"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dbpool/dbpool_exporter/bench/benchkit"
	"github.com/dbpool/dbpool_exporter/tools/childproc"
)

// measure interleaves the two exporters' scrapes and the bare query round by round, so that
// background noise hits all three alike; pgbench runs afterwards as its own process.
func measure(ctx context.Context, o options, n int, client *http.Client, exporters []*benchkit.Exporter, monitor *pgx.Conn, pgb pgbench) (levelResult, error) {
	r := levelResult{backends: n, exporters: make([]exporterResult, len(exporters))}
	for i, e := range exporters {
		r.exporters[i].label = e.Label
	}
	for round := -o.Warmup; round < max(o.Scrapes, o.queries); round++ {
		measured := round >= 0
		for i, e := range exporters {
			if round >= o.Scrapes {
				break
			}
			d, body, err := benchkit.ScrapeOnce(ctx, client, e.URL)
			if err != nil {
				return r, fmt.Errorf("%s: %w", e.Label, err)
			}
			s, err := benchkit.ParseScrape(body)
			if err != nil {
				return r, fmt.Errorf("%s: %w", e.Label, err)
			}
			if !measured {
				continue
			}
			er := &r.exporters[i]
			er.scrapes = append(er.scrapes, d)
			er.activityJob = append(er.activityJob, s.ActivityJob)
			if s.HasProbe {
				er.probeJob = append(er.probeJob, s.ProbeJob)
				if !s.ProbeOK {
					er.probeFailed++
				}
			}
			er.seen, er.seriesAll, er.seriesDbpool = s.Seen, s.SeriesAll, s.SeriesDbpool
		}
		if round < o.queries {
			d, err := benchkit.BareQuery(ctx, monitor)
			if err != nil {
				return r, fmt.Errorf("bare query: %w", err)
			}
			if measured {
				r.bare = append(r.bare, d)
			}
		}
	}
	for i, e := range exporters {
		r.exporters[i].rssKiB, r.exporters[i].hwmKiB = benchkit.ProcMemory(e.Pid())
		if r.exporters[i].seen != n {
			benchkit.Say("  note: %s counted %d client backends, expected %d", e.Label, r.exporters[i].seen, n)
		}
	}
	avg, err := pgb.run(ctx, o.queries)
	if err != nil {
		return r, err
	}
	r.pgbenchAvg = avg
	return r, nil
}

// pgbench runs ActivityQuery as a one-statement script with one client.
type pgbench struct {
	bin, script    string
	host           string
	port           int
	user, password string
}

var pgbenchLatency = regexp.MustCompile(`(?m)^latency average = ([0-9.]+) ms`)

func (p pgbench) run(ctx context.Context, transactions int) (time.Duration, error) {
	// -M prepared: the exporter's pgx connection prepares the query once and then only
	// executes it, and so does the bare pgx run; with the simple protocol pgbench would
	// also plan the pg_stat_activity view every time. -P makes pgbench time every
	// transaction, so the average leaves out the initial login; the interval is longer than
	// the run, so no progress lines appear.
	out, err := childproc.Run(ctx, childproc.Spec{
		Path: p.bin,
		Args: []string{"-n", "-M", "prepared", "-f", p.script, "-t", strconv.Itoa(transactions), "-c", "1", "-P", "3600",
			"-h", p.host, "-p", strconv.Itoa(p.port), "-U", p.user, "postgres"},
		Env: append(childproc.Environ(benchkit.CallerDBEnv...), "PGPASSWORD="+p.password, "PGSSLMODE=disable", "PGAPPNAME="+benchkit.AppName+"_pgbench"),
	})
	if err != nil {
		return 0, err
	}
	m := pgbenchLatency.FindStringSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("pgbench: no \"latency average\" in its output:\n%s", out)
	}
	ms, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return 0, err
	}
	return time.Duration(ms * float64(time.Millisecond)), nil
}
