package poolcfg

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"strings"
)

// App is one endpoint of an application that serves its own pool statistics as dbpool-stats
// JSON (integrations/python). Its instances are the exact view of Pool, next to what the
// activity collector estimates for the same pool from pg_stat_activity.
type App struct {
	Name string // names the endpoint in logs, errors and the landing page
	URL  AppURL
	Pool string // name of the Pool whose instances the endpoint reports
	// AppPool keeps only the instances whose "pool" field is this name (the name the
	// application gave to dbpool_stats.instrument); empty keeps all of them.
	AppPool string
}

// AppURL is a validated http(s) URL of an app endpoint. Every way of printing it redacts a
// password in its user info (http://user:pass@host/ sends basic auth); only Secret returns it.
type AppURL struct {
	redacted string
	name     string
	full     *string // behind a pointer for the same reason as DSN.conn
}

// ParseAppURL validates s: http or https, a host, no fragment. Its errors never quote s
// when s may have user info.
func ParseAppURL(s string) (AppURL, error) {
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
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return AppURL{}, fmt.Errorf("scheme %q: must be http or https", u.Scheme)
	case u.Host == "" || u.Hostname() == "":
		return AppURL{}, errors.New("no host")
	case u.Fragment != "":
		return AppURL{}, errors.New("a fragment (#...) is not sent to the server: remove it")
	}
	redacted, err := redactUserinfo(s)
	if err != nil {
		return AppURL{}, err
	}
	return AppURL{redacted: redacted, name: u.Host, full: &s}, nil
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
		switch {
		case w.failed[path+".url"]:
		case a.URL.IsZero():
			say(path+".url", "required")
		case urls[a.URL.Secret()] != "":
			// Two entries for one endpoint would count its instances twice.
			say(path+".url", "same URL as %s: its instances would be counted twice", w.ref(urls[a.URL.Secret()]))
		default:
			urls[a.URL.Secret()] = path + ".url"
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
