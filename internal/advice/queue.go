package advice

import (
	"math"
	"math/rand/v2"
	"slices"
)

// The queueing model predicts what a pool of a given size does under a measured load: how
// long checkouts wait, how many wait at all, how many time out, how busy the connections are.
//
// Why a simulation and not a formula. Erlang C (M/M/c) is the textbook answer, but it has no
// steady state once the offered load λ·W reaches the number of connections, and that is
// exactly the undersized pool whose timeouts the model must predict; it also assumes
// exponential hold times, which overstates the waits of web requests whose holds are nearly
// constant. Erlang A (M/M/c+M) copes with overload, but with exponential patience, while a
// pool's callers all give up after exactly DB_POOL_TIMEOUT. So the model is a discrete-event
// simulation of one instance's pool as SQLAlchemy's QueuePool runs it:
//
//   - checkouts arrive as a Poisson stream at the measured rate of checkout attempts;
//   - each holds its connection for a time drawn from the measured hold-time histogram
//     (uniform within a bucket, scaled so that the mean is the measured mean), or, where only
//     a mean is known, from an exponential distribution with that mean (the M/M/c assumption);
//   - a checkout takes an idle connection if there is one; else, below pool_size +
//     max_overflow open connections, it opens a new one, which costs the measured connect
//     time (waited by the caller and holding the connection); else it queues, first come
//     first served, and gives up after DB_POOL_TIMEOUT;
//   - a returned connection goes to the longest waiting caller that has not given up; with
//     no one waiting it stays open while fewer than pool_size are idle, and is closed
//     otherwise (an overflow connection).
//
// It is deterministic (a fixed seed: the same inputs always give the same prediction) and
// bounded: simArrivals checkouts per prediction whatever the rate, about a millisecond or two
// (BenchmarkPredict prints it next to its target).

// HoldTimes is how long checkouts held their connection over the span the offered load was
// taken from (see Summary).
type HoldTimes struct {
	MeanSeconds float64 `json:"mean_seconds"`
	// Count is how many holds the figures come from; 0 when unknown.
	Count float64 `json:"count,omitempty"`
	// Buckets is the cumulative histogram, bounds ascending, the last possibly +Inf; nil when
	// only the mean is known.
	Buckets []Bucket `json:"buckets,omitempty"`
}

// Load is what one instance's pool is offered, the input of a prediction.
type Load struct {
	Rate          float64   // checkout attempts per second per instance
	Hold          HoldTimes // how long each holds its connection
	CreateSeconds float64   // time to open a new connection
	// TimeoutSeconds is DB_POOL_TIMEOUT; 0 means callers wait as long as it takes.
	TimeoutSeconds float64
}

// Demand is the offered load in connections, λ·W: how many are in use on average when
// nobody has to wait.
func (l Load) Demand() float64 { return l.Rate * l.Hold.MeanSeconds }

// Prediction is what the model expects of one instance's pool of a given size under a Load.
// Rates and means are per checkout attempt; a checkout that times out counts its timeout as
// its wait, as the measured average checkout time does.
type Prediction struct {
	PoolSize    int `json:"pool_size"`
	MaxOverflow int `json:"max_overflow"`
	// MeanWaitSeconds is the average checkout time.
	MeanWaitSeconds float64 `json:"mean_wait_seconds"`
	// WaitProbability is the chance that a checkout finds no idle connection: it queues or
	// opens a new connection.
	WaitProbability float64 `json:"wait_probability"`
	// QueueProbability is the chance that a checkout queues for a connection to be returned.
	QueueProbability float64 `json:"queue_probability"`
	// TimeoutProbability is the chance that a checkout gives up after DB_POOL_TIMEOUT.
	TimeoutProbability float64 `json:"timeout_probability"`
	// TimeoutsPerSecond is TimeoutProbability x the rate of checkouts, per instance.
	TimeoutsPerSecond float64 `json:"timeouts_per_second"`
	// MeanInUse is the average number of connections checked out (or being opened).
	MeanInUse float64 `json:"mean_in_use"`
	// Utilization is MeanInUse over pool_size, as get_pool_health reports it.
	Utilization float64 `json:"utilization"`
	// Unbounded is set when callers wait forever (no timeout) and the demand reaches the
	// connections: the queue then grows without end and the waits have no average.
	Unbounded bool `json:"unbounded,omitempty"`
	// MeetsTargets says whether the figures meet the targets (Targets).
	MeetsTargets bool `json:"meets_targets"`
}

// Simulation size. A prediction counts SimCheckouts checkouts, after simWarmup that bring
// the pool to its steady state. An overloaded pool (demand above its connections, with a
// timeout) starts with its steady queue instead of an empty one: the callers of the last
// DB_POOL_TIMEOUT, all still waiting (at most simMaxQueue of them); filling it from empty
// would take many timeouts' worth of checkouts when the overload is mild.
const (
	// SimCheckouts is how many simulated checkouts a prediction counts: its resolution is
	// 1/SimCheckouts, and "no timeout" means none of them timed out.
	SimCheckouts = 18_000
	simWarmup    = 2_000
	simMaxQueue  = 60_000
)

// simSeed fixes the random streams, so that a prediction is a function of its inputs, and the
// predictions for different sizes share one stream of arrivals and holds (their differences
// are the sizes', not noise).
var simSeed = [2]uint64{0x6462706f6f6c, 0x73697a696e67}

// Predict runs the model for one instance's pool of poolSize + maxOverflow connections.
func Predict(l Load, poolSize, maxOverflow int) Prediction {
	p := Prediction{PoolSize: poolSize, MaxOverflow: maxOverflow}
	c := poolSize + maxOverflow
	switch {
	case l.Rate <= 0 || l.Hold.MeanSeconds <= 0:
		return p // no load: nothing waits, nothing is in use
	case c < 1:
		p.Unbounded = l.TimeoutSeconds <= 0
		p.WaitProbability, p.QueueProbability, p.TimeoutProbability = 1, 1, 1
		p.MeanWaitSeconds, p.TimeoutsPerSecond = l.TimeoutSeconds, l.Rate
		return p
	case l.TimeoutSeconds <= 0 && l.Rate*(l.Hold.MeanSeconds+l.CreateSeconds*float64(maxOverflow)/float64(c)) >= float64(c):
		// Without a timeout nothing relieves an overloaded pool: the queue grows forever.
		// (The create time counts in proportion to the overflow share, a lower bound.)
		p.Unbounded = true
		p.WaitProbability, p.QueueProbability = 1, 1
		p.MeanInUse = float64(c)
		p.Utilization = utilizationOf(p.MeanInUse, poolSize, c)
		return p
	}
	s := newSim(l, poolSize, c)
	s.run()
	n := float64(SimCheckouts)
	p.MeanWaitSeconds = s.waitSum / n
	p.WaitProbability = float64(s.created+s.queued) / n
	p.QueueProbability = float64(s.queued) / n
	p.TimeoutProbability = float64(s.timeouts) / n
	p.TimeoutsPerSecond = p.TimeoutProbability * l.Rate
	if span := s.lastArrival - s.firstCounted; span > 0 {
		p.MeanInUse = math.Min(s.busySum/span, float64(c))
	}
	p.Utilization = utilizationOf(p.MeanInUse, poolSize, c)
	return p
}

// utilizationOf is in use over pool_size, or over the capacity when pool_size is 0.
func utilizationOf(inUse float64, poolSize, capacity int) float64 {
	if poolSize > 0 {
		return inUse / float64(poolSize)
	}
	return inUse / float64(max(capacity, 1))
}

// waiter is a checkout queued for a connection.
type waiter struct {
	arrived float64
	counted bool
}

type sim struct {
	l        Load
	rng      *rand.Rand
	hold     holdSampler
	poolSize int
	capacity int

	busy    []float64 // min-heap of the times busy connections come back
	idle    int
	open    int
	waiters []waiter // FIFO; waiters[head:] are waiting
	head    int

	waitSum                   float64
	busySum                   float64 // connection-seconds of the counted checkouts
	created, queued           int
	timeouts                  int
	firstCounted, lastArrival float64
}

func newSim(l Load, poolSize, capacity int) *sim {
	return &sim{
		l:        l,
		rng:      rand.New(rand.NewPCG(simSeed[0], simSeed[1])),
		hold:     newHoldSampler(l.Hold),
		poolSize: poolSize,
		capacity: capacity,
		busy:     make([]float64, 0, capacity),
		// A pool that has run for a while holds pool_size connections (or fewer, if its
		// overflow is all it has).
		idle: min(poolSize, capacity),
		open: min(poolSize, capacity),
	}
}

func (s *sim) run() {
	t := 0.0
	if s.l.TimeoutSeconds > 0 && s.l.Demand() > float64(s.capacity) {
		// Busy connections at random points of their holds, then the queue.
		for len(s.busy) < s.capacity {
			heapPush(&s.busy, s.rng.Float64()*s.hold.sample(s.rng))
		}
		s.idle, s.open = 0, s.capacity
		span := math.Min(s.l.TimeoutSeconds, simMaxQueue/s.l.Rate)
		for a := -span; ; {
			a += s.rng.ExpFloat64() / s.l.Rate
			if a >= 0 {
				break
			}
			s.waiters = append(s.waiters, waiter{a, false})
		}
	}
	for i := range simWarmup + SimCheckouts {
		t += s.rng.ExpFloat64() / s.l.Rate
		for len(s.busy) > 0 && s.busy[0] <= t {
			s.release(heapPop(&s.busy))
		}
		counted := i >= simWarmup
		if i == simWarmup {
			s.firstCounted = t
		}
		s.arrive(t, counted)
	}
	s.lastArrival = t
	// Settle the callers still waiting: each is served or gives up.
	for s.head < len(s.waiters) && len(s.busy) > 0 {
		s.release(heapPop(&s.busy))
	}
}

func (s *sim) arrive(t float64, counted bool) {
	switch {
	case s.idle > 0:
		s.idle--
		s.start(t, 0, counted)
	case s.open < s.capacity:
		s.open++
		if counted {
			s.created++
		}
		s.start(t, s.l.CreateSeconds, counted)
	default:
		if counted {
			s.queued++
		}
		s.waiters = append(s.waiters, waiter{t, counted})
	}
}

// start gives a connection to a checkout at t. create is the time to open it (0 for an idle
// one): the caller waits for it, and the connection is busy from t until the hold ends.
func (s *sim) start(t, create float64, counted bool) {
	hold := s.hold.sample(s.rng)
	if counted {
		s.waitSum += create
		s.busySum += create + hold
	}
	heapPush(&s.busy, t+create+hold)
}

// release returns a connection at time d.
func (s *sim) release(d float64) {
	for s.head < len(s.waiters) {
		w := s.waiters[s.head]
		s.head++
		if s.l.TimeoutSeconds > 0 && d-w.arrived > s.l.TimeoutSeconds {
			if w.counted {
				s.timeouts++
				s.waitSum += s.l.TimeoutSeconds
			}
			continue
		}
		if w.counted {
			s.waitSum += d - w.arrived
		}
		s.start(d, 0, w.counted)
		s.compact()
		return
	}
	s.compact()
	if s.idle < s.poolSize {
		s.idle++
	} else {
		s.open--
	}
}

// compact drops the waiters already served or gone, once they are half the slice.
func (s *sim) compact() {
	if s.head > 1024 && s.head*2 > len(s.waiters) {
		s.waiters = slices.Delete(s.waiters, 0, s.head)
		s.head = 0
	}
}

func heapPush(h *[]float64, v float64) {
	*h = append(*h, v)
	a := *h
	for i := len(a) - 1; i > 0; {
		p := (i - 1) / 2
		if a[p] <= a[i] {
			break
		}
		a[p], a[i] = a[i], a[p]
		i = p
	}
}

func heapPop(h *[]float64) float64 {
	a := *h
	top := a[0]
	n := len(a) - 1
	a[0] = a[n]
	a = a[:n]
	for i := 0; ; {
		l, m := 2*i+1, i
		if l < n && a[l] < a[m] {
			m = l
		}
		if r := l + 1; r < n && a[r] < a[m] {
			m = r
		}
		if m == i {
			break
		}
		a[i], a[m] = a[m], a[i]
		i = m
	}
	*h = a
	return top
}

// holdSampler draws hold times: from the histogram where there is one, piecewise uniform
// within each bucket (the +Inf bucket at the mean its share of the sum implies) and scaled so
// that the mean is the measured one; otherwise exponential with the measured mean.
type holdSampler struct {
	mean  float64
	cum   []float64 // cumulative probability of each piece
	lo    []float64
	width []float64
}

func newHoldSampler(h HoldTimes) holdSampler {
	s := holdSampler{mean: h.MeanSeconds}
	total := 0.0
	if n := len(h.Buckets); n > 0 {
		total = h.Buckets[n-1].Count
	}
	if total <= 0 {
		return s
	}
	var mass, expect, prevLE, prevCount float64
	for _, b := range h.Buckets {
		n := b.Count - prevCount
		if n > 0 {
			lo, w := prevLE, b.LE-prevLE
			if math.IsInf(b.LE, 1) {
				// Above the last bound: what the sum leaves for these, at least the bound.
				rest := (h.MeanSeconds*total - expect) / n
				lo, w = math.Max(prevLE, rest), 0
			}
			mass += n
			expect += n * (lo + w/2)
			s.cum = append(s.cum, mass/total)
			s.lo = append(s.lo, lo)
			s.width = append(s.width, w)
		}
		prevLE, prevCount = b.LE, math.Max(prevCount, b.Count)
	}
	if expect <= 0 {
		s.cum = nil
		return s
	}
	k := h.MeanSeconds * total / expect
	for i := range s.lo {
		s.lo[i] *= k
		s.width[i] *= k
	}
	return s
}

func (s *holdSampler) sample(r *rand.Rand) float64 {
	if s.cum == nil {
		return r.ExpFloat64() * s.mean
	}
	u := r.Float64()
	i := 0
	for i < len(s.cum)-1 && u >= s.cum[i] {
		i++
	}
	return s.lo[i] + r.Float64()*s.width[i]
}
