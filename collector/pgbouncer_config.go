// The PgBouncer settings a scrape reads from SHOW CONFIG (and the version from SHOW VERSION).

package collector

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// pgbConfig is SHOW CONFIG as key -> value.
type pgbConfig map[string]string

func parseConfig(rows []consoleRow) (pgbConfig, error) {
	c := make(pgbConfig, len(rows))
	for i, r := range rows {
		k, err := r.requiredText("key")
		if err != nil {
			return nil, fmt.Errorf("%s row %d: %w", pgbConfigQuery, i+1, err)
		}
		v, _ := r.text("value")
		c[k] = v
	}
	return c, nil
}

func (c pgbConfig) int(key string) (int, error) {
	s, ok := c[key]
	if !ok {
		return 0, fmt.Errorf("%s: setting %q missing", pgbConfigQuery, key)
	}
	v, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		return 0, fmt.Errorf("%s: setting %q: %q is not an integer", pgbConfigQuery, key, s)
	}
	return v, nil
}

func (c pgbConfig) seconds(key string) (time.Duration, error) {
	s, ok := c[key]
	if !ok {
		return 0, fmt.Errorf("%s: setting %q missing", pgbConfigQuery, key)
	}
	d, err := parseSeconds(s)
	if err != nil {
		return 0, fmt.Errorf("%s: setting %q: %w", pgbConfigQuery, key, err)
	}
	return d, nil
}

// parseSeconds reads a PgBouncer time setting, shown in seconds with an optional fraction
// ("120", "0.1").
func parseSeconds(s string) (time.Duration, error) {
	f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || f < 0 || math.IsInf(f, 0) || math.IsNaN(f) {
		return 0, fmt.Errorf("%q is not a number of seconds", s)
	}
	return time.Duration(f * float64(time.Second)), nil
}

// parseVersion turns "PgBouncer 1.18.0" into "1.18.0".
func parseVersion(rows []consoleRow) string {
	if len(rows) == 0 {
		return ""
	}
	v, _ := rows[0].text("version")
	return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), "PgBouncer"))
}

// pgbGlobals are the [pgbouncer] settings the pool model needs.
type pgbGlobals struct {
	poolSize, reservePool int
	queryWaitTimeout      time.Duration
	serverLifetime        time.Duration
	checkQuery            bool
	poolMode              string
	authUser              string
}

func (c pgbConfig) globals() (pgbGlobals, error) {
	var g pgbGlobals
	var err error
	if g.poolSize, err = c.int("default_pool_size"); err != nil {
		return g, err
	}
	if g.reservePool, err = c.int("reserve_pool_size"); err != nil {
		return g, err
	}
	if g.queryWaitTimeout, err = c.seconds("query_wait_timeout"); err != nil {
		return g, err
	}
	if g.serverLifetime, err = c.seconds("server_lifetime"); err != nil {
		return g, err
	}
	g.checkQuery = strings.TrimSpace(c["server_check_query"]) != ""
	g.poolMode = c["pool_mode"]
	g.authUser = c["auth_user"]
	return g, nil
}
