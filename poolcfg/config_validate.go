package poolcfg

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// validate returns every problem of c; w places them in the file, if there is one.
func (c *Config) validate(w *where) []error {
	var errs []error
	say := func(path, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s%s: %s", w.at(path), path, fmt.Sprintf(format, args...)))
	}
	bad := func(path, value, problem string) { errs = append(errs, valueError(w.at(path), path, value, problem)) }

	if len(c.Targets)+len(c.PgBouncers) == 0 {
		errs = append(errs, fmt.Errorf("%snothing to watch: there are no targets and no pgbouncers", w.at("")))
	}
	dsnFailed := func(path string) bool {
		return w.failed[path+".dsn"] || w.failed[path+".dsn_file"] || w.failed[path+".dsn_env"] || w.failed[path+".auth_module"]
	}
	// Target and pgbouncer names share one namespace: both become the target label, and two
	// dbpool_up{target="main"} series would collide, one of them silently dropped.
	allConns := map[string]string{}
	checkConns := func(kind string, conns []Target) map[string]string {
		seen := map[string]string{}
		for i, conn := range conns {
			path, name := fmt.Sprintf("%s[%d]", kind, i), conn.Name
			switch other := allConns[name]; {
			case name == "" && (dsnFailed(path) || w.failed[path+".name"]): // reported already
			case name == "":
				say(path+".name", "required (only a lone entry of %s may leave it out)", kind)
			case seen[name] != "":
				bad(path+".name", name, "duplicate name, also used by "+w.ref(seen[name]))
			case other != "":
				bad(path+".name", name, "duplicate name, also used by "+w.ref(other)+
					": targets and pgbouncers share the target label")
			case !printable(name):
				bad(path+".name", name, "must be printable text")
				fallthrough // still a name pools can refer to: do not report them too
			default:
				seen[name] = path + ".name"
				allConns[name] = path + ".name"
			}
			if conn.DSN.IsZero() && !dsnFailed(path) {
				say(path+".dsn", "missing: set one of dsn, dsn_file or dsn_env")
			}
		}
		return seen
	}
	targets := checkConns("targets", c.Targets)
	bouncers := make([]Target, len(c.PgBouncers))
	for i, b := range c.PgBouncers {
		bouncers[i] = Target(b)
	}
	checkConns("pgbouncers", bouncers)

	var targetNames []string
	for _, t := range c.Targets {
		targetNames = append(targetNames, strconv.Quote(t.Name))
	}
	poolNames := map[string]string{}
	perTarget := map[string]int{}
	for _, p := range c.Pools {
		perTarget[p.Target]++
	}
	matchers := map[string]string{}
	for i, p := range c.Pools {
		path := fmt.Sprintf("pools[%d]", i)
		switch {
		case w.failed[path+".name"]:
		case p.Name == "":
			say(path+".name", "required")
		case !poolNameRe.MatchString(p.Name):
			bad(path+".name", p.Name, "must match [a-zA-Z0-9_.:/-]+")
		case strings.HasPrefix(p.Name, UnmatchedPoolPrefix):
			bad(path+".name", p.Name, `the prefix "`+UnmatchedPoolPrefix+`" is reserved: backends that match no pool are reported as `+
				`pool "`+UnmatchedPoolPrefix+`<application_name>" (and "`+UnmatchedPoolPrefix+`other"), and this pool's series would collide with theirs`)
		case p.Name == OwnPoolName:
			bad(path+".name", p.Name, "reserved: the exporter reports its own monitoring connections as this pool on every PostgreSQL target")
		case poolNames[p.Name] != "":
			bad(path+".name", p.Name, "duplicate pool name, also used by "+w.ref(poolNames[p.Name]))
		default:
			poolNames[p.Name] = path + ".name"
		}
		switch _, known := targets[p.Target]; {
		case w.failed[path+".target"]:
		case len(c.Targets) == 0:
			say(path+".target", "a pool needs a PostgreSQL target, and there are no targets")
		case p.Target == "":
			say(path+".target", "required when there are several targets (%s)", strings.Join(targetNames, ", "))
		case !known:
			bad(path+".target", p.Target, "unknown target (targets: "+strings.Join(targetNames, ", ")+")")
		}

		m := p.Match
		if m.ApplicationName != "" && m.ApplicationNameRegex != nil {
			say(path+".match", "application_name and application_name_regex are mutually exclusive")
		}
		if m.ApplicationNameRegex != nil {
			if err := checkGroups(m.ApplicationNameRegex); err != nil {
				bad(path+".match.application_name_regex", m.ApplicationNameRegex.String(), err.Error())
			}
		}
		switch other, dup := matchers[p.Target+"\x00"+m.key()]; {
		case w.failedUnder(path + ".match."): // a part of it is missing; it was reported
		case m.IsEmpty() && perTarget[p.Target] > 1:
			say(path+".match", "empty: it would match every client backend, which is allowed only for the only pool "+
				"on its target, and target %q has %d pools", p.Target, perTarget[p.Target])
		case dup:
			say(path+".match", "same matcher as %s on target %q: its backends would be counted twice", w.ref(other), p.Target)
		default:
			matchers[p.Target+"\x00"+m.key()] = path
		}

		errs = append(errs, checkSettings(p.Settings, func(key string) (string, string, string) {
			return w.at(path + "." + key), path + "." + key, w.raw(path+"."+key, formatSetting(p.Settings, key))
		})...)
		if !w.failed[path+".instances"] && (p.Instances < 1 || p.Instances > maxInstances) {
			bad(path+".instances", w.raw(path+".instances", strconv.Itoa(p.Instances)),
				fmt.Sprintf("must be between 1 and %d", maxInstances))
		}
	}
	c.validateApps(w, say, bad)
	return errs
}

func printable(s string) bool {
	return utf8.ValidString(s) && strings.IndexFunc(s, func(r rune) bool { return !unicode.IsPrint(r) }) < 0
}
