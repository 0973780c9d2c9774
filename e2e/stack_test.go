package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dbpool/dbpool_exporter/tools/testbin"
)

// ----- Webhook: the Alertmanager receiver.

// amAlert is one alert of an Alertmanager webhook notification (payload version 4).
type amAlert struct {
	Status      string            `json:"status"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
	StartsAt    time.Time         `json:"startsAt"`
}

type amNotification struct {
	Version     string            `json:"version"`
	Status      string            `json:"status"`
	Receiver    string            `json:"receiver"`
	GroupLabels map[string]string `json:"groupLabels"`
	Alerts      []amAlert         `json:"alerts"`
}

// receivedAlert is an alert as it arrived, with the time it arrived.
type receivedAlert struct {
	amAlert
	At time.Time
}

func (a receivedAlert) String() string {
	return fmt.Sprintf("%s %s{target=%q, pool=%q} at %s", a.Status, a.Labels["alertname"], a.Labels["target"], a.Labels["pool"],
		a.At.Format("15:04:05.000"))
}

type webhook struct {
	URL string

	mu     sync.Mutex
	alerts []receivedAlert
	errs   []string
}

// startWebhook serves the Alertmanager webhook on a free loopback port and records every alert.
func startWebhook(t *testing.T) *webhook {
	w := &webhook{}
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		var n amNotification
		err := json.NewDecoder(r.Body).Decode(&n)
		now := time.Now()
		w.mu.Lock()
		defer w.mu.Unlock()
		if err != nil {
			w.errs = append(w.errs, fmt.Sprintf("undecodable notification: %v", err))
			http.Error(rw, err.Error(), http.StatusBadRequest)
			return
		}
		for _, a := range n.Alerts {
			w.alerts = append(w.alerts, receivedAlert{amAlert: a, At: now})
		}
	}))
	t.Cleanup(srv.Close)
	w.URL = srv.URL + "/alerts"
	return w
}

// received returns the alerts received so far and any decoding errors.
func (w *webhook) received() ([]receivedAlert, []string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]receivedAlert(nil), w.alerts...), append([]string(nil), w.errs...)
}

// ----- Alertmanager.

const alertmanagerConfig = `route:
  receiver: test
  group_by: [alertname, target, pool]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: test
    webhook_configs:
      - url: %q
        send_resolved: true
`

func startAlertmanager(t *testing.T, bin, dir, webhookURL string) (*process, string) {
	t.Helper()
	amDir := filepath.Join(dir, "alertmanager")
	if err := os.Mkdir(amDir, 0o700); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(amDir, "alertmanager.yml")
	writeFile(t, cfg, fmt.Sprintf(alertmanagerConfig, webhookURL))
	return startServer(t, amDir, "alertmanager", bin, nil, "/-/ready", func(addr string) []string {
		return []string{
			"--config.file=" + cfg,
			"--storage.path=" + filepath.Join(amDir, "data"),
			"--web.listen-address=" + addr,
			"--cluster.listen-address=", // no clustering: no gossip port, no peers to wait for
			"--log.level=info",
		}
	})
}

// ----- Prometheus.

const prometheusConfig = `global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files: %s
alerting:
  alertmanagers:
    - static_configs:
        - targets: [%q]
scrape_configs:
  - job_name: dbpool
    static_configs:
      - targets: [%q]
`

type prometheus struct {
	proc                 *process
	addr                 string
	config               string // path of prometheus.yml
	amAddr, exporterAddr string
}

// startPrometheus starts Prometheus scraping the exporter, without rules yet (see loadRules).
func startPrometheus(t *testing.T, bin, dir, amAddr, exporterAddr string) *prometheus {
	t.Helper()
	promDir := filepath.Join(dir, "prometheus")
	if err := os.Mkdir(promDir, 0o700); err != nil {
		t.Fatal(err)
	}
	p := &prometheus{config: filepath.Join(promDir, "prometheus.yml"), amAddr: amAddr, exporterAddr: exporterAddr}
	p.writeConfig(t, "")
	p.proc, p.addr = startServer(t, promDir, "prometheus", bin, nil, "/-/ready", func(addr string) []string {
		return []string{
			"--config.file=" + p.config,
			"--storage.tsdb.path=" + filepath.Join(promDir, "data"),
			"--web.listen-address=" + addr,
			"--web.enable-lifecycle", // POST /-/reload
			"--log.level=info",
		}
	})
	return p
}

func (p *prometheus) writeConfig(t *testing.T, rulesFile string) {
	t.Helper()
	files := "[]"
	if rulesFile != "" {
		files = fmt.Sprintf("[%q]", rulesFile)
	}
	writeFile(t, p.config, fmt.Sprintf(prometheusConfig, files, p.amAddr, p.exporterAddr))
}

// loadRules adds rulesFile to the configuration and reloads it. Prometheus evaluates rules
// from the moment it starts, before its first scrape, when absent(dbpool_up) is true: the
// shipped 5m `for:` of DbPoolExporterTargetDown covers that gap, its shortened 5s copy may
// not on a busy machine. Loading the rules once scraping works is what a running Prometheus
// sees when the rules are deployed.
func (p *prometheus) loadRules(t *testing.T, rulesFile string) {
	t.Helper()
	p.writeConfig(t, rulesFile)
	resp, err := httpClient.Post("http://"+p.addr+"/-/reload", "", nil)
	if err != nil {
		t.Fatalf("Prometheus reload: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("Prometheus reload with the rules: HTTP %d: %s\n--- prometheus output (tail) ---\n%s", resp.StatusCode, body, p.proc.logTail(20))
	}
}

// api GETs a Prometheus HTTP API endpoint and decodes its data field into v.
func (p *prometheus) api(path string, params url.Values, v any) error {
	u := "http://" + p.addr + path
	if len(params) > 0 {
		u += "?" + params.Encode()
	}
	code, body, err := httpGet(u)
	if err != nil {
		return err
	}
	var resp struct {
		Status string          `json:"status"`
		Error  string          `json:"error"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(body, &resp); err != nil {
		return fmt.Errorf("%s: HTTP %d, %v: %.300s", path, code, err, body)
	}
	if resp.Status != "success" {
		return fmt.Errorf("%s: HTTP %d, %s", path, code, resp.Error)
	}
	return json.Unmarshal(resp.Data, v)
}

type promSample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

// query runs an instant query and returns the vector's samples.
func (p *prometheus) query(expr string) ([]promSample, error) {
	var data struct {
		ResultType string       `json:"resultType"`
		Result     []promSample `json:"result"`
	}
	if err := p.api("/api/v1/query", url.Values{"query": {expr}}, &data); err != nil {
		return nil, err
	}
	if data.ResultType != "vector" {
		return nil, fmt.Errorf("query %q: result type %s, want vector", expr, data.ResultType)
	}
	return data.Result, nil
}

type promAlert struct {
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
	State       string            `json:"state"`
	ActiveAt    time.Time         `json:"activeAt"`
	Value       string            `json:"value"`
}

func (a promAlert) String() string {
	return fmt.Sprintf("%s %s{target=%q, pool=%q} value %s since %s", a.State, a.Labels["alertname"], a.Labels["target"],
		a.Labels["pool"], a.Value, a.ActiveAt.Format("15:04:05"))
}

// alerts returns Prometheus' pending and firing alerts.
func (p *prometheus) alerts() ([]promAlert, error) {
	var data struct {
		Alerts []promAlert `json:"alerts"`
	}
	err := p.api("/api/v1/alerts", nil, &data)
	return data.Alerts, err
}

type promRule struct {
	Name      string `json:"name"`
	Type      string `json:"type"`
	Health    string `json:"health"`
	LastError string `json:"lastError"`
}

// rules returns the loaded rules of every group.
func (p *prometheus) rules() ([]promRule, error) {
	var data struct {
		Groups []struct {
			Rules []promRule `json:"rules"`
		} `json:"groups"`
	}
	if err := p.api("/api/v1/rules", nil, &data); err != nil {
		return nil, err
	}
	var out []promRule
	for _, g := range data.Groups {
		out = append(out, g.Rules...)
	}
	return out, nil
}

// activeAlertmanagers returns the Alertmanager URLs Prometheus sends alerts to.
func (p *prometheus) activeAlertmanagers() ([]string, error) {
	var data struct {
		Active []struct {
			URL string `json:"url"`
		} `json:"activeAlertmanagers"`
	}
	if err := p.api("/api/v1/alertmanagers", nil, &data); err != nil {
		return nil, err
	}
	var out []string
	for _, a := range data.Active {
		out = append(out, a.URL)
	}
	return out, nil
}

// ----- Rules.

var alertNameRe = regexp.MustCompile(`(?m)^[ \t]*- alert:[ \t]*(\S+)[ \t]*$`)

// writeShortRules copies the shipped rules file with shortened durations (see shortenRules)
// into dir and returns the copy's path and the names of its alerts.
func writeShortRules(t *testing.T, dir string) (path string, alerts []string) {
	t.Helper()
	src, err := os.ReadFile(filepath.Join(testbin.RepoRoot(), "alerts", "dbpool.rules.yml"))
	if err != nil {
		t.Fatal(err)
	}
	short, fors, ranges, err := shortenRules(string(src))
	if err != nil {
		t.Fatal(err)
	}
	// The shipped rules have `for:` on every alert and 5m windows in the checkout rules; if
	// nothing matched, the file's format changed and the test would wait minutes per alert.
	if fors == 0 || ranges == 0 {
		t.Fatalf("shortening alerts/dbpool.rules.yml changed %d `for:` durations and %d range windows; want both > 0", fors, ranges)
	}
	if withoutDurations(short) != withoutDurations(string(src)) {
		t.Fatal("shortening alerts/dbpool.rules.yml changed more than durations")
	}
	for _, m := range alertNameRe.FindAllStringSubmatch(string(src), -1) {
		alerts = append(alerts, m[1])
	}
	if len(alerts) == 0 {
		t.Fatal("no alerts in alerts/dbpool.rules.yml")
	}
	path = filepath.Join(dir, "dbpool.rules.yml")
	writeFile(t, path, short)
	t.Logf("rules: %d alerts, %d `for:` durations and %d range windows shortened", len(alerts), fors, ranges)
	return path, alerts
}

// ----- Exporter.

// exporterMetrics returns the dbpool_ samples of the exporter's /metrics, sorted, for
// failure messages.
func exporterMetrics(addr string) string {
	code, body, err := httpGet("http://" + addr + "/metrics")
	if err != nil {
		return fmt.Sprintf("(GET /metrics: %v)", err)
	}
	var lines []string
	for _, l := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(l, "dbpool_") {
			lines = append(lines, l)
		}
	}
	sort.Strings(lines)
	return fmt.Sprintf("HTTP %d\n%s", code, strings.Join(lines, "\n"))
}
