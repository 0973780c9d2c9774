package poolcfg

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"regexp/syntax"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// The YAML schema. Leaves are yaml.Nodes so that every value keeps its line; the decoder's
// KnownFields(true) rejects unknown keys at every level.
type rawConfig struct {
	Targets    []rawTarget    `yaml:"targets"`
	PgBouncers []rawPgBouncer `yaml:"pgbouncers"`
	Pools      []rawPool      `yaml:"pools"`
	Apps       []rawApp       `yaml:"apps"`
	// AuthModules maps names to credentials that targets refer to (auth.go).
	AuthModules map[string]rawAuthModule `yaml:"auth_modules"`
}

type rawApp struct {
	Name    yaml.Node `yaml:"name"`
	URL     yaml.Node `yaml:"url"`
	Pool    yaml.Node `yaml:"pool"`
	AppPool yaml.Node `yaml:"app_pool"`
}

type rawTarget struct {
	Name    yaml.Node `yaml:"name"`
	DSN     yaml.Node `yaml:"dsn"`
	DSNFile yaml.Node `yaml:"dsn_file"`
	DSNEnv  yaml.Node `yaml:"dsn_env"`
	// AuthModule names an entry of auth_modules that adds the credentials to the DSN.
	AuthModule yaml.Node `yaml:"auth_module"`
}

type rawPgBouncer rawTarget // a separate type only so that error messages say "pgbouncer"

type rawPool struct {
	Name        yaml.Node `yaml:"name"`
	Target      yaml.Node `yaml:"target"`
	Match       rawMatch  `yaml:"match"`
	PoolSize    yaml.Node `yaml:"pool_size"`
	MaxOverflow yaml.Node `yaml:"max_overflow"`
	Timeout     yaml.Node `yaml:"timeout"`
	Recycle     yaml.Node `yaml:"recycle"`
	PrePing     yaml.Node `yaml:"pre_ping"`
	Echo        yaml.Node `yaml:"echo"`
	Instances   yaml.Node `yaml:"instances"`
}

type rawMatch struct {
	ApplicationName      yaml.Node `yaml:"application_name"`
	ApplicationNameRegex yaml.Node `yaml:"application_name_regex"`
	User                 yaml.Node `yaml:"user"`
	Database             yaml.Node `yaml:"database"`
	ClientCIDR           yaml.Node `yaml:"client_cidr"`
}

// maxDSNFile bounds dsn_file reads: a connection string is short, and a path such as
// /dev/zero must not hang the exporter.
const maxDSNFile = 64 << 10

var poolNameRe = regexp.MustCompile(`^[a-zA-Z0-9_.:/-]+$`)

// Pool names the exporter itself uses as the pool label next to the configured pools, so a
// configured pool of that name would duplicate their series.
const (
	// unmatchedPoolPrefix starts the pool label of backends that match no pool: the activity
	// collector names them app:<application_name>, and app:other past its cardinality cap.
	unmatchedPoolPrefix = "app:"
	// ownPoolName is the pool label of the exporter's own monitoring connections on every
	// PostgreSQL target (collector.OwnPoolName, which poolcfg cannot import: collector
	// imports poolcfg).
	ownPoolName = "dbpool_exporter"
)

// Load reads and parses the config file at path with the seed's DefaultSettings.
func Load(path string) (*Config, error) { return LoadWithDefaults(path, DefaultSettings()) }

// LoadWithDefaults reads and parses the config file at path (see ParseWithDefaults).
func LoadWithDefaults(path string, defaults Settings) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseWithDefaults(data, path, defaults)
}

// Parse parses a YAML config with the seed's DefaultSettings. name is used in error messages
// and to resolve relative dsn_file paths.
func Parse(data []byte, name string) (*Config, error) {
	return ParseWithDefaults(data, name, DefaultSettings())
}

// ParseWithDefaults parses a YAML config. A pool's settings that the file leaves out come
// from defaults, which main takes from the DB_* environment: the pool's YAML keys win over
// DB_* variables. dsn_file (relative to the config file's directory) and dsn_env are read
// now, so a reload re-reads them. The result is validated; every problem is returned at
// once, each naming file:line, the key and the value (never a DSN's text).
func ParseWithDefaults(data []byte, name string, defaults Settings) (*Config, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, errors.Join(yamlErrors(name, err)...)
	}
	var raw rawConfig
	var errs []error
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&raw); err != nil && !errors.Is(err, io.EOF) {
		var te *yaml.TypeError
		if !errors.As(err, &te) {
			return nil, errors.Join(yamlErrors(name, err)...)
		}
		errs = append(errs, yamlErrors(name, err)...) // the rest of the document was decoded
	}
	if err := dec.Decode(new(yaml.Node)); !errors.Is(err, io.EOF) {
		errs = append(errs, fmt.Errorf("%s: only one YAML document is allowed", name))
	}
	p := &parser{w: &where{file: name, lines: map[string]int{}, raws: map[string]string{}, failed: map[string]bool{}}}
	p.w.record("", &doc)
	c := p.config(&raw)
	p.applyDefaults(c, defaults)
	errs = append(append(errs, p.errs...), c.validate(p.w)...)
	// Report in file order; errors without a line (whole-file problems) come first.
	lineOf := func(err error) int {
		n, _ := strconv.Atoi(strings.SplitN(strings.TrimPrefix(err.Error(), name+":"), ":", 2)[0])
		return n
	}
	slices.SortStableFunc(errs, func(a, b error) int { return lineOf(a) - lineOf(b) })
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return c, nil
}

// Validate checks a Config however it was built and returns every problem at once.
func (c *Config) Validate() error { return errors.Join(c.validate(&where{})...) }

// PoolsForTarget returns the pools whose backends show up on the named target.
func (c *Config) PoolsForTarget(target string) []Pool {
	var pools []Pool
	for _, p := range c.Pools {
		if p.Target == target {
			pools = append(pools, p)
		}
	}
	return pools
}

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
		// The URL may carry a password in its user info: never echoed in messages.
		if v, ok := p.scalar(&ra.URL, path+".url", true); ok {
			u, err := ParseAppURL(v)
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
		if !given(path+"name") && len(c.Apps) == 1 && !app.URL.IsZero() {
			app.Name = app.URL.DefaultName()
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
		case strings.HasPrefix(p.Name, unmatchedPoolPrefix):
			bad(path+".name", p.Name, `the prefix "app:" is reserved: backends that match no pool are reported as `+
				`pool "app:<application_name>" (and "app:other"), and this pool's series would collide with theirs`)
		case p.Name == ownPoolName:
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
	return append(errs, c.validateApps(w)...)
}

func printable(s string) bool {
	return utf8.ValidString(s) && strings.IndexFunc(s, func(r rune) bool { return !unicode.IsPrint(r) }) < 0
}

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
