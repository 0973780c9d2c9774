package poolcfg

import (
	"errors"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseEnvFile(t *testing.T) {
	tests := []struct {
		name, in string
		want     map[string]EnvValue // File is filled in by the test
	}{
		{"empty", "", map[string]EnvValue{}},
		{"seed example", "# Database connection pool configuration\nDB_POOL_SIZE=10              # Number of permanent connections (default: 10)\n\nDB_ECHO=false                # Enable SQL query logging\n",
			map[string]EnvValue{"DB_POOL_SIZE": {Value: "10", Line: 2}, "DB_ECHO": {Value: "false", Line: 4}}},
		{"export prefix", "export DB_POOL_SIZE=5\nexport\tDB_ECHO=1\nexport=x\n",
			map[string]EnvValue{"DB_POOL_SIZE": {Value: "5", Line: 1}, "DB_ECHO": {Value: "1", Line: 2}, "export": {Value: "x", Line: 3}}},
		{"empty value", "A=\nB=\n", map[string]EnvValue{"A": {Value: "", Line: 1}, "B": {Value: "", Line: 2}}},
		// python-dotenv consumes the spaces after '=', so no space is left before the '#'.
		{"value that starts with #", "A=   # not a comment\n", map[string]EnvValue{"A": {Value: "# not a comment", Line: 1}}},
		{"hash without space is data", "A=abc#def\nB=x\t# tab comment\n",
			map[string]EnvValue{"A": {Value: "abc#def", Line: 1}, "B": {Value: "x", Line: 2}}},
		{"spaces around =", "  A = some value  \n",
			map[string]EnvValue{"A": {Value: "some value", Line: 1}}},
		{"single quotes are literal", `A='x # not a comment \n $HOME'` + "\n" + `B='it\'s \\ ok'`,
			map[string]EnvValue{"A": {Value: `x # not a comment \n $HOME`, Line: 1}, "B": {Value: `it's \ ok`, Line: 2}}},
		{"double quotes with escapes", `A="line1\nline2 \"q\" \\ \t end" # comment` + "\n" + `B="\d stays"`,
			map[string]EnvValue{"A": {Value: "line1\nline2 \"q\" \\ \t end", Line: 1}, "B": {Value: `\d stays`, Line: 2}}},
		{"multi-line quoted value keeps line numbers", "A=\"first\nsecond\"\nB=2\n",
			map[string]EnvValue{"A": {Value: "first\nsecond", Line: 1}, "B": {Value: "2", Line: 3}}},
		{"crlf", "# c\r\nA=1\r\nB=\"x\"\r\n\r\nC='y' \r\n",
			map[string]EnvValue{"A": {Value: "1", Line: 2}, "B": {Value: "x", Line: 3}, "C": {Value: "y", Line: 5}}},
		{"last assignment wins", "A=1\nA=2\n", map[string]EnvValue{"A": {Value: "2", Line: 2}}},
		{"byte order mark and no final newline", "\ufeffA=1", map[string]EnvValue{"A": {Value: "1", Line: 1}}},
		{"names", "_A.b_2=x\n", map[string]EnvValue{"_A.b_2": {Value: "x", Line: 1}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseEnvFile(strings.NewReader(tt.in), "app.env")
			if err != nil {
				t.Fatalf("ParseEnvFile: %v", err)
			}
			for k, v := range tt.want {
				v.File = "app.env"
				tt.want[k] = v
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %#v\nwant %#v", got, tt.want)
			}
		})
	}
}

func TestParseEnvFileErrors(t *testing.T) {
	tests := []struct {
		name, in string
		want     []string // every line of the error, in order
	}{
		{"no =", "A=1\njust words\n", []string{"app.env:2: expected KEY=VALUE, with KEY made of letters, digits, _ and . (not starting with a digit)"}},
		{"bad name", "1A=x\n", []string{"app.env:1: expected KEY=VALUE, with KEY made of letters, digits, _ and . (not starting with a digit)"}},
		{"no name", "=x\n", []string{"app.env:1: expected KEY=VALUE, with KEY made of letters, digits, _ and . (not starting with a digit)"}},
		{"unterminated double quote", "A=1\nDB_PASSWORD=\"s3cret\nB=2\n", []string{`app.env:2: DB_PASSWORD: missing closing " quote`}},
		{"unterminated single quote", "DB_PASSWORD='s3cret", []string{`app.env:1: DB_PASSWORD: missing closing ' quote`}},
		{"text after quote", "A=\"x\" y\nB=2\n", []string{"app.env:1: A: unexpected text after the closing quote"}},
		{"all reported, lines right after a multi-line value", "bad line\nA=\"multi\nline\"\nalso bad\nB='x'z\n", []string{
			"app.env:1: expected KEY=VALUE, with KEY made of letters, digits, _ and . (not starting with a digit)",
			"app.env:4: expected KEY=VALUE, with KEY made of letters, digits, _ and . (not starting with a digit)",
			"app.env:5: B: unexpected text after the closing quote",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseEnvFile(strings.NewReader(tt.in), "app.env")
			if err == nil {
				t.Fatalf("no error, got %v", got)
			}
			if lines := strings.Split(err.Error(), "\n"); !reflect.DeepEqual(lines, tt.want) {
				t.Errorf("error lines:\n%q\nwant\n%q", lines, tt.want)
			}
			if strings.Contains(err.Error(), "s3cret") {
				t.Errorf("error quotes a value: %v", err)
			}
		})
	}
}

func TestLoadEnvFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.env")
	if err := os.WriteFile(path, []byte("DB_POOL_SIZE=7\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := LoadEnvFile(path)
	if err != nil || got["DB_POOL_SIZE"] != (EnvValue{Value: "7", Line: 1, File: path}) {
		t.Errorf("LoadEnvFile = %v, %v", got, err)
	}
	if _, err := LoadEnvFile(filepath.Join(t.TempDir(), "missing.env")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: err = %v, want ErrNotExist", err)
	}
}

func mapLookup(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestEnv(t *testing.T) {
	file := map[string]EnvValue{
		"DB_POOL_SIZE": {Value: "5", Line: 3, File: "app.env"},
		"DB_ECHO":      {Value: "true", Line: 4, File: "app.env"},
	}
	osEnv := mapLookup(map[string]string{"DB_POOL_SIZE": "8", "DB_MAX_OVERFLOW": "9"})
	for _, tt := range []struct {
		name, key, value, where string
		env                     Env
		ok                      bool
	}{
		{"the process environment wins over the file", "DB_POOL_SIZE", "8", "", NewEnv(file, osEnv), true},
		{"from the file", "DB_ECHO", "true", "app.env:4", NewEnv(file, osEnv), true},
		{"from the process environment", "DB_MAX_OVERFLOW", "9", "", NewEnv(file, osEnv), true},
		{"unset", "DB_POOL_TIMEOUT", "", "", NewEnv(file, osEnv), false},
		{"nil osLookup", "DB_POOL_SIZE", "5", "app.env:3", NewEnv(file, nil), true},
		{"nil file", "DB_ECHO", "", "", NewEnv(nil, osEnv), false},
		{"zero Env", "DB_POOL_SIZE", "", "", Env{}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			v, where, ok := tt.env.Lookup(tt.key)
			if v != tt.value || where != tt.where || ok != tt.ok {
				t.Errorf("Lookup(%s) = %q, %q, %v; want %q, %q, %v", tt.key, v, where, ok, tt.value, tt.where, tt.ok)
			}
		})
	}
	t.Setenv("DB_ECHO", "off")
	if v, where, ok := NewEnv(file, os.LookupEnv).Lookup("DB_ECHO"); v != "off" || where != "" || !ok {
		t.Errorf("os.LookupEnv: DB_ECHO = %q, where %q, %v; want the process environment's", v, where, ok)
	}
}

func TestSettingsFromEnv(t *testing.T) {
	def := DefaultSettings()
	with := func(f func(*Settings)) Settings { s := def; f(&s); return s }
	tests := []struct {
		name string
		env  map[string]string
		want Settings
	}{
		{"nothing set keeps the base", nil, def},
		{"seed example, small application", map[string]string{"DB_POOL_SIZE": "5", "DB_MAX_OVERFLOW": "10",
			"DB_POOL_TIMEOUT": "30", "DB_POOL_RECYCLE": "3600", "DB_POOL_PRE_PING": "true", "DB_ECHO": "false"},
			with(func(s *Settings) { s.PoolSize, s.MaxOverflow = 5, 10 })},
		{"decimal seconds, booleans in other spellings", map[string]string{"DB_POOL_TIMEOUT": "2.5", "DB_POOL_RECYCLE": "1800",
			"DB_POOL_PRE_PING": "OFF", "DB_ECHO": "Yes"},
			with(func(s *Settings) {
				s.Timeout, s.Recycle, s.PrePing, s.Echo = 2500*time.Millisecond, 30*time.Minute, false, true
			})},
		{"durations", map[string]string{"DB_POOL_TIMEOUT": "1m30s", "DB_POOL_RECYCLE": "2h"},
			with(func(s *Settings) { s.Timeout, s.Recycle = 90*time.Second, 2*time.Hour })},
		{"recycle -1 means never", map[string]string{"DB_POOL_RECYCLE": "-1"}, with(func(s *Settings) { s.Recycle = 0 })},
		{"recycle -1.0 means never too", map[string]string{"DB_POOL_RECYCLE": " -1.0 "}, with(func(s *Settings) { s.Recycle = 0 })},
		{"surrounding spaces", map[string]string{"DB_POOL_SIZE": " 7 ", "DB_ECHO": " 1"},
			with(func(s *Settings) { s.PoolSize, s.Echo = 7, true })},
		{"no overflow", map[string]string{"DB_POOL_SIZE": "1", "DB_MAX_OVERFLOW": "0"},
			with(func(s *Settings) { s.PoolSize, s.MaxOverflow = 1, 0 })},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := SettingsFromEnv(NewEnv(nil, mapLookup(tt.env)), def)
			if err != nil || got != tt.want {
				t.Errorf("got %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
	if got, err := SettingsFromEnv(Env{}, def); err != nil || got != def {
		t.Errorf("zero Env: %+v, %v", got, err)
	}
}

func TestSettingsFromEnvErrors(t *testing.T) {
	tests := []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"DB_POOL_SIZE": "abc"}, `DB_POOL_SIZE="abc": not an integer`},
		{map[string]string{"DB_POOL_SIZE": "1.5"}, `DB_POOL_SIZE="1.5": not an integer`},
		{map[string]string{"DB_POOL_SIZE": ""}, `DB_POOL_SIZE="": not an integer`},
		{map[string]string{"DB_POOL_SIZE": "-1"}, `DB_POOL_SIZE="-1": must be >= 0`},
		{map[string]string{"DB_POOL_SIZE": "99999999999999999999"}, `DB_POOL_SIZE="99999999999999999999": out of range`},
		{map[string]string{"DB_POOL_SIZE": "300000"}, `DB_POOL_SIZE="300000": must be <= 262143, PostgreSQL's limit on connections`},
		{map[string]string{"DB_MAX_OVERFLOW": "-1"}, `DB_MAX_OVERFLOW="-1": must be >= 0 (SQLAlchemy's -1, unlimited overflow, is not supported: a pool without a limit has no capacity to measure utilization against)`},
		{map[string]string{"DB_MAX_OVERFLOW": "ten"}, `DB_MAX_OVERFLOW="ten": not an integer`},
		{map[string]string{"DB_POOL_SIZE": "0"}, `DB_POOL_SIZE="0": pool_size 0 with max_overflow 20 is not supported: SQLAlchemy's QueuePool treats pool_size 0 as no limit and then ignores max_overflow, so the pool has no capacity; set pool_size >= 1`},
		{map[string]string{"DB_POOL_SIZE": "0", "DB_MAX_OVERFLOW": "0"}, `DB_POOL_SIZE="0": pool_size + max_overflow must be >= 1: this pool could not open any connection`},
		{map[string]string{"DB_POOL_TIMEOUT": "0"}, `DB_POOL_TIMEOUT="0": must be > 0`},
		{map[string]string{"DB_POOL_TIMEOUT": "-5"}, `DB_POOL_TIMEOUT="-5": must be > 0`},
		{map[string]string{"DB_POOL_TIMEOUT": "-5s"}, `DB_POOL_TIMEOUT="-5s": must be > 0`},
		{map[string]string{"DB_POOL_TIMEOUT": "soon"}, `DB_POOL_TIMEOUT="soon": not a number of seconds or a duration such as 30s`},
		{map[string]string{"DB_POOL_TIMEOUT": "NaN"}, `DB_POOL_TIMEOUT="NaN": not a number of seconds or a duration such as 30s`},
		{map[string]string{"DB_POOL_TIMEOUT": "1e300"}, `DB_POOL_TIMEOUT="1e300": out of range`},
		{map[string]string{"DB_POOL_TIMEOUT": "1e400"}, `DB_POOL_TIMEOUT="1e400": out of range`},
		{map[string]string{"DB_POOL_RECYCLE": "-2"}, `DB_POOL_RECYCLE="-2": must be a positive number of seconds, or -1 to never recycle`},
		{map[string]string{"DB_POOL_RECYCLE": "0"}, `DB_POOL_RECYCLE="0": SQLAlchemy would replace the connection at every checkout; use -1 for never or a number of seconds`},
		{map[string]string{"DB_POOL_RECYCLE": "0s"}, `DB_POOL_RECYCLE="0s": SQLAlchemy would replace the connection at every checkout; use -1 for never or a number of seconds`},
		{map[string]string{"DB_POOL_RECYCLE": "-0"}, `DB_POOL_RECYCLE="-0": SQLAlchemy would replace the connection at every checkout; use -1 for never or a number of seconds`},
		{map[string]string{"DB_POOL_RECYCLE": "1e-12"}, `DB_POOL_RECYCLE="1e-12": SQLAlchemy would replace the connection at every checkout; use -1 for never or a number of seconds`},
		{map[string]string{"DB_POOL_RECYCLE": "1 hour"}, `DB_POOL_RECYCLE="1 hour": not a number of seconds or a duration such as 30s`},
		{map[string]string{"DB_POOL_PRE_PING": "maybe"}, `DB_POOL_PRE_PING="maybe": not a boolean (use true/false, 1/0, yes/no or on/off)`},
		{map[string]string{"DB_ECHO": ""}, `DB_ECHO="": not a boolean (use true/false, 1/0, yes/no or on/off)`},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			got, err := SettingsFromEnv(NewEnv(nil, mapLookup(tt.env)), DefaultSettings())
			if err == nil || err.Error() != tt.want {
				t.Errorf("error = %v\nwant    %s", err, tt.want)
			}
			if got != DefaultSettings() {
				t.Errorf("on error got %+v, want the base", got)
			}
		})
	}
}

// TestSettingsFromEnvFile is the sidecar setup: the app's .env file plus the environment.
// Every problem comes back at once, and the ones from the file name file and line.
func TestSettingsFromEnvFile(t *testing.T) {
	file, err := ParseEnvFile(strings.NewReader("# app settings\nDB_POOL_SIZE=abc\nDB_MAX_OVERFLOW=-1\nDB_POOL_TIMEOUT=0\nDB_ECHO=true\nDB_POOL_PRE_PING=sometimes\n"), "app.env")
	if err != nil {
		t.Fatal(err)
	}
	osEnv := mapLookup(map[string]string{"DB_POOL_RECYCLE": "-7", "DB_POOL_PRE_PING": "no"})
	_, err = SettingsFromEnv(NewEnv(file, osEnv), DefaultSettings())
	want := []string{
		`app.env:2: DB_POOL_SIZE="abc": not an integer`,
		`app.env:3: DB_MAX_OVERFLOW="-1": must be >= 0 (SQLAlchemy's -1, unlimited overflow, is not supported: a pool without a limit has no capacity to measure utilization against)`,
		`app.env:4: DB_POOL_TIMEOUT="0": must be > 0`,
		`DB_POOL_RECYCLE="-7": must be a positive number of seconds, or -1 to never recycle`,
	}
	if err == nil || !reflect.DeepEqual(strings.Split(err.Error(), "\n"), want) {
		t.Errorf("error:\n%v\nwant:\n%s", err, strings.Join(want, "\n"))
	}

	// Valid values: the environment's DB_POOL_PRE_PING=no overrides the file's "sometimes".
	file["DB_POOL_SIZE"] = EnvValue{Value: "4", Line: 2, File: "app.env"}
	file["DB_MAX_OVERFLOW"] = EnvValue{Value: "8", Line: 3, File: "app.env"}
	file["DB_POOL_TIMEOUT"] = EnvValue{Value: "10", Line: 4, File: "app.env"}
	got, err := SettingsFromEnv(NewEnv(maps.Clone(file), mapLookup(map[string]string{"DB_POOL_PRE_PING": "no"})), DefaultSettings())
	want2 := Settings{PoolSize: 4, MaxOverflow: 8, Timeout: 10 * time.Second, Recycle: time.Hour, PrePing: false, Echo: true}
	if err != nil || got != want2 {
		t.Errorf("got %+v, %v; want %+v", got, err, want2)
	}
}
