// Tunables of the dbpool_exporter mixin. Override any of them with
//   (import 'mixin.libsonnet') + { _config+:: { utilizationAlertRatio: 0.85 } }
// The defaults are the thresholds of the connection pooling tuning guide ("Metrics to Monitor")
// and generate alerts/dbpool.rules.yml and grafana/dbpool.json exactly (`make mixin`).
{
  _config+:: {
    // Label matchers that select the exporter's series, added to every selector of the rules
    // and to the dashboard's job variable, e.g. 'job="dbpool_exporter"'. Empty: any job.
    dbpoolSelector: '',

    // Runbooks: every alert's runbook_url is <runbookURLBase>/docs/runbook.md#<anchor>.
    runbookURLBase: 'https://github.com/dbpool/dbpool_exporter/blob/main',

    // 1. Pool utilization: alert above 80% of capacity for 5 minutes. The dashboard draws the
    // targets as well: below 70% on average, below 90% at peak.
    utilizationAlertRatio: 0.8,
    utilizationAlertFor: '5m',
    utilizationTargetAvgRatio: 0.7,
    utilizationTargetPeakRatio: 0.9,

    // 2. Average checkout time: alert above 50 ms (a 5-minute average) held for 5 minutes;
    // target below 10 ms.
    checkoutAlertSeconds: 0.05,
    checkoutAlertFor: '5m',
    checkoutTargetSeconds: 0.01,

    // 3. Checkout timeouts: alert above 1 per minute (a 5-minute average) held for 2 minutes.
    timeoutsAlertPerMinute: 1,
    timeoutsAlertFor: '2m',

    // 4. Overflow: alert above 80% of the overflow budget for 10 minutes; target below 50%.
    overflowAlertRatio: 0.8,
    overflowAlertFor: '10m',
    overflowTargetRatio: 0.5,

    // 5. Idle in transaction: alert above 5 connections of one pool for 5 minutes.
    idleInTransactionAlertConnections: 5,
    idleInTransactionAlertFor: '5m',

    // 6. Long-running queries: alert on a query running longer than 30 s; target below 5 s.
    // The metric is itself an age, so the alert has no `for` (see DbPoolLongQuery).
    longQueryAlertSeconds: 30,
    longQueryTargetSeconds: 5,

    // Not in the guide's list: the exporter's own health and the server's connection limit.
    targetDownFor: '5m',
    loginRefusedFor: '2m',
    activityRestrictedFor: '15m',
    // Client backends over max_connections minus reserved slots.
    serverConnectionsAlertRatio: 0.9,
    serverConnectionsAlertFor: '5m',
    // Configured capacity of all pools on a server (instances x (DB_POOL_SIZE +
    // DB_MAX_OVERFLOW), summed) above what applications may use: max_connections minus
    // max(reserved slots, adminHeadroomRatio x max_connections), the exporter's own budget
    // (20 of 100 kept for admins, migrations and tools, as the tuning guide does).
    adminHeadroomRatio: 0.2,
    configuredCapacityAlertFor: '10m',
    // Checkouts failing to connect (server down, refusing logins, wrong password): alert above
    // 1 per minute (a 5-minute average) held for 2 minutes.
    connectFailuresAlertPerMinute: 1,
    connectFailuresAlertFor: '2m',
    // A connection older than this many times DB_POOL_RECYCLE is not being recycled.
    notRecycledFactor: 1.5,
    notRecycledFor: '15m',
    // Leaked connections (the application's leak detection, app source): alert above 0, that is
    // on any connection held longer than the application's DBPOOL_STATS_LEAK_THRESHOLD, held
    // for 10 minutes. The application's threshold already says how long a hold is too long.
    leakedConnectionsAlert: 0,
    leakedConnectionsAlertFor: '10m',

    // The dashboard.
    dashboardUID: 'dbpool-exporter-pools',
    dashboardTitle: 'dbpool_exporter: connection pools',
    dashboardTags: ['dbpool', 'postgresql', 'pgbouncer', 'connection-pool'],
    dashboardRefresh: '30s',
  },
}
