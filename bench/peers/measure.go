package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dbpool/dbpool_exporter/bench/benchkit"
	"github.com/dbpool/dbpool_exporter/collector"
	"github.com/dbpool/dbpool_exporter/tools/pgtest"
)

// statusReads matches the statements that read backend status: the views and functions that
// call pgstat_read_current_status, a copy of every backend's entry (once per transaction).
const statusReads = `pg_stat_activity|pg_stat_get_activity|pg_stat_replication|pg_stat_wal_receiver|pg_stat_subscription|pg_stat_get_backend`

// statementsQuery sums pg_stat_statements' calls per role: all statements, and those that
// read backend status.
const statementsQuery = `SELECT r.rolname, sum(s.calls)::bigint,
  coalesce(sum(s.calls) FILTER (WHERE s.query ~* '` + statusReads + `'), 0)::bigint
FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid
GROUP BY r.rolname`

type meter struct {
	o          options
	pg         *pgtest.Postgres
	bouncerLog string
	monitor    *pgx.Conn
	client     *http.Client
}

type levelResult struct {
	backends    int
	bare        []time.Duration
	openTime    time.Duration
	measureTime time.Duration
	memUsedKiB  int // MemAvailable used up by opening this level's sessions
	peers       map[*peer]*peerResult
}

type peerResult struct {
	scrapes     []time.Duration
	statements  float64 // per scrape
	statusReads float64 // per scrape
	logins      int     // logins during the measured scrapes
	probeLogins int     // of which the dbpool_exporter probe's
	held        int     // most backends (or console sessions) held at once between scrapes
	cpu         time.Duration
	rssKiB      int
	hwmKiB      int
	series      int
}

type counts struct{ statements, statusReads int64 }

func (m *meter) statements(ctx context.Context) (map[string]counts, error) {
	rows, err := m.monitor.Query(ctx, statementsQuery)
	if err != nil {
		return nil, fmt.Errorf("pg_stat_statements: %w", err)
	}
	out := map[string]counts{}
	for rows.Next() {
		var role string
		var c counts
		if err := rows.Scan(&role, &c.statements, &c.statusReads); err != nil {
			rows.Close()
			return nil, err
		}
		out[role] = c
	}
	rows.Close()
	return out, rows.Err()
}

// held counts the backends each role has now, leaving out the probe's short logins.
func (m *meter) held(ctx context.Context) (map[string]int, error) {
	rows, err := m.monitor.Query(ctx, `SELECT usename, count(*) FROM pg_stat_activity
WHERE usename IS NOT NULL AND application_name IS DISTINCT FROM $1 GROUP BY usename`, collector.ApplicationName+"_probe")
	if err != nil {
		return nil, err
	}
	out := map[string]int{}
	for rows.Next() {
		var role string
		var n int
		if err := rows.Scan(&role, &n); err != nil {
			rows.Close()
			return nil, err
		}
		out[role] = n
	}
	rows.Close()
	return out, rows.Err()
}

// scrape fetches a peer's /metrics and checks that it says the scrape worked, so that a
// failed scrape never flatters an exporter.
func (m *meter) scrape(ctx context.Context, p *peer) (time.Duration, []byte, error) {
	d, body, err := benchkit.ScrapeOnce(ctx, m.client, p.proc.URL)
	if err != nil {
		return 0, nil, err
	}
	switch {
	case p.dbpool && p.side == "postgres":
		if _, err := benchkit.ParseScrape(body); err != nil {
			return 0, nil, err
		}
	case p.dbpool:
		if !bytes.Contains(body, []byte("\ndbpool_up{")) || bytes.Contains(body, []byte(`dbpool_scrape_success{collector="pgbouncer"`+"} 0")) {
			return 0, nil, fmt.Errorf("pgbouncer scrape failed")
		}
	case p.side == "postgres":
		if !bytes.Contains(body, []byte("\npg_up 1")) {
			return 0, nil, fmt.Errorf("pg_up is not 1")
		}
	}
	return d, body, nil
}

func live(peers []*peer, side string) []*peer {
	var out []*peer
	for _, p := range peers {
		if p.side == side && p.proc != nil && p.failed == "" {
			out = append(out, p)
		}
	}
	return out
}

// fail takes a peer out of the measurement and says why.
func fail(p *peer, err error) {
	p.failed = "scrape failed: " + firstLine(err)
	benchkit.Say("  %s: %s; no more figures for it", p.label, p.failed)
}

// rounds scrapes the live peers of one side: --warmup rounds unmeasured, then --scrapes
// measured ones, each one scrape per peer followed by between (the bare query, sampling).
// It returns the measured peers' scrape times, series counts, CPU time per scrape and
// memory; started runs after the warm-up, just before the first measured round.
func (m *meter) rounds(ctx context.Context, peers []*peer, side string, started func() error, between func(active []*peer, res map[*peer]*peerResult, measured bool) error) (map[*peer]*peerResult, error) {
	res := map[*peer]*peerResult{}
	for range m.o.Warmup {
		for _, p := range live(peers, side) {
			if _, _, err := m.scrape(ctx, p); err != nil {
				fail(p, err)
			}
		}
		if err := between(nil, res, false); err != nil {
			return res, err
		}
	}
	active := live(peers, side)
	if err := started(); err != nil {
		return res, err
	}
	cpu0 := map[*peer]time.Duration{}
	for _, p := range active {
		res[p] = &peerResult{}
		cpu0[p] = benchkit.ProcCPU(p.proc.Pid())
	}
	for range m.o.Scrapes {
		for _, p := range active {
			if p.failed != "" {
				continue
			}
			d, body, err := m.scrape(ctx, p)
			if err != nil {
				fail(p, err)
				continue
			}
			res[p].scrapes = append(res[p].scrapes, d)
			res[p].series = benchkit.CountSeries(body)
		}
		if err := between(active, res, true); err != nil {
			return res, err
		}
	}
	for _, p := range active {
		pr := res[p]
		if len(pr.scrapes) == 0 {
			continue
		}
		if c := benchkit.ProcCPU(p.proc.Pid()); c >= 0 && cpu0[p] >= 0 {
			pr.cpu = (c - cpu0[p]) / time.Duration(len(pr.scrapes))
		}
		pr.rssKiB, pr.hwmKiB = benchkit.ProcMemory(p.proc.Pid())
	}
	return res, nil
}

// level measures every live PostgreSQL peer at n backends, one bare query after each round,
// with the server's counters read before and after the measured rounds.
func (m *meter) level(ctx context.Context, n int, peers []*peer) (levelResult, error) {
	r := levelResult{backends: n}
	start := time.Now()
	var before map[string]counts
	var log *logReader
	started := func() (err error) {
		log, err = openLog(m.pg.LogFile)
		if err != nil {
			return err
		}
		before, err = m.statements(ctx)
		return err
	}
	between := func(active []*peer, res map[*peer]*peerResult, measured bool) error {
		d, err := benchkit.BareQuery(ctx, m.monitor)
		if err != nil {
			return fmt.Errorf("bare query: %w", err)
		}
		if !measured {
			return nil
		}
		r.bare = append(r.bare, d)
		held, err := m.held(ctx)
		if err != nil {
			return err
		}
		for _, p := range active {
			res[p].held = max(res[p].held, held[p.role])
		}
		return nil
	}
	res, err := m.rounds(ctx, peers, "postgres", started, between)
	r.peers = res
	if err != nil {
		return r, err
	}
	after, err := m.statements(ctx)
	if err != nil {
		return r, err
	}
	logins := countLogins(log.rest(), pgLogin)
	for p, pr := range res {
		k := float64(len(pr.scrapes))
		if k == 0 {
			continue
		}
		pr.statements = float64(after[p.role].statements-before[p.role].statements) / k
		pr.statusReads = float64(after[p.role].statusReads-before[p.role].statusReads) / k
		pr.logins, pr.probeLogins = logins[p.role].all, logins[p.role].probe
	}
	r.measureTime = time.Since(start)
	return r, nil
}

// distinctResult is the series count of each PostgreSQL peer with the level's 20
// application names, then with half of --distinct and with --distinct distinct names.
type distinctResult struct {
	names  []int
	series map[*peer][]int
	rssKiB map[*peer]int
}

func (m *meter) distinctNames(ctx context.Context, sessions *benchkit.SessionSet, peers []*peer) (distinctResult, error) {
	d := distinctResult{names: []int{2 * benchkit.AppNamesPerKind}, series: map[*peer][]int{}, rssKiB: map[*peer]int{}}
	measure := func() {
		for _, p := range live(peers, "postgres") {
			series := -1
			for range 3 {
				_, body, err := m.scrape(ctx, p)
				if err != nil {
					fail(p, err)
					break
				}
				series = benchkit.CountSeries(body)
			}
			d.series[p] = append(d.series[p], series)
			d.rssKiB[p], _ = benchkit.ProcMemory(p.proc.Pid())
		}
	}
	measure()
	for _, n := range []int{m.o.distinct / 2, m.o.distinct} {
		opened, err := sessions.Distinct(ctx, n, func(i int) string { return fmt.Sprintf("svc-%05d", i) })
		if err != nil {
			return d, err
		}
		if opened > 0 {
			benchkit.Say("  opened %d idle sessions for distinct names (the others run statements)", opened)
		}
		d.names = append(d.names, n)
		measure()
	}
	return d, nil
}

// pgbouncerRound measures the PgBouncer peers against each other, interleaved.
func (m *meter) pgbouncerRound(ctx context.Context, peers []*peer) (map[*peer]*peerResult, error) {
	var log *logReader
	started := func() (err error) {
		log, err = openLog(m.bouncerLog)
		return err
	}
	res, err := m.rounds(ctx, peers, "pgbouncer", started, func([]*peer, map[*peer]*peerResult, bool) error { return nil })
	if err != nil {
		return res, err
	}
	logins := countLogins(log.rest(), bouncerLogin)
	for p, pr := range res {
		pr.logins = logins[p.role].all
	}
	return res, nil
}
