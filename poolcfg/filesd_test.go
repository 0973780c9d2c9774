package poolcfg

import (
	"slices"
	"strings"
	"testing"
)

func TestParseFileSD(t *testing.T) {
	tests := []struct {
		name    string
		format  FileSDFormat
		data    string
		want    []string
		wantErr string
	}{
		{name: "Prometheus' example", format: FileSDJSON, data: `[
  {"targets": ["10.0.0.5:9931", "10.0.0.6:9931"], "labels": {"env": "prod", "__scheme__": "https", "__metrics_path__": "/metrics"}},
  {"targets": ["api-3.internal:9931", "[fd00::7]:9931", "10.0.0.5:9931"]},
  {"labels": {"job": "none"}}
]`, want: []string{"10.0.0.5:9931", "10.0.0.6:9931", "api-3.internal:9931", "[fd00::7]:9931"}},
		{name: "no port", format: FileSDJSON, data: `[{"targets": ["api.internal", "[::1]"]}]`, want: []string{"api.internal", "[::1]"}},
		{name: "empty list", format: FileSDJSON, data: "[]\n", want: nil},
		{name: "YAML", format: FileSDYAML, data: "- targets: ['10.0.0.5:9931']\n  labels: {env: prod}\n- targets:\n  - 10.0.0.6:9931\n",
			want: []string{"10.0.0.5:9931", "10.0.0.6:9931"}},
		{name: "empty file", format: FileSDJSON, data: " \n", wantErr: "empty file"},
		{name: "empty YAML", format: FileSDYAML, data: "", wantErr: "empty file"},
		{name: "null", format: FileSDJSON, data: "null", wantErr: "not a list of target groups (null)"},
		{name: "truncated", format: FileSDJSON, data: `[{"targets": ["10.0.0.5:99`, wantErr: "not a file_sd JSON list of target groups: unexpected EOF"},
		{name: "object", format: FileSDJSON, data: `{"targets": ["10.0.0.5:9931"]}`, wantErr: "cannot unmarshal object"},
		{name: "two lists", format: FileSDJSON, data: `[] []`, wantErr: "data after the list"},
		{name: "unknown key", format: FileSDJSON, data: `[{"target": ["10.0.0.5:9931"]}]`, wantErr: `unknown field "target"`},
		{name: "YAML unknown key", format: FileSDYAML, data: "- target: [h:1]\n", wantErr: "field target not found"},
		{name: "YAML two documents", format: FileSDYAML, data: "[]\n---\n[]\n", wantErr: "only one YAML document"},
		{name: "number label", format: FileSDJSON, data: `[{"targets": ["h:1"], "labels": {"a": 1}}]`, wantErr: "cannot unmarshal number"},
		{name: "number target", format: FileSDJSON, data: `[{"targets": [9931]}]`, wantErr: "cannot unmarshal number"},
		{name: "scheme", format: FileSDJSON, data: `[{"targets": ["http://h:1"]}]`, wantErr: `target group 0: target "http://h:1": a target is host:port, without a scheme`},
		{name: "path", format: FileSDJSON, data: `[{"targets": ["h:1/dbpool"]}]`, wantErr: `target "h:1/dbpool": '/' is not allowed`},
		{name: "user info", format: FileSDJSON, data: `[{"targets": ["u:p@h:1"]}]`, wantErr: `'@' is not allowed`},
		{name: "space", format: FileSDJSON, data: `[{"targets": [" h:1"]}]`, wantErr: `' ' is not allowed`},
		{name: "empty target", format: FileSDJSON, data: `[{"targets": ["h:1", ""]}]`, wantErr: `target group 0: target "": empty`},
		{name: "port range", format: FileSDJSON, data: `[{"targets": ["h:70000"]}]`, wantErr: "port 70000 is not 1-65535"},
		{name: "port zero", format: FileSDJSON, data: `[{"targets": ["h:0"]}]`, wantErr: "port 0 is not 1-65535"},
		{name: "empty port", format: FileSDJSON, data: `[{"targets": ["h:"]}]`, wantErr: "empty port"},
		{name: "port name", format: FileSDJSON, data: `[{"targets": ["h:http"]}]`, wantErr: "not host:port"},
		{name: "bare IPv6", format: FileSDJSON, data: `[{"targets": ["fd00::7:9931"]}]`, wantErr: "not host:port"},
		{name: "no host", format: FileSDJSON, data: `[{"targets": [":9931"]}]`, wantErr: "not host:port"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseFileSD([]byte(tt.data), tt.format)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || !slices.Equal(got, tt.want) {
				t.Fatalf("got %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestFileSDFormatOf(t *testing.T) {
	for path, want := range map[string]FileSDFormat{"a.json": FileSDJSON, "/x/B.JSON": FileSDJSON, "c.yml": FileSDYAML, "d.yaml": FileSDYAML} {
		if got, err := FileSDFormatOf(path); err != nil || got != want {
			t.Errorf("%s: %v, %v", path, got, err)
		}
	}
	for _, path := range []string{"targets", "t.txt", "t.json.bak", ""} {
		if _, err := FileSDFormatOf(path); err == nil {
			t.Errorf("%s: accepted", path)
		}
	}
}

// FuzzParseFileSD: any file is a list of valid targets or an error, never a panic; every
// target accepted is one that AppURL.WithHost puts into a URL as its host, unchanged.
func FuzzParseFileSD(f *testing.F) {
	for _, seed := range []string{
		`[{"targets": ["10.0.0.5:9931", "[fd00::7]:9931"], "labels": {"env": "prod"}}]`,
		`[{"targets": ["api.internal"]}, {"targets": []}]`,
		"- targets: ['h:1']\n  labels: {a: b}\n",
		`[{"targets": ["u:p@h:1", "h:1/x", "h:99999"]}]`,
		`[{"targets": ["h:1"]`,
		"",
	} {
		f.Add([]byte(seed), false)
		f.Add([]byte(seed), true)
	}
	template, err := ParseAppURLTemplate("https://scraper:Pa55word@/dbpool?x=1")
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte, yamlFormat bool) {
		format := FileSDJSON
		if yamlFormat {
			format = FileSDYAML
		}
		targets, err := ParseFileSD(data, format)
		if err != nil {
			if targets != nil {
				t.Errorf("targets returned with an error")
			}
			return
		}
		seen := map[string]bool{}
		for _, target := range targets {
			if seen[target] {
				t.Errorf("target %q returned twice", target)
			}
			seen[target] = true
			e, err := template.WithHost(target)
			if err != nil {
				t.Fatalf("accepted target %q: %v", target, err)
			}
			if e.DefaultName() != target || e.String() != "https://scraper:xxxxx@"+target+"/dbpool?x=1" ||
				e.Secret() != "https://scraper:Pa55word@"+target+"/dbpool?x=1" {
				t.Fatalf("target %q makes %s (%s)", target, e, e.DefaultName())
			}
		}
	})
}
