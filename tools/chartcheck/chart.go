// Package chartcheck is tooling, not product: it lints and renders the Helm chart in
// charts/dbpool-exporter with Helm's own Go packages, the way `helm lint` and `helm template`
// do, and decodes every rendered object strictly into its Kubernetes or Prometheus Operator
// type. Its tests (run by `make chart`, part of `make test`) check the chart against the
// exporter, the shipped rules and dashboard, promtool and Prometheus.
//
// It is a Go module of its own so that Helm and the Kubernetes types never reach the
// exporter's go.mod.
package chartcheck

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"

	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/common/util"
	chart "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/lint"
	"helm.sh/helm/v4/pkg/chart/v2/lint/support"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	chartutil "helm.sh/helm/v4/pkg/chart/v2/util"
	"helm.sh/helm/v4/pkg/engine"
	releaseutil "helm.sh/helm/v4/pkg/release/v1/util"
	"sigs.k8s.io/yaml"
)

// Release is the release name and namespace every render uses.
const (
	ReleaseName = "orders"
	Namespace   = "monitoring"
)

// RepoRoot is the repository's top directory, found from this file's location.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// ChartDir is the chart's directory.
func ChartDir() string { return filepath.Join(RepoRoot(), "charts", "dbpool-exporter") }

// Manifest is one rendered Kubernetes object: the template it came from and its YAML.
type Manifest struct {
	Template string
	Kind     string
	Name     string
	YAML     string
}

// Rendered is what `helm template` prints for one set of values: the objects and NOTES.txt.
type Rendered struct {
	Manifests []Manifest
	Notes     string
}

// ReadValues reads a values file of the chart (e.g. "ci/fleet-values.yaml"); "" is no file.
func ReadValues(rel string) (map[string]any, error) {
	if rel == "" {
		return map[string]any{}, nil
	}
	data, err := os.ReadFile(filepath.Join(ChartDir(), rel))
	if err != nil {
		return nil, err
	}
	vals := map[string]any{}
	if err := yaml.Unmarshal(data, &vals); err != nil {
		return nil, fmt.Errorf("%s: %w", rel, err)
	}
	return vals, nil
}

// Lint runs Helm's chart linter with vals, as `helm lint -f` does, and returns its messages.
func Lint(vals map[string]any) []support.Message {
	return lint.RunAll(ChartDir(), vals, Namespace).Messages
}

// Render renders the chart with vals as `helm template` does: values coalesced with the
// chart's defaults and validated against values.schema.json, the templates executed, partials
// left out and every file split into its objects in Helm's install order.
func Render(vals map[string]any) (*Rendered, error) {
	chrt, err := loader.LoadDir(ChartDir())
	if err != nil {
		return nil, err
	}
	if err := compatible(chrt); err != nil {
		return nil, err
	}
	top, err := util.ToRenderValuesWithSchemaValidation(chrt, vals,
		common.ReleaseOptions{Name: ReleaseName, Namespace: Namespace, IsInstall: true}, common.DefaultCapabilities, false)
	if err != nil {
		return nil, err
	}
	files, err := engine.Render(chrt, top)
	if err != nil {
		return nil, err
	}
	out := &Rendered{}
	for name, content := range files {
		if strings.HasSuffix(name, "NOTES.txt") {
			out.Notes = content
			delete(files, name)
		}
	}
	hooks, manifests, err := releaseutil.SortManifests(files, nil, releaseutil.InstallOrder)
	if err != nil {
		return nil, err
	}
	if len(hooks) > 0 {
		return nil, fmt.Errorf("the chart renders %d hook(s); chartcheck does not expect any", len(hooks))
	}
	for _, m := range manifests {
		if m.Head == nil || m.Head.Metadata == nil {
			return nil, fmt.Errorf("%s: an object without kind or metadata:\n%s", m.Name, m.Content)
		}
		out.Manifests = append(out.Manifests, Manifest{
			Template: path.Base(m.Name), Kind: m.Head.Kind, Name: m.Head.Metadata.Name, YAML: m.Content,
		})
	}
	return out, nil
}

// compatible applies the chart's kubeVersion constraint to the Kubernetes version Helm
// assumes without a cluster, as `helm template` does.
func compatible(chrt *chart.Chart) error {
	kv := common.DefaultCapabilities.KubeVersion.String()
	if c := chrt.Metadata.KubeVersion; c != "" && !chartutil.IsCompatibleRange(c, kv) {
		return fmt.Errorf("chart requires kubeVersion %s, Helm's default is %s", c, kv)
	}
	return nil
}

// Kinds lists the rendered objects as "Kind/name", sorted, for messages.
func (r *Rendered) Kinds() []string {
	var out []string
	for _, m := range r.Manifests {
		out = append(out, m.Kind+"/"+m.Name)
	}
	sort.Strings(out)
	return out
}
