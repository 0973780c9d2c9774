// Package e2e is tooling, not product: the end-to-end test of dbpool_exporter: a real PostgreSQL, the exporter,
// simulated applications (tools/cmd/poolsim), Prometheus evaluating the shipped alert rules, and
// Alertmanager delivering the resulting notifications to a webhook in the test; the fault
// matrix (faults_test.go, `make faults`): the exporter binary against servers that fail; and
// the example FastAPI service as replicas under uvicorn and gunicorn behind a DNS name, loaded
// by the test's clients while their workers are recycled and killed and a replica joins and
// leaves (fastapi_test.go).
//
// The test needs the prometheus and prometheus-alertmanager programs (Debian packages of the
// same names); `make deps` installs them. PROMETHEUS and ALERTMANAGER select other binaries.
package e2e
