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
	"github.com/dbpool/dbpool_exporter/internal/health"
	"github.com/dbpool/dbpool_exporter/internal/metrics"
	"github.com/dbpool/dbpool_exporter/poolcfg"
)

// adviseHelp is the advise command's help.
const adviseHelp = "Print each pool's health, warnings and one recommended size and overflow with the predicted figures behind them " +
	"(DB_POOL_SIZE / DB_MAX_OVERFLOW for application pools, PgBouncer's and pgxpool's own settings for theirs), and exit. " +
	"With --advise.from it prints the running daemon's answer over its whole history (GET /api/v1/pools); otherwise it samples the pools " +
	"for --advise.duration with the same flags and configuration (a short history never shrinks a pool: that takes a full --health.window).\n\nExit codes: " +
	"0 all configured pools healthy, 3 a configured pool has warnings or is saturated (unconfigured application_name:* groups count only with " +
	"--advise.include-unconfigured; their warnings print either way), 1 error (bad configuration, database unreachable for the whole run)."

// Exit codes of the advise command, for CI and cron.
const (
	adviseHealthy   = 0
	adviseError     = 1
	adviseUnhealthy = 3
)

type adviseFlags struct {
	from     string
	interval time.Duration
	duration time.Duration
	output   string
	// includeUnconfigured counts the application_name:* groups of unconfigured backends (psql, pg_dump,
	// cron jobs) in the exit code too.
	includeUnconfigured bool
}

func addAdviseFlags(cmd *kingpin.CmdClause) *adviseFlags {
	a := &adviseFlags{}
	cmd.Flag("advise.from", "Base URL of a running dbpool_exporter (e.g. http://host:9930): print its answer, drawn from its whole history, instead of sampling.").PlaceHolder("URL").StringVar(&a.from)
	cmd.Flag("advise.interval", "Time between two samples.").Default("5s").DurationVar(&a.interval)
	cmd.Flag("advise.duration", "How long to sample; the advice covers this history. A pool shrinks only when it reaches a whole --health.window. 0 takes one sample.").Default("1m").DurationVar(&a.duration)
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
	// From is the daemon whose answer this is (--advise.from); empty when the run sampled.
	From string `json:"from,omitempty"`
	// WindowSeconds is the history a pool needs before it may shrink (--health.window, or
	// the daemon's).
	WindowSeconds   float64        `json:"window_seconds"`
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
	// The window is the daemon's: a run shorter than it holds a short history, which never
	// shrinks a pool, the same rule as the daemon's.
	window := f.healthWindow
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
		WindowSeconds:   window.Seconds(),
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
	// A run that sampled for a whole window judges the window that its first sample opened,
	// so that the history covers all of it; a shorter or interrupted one judges up to now.
	at := time.Now()
	if first := pools.FirstObserved(); !interrupted && !first.IsZero() && a.duration >= window && first.Add(window).After(at) {
		at = first.Add(window)
	}
	out.Pools = pools.ReportsAt(at)

	out.judge()
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

	if !out.write(a.output, stdout, stderr) {
		return adviseError
	}
	for _, e := range errs {
		fmt.Fprintf(stderr, "%s advise: %s\n", exporterName, e)
	}
	return out.ExitCode
}

// judge sets Healthy, ExitCode and NotCounted from the pools' states.
func (out *adviseOutput) judge() {
	out.Healthy, out.ExitCode = true, adviseHealthy
	for _, r := range out.Pools {
		if r.State != health.StateWarning && r.State != health.StateSaturated {
			continue
		}
		if r.Configured || out.IncludeUnconfigured {
			out.Healthy, out.ExitCode = false, adviseUnhealthy
		} else {
			out.NotCounted = append(out.NotCounted, r.Pool+" on "+r.Target)
		}
	}
}

// write prints the document as JSON or text; false when it could not.
func (out *adviseOutput) write(format string, stdout, stderr io.Writer) bool {
	if format == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			fmt.Fprintf(stderr, "%s advise: %v\n", exporterName, err)
			return false
		}
		return true
	}
	printAdvice(stdout, out)
	return true
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
