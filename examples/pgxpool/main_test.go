package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dbpool/dbpool_exporter/tools/pgtest"
	"github.com/dbpool/dbpool_exporter/tools/testbin"
)

// TestService exhausts the example's one-connection pool: a request that holds the
// connection, one that gives up waiting (503), and /metrics telling both stories.
func TestService(t *testing.T) {
	pg := pgtest.StartT(t, pgtest.Options{})
	h, closePool, err := newService(context.Background(), pg.SuperuserDSN(""), options{
		maxConns: 1, acquireTimeout: 100 * time.Millisecond, target: "db", pool: "example",
	})
	if err != nil {
		t.Fatal(err)
	}
	defer closePool()
	srv := httptest.NewServer(h)
	defer srv.Close()

	if code, body := testbin.Get(t, srv.URL+"/work"); code != http.StatusOK || body != "ok\n" {
		t.Fatalf("/work: %d %q", code, body)
	}
	if code, _ := testbin.Get(t, srv.URL+"/work?sleep=bad"); code != http.StatusBadRequest {
		t.Errorf("/work?sleep=bad: %d, want 400", code)
	}

	// Hold the only connection until the test is done with it; wait until /metrics shows it
	// in use, then a second request must give up after the 100 ms acquire timeout.
	holdCtx, release := context.WithCancel(context.Background())
	defer release()
	var wg sync.WaitGroup
	wg.Go(func() {
		req, _ := http.NewRequestWithContext(holdCtx, http.MethodGet, srv.URL+"/work?sleep=10", nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	})
	inUse := `dbpool_in_use_connections{pool="example",source="pgxpool",target="db"} 1`
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, m := testbin.Get(t, srv.URL+"/metrics"); strings.Contains(m, inUse) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the holding request never got the connection")
		}
	}
	if code, body := testbin.Get(t, srv.URL+"/work"); code != http.StatusServiceUnavailable {
		t.Fatalf("/work on an exhausted pool: %d %q, want 503", code, body)
	}
	_, metrics := testbin.Get(t, srv.URL+"/metrics")
	for _, want := range []string{
		`dbpool_checkout_timeouts_total{pool="example",source="pgxpool",target="db"} 1`,
		`dbpool_checkout_timeout_seconds{pool="example",source="pgxpool",target="db"} 0.1`,
		`dbpool_in_use_connections{pool="example",source="pgxpool",target="db"} 1`,
		`dbpool_pending_checkouts{pool="example",source="pgxpool",target="db"} 0`,
		`dbpool_max_connections{pool="example",source="pgxpool",target="db"} 1`,
		`dbpool_checkout_duration_seconds_bucket{pool="example",source="pgxpool",target="db",le="0.05"}`,
		`go_goroutines `,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// Cancelling the request cancels its query, which returns the connection.
	release()
	wg.Wait()
	if code, _ := testbin.Get(t, srv.URL+"/work"); code != http.StatusOK {
		t.Errorf("/work after the holder left: %d", code)
	}
}

func TestRunNeedsDatabaseURL(t *testing.T) {
	err := run(context.Background(), nil, func(string) string { return "" }, nil)
	if err == nil || !strings.Contains(err.Error(), "DATABASE_URL") {
		t.Errorf("run without DATABASE_URL: %v", err)
	}
}
