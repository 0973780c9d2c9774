package advice

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/dbpool/dbpool_exporter/internal/metrics"
)

// Sizing is how a recommendation was reached: the load per instance, the floor Little's law
// gives, and the queueing model's predictions for the current size, the recommended size and
// a curve of sizes around both (for a chart). Every figure is per instance.
type Sizing struct {
	// Model is ModelQueueing when the source measures hold times, ModelRules otherwise.
	Model string `json:"model"`
	// LowerBound is set when the size comes from observed peaks (ModelRules): a saturated
	// pool's peak is its capacity, so the demand may be higher than what was seen.
	LowerBound bool   `json:"lower_bound"`
	Note       string `json:"note"`

	// The load per instance: checkout attempts per second (succeeded, timed out, failed),
	// hold times, connect time and DB_POOL_TIMEOUT; Demand = rate x mean hold (Little's law).
	ArrivalRate       float64    `json:"arrival_rate,omitempty"`
	Hold              *HoldTimes `json:"hold,omitempty"`
	HoldDistribution  string     `json:"hold_distribution,omitempty"`
	MeanCreateSeconds float64    `json:"mean_create_seconds,omitempty"`
	TimeoutSeconds    float64    `json:"timeout_seconds,omitempty"`
	Demand            float64    `json:"demand,omitempty"`
	// LoadFrom and LoadTo are the span the rate and the hold times were taken from: the
	// busiest BusiestSpanSeconds of the window, or the whole window when BusiestSpanSeconds is
	// 0 (it is no longer than that span).
	LoadFrom           time.Time `json:"load_from,omitzero"`
	LoadTo             time.Time `json:"load_to,omitzero"`
	BusiestSpanSeconds float64   `json:"busiest_span_seconds,omitempty"`
	// Floor is the guide's formula: Demand + the buffer (a ratio, 0.5 = 50%), rounded up.
	Buffer float64 `json:"buffer,omitempty"`
	Floor  int     `json:"floor,omitempty"`

	Targets     Targets      `json:"targets"`
	Current     *Prediction  `json:"current,omitempty"`
	Recommended *Prediction  `json:"recommended,omitempty"`
	Curve       []Prediction `json:"curve"`
}

// Models.
const (
	ModelQueueing = "queueing" // Little's law floor + the queueing model (queue.go)
	ModelRules    = "rules"    // no hold times: observed peaks and utilization
)

// Hold-time distributions the model drew from.
const (
	HoldFromHistogram = "histogram"
	HoldExponential   = "exponential (only the mean is known)"
)

// Targets are what a recommended size must be predicted to meet: the guide's average
// checkout < 10 ms, no timeouts, average utilization < 70%.
type Targets struct {
	MaxMeanWaitSeconds float64 `json:"max_mean_wait_seconds"`
	// MaxTimeoutProbability is the resolution of the model: no simulated checkout of
	// SimCheckouts may time out.
	MaxTimeoutProbability float64 `json:"max_timeout_probability"`
	MaxUtilization        float64 `json:"max_utilization"`
}

func targetsOf(th Thresholds) Targets {
	return Targets{
		MaxMeanWaitSeconds:    th.AvgCheckout.Seconds(),
		MaxTimeoutProbability: 1 / float64(SimCheckouts),
		MaxUtilization:        th.AvgUtilization,
	}
}

// meets says whether a prediction meets the targets.
func (t Targets) meets(p Prediction) bool {
	return !p.Unbounded && p.MeanWaitSeconds < t.MaxMeanWaitSeconds &&
		p.TimeoutProbability < t.MaxTimeoutProbability && p.Utilization < t.MaxUtilization
}

// MinHolds is how many holds a window needs before the model sizes from them.
const MinHolds = 20

// loadOf is the load per instance over the Summary's busiest span, when the source measured
// hold times and checkout attempts. The connect time is the window's: it does not follow the
// traffic.
func loadOf(p Pool, s Summary) (Load, bool) {
	if s.ArrivalRate == nil || s.MeanHoldSeconds == nil || *s.MeanHoldSeconds <= 0 {
		return Load{}, false
	}
	if s.Hold != nil && s.Hold.Count > 0 && s.Hold.Count < MinHolds {
		return Load{}, false
	}
	l := Load{
		Rate:           *s.ArrivalRate / float64(p.instances()),
		Hold:           HoldTimes{MeanSeconds: *s.MeanHoldSeconds},
		TimeoutSeconds: p.Settings.Timeout.Seconds(),
	}
	if s.Hold != nil {
		l.Hold = *s.Hold
	}
	if s.MeanCreateSeconds != nil {
		l.CreateSeconds = *s.MeanCreateSeconds
	}
	return l, true
}

// sizer runs the model for one pool and remembers its predictions by size.
type sizer struct {
	load    Load
	targets Targets
	source  metrics.Source
	current int // max_overflow as configured
	factor  float64
	budget  *int
	memo    map[int]Prediction
	cache   *Predictions
}

// overflowFor is the max_overflow that goes with a pool size: twice it for an application's
// pool (the guide's overflow_2x), as configured for PgBouncer's reserve pool, none for
// pgxpool; and never beyond the server budget.
func (z *sizer) overflowFor(size int) int {
	var o int
	switch z.source {
	case metrics.SourcePgxpool:
		o = 0
	case metrics.SourcePgBouncer:
		o = z.current
	default:
		o = ceil(float64(size) * z.factor)
	}
	if z.budget != nil {
		o = max(min(o, *z.budget-size), 0)
	}
	return o
}

func (z *sizer) predict(size int) Prediction {
	if p, ok := z.memo[size]; ok {
		return p
	}
	p := z.cache.predict(z.load, size, z.overflowFor(size))
	p.MeetsTargets = z.targets.meets(p)
	z.memo[size] = p
	return p
}

// smallest is the smallest size in [lo, hi] predicted to meet the targets: it gallops up from
// lo and then bisects, since a bigger pool never does worse. ok is false when even hi fails.
func (z *sizer) smallest(lo, hi int) (int, bool) {
	if z.predict(lo).MeetsTargets {
		return lo, true
	}
	fail, step := lo, 1
	for {
		next := min(fail+step, hi)
		if z.predict(next).MeetsTargets {
			for next-fail > 1 {
				mid := (fail + next) / 2
				if z.predict(mid).MeetsTargets {
					next = mid
				} else {
					fail = mid
				}
			}
			return next, true
		}
		if next == hi {
			return hi, false
		}
		fail, step = next, step*2
	}
}

// curveSpread is how many evenly spread sizes the curve has between (and around) the current
// and the recommended size, besides both and their neighbours: 14 predictions at most.
const curveSpread = 8

// curve predicts the sizes around the current and the recommended one, ascending.
func (z *sizer) curve(current, recommended int) []Prediction {
	lo, top := max(min(current, recommended)-1, 1), max(current, recommended)+1
	sizes := []int{current - 1, current, current + 1, recommended - 1, recommended, recommended + 1}
	for k := 0; k <= curveSpread; k++ {
		sizes = append(sizes, lo+int(math.Round(float64((top-lo)*k)/curveSpread)))
	}
	sizes = slices.DeleteFunc(sizes, func(s int) bool { return s < 1 })
	slices.Sort(sizes)
	sizes = slices.Compact(sizes)
	out := make([]Prediction, 0, len(sizes))
	for _, s := range sizes {
		out = append(out, z.predict(s))
	}
	return out
}

// predictionText says what a prediction means, in the guide's terms.
func predictionText(p Prediction) string {
	if p.Unbounded {
		return "callers queue without end (no DB_POOL_TIMEOUT and the demand reaches the connections)"
	}
	txt := fmt.Sprintf("average checkout %s ms, %s%% of checkouts wait", sig(p.MeanWaitSeconds*1000), sig(pct(p.WaitProbability)))
	if p.TimeoutProbability > 0 {
		txt += fmt.Sprintf(", %s%% time out (%s per minute per instance)", sig(pct(p.TimeoutProbability)), sig(p.TimeoutsPerSecond*60))
	} else {
		txt += ", none times out"
	}
	return txt + fmt.Sprintf(", utilization %s%%", sig(pct(p.Utilization)))
}

// sig prints a figure with two decimals, or two significant digits below 1, so that a wait of
// 0.04 ms does not read as 0.
func sig(x float64) string {
	if x == 0 || math.Abs(x) >= 1 {
		return num(x)
	}
	decimals := 1 - int(math.Floor(math.Log10(math.Abs(x))))
	return strconv.FormatFloat(x, 'f', decimals, 64)
}

// Predictions remembers predictions by their inputs, so that the answers drawn from one
// history (the metrics, the API, the status page) share one run of the model, and a sizing
// reruns it only when the load changed. It is safe for concurrent use and holds at most
// MaxPredictions; the zero value is ready to use. A nil *Predictions remembers nothing.
type Predictions struct {
	mu sync.Mutex
	m  map[predictionKey]Prediction
}

// MaxPredictions bounds a Predictions: past it, it starts afresh.
const MaxPredictions = 10_000

type predictionKey struct {
	load              string
	size, maxOverflow int
}

func keyOf(l Load, size, maxOverflow int) predictionKey {
	b := make([]byte, 0, 64+24*len(l.Hold.Buckets))
	for _, f := range []float64{l.Rate, l.Hold.MeanSeconds, l.CreateSeconds, l.TimeoutSeconds} {
		b = strconv.AppendFloat(append(b, '|'), f, 'g', -1, 64)
	}
	for _, bk := range l.Hold.Buckets {
		b = strconv.AppendFloat(append(b, ';'), bk.LE, 'g', -1, 64)
		b = strconv.AppendFloat(append(b, ':'), bk.Count, 'g', -1, 64)
	}
	return predictionKey{string(b), size, maxOverflow}
}

// predict is Predict, remembered.
func (c *Predictions) predict(l Load, size, maxOverflow int) Prediction {
	if c == nil {
		return Predict(l, size, maxOverflow)
	}
	k := keyOf(l, size, maxOverflow)
	c.mu.Lock()
	p, ok := c.m[k]
	c.mu.Unlock()
	if ok {
		return p
	}
	p = Predict(l, size, maxOverflow)
	c.mu.Lock()
	if c.m == nil || len(c.m) >= MaxPredictions {
		c.m = map[predictionKey]Prediction{}
	}
	c.m[k] = p
	c.mu.Unlock()
	return p
}

// Len is the number of predictions remembered.
func (c *Predictions) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}
