// Command mixin builds and checks the monitoring mixin in mixin/ (jsonnet): it generates
// alerts/dbpool.rules.yml and grafana/*.json from it, and checks that the shipped files are
// exactly what the mixin generates, that the jsonnet is formatted and lint-free, and that every
// dashboard decodes against Grafana's dashboard schema (grafana-foundation-sdk) and follows
// grafana/dashboard-linter's rules, but for the exceptions listed with reasons in mixin/.lint.
//
//	mixin generate   write the generated files
//	mixin check      check everything above; exit 1 on any problem
//	mixin fmt        format the jsonnet files in place (jsonnetfmt)
//
// It lives in a Go module of its own so that the exporter's go.mod never sees jsonnet, the
// Grafana SDK or Prometheus' PromQL parser. Run it from anywhere in the repository:
// `go -C tools/mixin run . check` (make mixin-check).
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

func main() {
	root := flag.String("root", "", "repository root (default: the nearest directory above the working directory that has mixin/mixin.libsonnet)")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: mixin [-root dir] generate|check|fmt\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(flag.Arg(0), *root); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(cmd, root string) error {
	if root == "" {
		var err error
		if root, err = findRoot(); err != nil {
			return err
		}
	}
	switch cmd {
	case "generate":
		files, err := generate(root, "")
		if err != nil {
			return err
		}
		for _, name := range sortedKeys(files) {
			if err := os.WriteFile(filepath.Join(root, name), files[name], 0o644); err != nil {
				return err
			}
			fmt.Println("wrote", name)
		}
		return nil
	case "fmt":
		changed, err := formatJsonnet(root, true)
		for _, f := range changed {
			fmt.Println("formatted", f)
		}
		return err
	case "check":
		return check(root)
	default:
		return fmt.Errorf("unknown command %q (generate, check or fmt)", cmd)
	}
}

// check runs every check and reports all problems at once.
func check(root string) error {
	var errs []error
	if changed, err := formatJsonnet(root, false); err != nil {
		errs = append(errs, err)
	} else if len(changed) > 0 {
		errs = append(errs, fmt.Errorf("jsonnetfmt would change %s: run `make mixin-fmt`", strings.Join(changed, ", ")))
	}
	if err := lintJsonnet(root); err != nil {
		errs = append(errs, err)
	}

	files, err := generate(root, "")
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	errs = append(errs, compareGenerated(root, files)...)

	cfg, err := loadLintConfig(filepath.Join(root, mixinDir, ".lint"))
	if err != nil {
		errs = append(errs, err)
		cfg = &lintConfig{}
	}
	var all []violation
	for _, name := range sortedKeys(files) {
		if !strings.HasSuffix(name, ".json") {
			continue
		}
		if err := checkSchema(files[name]); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
		vs, err := lintDashboardJSON(files[name])
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
		all = append(all, vs...)
	}
	failed, stale := cfg.apply(all)
	for _, v := range failed {
		errs = append(errs, fmt.Errorf("dashboard lint: %s (fix the dashboard, or list it in %s/.lint with the reason)", v, mixinDir))
	}
	for _, s := range stale {
		errs = append(errs, fmt.Errorf("%s/.lint: exclusion %s excuses nothing: remove it", mixinDir, s))
	}
	if len(errs) == 0 {
		fmt.Printf("mixin: OK (%d generated files identical, dashboards valid against the schema, %d lint findings excused by .lint)\n", len(files), len(all))
	}
	return errors.Join(errs...)
}

// compareGenerated reports every shipped file that differs from what the mixin generates.
func compareGenerated(root string, files map[string][]byte) []error {
	var errs []error
	for _, name := range sortedKeys(files) {
		have, err := os.ReadFile(filepath.Join(root, name))
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w (run `make mixin`)", name, err))
			continue
		}
		if d := lineDiff(string(have), string(files[name])); d != "" {
			errs = append(errs, fmt.Errorf("%s differs from what mixin/ generates: edit mixin/, run `make mixin` and commit both\n%s", name, d))
		}
	}
	return errs
}

// lineDiff shows the lines where two texts differ (up to 10), or "" when they are equal.
func lineDiff(have, want string) string {
	if have == want {
		return ""
	}
	h, w := strings.Split(have, "\n"), strings.Split(want, "\n")
	var b strings.Builder
	shown := 0
	for i := 0; i < max(len(h), len(w)) && shown < 10; i++ {
		var hl, wl string
		if i < len(h) {
			hl = h[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if hl != wl {
			fmt.Fprintf(&b, "  line %d:\n    shipped:   %s\n    generated: %s\n", i+1, hl, wl)
			shown++
		}
	}
	if len(h) != len(w) {
		fmt.Fprintf(&b, "  shipped %d lines, generated %d\n", len(h), len(w))
	}
	return b.String()
}

func findRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, mixinDir, "mixin.libsonnet")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no %s/mixin.libsonnet above the working directory: give -root", mixinDir)
		}
		dir = parent
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
