package grafana

import (
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dbpool/dbpool_exporter/tools/childproc"
	"github.com/dbpool/dbpool_exporter/tools/testbin"
)

// livePrometheus is a real Prometheus (Debian's prometheus package) scraping the exporter
// every second, so that the dashboard's queries can be run the way Grafana runs them.
type livePrometheus struct {
	base string
	proc *childproc.Process
}

const livePrometheusConfig = `global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: dbpool
    static_configs:
      - targets: [%q]
`

func startPrometheus(t *testing.T, exporterAddr string) *livePrometheus {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatalf("prometheus not found: run `make deps` (installs Debian's prometheus package): %v", err)
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(livePrometheusConfig, exporterAddr)), 0o600); err != nil {
		t.Fatal(err)
	}
	proc, addr := testbin.StartServer(t, testbin.ServerSpec{
		Spec: childproc.Spec{Name: "prometheus", Path: bin},
		Args: func(addr string) []string {
			return []string{"--config.file=" + cfg, "--storage.tsdb.path=" + filepath.Join(dir, "data"), "--web.listen-address=" + addr}
		},
		ReadyPath: "/-/ready",
		Timeout:   30 * time.Second,
	})
	return &livePrometheus{base: "http://" + addr, proc: proc}
}

// query runs an instant query and returns the number of series in the result.
func (p *livePrometheus) query(expr string) (int, error) {
	body, err := httpGet(p.base + "/api/v1/query?" + url.Values{"query": {expr}}.Encode())
	if err != nil {
		return 0, err
	}
	var resp struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string            `json:"resultType"`
			Result     []json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &resp); err != nil {
		return 0, err
	}
	if resp.Status != "success" {
		return 0, fmt.Errorf("%s", resp.Error)
	}
	if resp.Data.ResultType != "vector" {
		return 0, fmt.Errorf("result type %s, want vector", resp.Data.ResultType)
	}
	return len(resp.Data.Result), nil
}

// waitSamples waits until Prometheus holds enough scrapes for rate() over the 1m that
// $__rate_interval stands for here.
func (p *livePrometheus) waitSamples(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	expr := fmt.Sprintf(`min(count_over_time(up{job="dbpool"}[1m])) >= %d and min(up{job="dbpool"}) == 1`, n)
	for {
		if got, err := p.query(expr); err == nil && got > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("Prometheus did not get %d good scrapes of the exporter in 60s; output:\n%s", n, p.proc.Output())
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// liveExpr is a dashboard query as Grafana sends it when All is selected for every variable:
// the variables' allValue, .+ for job and instance, .* for target and pool.
func liveExpr(expr string) (string, error) {
	out, err := substitute(expr, false)
	if err != nil {
		return "", err
	}
	r := strings.NewReplacer(`"$job"`, `".+"`, `"$instance"`, `".+"`, `"$target"`, `".*"`, `"$pool"`, `".*"`)
	return r.Replace(out), nil
}
