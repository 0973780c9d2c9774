#!/usr/bin/env bash
# install-deps.sh installs the programs that the tests, the demo and the alert
# rule checks need on Debian 12: PostgreSQL server binaries, PgBouncer,
# promtool (package prometheus), Alertmanager/amtool, gcc and libc6-dev
# (`go test -race` needs cgo), Debian's Python 3 with python3-venv, from which
# scripts/python-envs.sh then builds the pinned Python environments .venv/sa20 and .venv/sa14
# (integrations/python's tests, the e2e and grafana tests, the demo), Node.js with npm when npx is missing
# (`make lint` runs dockerfilelint through npx), with --with-chromium,
# Chromium (dashboard screenshots) and, with --with-peers, the exporters that
# `make bench-peers` compares against: prometheus-postgres-exporter and
# prometheus-pgbouncer-exporter.
#
# It installs only what is missing, so running it twice is cheap. The Debian
# packages start system services after install; the tests start their own
# throw-away servers on free ports, so this script keeps those services
# stopped and disabled for packages it installs itself. Services of packages
# that were already installed are left alone.
set -euo pipefail

usage() {
	echo "usage: $0 [--with-chromium] [--with-peers]" >&2
	exit 2
}

with_chromium=0
with_peers=0
for arg in "$@"; do
	case "$arg" in
	--with-chromium) with_chromium=1 ;;
	--with-peers) with_peers=1 ;;
	-h | --help) usage ;;
	*)
		echo "unknown argument: $arg" >&2
		usage
		;;
	esac
done

# Newest PostgreSQL server bin dir, the same rule as tools/pgtest.BinDir.
pg_bindir() {
	local d
	d=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)
	if [[ -n "$d" && -x "$d/postgres" && -x "$d/initdb" && -x "$d/pg_ctl" ]]; then
		echo "$d"
	fi
}

# find_bin prints the path of a program, also when /usr/sbin is not on PATH
# (pgbouncer lives there and non-root shells often lack it).
find_bin() {
	local name=$1 p found
	# command -v also returns a non-executable match, hence the -f/-x check.
	found=$(command -v "$name" 2>/dev/null || true)
	for p in "$found" /usr/sbin/"$name" /usr/bin/"$name" /sbin/"$name" /bin/"$name"; do
		if [[ -n "$p" && -f "$p" && -x "$p" ]]; then
			echo "$p"
			return 0
		fi
	done
	return 1
}

# pkg_version prints the installed version of a Debian package, or nothing.
pkg_version() {
	dpkg-query -W -f='${db:Status-Status} ${Version}\n' "$1" 2>/dev/null |
		awk '$1 == "installed" { print $2 }' || true
}

have() {
	case "$1" in
	postgresql) [[ -n "$(pg_bindir)" ]] ;;
	pgbouncer) find_bin pgbouncer >/dev/null ;;
	prometheus) find_bin promtool >/dev/null ;;
	prometheus-alertmanager) find_bin amtool >/dev/null && find_bin prometheus-alertmanager >/dev/null ;;
	chromium) find_bin chromium >/dev/null ;;
	gcc) find_bin gcc >/dev/null ;;
	# gcc only recommends libc6-dev, and the install below skips recommends; without its
	# headers and crt files cgo, and so `go test -race`, cannot link.
	libc6-dev) [[ -n "$(pkg_version libc6-dev)" ]] ;;
	# The base of scripts/python-envs.sh' environments is Debian's /usr/bin/python3 (not a
	# pyenv python3 earlier on PATH).
	python3-venv) [[ -x /usr/bin/python3 && -n "$(pkg_version python3-venv)" ]] ;;
	nodejs) find_bin node >/dev/null ;;
	prometheus-postgres-exporter | prometheus-pgbouncer-exporter) find_bin "$1" >/dev/null ;;
	npm) find_bin npm >/dev/null && find_bin npx >/dev/null ;;
	*) return 1 ;;
	esac
}

wanted=(postgresql pgbouncer prometheus prometheus-alertmanager gcc libc6-dev python3-venv)
# Only when npx is absent: a Node.js from elsewhere (e.g. NodeSource, whose nodejs
# package ships npm and npx itself) conflicts with Debian's npm package.
if ! command -v npx >/dev/null 2>&1; then
	wanted+=(nodejs npm)
fi
if ((with_chromium)); then
	wanted+=(chromium)
fi
if ((with_peers)); then
	wanted+=(prometheus-postgres-exporter prometheus-pgbouncer-exporter)
fi

missing=()
for pkg in "${wanted[@]}"; do
	if ! have "$pkg"; then
		missing+=("$pkg")
	fi
done

if ((${#missing[@]} > 0)); then
	if [[ $(id -u) -ne 0 ]]; then
		echo "missing packages: ${missing[*]}" >&2
		echo "install them as root:" >&2
		echo "  apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
		echo "or run: sudo $0 $*" >&2
		exit 1
	fi

	# Keep maintainer scripts from starting services during the install, unless
	# the machine already has a policy (containers usually do).
	policy=/usr/sbin/policy-rc.d
	own_policy=0
	if [[ ! -e "$policy" ]]; then
		printf '#!/bin/sh\nexit 101\n' >"$policy"
		chmod 0755 "$policy"
		own_policy=1
	fi
	cleanup_policy() {
		if ((own_policy)); then
			rm -f "$policy"
		fi
	}
	trap cleanup_policy EXIT

	export DEBIAN_FRONTEND=noninteractive
	echo "installing: ${missing[*]}"
	apt-get update
	# Recommends would pull in e.g. prometheus-node-exporter, which nothing here
	# uses; Chromium's recommends (fonts) are wanted for readable screenshots.
	server_pkgs=()
	for pkg in "${missing[@]}"; do
		if [[ "$pkg" != chromium ]]; then
			server_pkgs+=("$pkg")
		fi
	done
	if ((${#server_pkgs[@]} > 0)); then
		apt-get install -y --no-install-recommends "${server_pkgs[@]}"
	fi
	for pkg in "${missing[@]}"; do
		if [[ "$pkg" == chromium ]]; then
			apt-get install -y chromium
		fi
	done
	cleanup_policy
	trap - EXIT

	# Services of the packages just installed: stop and disable them so that
	# nothing listens on 5432/6432/9090/9093 behind the tests' back. The tests
	# do not rely on this; it only keeps the machine quiet.
	for pkg in "${missing[@]}"; do
		case "$pkg" in
		postgresql) units=(postgresql) ;;
		pgbouncer) units=(pgbouncer) ;;
		prometheus) units=(prometheus) ;;
		prometheus-alertmanager) units=(prometheus-alertmanager) ;;
		prometheus-postgres-exporter | prometheus-pgbouncer-exporter) units=("$pkg") ;;
		*) units=() ;;
		esac
		for u in "${units[@]}"; do
			if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
				systemctl disable --now "$u" >/dev/null 2>&1 || true
			elif command -v service >/dev/null; then
				service "$u" stop >/dev/null 2>&1 || true
			fi
		done
		if [[ "$pkg" == postgresql ]] && command -v pg_lsclusters >/dev/null; then
			# The package creates a "main" cluster; stop it if it runs.
			while read -r ver name _; do
				pg_ctlcluster "$ver" "$name" stop >/dev/null 2>&1 || true
			done < <(pg_lsclusters --no-header 2>/dev/null || true)
		fi
	done
fi

# Everything must be present now; report what the tests will use.
fail=0
report() {
	local label=$1 path=$2
	shift 2
	local ver
	if [[ -z "$path" ]]; then
		echo "$label: MISSING" >&2
		fail=1
		return
	fi
	ver=$("$path" "$@" 2>/dev/null | head -n 1 || true)
	echo "$label: $path ($ver)"
}

bindir=$(pg_bindir)
report postgres "${bindir:+$bindir/postgres}" --version
report pgbouncer "$(find_bin pgbouncer || true)" --version
report promtool "$(find_bin promtool || true)" --version
report alertmanager "$(find_bin prometheus-alertmanager || true)" --version
report amtool "$(find_bin amtool || true)" --version
report gcc "$(find_bin gcc || true)" --version
libc_ver=$(pkg_version libc6-dev)
if [[ -z "$libc_ver" ]]; then
	echo "libc6-dev: MISSING" >&2
	fail=1
else
	echo "libc6-dev: $libc_ver"
fi
# The pinned Python environments (needs PyPI the first time and after a constraints change).
if ! "$(dirname "$0")/python-envs.sh"; then
	echo "python environments (scripts/python-envs.sh): FAILED" >&2
	fail=1
fi
report node "$(find_bin node || true)" --version
report npm "$(find_bin npm || true)" --version
report npx "$(find_bin npx || true)" --version
if ((with_chromium)); then
	report chromium "$(find_bin chromium || true)" --version
fi
if ((with_peers)); then
	# postgres_exporter prints its version on stderr; the Python pgbouncer exporter has no
	# --version, so the Debian package version stands in for both.
	for peer in prometheus-postgres-exporter prometheus-pgbouncer-exporter; do
		path=$(find_bin "$peer" || true)
		if [[ -z "$path" ]]; then
			echo "$peer: MISSING" >&2
			fail=1
		else
			echo "$peer: $path ($(pkg_version "$peer"))"
		fi
	done
fi
exit "$fail"
