package collector

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dbpool/dbpool_exporter/internal/metrics"
	"github.com/dbpool/dbpool_exporter/poolcfg"
)

// activitySource is the source on a PostgreSQL target's monitoring connection. It checks the
// connection out (dbpool_up, dbpool_probe_checkout_seconds), reads the server's settings and,
// unless --no-collector.activity, samples pg_stat_activity in one round trip and groups the
// backends into pools: the configured ones by their matchers, the rest by application_name.
type activitySource struct {
	target string
	db     *pgxpool.Pool
	pools  []poolcfg.Pool
	opts   PostgresOptions
	logger *slog.Logger

	mu               sync.Mutex
	settings         *serverSettings
	warnedRestricted bool
}

func (s *activitySource) Name() string {
	if s.opts.Activity {
		return metrics.CollectorActivity
	}
	return metrics.CollectorConnection
}

// Scrape checks out the monitoring connection, reads the settings and samples the sessions.
// The server's limits go out even when this scrape fails, as last read.
func (s *activitySource) Scrape(ctx context.Context) (Scraped, error) {
	out, err := s.scrape(ctx)
	s.mu.Lock()
	if st := s.settings; st != nil {
		out.Server = &ServerStats{Target: s.target, MaxConnections: st.maxConnections, ReservedConnections: st.reservedConnections}
	}
	s.mu.Unlock()
	return out, err
}

func (s *activitySource) scrape(ctx context.Context) (Scraped, error) {
	var out Scraped
	start := time.Now()
	conn, err := s.db.Acquire(ctx) // pre-pinged (see NewPostgresTarget)
	if err != nil {
		return out, fmt.Errorf("monitoring connection: %w", err)
	}
	defer conn.Release()
	out.Reached = true
	out.Metrics = append(out.Metrics, metrics.ProbeCheckoutSeconds.Metric(time.Since(start).Seconds(), s.target))

	settings, err := s.serverSettings(ctx, conn)
	if err != nil {
		return out, err
	}
	out.Metrics = append(out.Metrics,
		metrics.ServerMaxConnections.Metric(float64(settings.maxConnections), s.target),
		metrics.ServerReservedConnections.Metric(float64(settings.reservedConnections), s.target),
		metrics.ServerInfo.Metric(1, s.target, settings.version),
		metrics.ServerActivityRestricted.Metric(metrics.Bool(!settings.canSeeAllSessions), s.target))
	if !s.opts.Activity {
		return out, nil
	}
	rows, err := queryActivity(ctx, conn)
	if err != nil {
		return out, err
	}
	sample := groupActivity(s.target, s.pools, rows, s.opts.MaxApplications)
	if sample.restricted && !settings.canSeeAllSessions {
		s.warnRestrictedOnce()
	}
	for state, n := range sample.serverStates {
		out.Metrics = append(out.Metrics, metrics.ServerConnections.Metric(float64(n), s.target, state))
	}
	out.Pools = sample.pools
	return out, nil
}

// serverSettings are read on connect and refreshed rarely: they change only with a restart.
type serverSettings struct {
	maxConnections      int
	reservedConnections int
	version             string
	canSeeAllSessions   bool
	readAt              time.Time
}

const serverSettingsQuery = `SELECT
  current_setting('max_connections')::int,
  current_setting('superuser_reserved_connections')::int
    + coalesce(nullif(current_setting('reserved_connections', true), '')::int, 0),
  current_setting('server_version'),
  pg_has_role(current_user, 'pg_read_all_stats', 'USAGE')
    OR coalesce((SELECT rolsuper FROM pg_roles WHERE rolname = current_user), false)`

func (s *activitySource) serverSettings(ctx context.Context, conn *pgxpool.Conn) (*serverSettings, error) {
	s.mu.Lock()
	cached := s.settings
	s.mu.Unlock()
	if cached != nil && time.Since(cached.readAt) < s.opts.SettingsRefresh {
		return cached, nil
	}
	st := &serverSettings{readAt: time.Now()}
	err := conn.QueryRow(ctx, serverSettingsQuery).Scan(&st.maxConnections, &st.reservedConnections, &st.version, &st.canSeeAllSessions)
	if err != nil {
		return nil, fmt.Errorf("reading server settings: %w", err)
	}
	s.mu.Lock()
	s.settings = st
	s.mu.Unlock()
	return st, nil
}

func (s *activitySource) warnRestrictedOnce() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.warnedRestricted {
		return
	}
	s.warnedRestricted = true
	s.logger.Warn("the monitoring role cannot see the state of other roles' sessions; they are counted as state \"unknown\" and pool in-use counts are too low",
		"target", s.target, "fix", "GRANT pg_monitor TO <monitoring role>")
}

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
				row.state = metrics.StateUnknown
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
	pools        []metrics.PoolStats
	serverStates map[string]int
	restricted   bool // some sessions' state was hidden from the monitoring role
}

type poolAggregate struct {
	stats       metrics.PoolStats
	perInstance map[string]int
}

func newAggregate(target, name string) *poolAggregate {
	states := make(map[string]int, len(metrics.ActivityStates))
	for _, s := range metrics.ActivityStates {
		states[s] = 0
	}
	return &poolAggregate{
		stats:       metrics.PoolStats{Target: target, Pool: name, Source: metrics.SourceActivity, States: states, Sessions: &metrics.SessionStats{}},
		perInstance: map[string]int{},
	}
}

func (a *poolAggregate) add(r activityRow, instance string) {
	s := &a.stats
	s.Open += r.connections
	s.States[r.state] += r.connections
	// A checked-out connection between transactions looks idle on the server, so in-use is
	// a lower bound; sessions whose state is hidden are not counted either.
	if r.state != metrics.StateIdle && r.state != metrics.StateUnknown {
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
func (a *poolAggregate) finish(byInstance bool) metrics.PoolStats {
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
	if s.States[metrics.StateUnknown] > 0 {
		s.Sessions = nil
		dropZeroStates(s.States)
	}
	return s
}

// dropZeroStates removes the states that are only there as zeros.
func dropZeroStates(states map[string]int) {
	for _, st := range metrics.ActivityStates {
		if states[st] == 0 {
			delete(states, st)
		}
	}
}

// groupActivity assigns each row to the first configured pool whose matcher accepts it; the
// rest are grouped by application_name, the largest maxApps-1 by name and the others together.
func groupActivity(target string, pools []poolcfg.Pool, rows []activityRow, maxApps int) activitySample {
	sample := activitySample{serverStates: map[string]int{}}
	for _, s := range metrics.ActivityStates {
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
		if r.state == metrics.StateUnknown {
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
			a = newAggregate(target, metrics.UnmatchedPoolPrefix+r.applicationName)
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
func capApplications(target string, apps map[string]*poolAggregate, maxApps int) []metrics.PoolStats {
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
	out := make([]metrics.PoolStats, 0, keep+1)
	var other *poolAggregate
	for i, a := range list {
		if i < keep && a.stats.Pool != metrics.OtherApplications {
			out = append(out, a.finish(false))
			continue
		}
		if other == nil {
			other = newAggregate(target, metrics.OtherApplications)
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
