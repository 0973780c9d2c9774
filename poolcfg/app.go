package poolcfg

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"strings"
)

// App is one entry of the app endpoints of an application that serves its own pool
// statistics as dbpool-stats JSON (integrations/python): one URL, every address of a DNS name
// (dns+http://), or every target of a Prometheus file_sd file. Their instances are the exact
// view of Pool, next to what the activity collector estimates for the same pool from
// pg_stat_activity.
type App struct {
	Name string // names the entry in logs, errors, the landing page and the app label
	// URL is the endpoint (http, https), the DNS name whose addresses are the endpoints
	// (dns+http, dns+https), or with FileSD the scheme, user info and path of every target,
	// without a host (ParseAppURLTemplate).
	URL AppURL
	// FileSD is a Prometheus file_sd file (JSON, or YAML by its extension) listing the
	// endpoints as host:port; empty for the other kinds.
	FileSD string
	Pool   string // name of the Pool whose instances the endpoints report
	// AppPool keeps only the instances whose "pool" field is this name (the name the
	// application gave to dbpool_stats.instrument); empty keeps all of them.
	AppPool string
}

// Describe says where the entry's endpoints come from, passwords redacted.
func (a App) Describe() string {
	if a.FileSD != "" {
		return "file_sd " + a.FileSD + ", " + a.URL.String()
	}
	return a.URL.String()
}

// AppURL is a validated URL of app endpoints. Every way of printing it redacts a password in
// its user info (http://user:pass@host/ sends basic auth); only Secret returns it.
type AppURL struct {
	redacted string
	name     string
	full     *string // behind a pointer for the same reason as DSN.conn
	// dnsHost and dnsPort are the name to resolve and the port of a dns+ URL.
	dnsHost, dnsPort string
}

// dnsPrefix starts the scheme of a URL whose name's every address (A and AAAA records) is
// one endpoint, as in Thanos and Cortex: dns+http://api-headless.prod.svc:9931/dbpool.
const dnsPrefix = "dns+"

// DefaultAppTemplate is the URL of a file_sd entry that gives none: plain HTTP, the path of
// dbpool_stats.start_http_server.
const DefaultAppTemplate = "http:///dbpool"

// ParseAppURL validates s: http or https (one endpoint) or dns+http or dns+https with a
// port (one endpoint per address of the name), a host, no fragment. Its errors never quote s
// when s may have user info.
func ParseAppURL(s string) (AppURL, error) { return parseAppURL(s, false) }

// ParseAppURLTemplate validates the URL of a file_sd entry: http or https, user info, path
// and query, and no host (http:///dbpool, https://user:password@/dbpool): every target of
// the file takes the host's place (WithHost).
func ParseAppURLTemplate(s string) (AppURL, error) { return parseAppURL(s, true) }

func parseAppURL(s string, template bool) (AppURL, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return AppURL{}, errors.New("empty URL")
	}
	u, err := url.Parse(s)
	if err != nil {
		if strings.Contains(s, "@") {
			// net/url's reasons quote parts of s, and where the user info ends is unsure.
			return AppURL{}, fmt.Errorf("not a URL (%s; percent-encode @ / ? # %% : and spaces in the user name and password)", withheld)
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // url.Error quotes the whole URL
		}
		return AppURL{}, fmt.Errorf("not a URL: %v", err)
	}
	dns := strings.HasPrefix(u.Scheme, dnsPrefix)
	switch scheme := strings.TrimPrefix(u.Scheme, dnsPrefix); {
	case scheme != "http" && scheme != "https":
		return AppURL{}, fmt.Errorf("scheme %q: must be http or https, or dns+http or dns+https for every address of a DNS name", u.Scheme)
	case template && dns:
		return AppURL{}, fmt.Errorf("scheme %q: the file_sd targets are the endpoints: use http or https", u.Scheme)
	case template && u.Host != "":
		return AppURL{}, errors.New("the host comes from the file_sd targets: leave it out, as in http:///dbpool or https://user:password@/dbpool")
	case !template && (u.Host == "" || u.Hostname() == ""):
		return AppURL{}, errors.New("no host")
	case dns && u.Port() == "":
		return AppURL{}, errors.New("a dns+ URL needs a port (dns+http://name:9931/dbpool): every address of the name is an endpoint on it")
	case u.Fragment != "":
		return AppURL{}, errors.New("a fragment (#...) is not sent to the server: remove it")
	}
	redacted, err := redactUserinfo(s)
	if err != nil {
		return AppURL{}, err
	}
	a := AppURL{redacted: redacted, name: u.Host, full: &s}
	if dns {
		a.dnsHost, a.dnsPort = u.Hostname(), u.Port()
	}
	return a, nil
}

// DNSName returns the name to resolve and the port of a dns+ URL; ok is false for the
// other URLs.
func (a AppURL) DNSName() (host, port string, ok bool) {
	return a.dnsHost, a.dnsPort, a.dnsHost != ""
}

// WithHost returns the URL of one endpoint that a's discovery found: hostport (host:port, or
// a host) in place of a's host, and the scheme without dns+; the user info, path and query
// stay as written. hostport must be a bare host[:port]: nothing that could end the host
// and start a path or another user info.
func (a AppURL) WithHost(hostport string) (AppURL, error) {
	if hostport == "" || strings.ContainsAny(hostport, "@/?#\\ \t\r\n%") {
		return AppURL{}, fmt.Errorf("%q is not host:port", hostport)
	}
	scheme, rest, ok := strings.Cut(a.Secret(), "://")
	if !ok {
		return AppURL{}, errors.New("not a URL with an authority") // not from ParseAppURL
	}
	end := indexOrLen(rest, "/?#")
	at := strings.LastIndex(rest[:end], "@")
	scheme = strings.TrimPrefix(strings.ToLower(scheme), dnsPrefix)
	e, err := ParseAppURL(scheme + "://" + rest[:at+1] + hostport + rest[end:])
	if err != nil {
		return AppURL{}, fmt.Errorf("endpoint %q: %w", hostport, err)
	}
	if e.name != hostport { // fail closed if net/url splits it otherwise
		return AppURL{}, fmt.Errorf("%q is not host:port", hostport)
	}
	return e, nil
}

// String returns the URL as written, with its password, if any, replaced by xxxxx.
func (a AppURL) String() string { return a.redacted }

// Secret returns the URL as written, password included, for requests. Never log it.
func (a AppURL) Secret() string {
	if a.full == nil {
		return ""
	}
	return *a.full
}

// IsZero reports whether a was not parsed from anything.
func (a AppURL) IsZero() bool { return a.full == nil }

// DefaultName is the URL's host:port, without user info.
func (a AppURL) DefaultName() string { return a.name }

// Format makes every fmt verb print the redacted form.
func (a AppURL) Format(f fmt.State, verb rune) {
	if verb == 'q' {
		_, _ = fmt.Fprintf(f, "%q", a.redacted)
		return
	}
	_, _ = io.WriteString(f, a.redacted)
}

// MarshalText returns the redacted form.
func (a AppURL) MarshalText() ([]byte, error) { return []byte(a.redacted), nil }

// LogValue returns the redacted form.
func (a AppURL) LogValue() slog.Value { return slog.StringValue(a.redacted) }

// redactUserinfo replaces the password of s's user info by xxxxx where net/url finds it
// (the authority runs from "//" to the first '/', '?' or '#'; its user info up to the last
// '@'; the password after the first ':'), leaving every other byte as written. An '@'
// after the authority may be the rest of a password with an unencoded '/', '?' or '#'
// (http://u:pa/ss@h/), so it makes s ambiguous, and s is refused.
func redactUserinfo(s string) (string, error) {
	ambiguous := errors.New("an @ outside the user info: percent-encode @ / ? # in the user name and password")
	u, err := url.Parse(s)
	if err != nil || u.Scheme == "" || !strings.HasPrefix(strings.ToLower(s), u.Scheme+"://") {
		// Not scheme://authority: a "://" further on (host=h password=:// ...) is no
		// authority, and nothing in s can be told to be user info.
		return "", errors.New("not a URL with an authority (scheme://host)")
	}
	start := len(u.Scheme) + 3
	end := start + indexOrLen(s[start:], "/?#")
	if strings.Contains(s[end:], "@") {
		return "", ambiguous
	}
	at := strings.LastIndex(s[start:end], "@")
	if at < 0 {
		return s, nil
	}
	colon := strings.IndexByte(s[start:start+at], ':')
	if colon < 0 || colon == at-1 {
		return s, nil // no password, or an empty one
	}
	r := s[:start+colon+1] + redactMask + s[start+at:]
	// Fail closed if net/url ever splits differently: the redacted URL must name the same
	// endpoint, with the mask as its password.
	v, err := url.Parse(r)
	if err != nil || u.User == nil || v.User == nil || v.Scheme != u.Scheme || v.Host != u.Host ||
		v.EscapedPath() != u.EscapedPath() || v.RawQuery != u.RawQuery || v.User.Username() != u.User.Username() {
		return "", ambiguous
	}
	if pw, _ := v.User.Password(); pw != redactMask {
		return "", ambiguous
	}
	return r, nil
}

// AppsForTarget returns the app endpoints whose pool is on the named target.
func (c *Config) AppsForTarget(target string) []App {
	onTarget := map[string]bool{}
	for _, p := range c.PoolsForTarget(target) {
		onTarget[p.Name] = true
	}
	var apps []App
	for _, a := range c.Apps {
		if onTarget[a.Pool] {
			apps = append(apps, a)
		}
	}
	return apps
}

// validateApps checks the app endpoints against the pools; say and bad report a problem at
// a key path, as in validate.
func (c *Config) validateApps(w *where, say func(path, format string, args ...any), bad func(path, value, problem string)) {
	pools := map[string]bool{}
	var poolNames []string
	for _, p := range c.Pools {
		pools[p.Name] = true
		poolNames = append(poolNames, fmt.Sprintf("%q", p.Name))
	}
	names, urls := map[string]string{}, map[string]string{}
	for i, a := range c.Apps {
		path := fmt.Sprintf("apps[%d]", i)
		switch {
		case w.failed[path+".name"]:
		case a.Name == "":
			say(path+".name", "required (only a lone app may leave it out)")
		case !printable(a.Name):
			bad(path+".name", a.Name, "must be printable text")
		case names[a.Name] != "":
			bad(path+".name", a.Name, "duplicate app name, also used by "+w.ref(names[a.Name]))
		default:
			names[a.Name] = path + ".name"
		}
		// Two entries for the same endpoints would count their instances twice.
		endpoints, key := a.URL.Secret(), path+".url"
		if a.FileSD != "" {
			endpoints, key = a.FileSD+"\x00"+endpoints, path+".file_sd"
		}
		switch {
		case w.failed[path+".url"] || w.failed[path+".file_sd"]:
		case a.URL.IsZero():
			say(path+".url", "required (or file_sd)")
		case urls[endpoints] != "" && a.FileSD != "":
			say(key, "same file_sd and url as %s: its instances would be counted twice", w.ref(urls[endpoints]))
		case urls[endpoints] != "":
			say(key, "same URL as %s: its instances would be counted twice", w.ref(urls[endpoints]))
		default:
			urls[endpoints] = key
		}
		switch {
		case w.failed[path+".pool"]:
		case len(c.Pools) == 0:
			say(path+".pool", "an app reports one of the configured pools, and there are no pools")
		case a.Pool == "":
			say(path+".pool", "required when there are several pools (%s)", strings.Join(poolNames, ", "))
		case !pools[a.Pool]:
			bad(path+".pool", a.Pool, "unknown pool (pools: "+strings.Join(poolNames, ", ")+")")
		}
	}
}
