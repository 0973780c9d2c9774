#!/usr/bin/env bash
# Checks the Prometheus rules of dbpool_exporter and the links of its documentation. Exits
# non-zero on any failure.
#
#   1. promtool check rules (syntax, PromQL, templates, duplicate rules)
#   2. promtool test rules (unit tests in dbpool.rules_test.yml)
#   3. consistency checks promtool cannot do:
#      - every alert has a severity, `for`, summary, description and runbook_url, unit tests,
#        and is named in docs/runbook.md;
#      - every runbook_url of the rules and every link of the dashboard into this repository
#        points to a heading of docs/runbook.md (GitHub anchor rules);
#      - every relative link of the repository's Markdown files (README.md, docs/, ...) names a
#        file that exists and, with #anchor, a heading of that file;
#      - rules and documented queries only name metrics of the exporter's metric contract or
#        recording rules of this file (a typo would make an alert silently never fire);
#      - rate(), irate() and increase() are only applied to counters;
#      - every ```promql block of the documentation parses.
#
# PROMTOOL=/path/to/promtool selects another promtool (e.g. to test with Prometheus 3).
set -euo pipefail

cd "$(dirname "$0")"
PROMTOOL=${PROMTOOL:-promtool}
RULES=dbpool.rules.yml
TESTS=dbpool.rules_test.yml
DASHBOARD=../grafana/dbpool.json
METRICS_DOC=../docs/metrics.md
RUNBOOK_DOC=../docs/runbook.md
REPO_URL='https://github.com/dbpool/dbpool_exporter/blob/main/'
# runbook_url is ${REPO_URL}docs/runbook.md#<anchor> (mixin/config.libsonnet, runbookURLBase).
RUNBOOK_URL_RE="^${REPO_URL//./\\.}docs/runbook\\.md#([a-z0-9_-]+)\$"

# The Markdown files whose links are checked and whose ```promql blocks must parse.
cd ..
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
	mapfile -t DOCS < <(git ls-files --cached --others --exclude-standard '*.md' | sed 's|^|../|')
else
	mapfile -t DOCS < <(find . -name '*.md' -not -path './.git/*' -not -path '*/node_modules/*' | sed 's|^\./|../|')
fi
cd alerts

# The metric contract is the metric table of docs/metrics.md (its single source of truth):
# every row that starts with | `dbpool_...` |. Histograms also have their _bucket, _sum and
# _count series.
CONTRACT_METRICS=$(sed -n 's/^| `\(dbpool_[a-z_]*\)` | \([a-z]*\) |.*/\1 \2/p' "$METRICS_DOC" |
	while read -r name type; do
		if [ "$type" = histogram ]; then
			printf '%s_bucket\n%s_sum\n%s_count\n' "$name" "$name" "$name"
		else
			echo "$name"
		fi
	done)
if [ -z "$CONTRACT_METRICS" ]; then
	echo "check.sh: no metric table found in $METRICS_DOC" >&2
	exit 2
fi

if ! command -v "$PROMTOOL" >/dev/null 2>&1; then
	echo "check.sh: $PROMTOOL not found (Debian/Ubuntu: apt-get install prometheus)" >&2
	exit 2
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

failures=0
fail() {
	echo "FAIL: $*" >&2
	failures=$((failures + 1))
}

echo "== promtool check rules"
"$PROMTOOL" check rules --lint=all --lint-fatal "$RULES" || fail "promtool check rules"

echo "== promtool test rules"
"$PROMTOOL" test rules "$TESTS" || fail "promtool test rules"

echo "== consistency checks"

# PromQL of every `expr:` in the rules file, one expression per paragraph.
awk '
	function indent(s) { match(s, /^ */); return RLENGTH }
	inblock && NF > 0 && indent($0) <= ind { inblock = 0; print "" }
	inblock { print; next }
	/^ *expr: *[|>][-+]? *$/ { inblock = 1; ind = indent($0); next }
	/^ *expr:/ { sub(/^ *expr: */, ""); print; print "" }
	END { if (inblock) print "" }
' "$RULES" >"$tmp/rule_exprs"

# ```promql blocks of the docs, one per paragraph, and the same as a rules file for promtool.
awk '
	/^ *```promql *$/ { inblock = 1; next }
	inblock && /^ *```/ { inblock = 0; print ""; next }
	inblock { print }
' "${DOCS[@]}" >"$tmp/doc_exprs"
awk '
	BEGIN { print "groups:\n  - name: doc_queries\n    rules:"; start = 1 }
	NF == 0 { start = 1; next }
	start { n++; printf "      - record: doc_query_%d\n        expr: |\n", n; start = 0 }
	{ print "          " $0 }
' "$tmp/doc_exprs" >"$tmp/doc_queries.yml"
if grep -q 'record:' "$tmp/doc_queries.yml"; then
	"$PROMTOOL" check rules "$tmp/doc_queries.yml" >"$tmp/doc_check.out" 2>&1 ||
		{ cat "$tmp/doc_check.out" >&2; fail "a \`\`\`promql block of the docs does not parse"; }
else
	fail "no \`\`\`promql blocks found in ${DOCS[*]}"
fi

# Every alert: severity, summary, description, runbook_url, and unit tests.
alerts=$(sed -n 's/^ *- alert: *\([A-Za-z0-9_]*\).*/\1/p' "$RULES")
[ -n "$alerts" ] || fail "no alerts found in $RULES"
for a in $alerts; do
	# The alert's block: from its `- alert:` line to the next rule.
	block=$(awk -v a="$a" '
		$0 ~ "^ *- alert: *" a "$" { on = 1; print; next }
		on && /^ *- (alert|record):/ { exit }
		on { print }
	' "$RULES")
	grep -Eq '^ +severity: (warning|critical)$' <<<"$block" || fail "$a: labels.severity must be warning or critical"
	for key in summary description runbook_url; do
		grep -Eq "^ +$key:" <<<"$block" || fail "$a: annotation $key missing"
	done
	grep -Eq '^ +for: [0-9]+[smh]$' <<<"$block" || fail "$a: no 'for' duration"
	grep -qF "\`$a\`" "$RUNBOOK_DOC" || fail "$a is not mentioned in $RUNBOOK_DOC"
	url=$(sed -n 's/^ *runbook_url: *//p' <<<"$block")
	[[ "$url" =~ $RUNBOOK_URL_RE ]] || fail "$a: runbook_url must be ${REPO_URL}docs/runbook.md#<anchor>, not '$url'"
	# Firing, under-threshold and before-`for` cases need at least two evaluations of the alert,
	# one of them with exp_alerts and one with an empty list.
	n=$(grep -Ec "^ *alertname: $a$" "$TESTS" || true)
	[ "$n" -ge 2 ] || fail "$a: only $n alert_rule_test evaluations in $TESTS"
	awk -v a="$a" '
		$0 ~ "^ *alertname: " a "$" { cur = 1; next }
		cur && /^ *exp_alerts: *\[\] *$/ { empty = 1; cur = 0 }
		cur && /^ *exp_alerts: *$/ { firing = 1; cur = 0 }
		END { exit !(empty && firing) }
	' "$TESTS" || fail "$a: needs a test where it fires and one where it does not"
done

# anchors FILE: the anchors of FILE's headings, one a line, as GitHub makes them: lowercase,
# punctuation dropped, spaces to hyphens, "-1", "-2"... for repeats. Fenced code blocks hold no
# headings.
anchors() {
	awk '
		/^ *(```|~~~)/ { fence = !fence; next }
		fence { next }
		/^#+ / {
			h = $0
			sub(/^#+ +/, "", h); sub(/ +#* *$/, "", h)
			h = tolower(h)
			gsub(/[^a-z0-9 _-]/, "", h)
			gsub(/ /, "-", h)
			if (h in seen) { seen[h]++; h = h "-" seen[h] } else { seen[h] = 0 }
			print h
		}
	' "$1"
}
anchors "$RUNBOOK_DOC" >"$tmp/runbook_anchors"

# Links of the rules and the dashboard into this repository: the runbook sections.
n_runbook=0
while read -r url; do
	n_runbook=$((n_runbook + 1))
	if [[ "$url" =~ $RUNBOOK_URL_RE ]]; then
		grep -qxF "${BASH_REMATCH[1]}" "$tmp/runbook_anchors" || fail "$url: no heading #${BASH_REMATCH[1]} in $RUNBOOK_DOC"
	else
		fail "$url: links into this repository must go to ${REPO_URL}docs/runbook.md#<anchor>"
	fi
done < <(grep -ohE "${REPO_URL//./\\.}[^\"' ]*" "$RULES" "$DASHBOARD" | sort -u)
[ "$n_runbook" -gt 0 ] || fail "no runbook links found in $RULES and $DASHBOARD"

# Relative links of the Markdown files: [text](path), [text](path#anchor), [text](#anchor).
# Inline code and fenced blocks hold no links. Targets are relative to the linking file.
n_links=0
for doc in "${DOCS[@]}"; do
	dir=$(dirname "$doc")
	while read -r target; do
		n_links=$((n_links + 1))
		path=${target%%#*}
		anchor=
		[[ "$target" == *"#"* ]] && anchor=${target#*#}
		file=$doc
		if [ -n "$path" ]; then
			file=$dir/$path
			if [ ! -e "$file" ]; then
				fail "$doc: link ($target): no file ${file#../}"
				continue
			fi
		fi
		if [ -n "$anchor" ]; then
			[[ "$file" == *.md ]] || { fail "$doc: link ($target): an anchor into a file that is not Markdown"; continue; }
			anchors "$file" | grep -qxF "$anchor" || fail "$doc: link ($target): no heading #$anchor in ${file#../}"
		fi
	done < <(awk '
		/^ *(```|~~~)/ { fence = !fence; next }
		fence { next }
		{
			line = $0
			gsub(/`[^`]*`/, "", line)
			while (match(line, /\]\([^) ]+( "[^"]*")?\)/)) {
				t = substr(line, RSTART + 2, RLENGTH - 3)
				sub(/ ".*/, "", t)
				line = substr(line, RSTART + RLENGTH)
				if (t !~ /^[a-z]+:/) print t
			}
		}
	' "$doc")
done

# Metric names: contract metrics and this file's recording rules only.
{
	tr ' ' '\n' <<<"$CONTRACT_METRICS"
	sed -n 's/^ *- record: *\([^ ]*\).*/\1/p' "$RULES"
} | sed '/^$/d' | sort -u >"$tmp/known"
# Quoted label values (pool!="dbpool_exporter") are not metric names: drop them first.
cat "$tmp/rule_exprs" "$tmp/doc_exprs" |
	sed -E 's/"([^"\\]|\\.)*"//g' |
	grep -oE '[a-zA-Z_:][a-zA-Z0-9_:]*' |
	grep -E '^([a-z_]+:)?dbpool_' | sort -u >"$tmp/used"
while read -r m; do
	grep -qxF "$m" "$tmp/known" || fail "unknown metric $m (not in the metric contract, not a recording rule)"
done <"$tmp/used"

# rate()/irate()/increase() of anything but a counter is meaningless (never rate() a gauge).
cat "$tmp/rule_exprs" "$tmp/doc_exprs" |
	grep -oE '(^|[^a-z_])(rate|irate|increase)\( *[a-zA-Z_:][a-zA-Z0-9_:]*' |
	sed -E 's/.*\( *//' | sort -u >"$tmp/rated"
while read -r m; do
	[[ "$m" =~ _(total|sum|count|bucket)$ ]] || fail "rate/increase of $m, which is not a counter"
done <"$tmp/rated"

if [ "$failures" -ne 0 ]; then
	echo "check.sh: $failures check(s) failed" >&2
	exit 1
fi
echo "check.sh: OK ($(wc -w <<<"$alerts") alerts, $n_runbook runbook links, $n_links relative links in ${#DOCS[@]} Markdown files, $(grep -c 'record: doc_query' "$tmp/doc_queries.yml") documented queries)"
