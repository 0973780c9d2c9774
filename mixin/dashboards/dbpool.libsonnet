// The dbpool_exporter dashboard (grafana/dbpool.json): the six metrics of the pool tuning guide
// with their targets and alert thresholds from _config, connection states, server limits,
// sizing advice and exporter health. Panels are listed in reading order; p.layout() places
// them. Panel ids are fixed so that links to a panel (viewPanel=N) survive changes: a new
// panel takes the next free id.
local u = import '../lib/utils.libsonnet';
local p = import 'panels.libsonnet';

{
  grafanaDashboards+:: {
    'dbpool.json':
      local c = $._config;
      local runbook(title, anchor) = p.runbookLink(title, u.runbook(c, anchor));
      // The matchers every query puts on a server's series (%(server)s) and on a pool's
      // series (%(pool)s): the dashboard's variables.
      local m = {
        server: 'job=~"$job", instance=~"$instance", target=~"$target"',
        pool: self.server + ', pool=~"$pool"',
      };
      local idleInTransaction = 'state=~"idle in transaction|idle in transaction \\\\(aborted\\\\)"';
      local queryVariable(name, label, query, allValue) = {
        allValue: allValue,
        datasource: p.datasource,
        definition: query,
        hide: 0,
        includeAll: true,
        label: label,
        multi: true,
        name: name,
        options: [],
        query: query,
        refresh: 2,
        regex: '',
        skipUrlSync: false,
        sort: 1,
        type: 'query',
      };

      // Threshold steps, in the panels' units.
      local utilizationSteps = [
        [c.utilizationTargetAvgRatio, 'yellow'],
        [c.utilizationAlertRatio, 'red'],
        [c.utilizationTargetPeakRatio, 'dark-red'],
      ];
      local checkoutSteps = [[c.checkoutTargetSeconds, 'yellow'], [c.checkoutAlertSeconds, 'red']];
      local timeoutSteps = [[c.timeoutsAlertPerMinute, 'red']];
      local overflowSteps = [[c.overflowTargetRatio, 'yellow'], [c.overflowAlertRatio, 'red']];
      local idleInTransactionSteps = [[c.idleInTransactionAlertConnections, 'red']];
      // Red from the smallest whole count that fires: a step at the threshold itself (0)
      // would paint the zero line red.
      local leakedSteps = [[std.floor(c.leakedConnectionsAlert) + 1, 'red']];
      local longQuerySteps = [[c.longQueryTargetSeconds, 'yellow'], [c.longQueryAlertSeconds, 'red']];
      local serverSteps = [[c.serverConnectionsAlertRatio, 'red']];

      // The same thresholds in words.
      local seconds(x) = '%g s' % x;
      local checkoutText = 'target below %s, alert above %s' % [u.millis(c.checkoutTargetSeconds), u.millis(c.checkoutAlertSeconds)];
      local timeoutText = 'alert above %s per minute' % u.num(c.timeoutsAlertPerMinute);
      local idleInTransactionText = 'alert above %s for %s' % [u.num(c.idleInTransactionAlertConnections), u.words(c.idleInTransactionAlertFor)];
      local leakedText = 'alert DbPoolConnectionLeak above %s for %s' % [u.num(c.leakedConnectionsAlert), u.words(c.leakedConnectionsAlertFor)];
      local longQueryText = 'target below %s, alert above %s' % [seconds(c.longQueryTargetSeconds), seconds(c.longQueryAlertSeconds)];
      local serverText = 'alert above %s for %s' % [u.percent(c.serverConnectionsAlertRatio), u.words(c.serverConnectionsAlertFor)];
      local lowerBound = 'for the activity source (pg_stat_activity) in-use is a lower bound, because a connection that is checked out but between transactions looks idle on the server';
      local recycle = u.num(c.notRecycledFactor);

      {
        __requires: [
          { type: 'grafana', id: 'grafana', name: 'Grafana', version: '10.4.0' },
          { type: 'datasource', id: 'prometheus', name: 'Prometheus', version: '1.0.0' },
          { type: 'panel', id: 'bargauge', name: 'Bar gauge', version: '' },
          { type: 'panel', id: 'stat', name: 'Stat', version: '' },
          { type: 'panel', id: 'state-timeline', name: 'State timeline', version: '' },
          { type: 'panel', id: 'table', name: 'Table', version: '' },
          { type: 'panel', id: 'timeseries', name: 'Time series', version: '' },
        ],
        annotations: {
          list: [
            {
              builtIn: 1,
              datasource: { type: 'grafana', uid: '-- Grafana --' },
              enable: true,
              hide: true,
              iconColor: 'rgba(0, 211, 255, 1)',
              name: 'Annotations & Alerts',
              type: 'dashboard',
            },
            {
              datasource: p.datasource,
              enable: true,
              expr: 'ALERTS{alertname=~"DbPool.+", alertstate="firing", target=~"$target"}',
              iconColor: 'red',
              name: 'dbpool alerts',
              step: '60s',
              tagKeys: 'alertname,severity,pool',
              textFormat: '{{alertname}} {{target}} {{pool}}',
              titleFormat: '{{alertname}}',
              useValueForTime: false,
            },
          ],
        },
        description: 'Connection pools seen by dbpool_exporter: the six metrics of the pool tuning guide with their targets and alert thresholds, connection states, server limits, sizing advice and exporter health.',
        // Provisioned (Helm chart, file provisioning): changes belong in mixin/, not the UI.
        editable: false,
        fiscalYearStartMonth: 0,
        graphTooltip: 1,
        links: [
          {
            asDropdown: false,
            icon: 'doc',
            includeVars: false,
            keepTime: false,
            tags: [],
            targetBlank: true,
            title: 'Troubleshooting',
            tooltip: 'Runbooks for the dbpool alerts',
            type: 'link',
            url: u.runbook(c, 'troubleshooting'),
          },
        ],
        refresh: c.dashboardRefresh,
        schemaVersion: 39,
        tags: c.dashboardTags,
        templating: {
          list: [
            {
              hide: 0,
              includeAll: false,
              label: 'Data source',
              multi: false,
              name: 'datasource',
              options: [],
              query: 'prometheus',
              refresh: 1,
              regex: '',
              skipUrlSync: false,
              type: 'datasource',
            },
            // job and instance: All is .+, so a series must have them, as scraped series do.
            queryVariable('job', 'Job', 'label_values(%s, job)' % u.sel(c, 'dbpool_up'), '.+'),
            queryVariable('instance', 'Instance', 'label_values(dbpool_up{job=~"$job"}, instance)', '.+'),
            queryVariable('target', 'Target', 'label_values(dbpool_up{job=~"$job", instance=~"$instance"}, target)', '.*'),
            queryVariable('pool', 'Pool', 'label_values(dbpool_pool_info{%(server)s}, pool)' % m, '.*'),
          ],
        },
        time: { from: 'now-6h', to: 'now' },
        timepicker: {},
        timezone: '',
        title: c.dashboardTitle,
        uid: c.dashboardUID,
        version: 1,
        weekStart: '',
        panels: p.layout([
          p.row('Overview') + { id: 1 },
          p.stat(
            'Targets down',
            'Targets (PostgreSQL servers and PgBouncers) the exporter could not reach on its last scrape; alert DbPoolExporterTargetDown after %s.' % u.words(c.targetDownFor),
            'none',
            'count(dbpool_up{%(server)s} == 0) or vector(0)' % m,
            w=3,
            steps=[[1, 'red']],
            links=[runbook('exporter target down', 'exporter-target-down')],
          ) + { id: 2 },
          p.stat(
            'Logins',
            'Whether a fresh login to every selected PostgreSQL server succeeded on the last probe; failed usually means max_connections is exhausted (alert DbPoolLoginRefused).',
            'none',
            'min(dbpool_probe_connect_success{%(server)s})' % m,
            w=3,
            base='red',
            steps=[[1, 'green']],
            mappings=p.bool('failed', 'ok'),
            links=[runbook('logins refused', 'logins-refused')],
          ) + { id: 3 },
          p.stat(
            'Highest utilization',
            "Utilization of the busiest selected pool (in use / capacity); target below %s on average and %s at peak, alert above %s for %s; %s (the exporter's own connection, pool dbpool_exporter, left out)."
            % [u.percent(c.utilizationTargetAvgRatio), u.percent(c.utilizationTargetPeakRatio), u.percent(c.utilizationAlertRatio), u.words(c.utilizationAlertFor), lowerBound],
            'percentunit',
            'max(dbpool_utilization_ratio{%(pool)s, pool!="dbpool_exporter"})' % m,
            w=3,
            steps=utilizationSteps,
            decimals=0,
            links=[runbook('high pool utilization', 'high-pool-utilization')],
          ) + { id: 4 },
          p.stat(
            'Slowest avg checkout',
            "Average checkout time of the slowest selected pool over the rate interval (PgBouncer and pgxpool pools only); %s (the exporter's own connection, pool dbpool_exporter, left out)." % checkoutText,
            's',
            |||
              max(
              sum by (target, pool) (rate(dbpool_checkout_duration_seconds_sum{%(pool)s, pool!="dbpool_exporter"}[$__rate_interval]))
              /
              sum by (target, pool) (rate(dbpool_checkout_duration_seconds_count{%(pool)s, pool!="dbpool_exporter"}[$__rate_interval]))
              )
            ||| % m,
            w=3,
            steps=checkoutSteps,
            links=[runbook('connection timeout errors', 'connection-timeout-errors')],
          ) + { id: 5 },
          p.stat(
            'Timeouts in range',
            "Checkouts that gave up because the pool was exhausted, over the dashboard's time range (pgxpool pools only); target 0, %s." % timeoutText,
            'none',
            'sum(increase(dbpool_checkout_timeouts_total{%(pool)s}[$__range]))' % m,
            w=3,
            steps=[[1, 'red']],
            decimals=0,
            links=[runbook('connection timeout errors', 'connection-timeout-errors')],
          ) + { id: 6 },
          p.stat(
            'Max idle in transaction',
            'Most sessions idle in a transaction in any one selected pool right now (activity source); %s.' % idleInTransactionText,
            'none',
            'max(sum by (target, pool) (dbpool_connections{%(pool)s, %(idle)s}))' % (m { idle: idleInTransaction }),
            w=3,
            steps=idleInTransactionSteps,
            links=[runbook('idle in transaction', 'idle-in-transaction')],
          ) + { id: 7 },
          p.stat(
            'Longest query',
            'Age of the longest running query in any selected pool (activity source); %s.' % longQueryText,
            's',
            'max(dbpool_longest_query_seconds{%(pool)s})' % m,
            w=3,
            steps=longQuerySteps,
            links=[runbook('slow database operations', 'slow-database-operations')],
          ) + { id: 8 },
          p.stat(
            'Server connections used',
            'Highest share of max_connections minus reserved slots taken by client backends on a selected server; %s.' % serverText,
            'percentunit',
            |||
              max(
              sum without (state) (dbpool_server_connections{%(server)s})
              /
              (dbpool_server_max_connections{%(server)s} - dbpool_server_reserved_connections{%(server)s})
              )
            ||| % m,
            w=3,
            steps=serverSteps,
            decimals=0,
            links=[runbook('too many database connections', 'too-many-database-connections')],
          ) + { id: 9 },
          p.table(
            'Pools and their sources',
            "Every pool the exporter sees and the source that observes it: activity (estimate from pg_stat_activity, in-use is a lower bound), pgbouncer, pgxpool or app (exact counts and checkout times; app is the application's own SQLAlchemy report), so that a pool seen by both activity and app has two rows and the panels below show both views side by side, told apart by (source).",
            'dbpool_pool_info{%(pool)s}' % m,
            hide=['Time', 'Value', '__name__', 'instance', 'job'],
            sortBy='target',
            w=24,
            h=5,
          ) + { id: 10 },

          p.row('1 · Pool utilization (target < %s avg, < %s peak; alert > %s for %s)' % [
            u.percent(c.utilizationTargetAvgRatio),
            u.percent(c.utilizationTargetPeakRatio),
            u.percent(c.utilizationAlertRatio),
            u.words(c.utilizationAlertFor, short=true),
          ]) + { id: 11 },
          p.timeseries(
            'Pool utilization',
            'In-use connections over capacity (instances × (DB_POOL_SIZE + DB_MAX_OVERFLOW)); yellow above the %s average target, red above the %s alert line, dark red above the %s peak target; %s.'
            % [u.percent(c.utilizationTargetAvgRatio), u.percent(c.utilizationAlertRatio), u.percent(c.utilizationTargetPeakRatio), lowerBound],
            'percentunit',
            p.queries([['dbpool_utilization_ratio{%(pool)s}' % m, '{{target}} · {{pool}} ({{source}})']]),
            w=12,
            steps=utilizationSteps,
            links=[runbook('high pool utilization', 'high-pool-utilization')],
          ) + { id: 12 },
          p.timeseries(
            'In use vs pool size and capacity',
            'Connections in use against the permanent pool (instances × DB_POOL_SIZE, dashed) and the full capacity including overflow (dotted); idle connections are not load and are not counted; %s.' % lowerBound,
            'short',
            p.queries([
              ['dbpool_in_use_connections{%(pool)s}' % m, '{{target}} · {{pool}} ({{source}}) in use'],
              ['dbpool_size_connections{%(pool)s} * dbpool_instances{%(pool)s}' % m, '{{target}} · {{pool}} ({{source}}) pool size'],
              ['dbpool_max_connections{%(pool)s}' % m, '{{target}} · {{pool}} ({{source}}) capacity'],
            ]),
            w=12,
            overrides=[p.dashed('/pool size$/'), p.dotted('/capacity$/')],
            links=[runbook('high pool utilization', 'high-pool-utilization')],
          ) + { id: 13 },

          p.row('2 · Checkout time (target < %s avg; alert > %s)' % [u.millis(c.checkoutTargetSeconds), u.millis(c.checkoutAlertSeconds)]) + { id: 14 },
          p.timeseries(
            'Average checkout time',
            "Time callers waited for a connection, averaged over the rate interval from the histogram's _sum and _count (app, PgBouncer and pgxpool pools; the activity source cannot see checkouts); %s." % checkoutText,
            's',
            p.queries([[
              |||
                sum by (target, pool) (rate(dbpool_checkout_duration_seconds_sum{%(pool)s}[$__rate_interval]))
                /
                sum by (target, pool) (rate(dbpool_checkout_duration_seconds_count{%(pool)s}[$__rate_interval]))
              ||| % m,
              '{{target}} · {{pool}}',
            ]]),
            w=6,
            steps=checkoutSteps,
            links=[runbook('connection timeout errors', 'connection-timeout-errors')],
          ) + { id: 15 },
          p.timeseries(
            'Checkout time p95 / p99',
            '95th and 99th percentile of the checkout wait from the histogram buckets, shown only for pools with real buckets (pgxpool; PgBouncer exports only _sum/_count) and checkouts in the interval.',
            's',
            p.queries([
              ['histogram_quantile(%g, sum by (target, pool, le) (rate(dbpool_checkout_duration_seconds_bucket{%s}[$__rate_interval]))) >= 0' % [q, m.pool], '{{target}} · {{pool}} p%g' % (q * 100)]
              for q in [0.95, 0.99]
            ]),
            w=6,
            steps=checkoutSteps,
            links=[runbook('connection timeout errors', 'connection-timeout-errors')],
          ) + { id: 16 },
          p.timeseries(
            'Longest waiting checkout',
            "Age of the oldest client still waiting for a server connection right now (PgBouncer's maxwait, microsecond resolution); anything above 0 for long means the pool is exhausted.",
            's',
            p.queries([['dbpool_longest_checkout_wait_seconds{%(pool)s}' % m, '{{target}} · {{pool}} ({{source}})']]),
            w=6,
            steps=checkoutSteps,
            links=[runbook('connection timeout errors', 'connection-timeout-errors')],
          ) + { id: 17 },
          p.timeseries(
            'Checkouts per second',
            'Completed checkouts per second (PgBouncer: transactions, or queries in statement mode; pgxpool: acquires), the load behind the checkout times.',
            'ops',
            p.queries([['sum by (target, pool) (rate(dbpool_checkouts_total{%(pool)s}[$__rate_interval]))' % m, '{{target}} · {{pool}}']]),
            w=6,
            legendCalcs=['mean', 'max'],
          ) + { id: 18 },

          p.row('3 · Pool timeouts (target 0; alert > %s per minute)' % u.num(c.timeoutsAlertPerMinute)) + { id: 19 },
          p.timeseries(
            'Checkout timeouts per minute',
            'Checkouts per minute that gave up after DB_POOL_TIMEOUT because no connection became free (pgxpool pools); target 0, %s.' % timeoutText,
            'cpm',
            p.queries([['sum by (target, pool) (rate(dbpool_checkout_timeouts_total{%(pool)s}[$__rate_interval])) * 60' % m, '{{target}} · {{pool}}']]),
            w=8,
            steps=timeoutSteps,
            links=[runbook('connection timeout errors', 'connection-timeout-errors')],
          ) + { id: 20 },
          p.bargauge(
            'Checkout timeouts in range',
            "Checkout timeouts per pool over the dashboard's time range (pgxpool pools); every one is a request that failed.",
            'none',
            'sum by (target, pool) (increase(dbpool_checkout_timeouts_total{%(pool)s}[$__range]))' % m,
            '{{target}} · {{pool}}',
            w=8,
            steps=[[1, 'red']],
            links=[runbook('connection timeout errors', 'connection-timeout-errors')],
          ) + { id: 21 },
          p.timeseries(
            'Pending checkouts',
            'Callers waiting for a connection right now (PgBouncer cl_waiting, pgxpool waiting acquires); a lasting value above 0 means the pool is exhausted and timeouts follow.',
            'short',
            p.queries([['dbpool_pending_checkouts{%(pool)s}' % m, '{{target}} · {{pool}} ({{source}})']]),
            w=8,
            links=[runbook('connection timeout errors', 'connection-timeout-errors')],
          ) + { id: 22 },
          p.timeseries(
            'Checkout failures per minute by reason',
            'Checkouts that failed, by reason (app and pgxpool pools): timeout (the pool was exhausted), connect (opening a connection failed: the server is down, refuses logins or rejects the credentials; alert DbPoolCheckoutConnectFailures above %s per minute for %s), cancelled (the caller went away), other.'
            % [u.num(c.connectFailuresAlertPerMinute), u.words(c.connectFailuresAlertFor)],
            'cpm',
            p.queries([['sum by (target, pool, reason) (rate(dbpool_checkout_failures_total{%(pool)s}[$__rate_interval])) * 60' % m, '{{target}} · {{pool}} · {{reason}}']]),
            w=24,
            h=7,
            links=[runbook('checkouts failing to connect', 'checkouts-failing-to-connect')],
          ) + { id: 56 },

          p.row('4 · Overflow (target < %s of max_overflow; alert > %s)' % [u.percent(c.overflowTargetRatio), u.percent(c.overflowAlertRatio)]) + { id: 23 },
          p.timeseries(
            'Overflow budget used',
            'Overflow connections over the overflow budget (instances × DB_MAX_OVERFLOW), for pools that allow overflow; target below %s, alert above %s for %s.'
            % [u.percent(c.overflowTargetRatio), u.percent(c.overflowAlertRatio), u.words(c.overflowAlertFor)],
            'percentunit',
            p.queries([[
              |||
                dbpool_overflow_connections{%(pool)s}
                /
                (dbpool_max_overflow_connections{%(pool)s} * dbpool_instances{%(pool)s} > 0)
              ||| % m,
              '{{target}} · {{pool}} ({{source}})',
            ]]),
            w=12,
            steps=overflowSteps,
            links=[runbook('high pool utilization', 'high-pool-utilization')],
          ) + { id: 24 },
          p.timeseries(
            'Overflow connections vs budget',
            'Connections open beyond DB_POOL_SIZE (per instance, summed) against the overflow budget instances × DB_MAX_OVERFLOW (dashed).',
            'short',
            p.queries([
              ['dbpool_overflow_connections{%(pool)s}' % m, '{{target}} · {{pool}} ({{source}}) overflow'],
              ['dbpool_max_overflow_connections{%(pool)s} * dbpool_instances{%(pool)s}' % m, '{{target}} · {{pool}} ({{source}}) budget'],
            ]),
            w=12,
            overrides=[p.dashed('/budget$/')],
            links=[runbook('high pool utilization', 'high-pool-utilization')],
          ) + { id: 25 },

          p.row('5 · Connections (alert: idle in transaction > %s, leaked > %s)' % [u.num(c.idleInTransactionAlertConnections), u.num(c.leakedConnectionsAlert)]) + { id: 26 },
          p.timeseries(
            'Idle in transaction',
            'Sessions of the pool sitting idle inside an open transaction (including aborted ones): they hold a connection and its locks while doing nothing; %s.' % idleInTransactionText,
            'short',
            p.queries([['sum by (target, pool) (dbpool_connections{%(pool)s, %(idle)s})' % (m { idle: idleInTransaction }), '{{target}} · {{pool}}']]),
            w=6,
            steps=idleInTransactionSteps,
            links=[runbook('idle in transaction', 'idle-in-transaction')],
          ) + { id: 27 },
          p.timeseries(
            'Leaked connections',
            "Connections the application has held checked out for longer than its leak detection threshold, summed over its instances (app source with DBPOOL_STATS_LEAK_THRESHOLD set; no line where leak detection is off): code that took a connection and never returned it, whose file and line the exporter's /pools page names; %s." % leakedText,
            'short',
            p.queries([['dbpool_leaked_connections{%(pool)s}' % m, '{{target}} · {{pool}}']]),
            w=6,
            steps=leakedSteps,
            links=[runbook('a leaked connection', 'a-leaked-connection')],
          ) + { id: 62 },
          p.timeseries(
            'Open vs in use',
            'Open connections (in use plus idle) against those in use; the gap is idle connections, which cost server memory but are not load; %s.' % lowerBound,
            'short',
            p.queries([
              ['dbpool_open_connections{%(pool)s}' % m, '{{target}} · {{pool}} ({{source}}) open'],
              ['dbpool_in_use_connections{%(pool)s}' % m, '{{target}} · {{pool}} ({{source}}) in use'],
            ]),
            w=6,
            overrides=[p.dashed('/open$/')],
          ) + { id: 28 },
          p.timeseries(
            'Waiting for a lock',
            'Sessions of the pool blocked on a heavyweight lock (activity source); they hold a connection without progress, usually behind a long or idle-in-transaction session.',
            'short',
            p.queries([['dbpool_lock_waiting_connections{%(pool)s}' % m, '{{target}} · {{pool}} ({{source}})']]),
            w=6,
            links=[runbook('slow database operations', 'slow-database-operations')],
          ) + { id: 29 },
          p.timeseries(
            'Connection states: $pool',
            "Open connections of the pool by state, stacked, in the source's own state names (activity: active, idle, idle in transaction; PgBouncer: active, idle, used, tested, login; pgxpool: acquired, idle, constructing; app: checked_out, checked_in, connecting); one panel per selected pool.",
            'short',
            p.queries([['sum by (target, state) (dbpool_connections{%(pool)s})' % m, '{{target}} · {{state}}']]),
            w=8,
            stacked=true,
            overrides=[
              p.fixedColor('/idle in transaction \\(aborted\\)$/', 'dark-red'),
              p.fixedColor('/idle in transaction$/', 'orange'),
              p.fixedColor('/ (active|acquired)$/', 'green'),
              p.fixedColor('/ idle$/', 'blue'),
            ],
          ) + { id: 30, repeat: 'pool', repeatDirection: 'h', maxPerRow: 3 },

          p.row('6 · Long-running queries (target < %s; alert > %s)' % [seconds(c.longQueryTargetSeconds), seconds(c.longQueryAlertSeconds)]) + { id: 31 },
          p.timeseries(
            'Longest running query',
            "Age of the pool's longest running statement (activity source, 0 when none runs); %s." % longQueryText,
            's',
            p.queries([['dbpool_longest_query_seconds{%(pool)s}' % m, '{{target}} · {{pool}} ({{source}})']]),
            w=6,
            steps=longQuerySteps,
            links=[runbook('slow database operations', 'slow-database-operations')],
          ) + { id: 32 },
          p.timeseries(
            'Longest open transaction',
            "Age of the pool's oldest open transaction (activity source), drawn against the seed's query limits of %s and %s because a long transaction holds its connection just as long."
            % [seconds(c.longQueryTargetSeconds), seconds(c.longQueryAlertSeconds)],
            's',
            p.queries([['dbpool_longest_transaction_seconds{%(pool)s}' % m, '{{target}} · {{pool}} ({{source}})']]),
            w=6,
            steps=longQuerySteps,
            links=[runbook('slow database operations', 'slow-database-operations')],
          ) + { id: 33 },
          p.timeseries(
            'Longest idle in transaction',
            "Longest time one of the pool's sessions has sat idle inside a transaction (activity source); a growing line is a leaked session or a missing commit.",
            's',
            p.queries([['dbpool_longest_idle_in_transaction_seconds{%(pool)s}' % m, '{{target}} · {{pool}} ({{source}})']]),
            w=6,
            steps=longQuerySteps,
            links=[runbook('idle in transaction', 'idle-in-transaction')],
          ) + { id: 34 },
          p.timeseries(
            'Oldest connection vs recycle',
            "Age of the pool's oldest connection against DB_POOL_RECYCLE (dashed) and the alert line at %s × recycle (dotted); a connection above the alert line means recycling is not happening." % recycle,
            's',
            p.queries([
              ['dbpool_oldest_connection_seconds{%(pool)s}' % m, '{{target}} · {{pool}} ({{source}}) oldest'],
              ['dbpool_recycle_seconds{%(pool)s} > 0' % m, '{{target}} · {{pool}} ({{source}}) recycle'],
              [recycle + ' * (dbpool_recycle_seconds{%(pool)s} > 0)' % m, '{{target}} · {{pool}} ({{source}}) alert (%s × recycle)' % recycle],
            ]),
            w=6,
            overrides=[
              p.dashed('/recycle$/'),
              p.dotted('/%s × recycle\\)$/' % recycle),
              p.fixedColor('/%s × recycle\\)$/' % recycle, 'red'),
            ],
            links=[runbook('stale connections', 'stale-connections')],
          ) + { id: 35 },

          p.row('Per worker process (app source)') + { id: 52 },
          p.timeseries(
            'In use per process',
            'Connections each worker process of the pool has checked out and open, as the application reports it (app source, integrations/python), so that one starved or leaking worker stands out from the pool total.',
            'short',
            p.queries([
              ['dbpool_process_open_connections{%(pool)s}' % m, '{{pool}} · {{process}} open'],
              ['dbpool_process_in_use_connections{%(pool)s}' % m, '{{pool}} · {{process}} in use'],
            ]),
            w=8,
            overrides=[p.dashed('/open$/')],
          ) + { id: 53 },
          p.timeseries(
            'Average checkout time per process',
            'Time callers of each worker process waited for a connection, averaged over the rate interval (app source); %s for the pool as a whole.' % checkoutText,
            's',
            p.queries([[
              |||
                rate(dbpool_process_checkout_duration_seconds_sum{%(pool)s}[$__rate_interval])
                /
                rate(dbpool_process_checkout_duration_seconds_count{%(pool)s}[$__rate_interval])
              ||| % m,
              '{{pool}} · {{process}}',
            ]]),
            w=8,
            steps=checkoutSteps,
            links=[runbook('connection timeout errors', 'connection-timeout-errors')],
          ) + { id: 54 },
          p.timeseries(
            'Checkout timeouts per process',
            'Checkout timeouts per minute of each worker process (app source); the pool alerts above %s per minute.' % u.num(c.timeoutsAlertPerMinute),
            'cpm',
            p.queries([['rate(dbpool_process_checkout_timeouts_total{%(pool)s}[$__rate_interval]) * 60' % m, '{{pool}} · {{process}}']]),
            w=8,
            steps=timeoutSteps,
            links=[runbook('connection timeout errors', 'connection-timeout-errors')],
          ) + { id: 55 },

          p.row('PostgreSQL server: connections and logins') + { id: 36 },
          p.timeseries(
            'Server connections vs limit',
            "Client backends on the server (all pools and anything else, the exporter's own excluded) against max_connections minus reserved slots, which is what ordinary roles may use (dashed), and max_connections (dotted).",
            'short',
            p.queries([
              ['sum by (target) (dbpool_server_connections{%(server)s})' % m, '{{target}} client backends'],
              ['dbpool_server_max_connections{%(server)s} - dbpool_server_reserved_connections{%(server)s}' % m, '{{target}} usable (max_connections − reserved)'],
              ['dbpool_server_max_connections{%(server)s}' % m, '{{target}} max_connections'],
            ]),
            w=8,
            overrides=[p.dashed('/usable \\(max_connections − reserved\\)$/'), p.dotted('/ max_connections$/')],
            links=[runbook('too many database connections', 'too-many-database-connections')],
          ) + { id: 37 },
          p.timeseries(
            'Server connection usage',
            'Client backends over max_connections minus reserved slots; %s, after which new logins start to be refused.' % serverText,
            'percentunit',
            p.queries([[
              |||
                sum without (state) (dbpool_server_connections{%(server)s})
                /
                (dbpool_server_max_connections{%(server)s} - dbpool_server_reserved_connections{%(server)s})
              ||| % m,
              '{{target}}',
            ]]),
            w=8,
            steps=serverSteps,
            links=[runbook('too many database connections', 'too-many-database-connections')],
          ) + { id: 38 },
          p.timeseries(
            'Server connections by state',
            "Client backends on the server by pg_stat_activity state, stacked; 'unknown' means the monitoring role lacks pg_monitor and cannot see other roles' sessions.",
            'short',
            p.queries([['sum by (target, state) (dbpool_server_connections{%(server)s})' % m, '{{target}} · {{state}}']]),
            w=8,
            stacked=true,
            overrides=[
              p.fixedColor('/idle in transaction \\(aborted\\)$/', 'dark-red'),
              p.fixedColor('/idle in transaction$/', 'orange'),
              p.fixedColor('/ active$/', 'green'),
              p.fixedColor('/ idle$/', 'blue'),
            ],
          ) + { id: 39 },
          p.timeseries(
            'Login time',
            "Time the exporter's probe took to open a fresh connection (TCP, TLS, authentication, first query), or until it failed; it rises when the server is overloaded or connection setup is slow.",
            's',
            p.queries([['dbpool_probe_connect_seconds{%(server)s}' % m, '{{target}}']]),
            w=12,
            h=7,
            links=[runbook('logins refused', 'logins-refused')],
          ) + { id: 40 },
          p.stateTimeline(
            'Login success',
            "Whether the probe's fresh login succeeded; failed while the target is up usually means 'too many clients' (alert DbPoolLoginRefused after %s)." % u.words(c.loginRefusedFor),
            'dbpool_probe_connect_success{%(server)s}' % m,
            '{{target}}',
            p.bool('failed', 'ok'),
            w=12,
            h=7,
          ) + { id: 41 },
          p.timeseries(
            'Configured capacity of all pools vs usable connections',
            'What the configured pools of a server may open together, instances × (DB_POOL_SIZE + DB_MAX_OVERFLOW) summed over the selected pools (all of them with pool All; solid), against what the server leaves to applications, max_connections minus the larger of the reserved slots and %s kept for admins (dashed): above that line the next peak meets "too many clients" (alert DbPoolConfiguredOverServerLimit after %s).'
            % [u.percent(c.adminHeadroomRatio), u.words(c.configuredCapacityAlertFor)],
            'short',
            p.queries([
              [u.configuredConnections(c, m.pool), '{{target}} configured capacity'],
              [u.usableConnections(c, m.server), '{{target}} usable'],
            ]),
            w=24,
            h=7,
            legendCalcs=['lastNotNull'],
            overrides=[p.dashed('/ usable$/')],
            links=[runbook('too many database connections', 'too-many-database-connections')],
          ) + { id: 57 },

          p.row('Sizing advice') + { id: 42 },
          p.timeseries(
            'Pool size: recommended vs configured',
            "The exporter's recommended DB_POOL_SIZE per instance from the pool's recent history (solid) against the configured one (dashed); details at the exporter's /pools page.",
            'short',
            p.queries([
              ['dbpool_recommended_size_connections{%(pool)s}' % m, '{{target}} · {{pool}} recommended'],
              ['dbpool_size_connections{%(pool)s}' % m, '{{target}} · {{pool}} ({{source}}) configured'],
            ]),
            w=12,
            legendCalcs=['lastNotNull'],
            overrides=[p.dashed('/configured$/')],
          ) + { id: 43 },
          p.timeseries(
            'Max overflow: recommended vs configured',
            "The exporter's recommended DB_MAX_OVERFLOW per instance from the pool's recent history (solid) against the configured one (dashed).",
            'short',
            p.queries([
              ['dbpool_recommended_max_overflow_connections{%(pool)s}' % m, '{{target}} · {{pool}} recommended'],
              ['dbpool_max_overflow_connections{%(pool)s}' % m, '{{target}} · {{pool}} ({{source}}) configured'],
            ]),
            w=12,
            legendCalcs=['lastNotNull'],
            overrides=[p.dashed('/configured$/')],
          ) + { id: 44 },
          p.timeseries(
            'Offered load: checkouts per second × hold time',
            "Connections in use on average if nobody had to wait (Little's law: checkout attempts per second × mean hold time), per pool group (app and pgxpool pools): the demand the sizing model works from; the recommended pool size is this per instance plus 50%, or more where the queueing model needs it.",
            'short',
            p.queries([[
              |||
                sum by (target, pool) (rate(dbpool_checkouts_total{%(pool)s}[$__rate_interval]))
                * on (target, pool)
                (
                  sum by (target, pool) (rate(dbpool_connection_use_duration_seconds_sum{%(pool)s}[$__rate_interval]))
                  /
                  sum by (target, pool) (rate(dbpool_connection_use_duration_seconds_count{%(pool)s}[$__rate_interval]))
                )
              ||| % m,
              '{{target}} · {{pool}}',
            ]]),
            w=12,
            legendCalcs=['mean', 'max'],
          ) + { id: 58 },
          p.timeseries(
            'Hold time and connect time',
            'Average time a connection is held, checkout to checkin (solid), and average time to open a new one (dashed), per pool (app and pgxpool pools): long holds need more connections for the same traffic; slow connects make every overflow checkout slow.',
            's',
            p.queries([
              [
                |||
                  sum by (target, pool) (rate(dbpool_connection_use_duration_seconds_sum{%(pool)s}[$__rate_interval]))
                  /
                  sum by (target, pool) (rate(dbpool_connection_use_duration_seconds_count{%(pool)s}[$__rate_interval]))
                ||| % m,
                '{{target}} · {{pool}} hold',
              ],
              [
                |||
                  sum by (target, pool) (rate(dbpool_connection_create_duration_seconds_sum{%(pool)s}[$__rate_interval]))
                  /
                  sum by (target, pool) (rate(dbpool_connection_create_duration_seconds_count{%(pool)s}[$__rate_interval]))
                ||| % m,
                '{{target}} · {{pool}} connect',
              ],
            ]),
            w=12,
            legendCalcs=['mean', 'max'],
            overrides=[p.dashed('/ connect$/')],
          ) + { id: 59 },
          p.timeseries(
            'Predicted checkout wait: current vs recommended settings',
            "The average checkout time per instance the exporter's sizing model predicts for the pool's current settings (dashed) and for its recommendation (solid), for pools that report hold times (app, pgxpool); a timed-out checkout counts its whole wait, target below %s." % u.millis(c.checkoutTargetSeconds),
            's',
            p.queries([['dbpool_predicted_checkout_wait_seconds{%(pool)s}' % m, '{{target}} · {{pool}} {{settings}}']]),
            w=12,
            legendCalcs=['lastNotNull'],
            overrides=[p.dashed('/ current$/')],
          ) + { id: 60 },
          p.timeseries(
            'Predicted timeouts and utilization: current vs recommended settings',
            'The share of checkouts the sizing model predicts to time out, and the average utilization (in use over DB_POOL_SIZE) it predicts, for the current settings (dashed) and the recommendation (solid); the recommendation is the smallest size predicted to meet no timeouts and utilization below %s.' % u.percent(c.utilizationTargetAvgRatio),
            'percentunit',
            p.queries([
              ['dbpool_predicted_checkout_timeout_ratio{%(pool)s}' % m, '{{target}} · {{pool}} timeouts {{settings}}'],
              ['dbpool_predicted_utilization_ratio{%(pool)s}' % m, '{{target}} · {{pool}} utilization {{settings}}'],
            ]),
            w=12,
            legendCalcs=['lastNotNull'],
            overrides=[p.dashed('/ current$/')],
          ) + { id: 61 },

          p.row('Exporter health', collapsed=true, panels=[
            p.stateTimeline(
              'Target up',
              'Whether the exporter reached each target over its monitoring connection on each scrape (alert DbPoolExporterTargetDown after %s down).' % u.words(c.targetDownFor),
              'dbpool_up{%(server)s}' % m,
              '{{target}}',
              p.bool('down', 'up'),
              w=12,
              h=6,
            ) + { id: 46 },
            p.stateTimeline(
              'Collector success',
              'Whether each collector (activity, probe, pgbouncer) succeeded on each scrape; a failing collector leaves its metrics absent while the others keep working.',
              'dbpool_scrape_success{%(server)s}' % m,
              '{{target}} · {{collector}}',
              p.bool('failed', 'ok'),
              w=12,
              h=6,
            ) + { id: 47 },
            p.timeseries(
              'Scrape duration by collector',
              'Time each collector took per scrape; it should stay far below the scrape timeout, and a collector near it is cut off and reported failed.',
              's',
              p.queries([['dbpool_scrape_duration_seconds{%(server)s}' % m, '{{target}} · {{collector}}']]),
              w=8,
            ) + { id: 48 },
            p.timeseries(
              "Exporter's own connection checkout",
              "Time to check out and pre-ping the exporter's monitoring connection on the last scrape, and the p99 from the histogram of its own pool (pool dbpool_exporter); a slow checkout here means the server itself is slow to answer.",
              's',
              p.queries([
                ['dbpool_probe_checkout_seconds{%(server)s}' % m, '{{target}} last scrape'],
                ['histogram_quantile(0.99, sum by (target, le) (rate(dbpool_checkout_duration_seconds_bucket{%(server)s, pool="dbpool_exporter"}[$__rate_interval]))) >= 0' % m, '{{target}} p99'],
              ]),
              w=8,
            ) + { id: 49 },
            p.stat(
              'Activity view',
              "Whether the monitoring role can see other roles' sessions; restricted (no pg_monitor) means in-use, utilization and the ages undercount, beyond the usual lower bound of the activity source.",
              'none',
              'max(dbpool_server_activity_restricted{%(server)s})' % m,
              w=4,
              h=8,
              steps=[[1, 'red']],
              mappings=p.bool('full', 'restricted', 'green', 'red'),
            ) + { id: 50 },
            p.stat(
              'Exporter version',
              'Version of the running dbpool_exporter, from dbpool_exporter_build_info.',
              'none',
              'count by (version) (dbpool_exporter_build_info{job=~"$job", instance=~"$instance"})',
              w=4,
              h=8,
              legend='{{version}}',
              base='blue',
              textMode='name',
            ) + { id: 51 },
          ]) + { id: 45 },
        ]),
      },
  },
}
