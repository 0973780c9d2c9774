package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/dbpool/dbpool_exporter/internal/advice"
	"github.com/dbpool/dbpool_exporter/internal/health"
)

// printAdvice writes the text report: per pool its history, status, health, connections, the
// warnings and recommendations with their rule names, the one recommended size and overflow
// with the predictions behind them, and the .env lines.
func printAdvice(w io.Writer, out *adviseOutput) {
	window := time.Duration(out.WindowSeconds * float64(time.Second))
	if out.From != "" {
		fmt.Fprintf(w, "%s advise: the answer of the daemon at %s, from its history (window %s)", exporterName, out.From, window)
	} else {
		fmt.Fprintf(w, "%s advise: %d samples every %s over %s (window %s)", exporterName, out.Samples,
			time.Duration(out.IntervalSeconds*float64(time.Second)), time.Duration(out.DurationSeconds*float64(time.Second)), window)
	}
	if out.Interrupted {
		fmt.Fprint(w, " (interrupted)")
	}
	fmt.Fprintln(w)
	counts := map[health.State]int{}
	for i := range out.Pools {
		r := &out.Pools[i]
		counts[r.State]++
		printPool(w, r, window)
	}
	fmt.Fprintf(w, "\nsummary: %d pool(s): %d ok, %d warning, %d saturated; exit code %d",
		len(out.Pools), counts[health.StateOK], counts[health.StateWarning], counts[health.StateSaturated], out.ExitCode)
	if n := len(out.NotCounted); n > 0 {
		fmt.Fprintf(w, " (not counted: %d unconfigured pool(s) with warnings, %s; --advise.include-unconfigured counts them)",
			n, strings.Join(out.NotCounted, ", "))
	}
	fmt.Fprintln(w)
}

func printPool(w io.Writer, r *health.Report, window time.Duration) {
	kind := "exact"
	if !r.Exact {
		kind = "estimate"
	}
	fmt.Fprintf(w, "\n== pool %s on %s (source %s, %s): %s\n", r.Pool, r.Target, r.Source, kind, strings.ToUpper(string(r.State)))
	fmt.Fprintf(w, "history:      %s\n", historyLine(r.Window, window))
	if !r.Exact {
		fmt.Fprintf(w, "estimate:     %s\n", health.EstimateNote)
	}
	if r.State == health.StateSaturated {
		fmt.Fprintf(w, "saturated:    %s\n", strings.Join(r.StateReasons, "; "))
	}
	st, h, c := r.Status, r.Health, r.Connections
	line := fmt.Sprintf("status:       checked out %d, overflow %d, total connections %d", st.CheckedOut, st.Overflow, st.TotalConnections)
	if r.Configured {
		line = fmt.Sprintf("status:       checked out %d of pool_size %d (%d x %d), overflow %d of max_overflow %d, total connections %d",
			st.CheckedOut, st.PoolSize, st.Instances, r.Optimization.CurrentSettings.PoolSize, st.Overflow, st.MaxOverflow, st.TotalConnections)
	}
	if st.Pending != nil {
		line += fmt.Sprintf(", pending %d", *st.Pending)
	}
	fmt.Fprintln(w, line)
	if h.CapacityUtilizationPct != nil {
		fmt.Fprintf(w, "utilization:  %v%% of pool_size (average %v%%, peak %v%%); %v%% of capacity (dbpool_utilization_ratio)\n",
			h.UtilizationPct, h.AvgUtilizationPct, h.PeakUtilizationPct, *h.CapacityUtilizationPct)
	}
	line = fmt.Sprintf("connections:  active %d, idle %d", c.ActiveCount, c.IdleCount)
	if c.IdleInTransaction != nil {
		line += fmt.Sprintf(", idle in transaction %d", *c.IdleInTransaction)
	}
	if c.LongestQuerySeconds != nil {
		line += fmt.Sprintf(", longest query %.1f s", *c.LongestQuerySeconds)
	}
	if s := r.Window.AvgCheckoutSeconds; s != nil {
		line += fmt.Sprintf(", average checkout %.1f ms", *s*1000)
	}
	fmt.Fprintln(w, line)
	if len(h.Warnings) > 0 {
		fmt.Fprintln(w, "warnings:")
		for _, f := range health.WithoutEstimateNote(h.Warnings) {
			fmt.Fprintf(w, "  - [%s] %s\n", f.Rule, f.Message)
		}
	}
	recs := append(append([]advice.Finding{}, h.Recommendations...), r.Optimization.Recommendations...)
	if len(recs) > 0 {
		fmt.Fprintln(w, "recommendations:")
		for _, f := range health.WithoutEstimateNote(recs) {
			fmt.Fprintf(w, "  - [%s] %s\n", f.Rule, f.Message)
		}
	}
	if r.Configured {
		printSizing(w, r)
	}
	if r.Optimization.Env != "" {
		fmt.Fprintf(w, "recommended settings for .env (by %s):\n%s", r.Optimization.PoolSizeRule, r.Optimization.Env)
	} else {
		fmt.Fprintf(w, "recommended settings for .env: none (%s)\n", r.NoEnvReason())
	}
}

// historyLine says how long a history the answer comes from, and whether it may shrink a pool.
func historyLine(s advice.Summary, window time.Duration) string {
	if s.Samples == 0 {
		return "no sample yet"
	}
	span := s.To.Sub(s.From).Round(time.Second)
	txt := fmt.Sprintf("%s (%d samples) of a %s window", span, s.Samples, window)
	if s.Full {
		return txt + ": full, so an oversized pool may shrink"
	}
	return txt + ": short, so no pool shrinks on it"
}

// printSizing prints the one recommendation with its rules and, where the model ran, its
// predictions for the current and the recommended size. Figures are per instance.
func printSizing(w io.Writer, r *health.Report) {
	o := r.Optimization
	n, sz := o.SettingNames, o.Sizing
	line := fmt.Sprintf("recommended:  %s=%d (by %s)", n.PoolSize, o.RecommendedPoolSize, o.PoolSizeRule)
	if o.MaxOverflowRule != advice.RuleNoOverflow {
		line += fmt.Sprintf(", %s=%d (by %s)", n.MaxOverflow, o.RecommendedMaxOverflow, o.MaxOverflowRule)
	}
	fmt.Fprintln(w, line+"; per instance")
	if sz.Model != advice.ModelQueueing || sz.Current == nil || sz.Recommended == nil {
		if sz.Note != "" {
			fmt.Fprintf(w, "sizing:       %s\n", sz.Note)
		}
		return
	}
	// The history line above gives the span of a whole history; a busiest span gets its times.
	span := "average of the whole history"
	if sz.BusiestSpanSeconds > 0 {
		span = fmt.Sprintf("busiest %s min of the window, %s-%s UTC", fmtFloat(sz.BusiestSpanSeconds/60),
			sz.LoadFrom.UTC().Format(time.TimeOnly), sz.LoadTo.UTC().Format(time.TimeOnly))
	}
	fmt.Fprintf(w, "sizing:       %s checkouts/s x %s ms held = %s in use (%s); +%s%% -> floor %d; hold times: %s; connect %s ms\n",
		fmtFloat(sz.ArrivalRate), fmtFloat(sz.Hold.MeanSeconds*1000), fmtFloat(sz.Demand), span, fmtFloat(100*sz.Buffer), sz.Floor,
		sz.HoldDistribution, fmtFloat(sz.MeanCreateSeconds*1000))
	fmt.Fprintf(w, "predicted:    %-9s %12s %8s %10s %12s\n", "size", "avg checkout", "P(wait)", "P(timeout)", "utilization")
	for _, p := range []struct {
		label string
		p     *advice.Prediction
	}{{"now", sz.Current}, {"advised", sz.Recommended}} {
		size := fmt.Sprintf("%d+%d", p.p.PoolSize, p.p.MaxOverflow)
		fmt.Fprintf(w, "  %-8s %-9s %9s ms %7s%% %9s%% %11s%%\n", p.label, size, fmtFloat(p.p.MeanWaitSeconds*1000),
			fmtFloat(100*p.p.WaitProbability), fmtFloat(100*p.p.TimeoutProbability), fmtFloat(100*p.p.Utilization))
	}
}

// fmtFloat prints a figure with up to two decimals, three significant digits below 1.
func fmtFloat(x float64) string {
	switch {
	case x == 0:
		return "0"
	case x < 0.01:
		return fmt.Sprintf("%.2g", x)
	case x < 1:
		return fmt.Sprintf("%.3g", x)
	}
	return strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.2f", x), "0"), ".")
}
