package poolcfg

import (
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"strings"

	"gopkg.in/yaml.v3"
)

// yamlErrors turns yaml.v3's messages ("line 3: field foo not found in type
// poolcfg.rawPool") into this package's ("config.yml:3: unknown key "foo" in a pool ...").
// Values that yaml.v3 quotes are dropped: they could be a DSN.
func yamlErrors(name string, err error) []error {
	msgs := []string{strings.TrimPrefix(err.Error(), "yaml: ")}
	var te *yaml.TypeError
	if errors.As(err, &te) {
		msgs = te.Errors
	}
	var errs []error
	for _, m := range msgs {
		at := name + ": "
		if sub := yamlLineRe.FindStringSubmatch(m); sub != nil {
			at, m = name+":"+sub[1]+": ", sub[2]
		}
		if sub := yamlUnknownRe.FindStringSubmatch(m); sub != nil {
			s := yamlSections[sub[2]]
			m = fmt.Sprintf("unknown key %q in %s (known keys: %s)", sub[1], s.what, strings.Join(yamlKeys(s.t), ", "))
		} else if sub := yamlTypeRe.FindStringSubmatch(m); sub != nil {
			want := "a list"
			if s, ok := yamlSections[strings.TrimPrefix(sub[2], "poolcfg.")]; ok {
				want = fmt.Sprintf("%s: a mapping with keys %s", s.what, strings.Join(yamlKeys(s.t), ", "))
			} else if strings.HasPrefix(sub[2], "map[string]poolcfg.rawAuthModule") {
				want = "auth_modules: a mapping of names to auth modules"
			} else if strings.HasPrefix(sub[2], "map[") {
				want = "a mapping"
			}
			m = fmt.Sprintf("expected %s, got %s", want, kindName("!!"+sub[1]))
		}
		errs = append(errs, errors.New(at+m))
	}
	return errs
}

var (
	yamlLineRe    = regexp.MustCompile(`^line (\d+): (.*)$`)
	yamlUnknownRe = regexp.MustCompile(`^field (\S+) not found in type poolcfg\.(\w+)$`)
	yamlTypeRe    = regexp.MustCompile(`^cannot unmarshal !!(\w+)\b.* into (\S+)$`)
	yamlSections  = map[string]struct {
		what string
		t    reflect.Type
	}{
		"rawConfig":     {"the top level", reflect.TypeFor[rawConfig]()},
		"rawTarget":     {"a target", reflect.TypeFor[rawTarget]()},
		"rawPgBouncer":  {"a pgbouncer", reflect.TypeFor[rawPgBouncer]()},
		"rawPool":       {"a pool", reflect.TypeFor[rawPool]()},
		"rawMatch":      {"match", reflect.TypeFor[rawMatch]()},
		"rawApp":        {"an app", reflect.TypeFor[rawApp]()},
		"rawAuthModule": {"an auth module", reflect.TypeFor[rawAuthModule]()},
	}
)

func yamlKeys(t reflect.Type) []string {
	var keys []string
	for i := range t.NumField() {
		keys = append(keys, t.Field(i).Tag.Get("yaml"))
	}
	return keys
}

func kindName(tag string) string {
	switch tag {
	case "!!map":
		return "a mapping"
	case "!!seq":
		return "a list"
	case "!!str":
		return "a string"
	case "!!int", "!!float":
		return "a number"
	case "!!bool":
		return "a boolean"
	case "!!null":
		return "nothing"
	}
	return "a " + strings.TrimPrefix(tag, "!!") + " value"
}
