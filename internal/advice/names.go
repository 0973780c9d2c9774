package advice

import (
	"strconv"

	"github.com/dbpool/dbpool_exporter/internal/metrics"
)

var itoa = strconv.Itoa

// SettingNames name a pool's size, overflow and checkout timeout settings in its source's
// own terms, so that every message speaks of the setting the operator will change.
type SettingNames struct {
	PoolSize    string `json:"pool_size"`
	MaxOverflow string `json:"max_overflow"`
	Timeout     string `json:"timeout"`
}

// NamesOf says what pool_size, max_overflow and timeout are called for a source. The
// activity and app sources watch the application's own pool, which the DB_* settings
// (SQLAlchemy's pool_size, max_overflow, pool_timeout) configure; so does a pool of no known
// source. PgBouncer's pool is default_pool_size, or pool_size of the database in
// [databases], plus reserve_pool_size; pgxpool has MaxConns and no overflow at all.
func NamesOf(src metrics.Source) SettingNames {
	switch src {
	case metrics.SourcePgBouncer:
		return SettingNames{"pool_size in [databases] (or default_pool_size)", "reserve_pool_size", "query_wait_timeout"}
	case metrics.SourcePgxpool:
		return SettingNames{"MaxConns", "none (pgxpool has no overflow)", "the deadline of the Acquire context"}
	}
	return SettingNames{"DB_POOL_SIZE", "DB_MAX_OVERFLOW", "DB_POOL_TIMEOUT"}
}

// hasOverflow says whether the source's pool has overflow connections at all.
func hasOverflow(src metrics.Source) bool { return src != metrics.SourcePgxpool }

// capacity names pool_size + max_overflow.
func (n SettingNames) capacity(src metrics.Source) string {
	if !hasOverflow(src) {
		return n.PoolSize
	}
	return n.PoolSize + " + " + n.MaxOverflow
}

// settings says "X=a, Y=b" for a size and an overflow, without the overflow where the pool
// has none.
func (n SettingNames) settings(src metrics.Source, size, overflow int) string {
	if !hasOverflow(src) {
		return n.PoolSize + "=" + itoa(size)
	}
	return n.PoolSize + "=" + itoa(size) + ", " + n.MaxOverflow + "=" + itoa(overflow)
}
