package advice

import (
	"encoding/json"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dbpool/dbpool_exporter/internal/metrics"
)

// holdBounds are the integration's hold-time bucket bounds (dbpool_stats' USE_BUCKETS).
var holdBounds = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, math.Inf(1)}

// offered is a steady load on a pool group, as the application's report shows it: every
// instance is offered rate checkout attempts per second, of which served get a connection for
// hold seconds and the rest time out; inUse connections are checked out at every sample.
type offered struct {
	instances            int
	rate, served, hold   float64
	createSeconds, every float64
	inUse                int
}

// samples is one sample every o.every seconds (15 by default) up to to seconds.
func (o offered) samples(to float64) []Sample {
	every := o.every
	if every == 0 {
		every = 15
	}
	n := float64(o.instances)
	return series(to, every, func(i int) Sample {
		t := float64(i) * every
		attempts, served := o.rate*n*t, o.served*n*t
		hold := &Histogram{Count: served, Sum: served * o.hold}
		for _, le := range holdBounds {
			c := 0.0
			if o.hold <= le {
				c = served
			}
			hold.Buckets = append(hold.Buckets, Bucket{LE: le, Count: c})
		}
		s := Sample{
			InUse: o.inUse, Open: o.inUse,
			CheckoutsTotal: new(attempts), CheckoutSecondsTotal: new(0.001 * attempts),
			TimeoutsTotal: new(attempts - served),
			Hold:          hold,
			FailuresTotal: map[string]float64{metrics.FailureTimeout: attempts - served, metrics.FailureConnect: 0},
		}
		if o.createSeconds > 0 {
			s.Create = &Histogram{Count: 10, Sum: 10 * o.createSeconds}
		}
		return s
	})
}

func appPool(size, overflow, instances int, timeout float64) Pool {
	p := withSource(pool(size, overflow, instances), metrics.SourceApp)
	p.Settings.Timeout = secondsDuration(timeout)
	return p
}

// The guide's "Connection Timeout Errors": 2 instances of a 2 + 0 pool with a 1 s timeout,
// offered 40 checkouts/s each that hold a connection 150 ms: 2 connections serve 13.3/s, the
// other 26.7/s time out.
var (
	timeoutPool = appPool(2, 0, 2, 1)
	timeoutLoad = offered{instances: 2, rate: 40, served: 2 / 0.15, hold: 0.15, createSeconds: 0.005, inUse: 4}
)

func TestSizeByModel(t *testing.T) {
	th := DefaultThresholds()
	tests := []struct {
		name                 string
		in                   Input
		size, overflow       int
		rule, overflowRule   string
		text                 []string
		currentTimeouts      float64 // predicted P(timeout) at the current size, ±10%
		currentWait          float64 // predicted mean wait at the current size, ±10%
		wantMeetsRecommended bool
	}{
		{
			name: "the guide's timeout case: 40/s x 150 ms = 6, +50% -> 9, and 2 + 0 predicted to time out",
			in:   Input{Pool: timeoutPool, Summary: summarize(timeoutPool, timeoutLoad.samples(600))},
			size: 9, overflow: 18, rule: RuleLittlesLaw, overflowRule: RuleOverflow2x,
			text: []string{
				"40 checkouts/s x 150 ms held = 6 connections in use per instance; +50% buffer = 9 -> 9: set DB_POOL_SIZE to 9",
				"now at 2 + 0: average checkout 9", "% time out (16",
				"Predicted at 9 + 18: average checkout 0.",
			},
			currentTimeouts: 1 - (2/0.15)/40, currentWait: 0.99, wantMeetsRecommended: true,
		},
		{
			name: "the same load, 5 instances on max_connections 100: overflow capped at 16 - 9",
			in: Input{Pool: appPool(2, 0, 5, 1), Summary: summarize(appPool(2, 0, 5, 1), offered{instances: 5, rate: 40, served: 2 / 0.15, hold: 0.15, inUse: 10}.samples(600)),
				Server: seedServer},
			size: 9, overflow: 7, rule: RuleLittlesLaw, overflowRule: RuleServerBudget,
			text:                 []string{"= 16 per instance: cap DB_POOL_SIZE + DB_MAX_OVERFLOW at 16, so DB_MAX_OVERFLOW=7 with DB_POOL_SIZE=9"},
			wantMeetsRecommended: true,
		},
		{
			name: "a budget of 8 per instance cannot serve a demand of 6 within the targets",
			in: Input{Pool: appPool(2, 0, 4, 1), Summary: summarize(appPool(2, 0, 4, 1), offered{instances: 4, rate: 40, served: 2 / 0.15, hold: 0.15, inUse: 8}.samples(600)),
				Server: crowdServer},
			size: 8, overflow: 0, rule: RuleServerBudget, overflowRule: RuleServerBudget,
			text: []string{"even DB_POOL_SIZE=8", "WARNING: this pool group needs fewer instances"},
		},
		{
			name: "oversized over a full window: 30 + 60 at 5/s x 20 ms shrinks to 1 + 2",
			in:   Input{Pool: appPool(30, 60, 2, 30), Summary: summarize(appPool(30, 60, 2, 30), offered{instances: 2, rate: 5, served: 5, hold: 0.02, createSeconds: 0.005}.samples(3700))},
			size: 1, overflow: 2, rule: RuleShrinkOversized, overflowRule: RuleOverflow2x,
			text:                 []string{"the current DB_POOL_SIZE=30 is 0.33% utilized, below 30%: shrink it to 1"},
			wantMeetsRecommended: true,
		},
		{
			name: "oversized, but a short history never shrinks",
			in:   Input{Pool: appPool(30, 60, 2, 30), Summary: summarize(appPool(30, 60, 2, 30), offered{instances: 2, rate: 5, served: 5, hold: 0.02}.samples(600))},
			size: 30, overflow: 60, rule: RuleKeepCurrent, overflowRule: RuleOverflow2x,
			text:                 []string{"the current DB_POOL_SIZE=30 meets the targets", "1 would do, but 10m of history is short of the 1h window, and a short history never shrinks a pool"},
			wantMeetsRecommended: true,
		},
		{
			name: "a pgxpool has no overflow to absorb bursts: the queue needs more than the floor",
			in: Input{Pool: withSource(appPool(2, 0, 1, 0.5), metrics.SourcePgxpool),
				Summary: summarize(appPool(2, 0, 1, 0.5), offered{instances: 1, rate: 20, served: 10, hold: 0.2}.samples(600))},
			size: 7, overflow: 0, rule: RuleQueueing, overflowRule: RuleNoOverflow,
			text:                 []string{"20 checkouts/s x 200 ms held = 4 connections in use per instance; +50% buffer = 6 -> 6; the queueing model needs 7 to meet the targets: set MaxConns to 7", "Predicted at 7: "},
			wantMeetsRecommended: true,
		},
		{
			name: "slow connects: the model needs more than the floor",
			in:   Input{Pool: appPool(1, 2, 1, 30), Summary: summarize(appPool(1, 2, 1, 30), offered{instances: 1, rate: 5, served: 5, hold: 0.1, createSeconds: 0.05}.samples(600))},
			size: 2, overflow: 4, rule: RuleQueueing, overflowRule: RuleOverflow2x,
			text:                 []string{"+50% buffer = 0.75 -> 1; the queueing model needs 2 to meet the targets"},
			wantMeetsRecommended: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := OptimizePoolSettings(tt.in, th)
			text := messages(o.Recommendations)
			if o.RecommendedPoolSize != tt.size || o.RecommendedMaxOverflow != tt.overflow || o.PoolSizeRule != tt.rule || o.MaxOverflowRule != tt.overflowRule {
				t.Errorf("got %d/%d by %s/%s, want %d/%d by %s/%s\n%s", o.RecommendedPoolSize, o.RecommendedMaxOverflow, o.PoolSizeRule, o.MaxOverflowRule,
					tt.size, tt.overflow, tt.rule, tt.overflowRule, text)
			}
			for _, w := range tt.text {
				if !strings.Contains(text, w) {
					t.Errorf("recommendations lack %q:\n%s", w, text)
				}
			}
			sz := o.Sizing
			if sz.Model != ModelQueueing || sz.LowerBound || sz.Current == nil || sz.Recommended == nil {
				t.Fatalf("sizing %+v, want the queueing model with predictions", sz)
			}
			if sz.Recommended.PoolSize != o.RecommendedPoolSize || sz.Recommended.MaxOverflow != o.RecommendedMaxOverflow {
				t.Errorf("predicted %d + %d, recommended %d + %d", sz.Recommended.PoolSize, sz.Recommended.MaxOverflow, o.RecommendedPoolSize, o.RecommendedMaxOverflow)
			}
			if sz.Recommended.MeetsTargets != tt.wantMeetsRecommended {
				t.Errorf("recommended meets targets = %v: %+v", sz.Recommended.MeetsTargets, *sz.Recommended)
			}
			if tt.currentTimeouts > 0 && !within(sz.Current.TimeoutProbability, tt.currentTimeouts, 0.1, 0) {
				t.Errorf("current P(timeout) %.3f, want about %.3f", sz.Current.TimeoutProbability, tt.currentTimeouts)
			}
			if tt.currentWait > 0 && !within(sz.Current.MeanWaitSeconds, tt.currentWait, 0.1, 0) {
				t.Errorf("current mean wait %.3f s, want about %.3f s", sz.Current.MeanWaitSeconds, tt.currentWait)
			}
			sizes := []int{}
			for _, p := range sz.Curve {
				sizes = append(sizes, p.PoolSize)
			}
			if !slices.IsSorted(sizes) || !slices.Contains(sizes, o.RecommendedPoolSize) ||
				!slices.Contains(sizes, o.CurrentSettings.PoolSize) || len(sizes) > 16 {
				t.Errorf("curve sizes %v: want ascending, with current %d and recommended %d, at most 16", sizes, o.CurrentSettings.PoolSize, o.RecommendedPoolSize)
			}
			for i := 1; i < len(sz.Curve); i++ {
				if a, b := sz.Curve[i-1], sz.Curve[i]; b.TimeoutProbability > a.TimeoutProbability+1e-9 {
					t.Errorf("curve: %d connections time out more often (%g) than %d (%g)", b.PoolSize, b.TimeoutProbability, a.PoolSize, a.TimeoutProbability)
				}
			}
		})
	}
}

// TestSizeByModelDeterministic: the same history gives the same answer, figures and all.
func TestSizeByModelDeterministic(t *testing.T) {
	in := Input{Pool: timeoutPool, Summary: summarize(timeoutPool, timeoutLoad.samples(600))}
	a, _ := json.Marshal(OptimizePoolSettings(in, DefaultThresholds()))
	b, _ := json.Marshal(OptimizePoolSettings(in, DefaultThresholds()))
	if string(a) != string(b) {
		t.Errorf("two answers:\n%s\n%s", a, b)
	}
}

// TestSizeByModelNeedsHolds: without hold times, or with too few, the rules decide and say
// their figure is a lower bound.
func TestSizeByModelNeedsHolds(t *testing.T) {
	few := offered{instances: 1, rate: 0.001, served: 0.001, hold: 0.1, inUse: 1}.samples(600)
	for name, c := range map[string]struct {
		in  Input
		why string // how the note says why the model did not size it
	}{
		"activity":  {Input{Pool: withSource(pool(2, 0, 1), metrics.SourceActivity), Summary: summarize(pool(2, 0, 1), series(600, 15, func(int) Sample { return Sample{InUse: 2} }))}, "no hold times from this source:"},
		"few holds": {Input{Pool: appPool(2, 0, 1, 1), Summary: summarize(appPool(2, 0, 1, 1), few)}, "checkouts held and returned in the last 10m, fewer than the 20 the model needs:"},
	} {
		o := OptimizePoolSettings(c.in, DefaultThresholds())
		if o.Sizing.Model != ModelRules || !o.Sizing.LowerBound || o.Sizing.Current != nil || !strings.Contains(o.Sizing.Note, "lower bound") {
			t.Errorf("%s: sizing %+v, want the rules, a lower bound, no prediction", name, o.Sizing)
		}
		if !strings.HasPrefix(o.Sizing.Note, c.why) && !strings.Contains(o.Sizing.Note, " "+c.why) {
			t.Errorf("%s: the note says %q, want why the model did not size it: %q", name, o.Sizing.Note, c.why)
		}
	}
}

func secondsDuration(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// TestOneAnswer: every output of Analyze names one size and one overflow: the health fixes
// point to the optimization's recommendation, and no message sets another figure.
func TestOneAnswer(t *testing.T) {
	for name, in := range map[string]Input{
		"timeouts (model)": {Pool: timeoutPool, Summary: summarize(timeoutPool, timeoutLoad.samples(600)), Server: &Server{MaxConnections: 200}},
		"busy (rules)":     {Pool: busyPool, Summary: summarize(busyPool, busySamples), Server: &Server{MaxConnections: 40, TotalInstances: 2, TotalCapacity: 60}},
	} {
		r := Analyze(in, DefaultThresholds())
		o := r.Optimization
		all := append(append([]Finding{}, r.Health.Recommendations...), o.Recommendations...)
		size, overflow := strconv.Itoa(o.RecommendedPoolSize), strconv.Itoa(o.RecommendedMaxOverflow)
		for _, f := range all {
			for _, m := range regexp.MustCompile(`DB_POOL_SIZE(?:=| to | from \d+ to )(\d+)`).FindAllStringSubmatch(f.Message, -1) {
				if m[1] != size {
					t.Errorf("%s: %s says DB_POOL_SIZE %s, the recommendation is %s", name, f.Rule, m[1], size)
				}
			}
			for _, m := range regexp.MustCompile(`DB_MAX_OVERFLOW(?:=| to [^=]*= )(\d+)`).FindAllStringSubmatch(f.Message, -1) {
				if m[1] != overflow {
					t.Errorf("%s: %s says DB_MAX_OVERFLOW %s, the recommendation is %s", name, f.Rule, m[1], overflow)
				}
			}
			if slices.Contains(sizingRules, f.Rule) && slices.Contains(r.Health.Recommendations, f) &&
				!strings.Contains(f.Message, "recommended: DB_POOL_SIZE="+size+", DB_MAX_OVERFLOW="+overflow+" (by "+o.PoolSizeRule) {
				t.Errorf("%s: the fix of %s does not name the recommendation: %s", name, f.Rule, f.Message)
			}
		}
		if len(r.Health.Warnings) == 0 {
			t.Errorf("%s: no warning to fix", name)
		}
	}
}

// TestPredictionsRemembered: a second answer from the same history runs no simulation and
// gives the same figures; another load runs its own.
func TestPredictionsRemembered(t *testing.T) {
	var c Predictions
	in := Input{Pool: timeoutPool, Summary: summarize(timeoutPool, timeoutLoad.samples(600)), Predictions: &c}
	first := OptimizePoolSettings(in, DefaultThresholds())
	n := c.Len()
	if n == 0 {
		t.Fatal("nothing remembered")
	}
	again := OptimizePoolSettings(in, DefaultThresholds())
	if c.Len() != n {
		t.Errorf("the same history ran %d more predictions", c.Len()-n)
	}
	a, _ := json.Marshal(first)
	b, _ := json.Marshal(again)
	if string(a) != string(b) {
		t.Errorf("remembered answer differs:\n%s\n%s", a, b)
	}
	other := timeoutLoad
	other.rate = 30
	in.Summary = summarize(timeoutPool, other.samples(600))
	OptimizePoolSettings(in, DefaultThresholds())
	if c.Len() == n {
		t.Error("another load reused the first one's predictions")
	}
}

// TestSizeByModelKeepsNearFloor: a pool that meets the targets a hair below the buffered
// demand is kept; one clearly below is raised.
func TestSizeByModelKeepsNearFloor(t *testing.T) {
	for _, tc := range []struct {
		size int
		rate float64
		want int
		rule string
	}{
		{9, 40.7, 9, RuleKeepCurrent}, // 40.7 x 0.15 = 6.1, x 1.5 = 9.16: 9 is within 5%
		{9, 43, 10, RuleLittlesLaw},   // 6.45 x 1.5 = 9.7 -> 10: 9 is 7% short, and 72% utilized
		{8, 40.7, 10, RuleLittlesLaw}, // 8 is 13% short
	} {
		p := appPool(tc.size, 2*tc.size, 2, 1)
		o := offered{instances: 2, rate: tc.rate, served: tc.rate, hold: 0.15, createSeconds: 0.005}
		got := OptimizePoolSettings(Input{Pool: p, Summary: summarize(p, o.samples(600))}, DefaultThresholds())
		if got.RecommendedPoolSize != tc.want || got.PoolSizeRule != tc.rule {
			t.Errorf("%d at %g/s: %d by %s, want %d by %s\n%s", tc.size, tc.rate, got.RecommendedPoolSize, got.PoolSizeRule, tc.want, tc.rule, messages(got.Recommendations))
		}
	}
}

// TestBucketJSON: a histogram's +Inf bound survives JSON (which has no infinity), so that the
// API's answer can be read back (advise --advise.from).
func TestBucketJSON(t *testing.T) {
	in := HoldTimes{MeanSeconds: 0.15, Count: 3, Buckets: []Bucket{{0.1, 0}, {0.25, 3}, {math.Inf(1), 3}}}
	data, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), `{"le":"+Inf","count":3}`) {
		t.Errorf("JSON %s lacks the +Inf bucket as a string", data)
	}
	var out HoldTimes
	if err := json.Unmarshal(data, &out); err != nil || !slices.Equal(out.Buckets, in.Buckets) {
		t.Errorf("read back %+v (%v), want %+v", out, err, in)
	}
	if err := json.Unmarshal([]byte(`{"buckets":[{"le":"soon","count":1}]}`), &out); err == nil {
		t.Error("a bound that is no number was accepted")
	}
}

// sizingTarget is the most one sizing (current, search and curve, nothing remembered) may
// cost: the daemon reruns it when a pool's load changed, at most once per sample.
const sizingTarget = 50 * time.Millisecond

// BenchmarkSizing prints the time of a whole sizing next to sizingTarget: the guide's
// timeout case (the search from 2 to 9 and a curve of 9 sizes) and the oversized pool.
func BenchmarkSizing(b *testing.B) {
	for name, in := range map[string]Input{
		"undersized 2+0 at 40/s x 150ms": {Pool: timeoutPool, Summary: summarize(timeoutPool, timeoutLoad.samples(600))},
		"oversized 30+60 at 5/s x 20ms": {Pool: appPool(30, 60, 2, 30),
			Summary: summarize(appPool(30, 60, 2, 30), offered{instances: 2, rate: 5, served: 5, hold: 0.02, createSeconds: 0.005}.samples(3700))},
	} {
		b.Run(name, func(b *testing.B) {
			var predictions int
			for b.Loop() {
				var c Predictions // nothing remembered between runs
				in.Predictions = &c
				OptimizePoolSettings(in, DefaultThresholds())
				predictions = c.Len()
			}
			b.ReportMetric(float64(b.Elapsed())/float64(b.N)/float64(time.Millisecond), "ms/sizing")
			b.ReportMetric(float64(predictions), "predictions")
			b.ReportMetric(float64(sizingTarget)/float64(time.Millisecond), "ms-target")
		})
	}
}
