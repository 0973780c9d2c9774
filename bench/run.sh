#!/usr/bin/env bash
# Benchmark of one dbpool_exporter scrape against the bare pg_stat_activity query, plus the
# PgBouncer scrape micro-benchmark. Prints figures, asserts nothing. See bench/README.md.
#
# Usage: bench/run.sh [flags of bench/scrape, e.g. --backends 10,500,2000 --scrapes 100]
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

GO=${GO:-go}
if ! command -v "$GO" >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
	GO=/usr/local/go/bin/go
fi
export CGO_ENABLED=${CGO_ENABLED:-0}

started=$(date +%s)
if [ ! -x ./dbpool_exporter ]; then
	echo "bench: ./dbpool_exporter missing, building it"
	make build GO="$GO"
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/dbpool-bench.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
"$GO" build -o "$tmp/scrape" ./bench/scrape

# The Go program cleans up its sessions, exporters and cluster on Ctrl-C and exits 130.
rc=0
"$tmp/scrape" --exporter ./dbpool_exporter "$@" || rc=$?
if [ "$rc" -eq 130 ]; then
	exit "$rc"
fi

if grep -qs '^func BenchmarkPgBouncerScrape' collector/*_test.go; then
	echo
	echo "PgBouncer scrape (go test -bench PgBouncerScrape: ns/op is one scrape of the admin console):"
	"$GO" test -run '^$' -bench 'PgBouncerScrape' -benchtime 200x ./collector/ || rc=$?
fi

echo
echo "bench: total $(($(date +%s) - started))s"
exit "$rc"
