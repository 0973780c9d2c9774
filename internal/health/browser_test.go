package health

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dbpool/dbpool_exporter/tools/childproc"
	"github.com/dbpool/dbpool_exporter/tools/pgtest"
	"github.com/dbpool/dbpool_exporter/tools/testbin"
)

// xssName is an application_name a hostile client could choose; unmatched backends become
// pool "application_name:<application_name>", which the page must show as text.
const xssName = `<script>alert(1)</script>`

// chromiumPath finds Debian's chromium. Missing is a failure, not a skip: make test installs
// it (scripts/install-deps.sh --with-chromium).
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "/usr/bin/chromium"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("chromium not found: install it with scripts/install-deps.sh --with-chromium (make test does)")
	return ""
}

// runChromium runs headless Chromium with the flags for a closed network and a throwaway
// profile, and returns its stdout.
func runChromium(t *testing.T, bin string, args ...string) string {
	t.Helper()
	profile := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir=" + profile}
	// Run, not exec: on a timeout it kills Chromium's whole process group, its helpers too.
	var out testbin.Buffer
	if stderr, err := childproc.Run(ctx, childproc.Spec{Path: bin, Args: append(base, args...), Stdout: &out}); err != nil {
		t.Fatalf("chromium %v: %v\n%s", args, err, stderr)
	}
	return out.String()
}

// TestStatusPageInChromium loads /pools in headless Chromium during a saturated scenario: a
// 2/1 pool asked for 30 requests/s of 300 ms has all 3 connections busy.
func TestStatusPageInChromium(t *testing.T) {
	chromium := chromiumPath(t)
	s := startScenario(t, pgtest.Options{}, 30*time.Second,
		regexPool("api", "api", 2, 1, 1),
		regexPool("reports", "reports", 10, 10, 1))
	busy := simConfig("api", 1, 2, 1, 30, 300*time.Millisecond)
	busy.Pool.Timeout = 200 * time.Millisecond
	s.simulate(t, busy)
	s.simulate(t, simConfig("reports", 1, 10, 10, 1, 10*time.Millisecond))

	cfg, err := pgx.ParseConfig(s.appDSN)
	if err != nil {
		t.Fatal(err)
	}
	cfg.RuntimeParams["application_name"] = xssName
	conn, err := pgx.ConnectConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())

	s.sample()
	waitFor(t, 20*time.Second, "pool api saturated while the others are seen", func() bool {
		api, ok1 := s.findReport(t, "api")
		_, ok2 := s.findReport(t, "reports")
		_, ok3 := s.findReport(t, "application_name:"+xssName)
		return ok1 && ok2 && ok3 && api.State == StateSaturated
	})
	// Freeze the history so that the browser sees the state the API just reported.
	s.stopSampler()
	logReport(t, s.report(t, "api"))

	page := s.api.URL + PagePath
	resp, err := http.Get(page)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if strings.Contains(string(raw), "<script") || !strings.Contains(string(raw), "application_name:&lt;script&gt;alert(1)&lt;/script&gt;") {
		t.Errorf("the page does not escape the application name:\n%s", raw)
	}

	dom := runChromium(t, chromium, "--dump-dom", page)
	if strings.Contains(dom, "<script") {
		t.Errorf("the DOM has a script element: the pool name was not escaped")
	}
	for pool, state := range map[string]State{"api": StateSaturated, "reports": StateOK} {
		row := domRow(dom, pool)
		if row == "" {
			t.Fatalf("no row for pool %s in the DOM:\n%s", pool, dom)
		}
		for _, want := range []string{`class="pool state-` + string(state) + `"`, `<span class="badge badge-` + string(state) + `">` + string(state) + `</span>`} {
			if !strings.Contains(row, want) {
				t.Errorf("pool %s row lacks %s:\n%s", pool, want, row)
			}
		}
	}
	if row := domRow(dom, "application_name:&lt;script&gt;alert(1)&lt;/script&gt;"); !strings.Contains(row, "<strong>application_name:&lt;script&gt;alert(1)&lt;/script&gt;</strong>") {
		t.Errorf("the hostile pool's row does not show its name as text:\n%s", row)
	}

	dir := filepath.Join(testbin.RepoRoot(), "testdata-artifacts")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	shot := filepath.Join(dir, "pools-saturated.png")
	_ = os.Remove(shot)
	runChromium(t, chromium, "--hide-scrollbars", "--window-size=1600,1000", "--screenshot="+shot, page)
	png, err := os.ReadFile(shot)
	if err != nil || !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) || len(png) < 10_000 {
		t.Fatalf("screenshot %s: %d bytes, %v", shot, len(png), err)
	}
	t.Logf("screenshot of /pools during the saturated scenario: %s", shot)
}

// domRow returns the <tr> of a pool in serialized HTML, or "".
func domRow(dom, pool string) string {
	i := strings.Index(dom, `data-pool="`+pool+`"`)
	if i < 0 {
		return ""
	}
	start := strings.LastIndex(dom[:i], "<tr")
	end := strings.Index(dom[i:], "</tr>")
	if start < 0 || end < 0 {
		return ""
	}
	return dom[start : i+end]
}
