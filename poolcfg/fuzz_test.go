package poolcfg

import (
	"fmt"
	"maps"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

// unsafeInput reports inputs that could make a fuzz run read devices (sslrootcert=/dev/zero)
// or arbitrary files instead of testing the parser.
func unsafeInput(s string) bool {
	for _, bad := range []string{"/dev/", "/proc/", "/sys/", "dsn_file"} {
		if strings.Contains(s, bad) {
			return true
		}
	}
	return false
}

var errLineRe = regexp.MustCompile(`^fuzz\.env:(\d+): `)

func FuzzParseEnvFile(f *testing.F) {
	for _, seed := range []string{
		"DB_POOL_SIZE=10 # comment\nexport DB_ECHO=false\n",
		"A='x\\'y'\nB=\"a\\nb\\\"c\"\r\nC=\n# c\n\n",
		"A=\"multi\nline\" # c\nB=2",
		"bad\nA=\"open\n",
		"\ufeffA=1\nA=2",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data string) {
		got, err := ParseEnvFile(strings.NewReader(data), "fuzz.env")
		lines := strings.Count(data, "\n") + 1
		if err != nil {
			if got != nil {
				t.Errorf("map returned with an error")
			}
			for _, msg := range strings.Split(err.Error(), "\n") {
				m := errLineRe.FindStringSubmatch(msg)
				if m == nil {
					t.Fatalf("error line %q does not start with fuzz.env:LINE:", msg)
				}
				if n, _ := strconv.Atoi(m[1]); n < 1 || n > lines {
					t.Errorf("error line %d outside 1..%d", n, lines)
				}
			}
			return
		}
		keys := slices.Sorted(maps.Keys(got))
		var b strings.Builder
		for _, k := range keys {
			v := got[k]
			if v.Line < 1 || v.Line > lines || v.File != "fuzz.env" {
				t.Errorf("%s: Line %d (of %d) File %q", k, v.Line, lines, v.File)
			}
			for i := range len(k) {
				if !isKeyByte(k[i], i == 0) {
					t.Fatalf("invalid key %q", k)
				}
			}
			fmt.Fprintf(&b, "%s=\"%s\"\n", k, strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`, "\r", `\r`).Replace(v.Value))
		}
		// Writing every value back double-quoted and reading it again gives the same values.
		again, err := ParseEnvFile(strings.NewReader(b.String()), "again.env")
		if err != nil {
			t.Fatalf("re-parse of %q: %v", b.String(), err)
		}
		for i, k := range keys {
			if again[k].Value != got[k].Value || again[k].Line != i+1 {
				t.Errorf("%s: re-parsed %q line %d, want %q line %d", k, again[k].Value, again[k].Line, got[k].Value, i+1)
			}
		}
	})
}

func FuzzParse(f *testing.F) {
	isolatePGEnv(f)
	for _, seed := range []string{
		fullConfig,
		"targets:\n  - dsn: postgres://u:Pw123456@db/appdb\npools:\n  - name: all\n",
		"pgbouncers:\n  - name: edge\n    dsn: postgres://pgbouncer@127.0.0.1:6432/pgbouncer\n",
		"targets:\n  - name: a\n    dsn_env: FUZZ_DSN\npools:\n  - name: p\n    target: a\n    match: {user: u, client_cidr: 10.0.0.1}\n    instances: 2\n    recycle: -1\n",
		"targets: [{name: a, dsn: 'host=h password=Pw123456'}]\npools: [{name: x, match: {application_name_regex: 'a(?P<instance>.)'}, pool_size: 0}]\n",
		"pools:\n  - name: api\n    bogus: 1\n",
		"targets: [{dsn: 'postgres://m@db/app'}]\npools: [{name: api}]\napps:\n  - {name: a, url: 'dns+https://u:Pw123456@api.svc:9931/dbpool'}\n  - {name: b, file_sd: sd/api.json, url: 'http://u:Pw654321@/dbpool'}\n  - {name: c, file_sd: t.yml}\n",
		"a: &x [1]\nb: *x\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if unsafeInput(string(data)) {
			t.Skip()
		}
		c, err := parse(data, "fuzz.yml")
		if err != nil {
			if c != nil {
				t.Errorf("config returned with an error")
			}
			if !strings.HasPrefix(err.Error(), "fuzz.yml") {
				t.Errorf("error %q does not start with the file name", err)
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("Parse accepted what Validate rejects: %v", err)
		}
		targets := map[string]bool{}
		for _, tg := range c.Targets {
			targets[tg.Name] = true
		}
		for _, p := range c.Pools {
			if !targets[p.Target] || p.Instances < 1 || p.Settings.Capacity() < 1 || p.Name == "" ||
				strings.HasPrefix(p.Name, UnmatchedPoolPrefix) || p.Name == "dbpool_exporter" {
				t.Errorf("invalid pool accepted: %+v", p)
			}
		}
		conns := append([]Target(nil), c.Targets...)
		for _, b := range c.PgBouncers {
			conns = append(conns, Target(b))
		}
		labels := map[string]bool{} // targets and pgbouncers share the target label
		for _, conn := range conns {
			if labels[conn.Name] {
				t.Errorf("target label %q accepted twice", conn.Name)
			}
			labels[conn.Name] = true
			cfg, err := pgconn.ParseConfig(conn.DSN.ConnString())
			if err != nil {
				t.Fatalf("accepted DSN does not parse: %v", err)
			}
			if pw := cfg.Password; distinctive(pw, string(data)) {
				if out := fmt.Sprintf("%v %+v %#v", conn.DSN, conn, conn); strings.Contains(out, pw) {
					t.Errorf("printed target %q contains its password %q", out, pw)
				}
			}
		}
		for _, a := range c.Apps {
			u, err := url.Parse(a.URL.Secret())
			if err != nil || (a.FileSD == "" && u.Host == "") {
				t.Fatalf("accepted app URL %s does not parse: %v", a.URL, err)
			}
			if pw, _ := u.User.Password(); distinctive(pw, string(data)) {
				if out := fmt.Sprintf("%v %+v %#v %s", a.URL, a, a, a.Describe()); strings.Contains(out, pw) {
					t.Errorf("printed app %q contains its password %q", out, pw)
				}
			}
		}
	})
}

// distinctive reports whether secret is long (not counting the spaces around it, which the
// URL form drops: "postgres://u:   @h" has no password), appears at most once in the input,
// and has no 'x' (the mask is made of x, so a secret without one cannot be formed by the
// mask and its neighbours): then any copy of it in an output is a leak.
func distinctive(secret, input string) bool {
	return len(strings.Trim(secret, " ")) >= 8 && !strings.Contains(secret, "x") && strings.Count(input, secret) <= 1
}

func FuzzParseDSN(f *testing.F) {
	isolatePGEnv(f)
	for _, seed := range []struct{ raw, secret string }{
		{"postgres://app:s3cretpw@db:5432/appdb?sslmode=disable", "S3cretPassw0rd"},
		{"postgresql://db/appdb?user=app&password=pw&sslpassword=k", "with space and 'quote'"},
		{"host=db password='a b\\'c' dbname=appdb", "p@ss/w:rd?&="},
		{"postgres://app:p%40ss@[::1]:5432,h2:5433/appdb", "back\\slash%zz"},
		{"password= host=x", "12345678"},
		{"postgres://a@u:sec:ret@h/db", "pass%77ord"},
	} {
		f.Add(seed.raw, seed.secret)
	}
	f.Fuzz(func(t *testing.T, raw, secret string) {
		if unsafeInput(raw + secret) {
			t.Skip()
		}
		// Any input: no panic; accepted DSNs keep the input for connecting and have a stable
		// redaction; errors are this package's own.
		d, err := ParseDSN(raw)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "empty DSN") && !strings.HasPrefix(err.Error(), "invalid DSN") {
				t.Errorf("unexpected error form: %v", err)
			}
		} else {
			if d.ConnString() != raw || d.IsZero() || d.DefaultName() == "" {
				t.Errorf("ConnString %q IsZero %v DefaultName %q", d.ConnString(), d.IsZero(), d.DefaultName())
			}
			again, err := ParseDSN(d.String())
			if err != nil || again.String() != d.String() {
				t.Errorf("redacted form %q: re-parsed to %q, %v", d.String(), again.String(), err)
			}
		}

		// A secret placed where a password goes, correctly escaped or not: it never shows in
		// an error, nor in String() when pgconn takes it as the password. (Unescaped, it may
		// not be one: in "?password=&a=b" the password is empty and a=b another parameter.)
		encoded := pctEncode(secret)
		quoted := strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(secret)
		for _, tmpl := range []string{
			"postgres://app:%s@db:5432/appdb",
			"postgres://db/appdb?user=app&password=%s&sslmode=disable",
			"host=db user=app password='%s' dbname=appdb",
		} {
			for _, s := range []string{fmt.Sprintf(tmpl, pickEncoding(tmpl, encoded, quoted)), fmt.Sprintf(tmpl, secret)} {
				d, err := ParseDSN(s)
				if !distinctive(secret, s) || strings.Contains(fmt.Sprintf(tmpl, ""), secret) {
					continue
				}
				if err != nil && strings.Contains(err.Error(), secret) {
					t.Errorf("ParseDSN(%q) error contains the secret: %v", s, err)
				}
				if cfg, _ := pgconn.ParseConfig(s); err == nil && cfg.Password == secret && strings.Contains(d.String(), secret) {
					t.Errorf("ParseDSN(%q).String() = %q contains the secret", s, d.String())
				}
			}
			// Correctly escaped, the redacted form does not depend on the password.
			ds, err1 := ParseDSN(fmt.Sprintf(tmpl, pickEncoding(tmpl, encoded, quoted)))
			dp, err2 := ParseDSN(fmt.Sprintf(tmpl, "p"))
			if err1 == nil && err2 == nil && secret != "" && ds.String() != dp.String() {
				t.Errorf("redaction depends on the password: %q vs %q", ds.String(), dp.String())
			}
		}
	})
}

// pickEncoding returns the secret escaped for the template's form.
func pickEncoding(tmpl, encoded, quoted string) string {
	if isURL(tmpl) {
		return encoded
	}
	return quoted
}

func pctEncode(s string) string {
	var b strings.Builder
	for i := range len(s) {
		fmt.Fprintf(&b, "%%%02X", s[i])
	}
	return b.String()
}
