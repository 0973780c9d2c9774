// Package poolcfg holds the validated description of what dbpool_exporter watches: the
// PostgreSQL targets, the application pools on them (with their DB_* settings)
// and the PgBouncer consoles. It has no flags and no globals: main reads flags, environment
// and files, and passes plain values in.
package poolcfg

import (
	"net/netip"
	"regexp"
	"time"
)

// Settings are one application pool's settings, named after the DB_* variables that configure
// a SQLAlchemy pool (pool_size, max_overflow, pool_timeout, pool_recycle, pool_pre_ping, echo).
type Settings struct {
	PoolSize    int           // DB_POOL_SIZE: permanent connections per instance.
	MaxOverflow int           // DB_MAX_OVERFLOW: extra connections per instance, closed on return.
	Timeout     time.Duration // DB_POOL_TIMEOUT: how long a checkout may wait.
	Recycle     time.Duration // DB_POOL_RECYCLE: connection age after which the pool replaces it; 0 = never (DB_POOL_RECYCLE=-1; a written 0 is refused).
	PrePing     bool          // DB_POOL_PRE_PING.
	Echo        bool          // DB_ECHO.
}

// DefaultSettings returns the defaults of the DB_* variables: 10, 20, 30 s, 3600 s, pre-ping on,
// echo off.
func DefaultSettings() Settings {
	return Settings{
		PoolSize:    10,
		MaxOverflow: 20,
		Timeout:     30 * time.Second,
		Recycle:     3600 * time.Second,
		PrePing:     true,
		Echo:        false,
	}
}

// Capacity is the most connections one instance of the pool may open.
func (s Settings) Capacity() int { return s.PoolSize + s.MaxOverflow }

// Matcher recognises the backends of one application pool in pg_stat_activity.
// Empty fields match anything. All set fields must match.
type Matcher struct {
	ApplicationName      string         // exact application_name
	ApplicationNameRegex *regexp.Regexp // from CompileApplicationNameRegex: whole-name match; may have a named group "instance"
	User                 string
	Database             string
	ClientCIDR           netip.Prefix // zero value (IsValid()==false) matches any client, including unix sockets
}

// Pool is one application connection pool group: the same settings on Instances processes.
type Pool struct {
	Name      string
	Target    string // name of the Target whose pg_stat_activity shows this pool's backends
	Match     Matcher
	Settings  Settings
	Instances int // processes (replicas x workers) that each hold one such pool; >= 1
}

// Target is one PostgreSQL server the exporter connects to.
type Target struct {
	Name string
	DSN  DSN // with the credentials of AuthModule, if set
	// AuthModule is the auth_modules entry whose credentials the DSN carries; "" if none.
	AuthModule string
}

// PgBouncer is one PgBouncer admin console the exporter reads (SHOW POOLS etc.).
type PgBouncer struct {
	Name       string
	DSN        DSN
	AuthModule string
}

// Config is the whole validated configuration.
type Config struct {
	Targets    []Target
	Pools      []Pool
	PgBouncers []PgBouncer
	Apps       []App
	// AuthModules are the named credential sets of the file, sorted by name.
	AuthModules []AuthModule
}
