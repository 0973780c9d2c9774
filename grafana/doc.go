// Package grafana holds the Grafana dashboard of dbpool_exporter (dbpool.json) and its
// tests: every query parses as PromQL (promtool), names only metrics that the exporter
// really exports, and the drawn thresholds are the ones of the alert rules.
package grafana
