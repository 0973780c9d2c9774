package poolcfg

import (
	"fmt"
	"strings"
	"testing"
)

const appsConfig = `targets:
  - name: main
    dsn: postgres://monitor@db1:5432/appdb
pools:
  - {name: api, match: {application_name: api}}
  - {name: jobs, match: {application_name: jobs}}
apps:
  - name: api-1
    url: http://10.0.0.5:9931/dbpool
    pool: api
  - name: jobs-1
    url: https://scraper:S3cretAppPw@10.0.0.6:9931/dbpool
    pool: jobs
    app_pool: default
`

func TestParseApps(t *testing.T) {
	isolatePGEnv(t)
	c, err := parse([]byte(appsConfig), "config.yml")
	if err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprintf("%+v", c.Apps)
	want := "[{Name:api-1 URL:http://10.0.0.5:9931/dbpool Pool:api AppPool:} " +
		"{Name:jobs-1 URL:https://scraper:xxxxx@10.0.0.6:9931/dbpool Pool:jobs AppPool:default}]"
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	if s := c.Apps[1].URL.Secret(); !strings.Contains(s, "S3cretAppPw") {
		t.Errorf("Secret() = %q lost the password", s)
	}
	if got := len(c.AppsForTarget("main")); got != 2 {
		t.Errorf("AppsForTarget(main) = %d apps, want 2", got)
	}
}

func TestLoneAppDefaults(t *testing.T) {
	isolatePGEnv(t)
	c, err := parse([]byte("targets: [{dsn: 'postgres://m@db:5432/app'}]\npools: [{name: api}]\napps: [{url: 'http://[::1]:9931/dbpool'}]\n"), "c.yml")
	if err != nil {
		t.Fatal(err)
	}
	if a := c.Apps[0]; a.Name != "[::1]:9931" || a.Pool != "api" {
		t.Errorf("lone app defaults: %+v", a)
	}
}

func TestAppErrors(t *testing.T) {
	isolatePGEnv(t)
	head := "targets: [{name: main, dsn: 'postgres://m@db:5432/app'}]\npools:\n  - {name: api, match: {application_name: api}}\n  - {name: jobs, match: {application_name: jobs}}\napps:\n"
	tests := []struct {
		name, apps, want string
	}{
		{"unknown pool", "  - {name: a, url: 'http://h:1/', pool: web}", `c.yml:6: apps[0].pool="web": unknown pool (pools: "api", "jobs")`},
		{"pool needed", "  - {name: a, url: 'http://h:1/'}", `c.yml:6: apps[0].pool: required when there are several pools ("api", "jobs")`},
		{"name needed", "  - {url: 'http://h:1/', pool: api}\n  - {url: 'http://h:2/', pool: api}", `apps[0].name: required (only a lone app may leave it out)`},
		{"duplicate name", "  - {name: a, url: 'http://h:1/', pool: api}\n  - {name: a, url: 'http://h:2/', pool: api}", `apps[1].name="a": duplicate app name, also used by apps[0].name (line 6)`},
		{"same url", "  - {name: a, url: 'http://h:1/', pool: api}\n  - {name: b, url: 'http://h:1/', pool: jobs}", `apps[1].url: same URL as apps[0].url (line 6): its instances would be counted twice`},
		{"no url", "  - {name: a, pool: api}", `apps[0].url: required`},
		{"scheme", "  - {name: a, url: 'ftp://h:1/', pool: api}", `apps[0].url: scheme "ftp": must be http or https`},
		{"no host", "  - {name: a, url: 'http:///dbpool', pool: api}", `apps[0].url: no host`},
		{"fragment", "  - {name: a, url: 'http://h:1/#x', pool: api}", `apps[0].url: a fragment`},
		{"unknown key", "  - {name: a, url: 'http://h:1/', pool: api, path: /x}", `unknown key "path" in an app (known keys: name, url, pool, app_pool)`},
		{"bad port, password hidden", "  - {name: a, url: 'http://u:Hunter2Secret@h:port/', pool: api}", `apps[0].url: not a URL (details withheld because they could contain the password; percent-encode`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parse([]byte(head+tt.apps+"\n"), "c.yml")
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error:\n%v\nwant it to contain:\n%s", err, tt.want)
			}
			if strings.Contains(err.Error(), "Hunter2Secret") {
				t.Errorf("the URL's password is in the error: %v", err)
			}
		})
	}
}

func TestAppURLNeverPrintsPassword(t *testing.T) {
	u, err := ParseAppURL("http://scraper:Pa55word@127.0.0.1:9931/dbpool")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{u.String(), fmt.Sprint(u), fmt.Sprintf("%v %s %q %+v %#v", u, u, u, u, u), u.LogValue().String()} {
		if strings.Contains(s, "Pa55word") {
			t.Errorf("printed the password: %s", s)
		}
	}
	if text, _ := u.MarshalText(); strings.Contains(string(text), "Pa55word") {
		t.Errorf("MarshalText: %s", text)
	}
	if _, err := ParseAppURL("http://u:Pa55word@h:port/"); err == nil || strings.Contains(err.Error(), "Pa55word") {
		t.Errorf("bad URL error: %v", err)
	}
}
