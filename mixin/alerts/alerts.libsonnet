// Alerting rules. They follow the recording rules in the one rule group (see mixin.libsonnet).
// `comment` (hidden) is written above the rule in alerts/dbpool.rules.yml; summaries and
// descriptions are written over several lines and joined into one (u.prose).
//
// Severity: critical pages (requests fail now or the pools are unwatched); warning opens a
// ticket for working hours (no request fails yet).
local u = import '../lib/utils.libsonnet';

{
  dbpoolAlerts:: [
    {
      local c = $._config,
      local up = u.sel(c, 'dbpool_up'),
      comment:: |||
        critical, %s: without this target the exporter sees nothing, and the usual cause is that
        the database itself is unreachable. 5m rides out a restart or a failover (usually well
        under 2m) so a planned switchover does not page.
        The absent() branch catches the case where every dbpool_up series is gone (the
        exporter is not scraped at all), which `dbpool_up == 0` alone would never see. Losing
        one of several exporters is the job of Prometheus' own `up == 0` alerting.
      ||| % c.targetDownFor,
      alert: 'DbPoolExporterTargetDown',
      expr: '%s == 0 or absent(%s)' % [up, up],
      'for': c.targetDownFor,
      labels: { severity: 'critical' },
      annotations: {
        summary: u.prose(|||
          {{ if $labels.target }}dbpool_exporter cannot reach target {{ $labels.target }}.{{ else }}No dbpool_up series: dbpool_exporter is not being scraped.{{ end }}
        |||),
        description: u.prose(|||
          {{ if $labels.target }}dbpool_up of target {{ $labels.target }} has been {{ $value | humanize }} for %(for)s:
          the exporter cannot connect to or query this PostgreSQL server, so its pools are not watched.
          Check that the server is up and the exporter's DSN and credentials are valid; the exporter logs the error.{{ else }}Prometheus has had no dbpool_up series for %(for)s:
          dbpool_exporter is down, not scraped, or was removed from the scrape configuration.{{ end }}
        ||| % { 'for': u.words(c.targetDownFor) }),
        runbook_url: u.runbook(c, 'exporter-target-down'),
      },
    },
    {
      local c = $._config,
      comment:: |||
        critical, %s: the server refuses new logins (typically SQLSTATE 53300 "too many clients")
        while the exporter's existing session still works. Every application instance that
        restarts, scales out or opens an overflow connection fails right now. 2m (several
        probes in a row) ignores a single refused login during a short spike.
      ||| % c.loginRefusedFor,
      alert: 'DbPoolLoginRefused',
      expr: '%s == 0 and %s == 1' % [u.sel(c, 'dbpool_probe_connect_success'), u.sel(c, 'dbpool_up')],
      'for': c.loginRefusedFor,
      labels: { severity: 'critical' },
      annotations: {
        summary: 'PostgreSQL target {{ $labels.target }} refuses new connections.',
        description: u.prose(|||
          A fresh login to {{ $labels.target }} has failed for %s (dbpool_probe_connect_success {{ $value | humanize }})
          while the exporter's existing session still works. New application connections fail too,
          most often because max_connections is exhausted ("too many clients").
        ||| % u.words(c.loginRefusedFor)),
        runbook_url: u.runbook(c, 'logins-refused'),
      },
    },
    {
      local c = $._config,
      comment:: |||
        warning, %s: the monitoring role lacks pg_monitor (pg_read_all_stats), so PostgreSQL
        hides other roles' session states: in-use counts are too low and session ages are
        absent, so the utilization, idle-in-transaction and long-query alerts cannot fire.
        Nothing fails for users, hence warning; 15m lets a grant roll out.
      ||| % c.activityRestrictedFor,
      alert: 'DbPoolActivityRestricted',
      expr: '%s == 1' % u.sel(c, 'dbpool_server_activity_restricted'),
      'for': c.activityRestrictedFor,
      labels: { severity: 'warning' },
      annotations: {
        summary: 'dbpool_exporter cannot see session states on {{ $labels.target }}.',
        description: u.prose(|||
          The exporter's role on {{ $labels.target }} cannot read other roles' session states
          (dbpool_server_activity_restricted {{ $value }}): pool utilization is undercounted and
          the long-query and idle-in-transaction alerts cannot fire. GRANT pg_monitor to it.
        |||),
        runbook_url: u.runbook(c, 'monitoring-role-cannot-see-sessions'),
      },
    },
    {
      local c = $._config,
      comment:: |||
        warning, %s: %s of the slots ordinary roles may use (max_connections - reserved) are
        taken. Nothing fails yet; the outage itself is DbPoolLoginRefused (critical). This gives
        the owner time to shrink pools or raise max_connections. 5m skips short overflow bursts.
      ||| % [c.serverConnectionsAlertFor, u.percent(c.serverConnectionsAlertRatio)],
      alert: 'DbPoolServerConnectionsNearLimit',
      expr: |||
        sum without (state) (%s)
        /
        (%s - %s)
        > %s
      ||| % [
        u.sel(c, 'dbpool_server_connections'),
        u.sel(c, 'dbpool_server_max_connections'),
        u.sel(c, 'dbpool_server_reserved_connections'),
        u.num(c.serverConnectionsAlertRatio),
      ],
      'for': c.serverConnectionsAlertFor,
      labels: { severity: 'warning' },
      annotations: {
        summary: 'PostgreSQL target {{ $labels.target }} is close to max_connections.',
        description: u.prose(|||
          Client connections on {{ $labels.target }} use {{ $value | humanizePercentage }} of
          max_connections minus reserved slots (threshold %s for %s). The next burst of
          overflow connections will be refused with "too many clients".
        ||| % [u.percent(c.serverConnectionsAlertRatio), u.words(c.serverConnectionsAlertFor)]),
        runbook_url: u.runbook(c, 'too-many-database-connections'),
      },
    },
    {
      local c = $._config,
      comment:: |||
        warning, %s: the tuning guide's "Too Many Database Connections" before it happens: 5
        instances x (10 + 20) = 150 may be opened against 80 usable. Nothing fails while the
        pools stay small; at the next peak logins are refused. Configuration changes slowly, and
        a rolling deploy briefly doubles the instances that report: 10m rides that out.
      ||| % c.configuredCapacityAlertFor,
      alert: 'DbPoolConfiguredOverServerLimit',
      expr: 'target:dbpool_configured_connections:sum > on (target) target:dbpool_server_usable_connections:max',
      'for': c.configuredCapacityAlertFor,
      labels: { severity: 'warning' },
      annotations: {
        summary: 'The pools on {{ $labels.target }} may open more connections than the server allows.',
        description: u.prose(|||
          The pools configured on {{ $labels.target }} may open {{ $value }} connections together
          (instances x (DB_POOL_SIZE + DB_MAX_OVERFLOW), summed over the pools), more than the
          {{ with printf "target:dbpool_server_usable_connections:max{target='%%s'}" $labels.target | query }}{{ . | first | value }}{{ end }}
          the server leaves to applications (max_connections minus max(reserved slots, %s) kept back).
          At the next peak, logins fail with "too many clients".
        ||| % u.percent(c.adminHeadroomRatio)),
        runbook_url: u.runbook(c, 'too-many-database-connections'),
      },
    },
    {
      local c = $._config,
      comment:: |||
        critical, %s: every such checkout is a request that failed because the pool could not
        open a connection: the server is down or unreachable, refuses logins (too many clients)
        or the credentials are wrong. More than 1 per minute averaged over 5 minutes, held for 2
        more minutes, is an outage rather than one lost packet.
      ||| % c.connectFailuresAlertFor,
      alert: 'DbPoolCheckoutConnectFailures',
      expr: 'target_pool:dbpool_checkout_failures:rate5m{reason="connect"} * 60 > %s' % u.num(c.connectFailuresAlertPerMinute),
      'for': c.connectFailuresAlertFor,
      labels: { severity: 'critical' },
      annotations: {
        summary: 'Checkouts from pool {{ $labels.pool }} on {{ $labels.target }} fail to connect.',
        description: u.prose(|||
          Pool {{ $labels.pool }} on {{ $labels.target }} has {{ $value | humanize }} checkouts per minute that failed
          to open a connection (5 minute average, threshold %s): requests fail because the server is
          down, refuses logins or rejects the credentials.
        ||| % u.num(c.connectFailuresAlertPerMinute)),
        runbook_url: u.runbook(c, 'checkouts-failing-to-connect'),
      },
    },
    {
      local c = $._config,
      comment:: |||
        warning, %s: the seed's rule (> 80%% for more than 5 minutes). 20%% headroom is left and no
        request fails yet; the fix is resizing, which can wait for working hours.
      ||| % c.utilizationAlertFor,
      alert: 'DbPoolHighUtilization',
      expr: 'target_pool:dbpool_utilization:ratio > %s' % u.num(c.utilizationAlertRatio),
      'for': c.utilizationAlertFor,
      labels: { severity: 'warning' },
      annotations: {
        summary: 'Connection pool {{ $labels.pool }} on {{ $labels.target }} is over %s utilized.'
                 % u.percent(c.utilizationAlertRatio),
        description: u.prose(|||
          Pool {{ $labels.pool }} on {{ $labels.target }} has had {{ $value | humanizePercentage }} of its capacity
          (instances x (DB_POOL_SIZE + DB_MAX_OVERFLOW)) checked out for %s.
          Callers will soon wait for connections.
        ||| % u.words(c.utilizationAlertFor)),
        runbook_url: u.runbook(c, 'high-pool-utilization'),
      },
    },
    {
      local c = $._config,
      comment:: |||
        warning, %s: callers wait for a free connection (seed: alert above 50 ms average). It adds
        latency but nothing fails yet; DbPoolCheckoutTimeouts is the critical follow-up. The
        rule is already a 5m average, so 5m more means the wait lasted about 10 minutes.
      ||| % c.checkoutAlertFor,
      alert: 'DbPoolSlowCheckout',
      expr: 'target_pool:dbpool_checkout_duration_seconds:avg_rate5m > %s' % u.num(c.checkoutAlertSeconds),
      'for': c.checkoutAlertFor,
      labels: { severity: 'warning' },
      annotations: {
        summary: 'Connection checkout from pool {{ $labels.pool }} on {{ $labels.target }} is slow.',
        description: u.prose(|||
          Checking out a connection from pool {{ $labels.pool }} on {{ $labels.target }} has taken
          {{ $value | humanizeDuration }} on average over the last 5 minutes (threshold %s):
          all connections are busy and callers queue for one.
        ||| % u.millis(c.checkoutAlertSeconds, sep='')),
        runbook_url: u.runbook(c, 'connection-timeout-errors'),
      },
    },
    {
      local c = $._config,
      comment:: |||
        critical, %s: every timeout is a request that waited DB_POOL_TIMEOUT and then failed
        (a 503 in the seed's application). More than 1 per minute averaged over 5 minutes, held
        for 2 more minutes, is a sustained error stream rather than a single burst.
      ||| % c.timeoutsAlertFor,
      alert: 'DbPoolCheckoutTimeouts',
      expr: 'target_pool:dbpool_checkout_timeouts:rate5m * 60 > %s' % u.num(c.timeoutsAlertPerMinute),
      'for': c.timeoutsAlertFor,
      labels: { severity: 'critical' },
      annotations: {
        summary: 'Connection checkouts from pool {{ $labels.pool }} on {{ $labels.target }} time out.',
        description: u.prose(|||
          Pool {{ $labels.pool }} on {{ $labels.target }} has {{ $value | humanize }} checkout timeouts per minute
          (5 minute average, threshold %s): requests fail because no connection became free within DB_POOL_TIMEOUT.
        ||| % u.num(c.timeoutsAlertPerMinute)),
        runbook_url: u.runbook(c, 'connection-timeout-errors'),
      },
    },
    {
      local c = $._config,
      comment:: |||
        warning, %s: overflow exists to absorb bursts, so a burst alone is not a problem. More
        than 80%% of the overflow budget for 10 minutes means the steady load no longer fits in
        DB_POOL_SIZE and connections are opened and closed all the time.
      ||| % c.overflowAlertFor,
      alert: 'DbPoolOverflowHigh',
      expr: 'target_pool:dbpool_overflow_connections:ratio > %s' % u.num(c.overflowAlertRatio),
      'for': c.overflowAlertFor,
      labels: { severity: 'warning' },
      annotations: {
        summary: 'Connection pool {{ $labels.pool }} on {{ $labels.target }} lives on overflow connections.',
        description: u.prose(|||
          Pool {{ $labels.pool }} on {{ $labels.target }} has used {{ $value | humanizePercentage }} of its
          overflow budget (instances x DB_MAX_OVERFLOW) for %s (threshold %s).
          DB_POOL_SIZE is too small for the steady load.
        ||| % [u.words(c.overflowAlertFor), u.percent(c.overflowAlertRatio)]),
        runbook_url: u.runbook(c, 'high-pool-utilization'),
      },
    },
    {
      local c = $._config,
      comment:: |||
        warning, %s: sessions idle inside a transaction hold a pool connection doing nothing,
        keep their locks and hold back VACUUM. A handful for a moment is normal between
        statements of a transaction; more than 5 for 5 minutes is a leaked session or a missing
        commit/rollback. Not critical by itself: it leads to the utilization and timeout alerts.
        Unlike DbPoolLongQuery it also covers application_name:<name> groups: an ad-hoc session left open
        in a transaction holds locks and VACUUM back just the same.
      ||| % c.idleInTransactionAlertFor,
      alert: 'DbPoolIdleInTransaction',
      expr: |||
        sum without (state) (
          %s
        ) > %s
      ||| % [
        u.sel(c, 'dbpool_connections', 'state=~"idle in transaction|idle in transaction \\\\(aborted\\\\)"'),
        u.num(c.idleInTransactionAlertConnections),
      ],
      'for': c.idleInTransactionAlertFor,
      labels: { severity: 'warning' },
      annotations: {
        summary: 'Pool {{ $labels.pool }} on {{ $labels.target }} has connections idle in transaction.',
        description: u.prose(|||
          {{ $value | humanize }} connections of pool {{ $labels.pool }} on {{ $labels.target }} have been idle in
          transaction for %s (threshold %s): they hold connections and locks without doing work.
        ||| % [u.words(c.idleInTransactionAlertFor), u.num(c.idleInTransactionAlertConnections)]),
        runbook_url: u.runbook(c, 'idle-in-transaction'),
      },
    },
    {
      local c = $._config,
      comment:: |||
        warning, %s: the application's leak detection (HikariCP's leakDetectionThreshold, off
        unless DBPOOL_STATS_LEAK_THRESHOLD is set) counts connections checked out for longer than
        its threshold, so the series already means "held too long" and any value above 0 counts.
        A hold a little longer than the threshold (a slow batch) comes back; a leaked connection
        does not, so %s above 0 is a leak, not a slow request. Warning: each leak is one
        connection fewer for the pool and nothing fails yet; when the pool runs out,
        DbPoolCheckoutTimeouts is the critical follow-up. Pools without leak detection have no
        series and never fire; DbPoolIdleInTransaction sees the leaks that hold a transaction open.
      ||| % [c.leakedConnectionsAlertFor, u.words(c.leakedConnectionsAlertFor)],
      alert: 'DbPoolConnectionLeak',
      expr: '%s > %s' % [u.sel(c, 'dbpool_leaked_connections'), u.num(c.leakedConnectionsAlert)],
      'for': c.leakedConnectionsAlertFor,
      labels: { severity: 'warning' },
      annotations: {
        summary: 'Pool {{ $labels.pool }} on {{ $labels.target }} leaks connections.',
        description: u.prose(|||
          Pool {{ $labels.pool }} on {{ $labels.target }} has had leaked connections for %s (threshold %s),
          {{ $value | humanize }} now: connections checked out for longer than the application's leak detection
          threshold, taken by code that never returned them, so the pool is that much smaller.
          The exporter's /pools page and /api/v1/pools name the file and line that checked them out.
        ||| % [u.words(c.leakedConnectionsAlertFor), u.num(c.leakedConnectionsAlert)]),
        runbook_url: u.runbook(c, 'a-leaked-connection'),
      },
    },
    {
      local c = $._config,
      comment:: |||
        warning, 0s: the seed alerts on queries over 30 s. The metric is itself an age, so the
        expression already waits 30 s and cannot flap on a blip: a `for` on top would only move
        the alert to 30 s + `for` and miss the 40 s query the seed means. Warning, because long
        queries are a cause; the pool alerts they lead to carry the urgency. Only configured
        pools (those with a capacity): ad-hoc sessions grouped as application_name:<name>, such as a nightly
        pg_dump or a psql report, run long queries on purpose.
      |||,
      alert: 'DbPoolLongQuery',
      expr: '%s > %s and on (target, pool) %s' % [
        u.sel(c, 'dbpool_longest_query_seconds'),
        u.num(c.longQueryAlertSeconds),
        u.sel(c, 'dbpool_max_connections'),
      ],
      'for': '0s',
      labels: { severity: 'warning' },
      annotations: {
        summary: 'Pool {{ $labels.pool }} on {{ $labels.target }} runs long queries.',
        description: u.prose(|||
          The longest active query of pool {{ $labels.pool }} on {{ $labels.target }} has been running for
          {{ $value | humanizeDuration }} (threshold %ss). Long queries hold
          connections and exhaust the pool.
        ||| % u.num(c.longQueryAlertSeconds)),
        runbook_url: u.runbook(c, 'slow-database-operations'),
      },
    },
    {
      local c = $._config,
      comment:: |||
        warning, %s: a connection older than 1.5 x DB_POOL_RECYCLE means recycling is not
        happening (setting not applied, or a session that never returns to the pool). The 0.5
        slack covers pools that recycle lazily at checkout. Stale connections cause sporadic
        errors, not an outage; 15m avoids flapping while a pool works through its connections.
      ||| % c.notRecycledFor,
      alert: 'DbPoolConnectionsNotRecycled',
      expr: '%s > %s * (%s > 0)' % [
        u.sel(c, 'dbpool_oldest_connection_seconds'),
        u.num(c.notRecycledFactor),
        u.sel(c, 'dbpool_recycle_seconds'),
      ],
      'for': c.notRecycledFor,
      labels: { severity: 'warning' },
      annotations: {
        summary: 'Pool {{ $labels.pool }} on {{ $labels.target }} does not recycle its connections.',
        description: u.prose(|||
          The oldest connection of pool {{ $labels.pool }} on {{ $labels.target }} is {{ $value | humanizeDuration }} old,
          more than %s x DB_POOL_RECYCLE. Old connections are the ones that break with "server closed the connection unexpectedly".
        ||| % u.num(c.notRecycledFactor)),
        runbook_url: u.runbook(c, 'stale-connections'),
      },
    },
  ],
}
