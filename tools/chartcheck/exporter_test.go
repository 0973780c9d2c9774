package chartcheck

import (
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// envFromConfigMaps are the ConfigMaps the value sets name as the application's own, with
// the content the test gives them.
var envFromConfigMaps = map[string]map[string]string{
	"api-settings": {"DB_POOL_SIZE": "8", "DB_MAX_OVERFLOW": "4", "DB_POOL_TIMEOUT": "10", "DB_POOL_PRE_PING": "true"},
}

// runnablePod is a rendered exporter pod made runnable on this machine, the way the kubelet
// would run it: ConfigMaps and Secrets written where their volumes are mounted (a directory
// of the test standing in for each mount path), the environment resolved from env, envFrom
// and secretKeyRef, and the listen address moved to a free loopback port.
type runnablePod struct {
	args   []string
	env    []string
	listen string
	pod    *corev1.PodTemplateSpec
}

func materialize(t *testing.T, o *Objects) runnablePod {
	t.Helper()
	pod, err := o.PodSpec()
	if err != nil {
		t.Fatal(err)
	}
	c := exporterContainer(t, o)
	if len(c.Command) != 0 {
		t.Fatalf("the container overrides the image's entrypoint: %q", c.Command)
	}
	dir := t.TempDir()
	mounts := map[string]string{} // mount path -> local directory
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = filepath.Join(dir, m.Name)
	}
	local := func(s string) string {
		for mountPath, d := range mounts {
			s = strings.ReplaceAll(s, mountPath, d)
		}
		return s
	}
	for _, m := range c.VolumeMounts {
		v := volume(pod, m.Name)
		var files map[string]string
		switch {
		case v.ConfigMap != nil:
			files = o.ConfigMap(v.ConfigMap.Name).Data
		case v.Secret != nil:
			files = secretFiles(t, o, v.Secret.SecretName)
		default:
			t.Fatalf("volume %s: chartcheck knows ConfigMap and Secret volumes only", v.Name)
		}
		if err := os.MkdirAll(mounts[m.MountPath], 0o700); err != nil {
			t.Fatal(err)
		}
		for name, content := range files {
			// A config file names other mounted files (password_file) by their path in the pod.
			if err := os.WriteFile(filepath.Join(mounts[m.MountPath], name), []byte(local(content)), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}

	env := map[string]string{}
	for _, from := range c.EnvFrom {
		if from.ConfigMapRef == nil || envFromConfigMaps[from.ConfigMapRef.Name] == nil {
			t.Fatalf("envFrom %+v: no fixture for it", from)
		}
		for k, v := range envFromConfigMaps[from.ConfigMapRef.Name] {
			env[k] = v
		}
	}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			env[e.Name] = e.Value
		case e.ValueFrom.SecretKeyRef != nil:
			v, ok := secretFiles(t, o, e.ValueFrom.SecretKeyRef.Name)[e.ValueFrom.SecretKeyRef.Key]
			if !ok {
				t.Fatalf("env %s: Secret %s has no key %s", e.Name, e.ValueFrom.SecretKeyRef.Name, e.ValueFrom.SecretKeyRef.Key)
			}
			env[e.Name] = v
		default:
			t.Fatalf("env %s: chartcheck resolves values and secretKeyRef only", e.Name)
		}
	}
	r := runnablePod{pod: pod, listen: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	for k, v := range env {
		r.env = append(r.env, k+"="+v)
	}
	listen := fmt.Sprintf("--web.listen-address=:%d", c.Ports[0].ContainerPort)
	if !slices.Contains(c.Args, listen) {
		t.Fatalf("args %q: no %s", c.Args, listen)
	}
	for _, a := range c.Args {
		if a == listen {
			a = "--web.listen-address=" + r.listen
		}
		r.args = append(r.args, local(a))
	}
	return r
}

// secretFiles returns a Secret's content: the rendered one's, or the fixture of an existing one.
func secretFiles(t *testing.T, o *Objects, name string) map[string]string {
	t.Helper()
	if data, ok := existingSecrets[name]; ok {
		return data
	}
	data := secretData(o, name)
	if data == nil {
		t.Fatalf("Secret %s is neither rendered nor an existing one of the value sets", name)
	}
	out := map[string]string{}
	for k, v := range data {
		out[k] = string(v)
	}
	return out
}

// TestExporterRunsRenderedPod runs the real exporter as each value set's pod would: its
// arguments and environment pass `--config.check` (every flag exists, every DB_* value and the
// configuration file are valid), its liveness and readiness probes answer 200, and every
// endpoint of the ServiceMonitor answers 200, so every probed name is a target the exporter
// knows (an unknown name answers 400). The targets are not reachable from here: the probes
// answer in time with dbpool_up 0.
func TestExporterRunsRenderedPod(t *testing.T) {
	bin := exporterBinary(t)
	for _, vs := range valueSets {
		t.Run(strings.TrimSuffix(strings.TrimPrefix(vs.file, "ci/"), "-values.yaml"), func(t *testing.T) {
			_, o := render(t, vs.file)
			r := materialize(t, o)

			cmd := exec.Command(bin, append(slices.Clone(r.args), "--config.check")...)
			cmd.Env = r.env
			out, err := cmd.CombinedOutput()
			if err != nil || !strings.Contains(string(out), "configuration OK: "+vs.configOK) {
				t.Fatalf("dbpool_exporter --config.check with the pod's arguments: %v\n%s\nwant configuration OK: %s", err, out, vs.configOK)
			}
			t.Logf("--config.check: %s", strings.TrimSpace(string(out)))

			p := start(t, "exporter", bin, r.env, r.args...)
			c := exporterContainer(t, o)
			for name, probe := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
				u := "http://" + r.listen + probe.HTTPGet.Path
				waitFor(t, name+" probe "+u, []*process{p}, func() string {
					code, body, err := get(u, 3*time.Second)
					if err != nil || code != 200 {
						return fmt.Sprintf("%d %q %v", code, body, err)
					}
					return ""
				})
			}
			for _, sm := range o.ServiceMonitors {
				for _, ep := range sm.Spec.Endpoints {
					u := "http://" + r.listen + ep.Path
					if len(ep.Params) > 0 {
						u += "?" + url.Values(ep.Params).Encode()
					}
					code, body, err := get(u, 3*time.Second)
					want := "dbpool_exporter_build_info"
					if ep.Path == "/probe" {
						want = "dbpool_up{"
					}
					if err != nil || code != 200 || !strings.Contains(body, want) {
						t.Errorf("ServiceMonitor endpoint %s: %d, err %v, body without %s:\n%.500s", u, code, err, want, body)
					}
				}
			}
		})
	}
}
