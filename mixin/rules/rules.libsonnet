// Recording rules. They open the one rule group (see mixin.libsonnet), so that every alert of
// the same evaluation sees them. `comment` (hidden) is written above the rule in
// alerts/dbpool.rules.yml.
local u = import '../lib/utils.libsonnet';

{
  dbpoolRecordingRules:: [
    {
      local sel(metric) = u.sel($._config, metric, 'pool!="dbpool_exporter"'),
      comment:: |||
        Average time to check a connection out of the pool. Summed across `instance` first: with
        the pgxpool collector embedded in a Go service every process is its own scrape target,
        and the average of the pool group is total wait time over total checkouts.
        PgBouncer exposes only the +Inf bucket, so _sum/_count is the one view all sources share.
      |||,
      record: 'target_pool:dbpool_checkout_duration_seconds:avg_rate5m',
      expr: |||
        sum without (instance) (rate(%s[5m]))
        /
        sum without (instance) (rate(%s[5m]))
      ||| % [sel('dbpool_checkout_duration_seconds_sum'), sel('dbpool_checkout_duration_seconds_count')],
    },
    {
      comment:: |||
        Checkout timeouts per second over 1m, for dashboards. Needs a scrape interval of 30s or
        less (a 1m window must hold two samples); alerts use the 5m rate below.
      |||,
      record: 'target_pool:dbpool_checkout_timeouts:rate1m',
      expr: 'sum without (instance) (rate(%s[1m]))'
            % u.sel($._config, 'dbpool_checkout_timeouts_total', 'pool!="dbpool_exporter"'),
    },
    {
      comment:: |||
        Checkout timeouts per second over 5m: robust to scrape intervals up to 2m.
      |||,
      record: 'target_pool:dbpool_checkout_timeouts:rate5m',
      expr: 'sum without (instance) (rate(%s[5m]))'
            % u.sel($._config, 'dbpool_checkout_timeouts_total', 'pool!="dbpool_exporter"'),
    },
    {
      local budget = '(%s * %s > 0)' % [
        u.sel($._config, 'dbpool_max_overflow_connections'),
        u.sel($._config, 'dbpool_instances'),
      ],
      comment:: |||
        Share of the overflow budget (instances x DB_MAX_OVERFLOW) in use, 0..1. Pools without
        overflow (max_overflow 0) get no series rather than a division by zero.
        The exact view wins over the activity estimate of the same pool.
      |||,
      record: 'target_pool:dbpool_overflow_connections:ratio',
      expr: |||
        (
          %(exact)s
          /
          %(budget)s
        )
        or on (target, pool)
        (
          %(estimate)s
          /
          %(budget)s
        )
      ||| % {
        exact: u.sel($._config, 'dbpool_overflow_connections', 'pool!="dbpool_exporter", source!="activity"'),
        estimate: u.sel($._config, 'dbpool_overflow_connections', 'pool!="dbpool_exporter", source="activity"'),
        budget: budget,
      },
    },
    {
      comment:: |||
        In-use connections over capacity, 0..1, one series per pool: the exact view where the
        application reports its pool itself, else the activity estimate.
      |||,
      record: 'target_pool:dbpool_utilization:ratio',
      expr: |||
        %s
        or on (target, pool)
        %s
      ||| % [
        u.sel($._config, 'dbpool_utilization_ratio', 'pool!="dbpool_exporter", source!="activity"'),
        u.sel($._config, 'dbpool_utilization_ratio', 'pool!="dbpool_exporter", source="activity"'),
      ],
    },
    {
      comment:: |||
        Failed checkouts per second over 5m, by reason (timeout, connect, cancelled, other).
      |||,
      record: 'target_pool:dbpool_checkout_failures:rate5m',
      expr: 'sum without (instance) (rate(%s[5m]))'
            % u.sel($._config, 'dbpool_checkout_failures_total', 'pool!="dbpool_exporter"'),
    },
    {
      comment:: |||
        What the configured pools on a server may open together: instances x (pool_size +
        max_overflow), summed over the pools of the target. By target, not `without`: the pools
        of one server may come from several jobs (the exporter, Go services with the pgxpool
        collector), and the server's limit is theirs together.
      |||,
      record: 'target:dbpool_configured_connections:sum',
      expr: u.configuredConnections($._config),
    },
    {
      comment:: |||
        Connections the applications on a server may use: max_connections minus
        max(reserved slots, %s of max_connections) kept for admins, migrations and tools.
      ||| % u.percent($._config.adminHeadroomRatio),
      record: 'target:dbpool_server_usable_connections:max',
      expr: u.usableConnections($._config),
    },
  ],
}
