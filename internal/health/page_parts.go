package health

import (
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/dbpool/dbpool_exporter/internal/advice"
)

// The status page's charts and its "what to set" box, drawn from one report.

// chartBox is a chart with its heading and legend.
type chartBox struct {
	Name   string // data-chart
	Title  string
	Legend []legendItem
	SVG    chartSVG
}

type legendItem struct{ Class, Text string }

// historyCharts draws the window's series (window.series): in use against pool size and
// capacity, waiting callers, checkout time and timeouts, the last three where the source
// observes them. note names what the source cannot see, or what did not happen.
func historyCharts(r *Report, now time.Time) (charts []chartBox, note string) {
	series := r.Window.Series
	if len(series) == 0 {
		return nil, "no sample in the window"
	}
	window := r.Window.WindowSeconds
	n := len(series)
	x := make([]float64, n)
	inUse, size, capacity, pending, wait, timeouts := nanSlice(n), nanSlice(n), nanSlice(n), nanSlice(n), nanSlice(n), nanSlice(n)
	for i, p := range series {
		x[i] = p.Time.Sub(now).Seconds()
		inUse[i] = float64(p.InUse)
		if p.PoolSize > 0 {
			size[i] = float64(p.PoolSize)
		}
		if p.Capacity > 0 {
			capacity[i] = float64(p.Capacity)
		}
		if p.Pending != nil {
			pending[i] = float64(*p.Pending)
		}
		if p.CheckoutSeconds != nil {
			wait[i] = *p.CheckoutSeconds * 1000
		}
		if p.Timeouts != nil {
			timeouts[i] = *p.Timeouts
		}
	}
	// A pool without overflow (pgxpool, and an application's pool with max_overflow 0) has
	// its pool size for capacity: one line, said once, rather than two drawn on each other.
	sizeIsCapacity := anyFinite(size) && slices.EqualFunc(size, capacity, func(a, b float64) bool { return a == b || math.IsNaN(a) && math.IsNaN(b) })
	if sizeIsCapacity {
		size = nanSlice(n)
	}
	ticks := timeTicks(now, window)
	name := r.Pool + " on " + r.Target
	over := " over the last " + humanDuration(time.Duration(window*float64(time.Second)))
	spec := func(title string, floor float64, s ...chartSeries) chartSpec {
		return chartSpec{Title: name + ": " + title + over, XMin: -window, XMax: 0, XTicks: ticks, YFloor: floor, Series: s}
	}

	use := spec("connections in use, pool size and capacity", 1,
		chartSeries{Name: "in_use", Class: "c-inuse", Kind: kindArea, X: x, Y: inUse},
		chartSeries{Name: "pool_size", Class: "c-size", Kind: kindSteps, X: x, Y: size},
		chartSeries{Name: "capacity", Class: "c-cap", Kind: kindSteps, X: x, Y: capacity})
	use.YCount = true
	limitLabels(&use, series[n-1])
	legend := []legendItem{{"c-inuse", "peak"}}
	if anyFinite(size) {
		legend = append(legend, legendItem{"c-size", "pool size"})
	}
	switch {
	case sizeIsCapacity:
		legend = append(legend, legendItem{"c-cap", "capacity = pool size"})
	case anyFinite(capacity):
		legend = append(legend, legendItem{"c-cap", "capacity"})
	}
	charts = append(charts, chartBox{Name: "in_use", Title: "In use", Legend: legend, SVG: use.draw()})

	var missing []string
	idle := ""
	if anyFinite(pending) {
		s := spec("callers waiting for a connection", 1, chartSeries{Name: "pending", Class: "c-pending", Kind: kindArea, X: x, Y: pending})
		s.YCount = true
		charts = append(charts, chartBox{Name: "pending", Title: "Waiting callers", Legend: []legendItem{{"c-pending", "peak"}}, SVG: s.draw()})
	} else {
		missing = append(missing, "waiting callers")
	}
	if anyFinite(wait) {
		s := spec("average checkout time in milliseconds", 1, chartSeries{Name: "checkout_ms", Class: "c-wait", X: x, Y: wait})
		legend := []legendItem{{"c-wait", "average, ms"}}
		if t := r.Optimization.Sizing.Targets.MaxMeanWaitSeconds; t > 0 {
			s.Rules = []chartRule{{Y: t * 1000, Label: "target " + readable(t*1000) + " ms", Class: "r-target"}}
		}
		charts = append(charts, chartBox{Name: "checkout", Title: "Checkout time", Legend: legend, SVG: s.draw()})
	} else if l := r.Window.Latest; l.CheckoutsTotal == nil || l.CheckoutSecondsTotal == nil {
		missing = append(missing, "checkout times")
	} else {
		idle = "no checkout in the window"
	}
	if anyFinite(timeouts) {
		s := spec("checkouts that timed out", 1, chartSeries{Name: "timeouts", Class: "c-timeouts", Kind: kindArea, X: x, Y: timeouts})
		s.YCount = true
		charts = append(charts, chartBox{Name: "timeouts", Title: "Timeouts", Legend: []legendItem{{"c-timeouts", "per point"}}, SVG: s.draw()})
	} else if r.Window.Latest.TimeoutsTotal == nil {
		missing = append(missing, "timeouts")
	}
	var notes []string
	if len(missing) > 0 {
		notes = append(notes, "source "+string(r.Source)+" cannot see "+strings.Join(missing, ", "))
	}
	if idle != "" {
		notes = append(notes, idle)
	}
	return charts, strings.Join(notes, "; ")
}

// limitLabels name the newest pool size and capacity at the right end of their lines; the
// pool size only where its label does not run into the capacity's.
func limitLabels(c *chartSpec, last advice.Point) {
	size, capacity := &c.Series[1], &c.Series[2]
	if last.Capacity > 0 {
		capacity.EndLabel = "capacity " + strconv.Itoa(last.Capacity)
	}
	if last.PoolSize > 0 && last.PoolSize != last.Capacity {
		top := axisTop(c.axisMax(false), c.YFloor, c.YCount)
		if last.Capacity == 0 || float64(last.Capacity-last.PoolSize) >= 0.12*top {
			size.EndLabel, size.EndBelow = "pool size "+strconv.Itoa(last.PoolSize), true
		}
	}
}

// timeTicks label the start, middle and end of the window with the time of day (UTC).
func timeTicks(now time.Time, window float64) []chartTick {
	layout := "15:04"
	if window < 600 {
		layout = "15:04:05"
	}
	var out []chartTick
	for _, f := range []float64{1, 0.5, 0} {
		at := -f * window
		out = append(out, chartTick{At: at, Label: now.Add(time.Duration(at * float64(time.Second))).UTC().Format(layout)})
	}
	return out
}

func nanSlice(n int) []float64 {
	s := make([]float64, n)
	for i := range s {
		s[i] = math.NaN()
	}
	return s
}

func anyFinite(s []float64) bool {
	for _, v := range s {
		if isFinite(v) {
			return true
		}
	}
	return false
}

// plan is what to set, with the model's predicted effect.
type plan struct {
	Env          string
	Settings     []settingLine
	Keep         bool
	Rule         string
	OverflowRule string
	Effect       []effectRow
	Now, Set     *effectRow // the model's prediction as configured now and as recommended
	Load         []part     // the load the model sized for, and the span it was taken from
	Note         string
	Chart        *chartBox
	Sizing       []advice.Finding
}

type settingLine struct {
	Name     string
	Set, Now fig
}

type effectRow struct {
	Label               string
	Size                fig
	Unbounded           bool
	Wait, Timeout, Util fig
	MeetsTargets        bool
}

func planOf(r *Report) plan {
	o := &r.Optimization
	p := plan{Env: o.Env, Rule: o.PoolSizeRule, OverflowRule: o.MaxOverflowRule, Sizing: shorten(o.Recommendations), Note: o.Sizing.Note}
	if !r.Configured {
		// Its settings are unknown: the unconfigured_pool finding says what can be said.
		p.Sizing, p.Note = nil, ""
		for _, f := range shorten(o.Recommendations) {
			p.Note = strings.TrimSpace(p.Note + " " + f.Message)
		}
		return p
	}
	names := o.SettingNames
	p.Settings = append(p.Settings, settingLine{Name: names.PoolSize,
		Set: intFig("optimization.recommended_pool_size", o.RecommendedPoolSize),
		Now: intFig("optimization.current_settings.pool_size", o.CurrentSettings.PoolSize)})
	if !strings.HasPrefix(names.MaxOverflow, "none") {
		p.Settings = append(p.Settings, settingLine{Name: names.MaxOverflow,
			Set: intFig("optimization.recommended_max_overflow", o.RecommendedMaxOverflow),
			Now: intFig("optimization.current_settings.max_overflow", o.CurrentSettings.MaxOverflow)})
	}
	p.Keep = o.RecommendedPoolSize == o.CurrentSettings.PoolSize && o.RecommendedMaxOverflow == o.CurrentSettings.MaxOverflow
	sz := &o.Sizing
	for _, e := range []struct {
		label, key string
		p          *advice.Prediction
	}{{"now", "current", sz.Current}, {"set", "recommended", sz.Recommended}} {
		if e.p == nil {
			continue
		}
		k := "optimization.sizing." + e.key + "."
		row := effectRow{Label: e.label, Size: intFig(k+"pool_size", e.p.PoolSize), Unbounded: e.p.Unbounded, MeetsTargets: e.p.MeetsTargets}
		if !e.p.Unbounded {
			row.Wait = msFig(k+"mean_wait_seconds", e.p.MeanWaitSeconds)
			row.Timeout = numFig(k+"timeout_probability", e.p.TimeoutProbability, 100, readable(e.p.TimeoutProbability*100))
			row.Util = numFig(k+"utilization", e.p.Utilization, 100, readable(e.p.Utilization*100))
		}
		p.Effect = append(p.Effect, row)
	}
	if len(p.Effect) == 2 {
		p.Now, p.Set = &p.Effect[0], &p.Effect[1]
	}
	if sz.Model == advice.ModelQueueing && sz.Hold != nil && !sz.LoadFrom.IsZero() {
		p.Load = loadParts(sz)
	}
	if len(sz.Curve) > 0 && sz.Current != nil && sz.Recommended != nil {
		p.Chart = predictionChart(r)
	}
	return p
}

// loadParts says what load the model sized for and over which span: "sized for the busiest 5
// min of the window, 12:30:00 UTC-12:35:00 UTC: 30/s x 100 ms per instance".
func loadParts(sz *advice.Sizing) []part {
	const k = "optimization.sizing."
	parts := []part{{Text: "sized for the average load of the whole history, "}}
	if sz.BusiestSpanSeconds > 0 {
		parts = []part{{Text: "sized for the busiest "},
			{Fig: ptr(numFig(k+"busiest_span_seconds", sz.BusiestSpanSeconds, 1.0/60, readable(sz.BusiestSpanSeconds/60)))},
			{Text: " min of the window, "}}
	}
	return append(parts,
		part{Fig: ptr(timeFig(k+"load_from", sz.LoadFrom))}, part{Text: "\u2013"}, part{Fig: ptr(timeFig(k+"load_to", sz.LoadTo))},
		part{Text: ": "}, part{Fig: ptr(numFig(k+"arrival_rate", sz.ArrivalRate, 1, readable(sz.ArrivalRate)))},
		part{Text: "/s x "}, part{Fig: ptr(msFig(k+"hold.mean_seconds", sz.Hold.MeanSeconds))}, part{Text: " ms held, per instance"})
}

// predictionChart draws the model's curve: predicted mean checkout time (left axis) and
// chance of a timeout (right axis) against pool size, per instance, marking the current and
// the recommended size.
func predictionChart(r *Report) *chartBox {
	sz := &r.Optimization.Sizing
	n := len(sz.Curve)
	x, wait, timeout := make([]float64, n), nanSlice(n), nanSlice(n)
	band := chartBand{From: math.NaN(), To: math.NaN(), Label: "no end", Class: "b-unbounded"}
	for i, p := range sz.Curve {
		x[i] = float64(p.PoolSize)
		if p.Unbounded {
			if !isFinite(band.From) {
				band.From = x[i] - 0.5
			}
			band.To = x[i] + 0.5
			continue
		}
		wait[i], timeout[i] = p.MeanWaitSeconds*1000, p.TimeoutProbability*100
	}
	lo, hi := x[0], x[n-1]
	if hi <= lo {
		lo, hi = lo-1, hi+1
	}
	cur, rec := sz.Current.PoolSize, sz.Recommended.PoolSize
	markers := []chartMarker{{X: float64(cur), Label: "now " + strconv.Itoa(cur), Class: "m-now"}, {X: float64(rec), Label: "set " + strconv.Itoa(rec), Class: "m-set"}}
	if cur == rec {
		markers = []chartMarker{{X: float64(rec), Label: "keep " + strconv.Itoa(rec), Class: "m-set"}}
	}
	spec := chartSpec{
		Title: r.Pool + " on " + r.Target + ": predicted average checkout time and chance of a timeout against " + r.Optimization.SettingNames.PoolSize + ", per instance",
		Width: 360, Height: 150,
		XMin: lo, XMax: hi,
		XTicks:   []chartTick{{At: lo, Label: readable(lo)}, {At: hi, Label: readable(hi)}},
		YFloor:   1,
		Y2Floor:  1,
		Y2Format: func(v float64) string { return compact(v) + "%" },
		YClass:   "c-wait",
		Y2Class:  "c-timeouts",
		Series: []chartSeries{
			{Name: "predicted_wait_ms", Class: "c-wait", Dots: true, X: x, Y: wait},
			{Name: "predicted_timeout_pct", Class: "c-timeouts dashed", Dots: true, Right: true, X: x, Y: timeout},
		},
		Markers: markers,
	}
	// The sizes far below the current one predict waits that would flatten the curve where
	// the reader looks: the axis ends at about three times the largest wait of now, set and
	// the target, and a wait above it is written at the top.
	yCap := sz.Targets.MaxMeanWaitSeconds * 1000
	for _, p := range []*advice.Prediction{sz.Current, sz.Recommended} {
		if !p.Unbounded && isFinite(p.MeanWaitSeconds) {
			yCap = max(yCap, p.MeanWaitSeconds*1000)
		}
	}
	if yCap > 0 {
		spec.YCap = 3 * yCap
	}
	if isFinite(band.From) {
		spec.Bands = []chartBand{band}
	}
	if t := sz.Targets.MaxMeanWaitSeconds; t > 0 {
		spec.Rules = []chartRule{{Y: t * 1000, Label: "target", Class: "r-target"}}
	}
	return &chartBox{Name: "prediction", Title: "Predicted by " + r.Optimization.SettingNames.PoolSize,
		Legend: []legendItem{{"c-wait", "checkout, ms"}, {"c-timeouts", "timeouts, %"}},
		SVG:    spec.draw()}
}
