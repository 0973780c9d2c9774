package pgtest

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// adminConn connects to the PgBouncer console, which speaks only the simple
// query protocol.
func adminConn(t testing.TB, dsn string) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	conn, err := pgx.ConnectConfig(testCtx(t), cfg)
	if err != nil {
		t.Fatalf("connect to admin console: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// showRows runs a console SHOW command and returns its rows as column ->
// text (the simple protocol returns every value as text).
func showRows(t testing.TB, conn *pgx.Conn, cmd string) []map[string]string {
	t.Helper()
	rows, err := conn.Query(testCtx(t), cmd)
	if err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	defer rows.Close()
	var out []map[string]string
	for rows.Next() {
		row := map[string]string{}
		for i, raw := range rows.RawValues() {
			row[rows.FieldDescriptions()[i].Name] = string(raw)
		}
		out = append(out, row)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	return out
}

func showConfig(t testing.TB, conn *pgx.Conn) map[string]string {
	t.Helper()
	cfg := map[string]string{}
	for _, r := range showRows(t, conn, "SHOW CONFIG") {
		cfg[r["key"]] = r["value"]
	}
	return cfg
}

func TestPgBouncerClients(t *testing.T) {
	t.Parallel()
	p := StartT(t, Options{})
	const user, password = "app_user", "app-pw"
	if err := p.CreateRole(user, password, false); err != nil {
		t.Fatal(err)
	}
	b := StartPgBouncerT(t, p, PgBouncerOptions{})
	if b.Host != "127.0.0.1" || b.Port <= 0 || b.Port == p.Port {
		t.Fatalf("PgBouncer at %s:%d", b.Host, b.Port)
	}

	// pgx in every query mode: simple protocol, and the extended protocol
	// with unnamed (Exec, DescribeExec) and named, cached statements.
	modes := []struct {
		name string
		mode pgx.QueryExecMode
	}{
		{"simple protocol", pgx.QueryExecModeSimpleProtocol},
		{"extended, exec", pgx.QueryExecModeExec},
		{"extended, describe exec", pgx.QueryExecModeDescribeExec},
		{"extended, cache statement", pgx.QueryExecModeCacheStatement},
	}
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			cfg, err := pgx.ParseConfig(b.DSN(user, password, "") + "&application_name=pgtest_client")
			if err != nil {
				t.Fatal(err)
			}
			cfg.DefaultQueryExecMode = m.mode
			ctx := testCtx(t)
			conn, err := pgx.ConnectConfig(ctx, cfg)
			if err != nil {
				t.Fatalf("connect through PgBouncer: %v", err)
			}
			defer conn.Close(context.Background())
			var sum int
			var who, app, db, addr string
			err = conn.QueryRow(ctx,
				"SELECT $1::int + 1, current_user, current_setting('application_name'), current_database(), host(inet_client_addr())",
				41).Scan(&sum, &who, &app, &db, &addr)
			if err != nil {
				t.Fatalf("query through PgBouncer: %v", err)
			}
			if sum != 42 || who != user || app != "pgtest_client" || db != "postgres" || addr != "127.0.0.1" {
				t.Errorf("got sum=%d user=%s application_name=%s db=%s client_addr=%s", sum, who, app, db, addr)
			}
		})
	}

	t.Run("ignored startup parameters", func(t *testing.T) {
		cfg, err := pgx.ParseConfig(b.DSN(user, password, ""))
		if err != nil {
			t.Fatal(err)
		}
		cfg.RuntimeParams["statement_timeout"] = "5s"
		cfg.RuntimeParams["lock_timeout"] = "1s"
		cfg.RuntimeParams["extra_float_digits"] = "3"
		conn, err := pgx.ConnectConfig(testCtx(t), cfg)
		if err != nil {
			t.Fatalf("connect with startup parameters: %v", err)
		}
		_ = conn.Close(context.Background())
	})

	t.Run("wrong password", func(t *testing.T) {
		_, err := pgx.Connect(testCtx(t), b.DSN(user, "wrong", ""))
		// PgBouncer 1.18 answers a failed SCRAM exchange with 08P01,
		// PostgreSQL with 28P01.
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || !strings.Contains(pgErr.Message, "authentication failed") {
			t.Errorf("err = %v, want an authentication failure", err)
		}
	})

	t.Run("SHOW POOLS via AdminDSN", func(t *testing.T) {
		conn := connect(t, b.DSN(user, password, ""))
		if err := conn.Ping(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		admin := adminConn(t, b.AdminDSN())
		found := false
		for _, r := range showRows(t, admin, "SHOW POOLS") {
			if r["database"] == "app" && r["user"] == user {
				found = true
				if r["pool_mode"] != "transaction" {
					t.Errorf("pool_mode = %q", r["pool_mode"])
				}
				if _, ok := r["maxwait_us"]; !ok {
					t.Errorf("SHOW POOLS lacks maxwait_us: %v", r)
				}
			}
		}
		if !found {
			t.Errorf("SHOW POOLS has no pool app/%s", user)
		}
	})

	t.Run("stats user", func(t *testing.T) {
		stats := adminConn(t, b.StatsDSN())
		if len(showRows(t, stats, "SHOW STATS")) == 0 {
			t.Error("SHOW STATS returned no rows")
		}
		// Only admin_users may change the pooler.
		if _, err := stats.Exec(testCtx(t), "RELOAD"); err == nil {
			t.Error("stats user could RELOAD")
		}
		admin := adminConn(t, b.AdminDSN())
		if _, err := admin.Exec(testCtx(t), "RELOAD"); err != nil {
			t.Errorf("admin RELOAD: %v", err)
		}
	})

	t.Run("passwords stay out of the logs", func(t *testing.T) {
		for _, f := range []string{b.LogFile, p.LogFile} {
			log, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range []string{password, p.Password(), b.adminPassword, b.statsPassword} {
				if strings.Contains(string(log), s) {
					t.Errorf("%s contains a password", f)
				}
			}
		}
	})
}

func TestPgBouncerOptions(t *testing.T) {
	t.Parallel()
	p := StartT(t, Options{})
	tests := []struct {
		name string
		opts PgBouncerOptions
		want map[string]string // SHOW CONFIG key -> value
	}{
		{
			name: "defaults",
			want: map[string]string{
				"pool_mode":                 "transaction",
				"auth_type":                 "scram-sha-256",
				"listen_addr":               "127.0.0.1",
				"ignore_startup_parameters": "extra_float_digits,statement_timeout,lock_timeout",
			},
		},
		{
			name: "sizes and timeouts",
			opts: PgBouncerOptions{
				PoolMode:           "session",
				DefaultPoolSize:    7,
				ReservePoolSize:    3,
				ReservePoolTimeout: 1500 * time.Millisecond,
				MaxClientConn:      55,
				ExtraConf:          map[string]string{"query_wait_timeout": "9"},
			},
			want: map[string]string{
				"pool_mode":            "session",
				"default_pool_size":    "7",
				"reserve_pool_size":    "3",
				"reserve_pool_timeout": "1.5",
				"max_client_conn":      "55",
				"query_wait_timeout":   "9",
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := StartPgBouncerT(t, p, tc.opts)
			got := showConfig(t, adminConn(t, b.AdminDSN()))
			for k, v := range tc.want {
				if got[k] != v {
					t.Errorf("%s = %q, want %q", k, got[k], v)
				}
			}
		})
	}

	t.Run("bad setting fails with the log", func(t *testing.T) {
		b, err := StartPgBouncer(p, PgBouncerOptions{PoolMode: "bogus"})
		if err == nil {
			_ = b.Close()
			t.Fatal("StartPgBouncer with pool_mode bogus succeeded")
		}
		if !strings.Contains(err.Error(), "bogus") {
			t.Errorf("error lacks the log tail: %v", err)
		}
		p.mu.Lock()
		n := len(p.bouncers)
		p.mu.Unlock()
		if n != 0 {
			t.Errorf("failed PgBouncer still registered with the Postgres")
		}
	})

	t.Run("custom databases", func(t *testing.T) {
		if err := p.Exec(testCtx(t), "CREATE DATABASE other"); err != nil {
			t.Fatal(err)
		}
		b := StartPgBouncerT(t, p, PgBouncerOptions{Databases: map[string]string{
			"one": "dbname=postgres pool_size=4",
			"two": "dbname=other",
		}})
		for db, want := range map[string]string{"one": "postgres", "two": "other"} {
			conn := connect(t, b.DSN("postgres", p.Password(), db))
			var got string
			if err := conn.QueryRow(testCtx(t), "SELECT current_database()", pgx.QueryExecModeSimpleProtocol).Scan(&got); err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Errorf("%s -> database %s, want %s", db, got, want)
			}
		}
		for _, r := range showRows(t, adminConn(t, b.AdminDSN()), "SHOW DATABASES") {
			if r["name"] == "one" && r["pool_size"] != "4" {
				t.Errorf("pool_size of one = %s", r["pool_size"])
			}
		}
	})
}

func TestPgBouncerStopRestartClose(t *testing.T) {
	t.Parallel()
	p := StartT(t, Options{})
	b := StartPgBouncerT(t, p, PgBouncerOptions{})
	ctx := testCtx(t)
	dsn := b.DSN("postgres", p.Password(), "")
	port := b.Port
	connect(t, dsn)

	if err := b.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if _, err := pgx.Connect(ctx, dsn); err == nil {
		t.Fatal("connected to a stopped PgBouncer")
	}
	if err := b.Restart(); err != nil {
		t.Fatalf("Restart: %v", err)
	}
	if b.Port != port {
		t.Errorf("port changed from %d to %d", port, b.Port)
	}
	connect(t, dsn)

	// Closing the Postgres closes the PgBouncer in front of it too.
	b.mu.Lock()
	pid := b.proc.Pid()
	b.mu.Unlock()
	start := procStartTime(pid)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if procStartTime(pid) == start {
		t.Error("pgbouncer still runs after Postgres.Close")
	}
	if _, err := os.Stat(b.Dir); !os.IsNotExist(err) {
		t.Errorf("pgbouncer dir still there: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Errorf("Close after Postgres.Close: %v", err)
	}
	if _, err := StartPgBouncer(p, PgBouncerOptions{}); err == nil {
		t.Error("StartPgBouncer in front of a closed Postgres succeeded")
	}
}

func BenchmarkStartPgBouncer(b *testing.B) {
	p, err := Start(Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	for b.Loop() {
		pgb, err := StartPgBouncer(p, PgBouncerOptions{})
		if err != nil {
			b.Fatal(err)
		}
		if err := pgb.Close(); err != nil {
			b.Fatal(err)
		}
	}
}
