package poolcfg

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

const authConfig = `auth_modules:
  monitor:
    user: dbpool_monitor
    password: "Auth S3cret'\\pw&x=1"
    options:
      sslmode: require
      connect_timeout: "5"
  certs:
    user: monitor
    options: {sslmode: verify-full, target_session_attrs: read-write}
targets:
  - name: db1
    dsn: postgres://db1.internal:5432/app
    auth_module: monitor
  - name: db2
    dsn: host=db2.internal dbname=app
    auth_module: monitor
  - name: db3
    dsn: postgres://db3.internal/app?application_name=x
    auth_module: certs
pgbouncers:
  - name: edge
    dsn: postgres://127.0.0.1:6432/pgbouncer
    auth_module: monitor
`

func TestParseAuthModules(t *testing.T) {
	isolatePGEnv(t)
	c, err := parse([]byte(authConfig), "config.yml")
	if err != nil {
		t.Fatal(err)
	}
	const pw = `Auth S3cret'\pw&x=1`
	for _, tc := range []struct {
		dsn        DSN
		module     string
		host, user string
		password   string
		sslmode    string
		redacted   string
	}{
		{c.Targets[0].DSN, c.Targets[0].AuthModule, "db1.internal", "dbpool_monitor", pw, "require",
			"postgres://db1.internal:5432/app?user=dbpool_monitor&connect_timeout=5&sslmode=require&password=xxxxx"},
		{c.Targets[1].DSN, c.Targets[1].AuthModule, "db2.internal", "dbpool_monitor", pw, "require",
			"host=db2.internal dbname=app user='dbpool_monitor' connect_timeout='5' sslmode='require' password='xxxxx'"},
		{c.Targets[2].DSN, c.Targets[2].AuthModule, "db3.internal", "monitor", "", "verify-full",
			"postgres://db3.internal/app?application_name=x&user=monitor&sslmode=verify-full&target_session_attrs=read-write"},
		{c.PgBouncers[0].DSN, c.PgBouncers[0].AuthModule, "127.0.0.1", "dbpool_monitor", pw, "require",
			"postgres://127.0.0.1:6432/pgbouncer?user=dbpool_monitor&connect_timeout=5&sslmode=require&password=xxxxx"},
	} {
		if got := tc.dsn.String(); got != tc.redacted {
			t.Errorf("String() = %s\nwant        %s", got, tc.redacted)
		}
		for _, s := range []string{tc.dsn.String(), fmt.Sprintf("%v %+v %#v %q", tc.dsn, tc.dsn, tc.dsn, tc.dsn), mustJSON(t, tc.dsn)} {
			if strings.Contains(s, "S3cret") {
				t.Errorf("the password leaks: %s", s)
			}
		}
		// pgconn reads back exactly the module's credentials: the escaping round-trips.
		cfg, err := pgconn.ParseConfig(tc.dsn.ConnString())
		if err != nil {
			t.Fatalf("pgconn cannot parse the combined DSN: %v", err)
		}
		if cfg.Host != tc.host || cfg.User != tc.user || cfg.Password != tc.password {
			t.Errorf("%s: pgconn sees host %q user %q password %q", tc.redacted, cfg.Host, cfg.User, cfg.Password)
		}
		if _, ok := cfg.RuntimeParams["sslmode"]; ok {
			t.Errorf("sslmode became a run-time parameter")
		}
		if tc.module == "" {
			t.Errorf("%s: AuthModule not recorded", tc.redacted)
		}
	}
	if c.Targets[0].Name != "db1" || c.Targets[0].DSN.DefaultName() != "db1.internal:5432/app" {
		t.Errorf("target = %+v, default name %q", c.Targets[0], c.Targets[0].DSN.DefaultName())
	}
	got := fmt.Sprintf("%+v", c.AuthModules)
	want := "[{Name:certs User:monitor Options:[{Key:sslmode Value:verify-full} {Key:target_session_attrs Value:read-write}] PasswordFrom:} " +
		"{Name:monitor User:dbpool_monitor Options:[{Key:connect_timeout Value:5} {Key:sslmode Value:require}] PasswordFrom:password}]"
	if got != want {
		t.Errorf("AuthModules = %s\nwant          %s", got, want)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("Validate of a parsed config: %v", err)
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestParseAuthPasswordSources(t *testing.T) {
	isolatePGEnv(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "pw"), []byte("FileS3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("MONITOR_PW", "EnvS3cret")
	c, err := parse([]byte(`auth_modules:
  file: {user: m, password_file: pw}
  env: {user: m, password_env: MONITOR_PW}
targets:
  - {name: a, dsn: "postgres://a/x", auth_module: file}
  - {name: b, dsn: "postgres://b/x", auth_module: env}
`), filepath.Join(dir, "config.yml"))
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{"FileS3cret", "EnvS3cret"} {
		cfg, err := pgconn.ParseConfig(c.Targets[i].DSN.ConnString())
		if err != nil || cfg.Password != want {
			t.Errorf("target %d: password %q (err %v), want %q", i, cfg.Password, err, want)
		}
	}
}

func TestParseAuthErrors(t *testing.T) {
	isolatePGEnv(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "empty"), []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("EMPTY_PW", "")
	t.Setenv("SOME_VAR", "SomeS3cret")
	// Every problem at once, in file order, each with its line; no password anywhere.
	_, err := parse([]byte(`auth_modules:
  nouser:
    password: NoUserS3cret
  two:
    user: m
    password: TwoS3cret
    password_env: SOME_VAR
  badopt:
    user: m
    options: {sslmod: require, application_name: x}
  nofile:
    user: m
    password_file: missing
  emptyfile:
    user: m
    password_file: empty
  noenv:
    user: m
    password_env: EMPTY_PW
  ok:
    user: m
    password: OkS3cret
    options: {sslmode: bogus}
  fine:
    user: m
    password: FineS3cret
    options: {sslmode: require}
  "bad name": {user: m}
targets:
  - name: unknown
    dsn: postgres://h1/x
    auth_module: nope
  - name: both
    dsn: postgres://someone:DsnS3cret@h2/x
    auth_module: fine
  - name: kvuser
    dsn: host=h3 user=someone
    auth_module: fine
  - name: option-twice
    dsn: postgres://h4/x?sslmode=disable
    auth_module: fine
  - name: badvalue
    dsn: postgres://h5/x
    auth_module: ok
  - name: from-broken-module
    dsn: postgres://h6/x
    auth_module: two
  - name: nodsn
    auth_module: fine
pgbouncers:
  - name: edge
    dsn: postgres://h7/pgbouncer
    auth_module: nope
`), filepath.Join(dir, "config.yml"))
	want := []string{
		`config.yml:2: auth_modules.nouser.user: required`,
		`config.yml:4: auth_modules.two: set only one of password, password_file and password_env, not password and password_env`,
		`config.yml:10: auth_modules.badopt.options: unknown connection option "application_name" (options: ` + strings.Join(authOptionKeys, ", ") + `)`,
		`config.yml:10: auth_modules.badopt.options: unknown connection option "sslmod" (options: ` + strings.Join(authOptionKeys, ", ") + `)`,
		fmt.Sprintf(`config.yml:13: auth_modules.nofile.password_file="missing": open %s: no such file or directory`, filepath.Join(dir, "missing")),
		`config.yml:16: auth_modules.emptyfile.password_file="empty": file is empty`,
		`config.yml:19: auth_modules.noenv.password_env="EMPTY_PW": environment variable is not set or empty`,
		`config.yml:28: auth_modules: name "bad name" must match [a-zA-Z0-9_.:/-]+`,
		`config.yml:32: targets[0].auth_module="nope": unknown auth module (auth modules: "bad name", "badopt", "emptyfile", "fine", "noenv", "nofile", "nouser", "ok", "two")`,
		`config.yml:35: targets[1]: the DSN sets user and password and auth_module "fine" gives the credentials: set them in one place only`,
		`config.yml:38: targets[2]: the DSN sets user and auth_module "fine" gives the credentials: set them in one place only`,
		`config.yml:41: targets[3]: the DSN and auth_module "fine" both set sslmode: set it in one place only`,
		`config.yml:44: targets[4]: with auth_module "ok": invalid DSN (URL form): failed to configure TLS (sslmode is invalid)`,
		`config.yml:48: targets[6].dsn: missing: set one of dsn, dsn_file or dsn_env`,
		`config.yml:53: pgbouncers[0].auth_module="nope": unknown auth module (auth modules: "bad name", "badopt", "emptyfile", "fine", "noenv", "nofile", "nouser", "ok", "two")`,
	}
	checkErrorLines(t, err, filepath.Join(dir, "config.yml"), want)
	if err != nil && strings.Contains(err.Error(), "S3cret") {
		t.Errorf("a password leaks into the errors:\n%v", err)
	}

	for _, tc := range []struct{ name, yaml, want string }{
		{"list instead of mapping", "auth_modules: [a]\ntargets: [{dsn: 'postgres://h/x'}]\n",
			"c.yml:1: expected auth_modules: a mapping of names to auth modules, got a list"},
		{"unknown key", "auth_modules:\n  m: {user: u, pasword: x}\ntargets: [{dsn: 'postgres://h/x'}]\n",
			`c.yml:2: unknown key "pasword" in an auth module (known keys: user, password, password_file, password_env, options)`},
		{"options not a mapping", "auth_modules:\n  m: {user: u, options: [sslmode]}\ntargets: [{dsn: 'postgres://h/x'}]\n",
			"c.yml:2: expected a mapping, got a list"},
		{"option without value", "auth_modules:\n  m: {user: u, options: {sslmode: }}\ntargets: [{dsn: 'postgres://h/x', auth_module: m}]\n",
			"c.yml:2: auth_modules.m.options.sslmode: a value is required"},
		{"empty password", "auth_modules:\n  m: {user: u, password: ''}\ntargets: [{dsn: 'postgres://h/x', auth_module: m}]\n",
			"c.yml:2: auth_modules.m.password: empty password (leave the key out for a login without one)"},
		{"no modules", "targets: [{dsn: 'postgres://h/x', auth_module: m}]\n",
			`c.yml:1: targets[0].auth_module="m": unknown auth module (there are no auth_modules)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parse([]byte(tc.yaml), "c.yml")
			if err == nil || err.Error() != tc.want {
				t.Errorf("got  %v\nwant %s", err, tc.want)
			}
		})
	}
}

func TestAppendParams(t *testing.T) {
	for _, tc := range []struct{ dsn, want string }{
		{"postgres://h/db", "postgres://h/db?user=u%20%27%5C&password=p%26%3D%2B%25"},
		{"postgres://h/db?sslmode=disable", "postgres://h/db?sslmode=disable&user=u%20%27%5C&password=p%26%3D%2B%25"},
		{"postgres://h/db?", "postgres://h/db?user=u%20%27%5C&password=p%26%3D%2B%25"},
		{"host=h", `host=h user='u \'\\' password='p&=+%'`},
	} {
		got := appendParams(tc.dsn, []AuthOption{{"user", `u '\`}, {"password", "p&=+%"}})
		if got != tc.want {
			t.Errorf("appendParams(%q) = %s, want %s", tc.dsn, got, tc.want)
		}
		cfg, err := pgconn.ParseConfig(got)
		if err != nil || cfg.User != `u '\` || cfg.Password != "p&=+%" {
			t.Errorf("%s: pgconn reads user %q password %q (err %v)", got, cfg.User, cfg.Password, err)
		}
		if _, err := ParseDSN(got); err != nil {
			t.Errorf("ParseDSN(%s): %v", got, err)
		}
	}
}

func TestDSNParamKeys(t *testing.T) {
	for _, tc := range []struct {
		dsn  string
		want string
	}{
		{"postgres://h/db", ""},
		{"postgres://u@h/db", "user"},
		{"postgres://u:p@h/db", "password user"},
		{"postgres://h/db?user=u&sslmode=disable", "sslmode user"},
		{"postgres://h/db?pass%77ord=x", "password"},
		{"host=h user=u sslmode='require'", "host sslmode user"},
	} {
		keys := dsnParamKeys(tc.dsn)
		var got []string
		for _, k := range []string{"host", "password", "sslmode", "user"} {
			if keys[k] {
				got = append(got, k)
			}
		}
		if strings.Join(got, " ") != tc.want {
			t.Errorf("dsnParamKeys(%q) = %v, want %s", tc.dsn, got, tc.want)
		}
	}
}
