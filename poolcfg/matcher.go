package poolcfg

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"
)

// CompileApplicationNameRegex compiles an application_name pattern (Go RE2 syntax) so that
// it must match the whole name, whether or not the pattern has ^ and $. The only named
// group allowed is (?P<instance>...), which tells the instances of a pool apart.
func CompileApplicationNameRegex(pattern string) (*regexp.Regexp, error) {
	if _, err := regexp.Compile(pattern); err != nil { // reports positions in the user's pattern
		return nil, err
	}
	re, err := regexp.Compile(`^(?:` + pattern + `)$`)
	if err == nil {
		err = checkGroups(re)
	}
	if err != nil {
		return nil, err
	}
	return re, nil
}

func checkGroups(re *regexp.Regexp) error {
	for _, name := range re.SubexpNames() {
		if name != "" && name != "instance" {
			return fmt.Errorf("named group %q is not allowed: the only named group is (?P<instance>...)", name)
		}
	}
	return nil
}

// Match reports whether a client backend belongs to the pool, and which instance of the pool
// it is: the regex's "instance" group if it has one and it matched something, else the
// application_name. clientAddr is the zero Addr for unix-socket clients, which match only
// when ClientCIDR is unset.
func (m Matcher) Match(applicationName, user, database string, clientAddr netip.Addr) (ok bool, instance string) {
	if m.ApplicationName != "" && applicationName != m.ApplicationName ||
		m.User != "" && user != m.User ||
		m.Database != "" && database != m.Database {
		return false, ""
	}
	if m.ClientCIDR.IsValid() {
		// PostgreSQL reports IPv4 clients of a dual-stack socket as ::ffff:a.b.c.d.
		a := clientAddr.WithZone("")
		if !clientAddr.IsValid() || !m.ClientCIDR.Contains(a) && !m.ClientCIDR.Contains(a.Unmap()) {
			return false, ""
		}
	}
	instance = applicationName
	if re := m.ApplicationNameRegex; re != nil {
		sub := re.FindStringSubmatch(applicationName)
		if sub == nil {
			return false, ""
		}
		if i := re.SubexpIndex("instance"); i > 0 && sub[i] != "" {
			instance = sub[i]
		}
	}
	return true, instance
}

// IsEmpty reports whether m has no condition and so matches every client backend.
func (m Matcher) IsEmpty() bool {
	return m.ApplicationName == "" && m.ApplicationNameRegex == nil && m.User == "" && m.Database == "" &&
		!m.ClientCIDR.IsValid()
}

// String describes m for people, e.g. `application_name=~"api-(?P<instance>[0-9]+)" user="app"`.
func (m Matcher) String() string {
	var parts []string
	if m.ApplicationName != "" {
		parts = append(parts, fmt.Sprintf("application_name=%q", m.ApplicationName))
	}
	if m.ApplicationNameRegex != nil {
		p := m.ApplicationNameRegex.String()
		if inner, ok := strings.CutPrefix(p, "^(?:"); ok && strings.HasSuffix(inner, ")$") {
			p = strings.TrimSuffix(inner, ")$")
		}
		parts = append(parts, fmt.Sprintf("application_name=~%q", p))
	}
	if m.User != "" {
		parts = append(parts, fmt.Sprintf("user=%q", m.User))
	}
	if m.Database != "" {
		parts = append(parts, fmt.Sprintf("database=%q", m.Database))
	}
	if m.ClientCIDR.IsValid() {
		parts = append(parts, "client_cidr="+m.ClientCIDR.String())
	}
	if len(parts) == 0 {
		return "every client backend"
	}
	return strings.Join(parts, " ")
}

// key identifies what m matches, to find pools that would claim the same backends.
func (m Matcher) key() string {
	re := ""
	if m.ApplicationNameRegex != nil {
		re = m.ApplicationNameRegex.String()
	}
	return fmt.Sprintf("%q %q %q %q %s", m.ApplicationName, re, m.User, m.Database, m.ClientCIDR)
}

// HasInstance reports whether the application_name regex has an `instance` capture, so that
// per-instance numbers (overflow) can be computed however many instances are seen.
func (m Matcher) HasInstance() bool {
	return m.ApplicationNameRegex != nil && m.ApplicationNameRegex.SubexpIndex("instance") > 0
}
