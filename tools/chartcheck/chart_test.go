package chartcheck

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"
)

const fullname = ReleaseName + "-dbpool-exporter"

// valueSet is one of the chart's ci/*-values.yaml files and what it must render.
type valueSet struct {
	file    string
	objects []string // Kind/name of every rendered object, sorted
	// configOK is what `dbpool_exporter --config.check` prints for the rendered pod.
	configOK string
	check    func(t *testing.T, o *Objects)
}

var valueSets = []valueSet{
	{
		file: "ci/single-values.yaml",
		objects: []string{"ConfigMap/" + fullname + "-dashboard", "Deployment/" + fullname, "PrometheusRule/" + fullname,
			"Secret/" + fullname, "Service/" + fullname, "ServiceAccount/" + fullname, "ServiceMonitor/" + fullname},
		configOK: "1 target(s), 1 pool(s), 0 pgbouncer(s), 0 app(s), 0 auth module(s)",
		check: func(t *testing.T, o *Objects) {
			c := exporterContainer(t, o)
			wantArgs(t, c, "--pool.name=api", "--pool.application-name-regex=api-(?P<instance>[0-9]+)",
				"--pool.user=app", "--pool.database=orders", "--pool.instances=6")
			wantSecretEnv(t, c, "DATA_SOURCE_NAME", fullname, "dsn")
			wantEnv(t, c, "DB_POOL_SIZE", "10")
			wantEnv(t, c, "DB_POOL_RECYCLE", "3600")
			if sm := o.ServiceMonitors[0]; len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Path != "/metrics" ||
				sm.Labels["release"] != "kube-prometheus-stack" {
				t.Errorf("ServiceMonitor: want one /metrics endpoint and label release, got %+v", sm.Spec.Endpoints)
			}
			if pod, _ := o.PodSpec(); pod.Annotations["checksum/secret"] == "" {
				t.Errorf("no checksum/secret annotation: a changed DSN would not reach the running pod")
			}
			if o.Deployments[0].Spec.Strategy.Type != "Recreate" || *o.Deployments[0].Spec.Replicas != 1 {
				t.Errorf("Deployment: want 1 replica, Recreate")
			}
		},
	},
	{
		file: "ci/app-settings-values.yaml",
		objects: []string{"Deployment/" + fullname, "PodMonitor/" + fullname + "-apps", "PrometheusRule/" + fullname,
			"Secret/" + fullname, "Service/" + fullname, "ServiceAccount/" + fullname, "ServiceMonitor/" + fullname},
		configOK: "1 target(s), 1 pool(s), 1 pgbouncer(s), 1 app(s), 0 auth module(s)",
		check: func(t *testing.T, o *Objects) {
			c := exporterContainer(t, o)
			if len(c.EnvFrom) != 1 || c.EnvFrom[0].ConfigMapRef == nil || c.EnvFrom[0].ConfigMapRef.Name != "api-settings" {
				t.Errorf("envFrom: want the application's ConfigMap api-settings, got %+v", c.EnvFrom)
			}
			wantSecretEnv(t, c, "DATA_SOURCE_NAME", fullname, "dsn")
			wantSecretEnv(t, c, "PGBOUNCER_DSN", fullname, "pgbouncer-dsn")
			wantArgs(t, c, "--app.url=dns+http://api-dbpool.orders.svc.cluster.local:9931/dbpool")
			pm := o.PodMonitors[0]
			if pm.Spec.Selector.MatchLabels["app.kubernetes.io/name"] != "worker" || !slices.Equal(pm.Spec.NamespaceSelector.MatchNames, []string{"orders"}) ||
				len(pm.Spec.PodMetricsEndpoints) != 1 || pm.Spec.PodMetricsEndpoints[0].Port == nil || *pm.Spec.PodMetricsEndpoints[0].Port != "metrics" {
				t.Errorf("PodMonitor: want pods app.kubernetes.io/name=worker in orders, port metrics; got %+v", pm.Spec)
			}
		},
	},
	{
		file:     "ci/existing-secret-values.yaml",
		objects:  []string{"Deployment/" + fullname, "Service/" + fullname, "ServiceAccount/" + fullname, "ServiceMonitor/" + fullname},
		configOK: "1 target(s), 1 pool(s), 0 pgbouncer(s), 0 app(s), 0 auth module(s)",
		check: func(t *testing.T, o *Objects) {
			c := exporterContainer(t, o)
			wantSecretEnv(t, c, "DATA_SOURCE_NAME", "orders-db-monitor", "monitor-dsn")
			pod, _ := o.PodSpec()
			if v := volume(pod, "secret"); v == nil || v.Secret == nil || v.Secret.SecretName != "orders-db-monitor" {
				t.Errorf("the existing Secret is not mounted: %+v", v)
			}
		},
	},
	{
		file: "ci/fleet-values.yaml",
		objects: []string{"ConfigMap/" + fullname, "ConfigMap/" + fullname + "-dashboard", "PrometheusRule/" + fullname,
			"Secret/" + fullname, "Service/" + fullname, "ServiceAccount/" + fullname, "ServiceMonitor/" + fullname,
			"StatefulSet/" + fullname},
		configOK: "6 target(s), 2 pool(s), 1 pgbouncer(s), 0 app(s), 1 auth module(s)",
		check: func(t *testing.T, o *Objects) {
			sts := o.StatefulSets[0]
			if *sts.Spec.Replicas != 2 || sts.Spec.ServiceName != fullname {
				t.Errorf("StatefulSet: want 2 replicas governed by Service %s, got %d, %q", fullname, *sts.Spec.Replicas, sts.Spec.ServiceName)
			}
			c := exporterContainer(t, o)
			wantArgs(t, c, "--config.file=/etc/dbpool-exporter/config/config.yml", "--no-metrics.scrape-targets",
				"--target.max-connected=10")
			if env := envNames(c); len(env) != 0 {
				t.Errorf("with a config file the pod needs no DSN variables, got %v", env)
			}
			want := []string{"orders-db", "billing-db", "users-db", "search-db", "audit-db", "events-db", "edge-bouncer"}
			if got := probedTargets(o.ServiceMonitors[0]); !slices.Equal(got, want) {
				t.Errorf("ServiceMonitor probes %v, want the config's names %v", got, want)
			}
			if pod, _ := o.PodSpec(); pod.Annotations["checksum/config"] == "" {
				t.Errorf("no checksum/config annotation: a changed configuration would not restart the pods")
			}
		},
	},
	{
		file:     "ci/thresholds-values.yaml",
		objects:  []string{"Deployment/" + fullname, "PrometheusRule/" + fullname, "Secret/" + fullname, "Service/" + fullname, "ServiceAccount/" + fullname},
		configOK: "1 target(s), 1 pool(s), 0 pgbouncer(s), 0 app(s), 0 auth module(s)",
		check: func(t *testing.T, o *Objects) {
			if o.PrometheusRules[0].Labels["release"] != "kube-prometheus-stack" {
				t.Errorf("PrometheusRule: label release missing: %v", o.PrometheusRules[0].Labels)
			}
		},
	},
}

// render lints, renders and strictly decodes one value set.
func render(t *testing.T, file string) (*Rendered, *Objects) {
	t.Helper()
	vals, err := ReadValues(file)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range Lint(vals) {
		// INFO is advice such as "icon is recommended"; warnings and errors fail.
		if m.Severity > 1 {
			t.Errorf("helm lint -f %s: %v", file, m)
		}
	}
	r, err := Render(vals)
	if err != nil {
		t.Fatalf("helm template -f %s: %v", file, err)
	}
	o, err := DecodeAll(r)
	if err != nil {
		t.Fatalf("helm template -f %s: %v", file, err)
	}
	return r, o
}

// TestValueSets renders every value set, decodes every object strictly into its Kubernetes or
// Prometheus Operator type, and checks what each must contain and how the objects refer to
// each other.
func TestValueSets(t *testing.T) {
	for _, vs := range valueSets {
		t.Run(strings.TrimSuffix(strings.TrimPrefix(vs.file, "ci/"), "-values.yaml"), func(t *testing.T) {
			r, o := render(t, vs.file)
			if got := r.Kinds(); !slices.Equal(got, vs.objects) {
				t.Fatalf("rendered %v\nwant     %v", got, vs.objects)
			}
			t.Logf("%s decodes into %s", vs.file, strings.Join(r.Kinds(), ", "))
			checkPod(t, o)
			checkReferences(t, o)
			checkMonitors(t, o)
			vs.check(t, o)
			if !strings.Contains(r.Notes, fullname) {
				t.Errorf("NOTES.txt does not name the release's objects:\n%s", r.Notes)
			}
		})
	}
}

// checkPod: the hardened pod every value set must get.
func checkPod(t *testing.T, o *Objects) {
	t.Helper()
	pod, err := o.PodSpec()
	if err != nil {
		t.Fatal(err)
	}
	ps := pod.Spec.SecurityContext
	if ps == nil || ps.RunAsNonRoot == nil || !*ps.RunAsNonRoot || ps.SeccompProfile == nil || ps.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("pod securityContext: want runAsNonRoot and seccomp RuntimeDefault, got %+v", ps)
	}
	if pod.Spec.AutomountServiceAccountToken == nil || *pod.Spec.AutomountServiceAccountToken {
		t.Errorf("the exporter needs no Kubernetes API: automountServiceAccountToken should be false")
	}
	c := exporterContainer(t, o)
	sc := c.SecurityContext
	if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || sc.AllowPrivilegeEscalation == nil ||
		*sc.AllowPrivilegeEscalation || sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("container securityContext: want read-only root, no privilege escalation, all capabilities dropped, got %+v", sc)
	}
	for name, probe := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
		if probe == nil || probe.HTTPGet == nil || probe.HTTPGet.Path != "/-/healthy" || probe.HTTPGet.Port.String() != "http" {
			t.Errorf("%s probe: want GET /-/healthy on port http, got %+v", name, probe)
		}
	}
	if c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() || c.Resources.Requests.Cpu().IsZero() {
		t.Errorf("resources: want memory request and limit, CPU request, got %+v", c.Resources)
	}
	if len(c.Ports) != 1 || c.Ports[0].Name != "http" || c.Ports[0].ContainerPort != 9930 {
		t.Errorf("ports: want http 9930, got %+v", c.Ports)
	}
	wantArgs(t, c, "--web.listen-address=:9930")
}

// checkReferences: selectors select, and every ConfigMap and Secret a pod uses is rendered
// (or is the existing Secret named in the values).
func checkReferences(t *testing.T, o *Objects) {
	t.Helper()
	pod, _ := o.PodSpec()
	podLabels := labels.Set(pod.Labels)
	for _, w := range o.Deployments {
		if !labels.SelectorFromSet(w.Spec.Selector.MatchLabels).Matches(podLabels) {
			t.Errorf("Deployment selector %v does not select its pods %v", w.Spec.Selector.MatchLabels, pod.Labels)
		}
	}
	for _, s := range o.StatefulSets {
		if !labels.SelectorFromSet(s.Spec.Selector.MatchLabels).Matches(podLabels) {
			t.Errorf("StatefulSet selector %v does not select its pods %v", s.Spec.Selector.MatchLabels, pod.Labels)
		}
	}
	if len(o.Services) != 1 {
		t.Fatalf("want one Service, got %d", len(o.Services))
	}
	svc := o.Services[0]
	if !labels.SelectorFromSet(svc.Spec.Selector).Matches(podLabels) {
		t.Errorf("Service selector %v does not select the pods %v", svc.Spec.Selector, pod.Labels)
	}
	c := exporterContainer(t, o)
	for _, p := range svc.Spec.Ports {
		if !slices.ContainsFunc(c.Ports, func(cp corev1.ContainerPort) bool { return cp.Name == p.TargetPort.String() }) {
			t.Errorf("Service port %s targets %s, which the container does not have", p.Name, p.TargetPort.String())
		}
	}
	if pod.Spec.ServiceAccountName != fullname || len(o.ServiceAccounts) != 1 || o.ServiceAccounts[0].Name != fullname {
		t.Errorf("pod runs as ServiceAccount %q, rendered %d", pod.Spec.ServiceAccountName, len(o.ServiceAccounts))
	}
	for _, v := range pod.Spec.Volumes {
		switch {
		case v.ConfigMap != nil && o.ConfigMap(v.ConfigMap.Name) == nil:
			t.Errorf("volume %s: ConfigMap %s is not rendered", v.Name, v.ConfigMap.Name)
		case v.Secret != nil && secretData(o, v.Secret.SecretName) == nil && !isExistingSecret(v.Secret.SecretName):
			t.Errorf("volume %s: Secret %s is not rendered", v.Name, v.Secret.SecretName)
		}
	}
	for _, e := range c.Env {
		if ref := e.ValueFrom; ref != nil && ref.SecretKeyRef != nil && !isExistingSecret(ref.SecretKeyRef.Name) {
			if _, ok := secretData(o, ref.SecretKeyRef.Name)[ref.SecretKeyRef.Key]; !ok {
				t.Errorf("env %s: Secret %s has no key %s", e.Name, ref.SecretKeyRef.Name, ref.SecretKeyRef.Key)
			}
		}
	}
	for _, m := range c.VolumeMounts {
		if volume(pod, m.Name) == nil {
			t.Errorf("volumeMount %s has no volume", m.Name)
		}
	}
}

// checkMonitors: the ServiceMonitor finds the Service and its port; probe endpoints relabel
// instance to the target.
func checkMonitors(t *testing.T, o *Objects) {
	t.Helper()
	svc := o.Services[0]
	for _, sm := range o.ServiceMonitors {
		if !labels.SelectorFromSet(sm.Spec.Selector.MatchLabels).Matches(labels.Set(svc.Labels)) ||
			!slices.Contains(sm.Spec.NamespaceSelector.MatchNames, svc.Namespace) {
			t.Errorf("ServiceMonitor %s does not select Service %s/%s", sm.Name, svc.Namespace, svc.Name)
		}
		for _, ep := range sm.Spec.Endpoints {
			if !slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == ep.Port }) {
				t.Errorf("ServiceMonitor endpoint port %q is not a port of the Service", ep.Port)
			}
			if ep.Path == "/probe" && !slices.ContainsFunc(ep.RelabelConfigs, func(r monitoringv1.RelabelConfig) bool {
				return r.TargetLabel == "instance" && slices.Equal(r.SourceLabels, []monitoringv1.LabelName{"__param_target"})
			}) {
				t.Errorf("probe endpoint %v does not set instance from __param_target", ep.Params)
			}
		}
	}
}

// TestRejectedValues: values that cannot work fail `helm template` with a message that names
// what to set, rather than deploying an exporter that watches nothing.
func TestRejectedValues(t *testing.T) {
	for _, tc := range []struct {
		name, values, want string
	}{
		{"defaults: nothing to watch", ``, "nothing to watch: set secret.data.dsn"},
		{"unknown key", "secret: {data: {dsn: x}}\nserviceMonitor: {enable: true}", "additional properties 'enable' not allowed"},
		{"threshold that is not a number", "secret: {data: {dsn: x}}\nprometheusRule: {thresholds: {utilizationAlertRatio: '0.8 or vector(1)'}}", "utilizationAlertRatio"},
		{"multiTarget without config", "secret: {data: {dsn: x}}\nmultiTarget: {enabled: true}", "multiTarget.enabled needs config.targets"},
		{"shards without multiTarget", "config: {targets: [{name: a, dsn: 'postgres://a/b'}]}\nmultiTarget: {shards: 2}", "multiTarget.shards above 1 needs multiTarget.enabled"},
		{"podMonitor without selector", "secret: {data: {dsn: x}}\npodMonitor: {enabled: true}", "podMonitor.enabled needs podMonitor.selector"},
		{"DSN key missing from the Secret", "secret: {data: {password: x}}", "nothing to watch: set secret.data.dsn"},
		{"unknown alert disabled", "secret: {data: {dsn: x}}\nprometheusRule: {enabled: true, disabledAlerts: [DbPoolNope]}", `no alert named "DbPoolNope"`},
		{"config with appUrls", "config: {targets: [{name: a, dsn: 'postgres://a/b'}]}\nappUrls: ['http://a:1/x']", "list app endpoints under config.apps"},
		{"probing a name the config does not have", "config: {targets: [{name: a, dsn: 'postgres://a/b'}]}\nmultiTarget: {enabled: true, targets: [a, b]}", `"b" is not a name under config.targets`},
		{"unknown DB_ setting", "secret: {data: {dsn: x}}\npoolSettings: {DB_POOL_SIZ: '3'}", "DB_POOL_SIZ"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vals := map[string]any{}
			if err := yaml.Unmarshal([]byte(tc.values), &vals); err != nil {
				t.Fatal(err)
			}
			_, err := Render(vals)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("values %q: got error %v, want one containing %q", tc.values, err, tc.want)
			}
		})
	}
}

// TestDecodingIsStrict: the decoding that every value set passes does refuse a field its type
// does not have, a misspelled one, and a kind it does not know.
func TestDecodingIsStrict(t *testing.T) {
	r, _ := render(t, "ci/single-values.yaml")
	var deployment Manifest
	for _, m := range r.Manifests {
		if m.Kind == "Deployment" {
			deployment = m
		}
	}
	for _, tc := range []struct{ name, from, to string }{
		{"unknown field", "replicas: 1", "replicas: 1\n  replicaz: 1"},
		{"misspelled field in the pod", "readOnlyRootFilesystem: true", "readOnlyRootFileSystem: true"},
		{"duplicate field", "replicas: 1", "replicas: 1\n  replicas: 2"},
		{"unknown kind", "kind: Deployment", "kind: Deploymnet"},
	} {
		m := deployment
		if !strings.Contains(m.YAML, tc.from) {
			t.Fatalf("%s: the rendered Deployment has no %q", tc.name, tc.from)
		}
		m.YAML = strings.Replace(m.YAML, tc.from, tc.to, 1)
		if _, err := Decode(m); err == nil {
			t.Errorf("%s: decoded without error", tc.name)
		} else {
			t.Logf("%s: %v", tc.name, err)
		}
	}
}

func exporterContainer(t *testing.T, o *Objects) *corev1.Container {
	t.Helper()
	pod, err := o.PodSpec()
	if err != nil {
		t.Fatal(err)
	}
	if len(pod.Spec.Containers) != 1 || pod.Spec.Containers[0].Name != "exporter" {
		t.Fatalf("want one container named exporter, got %d", len(pod.Spec.Containers))
	}
	return &pod.Spec.Containers[0]
}

func wantArgs(t *testing.T, c *corev1.Container, want ...string) {
	t.Helper()
	for _, a := range want {
		if !slices.Contains(c.Args, a) {
			t.Errorf("args %q: %s missing", c.Args, a)
		}
	}
}

func wantEnv(t *testing.T, c *corev1.Container, name, value string) {
	t.Helper()
	for _, e := range c.Env {
		if e.Name == name && e.Value == value {
			return
		}
	}
	t.Errorf("env: want %s=%s, got %+v", name, value, c.Env)
}

func wantSecretEnv(t *testing.T, c *corev1.Container, name, secret, key string) {
	t.Helper()
	for _, e := range c.Env {
		if e.Name == name && e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil &&
			e.ValueFrom.SecretKeyRef.Name == secret && e.ValueFrom.SecretKeyRef.Key == key {
			return
		}
	}
	t.Errorf("env: want %s from Secret %s key %s, got %+v", name, secret, key, c.Env)
}

func envNames(c *corev1.Container) []string {
	var out []string
	for _, e := range c.Env {
		out = append(out, e.Name)
	}
	return out
}

func volume(pod *corev1.PodTemplateSpec, name string) *corev1.Volume {
	for i := range pod.Spec.Volumes {
		if pod.Spec.Volumes[i].Name == name {
			return &pod.Spec.Volumes[i]
		}
	}
	return nil
}

// existingSecrets are the Secrets the value sets name as managed elsewhere, with the content
// the exporter test gives them.
var existingSecrets = map[string]map[string]string{
	"orders-db-monitor": {"monitor-dsn": "postgres://dbpool_monitor:not-a-real-password@orders-db.db.svc:5432/orders"},
}

func isExistingSecret(name string) bool { _, ok := existingSecrets[name]; return ok }

// secretData returns the data of a rendered Secret, or nil.
func secretData(o *Objects, name string) map[string][]byte {
	for _, s := range o.Secrets {
		if s.Name == name {
			return s.Data
		}
	}
	return nil
}

// probedTargets returns the target parameter of each /probe endpoint, in order.
func probedTargets(sm *monitoringv1.ServiceMonitor) []string {
	var out []string
	for _, ep := range sm.Spec.Endpoints {
		if ep.Path == "/probe" {
			out = append(out, strings.Join(ep.Params["target"], ","))
		}
	}
	return out
}

// TestAppVersionIsTheExporters: the chart's appVersion (the default image tag) is the
// version in VERSION, so that a release bumps both.
func TestAppVersionIsTheExporters(t *testing.T) {
	version, err := os.ReadFile(filepath.Join(RepoRoot(), "VERSION"))
	if err != nil {
		t.Fatal(err)
	}
	chrt, err := loader.LoadDir(ChartDir())
	if err != nil {
		t.Fatal(err)
	}
	if want := strings.TrimSpace(string(version)); chrt.Metadata.AppVersion != want {
		t.Errorf("charts/dbpool-exporter/Chart.yaml: appVersion %q, VERSION says %q: set appVersion to it (and raise the chart's version)",
			chrt.Metadata.AppVersion, want)
	}
}
