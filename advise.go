package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/alecthomas/kingpin/v2"
	dto "github.com/prometheus/client_model/go"

	"github.com/dbpool/dbpool_exporter/collector"
	"github.com/dbpool/dbpool_exporter/internal/advice"
	"github.com/dbpool/dbpool_exporter/internal/health"
	"github.com/dbpool/dbpool_exporter/internal/metrics"
	"github.com/dbpool/dbpool_exporter/poolcfg"
)

// adviseHelp is the advise command's help.
const adviseHelp = "Sample the pools for a while with the same flags and configuration, print each pool's health, warnings and recommendations " +
	"(DB_POOL_SIZE / DB_MAX_OVERFLOW for application pools, PgBouncer's and pgxpool's own settings for theirs), and exit: " +
	"0 all configured pools healthy, 3 a configured pool has warnings or is saturated (unconfigured application_name:* groups count only with " +
	"--advise.include-unconfigured; their warnings print either way), 1 error (bad configuration, database unreachable for the whole run)."

// Exit codes of the advise command, for CI and cron.
const (
	adviseHealthy   = 0
	adviseError     = 1
	adviseUnhealthy = 3
)

type adviseFlags struct {
	interval time.Duration
	duration time.Duration
	output   string
	// includeUnconfigured counts the application_name:* groups of unconfigured backends (psql, pg_dump,
	// cron jobs) in the exit code too.
	includeUnconfigured bool
}

func addAdviseFlags(cmd *kingpin.CmdClause) *adviseFlags {
	a := &adviseFlags{}
	cmd.Flag("advise.interval", "Time between two samples.").Default("5s").DurationVar(&a.interval)
	cmd.Flag("advise.duration", "How long to sample; the advice covers this window. 0 takes one sample.").Default("1m").DurationVar(&a.duration)
	cmd.Flag("advise.include-unconfigured", "Let warnings of backends that matched no configured pool (application_name:* groups such as application_name:psql) set exit code 3 too; by default only configured pools do, and the others' warnings are printed all the same.").BoolVar(&a.includeUnconfigured)
	cmd.Flag("output", "Output format: text (with .env lines ready to paste) or json (the /api/v1/pools reports).").Default("text").EnumVar(&a.output, "text", "json")
	return a
}

// adviseTarget says whether the run ever reached a target.
type adviseTarget struct {
	Target  string `json:"target"`
	Reached bool   `json:"reached"`
}

// adviseOutput is the --output=json document.
type adviseOutput struct {
	DurationSeconds float64        `json:"duration_seconds"`
	IntervalSeconds float64        `json:"interval_seconds"`
	Samples         int            `json:"samples"`
	Interrupted     bool           `json:"interrupted"`
	Targets         []adviseTarget `json:"targets"`
	Healthy         bool           `json:"healthy"`
	ExitCode        int            `json:"exit_code"`
	// IncludeUnconfigured says whether application_name:* pools counted in healthy and exit_code.
	IncludeUnconfigured bool `json:"include_unconfigured"`
	// NotCounted lists the unhealthy pools that did not count (unconfigured ones by default).
	NotCounted []string        `json:"not_counted"`
	Pools      []health.Report `json:"pools"`
}

// runAdvise samples every interval for duration and prints the advice. Ctrl-C ends the run
// early and prints what was gathered so far.
func runAdvise(f *flags, a *adviseFlags, cfg *poolcfg.Config, logger *slog.Logger, stdout, stderr io.Writer) int {
	if a.interval <= 0 {
		fmt.Fprintf(stderr, "%s advise: --advise.interval=%s: must be positive\n", exporterName, a.interval)
		return adviseError
	}
	if a.duration < 0 {
		fmt.Fprintf(stderr, "%s advise: --advise.duration=%s: must not be negative\n", exporterName, a.duration)
		return adviseError
	}
	window := max(a.duration, a.interval)
	pools := health.NewManager(health.Options{Window: window, MinSpacing: min(time.Second, a.interval/2)})
	exp, err := f.buildExporter(cfg, logger, lasting{observer: pools.Observe, appCounters: collector.NewAppCounters()})
	if err != nil {
		fmt.Fprintf(stderr, "%s advise: %v\n", exporterName, err)
		return adviseError
	}
	defer exp.Close()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	reached := map[string]bool{}
	for _, t := range exp.Targets() {
		reached[t.Name()] = false
	}
	timeout := min(f.maxTimeout, a.interval)
	start := time.Now()
	end := start.Add(a.duration)
	logger.Info("sampling the pools", "every", a.interval, "for", a.duration, "targets", len(reached))
	samples, interrupted := 0, false
	for k := 1; ; k++ {
		c, cancel := context.WithTimeout(ctx, timeout)
		res := exp.Scrape(c)
		cancel()
		samples++
		for t, up := range targetsUp(res) {
			reached[t] = reached[t] || up
		}
		if !time.Now().Before(end) {
			break
		}
		next := start.Add(time.Duration(k) * a.interval)
		if next.After(end) {
			next = end // the last sample closes the window
		}
		timer := time.NewTimer(time.Until(next))
		select {
		case <-ctx.Done():
			interrupted = true
		case <-timer.C:
		}
		timer.Stop()
		if interrupted {
			break
		}
	}

	out := adviseOutput{
		DurationSeconds: a.duration.Seconds(),
		IntervalSeconds: a.interval.Seconds(),
		Samples:         samples,
		Interrupted:     interrupted,
		Targets:         []adviseTarget{},
		// Ad-hoc sessions (psql, pg_dump) form application_name:* groups whose warnings are no verdict
		// on the application's pools: by default they do not fail a cron or CI run.
		IncludeUnconfigured: a.includeUnconfigured,
		NotCounted:          []string{},
	}
	var unreachable []string
	for _, t := range exp.Targets() {
		out.Targets = append(out.Targets, adviseTarget{t.Name(), reached[t.Name()]})
		if !reached[t.Name()] {
			unreachable = append(unreachable, t.Name())
		}
	}
	// A run that sampled for its whole duration judges the window that its first sample
	// opened, so that the history covers all of it; an interrupted one judges up to now.
	if first := pools.FirstObserved(); !interrupted && !first.IsZero() {
		out.Pools = pools.ReportsAt(first.Add(window))
	} else {
		out.Pools = pools.Reports()
	}

	out.Healthy, out.ExitCode = true, adviseHealthy
	for _, r := range out.Pools {
		if r.State != health.StateWarning && r.State != health.StateSaturated {
			continue
		}
		if r.Configured || a.includeUnconfigured {
			out.Healthy, out.ExitCode = false, adviseUnhealthy
		} else {
			out.NotCounted = append(out.NotCounted, r.Pool+" on "+r.Target)
		}
	}
	var errs []string
	if len(unreachable) > 0 {
		errs = append(errs, fmt.Sprintf("unreachable for the whole run: %s (see the log above)", strings.Join(unreachable, ", ")))
	}
	if len(out.Pools) == 0 && len(unreachable) < len(out.Targets) {
		errs = append(errs, "no pool was observed: enable --collector.activity or give a PgBouncer")
	}
	if len(errs) > 0 {
		out.Healthy, out.ExitCode = false, adviseError
	}

	if a.output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			fmt.Fprintf(stderr, "%s advise: %v\n", exporterName, err)
			return adviseError
		}
	} else {
		printAdvice(stdout, &out)
	}
	for _, e := range errs {
		fmt.Fprintf(stderr, "%s advise: %s\n", exporterName, e)
	}
	return out.ExitCode
}

// targetsUp reads dbpool_up of every target in one scrape's metrics.
func targetsUp(res collector.Result) map[string]bool {
	up := map[string]bool{}
	for _, m := range res.Metrics {
		if m.Desc() != metrics.Up.Desc {
			continue
		}
		var pb dto.Metric
		if err := m.Write(&pb); err != nil {
			continue
		}
		for _, l := range pb.GetLabel() {
			if l.GetName() == "target" {
				up[l.GetValue()] = up[l.GetValue()] || pb.GetGauge().GetValue() == 1
			}
		}
	}
	return up
}

// printAdvice writes the text report: per pool its status, health, connections, the
// warnings and recommendations with their rule names, and the .env lines.
func printAdvice(w io.Writer, out *adviseOutput) {
	fmt.Fprintf(w, "%s advise: %d samples every %s over %s", exporterName, out.Samples,
		time.Duration(out.IntervalSeconds*float64(time.Second)), time.Duration(out.DurationSeconds*float64(time.Second)))
	if out.Interrupted {
		fmt.Fprint(w, " (interrupted)")
	}
	fmt.Fprintln(w)
	counts := map[health.State]int{}
	for i := range out.Pools {
		r := &out.Pools[i]
		counts[r.State]++
		kind := "exact"
		if !r.Exact {
			kind = "estimate"
		}
		fmt.Fprintf(w, "\n== pool %s on %s (source %s, %s): %s\n", r.Pool, r.Target, r.Source, kind, strings.ToUpper(string(r.State)))
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
		if r.Optimization.Env != "" {
			fmt.Fprintf(w, "recommended settings for .env (by %s):\n%s", r.Optimization.PoolSizeRule, r.Optimization.Env)
		} else {
			fmt.Fprintf(w, "recommended settings for .env: none (%s)\n", r.NoEnvReason())
		}
	}
	fmt.Fprintf(w, "\nsummary: %d pool(s): %d ok, %d warning, %d saturated; exit code %d",
		len(out.Pools), counts[health.StateOK], counts[health.StateWarning], counts[health.StateSaturated], out.ExitCode)
	if n := len(out.NotCounted); n > 0 {
		fmt.Fprintf(w, " (not counted: %d unconfigured pool(s) with warnings, %s; --advise.include-unconfigured counts them)",
			n, strings.Join(out.NotCounted, ", "))
	}
	fmt.Fprintln(w)
}
