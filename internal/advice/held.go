package advice

import (
	"fmt"

	"github.com/dbpool/dbpool_exporter/internal/metrics"
)

// Two rules on what only the application's own report shows: checkouts that failed without
// waiting (a stopped server refuses at once, so they make the average checkout look fast),
// and connections that were checked out and never returned.

const failedCheckoutsFix = "check that the server is up and accepts this application's logins " +
	"(dbpool_probe_connect_success, \"too many clients\", authentication): see the runbook, Checkouts failing to connect; " +
	"a refused connection fails at once, so these checkouts lower the average checkout time instead of raising it"

const leakFix = "return every connection: open sessions with a context manager (async with AsyncSessionLocal() as session:) " +
	"or close them in a finally block at the places in leaks.sites; set idle_in_transaction_session_timeout so that a leak cannot hold a transaction forever"

// failedCheckouts says how many checkouts failed to open a connection, or failed with
// another error, over the window; timeouts have a rule of their own and a caller that went
// away (cancelled) is not the pool's fault. ok is false when none did.
func failedCheckouts(s Summary, win string) (msg string, ok bool) {
	connect, other := s.Failures[metrics.FailureConnect], s.Failures[metrics.FailureOther]
	if connect+other <= 0 {
		return "", false
	}
	switch {
	case other <= 0:
		msg = fmt.Sprintf("%s checkouts failed to open a connection in the last %s (server down, unreachable or refusing logins)", num(connect), win)
	case connect <= 0:
		msg = fmt.Sprintf("%s checkouts failed with an error other than a timeout in the last %s", num(other), win)
	default:
		msg = fmt.Sprintf("%s checkouts failed to open a connection (server down, unreachable or refusing logins) and %s with another error in the last %s",
			num(connect), num(other), win)
	}
	if s.Checkouts != nil && *s.Checkouts > 0 {
		msg += fmt.Sprintf(": %s%% of %s checkouts", num(100*(connect+other) / *s.Checkouts), num(*s.Checkouts))
	}
	return msg, true
}

// leakMessage names the leaked connections and the place that took the most of them.
func leakMessage(l *metrics.LeakStats, instances int) string {
	oldest := 0.0
	for _, st := range l.Sites {
		oldest = max(oldest, st.OldestSeconds)
	}
	msg := fmt.Sprintf("%d connections have been held longer than the leak threshold of %s s", l.Count, num(l.ThresholdSeconds))
	if oldest > 0 {
		msg += fmt.Sprintf(", the oldest for %s s", num(oldest))
	}
	if l.Instances < instances {
		msg += fmt.Sprintf(" (leak detection is on in %d of %d instances)", l.Instances, instances)
	}
	if len(l.Sites) > 0 {
		top := l.Sites[0]
		msg += fmt.Sprintf("; %d checked out at %s", top.Count, LeakPlace(top))
		switch more := len(l.Sites) - 1; {
		case more == 1:
			msg += ", and from 1 more place (leaks.sites)"
		case more > 1:
			msg += fmt.Sprintf(", and from %d more places (leaks.sites)", more)
		}
	}
	return msg
}

// LeakPlace prints where a leak site is in the code: file:line in function.
func LeakPlace(s metrics.LeakSite) string {
	if s.File == "" {
		return "a place outside the application's code (no frame above the pool's own)"
	}
	place := fmt.Sprintf("%s:%d", s.File, s.Line)
	if s.Function != "" {
		place += " in " + s.Function
	}
	return place
}
