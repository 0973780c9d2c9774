package poolcfg

import (
	"errors"
	"net/url"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// withheld replaces the details of an error about a string whose password cannot be located.
const withheld = "details withheld because they could contain the password"

// RedactError returns err in a form that is safe to log and to show. The library errors
// that carry connection details are printed from their structured fields only:
// pgconn.ConnectError as user, database and the cause (its Config holds the password),
// pgconn.ParseConfigError as ParseDSN describes it (never quoting the connection string),
// and url.Error with its
// URL's password field replaced by xxxxx. Nothing else is touched: the result is never
// made by searching the text for a password. errors.Is and errors.As still see err.
func RedactError(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := err.(*redactedError); ok {
		return err
	}
	return &redactedError{msg: redactedText(err), err: err}
}

type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

func redactedText(err error) string {
	switch e := err.(type) {
	case nil:
		return ""
	case *redactedError:
		return e.msg
	case *pgconn.ConnectError:
		msg := "failed to connect"
		if e.Config != nil {
			msg += " to user=" + e.Config.User + " database=" + e.Config.Database
		}
		if inner := e.Unwrap(); inner != nil {
			msg += ": " + redactedText(inner)
		}
		return msg
	case *pgconn.ParseConfigError:
		return parseError(e.ConnString, e).Error()
	case *url.Error:
		return urlErrorText(e)
	}
	var inners []error
	switch e := err.(type) {
	case interface{ Unwrap() error }:
		inners = []error{e.Unwrap()}
	case interface{ Unwrap() []error }:
		inners = e.Unwrap()
	}
	msg := err.Error()
	if len(inners) > 1 && msg == joinedText(inners) {
		// errors.Join, as pgconn reports its attempts at several hosts: on one line.
		parts := make([]string, len(inners))
		for i, inner := range inners {
			parts[i] = redactedText(inner)
		}
		return strings.Join(parts, "; ")
	}
	// A wrapper such as fmt.Errorf("monitoring connection: %w", inner) printed the whole
	// text of each inner error once: print its redacted text in its place.
	for _, inner := range inners {
		if inner == nil || !carriesConnectionDetails(inner) {
			continue
		}
		innerMsg := inner.Error()
		if strings.Count(msg, innerMsg) != 1 {
			return "connection error (" + withheld + ")"
		}
		msg = strings.Replace(msg, innerMsg, redactedText(inner), 1)
	}
	return msg
}

func joinedText(errs []error) string {
	texts := make([]string, len(errs))
	for i, e := range errs {
		if e == nil {
			return ""
		}
		texts[i] = e.Error()
	}
	return strings.Join(texts, "\n")
}

func carriesConnectionDetails(err error) bool {
	var ce *pgconn.ConnectError
	var pe *pgconn.ParseConfigError
	var ue *url.Error
	return errors.As(err, &ce) || errors.As(err, &pe) || errors.As(err, &ue)
}

// urlErrorText is url.Error's text (Op "URL": Err) with the URL redacted by its structure.
// A URL whose password cannot be located (it does not parse, or is ambiguous) is left out,
// and so are the details, which quote parts of it, unless it cannot hold a password at all.
func urlErrorText(e *url.Error) string {
	if shown, ok := redactedURL(e.URL); ok {
		return e.Op + " " + strconv.Quote(shown) + ": " + redactedText(e.Err)
	}
	if mayHoldSecret(e.URL) {
		return e.Op + ": URL and " + withheld
	}
	return e.Op + " " + strconv.Quote(e.URL) + ": " + redactedText(e.Err)
}

// redactedURL is s with its password fields replaced by xxxxx: a PostgreSQL URL as DSN
// shows it, any other URL as AppURL does.
func redactedURL(s string) (string, bool) {
	if isURL(s) {
		d, err := ParseDSN(s)
		return d.String(), err == nil
	}
	if !strings.Contains(s, "://") {
		return "", false // a key=value DSN, say: no user info to go by
	}
	r, err := redactUserinfo(s)
	return r, err == nil
}

// mayHoldSecret is deliberately coarse: user info, escapes (a key can be spelled
// pass%77ord), or anything that mentions a password, may have had a password spread over
// other fields by a syntax error.
func mayHoldSecret(s string) bool {
	return strings.ContainsAny(s, "@%") || strings.Contains(strings.ToLower(s), "password")
}
