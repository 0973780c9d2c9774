package collector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dbpool/dbpool_exporter/poolcfg"
)

// SourceApp is the source of pools that the application reports itself (dbpool-stats JSON
// from integrations/python): exact in-use, overflow, checkout time and timeouts.
const SourceApp = "app"

// Connection states of an application's SQLAlchemy pool, as SQLAlchemy names them; together
// they break dbpool_open_connections down for the app source.
const (
	StateCheckedOut = "checked_out"
	StateCheckedIn  = "checked_in"
	// StateConnecting counts connections the pool has reserved but not yet opened.
	StateConnecting = "connecting"
)

// appCollectorPrefix starts the collector label of an app endpoint: app:<name>.
const appCollectorPrefix = SourceApp + ":"

// maxAppDocument bounds one endpoint's answer: thousands of instances fit many times over,
// and a wrong URL (a download) must not fill the exporter's memory.
const maxAppDocument = 8 << 20

// appDocFormat and appDocVersion identify the dbpool-stats JSON contract (README,
// integrations/python/README.md). Fields may be added within a version; the exporter
// ignores fields it does not know.
const (
	appDocFormat  = "dbpool-stats"
	appDocVersion = 1
)

type appDoc struct {
	Format    *string       `json:"format"`
	Version   *int          `json:"version"`
	Instances []appInstance `json:"instances"`
}

type appInstance struct {
	Pool     string `json:"pool"`
	Instance string `json:"instance"`
	Settings struct {
		PoolSize       int      `json:"pool_size"`
		MaxOverflow    int      `json:"max_overflow"`
		TimeoutSeconds *float64 `json:"timeout_seconds"`
		RecycleSeconds float64  `json:"recycle_seconds"`
		PrePing        bool     `json:"pre_ping"`
		Echo           bool     `json:"echo"`
	} `json:"settings"`
	Status *struct {
		CheckedOut       int `json:"checked_out"`
		CheckedIn        int `json:"checked_in"`
		Overflow         int `json:"overflow"`
		TotalConnections int `json:"total_connections"`
	} `json:"status"`
	PendingCheckouts           *int     `json:"pending_checkouts"`
	LongestCheckoutWaitSeconds *float64 `json:"longest_checkout_wait_seconds"`
	Checkouts                  *struct {
		Count      uint64  `json:"count"`
		SumSeconds float64 `json:"sum_seconds"`
		Buckets    []struct {
			LE    float64 `json:"le"`
			Count uint64  `json:"count"`
		} `json:"buckets"`
		Timeouts *uint64 `json:"timeouts"`
	} `json:"checkouts"`
	Connects        *uint64 `json:"connects"`
	Invalidations   *uint64 `json:"invalidations"`
	Recycles        *uint64 `json:"recycles"`
	PrePingFailures *uint64 `json:"pre_ping_failures"`
}

// appEndpoint reads one app endpoint for one configured pool of a PostgreSQL target.
type appEndpoint struct {
	name    string
	url     poolcfg.AppURL
	pool    string
	appPool string
	target  string
	client  *http.Client
}

// newAppClient is the HTTP client of a target's app endpoints. Deadlines come from each
// scrape's context; the transport keeps one idle connection per endpoint so that a scrape
// costs no new TCP or TLS handshake.
func newAppClient() *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 1
	tr.IdleConnTimeout = 5 * time.Minute
	tr.Proxy = nil // endpoints are the application's own listeners, never behind a proxy
	return &http.Client{
		Transport: tr,
		// A redirect could send the basic-auth credentials elsewhere; an endpoint answers itself.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// collect fetches the endpoint once and sums its instances into one sample of the pool. An
// endpoint that reports no instance yet (nothing instrumented, or every worker starting)
// succeeds with no sample.
func (e *appEndpoint) collect(ctx context.Context) ([]prometheus.Metric, []PoolStats, error) {
	doc, err := e.fetch(ctx)
	if err != nil {
		return nil, nil, err
	}
	instances, err := selectInstances(doc, e.appPool)
	if err != nil {
		return nil, nil, err
	}
	var sum *PoolStats
	for i := range instances {
		p, err := instanceStats(&instances[i])
		if err != nil {
			return nil, nil, fmt.Errorf("instance %q: %w", instances[i].Instance, err)
		}
		p.Target, p.Pool = e.target, e.pool
		if sum == nil {
			sum = &p
		} else {
			sum.addInstances(&p)
		}
	}
	if sum == nil {
		return nil, nil, nil
	}
	return nil, []PoolStats{*sum}, nil
}

func (e *appEndpoint) fetch(ctx context.Context) (*appDoc, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.url.Secret(), nil)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %v", e.url, unwrapURLError(err))
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", ApplicationName)
	resp, err := e.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %v", e.url, unwrapURLError(err))
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // lets the connection be reused
		return nil, fmt.Errorf("GET %s: HTTP %s", e.url, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAppDocument+1))
	if err != nil {
		return nil, fmt.Errorf("GET %s: reading the answer: %v", e.url, unwrapURLError(err))
	}
	if len(body) > maxAppDocument {
		return nil, fmt.Errorf("GET %s: the answer is larger than %d bytes: not a dbpool-stats document", e.url, maxAppDocument)
	}
	doc, err := parseAppDoc(body)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", e.url, err)
	}
	return doc, nil
}

// unwrapURLError drops net/url's quoting of the request URL, which would carry the password;
// the caller names the endpoint by its redacted URL.
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// parseAppDoc decodes a dbpool-stats document and checks its format and version.
func parseAppDoc(body []byte) (*appDoc, error) {
	var doc appDoc
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, fmt.Errorf("not a dbpool-stats JSON document: %v", err)
	}
	switch {
	case doc.Format == nil || *doc.Format != appDocFormat:
		return nil, fmt.Errorf(`not a dbpool-stats document: "format" must be %q`, appDocFormat)
	case doc.Version == nil:
		return nil, errors.New(`dbpool-stats document without "version"`)
	case *doc.Version != appDocVersion:
		return nil, fmt.Errorf("dbpool-stats version %d: this exporter reads version %d", *doc.Version, appDocVersion)
	}
	return &doc, nil
}

// selectInstances keeps the instances of appPool, or all when it is empty; an endpoint that
// reports several pools then must be told which one this is.
func selectInstances(doc *appDoc, appPool string) ([]appInstance, error) {
	var out []appInstance
	pools := map[string]bool{}
	seen := map[string]bool{}
	for _, in := range doc.Instances {
		if in.Instance == "" {
			return nil, errors.New(`an instance without "instance"`)
		}
		pools[in.Pool] = true
		if appPool != "" && in.Pool != appPool {
			continue
		}
		key := in.Pool + "\x00" + in.Instance
		if seen[key] {
			return nil, fmt.Errorf("instance %q of pool %q is reported twice", in.Instance, in.Pool)
		}
		seen[key] = true
		out = append(out, in)
	}
	if appPool == "" && len(pools) > 1 {
		names := make([]string, 0, len(pools))
		for p := range pools {
			names = append(names, fmt.Sprintf("%q", p))
		}
		slices.Sort(names)
		return nil, fmt.Errorf("the endpoint reports several pools (%s): set app_pool to the one this is", strings.Join(names, ", "))
	}
	return out, nil
}

// instanceStats turns one instance into a pool sample of one instance, refusing values that
// no pool can have.
func instanceStats(in *appInstance) (PoolStats, error) {
	st := in.Status
	if st == nil {
		return PoolStats{}, errors.New(`no "status"`)
	}
	s := in.Settings
	switch {
	case st.CheckedOut < 0 || st.CheckedIn < 0 || st.TotalConnections < 0:
		return PoolStats{}, fmt.Errorf("negative connection count in status (checked_out %d, checked_in %d, total_connections %d)",
			st.CheckedOut, st.CheckedIn, st.TotalConnections)
	case s.PoolSize < 0 || s.MaxOverflow < -1:
		return PoolStats{}, fmt.Errorf("settings pool_size %d, max_overflow %d: not a pool's", s.PoolSize, s.MaxOverflow)
	case !finiteNonNegative(s.RecycleSeconds) && s.RecycleSeconds != -1:
		return PoolStats{}, fmt.Errorf("settings recycle_seconds %v: must be -1 (never) or a number of seconds", s.RecycleSeconds)
	}
	p := PoolStats{
		Source:     SourceApp,
		Exact:      true,
		Configured: true,
		Instances:  1,
		Settings: poolcfg.Settings{
			PoolSize:    s.PoolSize,
			MaxOverflow: max(s.MaxOverflow, 0), // SQLAlchemy's -1 means "no limit": no known capacity
			PrePing:     s.PrePing,
			Echo:        s.Echo,
		},
		// SQLAlchemy reserves a slot (overflow) before it opens the connection, so the total
		// can run ahead of checked out + checked in, never behind.
		Open:     max(st.TotalConnections, st.CheckedOut+st.CheckedIn),
		InUse:    st.CheckedOut,
		Overflow: max(0, st.Overflow),
	}
	if t := s.TimeoutSeconds; t != nil && finiteNonNegative(*t) {
		p.Settings.Timeout = seconds(*t)
	}
	if s.RecycleSeconds > 0 {
		p.Settings.Recycle = seconds(s.RecycleSeconds)
	}
	p.States = map[string]int{StateCheckedOut: st.CheckedOut, StateCheckedIn: st.CheckedIn}
	if n := p.Open - st.CheckedOut - st.CheckedIn; n > 0 {
		p.States[StateConnecting] = n
	}
	if n := in.PendingCheckouts; n != nil {
		if *n < 0 {
			return PoolStats{}, fmt.Errorf("pending_checkouts %d is negative", *n)
		}
		p.Pending = ptrTo(*n)
	}
	if w := in.LongestCheckoutWaitSeconds; w != nil {
		if !finiteNonNegative(*w) {
			return PoolStats{}, fmt.Errorf("longest_checkout_wait_seconds %v: must be a number of seconds", *w)
		}
		p.LongestWaitSeconds = ptrTo(*w)
	}
	if c := in.Checkouts; c != nil {
		cs := &CheckoutStats{Count: c.Count, DurationSeconds: c.SumSeconds, Buckets: make(map[float64]uint64, len(c.Buckets)), Timeouts: c.Timeouts}
		if !finiteNonNegative(c.SumSeconds) {
			return PoolStats{}, fmt.Errorf("checkouts.sum_seconds %v: must be a number of seconds", c.SumSeconds)
		}
		prevLE, prevCount := math.Inf(-1), uint64(0)
		for _, b := range c.Buckets {
			if !(b.LE > prevLE) || math.IsInf(b.LE, 0) || b.Count < prevCount || b.Count > c.Count {
				return PoolStats{}, fmt.Errorf("checkouts.buckets: le %v count %d after le %v count %d of %d checkouts: "+
					"bounds must rise and counts must be cumulative", b.LE, b.Count, prevLE, prevCount, c.Count)
			}
			cs.Buckets[b.LE] = b.Count
			prevLE, prevCount = b.LE, b.Count
		}
		p.Checkouts = cs
	}
	p.Processes = []ProcessStats{{Process: in.Instance, InUse: p.InUse, Open: p.Open, Overflow: p.Overflow, Pending: p.Pending, Checkouts: p.Checkouts}}
	if in.Connects != nil || in.Invalidations != nil || in.Recycles != nil || in.PrePingFailures != nil {
		p.Lifecycle = &LifecycleStats{
			Opened:          in.Connects,
			Invalidations:   in.Invalidations,
			Recycles:        in.Recycles,
			PrePingFailures: in.PrePingFailures,
		}
	}
	return p, nil
}

// addInstances adds the instances of q, a sample of the same pool, to p: counts and
// counters add up, overflow too (it is per instance already), the longest wait is the
// longer one. A histogram keeps the bounds both have.
func (p *PoolStats) addInstances(q *PoolStats) {
	p.Instances += q.Instances
	p.Open += q.Open
	p.InUse += q.InUse
	p.Overflow += q.Overflow
	for state, n := range q.States {
		p.States[state] += n
	}
	p.Pending = addPtr(p.Pending, q.Pending)
	p.Processes = append(p.Processes, q.Processes...)
	if q.LongestWaitSeconds != nil && (p.LongestWaitSeconds == nil || *q.LongestWaitSeconds > *p.LongestWaitSeconds) {
		p.LongestWaitSeconds = ptrTo(*q.LongestWaitSeconds)
	}
	switch a, b := p.Checkouts, q.Checkouts; {
	case a == nil:
		p.Checkouts = b
	case b != nil:
		sum := &CheckoutStats{Count: a.Count + b.Count, DurationSeconds: a.DurationSeconds + b.DurationSeconds,
			Buckets: map[float64]uint64{}, Timeouts: addPtr(a.Timeouts, b.Timeouts)}
		for le, n := range a.Buckets {
			if m, ok := b.Buckets[le]; ok {
				sum.Buckets[le] = n + m
			}
		}
		p.Checkouts = sum
	}
	switch a, b := p.Lifecycle, q.Lifecycle; {
	case a == nil:
		p.Lifecycle = b
	case b != nil:
		p.Lifecycle = &LifecycleStats{
			Opened:          addPtr(a.Opened, b.Opened),
			Invalidations:   addPtr(a.Invalidations, b.Invalidations),
			Recycles:        addPtr(a.Recycles, b.Recycles),
			PrePingFailures: addPtr(a.PrePingFailures, b.PrePingFailures),
		}
	}
}

// mergeAppPools sums the samples of the app endpoints that report the same pool, in place
// of the per-endpoint ones, and returns the metrics of the merged samples. Two endpoints that
// report the same process (one application listed twice) would add it twice, so the second
// endpoint's copy is left out, counts included.
func mergeAppPools(pools []PoolStats, descs *poolDescs) ([]PoolStats, []prometheus.Metric) {
	var out []PoolStats
	merged := map[string]int{} // pool -> index in out
	for i := range pools {
		p := pools[i]
		if p.Source != SourceApp {
			out = append(out, p)
			continue
		}
		if j, ok := merged[p.Pool]; ok {
			if !sharesProcess(&out[j], &p) {
				out[j].addInstances(&p)
			}
			continue
		}
		merged[p.Pool] = len(out)
		out = append(out, p)
	}
	var ms []prometheus.Metric
	for _, j := range merged {
		ms = descs.appendMetrics(ms, &out[j])
	}
	return out, ms
}

// sharesProcess reports whether q reports a process that p has already.
func sharesProcess(p, q *PoolStats) bool {
	seen := make(map[string]bool, len(p.Processes))
	for _, pr := range p.Processes {
		seen[pr.Process] = true
	}
	for _, pr := range q.Processes {
		if seen[pr.Process] {
			return true
		}
	}
	return false
}

func finiteNonNegative(x float64) bool { return x >= 0 && !math.IsInf(x, 0) && !math.IsNaN(x) }

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

func ptrTo[T any](v T) *T { return &v }

// addPtr adds two optional values: absent only when both are.
func addPtr[T int | uint64](a, b *T) *T {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	}
	return ptrTo(*a + *b)
}
