package poolcfg

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

const fullConfig = `# every key once
targets:
  - name: main
    dsn: postgres://monitor:S3cretMonitorPw@db1:5432/appdb?sslmode=disable
  - name: replica
    dsn: "host=db2 user=monitor password='S3cret Replica' dbname=appdb"
pgbouncers:
  - name: edge
    dsn: postgres://pgbouncer@127.0.0.1:6432/pgbouncer
pools:
  - name: api
    target: main
    match:
      application_name_regex: 'api-(?P<instance>[0-9]+)'
      user: app
      database: appdb
      client_cidr: 10.0.0.0/8
    pool_size: 15
    max_overflow: 30
    timeout: 10s
    recycle: 1800
    pre_ping: false
    echo: true
    instances: 3
  - name: worker
    target: replica
    match: {application_name: worker}
    timeout: 2.5
`

func TestParseFull(t *testing.T) {
	isolatePGEnv(t)
	c, err := parse([]byte(fullConfig), "config.yml")
	if err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprintf("%+v", *c)
	want := "{Targets:[{Name:main DSN:postgres://monitor:xxxxx@db1:5432/appdb?sslmode=disable AuthModule:} " +
		"{Name:replica DSN:host=db2 user=monitor password='xxxxx' dbname=appdb AuthModule:}] " +
		"Pools:[{Name:api Target:main Match:application_name=~\"api-(?P<instance>[0-9]+)\" user=\"app\" database=\"appdb\" client_cidr=10.0.0.0/8 " +
		"Settings:{PoolSize:15 MaxOverflow:30 Timeout:10s Recycle:30m0s PrePing:false Echo:true} Instances:3} " +
		"{Name:worker Target:replica Match:application_name=\"worker\" " +
		"Settings:{PoolSize:10 MaxOverflow:20 Timeout:2.5s Recycle:1h0m0s PrePing:true Echo:false} Instances:1}] " +
		"PgBouncers:[{Name:edge DSN:postgres://pgbouncer@127.0.0.1:6432/pgbouncer AuthModule:}] Apps:[] AuthModules:[]}"
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	if c.Targets[1].DSN.ConnString() != "host=db2 user=monitor password='S3cret Replica' dbname=appdb" {
		t.Errorf("ConnString = %q", c.Targets[1].DSN.ConnString())
	}
	if ok, inst := c.Pools[0].Match.Match("api-7", "app", "appdb", netip.MustParseAddr("10.0.0.9")); !ok || inst != "7" {
		t.Errorf("parsed matcher: Match = %v %q", ok, inst)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("Validate of a parsed config: %v", err)
	}
	if ps := c.PoolsForTarget("replica"); len(ps) != 1 || ps[0].Name != "worker" {
		t.Errorf("PoolsForTarget(replica) = %+v", ps)
	}
}

// TestParseDefaults: a lone target is named after its DSN and is every pool's target; keys a
// pool leaves out come from the defaults given (the DB_* settings), keys it sets win.
func TestParseDefaults(t *testing.T) {
	isolatePGEnv(t)
	env := Settings{PoolSize: 4, MaxOverflow: 2, Timeout: 5 * time.Second, Recycle: 0, PrePing: false, Echo: true}
	c, err := ParseWithDefaults([]byte(`
targets:
  - dsn: postgres://monitor@db1:5433/appdb
pools:
  - name: api
    match: {application_name: api}
    max_overflow: 7
  - name: other
    match: {user: batch}
`), "config.yml", env)
	if err != nil {
		t.Fatal(err)
	}
	if c.Targets[0].Name != "db1:5433/appdb" {
		t.Errorf("target name = %q", c.Targets[0].Name)
	}
	wantAPI := env
	wantAPI.MaxOverflow = 7
	for i, want := range []Pool{
		{Name: "api", Target: "db1:5433/appdb", Settings: wantAPI, Instances: 1},
		{Name: "other", Target: "db1:5433/appdb", Settings: env, Instances: 1},
	} {
		got := c.Pools[i]
		if got.Name != want.Name || got.Target != want.Target || got.Settings != want.Settings || got.Instances != want.Instances {
			t.Errorf("pool %d = %+v, want %+v", i, got, want)
		}
	}

	c, err = parse([]byte("targets:\n  - dsn: postgres://db1/appdb\npools:\n  - name: all\n"), "config.yml")
	if err != nil {
		t.Fatal(err)
	}
	if p := c.Pools[0]; p.Settings != DefaultSettings() || !p.Match.IsEmpty() || p.Target != "db1:5432/appdb" {
		t.Errorf("lone pool with empty matcher = %+v", p)
	}

	// PgBouncer alone is a valid configuration, named after its DSN.
	c, err = parse([]byte("pgbouncers:\n  - dsn: postgres://pgbouncer@127.0.0.1:6432/pgbouncer\n"), "config.yml")
	if err != nil || c.PgBouncers[0].Name != "127.0.0.1:6432/pgbouncer" {
		t.Errorf("pgbouncer only: %+v, %v", c, err)
	}
}

func TestParseDSNSources(t *testing.T) {
	isolatePGEnv(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "main.dsn"), []byte("  postgres://monitor:FileSecretPw@db1/appdb\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "empty.dsn"), []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("REPLICA_DSN", "host=db2 password=EnvSecretPw dbname=appdb")
	t.Setenv("EMPTY_DSN", "")
	t.Setenv("BAD_DSN", "postgres://u:EnvSecretPw@db/x?sslmode=bogus")
	c, err := parse([]byte(`targets:
  - name: main
    dsn_file: main.dsn
  - name: replica
    dsn_env: REPLICA_DSN
`), filepath.Join(dir, "config.yml"))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Targets[0].DSN.ConnString(); got != "postgres://monitor:FileSecretPw@db1/appdb" {
		t.Errorf("dsn_file: %q (want the trimmed content)", got)
	}
	if got := c.Targets[1].DSN.ConnString(); got != "host=db2 password=EnvSecretPw dbname=appdb" {
		t.Errorf("dsn_env: %q", got)
	}

	_, err = parse([]byte(`targets:
  - name: a
    dsn_file: missing.dsn
  - name: b
    dsn_file: empty.dsn
  - name: c
    dsn_env: UNSET_DSN_VARIABLE
  - name: d
    dsn_env: EMPTY_DSN
  - name: e
    dsn: postgres://db/x
    dsn_env: REPLICA_DSN
  - name: f
    dsn_file: /dev/zero
  - name: g
    dsn_env: BAD_DSN
`), filepath.Join(dir, "config.yml"))
	want := []string{
		fmt.Sprintf(`config.yml:3: targets[0].dsn_file="missing.dsn": open %s: no such file or directory`, filepath.Join(dir, "missing.dsn")),
		`config.yml:5: targets[1].dsn_file="empty.dsn": file is empty`,
		`config.yml:7: targets[2].dsn_env="UNSET_DSN_VARIABLE": environment variable is not set or empty`,
		`config.yml:9: targets[3].dsn_env="EMPTY_DSN": environment variable is not set or empty`,
		`config.yml:10: targets[4]: set only one of dsn, dsn_file and dsn_env, not dsn and dsn_env`,
		`config.yml:14: targets[5].dsn_file="/dev/zero": larger than 65536 bytes: not a DSN`,
		`config.yml:16: targets[6].dsn_env="BAD_DSN": invalid DSN (URL form): failed to configure TLS (sslmode is invalid)`,
	}
	checkErrorLines(t, err, filepath.Join(dir, "config.yml"), want)
}

// checkErrorLines compares the lines of err with want, where want's lines start with the
// base name of file.
func checkErrorLines(t *testing.T, err error, file string, want []string) {
	t.Helper()
	if err == nil {
		t.Fatal("no error")
	}
	got := strings.Split(strings.ReplaceAll(err.Error(), file, filepath.Base(file)), "\n")
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("error lines:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestParseErrors(t *testing.T) {
	isolatePGEnv(t)
	const target = "targets:\n  - name: main\n    dsn: postgres://monitor:S3cretMonitorPw@db1/appdb\n"
	tests := []struct {
		name, yaml string
		want       string // the whole error
	}{
		{"unknown top-level key", target + "pool:\n  - name: x\n",
			`c.yml:4: unknown key "pool" in the top level (known keys: targets, pgbouncers, pools, apps, auth_modules)`},
		{"unknown pool key", target + "pools:\n  - name: api\n    size: 3\n",
			`c.yml:6: unknown key "size" in a pool (known keys: name, target, match, pool_size, max_overflow, timeout, recycle, pre_ping, echo, instances)`},
		{"unknown match key", target + "pools:\n  - name: api\n    match:\n      app_name: api\n",
			`c.yml:7: unknown key "app_name" in match (known keys: application_name, application_name_regex, user, database, client_cidr)`},
		{"unknown target key", "targets:\n  - name: main\n    url: postgres://db1/x\n",
			"c.yml:2: targets[0].dsn: missing: set one of dsn, dsn_file or dsn_env\n" +
				"c.yml:3: unknown key \"url\" in a target (known keys: name, dsn, dsn_file, dsn_env, auth_module)"},
		{"targets not a list", "targets: main\n",
			"c.yml: nothing to watch: there are no targets and no pgbouncers\nc.yml:1: expected a list, got a string"},
		{"pool not a mapping", target + "pools:\n  - api\n",
			"c.yml:5: expected a pool: a mapping with keys name, target, match, pool_size, max_overflow, timeout, recycle, pre_ping, echo, instances, got a string"},
		{"list for a value", target + "pools:\n  - name: api\n    pool_size: [1, 2]\n",
			"c.yml:6: pools[0].pool_size: expected a single value, got a list"},
		{"syntax error", "targets: [\n", "c.yml:1: did not find expected node content"},
		{"alias cycle", "targets:\n  - name: &x [*x]\n    dsn: postgres://db1/appdb\n",
			"c.yml:2: targets[0].name: expected a single value, got a list"},
		{"alias cycle in a second target", target + "  - name: &x [*x]\n    dsn: postgres://db1/appdb\n",
			"c.yml:4: targets[1].name: expected a single value, got a list"},
		{"two documents", target + "---\npools: []\n", "c.yml: only one YAML document is allowed"},
		{"empty file", "", "c.yml: nothing to watch: there are no targets and no pgbouncers"},
		{"pool_size not a number", target + "pools:\n  - name: api\n    pool_size: ten\n", `c.yml:6: pools[0].pool_size="ten": not an integer`},
		{"negative pool_size", target + "pools:\n  - name: api\n    pool_size: -1\n", `c.yml:6: pools[0].pool_size="-1": must be >= 0`},
		{"negative max_overflow", target + "pools:\n  - name: api\n    max_overflow: -1\n",
			`c.yml:6: pools[0].max_overflow="-1": must be >= 0 (SQLAlchemy's -1, unlimited overflow, is not supported: a pool without a limit has no capacity to measure utilization against)`},
		{"pool_size 0 with overflow", target + "pools:\n  - name: api\n    pool_size: 0\n",
			`c.yml:6: pools[0].pool_size="0": pool_size 0 with max_overflow 20 is not supported: SQLAlchemy's QueuePool treats pool_size 0 as no limit and then ignores max_overflow, so the pool has no capacity; set pool_size >= 1`},
		{"bad timeout", target + "pools:\n  - name: api\n    timeout: soon\n", `c.yml:6: pools[0].timeout="soon": not a number of seconds or a duration such as 30s`},
		{"zero timeout", target + "pools:\n  - name: api\n    timeout: 0s\n", `c.yml:6: pools[0].timeout="0s": must be > 0`},
		{"bad recycle", target + "pools:\n  - name: api\n    recycle: -5\n", `c.yml:6: pools[0].recycle="-5": must be a positive number of seconds, or -1 to never recycle`},
		{"recycle 0 is not never", target + "pools:\n  - name: api\n    recycle: 0\n",
			`c.yml:6: pools[0].recycle="0": SQLAlchemy would replace the connection at every checkout; use -1 for never or a number of seconds`},
		{"recycle 0s is not never", target + "pools:\n  - name: api\n    recycle: 0s\n",
			`c.yml:6: pools[0].recycle="0s": SQLAlchemy would replace the connection at every checkout; use -1 for never or a number of seconds`},
		{"bad boolean", target + "pools:\n  - name: api\n    pre_ping: 2\n", `c.yml:6: pools[0].pre_ping="2": not a boolean (use true/false, 1/0, yes/no or on/off)`},
		{"zero instances", target + "pools:\n  - name: api\n    instances: 0\n", `c.yml:6: pools[0].instances="0": must be between 1 and 1000000`},
		{"instances not a number", target + "pools:\n  - name: api\n    instances: many\n", `c.yml:6: pools[0].instances="many": not an integer`},
		{"bad regex", target + "pools:\n  - name: api\n    match: {application_name_regex: 'api-('}\n  - name: b\n    match: {user: b}\n",
			`c.yml:6: pools[0].match.application_name_regex="api-(": not a valid RE2 regular expression: missing closing )`},
		{"other named group", target + "pools:\n  - name: api\n    match: {application_name_regex: '(?P<pod>.*)'}\n",
			`c.yml:6: pools[0].match.application_name_regex="(?P<pod>.*)": named group "pod" is not allowed: the only named group is (?P<instance>...)`},
		{"name and regex", target + "pools:\n  - name: api\n    match: {application_name: api, application_name_regex: api}\n",
			`c.yml:6: pools[0].match: application_name and application_name_regex are mutually exclusive`},
		{"bad cidr", target + "pools:\n  - name: api\n    match: {client_cidr: 10.0.0.0/33}\n",
			`c.yml:6: pools[0].match.client_cidr="10.0.0.0/33": not a CIDR such as 10.0.0.0/8 or fd00::/8, nor an IP address`},
		{"duplicate pool name", target + "pools:\n  - name: api\n    match: {user: a}\n  - name: api\n    match: {user: b}\n",
			`c.yml:7: pools[1].name="api": duplicate pool name, also used by pools[0].name (line 5)`},
		{"bad pool name", target + "pools:\n  - name: my api\n", `c.yml:5: pools[0].name="my api": must match [a-zA-Z0-9_.:/-]+`},
		{"pool name in the unmatched applications' namespace", target + "pools:\n  - name: application_name:api-0\n",
			`c.yml:5: pools[0].name="application_name:api-0": the prefix "application_name:" is reserved: backends that match no pool are reported as pool "application_name:<application_name>" (and "application_name:other"), and this pool's series would collide with theirs`},
		{"pool named application_name:other", target + "pools:\n  - name: application_name:other\n",
			`c.yml:5: pools[0].name="application_name:other": the prefix "application_name:" is reserved: backends that match no pool are reported as pool "application_name:<application_name>" (and "application_name:other"), and this pool's series would collide with theirs`},
		{"pool named like the exporter's own pool", target + "pools:\n  - name: dbpool_exporter\n",
			`c.yml:5: pools[0].name="dbpool_exporter": reserved: the exporter reports its own monitoring connections as this pool on every PostgreSQL target`},
		{"missing pool name", target + "pools:\n  - match: {user: a}\n", `c.yml:5: pools[0].name: required`},
		{"unknown target", target + "pools:\n  - name: api\n    target: mian\n", `c.yml:6: pools[0].target="mian": unknown target (targets: "main")`},
		{"target needed with several targets", target + "  - name: replica\n    dsn: postgres://db2/appdb\npools:\n  - name: api\n",
			`c.yml:7: pools[0].target: required when there are several targets ("main", "replica")`},
		{"pool without any target", "pgbouncers:\n  - dsn: postgres://pgbouncer@h:6432/pgbouncer\npools:\n  - name: api\n",
			`c.yml:4: pools[0].target: a pool needs a PostgreSQL target, and there are no targets`},
		{"duplicate target name", target + "  - name: main\n    dsn: postgres://db2/appdb\n",
			`c.yml:4: targets[1].name="main": duplicate name, also used by targets[0].name (line 2)`},
		{"pgbouncer named like a target", target + "pgbouncers:\n  - name: main\n    dsn: postgres://pgbouncer@h:6432/pgbouncer\n",
			`c.yml:5: pgbouncers[0].name="main": duplicate name, also used by targets[0].name (line 2): targets and pgbouncers share the target label`},
		{"pgbouncer before the target it collides with", "pgbouncers:\n  - name: main\n    dsn: postgres://pgbouncer@h:6432/pgbouncer\n" + target,
			`c.yml:2: pgbouncers[0].name="main": duplicate name, also used by targets[0].name (line 5): targets and pgbouncers share the target label`},
		{"duplicate pgbouncer name", "pgbouncers:\n  - name: edge\n    dsn: postgres://pgbouncer@h1:6432/pgbouncer\n  - name: edge\n    dsn: postgres://pgbouncer@h2:6432/pgbouncer\n",
			`c.yml:4: pgbouncers[1].name="edge": duplicate name, also used by pgbouncers[0].name (line 2)`},
		{"target name needed with several targets", target + "  - dsn: postgres://db2/appdb\n",
			`c.yml:4: targets[1].name: required (only a lone entry of targets may leave it out)`},
		{"missing dsn", "targets:\n  - name: main\n", `c.yml:2: targets[0].dsn: missing: set one of dsn, dsn_file or dsn_env`},
		{"bad dsn, password not shown", "targets:\n  - name: main\n    dsn: postgres://monitor:S3cret/MonitorPw@db1/appdb\n",
			`c.yml:3: targets[0].dsn: invalid DSN (URL form); details withheld because they could contain the password (percent-encode @ / ? # & : and spaces in the user name and password)`},
		{"bad pgbouncer dsn", "pgbouncers:\n  - dsn: 'host=h port=x password=S3cretMonitorPw'\n",
			`c.yml:2: pgbouncers[0].dsn: invalid DSN (key=value form): invalid port`},
		{"empty matcher next to another pool", target + "pools:\n  - name: all\n  - name: api\n    match: {user: app}\n",
			`c.yml:5: pools[0].match: empty: it would match every client backend, which is allowed only for the only pool on its target, and target "main" has 2 pools`},
		{"same matcher twice", target + "pools:\n  - name: a\n    match: {user: app}\n  - name: b\n    match: {user: app}\n",
			`c.yml:8: pools[1].match: same matcher as pools[0] (line 5) on target "main": its backends would be counted twice`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parse([]byte(tt.yaml), "c.yml")
			if err == nil {
				t.Fatalf("no error; got %+v", c)
			}
			if c != nil {
				t.Errorf("config returned along with an error")
			}
			if err.Error() != tt.want {
				t.Errorf("error:\n%v\nwant:\n%s", err, tt.want)
			}
			if strings.Contains(err.Error(), "S3cret") {
				t.Errorf("error contains a password: %v", err)
			}
		})
	}
}

// TestParseAllErrorsAtOnce: one run reports every problem, in file order.
func TestParseAllErrorsAtOnce(t *testing.T) {
	isolatePGEnv(t)
	_, err := parse([]byte(`targets:
  - name: main
    dsn: postgres://monitor:S3cretMonitorPw@db1/appdb
pools:
  - name: api
    bogus: true
    pool_size: abc
    max_overflow: -1
    match:
      application_name_regex: '('
  - name: api
    target: nowhere
    timeout: -1
    instances: 0
  - name: dbpool_exporter
    match: {user: x}
    recycle: 0
pgbouncers:
  - name: main
    dsn: postgres://pgbouncer@h:6432/pgbouncer
`), "c.yml")
	checkErrorLines(t, err, "c.yml", []string{
		`c.yml:6: unknown key "bogus" in a pool (known keys: name, target, match, pool_size, max_overflow, timeout, recycle, pre_ping, echo, instances)`,
		`c.yml:7: pools[0].pool_size="abc": not an integer`,
		`c.yml:8: pools[0].max_overflow="-1": must be >= 0 (SQLAlchemy's -1, unlimited overflow, is not supported: a pool without a limit has no capacity to measure utilization against)`,
		`c.yml:10: pools[0].match.application_name_regex="(": not a valid RE2 regular expression: missing closing )`,
		`c.yml:11: pools[1].name="api": duplicate pool name, also used by pools[0].name (line 5)`,
		`c.yml:12: pools[1].target="nowhere": unknown target (targets: "main")`,
		`c.yml:13: pools[1].timeout="-1": must be > 0`,
		`c.yml:14: pools[1].instances="0": must be between 1 and 1000000`,
		`c.yml:15: pools[2].name="dbpool_exporter": reserved: the exporter reports its own monitoring connections as this pool on every PostgreSQL target`,
		`c.yml:17: pools[2].recycle="0": SQLAlchemy would replace the connection at every checkout; use -1 for never or a number of seconds`,
		`c.yml:19: pgbouncers[0].name="main": duplicate name, also used by targets[0].name (line 2): targets and pgbouncers share the target label`,
	})
}

// parse parses a YAML config with the tuning guide's DefaultSettings.
func parse(data []byte, name string) (*Config, error) {
	return ParseWithDefaults(data, name, DefaultSettings())
}

// TestParseWithDefaults: the pool's own keys win over the defaults (the DB_* settings),
// which fill in the rest.
func TestParseWithDefaults(t *testing.T) {
	isolatePGEnv(t)
	data := []byte("targets:\n  - dsn: postgres://db1/appdb\npools:\n  - name: api\n    pool_size: 3\n")
	c, err := parse(data, "config.yml")
	if err != nil || c.Pools[0].Settings.PoolSize != 3 || c.Pools[0].Settings.MaxOverflow != 20 {
		t.Fatalf("with the default settings: %+v, %v", c, err)
	}
	c, err = ParseWithDefaults(data, "config.yml", Settings{PoolSize: 1, MaxOverflow: 1, Timeout: time.Second})
	if err != nil || c.Pools[0].Settings != (Settings{PoolSize: 3, MaxOverflow: 1, Timeout: time.Second}) {
		t.Fatalf("with other defaults: %+v, %v", c, err)
	}
}

// TestValidate covers configurations built in code, as main does from flags.
func TestValidate(t *testing.T) {
	isolatePGEnv(t)
	dsn, err := ParseDSN("postgres://monitor:S3cretMonitorPw@db1/appdb")
	if err != nil {
		t.Fatal(err)
	}
	good := func() *Config {
		return &Config{
			Targets: []Target{{Name: "main", DSN: dsn}},
			Pools:   []Pool{{Name: "api", Target: "main", Match: Matcher{ApplicationName: "api"}, Settings: DefaultSettings(), Instances: 2}},
		}
	}
	if err := good().Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	tests := []struct {
		name   string
		change func(*Config)
		want   string
	}{
		{"nothing", func(c *Config) { *c = Config{} }, "nothing to watch: there are no targets and no pgbouncers"},
		{"zero DSN", func(c *Config) { c.Targets[0].DSN = DSN{} }, "targets[0].dsn: missing: set one of dsn, dsn_file or dsn_env"},
		{"bad settings", func(c *Config) { c.Pools[0].Settings.PoolSize, c.Pools[0].Settings.Timeout = -2, 0 },
			"pools[0].pool_size=\"-2\": must be >= 0\npools[0].timeout=\"0\": must be > 0"},
		{"no instances", func(c *Config) { c.Pools[0].Instances = 0 }, `pools[0].instances="0": must be between 1 and 1000000`},
		{"unknown target", func(c *Config) { c.Pools[0].Target = "other" }, `pools[0].target="other": unknown target (targets: "main")`},
		{"empty target", func(c *Config) { c.Pools[0].Target = "" }, `pools[0].target: required when there are several targets ("main")`},
		{"regex with foreign group", func(c *Config) {
			c.Pools[0].Match = Matcher{ApplicationNameRegex: regexpMust(`(?P<pod>.*)`)}
		}, `pools[0].match.application_name_regex="(?P<pod>.*)": named group "pod" is not allowed: the only named group is (?P<instance>...)`},
		{"reserved pool names", func(c *Config) {
			p := c.Pools[0]
			p.Name, p.Match = "dbpool_exporter", Matcher{User: "x"}
			c.Pools[0].Name = "application_name:api"
			c.Pools = append(c.Pools, p)
		}, `pools[0].name="application_name:api": the prefix "application_name:" is reserved: backends that match no pool are reported as pool "application_name:<application_name>" (and "application_name:other"), and this pool's series would collide with theirs` + "\n" +
			`pools[1].name="dbpool_exporter": reserved: the exporter reports its own monitoring connections as this pool on every PostgreSQL target`},
		{"pool names that merely look reserved", func(c *Config) {
			p := c.Pools[0]
			p.Name, p.Match = "dbpool_exporter_api", Matcher{User: "x"}
			c.Pools[0].Name = "app:api"
			c.Pools = append(c.Pools, p)
		}, ""},
		{"pgbouncer named like a target", func(c *Config) { c.PgBouncers = []PgBouncer{{Name: "main", DSN: dsn}} },
			`pgbouncers[0].name="main": duplicate name, also used by targets[0].name: targets and pgbouncers share the target label`},
		{"target name with a newline", func(c *Config) { c.Targets[0].Name = "a\nb"; c.Pools[0].Target = "a\nb" },
			`targets[0].name="a\nb": must be printable text`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := good()
			tt.change(c)
			if err := c.Validate(); errString(err) != tt.want {
				t.Errorf("Validate:\n%v\nwant:\n%s", err, tt.want)
			}
		})
	}
}

// TestParseNeverShowsPasswords prints a parsed config and a failed one in every way.
func TestParseNeverShowsPasswords(t *testing.T) {
	isolatePGEnv(t)
	c, err := parse([]byte(fullConfig), "config.yml")
	if err != nil {
		t.Fatal(err)
	}
	for _, out := range []string{fmt.Sprintf("%v", c), fmt.Sprintf("%+v", c), fmt.Sprintf("%#v", c), fmt.Sprintf("%+v", *c)} {
		for _, secret := range []string{"S3cretMonitorPw", "S3cret Replica"} {
			if strings.Contains(out, secret) {
				t.Errorf("printed config contains %q: %s", secret, out)
			}
		}
	}
	_, err = parse([]byte(strings.Replace(fullConfig, "pool_size: 15", "pool_size: x", 1)+"bogus: 1\n"), "config.yml")
	if err == nil || strings.Contains(err.Error(), "S3cret") {
		t.Errorf("error = %v", err)
	}
}

func regexpMust(pattern string) *regexp.Regexp { return regexp.MustCompile(pattern) }
