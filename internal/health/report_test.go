package health

import (
	"testing"
	"time"

	"github.com/dbpool/dbpool_exporter/collector"
	"github.com/dbpool/dbpool_exporter/internal/advice"
	"github.com/dbpool/dbpool_exporter/internal/metrics"
)

func TestPressureSince(t *testing.T) {
	th := advice.DefaultThresholds()
	at := func(s int) time.Time { return time.Date(2025, 1, 1, 0, 0, s, 0, time.UTC) }
	i := func(v int) *int { return &v }
	f := func(v float64) *float64 { return &v }
	for _, tc := range []struct {
		name   string
		series []advice.Point
		want   *time.Time
	}{
		{"empty", nil, nil},
		{"quiet now", []advice.Point{{Time: at(0), InUse: 10, Capacity: 10}, {Time: at(1), InUse: 1, Capacity: 10, PoolSize: 5}}, nil},
		{"loaded since the second point", []advice.Point{
			{Time: at(0), InUse: 1, PoolSize: 5, Pending: i(0)},
			{Time: at(1), InUse: 4, PoolSize: 5},                           // 80% of pool_size
			{Time: at(2), InUse: 1, PoolSize: 5, Pending: i(2)},            // callers waiting
			{Time: at(3), InUse: 1, PoolSize: 5, Timeouts: f(1)},           // timeouts
			{Time: at(4), InUse: 1, PoolSize: 5, CheckoutSeconds: f(0.02)}, // slow checkouts
			{Time: at(5), InUse: 2, Capacity: 2},                           // the whole capacity
		}, ptr(at(1))},
		{"one quiet point inside the run does not end it, two do", []advice.Point{
			{Time: at(0), InUse: 5, PoolSize: 5},
			{Time: at(1), InUse: 1, PoolSize: 5},
			{Time: at(2), InUse: 1, PoolSize: 5},
			{Time: at(3), InUse: 5, PoolSize: 5},
			{Time: at(4), InUse: 1, PoolSize: 5},
			{Time: at(5), InUse: 5, PoolSize: 5},
		}, ptr(at(3))},
		{"quiet now after a run", []advice.Point{{Time: at(0), InUse: 5, PoolSize: 5}, {Time: at(1), InUse: 1, PoolSize: 5}}, nil},
		{"the whole window", []advice.Point{{Time: at(0), InUse: 2, Capacity: 2}, {Time: at(1), InUse: 2, Capacity: 2}}, ptr(at(0))},
		{"unknown limits and nothing waiting", []advice.Point{{Time: at(0), InUse: 50}}, nil},
	} {
		got := pressureSince(tc.series, th)
		if (got == nil) != (tc.want == nil) || got != nil && !got.Equal(*tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestReportStale: a pool not seen for StaleAfter says so in its report, and its
// recommendation metrics go.
func TestReportStale(t *testing.T) {
	c := newClock()
	m := NewManager(Options{Window: 10 * time.Minute, StaleAfter: time.Minute, Now: c.now})
	for range 5 {
		m.Observe(collector.Result{Pools: []metrics.PoolStats{activityPool("pg", "api", 10, 20, 1, 3)}})
		c.add(20 * time.Second)
	}
	if r, _ := m.Find("pg", "api"); r.Stale {
		t.Errorf("stale 20 s after the last sample")
	}
	c.add(41 * time.Second)
	if r, _ := m.Find("pg", "api"); !r.Stale {
		t.Errorf("not stale 61 s after the last sample")
	}
}
