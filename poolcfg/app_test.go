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
  - name: api-replicas
    url: dns+http://scraper:S3cretDnsPw@api-headless.prod.svc:9931/dbpool
    pool: api
  - name: api-files
    file_sd: sd/api.json
    url: https://scraper:S3cretSdPw@/dbpool
    pool: api
  - name: jobs-files
    file_sd: /etc/dbpool/jobs.yml
    pool: jobs
`

func TestParseApps(t *testing.T) {
	isolatePGEnv(t)
	c, err := parse([]byte(appsConfig), "conf/config.yml")
	if err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprintf("%+v", c.Apps)
	want := "[{Name:api-1 URL:http://10.0.0.5:9931/dbpool FileSD: Pool:api AppPool:} " +
		"{Name:jobs-1 URL:https://scraper:xxxxx@10.0.0.6:9931/dbpool FileSD: Pool:jobs AppPool:default} " +
		"{Name:api-replicas URL:dns+http://scraper:xxxxx@api-headless.prod.svc:9931/dbpool FileSD: Pool:api AppPool:} " +
		"{Name:api-files URL:https://scraper:xxxxx@/dbpool FileSD:conf/sd/api.json Pool:api AppPool:} " +
		"{Name:jobs-files URL:http:///dbpool FileSD:/etc/dbpool/jobs.yml Pool:jobs AppPool:}]"
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	for i, pw := range map[int]string{1: "S3cretAppPw", 2: "S3cretDnsPw", 3: "S3cretSdPw"} {
		if s := c.Apps[i].URL.Secret(); !strings.Contains(s, pw) {
			t.Errorf("Secret() = %q lost the password", s)
		}
	}
	if host, port, ok := c.Apps[2].URL.DNSName(); !ok || host != "api-headless.prod.svc" || port != "9931" {
		t.Errorf("DNSName() = %q, %q, %v", host, port, ok)
	}
	if _, _, ok := c.Apps[0].URL.DNSName(); ok {
		t.Error("DNSName() of an http URL is ok")
	}
	if got := c.Apps[3].Describe(); got != "file_sd conf/sd/api.json, https://scraper:xxxxx@/dbpool" {
		t.Errorf("Describe() = %q", got)
	}
	if got := len(c.AppsForTarget("main")); got != 5 {
		t.Errorf("AppsForTarget(main) = %d apps, want 5", got)
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
	c, err = parse([]byte("targets: [{dsn: 'postgres://m@db:5432/app'}]\npools: [{name: api}]\napps: [{file_sd: /srv/api.json}]\n"), "c.yml")
	if err != nil {
		t.Fatal(err)
	}
	if a := c.Apps[0]; a.Name != "/srv/api.json" || a.URL.String() != DefaultAppTemplate {
		t.Errorf("lone file_sd app defaults: %+v", a)
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
		{"no url", "  - {name: a, pool: api}", `apps[0].url: required (or file_sd)`},
		{"scheme", "  - {name: a, url: 'ftp://h:1/', pool: api}", `apps[0].url: scheme "ftp": must be http or https, or dns+http or dns+https`},
		{"dns scheme", "  - {name: a, url: 'dns+ftp://h:1/', pool: api}", `apps[0].url: scheme "dns+ftp": must be http or https`},
		{"dns without port", "  - {name: a, url: 'dns+http://api.svc/dbpool', pool: api}", `apps[0].url: a dns+ URL needs a port`},
		{"same dns url", "  - {name: a, url: 'dns+http://h:1/', pool: api}\n  - {name: b, url: 'dns+http://h:1/', pool: jobs}", `apps[1].url: same URL as apps[0].url (line 6)`},
		{"file_sd extension", "  - {name: a, file_sd: targets.txt, pool: api}", `apps[0].file_sd="targets.txt": must end in .json, .yml or .yaml`},
		{"file_sd with host", "  - {name: a, file_sd: t.json, url: 'http://h:1/dbpool', pool: api}", `apps[0].url: the host comes from the file_sd targets: leave it out`},
		{"file_sd with dns", "  - {name: a, file_sd: t.json, url: 'dns+http:///dbpool', pool: api}", `apps[0].url: scheme "dns+http": the file_sd targets are the endpoints`},
		{"same file_sd", "  - {name: a, file_sd: t.json, pool: api}\n  - {name: b, file_sd: t.json, pool: jobs}", `apps[1].file_sd: same file_sd and url as apps[0].file_sd (line 6)`},
		{"file_sd template password hidden", "  - {name: a, file_sd: t.json, url: 'http://u:Hunter2Secret@h:1/', pool: api}", `apps[0].url: the host comes from`},
		{"no host", "  - {name: a, url: 'http:///dbpool', pool: api}", `apps[0].url: no host`},
		{"fragment", "  - {name: a, url: 'http://h:1/#x', pool: api}", `apps[0].url: a fragment`},
		{"unknown key", "  - {name: a, url: 'http://h:1/', pool: api, path: /x}", `unknown key "path" in an app (known keys: name, url, file_sd, pool, app_pool)`},
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

// TestAppURLWithHost: the URL of one endpoint that a dns+ URL or a file_sd template found
// keeps the user info, path and query as written, drops dns+, and shows the password
// redacted; a host:port that could end the host, or start user info or a path, is refused.
func TestAppURLWithHost(t *testing.T) {
	tests := []struct {
		name, url, hostport, want, wantErr string
		template                           bool
	}{
		{name: "dns", url: "dns+http://api.svc:9931/dbpool", hostport: "10.0.0.5:9931", want: "http://10.0.0.5:9931/dbpool"},
		{name: "dns https, user info, query", url: "DNS+HTTPS://scr%40per:Pa55word@api.svc:9931/db%2Fpool?x=1", hostport: "[fd00::5]:9931",
			want: "https://scr%40per:xxxxx@[fd00::5]:9931/db%2Fpool?x=1"},
		{name: "template", url: "http:///dbpool", hostport: "api-1.internal:9931", want: "http://api-1.internal:9931/dbpool", template: true},
		{name: "template without path", url: "https://u:Pa55word@", hostport: "10.0.0.7", want: "https://u:xxxxx@10.0.0.7", template: true},
		{name: "plain URL", url: "http://old:1/p", hostport: "new:2", want: "http://new:2/p"},
		{name: "user info in host", url: "http:///dbpool", hostport: "evil@10.0.0.5:1", wantErr: "is not host:port", template: true},
		{name: "path in host", url: "http:///dbpool", hostport: "10.0.0.5:1/x", wantErr: "is not host:port", template: true},
		{name: "empty", url: "http:///dbpool", hostport: "", wantErr: "is not host:port", template: true},
		{name: "bad port", url: "http:///dbpool", hostport: "h:port", wantErr: `endpoint "h:port": not a URL`, template: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			parse := ParseAppURL
			if tt.template {
				parse = ParseAppURLTemplate
			}
			u, err := parse(tt.url)
			if err != nil {
				t.Fatal(err)
			}
			e, err := u.WithHost(tt.hostport)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || e.String() != tt.want || e.DefaultName() != tt.hostport {
				t.Fatalf("WithHost = %q (%q), %v; want %q", e, e.DefaultName(), err, tt.want)
			}
			if _, _, ok := e.DNSName(); ok {
				t.Errorf("the endpoint URL %s is still a dns+ URL", e)
			}
			if strings.Contains(tt.url, "Pa55word") && !strings.Contains(e.Secret(), ":Pa55word@") {
				t.Errorf("Secret() = %q lost the password", e.Secret())
			}
		})
	}
}
