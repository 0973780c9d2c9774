package poolcfg

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// redactMask replaces every password in DSN.String.
const redactMask = "xxxxx"

// DSN is a validated PostgreSQL connection string, in URL form
// (postgres://u:p@h:5432/db?sslmode=disable) or key=value form (host=h password=p).
//
// Every way of printing a DSN redacts its passwords: String, fmt verbs (%v, %+v, %#v, %s,
// %q), MarshalText (JSON, YAML, slog's text handler) and LogValue. Only ConnString returns
// the secret. The connection string sits behind a *string because fmt prints such a
// pointer as an address with every verb, even when it reaches it by reflection (a DSN in
// an unexported struct field, where its methods are not called).
type DSN struct {
	redacted string
	name     string
	conn     *string
}

// ParseDSN validates s with pgconn.ParseConfig and prepares its redacted form. Its errors
// never quote s, nor any password in it (see parseError).
func ParseDSN(s string) (DSN, error) {
	if strings.TrimSpace(s) == "" {
		return DSN{}, errors.New("empty DSN")
	}
	spans, final, structured := secretSpans(s)
	cfg, err := pgconn.ParseConfig(s)
	if err != nil {
		return DSN{}, parseError(s, err)
	}
	d := DSN{redacted: redact(s, spans, true), conn: &s}
	d.name = net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port))) + "/" + cfg.Database
	// Fail closed if pgconn and the span finder ever disagree (a future pgx may parse
	// differently): the redacted string must describe the same connection, with the mask
	// exactly where the password was. sslpassword stays for this check, because pgconn
	// decrypts the client key with it while parsing.
	if !structured || !sameConnection(cfg, redact(s, spans, false), final) {
		return DSN{}, errors.New("invalid DSN: its password cannot be located for redaction " +
			"(percent-encode @ / ? & and spaces in the user name, password and other values)")
	}
	return d, nil
}

// String returns the DSN in the form it was written, with every password replaced by xxxxx.
func (d DSN) String() string { return d.redacted }

// ConnString returns the DSN as written, password included, for connecting. Never log it.
func (d DSN) ConnString() string {
	if d.conn == nil {
		return ""
	}
	return *d.conn
}

// IsZero reports whether d is the zero DSN (not parsed from anything).
func (d DSN) IsZero() bool { return d.conn == nil }

// DefaultName is host:port/dbname of the first host, as pgconn resolves them (so defaults
// and PG* environment variables apply). It holds no user or password.
func (d DSN) DefaultName() string { return d.name }

// Format makes every fmt verb print the redacted form.
func (d DSN) Format(f fmt.State, verb rune) {
	switch {
	case verb == 'q':
		_, _ = fmt.Fprintf(f, "%q", d.redacted)
	case verb == 'v' && f.Flag('#'):
		_, _ = fmt.Fprintf(f, "poolcfg.DSN(%q)", d.redacted)
	default:
		_, _ = io.WriteString(f, d.redacted)
	}
}

// MarshalText returns the redacted form, so encoders and slog never see the password.
func (d DSN) MarshalText() ([]byte, error) { return []byte(d.redacted), nil }

// LogValue returns the redacted form.
func (d DSN) LogValue() slog.Value { return slog.StringValue(d.redacted) }

// span is where a non-empty password value is written in a connection string: s[start:end].
type span struct {
	start, end int
	ssl        bool // sslpassword, the client key's passphrase
}

// secretSpans finds the password and sslpassword values in s by following pgconn's
// parsers (parseURLSettings and parseKeywordValueSettings, which mirror libpq).
// final is the password pgconn will use from s (nil if s sets none), and ok reports
// whether s has an unambiguous structure.
func secretSpans(s string) (spans []span, final *string, ok bool) {
	if strings.IndexByte(s, 0) >= 0 {
		return nil, nil, false
	}
	if isURL(s) {
		return urlSpans(s)
	}
	return keyValueSpans(s)
}

func isURL(s string) bool {
	return strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://")
}

func urlSpans(s string) (spans []span, final *string, ok bool) {
	i := strings.Index(s, "://") + 3
	// An '@' anywhere but at the end of the userinfo may be a password with an unencoded
	// '/' or '@' spread over host, path or query (postgres://u:pa/ss@h), so it makes the
	// structure ambiguous; legitimate ones can be written as %40.
	strays := strings.Count(s, "@")
	// Like libpq, only a '/' stops the search for the userinfo terminator.
	if at := strings.IndexAny(s[i:], "@/"); at >= 0 && s[i+at] == '@' {
		strays--
		user, pass, hasPass := strings.Cut(s[i:i+at], ":")
		if _, err := uriDecode(user); err != nil {
			return nil, nil, false
		}
		if hasPass && pass != "" {
			v, err := uriDecode(pass)
			if err != nil {
				return nil, nil, false
			}
			if v != "" {
				spans = append(spans, span{i + len(user) + 1, i + at, false})
			}
			final = &v
		}
		i += at + 1
	}
	if strays > 0 {
		return nil, nil, false
	}
	// Host list: netloc[:port] separated by commas; IPv6 addresses in brackets.
	var ports []string
	for {
		if i < len(s) && s[i] == '[' {
			end := strings.IndexByte(s[i:], ']')
			if end <= 1 {
				return nil, nil, false
			}
			i += end + 1
			if i < len(s) && !strings.ContainsRune(":/?,", rune(s[i])) {
				return nil, nil, false
			}
		} else {
			i += indexOrLen(s[i:], ":/?,")
		}
		if i < len(s) && s[i] == ':' {
			n := indexOrLen(s[i+1:], "/?,")
			ports = append(ports, s[i+1:i+1+n])
			i += 1 + n
		}
		if i >= len(s) || s[i] != ',' {
			break
		}
		i++
	}
	// A non-numeric port can be a misplaced password (postgres://a@u:sec:ret@h), so the
	// structure only counts as certain when every port is a number.
	for _, p := range ports {
		v, err := uriDecode(p)
		if err != nil || strings.Trim(v, "0123456789") != "" {
			return nil, nil, false
		}
	}
	if i < len(s) && s[i] == '/' {
		i += 1 + indexOrLen(s[i+1:], "?")
	}
	if i >= len(s) {
		return spans, final, true
	}
	// s[i] == '?': '&'-separated key=value pairs, last occurrence wins.
	for pos := i + 1; pos <= len(s); {
		n := indexOrLen(s[pos:], "&")
		rawKey, rawVal, found := strings.Cut(s[pos:pos+n], "=")
		if !found || strings.Contains(rawVal, "=") {
			return nil, nil, false
		}
		key, err1 := uriDecode(rawKey)
		val, err2 := uriDecode(rawVal)
		if err1 != nil || err2 != nil {
			return nil, nil, false
		}
		if key == "password" || key == "sslpassword" {
			start := pos + len(rawKey) + 1
			if val != "" {
				spans = append(spans, span{start, start + len(rawVal), key == "sslpassword"})
			}
			if key == "password" {
				final = &val
			}
		}
		pos += n + 1
	}
	return spans, final, true
}

// uriDecode follows libpq's conninfo_uri_decode: %XX escapes (not %00), surrounding
// spaces dropped, inner spaces rejected.
func uriDecode(raw string) (string, error) {
	raw = strings.Trim(raw, " ")
	if strings.Contains(raw, " ") {
		return "", errors.New("space")
	}
	var b strings.Builder
	for i := 0; i < len(raw); i++ {
		if raw[i] != '%' {
			b.WriteByte(raw[i])
			continue
		}
		if i+2 >= len(raw) {
			return "", errors.New("bad escape")
		}
		c, err := strconv.ParseUint(raw[i+1:i+3], 16, 8)
		if err != nil || c == 0 {
			return "", errors.New("bad escape")
		}
		b.WriteByte(byte(c))
		i += 2
	}
	return b.String(), nil
}

func indexOrLen(s, chars string) int {
	if i := strings.IndexAny(s, chars); i >= 0 {
		return i
	}
	return len(s)
}

func keyValueSpans(s string) (spans []span, final *string, ok bool) {
	pairs, ok := keyValuePairs(s)
	if !ok {
		return nil, nil, false
	}
	for _, p := range pairs {
		if p.key == "password" || p.key == "sslpassword" {
			v := unescapeKeywordValue(s[p.start:p.end])
			if v != "" {
				spans = append(spans, span{p.start, p.end, p.key == "sslpassword"})
			}
			if p.key == "password" {
				final = &v
			}
		}
	}
	return spans, final, true
}

// kvPair is one key=value of a key=value DSN; s[start:end] is the value as written,
// without its quotes and with its backslash escapes.
type kvPair struct {
	key        string
	start, end int
}

// keyValuePairs splits a key=value DSN as libpq does; ok is false when its structure is
// not certain.
func keyValuePairs(s string) (pairs []kvPair, ok bool) {
	const space = " \t\n\r\v\f"
	isSpace := func(c byte) bool { return strings.IndexByte(space, c) >= 0 }
	skip := func(i int) int {
		for i < len(s) && isSpace(s[i]) {
			i++
		}
		return i
	}
	for i := skip(0); i < len(s); {
		eq := strings.IndexByte(s[i:], '=')
		if eq < 0 {
			return nil, false
		}
		key := strings.Trim(s[i:i+eq], space)
		if key == "" || strings.ContainsAny(key, space) {
			return nil, false
		}
		i = skip(i + eq + 1)
		start, end := i, i
		switch {
		case i == len(s):
		case s[i] != '\'':
			for ; end < len(s) && !isSpace(s[end]); end++ {
				if s[end] == '\\' {
					if end++; end == len(s) {
						break
					}
				}
			}
			i = skip(end)
		default:
			start++
			for end = start; end < len(s) && s[end] != '\''; end++ {
				if s[end] == '\\' {
					end++
				}
			}
			if end >= len(s) {
				return nil, false
			}
			i = skip(end + 1)
		}
		pairs = append(pairs, kvPair{key, start, end})
	}
	return pairs, true
}

// unescapeKeywordValue drops each backslash and keeps the byte after it, as libpq does.
func unescapeKeywordValue(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' {
			if i++; i == len(s) {
				break
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// redact masks the spans of s, the sslpassword ones only if ssl is set.
func redact(s string, spans []span, ssl bool) string {
	var b strings.Builder
	last := 0
	for _, sp := range spans {
		if sp.ssl && !ssl {
			continue
		}
		b.WriteString(s[last:sp.start])
		b.WriteString(redactMask)
		last = sp.end
	}
	b.WriteString(s[last:])
	return b.String()
}

// sameConnection reports whether the redacted string parses to the same connection as cfg,
// with the mask as password exactly when s itself set a non-empty one.
func sameConnection(cfg *pgconn.Config, redacted string, final *string) bool {
	red, err := pgconn.ParseConfig(redacted)
	if err != nil || red.Host != cfg.Host || red.Port != cfg.Port || red.Database != cfg.Database ||
		red.User != cfg.User || len(red.Fallbacks) != len(cfg.Fallbacks) || !maps.Equal(red.RuntimeParams, cfg.RuntimeParams) {
		return false
	}
	if final != nil && *final != "" {
		return red.Password == redactMask && cfg.Password == *final
	}
	return red.Password == cfg.Password
}

// parseError describes why the connection string s did not parse (err, from pgconn, pgx
// or pgxpool) so that it cannot carry a password: pgconn's redaction is best effort, and its
// details quote parts of malformed input. Where the structure of s shows where its
// passwords are, pgconn is asked again about s with them masked, so that no detail it gives
// can contain one; sslpassword stays, because pgconn needs it to decrypt the client key (it
// never prints it). If that parses, the error came from pgx's or pgxpool's own settings,
// which they describe without the passwords. Where the structure is unsure, the details
// are withheld if s may hold a password.
func parseError(s string, err error) error {
	form := "key=value"
	if isURL(s) {
		form = "URL"
	}
	spans, _, structured := secretSpans(s)
	if structured {
		if _, masked := pgconn.ParseConfig(redact(s, spans, false)); masked != nil {
			err = masked
		}
	} else if mayHoldSecret(s) {
		hint := "quote values that contain spaces or quotes: password='...'"
		if form == "URL" {
			hint = "percent-encode @ / ? # & : and spaces in the user name and password"
		}
		return fmt.Errorf("invalid DSN (%s form); %s (%s)", form, withheld, hint)
	}
	var pe *pgconn.ParseConfigError
	if !errors.As(err, &pe) {
		return fmt.Errorf("invalid DSN (%s form)", form)
	}
	c := *pe
	c.ConnString = "" // pgconn quotes the input
	return fmt.Errorf("invalid DSN (%s form): %s", form, strings.TrimPrefix(c.Error(), "cannot parse ``: "))
}
