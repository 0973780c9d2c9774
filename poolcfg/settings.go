package poolcfg

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Limits that keep every product of counts (instances x capacity) far from int overflow.
const (
	// maxConnections is PostgreSQL's hard limit on backends (MAX_BACKENDS, 2^18-1): a pool
	// bigger than that can never be filled.
	maxConnections = 1<<18 - 1
	maxInstances   = 1_000_000
)

// setting names, as in YAML; envNames maps them to the DB_* variables.
const (
	keyPoolSize    = "pool_size"
	keyMaxOverflow = "max_overflow"
	keyTimeout     = "timeout"
	keyRecycle     = "recycle"
	keyPrePing     = "pre_ping"
	keyEcho        = "echo"
)

var envNames = map[string]string{
	keyPoolSize:    "DB_POOL_SIZE",
	keyMaxOverflow: "DB_MAX_OVERFLOW",
	keyTimeout:     "DB_POOL_TIMEOUT",
	keyRecycle:     "DB_POOL_RECYCLE",
	keyPrePing:     "DB_POOL_PRE_PING",
	keyEcho:        "DB_ECHO",
}

// settingKeys lists the settings in the order they are read and reported.
var settingKeys = []string{keyPoolSize, keyMaxOverflow, keyTimeout, keyRecycle, keyPrePing, keyEcho}

// valueError is the shape of every value error in this package:
// [file:line: ]key="value": problem.
func valueError(at, key, raw, problem string) error {
	return fmt.Errorf("%s%s=%q: %s", at, key, raw, problem)
}

// setSetting parses raw into the setting key of s; it returns the problem, or "".
func setSetting(s *Settings, key, raw string) string {
	var problem string
	switch key {
	case keyPoolSize:
		s.PoolSize, problem = parseCount(raw, s.PoolSize)
	case keyMaxOverflow:
		s.MaxOverflow, problem = parseCount(raw, s.MaxOverflow)
	case keyTimeout:
		s.Timeout, problem = parseSeconds(raw, s.Timeout)
	case keyRecycle:
		// SQLAlchemy's pool_recycle=-1 (its default) means never; Recycle 0 says that here.
		if f, err := strconv.ParseFloat(strings.TrimSpace(raw), 64); err == nil && f == -1 {
			s.Recycle = 0
			return ""
		}
		var d time.Duration
		if d, problem = parseSeconds(raw, s.Recycle); problem == "" && d == 0 {
			// SQLAlchemy's pool_recycle=0 replaces the connection at every checkout, but
			// Recycle 0 here means never: refuse it rather than misread it.
			return "SQLAlchemy would replace the connection at every checkout; use -1 for never or a number of seconds"
		}
		s.Recycle = d
	case keyPrePing:
		s.PrePing, problem = parseBool(raw, s.PrePing)
	case keyEcho:
		s.Echo, problem = parseBool(raw, s.Echo)
	}
	return problem
}

// parseCount parses a connection count; on error it returns old and the problem.
func parseCount(raw string, old int) (int, string) {
	n, err := strconv.Atoi(strings.TrimSpace(raw))
	switch {
	case errors.Is(err, strconv.ErrRange):
		return old, "out of range"
	case err != nil:
		return old, "not an integer"
	}
	return n, ""
}

// parseSeconds accepts a number of seconds (integer or decimal, as DB_POOL_TIMEOUT=0.5 is written)
// or a Go duration such as 30s or 1h30m.
func parseSeconds(raw string, old time.Duration) (time.Duration, string) {
	v := strings.TrimSpace(raw)
	f, err := strconv.ParseFloat(v, 64)
	switch {
	case errors.Is(err, strconv.ErrRange) || err == nil && math.Abs(f) >= math.MaxInt64/float64(time.Second):
		return old, "out of range"
	case err == nil && (math.IsNaN(f) || math.IsInf(f, 0)):
		return old, "not a number of seconds or a duration such as 30s"
	case err == nil:
		return time.Duration(math.Round(f * float64(time.Second))), ""
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return old, "not a number of seconds or a duration such as 30s"
	}
	return d, ""
}

// parseBool accepts the spellings that Python settings libraries accept.
func parseBool(raw string, old bool) (bool, string) {
	switch strings.ToLower(strings.TrimSpace(raw)) {
	case "true", "1", "yes", "on":
		return true, ""
	case "false", "0", "no", "off":
		return false, ""
	}
	return old, "not a boolean (use true/false, 1/0, yes/no or on/off)"
}

// formatSetting writes a setting back in the form the DB_* variables use, for messages
// about values that were not written by the user (defaults, or a Config built in code).
func formatSetting(s Settings, key string) string {
	switch key {
	case keyPoolSize:
		return strconv.Itoa(s.PoolSize)
	case keyMaxOverflow:
		return strconv.Itoa(s.MaxOverflow)
	case keyTimeout:
		return strconv.FormatFloat(s.Timeout.Seconds(), 'f', -1, 64)
	case keyRecycle:
		return strconv.FormatFloat(s.Recycle.Seconds(), 'f', -1, 64)
	case keyPrePing:
		return strconv.FormatBool(s.PrePing)
	case keyEcho:
		return strconv.FormatBool(s.Echo)
	}
	return ""
}

// checkSettings reports every invalid value of s. ref says, for a setting key, where it was
// set (a "file:line: " prefix or ""), under which name, and as what text.
func checkSettings(s Settings, ref func(key string) (at, name, raw string)) []error {
	var errs []error
	bad := func(key, problem string) {
		at, name, raw := ref(key)
		errs = append(errs, valueError(at, name, raw, problem))
	}
	switch {
	case s.PoolSize < 0:
		bad(keyPoolSize, "must be >= 0")
	case s.PoolSize > maxConnections:
		bad(keyPoolSize, fmt.Sprintf("must be <= %d, PostgreSQL's limit on connections", maxConnections))
	}
	switch {
	case s.MaxOverflow < 0:
		bad(keyMaxOverflow, "must be >= 0 (SQLAlchemy's -1, unlimited overflow, is not supported: "+
			"a pool without a limit has no capacity to measure utilization against)")
	case s.MaxOverflow > maxConnections:
		bad(keyMaxOverflow, fmt.Sprintf("must be <= %d, PostgreSQL's limit on connections", maxConnections))
	}
	if s.PoolSize == 0 && s.MaxOverflow > 0 {
		bad(keyPoolSize, fmt.Sprintf("pool_size 0 with max_overflow %d is not supported: SQLAlchemy's QueuePool "+
			"treats pool_size 0 as no limit and then ignores max_overflow, so the pool has no capacity; "+
			"set pool_size >= 1", s.MaxOverflow))
	}
	if s.PoolSize == 0 && s.MaxOverflow == 0 {
		bad(keyPoolSize, "pool_size + max_overflow must be >= 1: this pool could not open any connection")
	}
	if s.Timeout <= 0 {
		bad(keyTimeout, "must be > 0")
	}
	if s.Recycle < 0 {
		bad(keyRecycle, "must be a positive number of seconds, or -1 to never recycle")
	}
	return errs
}
