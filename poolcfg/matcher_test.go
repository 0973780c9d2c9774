package poolcfg

import (
	"net/netip"
	"regexp"
	"testing"
)

func mustRegex(t *testing.T, pattern string) *regexp.Regexp {
	t.Helper()
	re, err := CompileApplicationNameRegex(pattern)
	if err != nil {
		t.Fatal(err)
	}
	return re
}

func TestMatch(t *testing.T) {
	unix := netip.Addr{}
	v4 := netip.MustParseAddr("10.1.2.3")
	mapped := netip.MustParseAddr("::ffff:10.1.2.3")
	v6 := netip.MustParseAddr("fd00::1")
	zoned := netip.MustParseAddr("fe80::1%eth0")
	tests := []struct {
		name                string
		m                   Matcher
		app, user, database string
		addr                netip.Addr
		ok                  bool
		instance            string
	}{
		{"empty matches all", Matcher{}, "anything", "u", "d", v4, true, "anything"},
		{"empty matches unix socket", Matcher{}, "x", "u", "d", unix, true, "x"},
		{"exact name", Matcher{ApplicationName: "api"}, "api", "u", "d", v4, true, "api"},
		{"exact name is exact", Matcher{ApplicationName: "api"}, "api-1", "u", "d", v4, false, ""},
		{"regex instance group", Matcher{ApplicationNameRegex: mustRegex(t, `api-(?P<instance>[0-9]+)`)}, "api-12", "u", "d", v4, true, "12"},
		{"regex is anchored", Matcher{ApplicationNameRegex: mustRegex(t, `api-[0-9]+`)}, "xapi-1y", "u", "d", v4, false, ""},
		{"alternation is anchored as a whole", Matcher{ApplicationNameRegex: mustRegex(t, `a|ab`)}, "ab", "u", "d", v4, true, "ab"},
		{"regex without group: instance is the name", Matcher{ApplicationNameRegex: mustRegex(t, `^worker-.*$`)}, "worker-a", "u", "d", v4, true, "worker-a"},
		{"empty instance group falls back to the name", Matcher{ApplicationNameRegex: mustRegex(t, `api(?P<instance>[0-9]*)`)}, "api", "u", "d", v4, true, "api"},
		{"user", Matcher{User: "app"}, "x", "app", "d", v4, true, "x"},
		{"wrong user", Matcher{User: "app"}, "x", "other", "d", v4, false, ""},
		{"database", Matcher{Database: "appdb"}, "x", "u", "appdb", v4, true, "x"},
		{"wrong database", Matcher{Database: "appdb"}, "x", "u", "postgres", v4, false, ""},
		{"all fields", Matcher{ApplicationNameRegex: mustRegex(t, `api-(?P<instance>\d)`), User: "app", Database: "appdb",
			ClientCIDR: netip.MustParsePrefix("10.0.0.0/8")}, "api-3", "app", "appdb", v4, true, "3"},
		{"one field wrong", Matcher{ApplicationName: "api", User: "app"}, "api", "root", "d", v4, false, ""},
		{"cidr v4", Matcher{ClientCIDR: netip.MustParsePrefix("10.0.0.0/8")}, "x", "u", "d", v4, true, "x"},
		{"cidr v4-mapped client", Matcher{ClientCIDR: netip.MustParsePrefix("10.0.0.0/8")}, "x", "u", "d", mapped, true, "x"},
		{"cidr outside", Matcher{ClientCIDR: netip.MustParsePrefix("192.168.0.0/16")}, "x", "u", "d", v4, false, ""},
		{"cidr v6", Matcher{ClientCIDR: netip.MustParsePrefix("fd00::/8")}, "x", "u", "d", v6, true, "x"},
		{"cidr zoned client", Matcher{ClientCIDR: netip.MustParsePrefix("fe80::/10")}, "x", "u", "d", zoned, true, "x"},
		{"cidr never matches unix socket", Matcher{ClientCIDR: netip.MustParsePrefix("0.0.0.0/0")}, "x", "u", "d", unix, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ok, instance := tt.m.Match(tt.app, tt.user, tt.database, tt.addr)
			if ok != tt.ok || instance != tt.instance {
				t.Errorf("Match = %v, %q; want %v, %q", ok, instance, tt.ok, tt.instance)
			}
		})
	}
}

func TestMatcherIsEmptyAndString(t *testing.T) {
	tests := []struct {
		m     Matcher
		empty bool
		str   string
	}{
		{Matcher{}, true, "every client backend"},
		{Matcher{ApplicationName: "api"}, false, `application_name="api"`},
		{Matcher{ApplicationNameRegex: mustRegex(t, `api-(?P<instance>[0-9]+)`), User: "app"}, false,
			`application_name=~"api-(?P<instance>[0-9]+)" user="app"`},
		{Matcher{Database: "appdb", ClientCIDR: netip.MustParsePrefix("10.0.0.0/8")}, false, `database="appdb" client_cidr=10.0.0.0/8`},
		{Matcher{ClientCIDR: netip.MustParsePrefix("::/0")}, false, "client_cidr=::/0"},
	}
	for _, tt := range tests {
		if tt.m.IsEmpty() != tt.empty || tt.m.String() != tt.str {
			t.Errorf("%#v: IsEmpty=%v String=%q; want %v %q", tt.m, tt.m.IsEmpty(), tt.m.String(), tt.empty, tt.str)
		}
	}
}

func TestCompileApplicationNameRegex(t *testing.T) {
	for _, tt := range []struct {
		pattern string
		wantErr string
	}{
		{`api-(?P<instance>[0-9]+)`, ""},
		{`^api$`, ""},
		{`(a)(b)`, ""},
		{`(`, "error parsing regexp: missing closing ): `(`"},
		{`(?P<pod>.*)`, `named group "pod" is not allowed: the only named group is (?P<instance>...)`},
		{`a)(b`, "error parsing regexp: unexpected ): `a)(b`"}, // must not become valid inside ^(?:...)$
	} {
		_, err := CompileApplicationNameRegex(tt.pattern)
		if got := errString(err); got != tt.wantErr {
			t.Errorf("%q: error %q, want %q", tt.pattern, got, tt.wantErr)
		}
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
