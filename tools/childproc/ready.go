package childproc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"time"
)

// abortError marks a readiness error after which waiting is pointless.
type abortError struct{ err error }

func (e abortError) Error() string { return e.err.Error() }
func (e abortError) Unwrap() error { return e.err }

// Abort wraps err, returned by a readiness check, to make WaitReady give up at once and
// return err.
func Abort(err error) error { return abortError{err} }

// WaitReady calls ready every interval until it returns nil. It fails when ready returns an
// error made by Abort, when the process exits first (the error wraps ErrExited), when timeout
// passes (the error wraps ready's last one), or when ctx ends. The errors, but for ctx's,
// carry the tail of the process's output.
func (p *Process) WaitReady(ctx context.Context, timeout, interval time.Duration, ready func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		if p.Exited() {
			return p.withTail(fmt.Errorf("%s %w during startup (%v)", p.Name, ErrExited, p.err))
		}
		err := ready()
		if err == nil {
			return nil
		}
		var abort abortError
		if errors.As(err, &abort) {
			return p.withTail(abort.err)
		}
		if time.Now().After(deadline) {
			return p.withTail(fmt.Errorf("%s not ready after %v: %w", p.Name, timeout, err))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-p.done:
		case <-time.After(interval):
		}
	}
}

// WaitMatch waits, as WaitReady does, until the process's output matches re, and returns the
// match and its submatches (FindStringSubmatch); it is for a child that logs where it listens.
func (p *Process) WaitMatch(ctx context.Context, timeout time.Duration, re *regexp.Regexp) ([]string, error) {
	var m []string
	err := p.WaitReady(ctx, timeout, 20*time.Millisecond, func() error {
		if m = re.FindStringSubmatch(p.Output()); m == nil {
			return fmt.Errorf("no output matching %s", re)
		}
		return nil
	})
	return m, err
}

// tailLines is how much of the output a failure message quotes.
const tailLines = 30

func (p *Process) withTail(err error) error {
	return fmt.Errorf("%w\n--- %s output (tail) ---\n%s", err, p.Name, p.Tail(tailLines))
}

var httpClient = &http.Client{Timeout: 5 * time.Second}

// HTTPReady is a readiness check for WaitReady: GET url answers 200.
func HTTPReady(url string) func() error {
	return func() error {
		resp, err := httpClient.Get(url)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return nil
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
		return fmt.Errorf("HTTP %d: %s", resp.StatusCode, body)
	}
}
