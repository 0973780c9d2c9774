package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dbpool/dbpool_exporter/bench/benchkit"
	"github.com/dbpool/dbpool_exporter/collector"
)

// meter probes the fleet through one exporter and reads what it costs.
type meter struct {
	o     options
	names []string
	admin *pgx.Conn
}

// snapshot is the exporter's footprint at one moment.
type snapshot struct {
	rssKiB    int
	heapBytes float64 // go_memstats_heap_inuse_bytes
	connected float64 // dbpool_exporter_connected_targets
	capDrops  float64 // dbpool_exporter_target_disconnects_total{reason="cap"}
	held      int     // monitoring connections the server sees
}

type result struct {
	setting
	before, connected, after snapshot
	probes                   int
	failed                   int
	cpu                      time.Duration
	latencies                []time.Duration
}

func (m *meter) measure(ctx context.Context, e *benchkit.Exporter, s setting) (result, error) {
	r := result{setting: s}
	base := strings.TrimSuffix(e.URL, "/metrics")
	client := &http.Client{Timeout: 30 * time.Second}
	var err error
	if r.before, err = m.snapshot(ctx, e, client); err != nil {
		return r, err
	}
	// Round 0 connects every target (up to the cap); one more lets allocations settle.
	for range 2 {
		if _, _, err := m.round(ctx, client, base); err != nil {
			return r, err
		}
	}
	if r.connected, err = m.snapshot(ctx, e, client); err != nil {
		return r, err
	}
	cpu0 := benchkit.ProcCPU(e.Pid())
	for range m.o.rounds {
		lat, failed, err := m.round(ctx, client, base)
		if err != nil {
			return r, err
		}
		r.latencies = append(r.latencies, lat...)
		r.failed += failed
		r.probes += len(m.names)
	}
	r.cpu = benchkit.ProcCPU(e.Pid()) - cpu0
	r.after, err = m.snapshot(ctx, e, client)
	return r, err
}

// round probes every target once, parallel probes at a time, and returns the probes' times
// and how many did not answer with dbpool_up 1.
func (m *meter) round(ctx context.Context, client *http.Client, base string) ([]time.Duration, int, error) {
	work := make(chan string)
	var (
		mu       sync.Mutex
		lat      []time.Duration
		failed   int
		firstErr error
	)
	var wg sync.WaitGroup
	for range m.o.parallel {
		wg.Go(func() {
			for name := range work {
				d, body, err := benchkit.ScrapeOnce(ctx, client, base+"/probe?target="+url.QueryEscape(name))
				mu.Lock()
				switch {
				case err != nil && firstErr == nil:
					firstErr = fmt.Errorf("probe %s: %w", name, err)
				case err == nil:
					lat = append(lat, d)
					if !bytes.Contains(body, []byte(fmt.Sprintf("dbpool_up{target=%q} 1", name))) {
						failed++
					}
				}
				mu.Unlock()
			}
		})
	}
	for _, name := range m.names {
		select {
		case work <- name:
		case <-ctx.Done():
		}
	}
	close(work)
	wg.Wait()
	if firstErr == nil {
		firstErr = ctx.Err()
	}
	return lat, failed, firstErr
}

func (m *meter) snapshot(ctx context.Context, e *benchkit.Exporter, client *http.Client) (snapshot, error) {
	var s snapshot
	s.rssKiB, _ = benchkit.ProcMemory(e.Pid())
	_, body, err := benchkit.ScrapeOnce(ctx, client, e.URL)
	if err != nil {
		return s, err
	}
	values := map[string]float64{}
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if ok && !strings.HasPrefix(name, "#") {
			values[name], _ = strconv.ParseFloat(value, 64)
		}
	}
	s.heapBytes = values["go_memstats_heap_inuse_bytes"]
	s.connected = values["dbpool_exporter_connected_targets"]
	s.capDrops = values[`dbpool_exporter_target_disconnects_total{reason="cap"}`]
	err = m.admin.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND application_name = $2",
		monitorRole, collector.ApplicationName).Scan(&s.held)
	return s, err
}
