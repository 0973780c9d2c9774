package collector

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/dbpool/dbpool_exporter/internal/metrics"
	"github.com/dbpool/dbpool_exporter/poolcfg"
)

// The dbpool-stats document an app endpoint answers, and how one instance of it becomes a
// pool sample.

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
	// Exited are the final entries of processes that exited (added within version 1): their
	// counters as they left them, which the pool's counters take; they have no gauges.
	Exited []appInstance `json:"exited"`
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
		appHistogram
		Timeouts *uint64 `json:"timeouts"`
		// Failures are by reason; a reason this exporter does not know counts as other.
		Failures map[string]uint64 `json:"failures"`
	} `json:"checkouts"`
	UseTime            *appHistogram `json:"use_time"`
	CreateTime         *appHistogram `json:"create_time"`
	HeldConnections    *int          `json:"held_connections"`
	LongestHeldSeconds *float64      `json:"longest_held_seconds"`
	Leaks              *appLeaks     `json:"leaks"`
	Connects           *uint64       `json:"connects"`
	Invalidations      *uint64       `json:"invalidations"`
	Recycles           *uint64       `json:"recycles"`
	PrePingFailures    *uint64       `json:"pre_ping_failures"`
}

// appHistogram is a cumulative histogram of durations: checkouts, use_time, create_time.
// The bounds are finite; count is the +Inf bucket. Failed, of count, is not in use_time.
type appHistogram struct {
	Count      uint64  `json:"count"`
	Failed     *uint64 `json:"failed"`
	SumSeconds float64 `json:"sum_seconds"`
	Buckets    []struct {
		LE    float64 `json:"le"`
		Count uint64  `json:"count"`
	} `json:"buckets"`
}

// appLeaks is leak detection's report: all null (and no sites) when it is off.
type appLeaks struct {
	ThresholdSeconds *float64 `json:"threshold_seconds"`
	Count            *int     `json:"count"`
	Sites            []struct {
		File          *string `json:"file"`
		Line          *int    `json:"line"`
		Function      *string `json:"function"`
		Count         int     `json:"count"`
		OldestSeconds float64 `json:"oldest_seconds"`
	} `json:"sites"`
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

// selectInstances keeps the instances of appPool, or all when it is empty, of the live and of
// the exited ones; an endpoint that reports several pools then must be told which one this
// is. An exited entry of a process that is also live is left out: the live one is newer (a
// pid used again).
func selectInstances(doc *appDoc, appPool string) (live, exited []appInstance, err error) {
	pools := map[string]bool{}
	liveNames := map[string]bool{}
	pick := func(list []appInstance, seen map[string]bool, skip map[string]bool) ([]appInstance, error) {
		var out []appInstance
		for _, in := range list {
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
			if !skip[key] {
				out = append(out, in)
			}
		}
		return out, nil
	}
	if live, err = pick(doc.Instances, liveNames, nil); err != nil {
		return nil, nil, err
	}
	if exited, err = pick(doc.Exited, map[string]bool{}, liveNames); err != nil {
		return nil, nil, fmt.Errorf("exited: %w", err)
	}
	if appPool == "" && len(pools) > 1 {
		names := make([]string, 0, len(pools))
		for p := range pools {
			names = append(names, fmt.Sprintf("%q", p))
		}
		slices.Sort(names)
		return nil, nil, fmt.Errorf("the endpoint reports several pools (%s): set app_pool to the one this is", strings.Join(names, ", "))
	}
	return live, exited, nil
}

// instanceStats turns one instance into a pool sample of one instance, refusing values that
// no pool can have.
func instanceStats(in *appInstance) (metrics.PoolStats, error) {
	st := in.Status
	if st == nil {
		return metrics.PoolStats{}, errors.New(`no "status"`)
	}
	s := in.Settings
	switch {
	case st.CheckedOut < 0 || st.CheckedIn < 0 || st.TotalConnections < 0:
		return metrics.PoolStats{}, fmt.Errorf("negative connection count in status (checked_out %d, checked_in %d, total_connections %d)",
			st.CheckedOut, st.CheckedIn, st.TotalConnections)
	case s.PoolSize < 0 || s.MaxOverflow < -1:
		return metrics.PoolStats{}, fmt.Errorf("settings pool_size %d, max_overflow %d: not a pool's", s.PoolSize, s.MaxOverflow)
	case !finiteNonNegative(s.RecycleSeconds) && s.RecycleSeconds != -1:
		return metrics.PoolStats{}, fmt.Errorf("settings recycle_seconds %v: must be -1 (never) or a number of seconds", s.RecycleSeconds)
	}
	p := metrics.PoolStats{
		Source:     metrics.SourceApp,
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
	p.States = map[string]int{metrics.StateCheckedOut: st.CheckedOut, metrics.StateCheckedIn: st.CheckedIn}
	if n := p.Open - st.CheckedOut - st.CheckedIn; n > 0 {
		p.States[metrics.StateConnecting] = n
	}
	if n := in.PendingCheckouts; n != nil {
		if *n < 0 {
			return metrics.PoolStats{}, fmt.Errorf("pending_checkouts %d is negative", *n)
		}
		p.Pending = ptrTo(*n)
	}
	if w := in.LongestCheckoutWaitSeconds; w != nil {
		if !finiteNonNegative(*w) {
			return metrics.PoolStats{}, fmt.Errorf("longest_checkout_wait_seconds %v: must be a number of seconds", *w)
		}
		p.LongestWaitSeconds = ptrTo(*w)
	}
	var err error
	if p.Checkouts, err = instanceCheckouts(in); err != nil {
		return metrics.PoolStats{}, err
	}
	if p.UseTime, err = histogramStats("use_time", in.UseTime); err != nil {
		return metrics.PoolStats{}, err
	}
	if p.CreateTime, err = histogramStats("create_time", in.CreateTime); err != nil {
		return metrics.PoolStats{}, err
	}
	if n := in.HeldConnections; n != nil && *n < 0 {
		return metrics.PoolStats{}, fmt.Errorf("held_connections %d is negative", *n)
	}
	if h := in.LongestHeldSeconds; h != nil {
		if !finiteNonNegative(*h) {
			return metrics.PoolStats{}, fmt.Errorf("longest_held_seconds %v: must be a number of seconds", *h)
		}
		p.LongestHeldSeconds = ptrTo(*h)
	}
	if p.Leaks, err = instanceLeaks(in); err != nil {
		return metrics.PoolStats{}, err
	}
	pr := metrics.ProcessStats{Process: in.Instance, InUse: p.InUse, Open: p.Open, Overflow: p.Overflow, Pending: p.Pending, Checkouts: p.Checkouts, UseTime: p.UseTime}
	if p.Leaks != nil {
		pr.Leaked = ptrTo(p.Leaks.Count)
	}
	p.Processes = []metrics.ProcessStats{pr}
	var openFailures *uint64
	if in.CreateTime != nil {
		openFailures = in.CreateTime.Failed
	}
	if in.Connects != nil || in.Invalidations != nil || in.Recycles != nil || in.PrePingFailures != nil || openFailures != nil {
		p.Lifecycle = &metrics.LifecycleStats{
			Opened:          in.Connects,
			OpenFailures:    openFailures,
			Invalidations:   in.Invalidations,
			Recycles:        in.Recycles,
			PrePingFailures: in.PrePingFailures,
		}
	}
	return p, nil
}

// histogramStats checks one of the document's histograms: a finite sum, rising finite bounds,
// cumulative counts up to count, and failed (where it has one) within count.
func histogramStats(field string, h *appHistogram) (*metrics.DurationStats, error) {
	if h == nil {
		return nil, nil
	}
	if !finiteNonNegative(h.SumSeconds) {
		return nil, fmt.Errorf("%s.sum_seconds %v: must be a number of seconds", field, h.SumSeconds)
	}
	if h.Failed != nil && *h.Failed > h.Count {
		return nil, fmt.Errorf("%s.failed %d is more than its count %d", field, *h.Failed, h.Count)
	}
	d := &metrics.DurationStats{Count: h.Count, SumSeconds: h.SumSeconds, Buckets: make(map[float64]uint64, len(h.Buckets))}
	prevLE, prevCount := math.Inf(-1), uint64(0)
	for _, b := range h.Buckets {
		if !(b.LE > prevLE) || math.IsInf(b.LE, 0) || b.Count < prevCount || b.Count > h.Count {
			return nil, fmt.Errorf("%s.buckets: le %v count %d after le %v count %d of %d: "+
				"bounds must rise and counts must be cumulative", field, b.LE, b.Count, prevLE, prevCount, h.Count)
		}
		d.Buckets[b.LE] = b.Count
		prevLE, prevCount = b.LE, b.Count
	}
	return d, nil
}

// instanceCheckouts checks the checkouts histogram and its failures: failures by reason add up
// to failed, failed is within count, and the timeout reason is timeouts.
func instanceCheckouts(in *appInstance) (*metrics.CheckoutStats, error) {
	c := in.Checkouts
	if c == nil {
		return nil, nil
	}
	d, err := histogramStats("checkouts", &c.appHistogram)
	if err != nil {
		return nil, err
	}
	cs := &metrics.CheckoutStats{Count: d.Count, DurationSeconds: d.SumSeconds, Buckets: d.Buckets, Timeouts: c.Timeouts}
	if c.Failures == nil {
		return cs, nil
	}
	cs.Failures = make(map[string]uint64, len(metrics.FailureReasons))
	var sum uint64
	for reason, n := range c.Failures {
		if !slices.Contains(metrics.FailureReasons, reason) {
			reason = metrics.FailureOther // a reason added after this exporter: the label stays bounded
		}
		if sum+n < sum {
			return nil, fmt.Errorf("checkouts.failures %q %d: too large", reason, n)
		}
		cs.Failures[reason] += n
		sum += n
	}
	switch {
	case sum > c.Count:
		return nil, fmt.Errorf("checkouts.failures add up to %d, more than the %d checkouts", sum, c.Count)
	case c.Failed != nil && sum != *c.Failed:
		return nil, fmt.Errorf("checkouts.failures add up to %d, but checkouts.failed is %d", sum, *c.Failed)
	case c.Timeouts != nil && cs.Failures[metrics.FailureTimeout] != *c.Timeouts:
		return nil, fmt.Errorf("checkouts.failures.timeout %d differs from checkouts.timeouts %d", cs.Failures[metrics.FailureTimeout], *c.Timeouts)
	}
	return cs, nil
}

func finiteNonNegative(x float64) bool { return x >= 0 && !math.IsInf(x, 0) && !math.IsNaN(x) }

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
