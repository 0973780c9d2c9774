# dbpool_exporter. `make demo` runs the whole thing on a throwaway PostgreSQL; `make test` runs
# every test, including those against real PostgreSQL, PgBouncer, promtool and Prometheus.
GO       ?= go
BIN      ?= dbpool_exporter
VERSION  ?= $(shell cat VERSION)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
BRANCH   ?= $(shell git rev-parse --abbrev-ref HEAD 2>/dev/null || echo unknown)
VPKG     := github.com/prometheus/common/version
LDFLAGS  := -s -w -X $(VPKG).Version=$(VERSION) -X $(VPKG).Revision=$(REVISION) -X $(VPKG).Branch=$(BRANCH) \
            -X $(VPKG).BuildUser=$(shell id -un)@$(shell hostname) -X $(VPKG).BuildDate=$(shell date -u +%Y%m%d-%H:%M:%S)
GOLANGCI_LINT_VERSION ?= v2.15.0
# `make release`: one tarball per platform and sha256sums.txt in RELEASE_DIR (git-ignored).
PLATFORMS   ?= linux/amd64 linux/arm64 darwin/amd64 darwin/arm64
RELEASE_DIR ?= dist

export CGO_ENABLED ?= 0

.PHONY: all build release deps test acceptance unit lint fmt vet alerts mixin mixin-fmt mixin-check mixin-lint chart chart-sync demo bench bench-python bench-peers bench-fleet faults clean tidy-check dockerfile-lint

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) .

# Cross-built tarballs with the binary, LICENSE, README.md, CHANGELOG.md, docs/, the alert rules
# and the dashboard (scripts/release.sh says what goes where).
release:
	VERSION='$(VERSION)' LDFLAGS='$(LDFLAGS)' PLATFORMS='$(PLATFORMS)' RELEASE_DIR='$(RELEASE_DIR)' GO='$(GO)' \
		./scripts/release.sh

# Installs PostgreSQL, PgBouncer, Prometheus (promtool) and Alertmanager from Debian when missing;
# for `make test` also Chromium (the status page's browser test). Builds the pinned Python
# environments .venv/sa20 and .venv/sa14 (scripts/python-envs.sh) when their constraints changed.
DEPS_FLAGS ?=
deps:
	./scripts/install-deps.sh $(DEPS_FLAGS)

fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

# go.mod and go.sum must already be tidy (uses `go mod tidy -diff`, which changes nothing).
tidy-check:
	$(GO) mod tidy -diff
	$(GO) -C tools/mixin mod tidy -diff
	$(GO) -C tools/chartcheck mod tidy -diff

lint: fmt vet dockerfile-lint mixin-lint
	$(GO) run github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION) run ./...
	cd tools/chartcheck && $(GO) run github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION) run --config ../../.golangci.yml ./...

alerts:
	./alerts/check.sh

# The monitoring mixin (mixin/, jsonnet) is the source of alerts/dbpool.rules.yml and
# grafana/dbpool.json. Its tool is a Go module of its own (tools/mixin: go-jsonnet, Grafana's
# foundation SDK, the PromQL parser), so that none of that reaches the exporter's go.mod.
MIXIN = $(GO) -C tools/mixin run .

# Regenerates the rules file and the dashboard from mixin/; commit both with the jsonnet.
mixin:
	$(MIXIN) generate

# Formats the jsonnet (jsonnetfmt).
mixin-fmt:
	$(MIXIN) fmt

# The shipped files are exactly what mixin/ generates; the jsonnet is formatted and passes
# jsonnet-lint; the dashboard decodes against Grafana's schema and follows dashboard-linter's
# rules but for the exceptions in mixin/.lint. Then the tool's own tests.
mixin-check:
	$(MIXIN) check
	$(GO) -C tools/mixin test -count=1 ./...

mixin-lint:
	$(GO) -C tools/mixin vet ./...
	cd tools/mixin && $(GO) run github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION) run ./...

# The race detector needs cgo.
unit:
	CGO_ENABLED=1 $(GO) test -race -count=1 -timeout 12m ./...

# The fault matrix alone (e2e/faults_test.go, also part of `make test`): the exporter binary
# against stopped, frozen, locked and full servers, odd names, parallel scrapes, TLS. -v shows
# the line each scenario prints and the summary.
faults: deps
	CGO_ENABLED=1 $(GO) test -race -count=1 -v -run '^TestFaults$$' ./e2e

# The Helm chart (charts/dbpool-exporter), checked by tools/chartcheck, a Go module of its own so
# that Helm and the Kubernetes types stay out of the exporter's go.mod: every ci/*-values.yaml
# linted and rendered with Helm's packages, decoded strictly into the Kubernetes and Prometheus
# Operator types, the rules through promtool, the pods run with the real exporter, the sharded
# ServiceMonitor through a real Prometheus. No -race: compiling Helm and client-go twice would
# double the cold build (tools/chartcheck/README.md has the times).
chart: deps
	$(GO) -C tools/chartcheck vet ./...
	$(GO) -C tools/chartcheck test -count=1 -timeout 10m ./...

# The chart carries copies of the shipped rules and dashboard (a chart cannot read files outside
# its directory); `make chart` fails until they are copied again after a change.
chart-sync:
	cp alerts/dbpool.rules.yml charts/dbpool-exporter/files/dbpool.rules.yml
	cp grafana/dbpool.json charts/dbpool-exporter/files/dbpool.json

# The closed loop of the sizing advice (acceptance/, build tag acceptance): a real PostgreSQL,
# two instances of a real SQLAlchemy + asyncpg application under an open-loop load
# (integrations/python/examples/openload.py) and the exporter binary; it applies the advice and
# prints the predicted figures against the measured ones. About 4 minutes; CI runs it after
# `make test`.
acceptance: deps
	CGO_ENABLED=1 $(GO) test -tags acceptance -count=1 -v -timeout 15m ./acceptance/

test: DEPS_FLAGS += --with-chromium
test: deps lint tidy-check alerts mixin-check unit chart

demo: deps build
	$(GO) build -o .bin/dbpool-demo ./tools/cmd/dbpool-demo
	./.bin/dbpool-demo --exporter ./$(BIN) $(ARGS)

# The scrape benchmark (bench/README.md), then the Python integration's cost per checkout.
bench: deps build
	./bench/run.sh
	$(BENCH_PYTHON)

# What dbpool_stats adds to a SQLAlchemy checkout and checkin, with and without leak detection,
# next to the bare pool and the target (integrations/python/README.md, "Cost"). ARGS: flags,
# e.g. ARGS='--baseline DIR' adds another version of the package to the same run.
BENCH_PYTHON = .venv/sa20/bin/python integrations/python/bench/checkout_cost.py
bench-python: deps
	$(BENCH_PYTHON) $(ARGS)

# The same throwaway PostgreSQL and PgBouncer watched by dbpool_exporter, Debian's
# prometheus-postgres-exporter and prometheus-pgbouncer-exporter (installed by deps). Prints
# figures next to the targets, asserts nothing (bench/README.md, "Peers"). ARGS: flags.
bench-peers: DEPS_FLAGS += --with-peers
bench-peers: deps build
	$(GO) build -o .bin/bench-peers ./bench/peers
	./.bin/bench-peers --exporter ./$(BIN) $(ARGS)

# One exporter holding 200 targets through /probe on a throwaway PostgreSQL: memory per
# connected target and CPU per probe, next to their targets (bench/README.md, "Fleet";
# docs/sharding.md). About 40 s. Asserts nothing. ARGS: flags (--targets, --rounds).
bench-fleet: deps build
	$(GO) build -o .bin/bench-fleet ./bench/fleet
	./.bin/bench-fleet --exporter ./$(BIN) $(ARGS)

clean:
	rm -rf $(BIN) .bin $(RELEASE_DIR)

# dockerfilelint 1.8.0 predates BuildKit's `FROM --platform=...` and reads the flag as the image
# name ("missing tag"): it gets the Dockerfile without that flag, every line where it was.
dockerfile-lint:
	sed 's/^FROM --platform=[^ ]* /FROM /' Dockerfile | (cd /tmp && npx --yes dockerfilelint@1.8.0 -)
