package e2e

import (
	"context"
	"fmt"
	"html"
	"io"
	"net/http"
	"net/url"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dbpool/dbpool_exporter/tools/pgtest"
	"github.com/dbpool/dbpool_exporter/tools/testbin"
)

// The exporter binary with monitoring passwords chosen to be substrings of what it rightly
// prints: the user name, the host, the database, the words of PostgreSQL's and Go's error
// messages, a single letter; and passwords full of URL and quoting syntax. Each role is real
// (scram-sha-256 over TCP). Against a running, a refusing (wrong password, then a connection
// limit) and a stopped server, every answer (/, /metrics, /probe, /pools, /api/v1/pools, a
// failed /-/reload), the log, `advise` and `--config.check` must print the password nowhere
// and leave everything else intact: masking by substring fails exactly these cases.

// secretCase is one monitoring role and how its DSN is written.
type secretCase struct {
	role, password string
	keyValue       bool // key=value DSN with a quoted password, else a URL with the password percent-encoded
	// legit are the words in which the password rightly appears in the output (a user name,
	// an error word, the host): the test removes them before it looks for the password. A
	// password that is such a word cannot be looked for; that it left the word intact is.
	legit []string
}

var secretCases = []secretCase{
	// The issue's case: the password is part of the user name and of "monitoring".
	{role: "dbpool_monitor", password: "monitor", legit: []string{"dbpool_monitor", "monitoring", "pg_monitor"}},
	// Words of the error messages.
	{role: "dbpool_refused", password: "refused", legit: []string{"refused"}},
	{role: "dbpool_conn", password: "connection", legit: []string{"connection"}},
	{role: "dbpool_failed", password: "failed", legit: []string{"failed"}},
	{role: "dbpool_pw", password: "password", keyValue: true, legit: []string{"password"}},
	// The host, and the database.
	{role: "dbpool_host", password: "127.0.0.1", legit: []string{"127.0.0.1"}},
	{role: "dbpool_db", password: "app", legit: []string{"app"}},
	// One character.
	{role: "dbpool_one", password: "o", legit: []string{"o"}},
	// Syntax of URLs and key=value strings, in both forms; distinctive, so looked for as is.
	{role: "dbpool_url_syntax", password: `p@ss:w/rd?#%' x&y=z`},
	{role: "dbpool_kv_syntax", password: `it's a p@ss=w\rd`, keyValue: true},
}

// secretDatabase is the watched database, as in the issue.
const secretDatabase = "app"

func (c secretCase) dsn(pg *pgtest.Postgres) string {
	if c.keyValue {
		pw := strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(c.password)
		return fmt.Sprintf("host=%s port=%d user=%s password='%s' dbname=%s sslmode=disable", pg.Host, pg.Port, c.role, pw, secretDatabase)
	}
	return fmt.Sprintf("postgres://%s:%s@%s:%d/%s?sslmode=disable", c.role, percentEncode(c.password), pg.Host, pg.Port, secretDatabase)
}

// redactedDSN is the DSN as the exporter must show it: the password field replaced.
func (c secretCase) redactedDSN(pg *pgtest.Postgres) string {
	if c.keyValue {
		return fmt.Sprintf("host=%s port=%d user=%s password='xxxxx' dbname=%s sslmode=disable", pg.Host, pg.Port, c.role, secretDatabase)
	}
	return fmt.Sprintf("postgres://%s:xxxxx@%s:%d/%s?sslmode=disable", c.role, pg.Host, pg.Port, secretDatabase)
}

// The app endpoint's basic-auth password is an error word too: its endpoint is down, so its
// error says "connection refused".
const (
	appSecretUser     = "scraper"
	appSecretPassword = "refused"
)

func secretsConfig(pg *pgtest.Postgres, appURL string) string {
	var b strings.Builder
	b.WriteString("targets:\n")
	for _, c := range secretCases {
		fmt.Fprintf(&b, "  - name: %s\n    dsn: %q\n", c.role, c.dsn(pg))
	}
	b.WriteString("pools:\n")
	for _, c := range secretCases {
		fmt.Fprintf(&b, "  - {name: api_%s, target: %s, match: {application_name: api}}\n", c.role, c.role)
	}
	fmt.Fprintf(&b, "apps:\n  - {name: api, url: %q, pool: api_%s}\n", appURL, secretCases[0].role)
	return b.String()
}

// secretOutputs gathers what the exporter printed, so that each phase can check all of it.
type secretOutputs struct {
	t    *testing.T
	base string
	exp  *process
	seen []string // every answer and every advise or --config.check output
}

func (o *secretOutputs) get(path string) (int, string) {
	o.t.Helper()
	code, body := testbin.Get(o.t, o.base+path)
	o.seen = append(o.seen, body)
	return code, body
}

// visit fetches every page that shows targets, pools or their state.
func (o *secretOutputs) visit() {
	o.t.Helper()
	paths := []string{"/", "/metrics", "/pools", "/api/v1/pools"}
	for _, c := range secretCases {
		paths = append(paths, "/probe?target="+url.QueryEscape(c.role))
	}
	for _, p := range paths {
		if code, body := o.get(p); code != http.StatusOK {
			o.t.Fatalf("GET %s: %d %s", p, code, body)
		}
	}
}

// run runs the binary once (advise, --config.check) and keeps its output.
func (o *secretOutputs) run(dir string, args ...string) (int, string) {
	o.t.Helper()
	cmd := exec.Command(testbin.Exporter(o.t), args...)
	cmd.Dir = dir
	cmd.Env = []string{"HOME=" + dir, "LC_ALL=C"}
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		o.t.Fatal(err)
	}
	o.seen = append(o.seen, string(out))
	return code, string(out)
}

// stray finds the mask where it replaces something that is not a password field of a shown
// DSN or URL: the damage that substring masking does.
var maskInField = regexp.MustCompile(`:xxxxx@|password='xxxxx'|password=&#39;xxxxx&#39;|password=xxxxx`)

// check asserts, over everything printed so far and the log: no password, no stray mask.
func (o *secretOutputs) check(phase string) {
	o.t.Helper()
	texts := append([]string{o.exp.Output()}, o.seen...)
	for i, text := range texts {
		what := fmt.Sprintf("%s: output %d", phase, i)
		if i == 0 {
			what = phase + ": the log"
		}
		if s := maskInField.ReplaceAllString(text, ""); strings.Contains(s, "xxxxx") {
			i := strings.Index(s, "xxxxx")
			o.t.Errorf("%s: xxxxx outside a password field: ...%s...", what, s[max(0, i-80):min(len(s), i+80)])
		}
		for _, c := range append(secretCases, secretCase{password: appSecretPassword, legit: []string{"refused"}}) {
			rest := text
			for _, w := range c.legit {
				rest = strings.ReplaceAll(rest, w, "")
			}
			for _, form := range slices.Compact([]string{c.password, percentEncode(c.password), url.QueryEscape(c.password)}) {
				if i := strings.Index(rest, form); i >= 0 {
					o.t.Errorf("%s: contains the password %q of %s: ...%s...", what, form, c.role, rest[max(0, i-80):min(len(rest), i+80)])
				}
			}
		}
	}
}

// logLine waits for a log line of the target's collector that contains every one of want.
func (o *secretOutputs) logLine(phase, target, collector string, want ...string) string {
	o.t.Helper()
	var line string
	waitFor(o.t, fmt.Sprintf("%s: a log line of %s/%s with %q", phase, target, collector, want), func() {}, func() string {
		o.get("/probe?target=" + url.QueryEscape(target))
		for _, l := range strings.Split(o.exp.Output(), "\n") {
			if !strings.Contains(l, "target="+target+" ") || !strings.Contains(l, "collector="+collector+" ") {
				continue
			}
			ok := true
			for _, w := range want {
				ok = ok && strings.Contains(l, w)
			}
			if ok {
				line = l
				return ""
			}
		}
		return "no such line yet; the log ends:\n" + o.exp.Tail(5)
	})
	return line
}

func TestSecretsNeverLeak(t *testing.T) {
	t.Parallel()
	pg := pgtest.StartT(t, pgtest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := pg.Exec(ctx, "CREATE DATABASE "+secretDatabase); err != nil {
		t.Fatal(err)
	}
	for _, c := range secretCases {
		if err := pg.CreateRole(c.role, c.password, false, "pg_monitor"); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	appURL := fmt.Sprintf("http://%s:%s@%s/dbpool", appSecretUser, appSecretPassword, testbin.FreeAddr(t)) // nothing listens
	cfgFile := filepath.Join(dir, "dbpool.yml")
	good := secretsConfig(pg, appURL)
	writeFile(t, cfgFile, good)
	exp, addr := startServer(t, dir, "exporter", testbin.Exporter(t), nil, "/-/healthy", func(addr string) []string {
		return []string{"--web.listen-address=" + addr, "--config.file=" + cfgFile, "--log.level=debug", "--health.sample-interval=0"}
	})
	o := &secretOutputs{t: t, base: "http://" + addr, exp: exp}
	hostPort := fmt.Sprintf("%s:%d", pg.Host, pg.Port)

	// Running: every role logs in; the landing page shows each DSN with its password field
	// replaced and nothing else changed.
	o.visit()
	_, landing := o.get("/")
	for _, c := range secretCases {
		if want := html.EscapeString(c.redactedDSN(pg)); !strings.Contains(landing, want) {
			t.Errorf("the landing page does not show %s", want)
		}
		_, probe := o.get("/probe?target=" + url.QueryEscape(c.role))
		if !strings.Contains(probe, fmt.Sprintf("dbpool_probe_connect_success{target=%q} 1", c.role)) {
			t.Errorf("running: %s cannot log in:\n%s", c.role, probe)
		}
	}
	if want := html.EscapeString(fmt.Sprintf("http://%s:xxxxx@", appSecretUser)); !strings.Contains(landing, want) {
		t.Errorf("the landing page does not show the app URL as %s...", want)
	}
	appLine := o.logLine("running", secretCases[0].role, "app", `msg="app endpoint failed"`, " app=api ", "GET http://"+appSecretUser+":xxxxx@", "connect: connection refused")
	code, out := o.run(dir, "advise", "--config.file="+cfgFile, "--advise.duration=0")
	if code == 1 || !strings.Contains(out, "summary:") {
		t.Errorf("advise while running: exit %d:\n%s", code, out)
	}
	code, out = o.run(dir, "--config.file="+cfgFile, "--config.check")
	if code != 0 || !strings.Contains(out, "configuration OK") {
		t.Errorf("--config.check: exit %d:\n%s", code, out)
	}
	o.check("running")

	// A configuration that fails: --config.check and /-/reload name the setting and show the
	// DSN's problem, and the running configuration stays.
	bad := strings.Replace(good, "sslmode=disable", "sslmode=bogus", 1)
	badFile := filepath.Join(dir, "bad.yml")
	writeFile(t, badFile, bad)
	code, out = o.run(dir, "--config.file="+badFile, "--config.check")
	if code != 1 || !strings.Contains(out, "targets[0].dsn") || !strings.Contains(out, "sslmode is invalid") {
		t.Errorf("--config.check of a bad DSN: exit %d:\n%s", code, out)
	}
	writeFile(t, cfgFile, bad)
	resp, err := http.Post(o.base+"/-/reload", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	o.seen = append(o.seen, string(body))
	if resp.StatusCode != http.StatusInternalServerError || !strings.Contains(string(body), "sslmode is invalid") {
		t.Errorf("reload of a bad DSN: %d %s", resp.StatusCode, body)
	}
	writeFile(t, cfgFile, good)
	o.check("bad configuration")

	// Refusing: the server rejects each role's password, then its logins over the limit. The
	// monitoring connection stays up; the probe's fresh login is refused.
	var alter strings.Builder
	for _, c := range secretCases {
		fmt.Fprintf(&alter, "ALTER ROLE %s PASSWORD 'changed-%s';\n", c.role, c.role)
	}
	if err := pg.Exec(ctx, alter.String()); err != nil {
		t.Fatal(err)
	}
	var lines []string // wrong password, connection limit, stopped (activity and probe), in secretCases order
	for _, c := range secretCases {
		lines = append(lines, o.logLine("wrong password", c.role, "probe",
			fmt.Sprintf("failed to connect to user=%s database=%s: ", c.role, secretDatabase), hostPort,
			fmt.Sprintf(`password authentication failed for user \"%s\"`, c.role), "SQLSTATE 28P01"))
	}
	alter.Reset()
	for _, c := range secretCases {
		fmt.Fprintf(&alter, "ALTER ROLE %s PASSWORD %s CONNECTION LIMIT 0;\n", c.role, quoteSQL(c.password))
	}
	if err := pg.Exec(ctx, alter.String()); err != nil {
		t.Fatal(err)
	}
	for _, c := range secretCases {
		lines = append(lines, o.logLine("connection limit", c.role, "probe",
			fmt.Sprintf("failed to connect to user=%s database=%s: ", c.role, secretDatabase), hostPort,
			fmt.Sprintf(`too many connections for role \"%s\"`, c.role), "SQLSTATE 53300"))
	}
	o.visit()
	o.check("refusing")

	// Stopped: the monitoring connection and the probe both fail with the dial error.
	if err := pg.Stop(); err != nil {
		t.Fatal(err)
	}
	for _, c := range secretCases {
		for _, collector := range []string{"activity", "probe"} {
			lines = append(lines, o.logLine("stopped", c.role, collector,
				fmt.Sprintf("failed to connect to user=%s database=%s: ", c.role, secretDatabase),
				hostPort+" ("+pg.Host+"): dial error: dial tcp "+hostPort+": connect: connection refused"))
		}
	}
	issueLine := lines[2*len(secretCases)] // dbpool_monitor's monitoring connection
	o.visit()
	code, out = o.run(dir, "advise", "--config.file="+cfgFile, "--advise.duration=0")
	if code != 1 || !strings.Contains(out, "unreachable for the whole run") ||
		!strings.Contains(out, "failed to connect to user=dbpool_monitor database=app: ") || !strings.Contains(out, "connection refused") {
		t.Errorf("advise while stopped: exit %d:\n%s", code, out)
	}
	o.check("stopped")
	t.Logf("the issue's line now reads:\n%s", issueLine)
	t.Logf("the app endpoint's:\n%s", appLine)
}

// percentEncode escapes every byte but letters and digits, as libpq reads them back.
func percentEncode(s string) string {
	var b strings.Builder
	for i := range len(s) {
		if c := s[i]; 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

func quoteSQL(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
