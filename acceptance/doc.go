// Package acceptance holds the closed-loop test of the sizing advice (`make acceptance`): a
// real PostgreSQL, a real SQLAlchemy + asyncpg application under an open-loop Poisson load
// (integrations/python/examples/openload.py), and the exporter binary. It runs the tuning
// guide's undersized pool, asks the exporter for advice, applies it, and checks that the pool
// then meets the guide's targets and that the predictions were right; then an oversized pool,
// which the advice shrinks only after a full window. It prints the predicted figures against
// the measured ones.
//
// The test carries the build tag acceptance: it takes minutes and is its own make target, run
// by CI after `make test`.
package acceptance
