// Building the shared pool model from one PgBouncer console sample: sizes, states and the
// attribution of per-database SHOW STATS to pools.

package collector

import (
	"github.com/dbpool/dbpool_exporter/internal/metrics"
	"github.com/dbpool/dbpool_exporter/poolcfg"
)

// buildPgBouncerPools maps one console sample onto the shared pool model (see
// pgbouncerSource for the mapping).
func buildPgBouncerPools(target string, s *pgbSample) ([]metrics.PoolStats, error) {
	g, err := s.config.globals()
	if err != nil {
		return nil, err
	}
	dbs := make(map[string]*pgbDatabaseRow, len(s.databases))
	for i := range s.databases {
		dbs[s.databases[i].name] = &s.databases[i]
	}
	users := make(map[string]*pgbUserRow, len(s.users))
	for i := range s.users {
		users[s.users[i].name] = &s.users[i]
	}
	stats := attributeStats(s.pools, s.stats, dbs, g.authUser)

	poolsPerDB := map[string]int{}
	for _, p := range s.pools {
		poolsPerDB[p.database]++
	}
	out := make([]metrics.PoolStats, 0, len(s.pools))
	for _, p := range s.pools {
		if p.database == pgbAdminDatabase {
			continue
		}
		db, user := dbs[p.database], users[p.user]
		settings := poolcfg.Settings{
			PoolSize:    g.poolSize,
			MaxOverflow: g.reservePool,
			Timeout:     g.queryWaitTimeout,
			Recycle:     g.serverLifetime,
			PrePing:     g.checkQuery,
		}
		mode := g.poolMode
		if db != nil {
			if db.poolSize != nil {
				settings.PoolSize = *db.poolSize
			}
			if db.reservePool != nil {
				settings.MaxOverflow = *db.reservePool
			}
			if db.serverLifetime != nil {
				settings.Recycle = *db.serverLifetime
			}
			if db.poolMode != "" {
				mode = db.poolMode
			}
		}
		if user != nil {
			if user.poolSize != nil {
				settings.PoolSize = *user.poolSize
			}
			if user.reservePool != nil {
				settings.MaxOverflow = *user.reservePool
			}
			if user.poolMode != "" {
				mode = user.poolMode
			}
		}
		// SHOW POOLS has the pool's effective mode where it has the column.
		if p.poolMode != "" {
			mode = p.poolMode
		}

		open := 0
		states := make(map[string]int, len(p.servers))
		for state, n := range p.servers {
			open += n
			states[state] = n
		}
		pending := p.clWaiting
		ps := metrics.PoolStats{
			Target:             target,
			Pool:               p.database + "/" + p.user,
			Source:             metrics.SourcePgBouncer,
			Configured:         true,
			Settings:           settings,
			Instances:          1,
			Open:               open,
			InUse:              p.servers[metrics.PgBouncerStateActive],
			Overflow:           max(0, open-settings.PoolSize),
			States:             states,
			Pending:            &pending,
			LongestWaitSeconds: p.maxWait,
		}
		if st := stats[p.database]; st != nil && st.user == p.user {
			ps.Checkouts = checkoutStats(st.row, mode)
		}
		// The auth_user's pool serves PgBouncer's auth_query, unless the application itself
		// logs in as that user (then it is the database's only pool).
		authUser := g.authUser
		if db != nil && db.authUser != "" {
			authUser = db.authUser
		}
		ps.Auxiliary = authUser != "" && p.user == authUser && poolsPerDB[p.database] > 1
		out = append(out, ps)
	}
	return out, nil
}

// attributedStats are a database's SHOW STATS counters and the one pool they belong to.
type attributedStats struct {
	user string
	row  pgbStatsRow
}

// attributeStats gives each database's counters to its application pool when that is
// unambiguous. SHOW STATS sums all pools of a database, so with two application users on
// one database the counters belong to neither and stay absent. The auth_user's pool, which
// PgBouncer opens to run auth_query for the logins of the others, is not an application
// pool unless it is the only one (the application then logs in as auth_user itself); its
// lookups add no transactions, only their wait to total_wait_time, which clients did wait.
func attributeStats(pools []pgbPoolRow, stats []pgbStatsRow, dbs map[string]*pgbDatabaseRow, globalAuthUser string) map[string]*attributedStats {
	usersByDB := map[string][]string{}
	for _, p := range pools {
		usersByDB[p.database] = append(usersByDB[p.database], p.user)
	}
	out := make(map[string]*attributedStats, len(stats))
	for _, st := range stats {
		users := usersByDB[st.database]
		if len(users) > 1 {
			authUser := globalAuthUser
			if db := dbs[st.database]; db != nil && db.authUser != "" {
				authUser = db.authUser
			}
			app := users[:0:0]
			for _, u := range users {
				if u != authUser {
					app = append(app, u)
				}
			}
			users = app
		}
		if len(users) == 1 {
			out[st.database] = &attributedStats{user: users[0], row: st}
		}
	}
	return out
}

// checkoutStats picks the counter that counts server assignments in this pool mode; nil
// when none does (session mode before PgBouncer 1.23).
func checkoutStats(st pgbStatsRow, mode string) *metrics.CheckoutStats {
	count := st.assignments
	if count == nil {
		switch mode {
		case "transaction":
			count = st.xacts
		case "statement":
			count = st.queries
		}
	}
	if count == nil || st.waitMicros == nil {
		return nil
	}
	return &metrics.CheckoutStats{
		Count:           *count,
		DurationSeconds: float64(*st.waitMicros) / 1e6,
	}
}
