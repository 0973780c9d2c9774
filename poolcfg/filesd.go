package poolcfg

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"unicode"

	"gopkg.in/yaml.v3"
)

// FileSDFormat is the encoding of a file_sd file, told by its extension as Prometheus does.
type FileSDFormat int

// The formats of Prometheus' file_sd.
const (
	FileSDJSON FileSDFormat = iota
	FileSDYAML
)

// FileSDFormatOf returns the format of the file_sd file at path, by its extension.
func FileSDFormatOf(path string) (FileSDFormat, error) {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".json":
		return FileSDJSON, nil
	case ".yml", ".yaml":
		return FileSDYAML, nil
	}
	return 0, errors.New("must end in .json, .yml or .yaml (the formats of Prometheus' file_sd)")
}

// fileSDGroup is one target group of a file_sd file.
type fileSDGroup struct {
	Targets []string `json:"targets" yaml:"targets"`
	// Labels are read, so that a file written for Prometheus parses, and not used: every
	// target of an app entry reports the entry's pool, and the entry's url gives the scheme
	// and path (__scheme__ and __metrics_path__ are those of Prometheus' own scrape, e.g. of
	// the application's /metrics on the same port).
	Labels map[string]string `json:"labels" yaml:"labels"`
}

// ParseFileSD reads a file_sd file, a list of target groups
// ([{"targets": ["host:port", ...], "labels": {...}}]), and returns its targets, each once,
// in the file's order. An empty list is valid; an empty file, another shape, an unknown key
// or a target that is not host[:port] is an error that names it.
func ParseFileSD(data []byte, format FileSDFormat) ([]string, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, errors.New("empty file: a file_sd file is a list of target groups, [] for none")
	}
	var groups []fileSDGroup
	switch format {
	case FileSDJSON:
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&groups); err != nil {
			return nil, fmt.Errorf("not a file_sd JSON list of target groups: %v", err)
		}
		if _, err := dec.Token(); err != io.EOF {
			return nil, errors.New("not a file_sd JSON list of target groups: data after the list")
		}
	case FileSDYAML:
		dec := yaml.NewDecoder(bytes.NewReader(data))
		dec.KnownFields(true)
		if err := dec.Decode(&groups); err != nil {
			return nil, fmt.Errorf("not a file_sd YAML list of target groups: %v", err)
		}
		var more yaml.Node
		if err := dec.Decode(&more); err != io.EOF {
			return nil, errors.New("not a file_sd YAML list of target groups: only one YAML document is allowed")
		}
	default:
		return nil, fmt.Errorf("unknown file_sd format %d", format)
	}
	if groups == nil {
		return nil, errors.New("not a list of target groups (null)")
	}
	var targets []string
	seen := map[string]bool{}
	for i, g := range groups {
		for _, t := range g.Targets {
			if err := checkTarget(t); err != nil {
				return nil, fmt.Errorf("target group %d: target %q: %w", i, t, err)
			}
			if !seen[t] {
				seen[t] = true
				targets = append(targets, t)
			}
		}
	}
	return targets, nil
}

// checkTarget accepts host, host:port and [ipv6]:port, as Prometheus' targets are written:
// the host of one endpoint, which AppURL.WithHost puts into the entry's url.
func checkTarget(t string) error {
	if t == "" {
		return errors.New("empty")
	}
	if strings.Contains(t, "://") {
		return errors.New("a target is host:port, without a scheme: the entry's url gives it")
	}
	for _, r := range t {
		if unicode.IsSpace(r) || unicode.IsControl(r) || strings.ContainsRune("@/?#%\\", r) {
			return fmt.Errorf("%q is not allowed in host:port", r)
		}
	}
	u, err := url.Parse("http://" + t)
	if err != nil || u.Host != t || u.Hostname() == "" {
		return errors.New("not host:port")
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("port %s is not 1-65535", p)
		}
	} else if strings.HasSuffix(t, ":") {
		return errors.New("empty port")
	}
	return nil
}
