package health

import (
	"cmp"
	"math"
	"strconv"
	"strings"
)

// Small line charts drawn by the server as inline SVG: no script, no external asset. A
// chartSpec holds the data; draw turns it into chartSVG, whose fields are numbers formatted
// here and text that the page template escapes, so no value reaches the SVG unescaped and
// no NaN or Inf reaches it at all (a value that is not finite is a gap in its line).

// Geometry of every chart, in viewBox units: close to the CSS pixels a chart gets in the
// page's grid, so that its text reads at the page's size on a desktop and on a phone.
const (
	chartWidth   = 300.0
	chartHeight  = 132.0
	marginLeft   = 38.0
	marginRight  = 10.0
	marginAxis2  = 38.0 // the right margin when there is a right axis
	marginTop    = 14.0
	marginBottom = 18.0
)

// seriesKind says how a series is drawn.
type seriesKind int

const (
	kindLine  seriesKind = iota
	kindArea             // a line with the area under it filled
	kindSteps            // a limit that holds until the next point (pool size, capacity)
)

// chartSeries is one series: points (X[i], Y[i]).
type chartSeries struct {
	Name  string // data-series: what the page's test counts
	Class string // CSS class: colour and dashes
	Kind  seriesKind
	Right bool // on the right axis
	Dots  bool // a dot on every point, not only on points that stand alone
	// EndLabel is written above (or, EndBelow, under) the series' last point, at the right
	// of the plot: a limit's name and value.
	EndLabel string
	EndBelow bool
	X, Y     []float64
}

type chartTick struct {
	At    float64
	Label string
}

// chartMarker is a vertical line at X with a label at its top (the current and the
// recommended size).
type chartMarker struct {
	X            float64
	Label, Class string
}

// chartRule is a horizontal line at Y on the left axis (a target), drawn only when Y is
// within the axis: a target far above the data must not flatten it.
type chartRule struct {
	Y            float64
	Label, Class string
}

// chartBand shades the x range [From, To] (sizes where callers queue without end).
type chartBand struct {
	From, To     float64
	Label, Class string
}

type chartSpec struct {
	Title string // the SVG's <title>: names the pool
	// Width and Height of the viewBox; 0 means chartWidth and chartHeight.
	Width, Height float64
	XMin, XMax    float64
	XTicks        []chartTick
	// YFloor and Y2Floor are the least the axes reach, so that a series of zeros lies on
	// the bottom of a sensible axis instead of in the middle of a degenerate one.
	YFloor, Y2Floor float64
	// YCount makes the left axis end on a whole number (connections, callers).
	YCount bool
	// YCap, when above 0, ends the left axis at about YCap even where the data go higher,
	// so that one far point does not flatten the rest: a point above the axis sits on its
	// top edge with its value written beside it.
	YCap              float64
	YFormat, Y2Format func(float64) string
	// YClass and Y2Class colour an axis' labels like its series.
	YClass, Y2Class string
	Series          []chartSeries
	Markers         []chartMarker
	Rules           []chartRule
	Bands           []chartBand
}

// chartSVG is what the template draws. Coordinates are formatted numbers; Title and the
// labels are text, escaped by the template.
type chartSVG struct {
	Title   string
	ViewBox string
	Plot    svgRect
	Grid    []svgLine
	Bands   []svgRect
	Areas   []svgPoly
	Lines   []svgPoly
	Dots    []svgDot
	Markers []svgLine
	Labels  []svgText
	// Points counts the data points drawn, over all series but the limits.
	Points int
}

type svgRect struct{ X, Y, W, H, Class string }
type svgLine struct{ X1, Y1, X2, Y2, Class string }
type svgPoly struct{ Points, Class, Series string }
type svgDot struct{ CX, CY, Class, Series string }
type svgText struct{ X, Y, Anchor, Class, Text string }

// draw lays the chart out.
func (c chartSpec) draw() chartSVG {
	width, height := cmp.Or(c.Width, chartWidth), cmp.Or(c.Height, chartHeight)
	right := marginRight
	if c.hasRight() {
		right = marginAxis2
	}
	x0, x1 := marginLeft, width-right
	y0, y1 := marginTop, height-marginBottom // top, bottom
	xMin, xMax := finiteOr(c.XMin, 0), finiteOr(c.XMax, 1)
	if !(xMax > xMin) {
		xMax = xMin + 1
	}
	yMax, y2Max := axisTop(c.axisMax(false), c.YFloor, c.YCount), axisTop(c.axisMax(true), c.Y2Floor, false)
	if c.YCap > 0 && c.axisMax(false) > c.YCap {
		yMax = axisTop(c.YCap, c.YFloor, c.YCount)
	}
	px := func(x float64) float64 { return x0 + (clamp(x, xMin, xMax)-xMin)/(xMax-xMin)*(x1-x0) }
	py := func(y float64, right bool) float64 {
		m := yMax
		if right {
			m = y2Max
		}
		return y1 - clamp(y, 0, m)/m*(y1-y0)
	}
	out := chartSVG{
		Title:   c.Title,
		ViewBox: "0 0 " + coord(width) + " " + coord(height),
		Plot:    svgRect{X: coord(x0), Y: coord(y0), W: coord(x1 - x0), H: coord(y1 - y0), Class: "plot"},
	}
	for _, f := range []float64{0, 0.5, 1} {
		y := y1 - f*(y1-y0)
		out.Grid = append(out.Grid, svgLine{X1: coord(x0), Y1: coord(y), X2: coord(x1), Y2: coord(y), Class: "grid"})
		if f == 0.5 {
			continue // a line without a label: the ends say the scale
		}
		out.Labels = append(out.Labels, svgText{X: coord(x0 - 3), Y: coord(y + 3.5), Anchor: "end", Class: strings.TrimSpace("tick " + c.YClass), Text: format(c.YFormat, f*yMax)})
		if c.hasRight() {
			out.Labels = append(out.Labels, svgText{X: coord(x1 + 3), Y: coord(y + 3.5), Anchor: "start", Class: strings.TrimSpace("tick " + c.Y2Class), Text: format(c.Y2Format, f*y2Max)})
		}
	}
	for i, t := range c.XTicks {
		anchor := "middle"
		switch {
		case i == 0 && len(c.XTicks) > 1:
			anchor = "start"
		case i == len(c.XTicks)-1 && len(c.XTicks) > 1:
			anchor = "end"
		}
		out.Labels = append(out.Labels, svgText{X: coord(px(t.At)), Y: coord(height - 5), Anchor: anchor, Class: "tick", Text: t.Label})
	}
	for _, b := range c.Bands {
		if !isFinite(b.From) || !isFinite(b.To) {
			continue
		}
		bx0, bx1 := px(b.From), px(b.To)
		out.Bands = append(out.Bands, svgRect{X: coord(bx0), Y: coord(y0), W: coord(bx1 - bx0), H: coord(y1 - y0), Class: b.Class})
		out.Labels = append(out.Labels, svgText{X: coord((bx0 + bx1) / 2), Y: coord(y0 + 10), Anchor: "middle", Class: "band-label", Text: b.Label})
	}
	for _, r := range c.Rules {
		if !isFinite(r.Y) || r.Y < 0 || r.Y > yMax {
			continue
		}
		y := py(r.Y, false)
		out.Grid = append(out.Grid, svgLine{X1: coord(x0), Y1: coord(y), X2: coord(x1), Y2: coord(y), Class: r.Class})
		out.Labels = append(out.Labels, svgText{X: coord(x1 - 2), Y: coord(y - 2), Anchor: "end", Class: "rule-label", Text: r.Label})
	}
	for _, s := range c.Series {
		segs := s.segments()
		if n := len(segs); n > 0 && s.EndLabel != "" {
			last := segs[n-1][len(segs[n-1])-1]
			y := py(s.Y[last], s.Right) - 3
			if s.EndBelow {
				y += 12
			}
			out.Labels = append(out.Labels, svgText{X: coord(x1 - 2), Y: coord(min(y, y1-2)), Anchor: "end", Class: "end-label " + s.Class, Text: s.EndLabel})
		}
		for _, seg := range segs {
			pts := make([]string, 0, 2*len(seg))
			for k, i := range seg {
				x, y := px(s.X[i]), py(s.Y[i], s.Right)
				if s.Kind == kindSteps && k > 0 {
					if prev := py(s.Y[seg[k-1]], s.Right); prev != y {
						pts = append(pts, coord(x)+","+coord(prev)) // hold the last value until x
					}
				}
				pts = append(pts, coord(x)+","+coord(y))
				if len(seg) == 1 {
					out.Dots = append(out.Dots, svgDot{CX: coord(x), CY: coord(y), Class: s.Class, Series: s.Name})
				} else if s.Dots {
					// On a line, a dot is decoration: the line carries the points.
					out.Dots = append(out.Dots, svgDot{CX: coord(x), CY: coord(y), Class: s.Class})
				}
			}
			if !s.Right && s.Kind != kindSteps {
				out.Labels = append(out.Labels, offScale(seg, s, yMax, px, x0, x1, y0, c.YFormat)...)
			}
			if s.Kind == kindSteps {
				// A limit is no data point: it carries no data-series for the page's test.
				out.Lines = append(out.Lines, svgPoly{Points: strings.Join(pts, " "), Class: s.Class})
				continue
			}
			out.Points += len(seg)
			if len(seg) == 1 {
				continue // the dot is the point
			}
			out.Lines = append(out.Lines, svgPoly{Points: strings.Join(pts, " "), Class: s.Class, Series: s.Name})
			if s.Kind == kindArea {
				base := coord(y1)
				area := coord(px(s.X[seg[0]])) + "," + base + " " + strings.Join(pts, " ") + " " + coord(px(s.X[seg[len(seg)-1]])) + "," + base
				out.Areas = append(out.Areas, svgPoly{Points: area, Class: s.Class})
			}
		}
	}
	for _, m := range c.Markers {
		if !isFinite(m.X) {
			continue
		}
		x := px(m.X)
		out.Markers = append(out.Markers, svgLine{X1: coord(x), Y1: coord(y0), X2: coord(x), Y2: coord(y1), Class: m.Class})
		anchor := "middle"
		if x < x0+20 {
			anchor = "start"
		} else if x > x1-20 {
			anchor = "end"
		}
		out.Labels = append(out.Labels, svgText{X: coord(x), Y: coord(y0 - 3), Anchor: anchor, Class: "marker-label " + m.Class, Text: m.Label})
	}
	return out
}

// offScale writes the value of each point of seg above the left axis' top yMax under the
// plot's top edge y0, where the point is drawn, on the side of the point towards the middle
// of the plot (x0..x1); a label that would run into the previous one is left out.
func offScale(seg []int, s chartSeries, yMax float64, px func(float64) float64, x0, x1, y0 float64, f func(float64) string) []svgText {
	var out []svgText
	last := math.Inf(-1)
	for _, i := range seg {
		x := px(s.X[i])
		if !(s.Y[i] > yMax) || x-last < 40 {
			continue
		}
		l := svgText{X: coord(x + 4), Y: coord(y0 + 9), Anchor: "start", Class: "off-scale " + s.Class, Text: "↑ " + format(f, s.Y[i])}
		if x > (x0+x1)/2 {
			l.X, l.Anchor = coord(x-4), "end"
		}
		out = append(out, l)
		last = x
	}
	return out
}

func (c chartSpec) hasRight() bool {
	for _, s := range c.Series {
		if s.Right {
			return true
		}
	}
	return false
}

// axisMax is the largest finite value of the series on one axis; 0 when there is none.
func (c chartSpec) axisMax(right bool) float64 {
	m := 0.0
	for _, s := range c.Series {
		if s.Right != right {
			continue
		}
		for i, y := range s.Y {
			if i < len(s.X) && isFinite(s.X[i]) && isFinite(y) {
				m = max(m, y)
			}
		}
	}
	return m
}

// segments are the runs of points with finite coordinates: a value that is not finite
// breaks the line.
func (s chartSeries) segments() [][]int {
	var out [][]int
	var cur []int
	for i := range min(len(s.X), len(s.Y)) {
		if isFinite(s.X[i]) && isFinite(s.Y[i]) {
			cur = append(cur, i)
			continue
		}
		if len(cur) > 0 {
			out, cur = append(out, cur), nil
		}
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
}

// axisTop is where an axis ends: a little above the data's maximum m, so that a line at the
// maximum (a pool at its capacity) stays visible, rounded up to a whole number for counts and
// to a round one otherwise; at least floor, and 1 when there is nothing to show.
func axisTop(m, floor float64, count bool) float64 {
	floor = finiteOr(floor, 0)
	if !(m > 0) || !isFinite(m) {
		return max(floor, 1)
	}
	top := niceCeil(finiteOr(m*1.05, m))
	if count {
		top = math.Ceil(m + m/10)
	}
	if !isFinite(top) {
		top = math.MaxFloat64
	}
	return max(top, floor)
}

// niceCeil rounds an axis maximum up to 1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 times a power of
// ten; 1 when there is nothing to show, the largest float when rounding up would overflow.
func niceCeil(x float64) float64 {
	if !(x > 0) || !isFinite(x) {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(x)))
	for _, m := range []float64{1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10} {
		if v := m * p; v >= x*(1-1e-12) {
			if isFinite(v) {
				return v
			}
			break
		}
	}
	return math.MaxFloat64
}

func format(f func(float64) string, v float64) string {
	if f == nil {
		return compact(v)
	}
	return f(v)
}

// compact prints an axis label: at most three significant digits, with k and M for large
// values, scientific beyond.
func compact(v float64) string {
	a := math.Abs(v)
	switch {
	case a >= 1e9:
		return strconv.FormatFloat(v, 'g', 2, 64)
	case a >= 1e6:
		return strconv.FormatFloat(v/1e6, 'g', 3, 64) + "M"
	case a >= 1e4:
		return strconv.FormatFloat(v/1e3, 'g', 3, 64) + "k"
	case a >= 1:
		s := strconv.FormatFloat(v, 'f', max(0, 2-int(math.Floor(math.Log10(a)))), 64)
		if strings.Contains(s, ".") {
			s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
		}
		return s
	}
	return strconv.FormatFloat(v, 'g', 3, 64)
}

// coord prints a coordinate; the callers pass values clamped to the viewBox.
func coord(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) }

func clamp(v, lo, hi float64) float64 { return min(max(v, lo), hi) }

func isFinite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

func finiteOr(v, or float64) float64 {
	if isFinite(v) {
		return v
	}
	return or
}
