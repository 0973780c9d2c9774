package poolcfg

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
)

// AuthModule is a named set of credentials (auth_modules: in the YAML file) that targets
// and pgbouncers refer to with auth_module:, so that a fleet's targets can be listed as
// plain host DSNs. The password is not kept here: it goes straight into the target's DSN,
// whose String redacts it.
type AuthModule struct {
	Name string
	User string
	// Options are extra connection parameters (sslmode, sslrootcert, ...), sorted by key.
	Options []AuthOption
	// PasswordFrom says where the password came from ("password", "password_file" or
	// "password_env"), "" when the module has none (certificate or trust authentication).
	PasswordFrom string
}

// AuthOption is one extra connection parameter of an auth module.
type AuthOption struct{ Key, Value string }

type rawAuthModule struct {
	User         yaml.Node            `yaml:"user"`
	Password     yaml.Node            `yaml:"password"`
	PasswordFile yaml.Node            `yaml:"password_file"`
	PasswordEnv  yaml.Node            `yaml:"password_env"`
	Options      map[string]yaml.Node `yaml:"options"`
}

// authOptionKeys are the connection parameters an auth module may add. Host, port and
// database belong in the target's DSN, user and password are the module's own keys; other
// keys would reach the server as run-time parameters (the exporter sets application_name
// and the timeouts itself), and a misspelt option would fail only at the first login.
var authOptionKeys = []string{
	"channel_binding", "connect_timeout", "krbspn", "krbsrvname", "require_auth",
	"sslcert", "sslcertmode", "sslkey", "sslmode", "sslnegotiation", "sslrootcert", "sslsni",
	"target_session_attrs",
}

// authModule is a parsed module: the public part plus the password, which only the
// parser sees while it builds the targets' DSNs.
type authModule struct {
	AuthModule
	password    string
	hasPassword bool
	failed      bool // a problem was reported: targets using it are not reported again
}

// authModules parses auth_modules:. Every problem is reported, never a password.
func (p *parser) authModules(raw map[string]rawAuthModule) map[string]*authModule {
	mods := map[string]*authModule{}
	for _, name := range slices.Sorted(mapKeys(raw)) {
		r, path := raw[name], "auth_modules."+name
		m := &authModule{AuthModule: AuthModule{Name: name}}
		mods[name] = m
		fail := func(key string, err error) { p.fail(key, err); m.failed = true }
		if !poolNameRe.MatchString(name) {
			fail(path, fmt.Errorf("%sauth_modules: name %q must match [a-zA-Z0-9_.:/-]+", p.w.at(path), name))
		}
		if v, ok := p.scalar(&r.User, path+".user", false); ok && strings.TrimSpace(v) != "" {
			m.User = v
		} else if !p.w.failed[path+".user"] {
			fail(path+".user", fmt.Errorf("%s%s.user: required", p.w.at(path), path))
		}
		var set []string
		for _, k := range []struct {
			key  string
			node *yaml.Node
		}{{"password", &r.Password}, {"password_file", &r.PasswordFile}, {"password_env", &r.PasswordEnv}} {
			v, ok := p.scalar(k.node, path+"."+k.key, k.key == "password")
			if !ok {
				continue
			}
			set = append(set, k.key)
			keyPath := path + "." + k.key
			switch k.key {
			case "password":
				m.password = v
			case "password_file":
				file := v
				if !filepath.IsAbs(file) {
					file = filepath.Join(filepath.Dir(p.w.file), file)
				}
				text, err := readSmallFile(file)
				if err != nil {
					fail(keyPath, valueError(p.w.at(keyPath), keyPath, v, err.Error()))
				}
				m.password = text
			case "password_env":
				if env, ok := os.LookupEnv(v); ok && env != "" {
					m.password = env
				} else {
					fail(keyPath, valueError(p.w.at(keyPath), keyPath, v, "environment variable is not set or empty"))
				}
			}
			m.PasswordFrom, m.hasPassword = k.key, true
		}
		if len(set) > 1 {
			fail(path+".password", fmt.Errorf("%s%s: set only one of password, password_file and password_env, not %s",
				p.w.at(path), path, strings.Join(set, " and ")))
		}
		if m.hasPassword && m.password == "" && !m.failed {
			fail(path+".password", fmt.Errorf("%s%s.%s: empty password (leave the key out for a login without one)",
				p.w.at(path), path, m.PasswordFrom))
		}
		for _, key := range slices.Sorted(mapKeys(r.Options)) {
			node, keyPath := r.Options[key], path+".options."+key
			v, ok := p.scalar(&node, keyPath, false)
			switch {
			case !slices.Contains(authOptionKeys, key):
				fail(keyPath, fmt.Errorf("%s%s: unknown connection option %q (options: %s)", p.w.at(keyPath), path+".options",
					key, strings.Join(authOptionKeys, ", ")))
			case !ok && !p.w.failed[keyPath]:
				fail(keyPath, fmt.Errorf("%s%s: a value is required", p.w.at(keyPath), keyPath))
			case ok:
				m.Options = append(m.Options, AuthOption{Key: key, Value: v})
			}
		}
	}
	return mods
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// withAuth returns the target DSN host with the module's credentials and options added,
// validated by ParseDSN (so that its String redacts the password). host must carry no
// credentials and none of the module's options: either would make it ambiguous which one
// applies. Errors never contain the password.
func withAuth(host DSN, m *authModule) (DSN, error) {
	s := host.ConnString()
	keys := dsnParamKeys(s)
	var clash []string
	for _, k := range []string{"user", "password"} {
		if keys[k] {
			clash = append(clash, k)
		}
	}
	if len(clash) > 0 {
		return DSN{}, fmt.Errorf("the DSN sets %s and auth_module %q gives the credentials: set them in one place only",
			strings.Join(clash, " and "), m.Name)
	}
	for _, o := range m.Options {
		if keys[o.Key] {
			return DSN{}, fmt.Errorf("the DSN and auth_module %q both set %s: set it in one place only", m.Name, o.Key)
		}
	}
	params := []AuthOption{{"user", m.User}}
	params = append(params, m.Options...)
	// Parsed first without the password, so that a bad option value can be described.
	if _, err := ParseDSN(appendParams(s, params)); err != nil {
		return DSN{}, fmt.Errorf("with auth_module %q: %w", m.Name, err)
	}
	if m.hasPassword {
		params = append(params, AuthOption{"password", m.password})
	}
	d, err := ParseDSN(appendParams(s, params))
	if err != nil {
		return DSN{}, fmt.Errorf("with auth_module %q: the password cannot be added to the DSN", m.Name)
	}
	return d, nil
}

// appendParams adds connection parameters to a DSN in its own form: query parameters of a
// URL, or quoted key='value' pairs.
func appendParams(s string, params []AuthOption) string {
	var b strings.Builder
	b.WriteString(s)
	if isURL(s) {
		sep := "?"
		if strings.Contains(s, "?") {
			sep = "&"
			if strings.HasSuffix(s, "?") || strings.HasSuffix(s, "&") {
				sep = ""
			}
		}
		for _, p := range params {
			b.WriteString(sep + percentEncode(p.Key) + "=" + percentEncode(p.Value))
			sep = "&"
		}
		return b.String()
	}
	for _, p := range params {
		v := strings.ReplaceAll(p.Value, `\`, `\\`)
		v = strings.ReplaceAll(v, `'`, `\'`)
		b.WriteString(" " + p.Key + "='" + v + "'")
	}
	return b.String()
}

// percentEncode escapes every byte but RFC 3986's unreserved ones, which libpq's URI
// decoding and Go's net/url (which pgconn uses) both read back the same way.
func percentEncode(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-._~", c) >= 0 {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// dsnParamKeys lists the parameters a parsed (valid) DSN sets; the user info of a URL
// counts as user and password.
func dsnParamKeys(s string) map[string]bool {
	keys := map[string]bool{}
	if !isURL(s) {
		pairs, _ := keyValuePairs(s)
		for _, p := range pairs {
			keys[p.key] = true
		}
		return keys
	}
	rest := s[strings.Index(s, "://")+3:]
	if at := strings.IndexAny(rest, "@/"); at >= 0 && rest[at] == '@' {
		user, _, hasPass := strings.Cut(rest[:at], ":")
		keys["user"] = user != ""
		keys["password"] = hasPass
		rest = rest[at+1:]
	}
	if q := strings.IndexByte(rest, '?'); q >= 0 {
		for pair := range strings.SplitSeq(rest[q+1:], "&") {
			k, _, _ := strings.Cut(pair, "=")
			if k, err := uriDecode(k); err == nil && k != "" {
				keys[k] = true
			}
		}
	}
	return keys
}
