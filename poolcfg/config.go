package poolcfg

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"

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
	FileSD  yaml.Node `yaml:"file_sd"`
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
// Pool names the exporter gives pools itself, so that no configured pool may have them.
const (
	// UnmatchedPoolPrefix starts the pool name of backends that match no configured pool:
	// the activity source groups them by application_name, as application_name:<name>, and
	// the groups beyond its cap as application_name:other.
	UnmatchedPoolPrefix = "application_name:"
	// OwnPoolName is the pool of the exporter's own monitoring connections on every
	// PostgreSQL target.
	OwnPoolName = "dbpool_exporter"
)

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
