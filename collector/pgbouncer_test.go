package collector

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/dbpool/dbpool_exporter/internal/metrics"
	"github.com/dbpool/dbpool_exporter/poolcfg"
	"github.com/dbpool/dbpool_exporter/tools/pgtest"
	"github.com/dbpool/dbpool_exporter/tools/testbin"
)

// null marks a NULL value in rowOf.
const null = "\x00NULL"

// rowOf builds a console row from column/value pairs, in any order, as the console would
// send it: columns are addressed by name only.
func rowOf(kv ...string) consoleRow {
	r := consoleRow{index: map[string]int{}}
	for i := 0; i+1 < len(kv); i += 2 {
		r.index[kv[i]] = len(r.vals)
		if kv[i+1] == null {
			r.vals = append(r.vals, nil)
			continue
		}
		v := kv[i+1]
		r.vals = append(r.vals, &v)
	}
	return r
}

func ptr[T any](v T) *T { return &v }

// TestPgBouncerParseRows feeds synthetic column sets of several PgBouncer versions to the
// row parsers: extra unknown columns are ignored, missing optional ones are absent (never
// zero), missing required ones and garbage are errors that name the column.
func TestPgBouncerParseRows(t *testing.T) {
	pools := []struct {
		name    string
		row     consoleRow
		want    pgbPoolRow
		wantErr string
	}{
		{
			name: "1.18 with an extra unknown column, shuffled",
			row: rowOf("pool_mode", "transaction", "user", "app", "database", "db1", "future_column", "42",
				"cl_active", "3", "cl_waiting", "2", "sv_active", "3", "sv_idle", "0", "sv_used", "1", "sv_tested", "0",
				"sv_login", "1", "sv_active_cancel", "0", "sv_being_canceled", "0", "maxwait", "1", "maxwait_us", "250000"),
			want: pgbPoolRow{database: "db1", user: "app", clWaiting: 2, poolMode: "transaction", maxWait: ptr(1.25),
				servers: map[string]int{"active": 3, "idle": 0, "used": 1, "tested": 0, "login": 1, "active_cancel": 0, "being_canceled": 0}},
		},
		{
			name: "old version: no cancel columns, no maxwait_us, no pool_mode",
			row: rowOf("database", "db1", "user", "app", "cl_active", "1", "cl_waiting", "0", "sv_active", "1",
				"sv_idle", "2", "sv_used", "0", "sv_tested", "0", "sv_login", "0", "maxwait", "3"),
			want: pgbPoolRow{database: "db1", user: "app", maxWait: ptr(3.0),
				servers: map[string]int{"active": 1, "idle": 2, "used": 0, "tested": 0, "login": 0}},
		},
		{
			name: "no maxwait columns at all: wait absent",
			row:  rowOf("database", "db1", "user", "app", "cl_waiting", "0", "sv_active", "0", "sv_idle", "0"),
			want: pgbPoolRow{database: "db1", user: "app", servers: map[string]int{"active": 0, "idle": 0}},
		},
		{
			name:    "missing sv_active",
			row:     rowOf("database", "db1", "user", "app", "cl_waiting", "0", "sv_idle", "0"),
			wantErr: `"sv_active"`,
		},
		{
			name:    "missing cl_waiting",
			row:     rowOf("database", "db1", "user", "app", "sv_active", "0", "sv_idle", "0"),
			wantErr: `"cl_waiting"`,
		},
		{
			name:    "NULL user",
			row:     rowOf("database", "db1", "user", null, "cl_waiting", "0", "sv_active", "0", "sv_idle", "0"),
			wantErr: `"user"`,
		},
		{
			name:    "not a number",
			row:     rowOf("database", "db1", "user", "app", "cl_waiting", "0", "sv_active", "x", "sv_idle", "0"),
			wantErr: `column "sv_active": "x" is not an integer`,
		},
	}
	for _, tc := range pools {
		t.Run("pools/"+tc.name, func(t *testing.T) {
			got, err := parsePoolRow(tc.row)
			checkParse(t, got, err, tc.want, tc.wantErr)
		})
	}

	stats := []struct {
		name    string
		row     consoleRow
		want    pgbStatsRow
		wantErr string
	}{
		{
			name: "1.18 (numeric counters, averages ignored)",
			row: rowOf("database", "db1", "total_xact_count", "10", "total_query_count", "12", "total_received", "1",
				"total_wait_time", "3644794", "avg_wait_time", "17"),
			want: pgbStatsRow{database: "db1", xacts: ptr[uint64](10), queries: ptr[uint64](12), waitMicros: ptr[uint64](3644794)},
		},
		{
			name: "1.23+ with server assignments and a counter beyond int64",
			row: rowOf("database", "db1", "total_server_assignment_count", "18446744073709551615", "total_xact_count", "10",
				"total_query_count", "12", "total_wait_time", "5", "total_client_parse_count", "0"),
			want: pgbStatsRow{database: "db1", assignments: ptr(uint64(math.MaxUint64)), xacts: ptr[uint64](10),
				queries: ptr[uint64](12), waitMicros: ptr[uint64](5)},
		},
		{
			name: "before 1.8: no xact or wait counters",
			row:  rowOf("database", "db1", "total_requests", "7", "total_query_time", "9"),
			want: pgbStatsRow{database: "db1"},
		},
		{
			name:    "negative counter",
			row:     rowOf("database", "db1", "total_wait_time", "-1"),
			wantErr: `column "total_wait_time": "-1" is not a counter`,
		},
		{
			name:    "no database column",
			row:     rowOf("total_wait_time", "1"),
			wantErr: `"database"`,
		},
	}
	for _, tc := range stats {
		t.Run("stats/"+tc.name, func(t *testing.T) {
			got, err := parseStatsRow(tc.row)
			checkParse(t, got, err, tc.want, tc.wantErr)
		})
	}

	dbs := []struct {
		name    string
		row     consoleRow
		want    pgbDatabaseRow
		wantErr string
	}{
		{
			name: "1.18: reserve_pool, NULL pool_mode",
			row: rowOf("name", "db1", "host", "127.0.0.1", "pool_size", "5", "min_pool_size", "0", "reserve_pool", "2",
				"pool_mode", null, "max_connections", "0"),
			want: pgbDatabaseRow{name: "db1", poolSize: ptr(5), reservePool: ptr(2)},
		},
		{
			name: "1.24+: reserve_pool_size, server_lifetime, auth_user",
			row: rowOf("name", "db1", "pool_size", "5", "reserve_pool_size", "3", "server_lifetime", "120",
				"pool_mode", "session", "auth_user", "lookup"),
			want: pgbDatabaseRow{name: "db1", poolSize: ptr(5), reservePool: ptr(3), serverLifetime: ptr(120 * time.Second),
				poolMode: "session", authUser: "lookup"},
		},
		{
			name: "unset sizes (negative, empty, NULL) and server_lifetime 0 inherit",
			row:  rowOf("name", "db1", "pool_size", "-1", "reserve_pool", "", "server_lifetime", "0", "auth_user", null),
			want: pgbDatabaseRow{name: "db1"},
		},
		{
			name:    "bad pool_size",
			row:     rowOf("name", "db1", "pool_size", "five"),
			wantErr: `column "pool_size"`,
		},
	}
	for _, tc := range dbs {
		t.Run("databases/"+tc.name, func(t *testing.T) {
			got, err := parseDatabaseRow(tc.row)
			checkParse(t, got, err, tc.want, tc.wantErr)
		})
	}

	users := []struct {
		name    string
		row     consoleRow
		want    pgbUserRow
		wantErr string
	}{
		{name: "1.18: name and pool_mode only", row: rowOf("name", "app", "pool_mode", ""), want: pgbUserRow{name: "app"}},
		{
			name: "1.24+: overrides",
			row: rowOf("name", "app", "pool_size", "4", "reserve_pool_size", "1", "pool_mode", "statement",
				"max_user_connections", "0", "current_connections", "3"),
			want: pgbUserRow{name: "app", poolSize: ptr(4), reservePool: ptr(1), poolMode: "statement"},
		},
		{name: "1.24+: not set", row: rowOf("name", "app", "pool_size", null, "reserve_pool_size", null), want: pgbUserRow{name: "app"}},
	}
	for _, tc := range users {
		t.Run("users/"+tc.name, func(t *testing.T) {
			got, err := parseUserRow(tc.row)
			checkParse(t, got, err, tc.want, tc.wantErr)
		})
	}
}

func checkParse[T any](t *testing.T, got T, err error, want T, wantErr string) {
	t.Helper()
	if wantErr != "" {
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Fatalf("err = %v, want one containing %s", err, wantErr)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if g, w := deref(got), deref(want); g != w {
		t.Errorf("got  %s\nwant %s", g, w)
	}
}

// deref prints a parsed row with pointer fields by value (absent when nil), so that equal
// rows print alike and a failure shows what differs.
func deref(v any) string {
	switch r := v.(type) {
	case pgbPoolRow:
		return fmt.Sprintf("db=%s user=%s waiting=%d servers=%v wait=%s mode=%q", r.database, r.user, r.clWaiting, r.servers, fmtPtr(r.maxWait), r.poolMode)
	case pgbStatsRow:
		return fmt.Sprintf("db=%s xacts=%s queries=%s assignments=%s wait=%s", r.database, fmtPtr(r.xacts), fmtPtr(r.queries), fmtPtr(r.assignments), fmtPtr(r.waitMicros))
	case pgbDatabaseRow:
		return fmt.Sprintf("name=%s size=%s reserve=%s lifetime=%s mode=%q auth=%q", r.name, fmtPtr(r.poolSize), fmtPtr(r.reservePool), fmtPtr(r.serverLifetime), r.poolMode, r.authUser)
	case pgbUserRow:
		return fmt.Sprintf("name=%s size=%s reserve=%s mode=%q", r.name, fmtPtr(r.poolSize), fmtPtr(r.reservePool), r.poolMode)
	}
	panic(fmt.Sprintf("deref: unexpected %T", v))
}

func fmtPtr[T any](p *T) string {
	if p == nil {
		return "<absent>"
	}
	return fmt.Sprint(*p)
}

// TestPgBouncerBuildPools checks the mapping onto the pool model on synthetic samples:
// which setting wins, which counter counts checkouts in which pool mode, and when the
// per-database SHOW STATS can be attributed to a pool.
func TestPgBouncerBuildPools(t *testing.T) {
	config := func(kv ...string) pgbConfig {
		c := pgbConfig{"default_pool_size": "20", "reserve_pool_size": "0", "query_wait_timeout": "120",
			"server_lifetime": "3600", "server_check_query": "select 1", "pool_mode": "transaction", "auth_user": "postgres"}
		for i := 0; i+1 < len(kv); i += 2 {
			c[kv[i]] = kv[i+1]
		}
		return c
	}
	pool := func(db, user string, active, idle, waiting int) pgbPoolRow {
		return pgbPoolRow{database: db, user: user, clWaiting: waiting, maxWait: ptr(0.5),
			servers: map[string]int{"active": active, "idle": idle}}
	}
	stats := func(db string) pgbStatsRow {
		return pgbStatsRow{database: db, xacts: ptr[uint64](100), queries: ptr[uint64](150), waitMicros: ptr[uint64](2_500_000)}
	}
	type want struct {
		pool                      string
		size, maxOver             int
		timeout, recycle          time.Duration
		prePing                   bool
		open, inUse, pending, ovf int
		checkouts                 uint64  // 0: no checkout counters
		sum                       float64 // checkout duration sum
		aux                       bool    // PgBouncer's own auth_user pool
	}
	cases := []struct {
		name   string
		sample pgbSample
		want   []want
	}{
		{
			name: "defaults from config; admin database skipped; auth pool excluded from stats",
			sample: pgbSample{
				config: config("default_pool_size", "2", "reserve_pool_size", "1", "query_wait_timeout", "7.5", "server_lifetime", "0"),
				pools:  []pgbPoolRow{pool("app", "app", 3, 0, 3), pool("app", "postgres", 0, 1, 0), pool("pgbouncer", "pgbouncer", 0, 0, 0)},
				stats:  []pgbStatsRow{stats("app"), stats("pgbouncer")},
			},
			want: []want{
				{pool: "app/app", size: 2, maxOver: 1, timeout: 7500 * time.Millisecond, prePing: true, open: 3, inUse: 3, pending: 3, ovf: 1, checkouts: 100, sum: 2.5},
				{pool: "app/postgres", size: 2, maxOver: 1, timeout: 7500 * time.Millisecond, prePing: true, open: 1, aux: true},
			},
		},
		{
			name: "database overrides config, user overrides database; statement mode counts queries",
			sample: pgbSample{
				config:    config("server_check_query", "", "pool_mode", "statement"),
				databases: []pgbDatabaseRow{{name: "db", poolSize: ptr(5), reservePool: ptr(2), serverLifetime: ptr(time.Minute)}},
				users:     []pgbUserRow{{name: "u", poolSize: ptr(3)}},
				pools:     []pgbPoolRow{pool("db", "u", 1, 4, 0)},
				stats:     []pgbStatsRow{stats("db")},
			},
			want: []want{{pool: "db/u", size: 3, maxOver: 2, timeout: 120 * time.Second, recycle: time.Minute, open: 5, inUse: 1, ovf: 2, checkouts: 150, sum: 2.5}},
		},
		{
			name: "session mode before 1.23: no checkout count, wait still exact",
			sample: pgbSample{
				config: config("pool_mode", "session"),
				pools:  []pgbPoolRow{pool("db", "u", 1, 0, 0)},
				stats:  []pgbStatsRow{stats("db")},
			},
			want: []want{{pool: "db/u", size: 20, timeout: 120 * time.Second, recycle: time.Hour, prePing: true, open: 1, inUse: 1}},
		},
		{
			name: "server assignments (1.23+) count in any mode",
			sample: pgbSample{
				config: config("pool_mode", "session"),
				pools:  []pgbPoolRow{pool("db", "u", 1, 0, 0)},
				stats:  []pgbStatsRow{{database: "db", assignments: ptr[uint64](7), xacts: ptr[uint64](100), waitMicros: ptr[uint64](1)}},
			},
			want: []want{{pool: "db/u", size: 20, timeout: 120 * time.Second, recycle: time.Hour, prePing: true, open: 1, inUse: 1, checkouts: 7, sum: 1e-6}},
		},
		{
			name: "two application users on one database: stats belong to neither",
			sample: pgbSample{
				config: config(),
				pools:  []pgbPoolRow{pool("db", "a", 1, 0, 0), pool("db", "b", 0, 1, 0), pool("db", "postgres", 0, 1, 0)},
				stats:  []pgbStatsRow{stats("db")},
			},
			want: []want{
				{pool: "db/a", size: 20, timeout: 120 * time.Second, recycle: time.Hour, prePing: true, open: 1, inUse: 1},
				{pool: "db/b", size: 20, timeout: 120 * time.Second, recycle: time.Hour, prePing: true, open: 1},
				{pool: "db/postgres", size: 20, timeout: 120 * time.Second, recycle: time.Hour, prePing: true, open: 1, aux: true},
			},
		},
		{
			name: "the application logs in as the auth_user of its database",
			sample: pgbSample{
				config:    config(),
				databases: []pgbDatabaseRow{{name: "db", authUser: "lookup"}},
				pools:     []pgbPoolRow{pool("db", "lookup", 2, 0, 1)},
				stats:     []pgbStatsRow{stats("db")},
			},
			want: []want{{pool: "db/lookup", size: 20, timeout: 120 * time.Second, recycle: time.Hour, prePing: true, open: 2, inUse: 2, pending: 1, checkouts: 100, sum: 2.5}},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := buildPgBouncerPools("bouncer", &tc.sample)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %d pools, want %d", len(got), len(tc.want))
			}
			for i, w := range tc.want {
				p := got[i]
				s := p.Settings
				if p.Pool != w.pool || p.Target != "bouncer" || p.Source != metrics.SourcePgBouncer || !p.Configured || p.Instances != 1 {
					t.Errorf("pool %d: identity %q %q %q configured=%v instances=%d", i, p.Target, p.Pool, p.Source, p.Configured, p.Instances)
				}
				if s.PoolSize != w.size || s.MaxOverflow != w.maxOver || s.Timeout != w.timeout || s.Recycle != w.recycle || s.PrePing != w.prePing {
					t.Errorf("%s: settings %+v, want size %d overflow %d timeout %v recycle %v pre-ping %v", w.pool, s, w.size, w.maxOver, w.timeout, w.recycle, w.prePing)
				}
				if p.Open != w.open || p.InUse != w.inUse || *p.Pending != w.pending || p.Overflow != w.ovf {
					t.Errorf("%s: open %d in-use %d pending %d overflow %d, want %d %d %d %d", w.pool, p.Open, p.InUse, *p.Pending, p.Overflow, w.open, w.inUse, w.pending, w.ovf)
				}
				switch c := p.Checkouts; {
				case w.checkouts == 0 && c != nil:
					t.Errorf("%s: checkouts %+v, want absent", w.pool, *c)
				case w.checkouts != 0 && c == nil:
					t.Errorf("%s: checkouts absent, want %d", w.pool, w.checkouts)
				case c != nil:
					if c.Count != w.checkouts || c.DurationSeconds != w.sum || c.Buckets != nil || c.Timeouts != nil {
						t.Errorf("%s: checkouts %+v, want count %d sum %v, no buckets, no timeouts", w.pool, *c, w.checkouts, w.sum)
					}
				}
				if p.Auxiliary != w.aux {
					t.Errorf("%s: auxiliary %v, want %v", w.pool, p.Auxiliary, w.aux)
				}
				if p.LongestWaitSeconds == nil || *p.LongestWaitSeconds != 0.5 {
					t.Errorf("%s: longest wait %v, want 0.5 whether or not checkout counters are attributed", w.pool, p.LongestWaitSeconds)
				}
			}
		})
	}
}

// TestPgBouncerConfigErrors: settings the mapping needs are checked, and errors name them.
func TestPgBouncerConfigErrors(t *testing.T) {
	base := pgbConfig{"default_pool_size": "20", "reserve_pool_size": "0", "query_wait_timeout": "120", "server_lifetime": "3600"}
	for _, tc := range []struct{ key, value, wantErr string }{
		{"default_pool_size", "", `"default_pool_size"`},
		{"reserve_pool_size", "many", `setting "reserve_pool_size": "many" is not an integer`},
		{"query_wait_timeout", "-3", `setting "query_wait_timeout": "-3" is not a number of seconds`},
		{"server_lifetime", "1h", `"server_lifetime"`},
	} {
		t.Run(tc.key, func(t *testing.T) {
			c := pgbConfig{}
			for k, v := range base {
				c[k] = v
			}
			if tc.value == "" {
				delete(c, tc.key)
			} else {
				c[tc.key] = tc.value
			}
			_, err := buildPgBouncerPools("b", &pgbSample{config: c})
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want one containing %s", err, tc.wantErr)
			}
		})
	}
}

// --- integration tests against a real PgBouncer ---

func newPgBouncerTestTarget(t testing.TB, dsn string, logs io.Writer, mutate ...func(*PgBouncerOptions)) *Target {
	t.Helper()
	opts := DefaultPgBouncerOptions()
	for _, m := range mutate {
		m(&opts)
	}
	if logs == nil {
		logs = io.Discard
	}
	d, err := poolcfg.ParseDSN(dsn)
	if err != nil {
		t.Fatal(err)
	}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	tgt, err := NewPgBouncerTarget("bouncer", d, opts, logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tgt.Close)
	return tgt
}

// bouncerClient opens a client session through PgBouncer as the application role.
func bouncerClient(t testing.TB, b *pgtest.PgBouncer, db string) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(b.DSN(appRole, appPassword, db))
	if err != nil {
		t.Fatal(err)
	}
	// Transaction pooling of PgBouncer 1.18 cannot keep named prepared statements.
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("client of %s: %v", db, err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// consoleVersion asks the console for its version, the value of dbpool_pgbouncer_info{version}.
func consoleVersion(t testing.TB, b *pgtest.PgBouncer) string {
	t.Helper()
	cfg, err := pgx.ParseConfig(b.AdminDSN())
	if err != nil {
		t.Fatal(err)
	}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	ctx := context.Background()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close(ctx) }()
	var v string
	if err := conn.QueryRow(ctx, "SHOW VERSION").Scan(&v); err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(strings.TrimPrefix(v, "PgBouncer"))
}

func bouncerPassword(t testing.TB, dsn string) string {
	t.Helper()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Password
}

// TestPgBouncerStaticExposition: the configuration gauges of real pools, as exposition
// text, and the exposition passes the metric linter.
func TestPgBouncerStaticExposition(t *testing.T) {
	pg := testServer(t, pgtest.Options{})
	b := pgtest.StartPgBouncerT(t, pg, pgtest.PgBouncerOptions{
		DefaultPoolSize: 2,
		ReservePoolSize: 1,
		Databases: map[string]string{
			"app": "dbname=postgres",
			"big": "dbname=postgres pool_size=5 reserve_pool=3",
		},
		ExtraConf: map[string]string{"query_wait_timeout": "7", "server_lifetime": "600"},
	})
	for _, db := range []string{"app", "big"} {
		if _, err := bouncerClient(t, b, db).Exec(context.Background(), "SELECT 1"); err != nil {
			t.Fatal(err)
		}
	}
	tgt := newPgBouncerTestTarget(t, b.StatsDSN(), nil)

	// app/postgres and big/postgres are PgBouncer's auth_query pools.
	want := `
# HELP dbpool_checkout_timeout_seconds Configured time a checkout may wait for a connection (DB_POOL_TIMEOUT); absent when it waits forever.
# TYPE dbpool_checkout_timeout_seconds gauge
dbpool_checkout_timeout_seconds{pool="app/app",source="pgbouncer",target="bouncer"} 7
dbpool_checkout_timeout_seconds{pool="app/postgres",source="pgbouncer",target="bouncer"} 7
dbpool_checkout_timeout_seconds{pool="big/app",source="pgbouncer",target="bouncer"} 7
dbpool_checkout_timeout_seconds{pool="big/postgres",source="pgbouncer",target="bouncer"} 7
# HELP dbpool_instances Processes that each hold one such pool: as configured, or for the app source those that reported.
# TYPE dbpool_instances gauge
dbpool_instances{pool="app/app",source="pgbouncer",target="bouncer"} 1
dbpool_instances{pool="app/postgres",source="pgbouncer",target="bouncer"} 1
dbpool_instances{pool="big/app",source="pgbouncer",target="bouncer"} 1
dbpool_instances{pool="big/postgres",source="pgbouncer",target="bouncer"} 1
# HELP dbpool_max_connections Capacity of the pool group: instances x (pool size + max overflow).
# TYPE dbpool_max_connections gauge
dbpool_max_connections{pool="app/app",source="pgbouncer",target="bouncer"} 3
dbpool_max_connections{pool="app/postgres",source="pgbouncer",target="bouncer"} 3
dbpool_max_connections{pool="big/app",source="pgbouncer",target="bouncer"} 8
dbpool_max_connections{pool="big/postgres",source="pgbouncer",target="bouncer"} 8
# HELP dbpool_max_overflow_connections Configured extra connections per instance beyond the pool size (DB_MAX_OVERFLOW).
# TYPE dbpool_max_overflow_connections gauge
dbpool_max_overflow_connections{pool="app/app",source="pgbouncer",target="bouncer"} 1
dbpool_max_overflow_connections{pool="app/postgres",source="pgbouncer",target="bouncer"} 1
dbpool_max_overflow_connections{pool="big/app",source="pgbouncer",target="bouncer"} 3
dbpool_max_overflow_connections{pool="big/postgres",source="pgbouncer",target="bouncer"} 3
# HELP dbpool_pgbouncer_info Always 1; the version of the PgBouncer behind the target, from SHOW VERSION.
# TYPE dbpool_pgbouncer_info gauge
dbpool_pgbouncer_info{target="bouncer",version="` + consoleVersion(t, b) + `"} 1
# HELP dbpool_pool_info Always 1; one series per pool and source that observes it (activity: estimate from pg_stat_activity; pgbouncer, pgxpool, app: exact).
# TYPE dbpool_pool_info gauge
dbpool_pool_info{pool="app/app",source="pgbouncer",target="bouncer"} 1
dbpool_pool_info{pool="app/postgres",source="pgbouncer",target="bouncer"} 1
dbpool_pool_info{pool="big/app",source="pgbouncer",target="bouncer"} 1
dbpool_pool_info{pool="big/postgres",source="pgbouncer",target="bouncer"} 1
# HELP dbpool_pre_ping_enabled 1 if the pool tests connections before use (DB_POOL_PRE_PING).
# TYPE dbpool_pre_ping_enabled gauge
dbpool_pre_ping_enabled{pool="app/app",source="pgbouncer",target="bouncer"} 1
dbpool_pre_ping_enabled{pool="app/postgres",source="pgbouncer",target="bouncer"} 1
dbpool_pre_ping_enabled{pool="big/app",source="pgbouncer",target="bouncer"} 1
dbpool_pre_ping_enabled{pool="big/postgres",source="pgbouncer",target="bouncer"} 1
# HELP dbpool_recycle_seconds Configured connection age after which the pool replaces it (DB_POOL_RECYCLE); 0 means never.
# TYPE dbpool_recycle_seconds gauge
dbpool_recycle_seconds{pool="app/app",source="pgbouncer",target="bouncer"} 600
dbpool_recycle_seconds{pool="app/postgres",source="pgbouncer",target="bouncer"} 600
dbpool_recycle_seconds{pool="big/app",source="pgbouncer",target="bouncer"} 600
dbpool_recycle_seconds{pool="big/postgres",source="pgbouncer",target="bouncer"} 600
# HELP dbpool_size_connections Configured permanent connections per instance (DB_POOL_SIZE).
# TYPE dbpool_size_connections gauge
dbpool_size_connections{pool="app/app",source="pgbouncer",target="bouncer"} 2
dbpool_size_connections{pool="app/postgres",source="pgbouncer",target="bouncer"} 2
dbpool_size_connections{pool="big/app",source="pgbouncer",target="bouncer"} 5
dbpool_size_connections{pool="big/postgres",source="pgbouncer",target="bouncer"} 5
# HELP dbpool_up 1 if the exporter reached the target over its monitoring connection during this scrape.
# TYPE dbpool_up gauge
dbpool_up{target="bouncer"} 1
# HELP dbpool_scrape_success 1 if the collector succeeded during this scrape.
# TYPE dbpool_scrape_success gauge
dbpool_scrape_success{collector="pgbouncer",target="bouncer"} 1
`
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := NewExporter([]*Target{tgt}, ExporterOptions{}).ScrapeCollector(ctx)
	if err := testutil.CollectAndCompare(c, strings.NewReader(want),
		"dbpool_checkout_timeout_seconds", "dbpool_instances", "dbpool_max_connections", "dbpool_max_overflow_connections",
		"dbpool_pgbouncer_info", "dbpool_pool_info", "dbpool_pre_ping_enabled", "dbpool_recycle_seconds",
		"dbpool_size_connections", "dbpool_up", "dbpool_scrape_success"); err != nil {
		t.Error(err)
	}
	testbin.LintClean(t, c)
}

// TestPgBouncerSaturatedPool drives more clients than pool plus reserve hold and checks
// what a pool user needs to see: waiters, the reserve connection in use, a sub-second wait
// and the checkout counters moving.
func TestPgBouncerSaturatedPool(t *testing.T) {
	pg := testServer(t, pgtest.Options{})
	b := pgtest.StartPgBouncerT(t, pg, pgtest.PgBouncerOptions{
		PoolMode:           "transaction",
		DefaultPoolSize:    2,
		ReservePoolSize:    1,
		ReservePoolTimeout: 100 * time.Millisecond,
	})
	// The stats user is all the exporter needs.
	tgt := newPgBouncerTestTarget(t, b.StatsDSN(), nil)
	const clients = 6
	conns := make([]*pgx.Conn, clients)
	for i := range conns {
		conns[i] = bouncerClient(t, b, "app")
	}
	app := map[string]string{"pool": "app/app"}

	before := gather(t, tgt, 10*time.Second)
	count0, sum0 := checkoutHistogram(t, before, "app/app")
	if c := mustValue(t, before, "dbpool_checkouts_total", app); c != float64(count0) {
		t.Errorf("checkouts_total %v != checkout_duration_seconds_count %d", c, count0)
	}

	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for _, c := range conns {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if _, err := c.Exec(ctx, "SELECT pg_sleep(2)"); err != nil {
				errs <- err
			}
		})
	}
	// 2 pool connections serve at once, the reserve one after reserve_pool_timeout, and 3
	// clients wait until the first queries end.
	var during map[string]*dto.MetricFamily
	for {
		during = gather(t, tgt, 5*time.Second)
		p, _ := value(during, "dbpool_pending_checkouts", app)
		o, _ := value(during, "dbpool_overflow_connections", app)
		u, _ := value(during, "dbpool_in_use_connections", app)
		if p == 3 && o == 1 && u == 3 {
			break
		}
		if time.Since(start) > 10*time.Second {
			t.Fatalf("never saw 3 waiting, 3 in use, 1 reserve: pending %v in use %v overflow %v", p, u, o)
		}
		time.Sleep(20 * time.Millisecond)
	}
	observed := time.Since(start)
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"dbpool_open_connections", app, 3},
		{"dbpool_connections", map[string]string{"pool": "app/app", "state": "active"}, 3},
		{"dbpool_connections", map[string]string{"pool": "app/app", "state": "idle"}, 0},
		{"dbpool_utilization_ratio", app, 1},
		{"dbpool_size_connections", app, 2},
		{"dbpool_max_overflow_connections", app, 1},
	} {
		if v := mustValue(t, during, c.name, c.labels); v != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, v, c.want)
		}
	}
	// maxwait alone would say 0 for the whole first second; maxwait_us gives the fraction.
	w := mustValue(t, during, "dbpool_longest_checkout_wait_seconds", app)
	if w <= 0 || w >= observed.Seconds() || w == math.Trunc(w) {
		t.Errorf("longest checkout wait %v s, want a fraction of a second in (0, %v)", w, observed.Seconds())
	}
	t.Logf("observed after %v: longest wait %.6f s", observed.Round(time.Millisecond), w)
	if _, ok := during["dbpool_checkout_timeouts_total"]; ok {
		t.Error("dbpool_checkout_timeouts_total is exported, but PgBouncer does not count timeouts")
	}
	testbin.LintClean(t, NewExporter([]*Target{tgt}, ExporterOptions{}).ScrapeCollector(context.Background()))

	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("client: %v", err)
	}
	after := gather(t, tgt, 10*time.Second)
	count1, sum1 := checkoutHistogram(t, after, "app/app")
	if count1 < count0+clients {
		t.Errorf("checkout count %d -> %d, want at least %d more", count0, count1, clients)
	}
	// The three late clients each waited for a 2 s query to end.
	if sum1-sum0 < 3 {
		t.Errorf("checkout duration sum grew by %v s, want at least 3 s", sum1-sum0)
	}
	if c := mustValue(t, after, "dbpool_checkouts_total", app); c != float64(count1) {
		t.Errorf("checkouts_total %v != checkout_duration_seconds_count %d", c, count1)
	}
	for name, want := range map[string]float64{"dbpool_pending_checkouts": 0, "dbpool_in_use_connections": 0, "dbpool_longest_checkout_wait_seconds": 0} {
		if v := mustValue(t, after, name, app); v != want {
			t.Errorf("after the load %s = %v, want %v", name, v, want)
		}
	}
}

// checkoutHistogram returns count and sum of a pool's checkout duration histogram, which has
// the +Inf bucket only.
func checkoutHistogram(t *testing.T, mfs map[string]*dto.MetricFamily, pool string) (uint64, float64) {
	t.Helper()
	mf, ok := mfs["dbpool_checkout_duration_seconds"]
	if !ok {
		t.Fatal("no dbpool_checkout_duration_seconds")
	}
	for _, m := range mf.GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "pool" && l.GetValue() == pool {
				h := m.GetHistogram()
				if len(h.GetBucket()) != 0 {
					t.Errorf("histogram has buckets %v; PgBouncer has totals only", h.GetBucket())
				}
				return h.GetSampleCount(), h.GetSampleSum()
			}
		}
	}
	t.Fatalf("no dbpool_checkout_duration_seconds{pool=%q}", pool)
	return 0, 0
}

// TestPgBouncerDownAndRestart: the target is made while PgBouncer is down, answers up 0 by
// the deadline, and recovers after a restart (also one that breaks the kept connection)
// without being recreated. No password reaches the log.
func TestPgBouncerDownAndRestart(t *testing.T) {
	pg := testServer(t, pgtest.Options{})
	b := pgtest.StartPgBouncerT(t, pg, pgtest.PgBouncerOptions{})
	if err := b.Stop(); err != nil {
		t.Fatal(err)
	}
	var logs testbin.Buffer
	tgt := newPgBouncerTestTarget(t, b.AdminDSN(), &logs)

	const deadline = 2 * time.Second
	expectUp := func(want float64) {
		t.Helper()
		mfs := gatherWithin(t, tgt, deadline)
		if v := mustValue(t, mfs, "dbpool_up", nil); v != want {
			t.Errorf("dbpool_up = %v, want %v", v, want)
		}
		if v := mustValue(t, mfs, "dbpool_scrape_success", map[string]string{"collector": "pgbouncer"}); v != want {
			t.Errorf("dbpool_scrape_success = %v, want %v", v, want)
		}
		if _, ok := mfs["dbpool_scrape_duration_seconds"]; !ok {
			t.Error("no dbpool_scrape_duration_seconds")
		}
		if _, ok := mfs["dbpool_pgbouncer_info"]; ok != (want == 1) {
			t.Errorf("dbpool_pgbouncer_info present = %v with up %v", ok, want)
		}
	}
	expectUp(0)
	if err := b.Restart(); err != nil {
		t.Fatal(err)
	}
	expectUp(1)
	// The kept connection dies with this restart; the first scrape after it logs in again.
	if err := b.Restart(); err != nil {
		t.Fatal(err)
	}
	expectUp(1)
	if err := b.Stop(); err != nil {
		t.Fatal(err)
	}
	expectUp(0)
	if err := b.Restart(); err != nil {
		t.Fatal(err)
	}
	expectUp(1)

	out := logs.String()
	if !strings.Contains(out, "collector failed") || !strings.Contains(out, "collector recovered") {
		t.Errorf("want one failure and one recovery line in the log, got:\n%s", out)
	}
	if secret := bouncerPassword(t, b.AdminDSN()); strings.Contains(out, secret) {
		t.Errorf("log contains the password:\n%s", out)
	}
}

// TestPgBouncerFrozen: a PgBouncer that accepts nothing (SIGSTOP) must not hold the scrape
// past its deadline; after SIGCONT the same target recovers.
func TestPgBouncerFrozen(t *testing.T) {
	pg := testServer(t, pgtest.Options{})
	b := pgtest.StartPgBouncerT(t, pg, pgtest.PgBouncerOptions{})
	tgt := newPgBouncerTestTarget(t, b.StatsDSN(), nil)
	if v := mustValue(t, gather(t, tgt, 10*time.Second), "dbpool_up", nil); v != 1 {
		t.Fatalf("dbpool_up = %v before freezing", v)
	}
	raw, err := os.ReadFile(filepath.Join(b.Dir, "pgbouncer.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	cont := func() { _ = syscall.Kill(pid, syscall.SIGCONT) }
	defer cont()
	const deadline = 2 * time.Second
	for range 2 { // the kept connection, then a fresh login
		mfs := gatherWithin(t, tgt, deadline)
		if v := mustValue(t, mfs, "dbpool_up", nil); v != 0 {
			t.Errorf("dbpool_up = %v with PgBouncer frozen", v)
		}
	}
	cont()
	if v := mustValue(t, gather(t, tgt, 10*time.Second), "dbpool_up", nil); v != 1 {
		t.Errorf("dbpool_up = %v after SIGCONT", v)
	}
}

// TestPgBouncerConcurrentScrapes: parallel scrapes share one collection and one console
// session.
func TestPgBouncerConcurrentScrapes(t *testing.T) {
	pg := testServer(t, pgtest.Options{})
	b := pgtest.StartPgBouncerT(t, pg, pgtest.PgBouncerOptions{})
	tgt := newPgBouncerTestTarget(t, b.StatsDSN(), nil)
	var wg sync.WaitGroup
	for range 30 {
		wg.Go(func() {
			if v, _ := value(gather(t, tgt, 10*time.Second), "dbpool_up", nil); v != 1 {
				t.Errorf("dbpool_up = %v", v)
			}
		})
	}
	wg.Wait()

	if ports := exporterSessions(t, b); len(ports) != 1 {
		t.Errorf("exporter console sessions on ports %v, want 1", ports)
	}
}

// TestPgBouncerConsoleConnectionKept: scrapes reuse one console connection until it is
// MaxConnLifetime old.
func TestPgBouncerConsoleConnectionKept(t *testing.T) {
	pg := testServer(t, pgtest.Options{})
	b := pgtest.StartPgBouncerT(t, pg, pgtest.PgBouncerOptions{})
	for _, tc := range []struct {
		name     string
		lifetime time.Duration
		same     bool
	}{
		{"kept", time.Hour, true},
		{"replaced", time.Nanosecond, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tgt := newPgBouncerTestTarget(t, b.StatsDSN(), nil, func(o *PgBouncerOptions) { o.MaxConnLifetime = tc.lifetime })
			var ports [2][]string
			for i := range ports {
				if v := mustValue(t, gather(t, tgt, 10*time.Second), "dbpool_up", nil); v != 1 {
					t.Fatalf("dbpool_up = %v", v)
				}
				ports[i] = exporterSessions(t, b)
			}
			if len(ports[1]) != 1 {
				t.Fatalf("exporter console sessions on ports %v, want 1", ports[1])
			}
			if same := slices.Equal(ports[0], ports[1]); same != tc.same {
				t.Errorf("sessions on ports %v then %v; want the same connection: %v", ports[0], ports[1], tc.same)
			}
		})
	}
}

// exporterSessions lists the client ports of the console sessions of the stats user (the
// exporter's role in these tests).
func exporterSessions(t *testing.T, b *pgtest.PgBouncer) []string {
	t.Helper()
	cfg, err := pgx.ParseConfig(b.AdminDSN())
	if err != nil {
		t.Fatal(err)
	}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	ctx := context.Background()
	admin, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = admin.Close(ctx) }()
	// The session a replaced connection leaves behind may take PgBouncer a moment to
	// notice; wait until at most one remains.
	for deadline := time.Now().Add(5 * time.Second); ; {
		ports := queryExporterSessions(t, ctx, admin)
		if len(ports) <= 1 || time.Now().After(deadline) {
			return ports
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func queryExporterSessions(t *testing.T, ctx context.Context, admin *pgx.Conn) []string {
	t.Helper()
	rows, err := queryConsole(ctx, admin, "SHOW CLIENTS")
	if err != nil {
		t.Fatal(err)
	}
	var ports []string
	for _, r := range rows {
		if user, _ := r.text("user"); user == "pgbouncer_stats" {
			port, _ := r.text("port")
			ports = append(ports, port)
		}
	}
	slices.Sort(ports)
	return ports
}

// TestPgBouncerWrongPassword: a refused login is a failed scrape whose log line does not
// carry the password.
func TestPgBouncerWrongPassword(t *testing.T) {
	pg := testServer(t, pgtest.Options{})
	b := pgtest.StartPgBouncerT(t, pg, pgtest.PgBouncerOptions{})
	const wrong = "Wrong-Secret-9876"
	dsn := strings.Replace(b.StatsDSN(), ":"+bouncerPassword(t, b.StatsDSN())+"@", ":"+wrong+"@", 1)
	var logs testbin.Buffer
	tgt := newPgBouncerTestTarget(t, dsn, &logs)
	if v := mustValue(t, gather(t, tgt, 5*time.Second), "dbpool_up", nil); v != 0 {
		t.Errorf("dbpool_up = %v with a wrong password", v)
	}
	out := logs.String()
	if !strings.Contains(out, "collector failed") {
		t.Errorf("no failure logged:\n%s", out)
	}
	if strings.Contains(out, wrong) {
		t.Errorf("log contains the password:\n%s", out)
	}
}

// BenchmarkPgBouncerScrape measures one scrape of a PgBouncer with a few busy pools.
func BenchmarkPgBouncerScrape(b *testing.B) {
	pg := pgtest.StartT(b, pgtest.Options{})
	if err := pg.CreateRole(appRole, appPassword, false); err != nil {
		b.Fatal(err)
	}
	dbs := map[string]string{}
	for i := range 4 {
		dbs[fmt.Sprintf("db%d", i)] = "dbname=postgres"
	}
	bouncer := pgtest.StartPgBouncerT(b, pg, pgtest.PgBouncerOptions{DefaultPoolSize: 2, Databases: dbs})
	for db := range dbs {
		if _, err := bouncerClient(b, bouncer, db).Exec(context.Background(), "SELECT 1"); err != nil {
			b.Fatal(err)
		}
	}
	tgt := newPgBouncerTestTarget(b, bouncer.StatsDSN(), nil)
	ctx := context.Background()
	pools := 0
	for b.Loop() {
		c, cancel := context.WithTimeout(ctx, 5*time.Second)
		res := tgt.Scrape(c)
		cancel()
		if len(res.Pools) == 0 {
			b.Fatal("scrape failed: no pools")
		}
		pools = len(res.Pools)
	}
	b.ReportMetric(float64(len(pgbouncerStatements)), "statements/scrape")
	b.ReportMetric(float64(pools), "pools/scrape")
}
