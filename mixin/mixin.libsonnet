// The dbpool_exporter monitoring mixin: Prometheus rules and a Grafana dashboard whose
// thresholds are the tunables of config.libsonnet. With the defaults it generates exactly
// alerts/dbpool.rules.yml and grafana/dbpool.json (`make mixin`; README.md).
//
// Recording rules and alerts share one group on purpose: rules in a group run in order, so
// every alert sees the recording rules of the same evaluation; across groups the order (and
// thus a one-interval lag) is not guaranteed. The group is in prometheusAlerts, so that
// whoever loads only the alerts also gets the recording rules they read, and prometheusRules
// stays empty, so that loading both never defines the group twice.

(import 'config.libsonnet') +
(import 'rules/rules.libsonnet') +
(import 'alerts/alerts.libsonnet') +
(import 'dashboards/dashboards.libsonnet') +
{
  prometheusAlerts+:: {
    groups+: [
      {
        comment:: |||
          Ground rules followed below:
          - rate()/increase() only ever see counters (_total, histogram _sum/_count). Ages and durations
            such as dbpool_longest_query_seconds are gauges and are compared directly.
          - Idle connections are never load: utilization and overflow come from in-use connections.
          - A metric a source cannot observe is absent, not 0, so e.g. the checkout alerts only see
            PgBouncer and pgxpool pools; no rule needs to guard against made-up zeros.
          - Aggregations use `without (...)` so that job and any labels added by relabelling survive
            for routing.
          - One pool can have two views, told apart by the `source` label: the pg_stat_activity
            estimate (source="activity", a lower bound) and the application's own exact report
            (source="app", integrations/python). Rules that both could feed take the exact view where
            there is one (`exact or on (target, pool) estimate`), so one pool alerts once. Checkout
            time and timeouts exist only in exact views.
          - pool="dbpool_exporter" is the exporter's own monitoring connection (exported like any
            pgxpool so that its footprint is visible). It is busy or waiting exactly when the database
            is slow or down, which DbPoolExporterTargetDown already says, so pool rules leave it out.

          One group on purpose: rules in a group run in order, so every alert below sees the
          recording rules of the same evaluation. Across groups the order (and thus a one-interval
          lag) is not guaranteed.

          Severity: critical pages (requests fail now or the pools are unwatched); warning opens a
          ticket for working hours (no request fails yet).
        |||,
        name: 'dbpool',
        rules: $.dbpoolRecordingRules + $.dbpoolAlerts,
      },
    ],
  },
  prometheusRules+:: {
    groups+: [],
  },
}
