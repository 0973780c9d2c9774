package poolcfg

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"regexp/syntax"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Reading the YAML nodes into a Config, with the line of every value for messages.

// where locates values for error messages. The zero where (Validate) has no file, so its
// messages start with the key path alone.
type where struct {
	file   string
	lines  map[string]int    // key path (pools[1].match.user) -> line
	raws   map[string]string // key path -> scalar as written, for keys that are not secrets
	failed map[string]bool   // key paths already reported while converting
}

// record notes the line of every key and list item under path. It does not follow
// aliases: they can form cycles (&x [*x]).
func (w *where) record(path string, n *yaml.Node) {
	if n.Kind == yaml.DocumentNode && len(n.Content) == 1 {
		n = n.Content[0]
	}
	w.lines[path] = n.Line
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			key := n.Content[i].Value
			if path != "" {
				key = path + "." + key
			}
			w.record(key, n.Content[i+1])
			w.lines[key] = n.Content[i].Line
		}
	case yaml.SequenceNode:
		for i, item := range n.Content {
			w.record(fmt.Sprintf("%s[%d]", path, i), item)
		}
	}
}

// at returns "file:line: " for the closest recorded ancestor of path, "" without a file.
func (w *where) at(path string) string {
	if w.file == "" {
		return ""
	}
	for p := path; p != ""; {
		if line, ok := w.lines[p]; ok {
			return fmt.Sprintf("%s:%d: ", w.file, line)
		}
		if i := strings.LastIndexAny(p, ".["); i >= 0 {
			p = p[:i]
		} else {
			p = ""
		}
	}
	return w.file + ": "
}

// ref names another place in the file, for "also used by" messages.
func (w *where) ref(path string) string {
	if line, ok := w.lines[path]; ok && w.file != "" {
		return fmt.Sprintf("%s (line %d)", path, line)
	}
	return path
}

func (w *where) failedUnder(prefix string) bool {
	for path := range w.failed {
		if strings.HasPrefix(path, prefix) {
			return true
		}
	}
	return false
}

func (w *where) raw(path, fallback string) string {
	if v, ok := w.raws[path]; ok {
		return v
	}
	return fallback
}

type parser struct {
	w    *where
	errs []error
}

func (p *parser) fail(path string, err error) {
	p.errs = append(p.errs, err)
	p.w.failed[path] = true
}

// scalar returns the text of a present, non-null scalar. A list or mapping where a single
// value belongs is reported. Non-secret values are remembered for messages.
func (p *parser) scalar(n *yaml.Node, path string, secret bool) (string, bool) {
	for n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	switch {
	case n.Kind == 0 || n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null":
		return "", false
	case n.Kind != yaml.ScalarNode:
		p.fail(path, fmt.Errorf("%s%s: expected a single value, got %s", p.w.at(path), path, kindName(n.ShortTag())))
		return "", false
	}
	if !secret {
		p.w.raws[path] = n.Value
	}
	return n.Value, true
}

func (p *parser) config(raw *rawConfig) *Config {
	c := &Config{}
	mods := p.authModules(raw.AuthModules)
	for _, name := range slices.Sorted(mapKeys(mods)) {
		c.AuthModules = append(c.AuthModules, mods[name].AuthModule)
	}
	for i := range raw.Targets {
		path := fmt.Sprintf("targets[%d]", i)
		dsn, auth := p.authDSN(&raw.Targets[i], path, mods)
		c.Targets = append(c.Targets, Target{Name: p.name(&raw.Targets[i].Name, path), DSN: dsn, AuthModule: auth})
	}
	for i := range raw.PgBouncers {
		path := fmt.Sprintf("pgbouncers[%d]", i)
		rt := rawTarget(raw.PgBouncers[i])
		dsn, auth := p.authDSN(&rt, path, mods)
		c.PgBouncers = append(c.PgBouncers, PgBouncer{Name: p.name(&rt.Name, path), DSN: dsn, AuthModule: auth})
	}
	for i := range raw.Pools {
		rp, path := &raw.Pools[i], fmt.Sprintf("pools[%d]", i)
		pool := Pool{Name: p.name(&rp.Name, path), Match: p.match(&rp.Match, path+".match")}
		pool.Target, _ = p.scalar(&rp.Target, path+".target", false)
		nodes := map[string]*yaml.Node{keyPoolSize: &rp.PoolSize, keyMaxOverflow: &rp.MaxOverflow,
			keyTimeout: &rp.Timeout, keyRecycle: &rp.Recycle, keyPrePing: &rp.PrePing, keyEcho: &rp.Echo}
		for _, key := range settingKeys {
			if v, ok := p.scalar(nodes[key], path+"."+key, false); ok {
				if problem := setSetting(&pool.Settings, key, v); problem != "" {
					p.fail(path+"."+key, valueError(p.w.at(path+"."+key), path+"."+key, v, problem))
				}
			}
		}
		if v, ok := p.scalar(&rp.Instances, path+".instances", false); ok {
			var problem string
			if pool.Instances, problem = parseCount(v, 0); problem != "" {
				p.fail(path+".instances", valueError(p.w.at(path+".instances"), path+".instances", v, problem))
			}
		}
		c.Pools = append(c.Pools, pool)
	}
	for i := range raw.Apps {
		ra, path := &raw.Apps[i], fmt.Sprintf("apps[%d]", i)
		app := App{Name: p.name(&ra.Name, path)}
		app.Pool, _ = p.scalar(&ra.Pool, path+".pool", false)
		app.AppPool, _ = p.scalar(&ra.AppPool, path+".app_pool", false)
		if v, ok := p.scalar(&ra.FileSD, path+".file_sd", false); ok {
			app.FileSD = v
			if !filepath.IsAbs(v) {
				app.FileSD = filepath.Join(filepath.Dir(p.w.file), v)
			}
			if _, err := FileSDFormatOf(v); err != nil {
				p.fail(path+".file_sd", valueError(p.w.at(path+".file_sd"), path+".file_sd", v, err.Error()))
			}
		}
		// The URL may carry a password in its user info: never echoed in messages.
		if v, ok := p.scalar(&ra.URL, path+".url", true); ok {
			parse := ParseAppURL
			if app.FileSD != "" {
				parse = ParseAppURLTemplate
			}
			u, err := parse(v)
			if err != nil {
				p.fail(path+".url", fmt.Errorf("%s%s.url: %w", p.w.at(path+".url"), path, err))
			}
			app.URL = u
		}
		c.Apps = append(c.Apps, app)
	}
	return c
}

// authDSN is the target's DSN with the credentials of its auth_module, if it names one.
func (p *parser) authDSN(r *rawTarget, path string, mods map[string]*authModule) (DSN, string) {
	dsn := p.dsn(r, path)
	keyPath := path + ".auth_module"
	name, ok := p.scalar(&r.AuthModule, keyPath, false)
	if !ok {
		return dsn, ""
	}
	m := mods[name]
	switch {
	case m == nil:
		known := "there are no auth_modules"
		if len(mods) > 0 {
			var names []string
			for _, n := range slices.Sorted(mapKeys(mods)) {
				names = append(names, strconv.Quote(n))
			}
			known = "auth modules: " + strings.Join(names, ", ")
		}
		p.fail(keyPath, valueError(p.w.at(keyPath), keyPath, name, "unknown auth module ("+known+")"))
		return DSN{}, name
	case m.failed:
		p.w.failed[keyPath] = true // the module's problem is reported already
		return DSN{}, name
	case dsn.IsZero():
		return DSN{}, name // the DSN's problem is reported, or validate reports it missing
	}
	d, err := withAuth(dsn, m)
	if err != nil {
		p.fail(path+".dsn", fmt.Errorf("%s%s: %w", p.w.at(keyPath), path, err))
		return DSN{}, name
	}
	return d, name
}

func (p *parser) name(n *yaml.Node, path string) string {
	v, _ := p.scalar(n, path+".name", false)
	return v
}

// dsn reads the one of dsn, dsn_file and dsn_env that is set. Errors name the key and, for
// dsn_file and dsn_env, the file or variable, never the connection string.
func (p *parser) dsn(r *rawTarget, path string) DSN {
	var set []string
	var key, val string
	for _, k := range []struct {
		key  string
		node *yaml.Node
	}{{"dsn", &r.DSN}, {"dsn_file", &r.DSNFile}, {"dsn_env", &r.DSNEnv}} {
		if v, ok := p.scalar(k.node, path+"."+k.key, k.key == "dsn"); ok {
			set, key, val = append(set, k.key), k.key, v
		}
	}
	fail := func(err error) DSN { p.fail(path+".dsn", err); return DSN{} }
	switch len(set) {
	case 0:
		return DSN{} // validate reports the missing DSN
	case 1:
	default:
		return fail(fmt.Errorf("%s%s: set only one of dsn, dsn_file and dsn_env, not %s", p.w.at(path), path, strings.Join(set, " and ")))
	}
	keyPath, text := path+"."+key, val
	switch key {
	case "dsn_file":
		file := val
		if !filepath.IsAbs(file) {
			file = filepath.Join(filepath.Dir(p.w.file), file)
		}
		var err error
		if text, err = readSmallFile(file); err != nil {
			return fail(valueError(p.w.at(keyPath), keyPath, val, err.Error()))
		}
	case "dsn_env":
		if v, ok := os.LookupEnv(val); ok && strings.TrimSpace(v) != "" {
			text = v
		} else {
			return fail(valueError(p.w.at(keyPath), keyPath, val, "environment variable is not set or empty"))
		}
	}
	d, err := ParseDSN(text)
	if err != nil {
		where := p.w.at(keyPath) + keyPath
		if key != "dsn" { // name the file or variable; the DSN itself is never shown
			where += fmt.Sprintf("=%q", val)
		}
		return fail(fmt.Errorf("%s: %w", where, err))
	}
	return d
}

func readSmallFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	data, err := io.ReadAll(io.LimitReader(f, maxDSNFile+1))
	_ = f.Close() // read-only: nothing to lose
	switch {
	case err != nil:
		return "", err
	case len(data) > maxDSNFile:
		return "", fmt.Errorf("larger than %d bytes: not a DSN", maxDSNFile)
	case len(bytes.TrimSpace(data)) == 0:
		return "", errors.New("file is empty")
	}
	return string(bytes.TrimSpace(data)), nil
}

func (p *parser) match(r *rawMatch, path string) Matcher {
	var m Matcher
	m.ApplicationName, _ = p.scalar(&r.ApplicationName, path+".application_name", false)
	m.User, _ = p.scalar(&r.User, path+".user", false)
	m.Database, _ = p.scalar(&r.Database, path+".database", false)
	if v, ok := p.scalar(&r.ApplicationNameRegex, path+".application_name_regex", false); ok {
		re, err := CompileApplicationNameRegex(v)
		var se *syntax.Error
		if errors.As(err, &se) {
			err = fmt.Errorf("not a valid RE2 regular expression: %s", se.Code)
		}
		if err != nil {
			p.fail(path+".application_name_regex", valueError(p.w.at(path+".application_name_regex"),
				path+".application_name_regex", v, err.Error()))
		}
		m.ApplicationNameRegex = re
	}
	if v, ok := p.scalar(&r.ClientCIDR, path+".client_cidr", false); ok {
		prefix, err := netip.ParsePrefix(strings.TrimSpace(v))
		if err != nil {
			if addr, aerr := netip.ParseAddr(strings.TrimSpace(v)); aerr == nil && addr.Zone() == "" {
				prefix, err = addr.Prefix(addr.BitLen())
			}
		}
		if err != nil {
			p.fail(path+".client_cidr", valueError(p.w.at(path+".client_cidr"), path+".client_cidr", v,
				"not a CIDR such as 10.0.0.0/8 or fd00::/8, nor an IP address"))
		}
		m.ClientCIDR = prefix.Masked()
	}
	return m
}

// applyDefaults is the one place where defaults come from: the DB_*-derived settings and
// instances 1 for every pool key the file left out; for a lone target or pgbouncer without
// a name, its DSN's host:port/dbname; for pools without a target, the lone target.
func (p *parser) applyDefaults(c *Config, defaults Settings) {
	given := func(path string) bool { _, ok := p.w.raws[path]; return ok && !p.w.failed[path] }
	for i := range c.Targets {
		if !given(fmt.Sprintf("targets[%d].name", i)) && len(c.Targets) == 1 {
			c.Targets[i].Name = c.Targets[i].DSN.DefaultName()
		}
	}
	for i := range c.PgBouncers {
		if !given(fmt.Sprintf("pgbouncers[%d].name", i)) && len(c.PgBouncers) == 1 {
			c.PgBouncers[i].Name = c.PgBouncers[i].DSN.DefaultName()
		}
	}
	for i := range c.Apps {
		app, path := &c.Apps[i], fmt.Sprintf("apps[%d].", i)
		if app.FileSD != "" && app.URL.IsZero() && !p.w.failed[path+"url"] {
			app.URL, _ = ParseAppURLTemplate(DefaultAppTemplate)
		}
		if !given(path+"name") && len(c.Apps) == 1 {
			if app.FileSD != "" {
				app.Name = app.FileSD
			} else if !app.URL.IsZero() {
				app.Name = app.URL.DefaultName()
			}
		}
		if !given(path+"pool") && len(c.Pools) == 1 {
			app.Pool = c.Pools[0].Name
		}
	}
	for i := range c.Pools {
		pool, path := &c.Pools[i], fmt.Sprintf("pools[%d].", i)
		if !given(path+"target") && len(c.Targets) == 1 {
			pool.Target = c.Targets[0].Name
		}
		if !given(path + "instances") {
			pool.Instances = 1
		}
		s, d := &pool.Settings, defaults
		for _, key := range settingKeys {
			if given(path + key) {
				continue
			}
			switch key {
			case keyPoolSize:
				s.PoolSize = d.PoolSize
			case keyMaxOverflow:
				s.MaxOverflow = d.MaxOverflow
			case keyTimeout:
				s.Timeout = d.Timeout
			case keyRecycle:
				s.Recycle = d.Recycle
			case keyPrePing:
				s.PrePing = d.PrePing
			case keyEcho:
				s.Echo = d.Echo
			}
		}
	}
}
