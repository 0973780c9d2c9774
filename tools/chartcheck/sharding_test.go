package chartcheck

import (
	"crypto/md5"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"sigs.k8s.io/yaml"
)

// TestShardingServiceMonitor runs the fleet value set's ServiceMonitor through a real
// Prometheus: its endpoints become scrape jobs the way the Prometheus Operator generates them
// (the chart's relabelings after the operator's own, which set pod and container), the two
// StatefulSet pods are two real exporters with the rendered pod's arguments, discovered for
// every endpoint as Kubernetes service discovery would. Prometheus' /api/v1/targets then shows
// which pod it scrapes for each target: exactly one, the one whose ordinal is the hashmod of
// the target's name, with the target's name as instance and no pod label.
func TestShardingServiceMonitor(t *testing.T) {
	bin := exporterBinary(t)
	promBin := program(t, "PROMETHEUS", "prometheus")
	_, o := render(t, "ci/fleet-values.yaml")
	shards := int(*o.StatefulSets[0].Spec.Replicas)
	sm := o.ServiceMonitors[0]

	pods := make([]string, shards) // pod name -> address, by ordinal
	var procs []*process
	for i := range shards {
		r := materialize(t, o)
		procs = append(procs, start(t, fmt.Sprintf("exporter-%d", i), bin, r.env, r.args...))
		pods[i] = r.listen
	}

	dir := t.TempDir()
	cfg := prometheusConfig(t, sm, pods)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	promAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	prom := start(t, "prometheus", promBin, []string{"HOME=" + dir},
		"--config.file="+filepath.Join(dir, "prometheus.yml"), "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+promAddr)
	procs = append(procs, prom)

	names := probedTargets(sm)
	var kept map[string]target // target name -> the one active scrape of it
	waitFor(t, "Prometheus scraping every target through one exporter", procs, func() string {
		active, dropped, err := targets(promAddr)
		if err != nil {
			return err.Error()
		}
		kept = map[string]target{}
		droppedOf := map[string]int{}
		for _, d := range dropped {
			droppedOf[d.DiscoveredLabels["__param_target"]]++
		}
		for _, a := range active {
			name := a.DiscoveredLabels["__param_target"]
			if name == "" {
				continue // the exporter's own /metrics, scraped on both pods
			}
			if prev, dup := kept[name]; dup {
				return fmt.Sprintf("target %s scraped through two pods: %s and %s", name, prev.ScrapeURL, a.ScrapeURL)
			}
			kept[name] = a
		}
		for _, name := range names {
			a, ok := kept[name]
			switch {
			case !ok:
				return fmt.Sprintf("target %s: no active scrape", name)
			case droppedOf[name] != shards-1:
				return fmt.Sprintf("target %s: %d pods dropped, want %d", name, droppedOf[name], shards-1)
			case a.Health != "up":
				return fmt.Sprintf("target %s through %s: health %q %s", name, a.ScrapeURL, a.Health, a.LastError)
			}
		}
		return ""
	})

	perPod := map[string][]string{}
	for _, name := range names {
		a := kept[name]
		pod := a.DiscoveredLabels["__meta_kubernetes_pod_name"]
		want := fmt.Sprintf("%s-%d", fullname, hashmod(name, shards))
		if pod != want || !strings.Contains(a.ScrapeURL, pods[hashmod(name, shards)]) {
			t.Errorf("target %s scraped through %s (%s), want %s: the ordinal is hashmod(name) %% %d", name, pod, a.ScrapeURL, want, shards)
		}
		if a.Labels["instance"] != name || a.Labels["pod"] != "" || a.Labels["container"] != "" {
			t.Errorf("target %s: labels %v, want instance=%s and no pod or container", name, a.Labels, name)
		}
		perPod[pod] = append(perPod[pod], name)
	}
	if len(perPod) != shards {
		t.Errorf("targets per pod %v: every shard should get some of the %d targets", perPod, len(names))
	}
	for pod, ts := range perPod {
		t.Logf("%s probes %d targets: %s", pod, len(ts), strings.Join(ts, ", "))
	}
}

// hashmod is Prometheus' hashmod relabel action on one label value: the low 8 bytes of the
// value's MD5, big-endian, modulo m.
func hashmod(value string, m int) int {
	sum := md5.Sum([]byte(value))
	return int(binary.BigEndian.Uint64(sum[8:]) % uint64(m))
}

// prometheusConfig turns the ServiceMonitor's endpoints into scrape jobs that discover every
// pod, as the Prometheus Operator's generated configuration does. Intervals are 1s so that the
// test does not wait for the ServiceMonitor's 15s.
func prometheusConfig(t *testing.T, sm *monitoringv1.ServiceMonitor, pods []string) []byte {
	t.Helper()
	type relabel struct {
		SourceLabels []string `json:"source_labels,omitempty"`
		Separator    *string  `json:"separator,omitempty"`
		TargetLabel  string   `json:"target_label,omitempty"`
		Regex        string   `json:"regex,omitempty"`
		Modulus      uint64   `json:"modulus,omitempty"`
		Replacement  *string  `json:"replacement,omitempty"`
		Action       string   `json:"action,omitempty"`
	}
	type staticConfig struct {
		Targets []string          `json:"targets"`
		Labels  map[string]string `json:"labels"`
	}
	type job struct {
		JobName        string              `json:"job_name"`
		MetricsPath    string              `json:"metrics_path"`
		Params         map[string][]string `json:"params,omitempty"`
		ScrapeInterval string              `json:"scrape_interval"`
		ScrapeTimeout  string              `json:"scrape_timeout"`
		StaticConfigs  []staticConfig      `json:"static_configs"`
		RelabelConfigs []relabel           `json:"relabel_configs"`
	}
	var jobs []job
	for i, ep := range sm.Spec.Endpoints {
		j := job{
			JobName:     fmt.Sprintf("serviceMonitor/%s/%s/%d", sm.Namespace, sm.Name, i),
			MetricsPath: ep.Path, Params: ep.Params, ScrapeInterval: "1s", ScrapeTimeout: "1s",
			// The operator's own relabelings come first; these are the ones the chart's act on.
			RelabelConfigs: []relabel{
				{SourceLabels: []string{"__meta_kubernetes_pod_name"}, TargetLabel: "pod"},
				{SourceLabels: []string{"__meta_kubernetes_pod_container_name"}, TargetLabel: "container"},
			},
		}
		for ordinal, addr := range pods {
			j.StaticConfigs = append(j.StaticConfigs, staticConfig{Targets: []string{addr}, Labels: map[string]string{
				"__meta_kubernetes_pod_name":           fmt.Sprintf("%s-%d", sm.Name, ordinal),
				"__meta_kubernetes_pod_container_name": "exporter",
			}})
		}
		for _, r := range ep.RelabelConfigs {
			var src []string
			for _, l := range r.SourceLabels {
				src = append(src, string(l))
			}
			j.RelabelConfigs = append(j.RelabelConfigs, relabel{
				SourceLabels: src, Separator: r.Separator, TargetLabel: r.TargetLabel, Regex: r.Regex,
				Modulus: uint64(r.Modulus), Replacement: r.Replacement, Action: strings.ToLower(r.Action),
			})
		}
		jobs = append(jobs, j)
	}
	out, err := yaml.Marshal(map[string]any{"scrape_configs": jobs})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

type target struct {
	DiscoveredLabels map[string]string `json:"discoveredLabels"`
	Labels           map[string]string `json:"labels"`
	ScrapeURL        string            `json:"scrapeUrl"`
	Health           string            `json:"health"`
	LastError        string            `json:"lastError"`
}

// targets returns Prometheus' active and dropped targets.
func targets(addr string) (active, dropped []target, err error) {
	code, body, err := get("http://"+addr+"/api/v1/targets?state=any", 3*time.Second)
	if err != nil || code != 200 {
		return nil, nil, fmt.Errorf("/api/v1/targets: %d %v", code, err)
	}
	var resp struct {
		Data struct {
			Active  []target `json:"activeTargets"`
			Dropped []target `json:"droppedTargets"`
		} `json:"data"`
	}
	if err := json.Unmarshal([]byte(body), &resp); err != nil {
		return nil, nil, err
	}
	return resp.Data.Active, resp.Data.Dropped, nil
}
