package collector

import (
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dbpool/dbpool_exporter/poolcfg"
)

// Session states as pg_stat_activity spells them, plus unknown for sessions whose state the
// monitoring role may not see.
const (
	StateActive                   = "active"
	StateIdle                     = "idle"
	StateIdleInTransaction        = "idle in transaction"
	StateIdleInTransactionAborted = "idle in transaction (aborted)"
	StateUnknown                  = "unknown"
)

// alwaysReportedStates are emitted even at zero so that alerts and panels see a series.
var alwaysReportedStates = []string{StateActive, StateIdle, StateIdleInTransaction, StateIdleInTransactionAborted}

// OtherApplications is the pool label of unmatched backends beyond the cardinality cap.
const OtherApplications = "app:other"

// ActivityQuery is the one round trip per scrape (exported for the benchmark, which times it
// alone). Aggregating in SQL keeps the exporter's
// cost independent of the number of backends: it reads one row per distinct
// (application, user, database, client, state). The exporter's own sessions are left out.
const ActivityQuery = `SELECT
  coalesce(application_name, ''),
  coalesce(usename::text, ''),
  coalesce(datname::text, ''),
  coalesce(host(client_addr), ''),
  coalesce(state, ''),
  count(*),
  count(*) FILTER (WHERE wait_event_type = 'Lock'),
  coalesce(max(extract(epoch FROM now() - query_start)) FILTER (WHERE state = 'active'), 0)::float8,
  coalesce(max(extract(epoch FROM now() - xact_start)), 0)::float8,
  coalesce(max(extract(epoch FROM now() - state_change)) FILTER (WHERE state LIKE 'idle in transaction%'), 0)::float8,
  coalesce(max(extract(epoch FROM now() - backend_start)), 0)::float8
FROM pg_stat_activity
WHERE (backend_type = 'client backend'
       -- Without pg_read_all_stats, other roles' rows hide backend_type too; a row with a
       -- database and a role is then a client backend (or, rarely, a parallel worker).
       OR (backend_type IS NULL AND datname IS NOT NULL AND usename IS NOT NULL))
  AND pid <> pg_backend_pid()
  AND coalesce(application_name, '') NOT LIKE '` + ApplicationName + `%'
GROUP BY 1, 2, 3, 4, 5`

// activityRow is one group of backends sharing application, user, database, client and state.
type activityRow struct {
	applicationName, user, database  string
	clientAddr                       netip.Addr // invalid for unix-socket clients
	state                            string
	connections, lockWaiting         int
	longestQuery, longestTransaction float64
	longestIdleInTransaction         float64
	oldestConnection                 float64
}

func queryActivity(ctx context.Context, conn *pgxpool.Conn) ([]activityRow, error) {
	rows, err := conn.Query(ctx, ActivityQuery)
	if err != nil {
		return nil, fmt.Errorf("querying pg_stat_activity: %w", err)
	}
	var out []activityRow
	var r activityRow
	var addr string
	_, err = pgx.ForEachRow(rows, []any{&r.applicationName, &r.user, &r.database, &addr, &r.state,
		&r.connections, &r.lockWaiting, &r.longestQuery, &r.longestTransaction, &r.longestIdleInTransaction, &r.oldestConnection},
		func() error {
			row := r
			row.clientAddr, _ = netip.ParseAddr(addr)
			if row.state == "" {
				row.state = StateUnknown
			}
			// application_name is client-chosen text; keep label values valid UTF-8.
			row.applicationName = strings.ToValidUTF8(row.applicationName, "?")
			out = append(out, row)
			return nil
		})
	if err != nil {
		return nil, fmt.Errorf("reading pg_stat_activity: %w", err)
	}
	return out, nil
}

// activitySample is one scrape's view of the server, grouped into pools.
type activitySample struct {
	pools        []PoolStats
	serverStates map[string]int
	restricted   bool // some sessions' state was hidden from the monitoring role
}

type poolAggregate struct {
	stats       PoolStats
	perInstance map[string]int
}

func newAggregate(target, name string) *poolAggregate {
	states := make(map[string]int, len(alwaysReportedStates))
	for _, s := range alwaysReportedStates {
		states[s] = 0
	}
	return &poolAggregate{
		stats:       PoolStats{Target: target, Pool: name, Source: SourceActivity, States: states, Sessions: &SessionStats{}},
		perInstance: map[string]int{},
	}
}

func (a *poolAggregate) add(r activityRow, instance string) {
	s := &a.stats
	s.Open += r.connections
	s.States[r.state] += r.connections
	// A checked-out connection between transactions looks idle on the server, so in-use is
	// a lower bound; sessions whose state is hidden are not counted either.
	if r.state != StateIdle && r.state != StateUnknown {
		s.InUse += r.connections
	}
	a.perInstance[instance] += r.connections
	ss := s.Sessions
	ss.LockWaitingConnections += r.lockWaiting
	ss.LongestQuerySeconds = max(ss.LongestQuerySeconds, r.longestQuery)
	ss.LongestTransactionSeconds = max(ss.LongestTransactionSeconds, r.longestTransaction)
	ss.LongestIdleInTransactionSeconds = max(ss.LongestIdleInTransactionSeconds, r.longestIdleInTransaction)
	ss.OldestConnectionSeconds = max(ss.OldestConnectionSeconds, r.oldestConnection)
}

// finish completes the sample. Overflow is per instance when instances can be told apart (an
// `instance` capture, or at least as many distinct application_names as instances), and for
// the whole group otherwise (a lower bound then). Where the monitoring role could not see some
// sessions' state, the ages and the zero-filled states would be made up: they are left out.
func (a *poolAggregate) finish(byInstance bool) PoolStats {
	s := a.stats
	if s.Configured {
		size := s.Settings.PoolSize
		if byInstance || len(a.perInstance) >= s.Instances {
			for _, n := range a.perInstance {
				s.Overflow += max(0, n-size)
			}
		} else {
			s.Overflow = max(0, s.Open-s.Instances*size)
		}
	}
	if s.States[StateUnknown] > 0 {
		s.Sessions = nil
		dropZeroStates(s.States)
	}
	return s
}

// dropZeroStates removes the states that are only there as zeros.
func dropZeroStates(states map[string]int) {
	for _, st := range alwaysReportedStates {
		if states[st] == 0 {
			delete(states, st)
		}
	}
}

// groupActivity assigns each row to the first configured pool whose matcher accepts it; the
// rest are grouped by application_name, the largest maxApps-1 by name and the others together.
func groupActivity(target string, pools []poolcfg.Pool, rows []activityRow, maxApps int) activitySample {
	sample := activitySample{serverStates: map[string]int{}}
	for _, s := range alwaysReportedStates {
		sample.serverStates[s] = 0
	}
	configured := make([]*poolAggregate, len(pools))
	for i, p := range pools {
		a := newAggregate(target, p.Name)
		a.stats.Configured = true
		a.stats.Settings = p.Settings
		a.stats.Instances = p.Instances
		configured[i] = a
	}
	unmatched := map[string]*poolAggregate{}
	for _, r := range rows {
		sample.serverStates[r.state] += r.connections
		if r.state == StateUnknown {
			sample.restricted = true
		}
		matched := false
		for i, p := range pools {
			if ok, instance := p.Match.Match(r.applicationName, r.user, r.database, r.clientAddr); ok {
				configured[i].add(r, instance)
				matched = true
				break
			}
		}
		if matched {
			continue
		}
		a, ok := unmatched[r.applicationName]
		if !ok {
			a = newAggregate(target, "app:"+r.applicationName)
			unmatched[r.applicationName] = a
		}
		a.add(r, r.applicationName)
	}
	for i, a := range configured {
		sample.pools = append(sample.pools, a.finish(pools[i].Match.HasInstance()))
	}
	sample.pools = append(sample.pools, capApplications(target, unmatched, maxApps)...)
	if sample.restricted {
		dropZeroStates(sample.serverStates)
	}
	return sample
}

// capApplications keeps the largest applications by name and folds the rest into one pool,
// so that a client that invents application names cannot explode the series count.
func capApplications(target string, apps map[string]*poolAggregate, maxApps int) []PoolStats {
	list := make([]*poolAggregate, 0, len(apps))
	for _, a := range apps {
		list = append(list, a)
	}
	slices.SortFunc(list, func(a, b *poolAggregate) int {
		if c := cmp.Compare(b.stats.Open, a.stats.Open); c != 0 {
			return c
		}
		return strings.Compare(a.stats.Pool, b.stats.Pool)
	})
	keep := len(list)
	if maxApps > 0 && len(list) > maxApps {
		keep = maxApps - 1
	}
	out := make([]PoolStats, 0, keep+1)
	var other *poolAggregate
	for i, a := range list {
		if i < keep && a.stats.Pool != OtherApplications {
			out = append(out, a.finish(false))
			continue
		}
		if other == nil {
			other = newAggregate(target, OtherApplications)
		}
		mergeInto(other, a)
	}
	if other != nil {
		out = append(out, other.finish(false))
	}
	return out
}

func mergeInto(dst, src *poolAggregate) {
	d, s := &dst.stats, &src.stats
	d.Open += s.Open
	d.InUse += s.InUse
	for k, v := range s.States {
		d.States[k] += v
	}
	ds, ss := d.Sessions, s.Sessions
	ds.LockWaitingConnections += ss.LockWaitingConnections
	ds.LongestQuerySeconds = max(ds.LongestQuerySeconds, ss.LongestQuerySeconds)
	ds.LongestTransactionSeconds = max(ds.LongestTransactionSeconds, ss.LongestTransactionSeconds)
	ds.LongestIdleInTransactionSeconds = max(ds.LongestIdleInTransactionSeconds, ss.LongestIdleInTransactionSeconds)
	ds.OldestConnectionSeconds = max(ds.OldestConnectionSeconds, ss.OldestConnectionSeconds)
}

// serverDescs are the server-wide series of a PostgreSQL target.
type serverDescs struct {
	maxConnections      *prometheus.Desc
	reservedConnections *prometheus.Desc
	info                *prometheus.Desc
	connections         *prometheus.Desc
	restricted          *prometheus.Desc
}

func newServerDescs() *serverDescs {
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(namespace, "server", name), help, append([]string{"target"}, labels...), nil)
	}
	return &serverDescs{
		maxConnections:      desc("max_connections", "The server's max_connections setting."),
		reservedConnections: desc("reserved_connections", "Connection slots reserved for superusers and pg_use_reserved_connections (superuser_reserved_connections + reserved_connections)."),
		info:                desc("info", "Always 1; the server's version.", "server_version"),
		connections:         desc("connections", "Client backends by state, the exporter's own excluded; unknown where the monitoring role may not see the state.", "state"),
		restricted:          desc("activity_restricted", "1 if the monitoring role lacks pg_read_all_stats (pg_monitor) and cannot see other roles' session states."),
	}
}

func (d *serverDescs) describe(ch chan<- *prometheus.Desc) {
	ch <- d.maxConnections
	ch <- d.reservedConnections
	ch <- d.info
	ch <- d.connections
	ch <- d.restricted
}

func (d *serverDescs) settingsMetrics(target string, s *serverSettings) []prometheus.Metric {
	return []prometheus.Metric{
		prometheus.MustNewConstMetric(d.maxConnections, prometheus.GaugeValue, float64(s.maxConnections), target),
		prometheus.MustNewConstMetric(d.reservedConnections, prometheus.GaugeValue, float64(s.reservedConnections), target),
		prometheus.MustNewConstMetric(d.info, prometheus.GaugeValue, 1, target, s.version),
		prometheus.MustNewConstMetric(d.restricted, prometheus.GaugeValue, boolToFloat(!s.canSeeAllSessions), target),
	}
}

func (d *serverDescs) activityMetrics(target string, sample activitySample) []prometheus.Metric {
	ms := make([]prometheus.Metric, 0, len(sample.serverStates))
	for state, n := range sample.serverStates {
		ms = append(ms, prometheus.MustNewConstMetric(d.connections, prometheus.GaugeValue, float64(n), target, state))
	}
	return ms
}
