package advice

import (
	"fmt"
	"math"
	"testing"
	"time"
)

// erlangC is the probability that a checkout waits in an M/M/c queue with offered load a
// (λ/μ, in connections) on c connections, a < c.
func erlangC(c int, a float64) float64 {
	term, sum := 1.0, 1.0 // a^k/k! for k = 0
	for k := 1; k < c; k++ {
		term *= a / float64(k)
		sum += term
	}
	last := term * a / float64(c) * float64(c) / (float64(c) - a) // a^c/c! x c/(c-a)
	return last / (sum + last)
}

// constantHold is a hold time of about d: a histogram with every observation in a bucket
// 2% wide around it.
func constantHold(d float64) HoldTimes {
	return HoldTimes{MeanSeconds: d, Buckets: []Bucket{{d * 0.99, 0}, {d * 1.01, 1000}, {math.Inf(1), 1000}}}
}

func within(got, want, rel, abs float64) bool {
	return math.Abs(got-want) <= math.Max(rel*math.Abs(want), abs)
}

// TestPredictErlangC: with exponential holds, no overflow, no connect time and no timeout,
// the pool is M/M/c, whose chance of waiting and mean wait Erlang C gives in closed form.
func TestPredictErlangC(t *testing.T) {
	for _, tc := range []struct {
		c          int
		rate, hold float64
	}{
		{1, 10, 0.05},  // ρ = 0.5
		{2, 10, 0.15},  // a = 1.5, ρ = 0.75
		{5, 40, 0.1},   // a = 4, ρ = 0.8
		{9, 40, 0.15},  // the guide's timeout case, sized: a = 6, ρ = 0.67
		{20, 100, 0.1}, // a = 10, ρ = 0.5
		{8, 100, 0.05}, // the guide's example: a = 5 on 8
	} {
		t.Run(fmt.Sprintf("c=%d a=%g", tc.c, tc.rate*tc.hold), func(t *testing.T) {
			a := tc.rate * tc.hold
			pw := erlangC(tc.c, a)
			wq := pw * tc.hold / (float64(tc.c) - a)
			p := Predict(Load{Rate: tc.rate, Hold: HoldTimes{MeanSeconds: tc.hold}}, tc.c, 0)
			t.Logf("P(wait) %.4f (Erlang C %.4f), mean wait %.2f ms (Erlang C %.2f ms), in use %.2f (a %.2f)",
				p.QueueProbability, pw, p.MeanWaitSeconds*1000, wq*1000, p.MeanInUse, a)
			// 18,000 simulated checkouts: a few percent of noise, more where waits are rare.
			if !within(p.QueueProbability, pw, 0.1, 0.01) {
				t.Errorf("P(wait) = %.4f, Erlang C says %.4f", p.QueueProbability, pw)
			}
			if !within(p.MeanWaitSeconds, wq, 0.2, 0.0005) {
				t.Errorf("mean wait = %.5f s, Erlang C says %.5f s", p.MeanWaitSeconds, wq)
			}
			if !within(p.MeanInUse, a, 0.05, 0) {
				t.Errorf("mean in use = %.3f, offered load is %.3f", p.MeanInUse, a)
			}
			if p.TimeoutProbability != 0 || p.Unbounded {
				t.Errorf("no timeout configured, yet P(timeout) %g, unbounded %v", p.TimeoutProbability, p.Unbounded)
			}
		})
	}
}

// TestPredictConstantHolds: one connection and near-constant holds is M/D/1, whose mean wait
// Pollaczek-Khinchine gives: ρ W / (2 (1 - ρ)), half of M/M/1's. Erlang C would overstate it
// twice over; the histogram keeps the model from doing so.
func TestPredictConstantHolds(t *testing.T) {
	for _, rho := range []float64{0.3, 0.6, 0.8} {
		hold := 0.1
		rate := rho / hold
		want := rho * hold / (2 * (1 - rho))
		p := Predict(Load{Rate: rate, Hold: constantHold(hold)}, 1, 0)
		t.Logf("ρ %.1f: mean wait %.2f ms, M/D/1 %.2f ms, M/M/1 %.2f ms", rho, p.MeanWaitSeconds*1000, want*1000, 2*want*1000)
		if !within(p.MeanWaitSeconds, want, 0.15, 0) {
			t.Errorf("ρ %.1f: mean wait %.4f s, M/D/1 says %.4f s", rho, p.MeanWaitSeconds, want)
		}
	}
}

// TestPredictOverload: offered more than c/W checkouts per second, a pool with a timeout
// serves c/W of them and the rest time out: λ - c/W per second. Those served waited almost
// the whole timeout, so the mean checkout time is close to it. This is where Erlang C has no
// answer at all.
func TestPredictOverload(t *testing.T) {
	for _, tc := range []struct {
		name    string
		rate    float64
		hold    HoldTimes
		c       int
		timeout float64
	}{
		{"guide's timeout case: 40/s x 150 ms on 2 + 0, 1 s", 40, constantHold(0.15), 2, 1},
		{"exponential holds", 40, HoldTimes{MeanSeconds: 0.15}, 2, 1},
		{"30 s timeout", 100, constantHold(0.05), 3, 30},
		{"mild overload: 24/s x 100 ms on 2, 5 s", 24, constantHold(0.1), 2, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			capacity := float64(tc.c) / tc.hold.MeanSeconds
			want := tc.rate - capacity
			p := Predict(Load{Rate: tc.rate, Hold: tc.hold, TimeoutSeconds: tc.timeout}, tc.c, 0)
			t.Logf("timeouts %.2f/s (λ - c/W = %.2f/s), P(timeout) %.3f, mean wait %.3f s, in use %.2f of %d",
				p.TimeoutsPerSecond, want, p.TimeoutProbability, p.MeanWaitSeconds, p.MeanInUse, tc.c)
			if !within(p.TimeoutsPerSecond, want, 0.05, 0) {
				t.Errorf("timeouts %.2f/s, saturation says %.2f/s", p.TimeoutsPerSecond, want)
			}
			if p.MeanWaitSeconds < 0.8*tc.timeout || p.MeanWaitSeconds > tc.timeout {
				t.Errorf("mean wait %.3f s, want just under the timeout %g s", p.MeanWaitSeconds, tc.timeout)
			}
			if !within(p.MeanInUse, float64(tc.c), 0.02, 0) || p.Utilization < 0.98 {
				t.Errorf("in use %.3f (utilization %.3f), want all %d", p.MeanInUse, p.Utilization, tc.c)
			}
		})
	}
}

// TestPredictOverflowAndCreate: overflow connections open on demand and cost the connect
// time; a pool of 0 idle-keeping connections opens one for every checkout.
func TestPredictOverflowAndCreate(t *testing.T) {
	l := Load{Rate: 40, Hold: constantHold(0.15), CreateSeconds: 0.02, TimeoutSeconds: 30}
	// a = 6 on 2 permanent connections: a returned connection stays open while fewer than 2
	// are idle, so many checkouts still find one; the others open a connection.
	small := Predict(l, 2, 20)
	if small.QueueProbability != 0 || small.TimeoutProbability != 0 {
		t.Errorf("22 connections for a load of 6: P(queue) %g, P(timeout) %g, want 0", small.QueueProbability, small.TimeoutProbability)
	}
	if small.WaitProbability < 0.2 || !within(small.MeanWaitSeconds, small.WaitProbability*0.02, 1e-9, 1e-12) {
		t.Errorf("2 + 20: P(wait) %.3f and mean wait %.4f s, want a good share of checkouts to pay 20 ms to connect", small.WaitProbability, small.MeanWaitSeconds)
	}
	if small.Utilization < 3 { // in use over pool_size, as the guide measures it
		t.Errorf("utilization %.2f of pool_size 2, want about (6 + connect time) / 2", small.Utilization)
	}
	big := Predict(l, 12, 24)
	if big.WaitProbability > 0.05 || big.MeanWaitSeconds > 0.001 || !within(big.Utilization, 0.5, 0.05, 0) {
		t.Errorf("12 + 24: P(wait) %.3f, mean wait %.4f s, utilization %.3f; want hardly any waiting at 50%%", big.WaitProbability, big.MeanWaitSeconds, big.Utilization)
	}
}

// TestPredictEdges: no load, no connection, and no timeout with too little capacity.
func TestPredictEdges(t *testing.T) {
	if p := Predict(Load{}, 5, 10); p.MeanWaitSeconds != 0 || p.MeanInUse != 0 || p.Unbounded {
		t.Errorf("no load: %+v", p)
	}
	if p := Predict(Load{Rate: 10, Hold: HoldTimes{MeanSeconds: 0.1}, TimeoutSeconds: 2}, 0, 0); p.TimeoutProbability != 1 || p.MeanWaitSeconds != 2 {
		t.Errorf("no connection: %+v", p)
	}
	p := Predict(Load{Rate: 40, Hold: HoldTimes{MeanSeconds: 0.15}}, 2, 0)
	if !p.Unbounded || p.WaitProbability != 1 {
		t.Errorf("demand 6 on 2 connections without a timeout: %+v, want unbounded", p)
	}
}

// TestPredictDeterministic: the same inputs give the same prediction, and a bigger pool never
// waits longer (the sizes share one stream of arrivals).
func TestPredictDeterministic(t *testing.T) {
	l := Load{Rate: 40, Hold: constantHold(0.15), CreateSeconds: 0.005, TimeoutSeconds: 1}
	if a, b := Predict(l, 5, 0), Predict(l, 5, 0); a != b {
		t.Fatalf("two runs differ: %+v and %+v", a, b)
	}
	prev := math.Inf(1)
	for size := 1; size <= 12; size++ {
		p := Predict(l, size, 0)
		if p.MeanWaitSeconds > prev {
			t.Errorf("size %d waits %.5f s, longer than size %d (%.5f s)", size, p.MeanWaitSeconds, size-1, prev)
		}
		prev = p.MeanWaitSeconds
	}
}

// predictTarget is the most one prediction may cost: a sizing makes a dozen or two of them
// for each pool whose load changed, and /metrics, the API and the status page share them.
const predictTarget = 5 * time.Millisecond

// BenchmarkPredict prints the time of one prediction next to predictTarget, for a light load
// on a big pool, the guide's sized pool and an overloaded one.
func BenchmarkPredict(b *testing.B) {
	for _, bc := range []struct {
		name        string
		l           Load
		size, extra int
	}{
		{"light 5/s x 20ms on 30+60", Load{Rate: 5, Hold: constantHold(0.02), CreateSeconds: 0.005, TimeoutSeconds: 30}, 30, 60},
		{"sized 40/s x 150ms on 9+18", Load{Rate: 40, Hold: constantHold(0.15), CreateSeconds: 0.005, TimeoutSeconds: 1}, 9, 18},
		{"overload 40/s x 150ms on 2+0", Load{Rate: 40, Hold: constantHold(0.15), TimeoutSeconds: 1}, 2, 0},
		{"busy 2000/s x 50ms on 150+0", Load{Rate: 2000, Hold: HoldTimes{MeanSeconds: 0.05}, TimeoutSeconds: 30}, 150, 0},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				Predict(bc.l, bc.size, bc.extra)
			}
			per := b.Elapsed() / time.Duration(b.N)
			b.ReportMetric(float64(per)/float64(time.Millisecond), "ms/prediction")
			b.ReportMetric(float64(predictTarget)/float64(time.Millisecond), "ms-target")
		})
	}
}
