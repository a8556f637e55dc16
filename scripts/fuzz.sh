#!/usr/bin/env bash
# Runs every fuzz target of the module for FUZZTIME each (default 30s), one after
# the other, and prints one summary line per target. Exits non-zero if any target
# fails or a package's tests do not build. A crasher that a target finds is
# written to <pkg>/testdata/fuzz/<FuzzName>/ by `go test`: commit it, and plain
# `go test` keeps running it as a regression test.
# Usage: scripts/fuzz.sh [FUZZTIME]   (FUZZTIME as for go test -fuzztime: 30s, 1m, 1000x)
# Environment: GO (default go), FUZZ_PARALLEL (fuzzing workers per target; default: go's).
set -uo pipefail
fuzztime=${1:-30s}
go=${GO:-go}
cd "$(dirname "$0")/.." || exit 2

parallel=()
if [ -n "${FUZZ_PARALLEL:-}" ]; then
	parallel=(-parallel "$FUZZ_PARALLEL")
fi

if ! pkgs=$("$go" list ./...); then
	echo "fuzz: go list failed" >&2
	exit 2
fi

summary=()
failed=0
total=0
for pkg in $pkgs; do
	dir=$("$go" list -f '{{.Dir}}' "$pkg") || {
		summary+=("FAIL  $pkg (go list)")
		failed=$((failed + 1))
		continue
	}
	# Only packages with test files can hold fuzz targets; skip the rest cheaply.
	if ! compgen -G "$dir/*_test.go" >/dev/null; then
		continue
	fi
	if ! grep -qs '^func Fuzz' "$dir"/*_test.go; then
		continue
	fi
	if ! out=$("$go" test -run '^$' -list '^Fuzz' "$pkg" 2>&1); then
		echo "$out" >&2
		summary+=("FAIL  $pkg (tests do not build)")
		failed=$((failed + 1))
		continue
	fi
	for name in $(printf '%s\n' "$out" | grep -E '^Fuzz[A-Za-z0-9_]*$'); do
		total=$((total + 1))
		echo "fuzz: $pkg $name for $fuzztime" >&2
		start=$SECONDS
		if "$go" test -run '^$' -fuzz "^${name}\$" -fuzztime "$fuzztime" "${parallel[@]}" "$pkg"; then
			summary+=("ok    $pkg $name ($((SECONDS - start))s)")
		else
			summary+=("FAIL  $pkg $name ($((SECONDS - start))s; crasher, if any, in ${dir#"$PWD"/}/testdata/fuzz/$name/)")
			failed=$((failed + 1))
		fi
	done
done

echo
echo "fuzz summary ($total targets, $fuzztime each):"
for line in "${summary[@]}"; do
	echo "  $line"
done
if [ "$total" -eq 0 ]; then
	echo "  no fuzz targets found"
fi
if [ "$failed" -gt 0 ]; then
	echo "fuzz: $failed failed" >&2
	exit 1
fi
