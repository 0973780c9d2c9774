package health

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// The plot area of a chart without a right axis: x 38..290, y 14 (top)..114 (bottom).

func TestChartDraw(t *testing.T) {
	nan, inf := math.NaN(), math.Inf(1)
	tests := []struct {
		name   string
		spec   chartSpec
		lines  []string // Points of the lines, in order
		areas  []string
		dots   []string // "cx,cy"
		points int
		labels []string // texts that must be among the labels
	}{
		{
			name:   "coordinates: x over [XMin, XMax], y from 0 to the top of the axis",
			spec:   chartSpec{XMin: 0, XMax: 100, YFloor: 20, Series: []chartSeries{{Name: "a", X: []float64{0, 50, 100}, Y: []float64{0, 6, 12}}}},
			lines:  []string{"38.0,114.0 164.0,84.0 290.0,54.0"},
			points: 3,
			labels: []string{"0", "20"},
		},
		{
			name:   "the axis ends a little above the maximum: a round number",
			spec:   chartSpec{XMin: 0, XMax: 1, Series: []chartSeries{{Name: "a", X: []float64{0, 1}, Y: []float64{0, 10}}}},
			lines:  []string{"38.0,114.0 290.0,30.7"},
			points: 2,
			labels: []string{"0", "12"},
		},
		{
			name:   "the axis ends a little above the maximum: a whole number for counts",
			spec:   chartSpec{XMin: 0, XMax: 1, YCount: true, Series: []chartSeries{{Name: "a", X: []float64{0, 1}, Y: []float64{0, 2}}}},
			lines:  []string{"38.0,114.0 290.0,47.3"},
			points: 2,
			labels: []string{"0", "3"},
		},
		{
			name:   "no series: an empty plot with a 0..1 axis",
			spec:   chartSpec{XMin: 0, XMax: 1},
			labels: []string{"0", "1"},
		},
		{
			name:   "an empty series draws nothing",
			spec:   chartSpec{XMin: 0, XMax: 1, Series: []chartSeries{{Name: "a"}}},
			labels: []string{"0", "1"},
		},
		{
			name:   "a single point is a dot",
			spec:   chartSpec{XMin: 0, XMax: 10, YFloor: 4, Series: []chartSeries{{Name: "a", X: []float64{5}, Y: []float64{2}}}},
			dots:   []string{"164.0,64.0"},
			points: 1,
		},
		{
			name: "NaN and Inf are gaps, never coordinates",
			spec: chartSpec{XMin: 0, XMax: 4, YFloor: 4, Series: []chartSeries{{Name: "a",
				X: []float64{0, 1, 2, 3, 4, nan}, Y: []float64{1, 2, nan, inf, 2, 1}}}},
			lines:  []string{"38.0,89.0 101.0,64.0"},
			dots:   []string{"290.0,64.0"},
			points: 3,
		},
		{
			name: "huge and negative values clamp to the plot",
			spec: chartSpec{XMin: 0, XMax: 2, Series: []chartSeries{{Name: "a",
				X: []float64{-1e308, 1, 1e308}, Y: []float64{1.7e308, -5, math.MaxFloat64}}}},
			// The axis ends at the largest float: 1.7e308 is near its top.
			lines:  []string{"38.0,19.4 164.0,114.0 290.0,14.0"},
			points: 3,
		},
		{
			name: "a cap keeps one far point from flattening the rest: it sits on the top edge, its value beside it",
			spec: chartSpec{XMin: 0, XMax: 2, YCap: 10, Series: []chartSeries{{Name: "a",
				X: []float64{0, 1, 2}, Y: []float64{1000, 8, 2}}}},
			lines:  []string{"38.0,14.0 164.0,47.3 290.0,97.3"},
			points: 3,
			labels: []string{"0", "12", "↑ 1000"},
		},
		{
			name:   "a cap above the data changes nothing",
			spec:   chartSpec{XMin: 0, XMax: 1, YCap: 100, Series: []chartSeries{{Name: "a", X: []float64{0, 1}, Y: []float64{0, 10}}}},
			lines:  []string{"38.0,114.0 290.0,30.7"},
			points: 2,
			labels: []string{"0", "12"},
		},
		{
			name: "limits are steps and no data points; the area closes on the bottom",
			spec: chartSpec{XMin: 0, XMax: 10, YFloor: 10, YCount: true, Series: []chartSeries{
				{Name: "in_use", Kind: kindArea, X: []float64{0, 10}, Y: []float64{2, 4}},
				{Name: "pool_size", Kind: kindSteps, X: []float64{0, 5, 10}, Y: []float64{4, 5, 5}},
			}},
			lines:  []string{"38.0,94.0 290.0,74.0", "38.0,74.0 164.0,74.0 164.0,64.0 290.0,64.0"},
			areas:  []string{"38.0,114.0 38.0,94.0 290.0,74.0 290.0,114.0"},
			points: 2,
		},
		{
			name: "a right axis of its own; markers and bands clamp, a rule beyond the axis is left out",
			spec: chartSpec{XMin: 1, XMax: 5, YFloor: 20, Y2Floor: 100, Y2Format: func(v float64) string { return strconv.FormatFloat(v, 'f', 0, 64) + "%" },
				Series: []chartSeries{
					{Name: "wait", Dots: true, X: []float64{1, 5}, Y: []float64{10, 0}},
					{Name: "timeouts", Right: true, X: []float64{1, 5}, Y: []float64{50, 0}},
				},
				Markers: []chartMarker{{X: 3, Label: "now 3"}, {X: 99, Label: "set 99"}},
				Rules:   []chartRule{{Y: 25, Label: "too high"}, {Y: 5, Label: "target"}},
				Bands:   []chartBand{{From: 0, To: 2, Label: "no end"}},
			},
			// The right margin is 38: x runs 38..262.
			lines:  []string{"38.0,64.0 262.0,114.0", "38.0,64.0 262.0,114.0"},
			dots:   []string{"38.0,64.0", "262.0,114.0"},
			points: 4,
			labels: []string{"0", "20", "0%", "100%", "now 3", "set 99", "target", "no end"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.spec.draw()
			var lines, areas, dots, labels []string
			for _, l := range got.Lines {
				lines = append(lines, l.Points)
			}
			for _, a := range got.Areas {
				areas = append(areas, a.Points)
			}
			for _, d := range got.Dots {
				dots = append(dots, d.CX+","+d.CY)
			}
			for _, l := range got.Labels {
				labels = append(labels, l.Text)
			}
			if fmt.Sprint(lines) != fmt.Sprint(tc.lines) || fmt.Sprint(areas) != fmt.Sprint(tc.areas) ||
				fmt.Sprint(dots) != fmt.Sprint(tc.dots) || got.Points != tc.points {
				t.Errorf("lines %q areas %q dots %q points %d\nwant lines %q areas %q dots %q points %d",
					lines, areas, dots, got.Points, tc.lines, tc.areas, tc.dots, tc.points)
			}
			for _, want := range tc.labels {
				if !strings.Contains("|"+strings.Join(labels, "|")+"|", "|"+want+"|") {
					t.Errorf("labels %q lack %q", labels, want)
				}
			}
			offScale := func(l string) bool { return strings.HasPrefix(l, "↑") }
			if slices.ContainsFunc(labels, offScale) != slices.ContainsFunc(tc.labels, offScale) {
				t.Errorf("labels %q: a value above the axis written or missing", labels)
			}
			if slices.Contains(labels, "too high") {
				t.Error("a rule beyond the axis was drawn")
			}
			checkCoordinates(t, got)
		})
	}
}

// checkCoordinates fails on any coordinate that is not a finite number within the viewBox.
func checkCoordinates(t *testing.T, c chartSVG) {
	t.Helper()
	var all []string
	for _, r := range append([]svgRect{c.Plot}, c.Bands...) {
		all = append(all, r.X, r.Y, r.W, r.H)
	}
	for _, l := range append(append([]svgLine{}, c.Grid...), c.Markers...) {
		all = append(all, l.X1, l.Y1, l.X2, l.Y2)
	}
	for _, p := range append(append([]svgPoly{}, c.Lines...), c.Areas...) {
		for _, xy := range strings.Fields(p.Points) {
			all = append(all, strings.Split(xy, ",")...)
		}
	}
	for _, d := range c.Dots {
		all = append(all, d.CX, d.CY)
	}
	for _, l := range c.Labels {
		all = append(all, l.X, l.Y)
	}
	for _, s := range all {
		v, err := strconv.ParseFloat(s, 64)
		if err != nil || !isFinite(v) || v < 0 || v > chartWidth {
			t.Errorf("coordinate %q is not within the viewBox", s)
		}
	}
}

func TestNiceCeil(t *testing.T) {
	for _, tc := range []struct{ in, want float64 }{
		{0, 1}, {-3, 1}, {math.NaN(), 1}, {math.Inf(1), 1},
		{0.3, 0.3}, {1, 1}, {1.1, 1.2}, {1.5, 1.5}, {2.2, 2.5}, {3, 3}, {7, 8}, {10, 10}, {11, 12},
		{1e308, 1e308}, {1.7e308, math.MaxFloat64},
	} {
		if got := niceCeil(tc.in); math.Abs(got-tc.want) > 1e-12*tc.want {
			t.Errorf("niceCeil(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestAxisTop(t *testing.T) {
	for _, tc := range []struct {
		max, floor float64
		count      bool
		want       float64
	}{
		{0, 0, false, 1}, {math.NaN(), 0, true, 1}, {0, 5, true, 5},
		{10, 0, false, 12}, {2, 0, true, 3}, {2, 10, true, 10}, {100, 0, true, 110},
		{math.MaxFloat64, 0, false, math.MaxFloat64}, {math.MaxFloat64, 0, true, math.MaxFloat64},
	} {
		if got := axisTop(tc.max, tc.floor, tc.count); got != tc.want {
			t.Errorf("axisTop(%v, %v, %v) = %v, want %v", tc.max, tc.floor, tc.count, got, tc.want)
		}
	}
}

func TestCompact(t *testing.T) {
	for _, tc := range []struct {
		in   float64
		want string
	}{{0, "0"}, {0.25, "0.25"}, {2.5, "2.5"}, {1500, "1500"}, {999.9, "1000"}, {12.34, "12.3"}, {0.000123, "0.000123"}, {25000, "25k"}, {2.5e6, "2.5M"}, {1e300, "1e+300"}} {
		if got := compact(tc.in); got != tc.want {
			t.Errorf("compact(%v) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
