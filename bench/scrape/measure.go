package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dbpool/dbpool_exporter/collector"
	"github.com/dbpool/dbpool_exporter/tools/childproc"
)

// measure interleaves the two exporters' scrapes and the bare query round by round, so that
// background noise hits all three alike; pgbench runs afterwards as its own process.
func measure(ctx context.Context, o options, n int, client *http.Client, exporters []*exporterProc, monitor *pgx.Conn, pgb pgbench) (levelResult, error) {
	r := levelResult{backends: n, exporters: make([]exporterResult, len(exporters))}
	for i, e := range exporters {
		r.exporters[i].label = e.label
	}
	for round := -o.warmup; round < max(o.scrapes, o.queries); round++ {
		measured := round >= 0
		for i, e := range exporters {
			if round >= o.scrapes {
				break
			}
			d, body, err := scrapeOnce(ctx, client, e.url)
			if err != nil {
				return r, fmt.Errorf("%s: %w", e.label, err)
			}
			s, err := parseScrape(body)
			if err != nil {
				return r, fmt.Errorf("%s: %w", e.label, err)
			}
			if !measured {
				continue
			}
			er := &r.exporters[i]
			er.scrapes = append(er.scrapes, d)
			er.activityJob = append(er.activityJob, s.activityJob)
			if s.hasProbe {
				er.probeJob = append(er.probeJob, s.probeJob)
				if !s.probeOK {
					er.probeFailed++
				}
			}
			er.seen, er.seriesAll, er.seriesDbpool = s.seen, s.seriesAll, s.seriesDbpool
		}
		if round < o.queries {
			d, err := bareQuery(ctx, monitor)
			if err != nil {
				return r, fmt.Errorf("bare query: %w", err)
			}
			if measured {
				r.bare = append(r.bare, d)
			}
		}
	}
	for i, e := range exporters {
		r.exporters[i].rssKiB, r.exporters[i].hwmKiB = procMemory(e.Pid())
		if r.exporters[i].seen != n {
			say("  note: %s counted %d client backends, expected %d", e.label, r.exporters[i].seen, n)
		}
	}
	avg, err := pgb.run(ctx, o.queries)
	if err != nil {
		return r, err
	}
	r.pgbenchAvg = avg
	return r, nil
}

// scrapeOnce times one GET of /metrics until the whole body is read, as Prometheus sees it.
func scrapeOnce(ctx context.Context, client *http.Client, url string) (time.Duration, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	d := time.Since(start)
	if err != nil {
		return 0, nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	return d, body, nil
}

// bareQuery runs ActivityQuery the way the exporter does (pgx, its default prepared-statement
// cache) and reads every row.
func bareQuery(ctx context.Context, conn *pgx.Conn) (time.Duration, error) {
	start := time.Now()
	rows, err := conn.Query(ctx, collector.ActivityQuery)
	if err != nil {
		return 0, err
	}
	for rows.Next() {
		if _, err := rows.Values(); err != nil {
			rows.Close()
			return 0, err
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, err
	}
	return time.Since(start), nil
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
		Env: append(childproc.Environ(callerDBEnv...), "PGPASSWORD="+p.password, "PGSSLMODE=disable", "PGAPPNAME="+benchAppName+"_pgbench"),
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
