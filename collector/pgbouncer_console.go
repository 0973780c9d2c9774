// Reading the PgBouncer admin console: its rows addressed by column name, and the parsers of
// SHOW POOLS, SHOW STATS, SHOW DATABASES and SHOW USERS rows.

package collector

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dbpool/dbpool_exporter/internal/metrics"
)

// consoleRow is one row of a console answer, addressed by column name so that columns that
// other PgBouncer versions add, rename or drop do not shift the others. In the simple
// protocol every value is text; nil is NULL.
type consoleRow struct {
	index map[string]int
	vals  []*string
}

func queryConsole(ctx context.Context, conn *pgx.Conn, sql string) ([]consoleRow, error) {
	rows, err := conn.Query(ctx, sql)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", sql, err)
	}
	defer rows.Close()
	fds := rows.FieldDescriptions()
	index := make(map[string]int, len(fds))
	for i, fd := range fds {
		index[fd.Name] = i
	}
	var out []consoleRow
	for rows.Next() {
		raw := rows.RawValues()
		vals := make([]*string, len(raw))
		for i, b := range raw {
			if b != nil {
				// Names come from the server's encoding (SQL_ASCII, LATIN1...); label values
				// must be valid UTF-8 or client_golang panics.
				s := strings.ToValidUTF8(string(b), "?")
				vals[i] = &s
			}
		}
		out = append(out, consoleRow{index: index, vals: vals})
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", sql, err)
	}
	return out, nil
}

// text returns the value of column; ok is false when the column is absent or NULL.
func (r consoleRow) text(column string) (v string, ok bool) {
	i, found := r.index[column]
	if !found || i >= len(r.vals) || r.vals[i] == nil {
		return "", false
	}
	return *r.vals[i], true
}

// requiredText is text for columns every supported PgBouncer has.
func (r consoleRow) requiredText(column string) (string, error) {
	v, ok := r.text(column)
	if !ok {
		return "", fmt.Errorf("column %q missing or NULL", column)
	}
	return v, nil
}

// int returns an integer column; ok is false when it is absent or NULL, and a value that is
// present but not an integer is an error.
func (r consoleRow) int(column string) (v int64, ok bool, err error) {
	s, ok := r.text(column)
	if !ok {
		return 0, false, nil
	}
	v, err = strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil {
		return 0, false, fmt.Errorf("column %q: %q is not an integer", column, s)
	}
	return v, true, nil
}

func (r consoleRow) requiredInt(column string) (int64, error) {
	v, ok, err := r.int(column)
	if err == nil && !ok {
		err = fmt.Errorf("column %q missing or NULL", column)
	}
	return v, err
}

// counter is like int for the cumulative counters of SHOW STATS, which may exceed int64.
func (r consoleRow) counter(column string) (*uint64, error) {
	s, ok := r.text(column)
	if !ok {
		return nil, nil
	}
	v, err := strconv.ParseUint(strings.TrimSpace(s), 10, 64)
	if err != nil {
		return nil, fmt.Errorf("column %q: %q is not a counter", column, s)
	}
	return &v, nil
}

// parseRows converts every row with parse and names the statement in errors.
func parseRows[T any](sql string, rows []consoleRow, parse func(consoleRow) (T, error)) ([]T, error) {
	out := make([]T, 0, len(rows))
	for i, r := range rows {
		v, err := parse(r)
		if err != nil {
			return nil, fmt.Errorf("%s row %d: %w", sql, i+1, err)
		}
		out = append(out, v)
	}
	return out, nil
}

// pgbPoolRow is one row of SHOW POOLS.
type pgbPoolRow struct {
	database, user string
	clWaiting      int
	// servers holds the sv_* columns present, by state name.
	servers map[string]int
	// maxWait is maxwait plus maxwait_us in seconds; nil when neither column exists.
	maxWait  *float64
	poolMode string
}

func parsePoolRow(r consoleRow) (pgbPoolRow, error) {
	var p pgbPoolRow
	var err error
	if p.database, err = r.requiredText("database"); err != nil {
		return p, err
	}
	if p.user, err = r.requiredText("user"); err != nil {
		return p, err
	}
	waiting, err := r.requiredInt("cl_waiting")
	if err != nil {
		return p, err
	}
	p.clWaiting = int(waiting)
	p.servers = make(map[string]int, len(pgbServerStates))
	for _, c := range pgbServerStates {
		n, ok, err := r.int(c.column)
		if err != nil {
			return p, err
		}
		if ok {
			p.servers[c.state] = int(n)
		}
	}
	// Without these two the pool's in-use and idle counts would be made up.
	for _, state := range []string{metrics.PgBouncerStateActive, metrics.PgBouncerStateIdle} {
		if _, ok := p.servers[state]; !ok {
			return p, fmt.Errorf("column %q missing or NULL", "sv_"+state)
		}
	}
	sec, okSec, err := r.int("maxwait")
	if err != nil {
		return p, err
	}
	us, okUS, err := r.int("maxwait_us")
	if err != nil {
		return p, err
	}
	if okSec || okUS {
		w := float64(sec) + float64(us)/1e6
		p.maxWait = &w
	}
	p.poolMode, _ = r.text("pool_mode")
	return p, nil
}

// pgbStatsRow is one row of SHOW STATS: cumulative counters per database. A counter is nil
// when this PgBouncer does not have its column.
type pgbStatsRow struct {
	database                    string
	xacts, queries, assignments *uint64
	waitMicros                  *uint64
}

func parseStatsRow(r consoleRow) (pgbStatsRow, error) {
	var s pgbStatsRow
	var err error
	if s.database, err = r.requiredText("database"); err != nil {
		return s, err
	}
	for _, c := range []struct {
		column string
		dst    **uint64
	}{
		{"total_xact_count", &s.xacts},
		{"total_query_count", &s.queries},
		{"total_server_assignment_count", &s.assignments},
		{"total_wait_time", &s.waitMicros},
	} {
		if *c.dst, err = r.counter(c.column); err != nil {
			return s, err
		}
	}
	return s, nil
}

// pgbDatabaseRow is one row of SHOW DATABASES. Settings are nil when not shown or not set
// for this database (NULL or negative), meaning the global setting applies.
type pgbDatabaseRow struct {
	name           string
	poolSize       *int
	reservePool    *int
	serverLifetime *time.Duration
	poolMode       string
	authUser       string
}

func parseDatabaseRow(r consoleRow) (pgbDatabaseRow, error) {
	var d pgbDatabaseRow
	var err error
	if d.name, err = r.requiredText("name"); err != nil {
		return d, err
	}
	if d.poolSize, err = optionalSize(r, "pool_size"); err != nil {
		return d, err
	}
	// reserve_pool until PgBouncer 1.23, reserve_pool_size from 1.24.
	for _, column := range []string{"reserve_pool_size", "reserve_pool"} {
		if d.reservePool, err = optionalSize(r, column); err != nil || d.reservePool != nil {
			break
		}
	}
	if err != nil {
		return d, err
	}
	// server_lifetime (1.23+) is in seconds; 0 means the global setting applies.
	if s, ok := r.text("server_lifetime"); ok {
		lt, err := parseSeconds(s)
		if err != nil {
			return d, fmt.Errorf("column %q: %w", "server_lifetime", err)
		}
		if lt > 0 {
			d.serverLifetime = &lt
		}
	}
	d.poolMode, _ = r.text("pool_mode")
	d.authUser, _ = r.text("auth_user")
	return d, nil
}

// pgbUserRow is one row of SHOW USERS; per-user pool sizes exist from PgBouncer 1.24 on.
type pgbUserRow struct {
	name        string
	poolSize    *int
	reservePool *int
	poolMode    string
}

func parseUserRow(r consoleRow) (pgbUserRow, error) {
	var u pgbUserRow
	var err error
	if u.name, err = r.requiredText("name"); err != nil {
		return u, err
	}
	if u.poolSize, err = optionalSize(r, "pool_size"); err != nil {
		return u, err
	}
	if u.reservePool, err = optionalSize(r, "reserve_pool_size"); err != nil {
		return u, err
	}
	u.poolMode, _ = r.text("pool_mode")
	return u, nil
}

// optionalSize reads a size override; NULL, empty and negative mean "not set".
func optionalSize(r consoleRow, column string) (*int, error) {
	s, ok := r.text(column)
	if !ok || strings.TrimSpace(s) == "" {
		return nil, nil
	}
	v, ok, err := r.int(column)
	if err != nil || !ok || v < 0 {
		return nil, err
	}
	n := int(v)
	return &n, nil
}
