package chartcheck

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// TestDashboardEqualsShipped: the dashboard ConfigMap carries grafana/dbpool.json (compared as
// decoded JSON), labelled for Grafana's sidecar, for every value set that turns it on.
func TestDashboardEqualsShipped(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(RepoRoot(), "grafana", "dbpool.json"))
	if err != nil {
		t.Fatal(err)
	}
	var want any
	if err := json.Unmarshal(data, &want); err != nil {
		t.Fatalf("grafana/dbpool.json: %v", err)
	}
	for _, file := range []string{"ci/single-values.yaml", "ci/fleet-values.yaml"} {
		_, o := render(t, file)
		cm := o.ConfigMap(fullname + "-dashboard")
		if cm == nil {
			t.Fatalf("%s: no ConfigMap %s-dashboard", file, fullname)
		}
		if cm.Labels["grafana_dashboard"] != "1" {
			t.Errorf("%s: the dashboard ConfigMap lacks the sidecar's label grafana_dashboard=1: %v", file, cm.Labels)
		}
		if len(cm.Data) != 1 {
			t.Errorf("%s: the dashboard ConfigMap should hold one file, has %d", file, len(cm.Data))
		}
		var got any
		if err := json.Unmarshal([]byte(cm.Data["dbpool.json"]), &got); err != nil {
			t.Fatalf("%s: dbpool.json in the ConfigMap: %v", file, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: the ConfigMap's dbpool.json differs from grafana/dbpool.json: %s", file, resync)
		}
	}
	_, o := render(t, "ci/single-values.yaml")
	if cm := o.ConfigMap(fullname + "-dashboard"); cm.Annotations["grafana_folder"] != "Databases" {
		t.Errorf("dashboard.annotations not applied: %v", cm.Annotations)
	}
}
