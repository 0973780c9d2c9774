#!/usr/bin/env bash
# Cross-builds the release of dbpool_exporter, laid out like the tarballs of Prometheus projects
# (promu crossbuild + tarball): for each platform OS/ARCH in $PLATFORMS,
#
#   $RELEASE_DIR/dbpool_exporter-$VERSION.OS-ARCH.tar.gz
#     dbpool_exporter-$VERSION.OS-ARCH/dbpool_exporter   static binary, version from $LDFLAGS
#     .../LICENSE README.md CHANGELOG.md docs/           the documents README links to
#     .../alerts/dbpool.rules.yml, dbpool.rules_test.yml the rules and their promtool tests
#     .../grafana/dbpool.json                            the dashboard
#
# and $RELEASE_DIR/sha256sums.txt (`sha256sum -c sha256sums.txt` checks them). `make release`
# runs it with the Makefile's VERSION, LDFLAGS, PLATFORMS and RELEASE_DIR. The archives are
# reproducible apart from the binary's build date and user: sorted entries, owner 0, modes
# 0644 and 0755 whatever the umask, every mtime the last commit's time.
set -euo pipefail

: "${VERSION:?VERSION is not set (make release sets it from the VERSION file)}"
: "${LDFLAGS:?LDFLAGS is not set (make release sets it)}"
PLATFORMS=${PLATFORMS:-linux/amd64 linux/arm64 darwin/amd64 darwin/arm64}
RELEASE_DIR=${RELEASE_DIR:-dist}
GO=${GO:-go}

cd "$(dirname "$0")/.."
# Shipped with the binary: only files of the product, never test programs or local leftovers.
extras=(LICENSE README.md CHANGELOG.md docs alerts/dbpool.rules.yml alerts/dbpool.rules_test.yml grafana/dbpool.json)
for f in "${extras[@]}"; do
	[ -e "$f" ] || { echo "release.sh: $f is missing" >&2; exit 1; }
done
mtime=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rm -rf "$RELEASE_DIR"
mkdir -p "$RELEASE_DIR"

for platform in $PLATFORMS; do
	os=${platform%/*}
	arch=${platform#*/}
	name=dbpool_exporter-$VERSION.$os-$arch
	echo ">> $name"
	mkdir "$work/$name"
	CGO_ENABLED=0 GOOS=$os GOARCH=$arch "$GO" build -trimpath -ldflags "$LDFLAGS" -o "$work/$name/dbpool_exporter" .
	cp -R --parents "${extras[@]}" "$work/$name/"
	tar -C "$work" --sort=name --owner=0 --group=0 --numeric-owner --mode=u+rw,go+rX,go-w \
		--mtime="@$mtime" -cf - "$name" | gzip -9n >"$RELEASE_DIR/$name.tar.gz"
done

(cd "$RELEASE_DIR" && sha256sum -- *.tar.gz >sha256sums.txt)
echo ">> $RELEASE_DIR/sha256sums.txt"
cat "$RELEASE_DIR/sha256sums.txt"
