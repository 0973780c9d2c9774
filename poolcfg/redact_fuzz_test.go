package poolcfg

import (
	"errors"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

// redactionParts are the non-secret parts of a connection string or app URL.
type redactionParts struct{ user, host, db, param string }

// redactionForm writes the parts and a password as one kind of connection string or app
// URL: the password escaped for its form, or written as is (then it may not be one field).
// Escaping leaves the mask as it is, so build(parts, redactMask) is the expected shown form.
type redactionForm struct {
	name    string
	app     bool
	escaped bool
	build   func(p redactionParts, password string) string
}

func kvQuote(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}

func urlDSN(p redactionParts, password string) string {
	return withQuery("postgres://"+percentEncode(p.user)+":"+password+"@"+p.host+"/"+percentEncode(p.db), p.param)
}

func kvDSN(p redactionParts, password string) string {
	s := "host=" + kvQuote(p.host) + " user=" + kvQuote(p.user) + " password=" + password + " dbname=" + kvQuote(p.db)
	if p.param != "" {
		s += " " + p.param
	}
	return s
}

func appURL(p redactionParts, password string) string {
	return withQuery("http://"+percentEncode(p.user)+":"+password+"@"+p.host+"/"+percentEncode(p.db), p.param)
}

// dnsAppURL is an app URL whose name's every address is an endpoint: the same user info, and
// a port, which dns+ URLs need.
func dnsAppURL(p redactionParts, password string) string {
	return withQuery("dns+http://"+percentEncode(p.user)+":"+password+"@"+p.host+":9931/"+percentEncode(p.db), p.param)
}

func withQuery(s, param string) string {
	if param != "" {
		s += "?" + param
	}
	return s
}

var redactionForms = []redactionForm{
	{"URL", false, true, func(p redactionParts, pw string) string { return urlDSN(p, percentEncode(pw)) }},
	{"URL, password as is", false, false, urlDSN},
	{"key=value", false, true, func(p redactionParts, pw string) string { return kvDSN(p, kvQuote(pw)) }},
	{"key=value, password as is", false, false, kvDSN},
	{"app URL", true, true, func(p redactionParts, pw string) string { return appURL(p, percentEncode(pw)) }},
	{"app URL, password as is", true, false, appURL},
	{"dns+ app URL", true, true, func(p redactionParts, pw string) string { return dnsAppURL(p, percentEncode(pw)) }},
	{"dns+ app URL, password as is", true, false, dnsAppURL},
}

// neutralPassword stands in for the fuzzed one: a password that is one field in every form.
const neutralPassword = "Nq7Pz"

// redactionOutcome is what the package makes of one input: how it shows it, or its error,
// and the password and other fields that pgconn (or net/url) reads from it.
type redactionOutcome struct {
	out      string // the shown form, or "error: " and the error
	accepted bool
	parsed   bool   // pgconn or net/url could parse the input
	password string // the password they read
	fields   string // the fields they read besides the password
}

func redactionOf(form redactionForm, in string) redactionOutcome {
	var o redactionOutcome
	if form.app {
		u, err := ParseAppURL(in)
		o.out, o.accepted = u.String(), err == nil
		if err != nil {
			o.out = "error: " + err.Error()
		}
		if pu, err := url.Parse(strings.TrimSpace(in)); err == nil && pu.User != nil {
			o.parsed = true
			o.password, _ = pu.User.Password()
			o.fields = strings.Join([]string{pu.Scheme, pu.User.Username(), pu.Host, pu.EscapedPath(), pu.RawQuery}, "\x00")
		}
		return o
	}
	d, err := ParseDSN(in)
	o.out, o.accepted = d.String(), err == nil
	if err != nil {
		o.out = "error: " + err.Error()
	}
	if cfg, err := pgconn.ParseConfig(in); err == nil {
		o.parsed, o.password = true, cfg.Password
		o.fields = strings.Join([]string{cfg.User, cfg.Host, cfg.Database, strings.Join(sortedParams(cfg.RuntimeParams), "\x00")}, "\x00")
	}
	return o
}

func sortedParams(m map[string]string) []string {
	var out []string
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	return out
}

// FuzzRedaction builds connection strings and app URLs from a user name, password, host,
// database and an extra parameter, in every form, and checks the two properties of
// redaction by structure. (1) Nothing printed contains the password: written correctly for
// its form (or taken whole as the password anyway), the shown form or error is the same as
// for a neutral password; and in any case no output contains the password that pgconn or
// net/url reads, where it has 3+ characters, no x (the mask), is written once in the input
// and is not in the output for the neutral password (a word of a message). (2) Every
// non-secret part is unchanged: where the parsers took the password whole, the shown form is
// the input with the password replaced by xxxxx, byte for byte. RedactError prints the
// library errors that carry these strings from the same forms. The seed corpus, with the
// fuzzer's findings (found-*), is in testdata/fuzz/FuzzRedaction.
func FuzzRedaction(f *testing.F) {
	isolatePGEnv(f)
	// The messages that withhold their details are words too, whatever the password.
	var withheldMessages string
	for _, bad := range []string{"postgres://u:a b@h/d", "host=h password=a b"} {
		_, err := ParseDSN(bad)
		withheldMessages += err.Error() + "\n"
	}
	if _, err := ParseAppURL("http://u:a b@h/"); err != nil {
		withheldMessages += err.Error()
	}
	f.Fuzz(func(t *testing.T, user, password, host, db, param string, formIndex uint8) {
		if unsafeInput(user + password + host + db + param) {
			t.Skip()
		}
		form := redactionForms[int(formIndex)%len(redactionForms)]
		parts := redactionParts{user, host, db, param}
		in := form.build(parts, password)
		got := redactionOf(form, in)
		ref := redactionOf(form, form.build(parts, neutralPassword))
		wholePassword := got.parsed && ref.parsed && got.password == password && ref.password == neutralPassword && got.fields == ref.fields

		// (1) No password in what is printed. (libpq cannot take a NUL byte anywhere: such a
		// password makes the string's structure unsure, and only the check below applies.)
		if password != "" && !strings.Contains(password, "\x00") && (form.escaped || wholePassword) && got.out != ref.out {
			t.Fatalf("%s: the output depends on the password:\n in  %q\n got %q\n for %q: %q", form.name, in, got.out, neutralPassword, ref.out)
		}
		urlError := func(s string) string {
			return RedactError(&url.Error{Op: "Get", URL: s, Err: errors.New("boom")}).Error()
		}
		ue, refUE := urlError(in), urlError(form.build(parts, neutralPassword))
		secrets := []string{got.password}
		if form.escaped || !got.parsed || got.password == password {
			// Else the parsers read the bytes written as the password as other fields (and
			// white space) of the string: not secret by its structure.
			secrets = append(secrets, password)
		}
		for _, secret := range secrets {
			// Short, made of the mask, written twice, a word of a message that withholds its
			// details, or in the same output for the neutral password (a word of a message;
			// \xb0 quoted next to 0000000): not told apart.
			if len(secret) < 3 || strings.Contains(secret, "x") || strings.Count(in, secret) != 1 || strings.Contains(withheldMessages, secret) {
				continue
			}
			if strings.Contains(got.out, secret) && !strings.Contains(ref.out, secret) {
				t.Fatalf("%s: %q shows the password %q: %q", form.name, in, secret, got.out)
			}
			if strings.Contains(ue, secret) && !strings.Contains(refUE, secret) {
				t.Fatalf("%s: RedactError(url.Error) of %q shows the password %q: %q", form.name, in, secret, ue)
			}
		}

		// (2) Every non-secret part unchanged, where the parsers took the password whole as the
		// password (escaped, it can still merge with a host that starts with @). An extra
		// parameter that sets a password (or could spell one with escapes) is masked too, so
		// the shown form is checked without it.
		otherPassword := strings.Contains(strings.ToLower(param), "pass") || strings.Contains(param, "%")
		if got.accepted && !otherPassword && wholePassword {
			want := in
			if password != "" {
				want = form.build(parts, redactMask)
			}
			if form.app {
				want = strings.TrimSpace(want) // as ParseAppURL takes it
			}
			if got.out != want {
				t.Fatalf("%s: %q is shown as %q, want %q", form.name, in, got.out, want)
			}
		}

		// RedactError prints the library errors that carry the string from its shown form.
		if got.accepted && (form.app || isURL(in)) && strings.TrimSpace(in) == in { // (ParseAppURL trims)
			if want := "Get " + strconv.Quote(got.out) + ": boom"; ue != want {
				t.Fatalf("RedactError(url.Error) of %q = %q, want %q", in, ue, want)
			}
		}
		if !got.accepted || form.app {
			return
		}
		cfg, err := pgconn.ParseConfig(in)
		if err != nil {
			t.Fatalf("accepted %q does not parse: %v", in, err)
		}
		if ce := RedactError(&pgconn.ConnectError{Config: cfg}).Error(); ce != "failed to connect to user="+cfg.User+" database="+cfg.Database {
			t.Fatalf("RedactError(ConnectError) of %q = %q", in, ce)
		}
		kind := "key=value"
		if isURL(in) {
			kind = "URL"
		}
		if pe := RedactError(pgconn.NewParseConfigError(in, "bad value", nil)).Error(); pe != "invalid DSN ("+kind+" form): bad value" {
			t.Fatalf("RedactError(ParseConfigError) of %q = %q", in, pe)
		}
	})
}
