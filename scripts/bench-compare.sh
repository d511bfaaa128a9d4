#!/usr/bin/env bash
# Before and after in one run: scripts/bench.sh of this tree, then of an earlier revision
# (default 0.2.0's last commit), on the same input files (made by this tree's generator), and
# both tables side by side with the ratio after/before.
#   scripts/bench-compare.sh [REV]        BENCH_* and RUNS as for scripts/bench.sh (the
#                                         long-range rows only with BENCH_LONG=1: REV has none)
# The earlier revision is checked out in target/bench-base (a git worktree) and builds in
# target/bench-base-target (kept, so later runs build only what changed).
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_REV=${1:-0b1b09c}
TRADES=${BENCH_TRADES:-10000000}
SYMBOLS=${BENCH_SYMBOLS:-500}
SCALE=${BENCH_SCALE:-"1000000 10000000 50000000"}
FRESH_TRADES=${BENCH_FRESH_TRADES:-2000000}
ROOT=${TMPDIR:-/tmp}/tradebars-bench-compare
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}

bash scripts/setup.sh
echo "bench-compare: the inputs, from this tree's generator"
cargo build --release -p tradebars-feeder --quiet
mkdir -p "$ROOT/after/files" "$ROOT/before/files"
[ "$(id -u)" -eq 0 ] && chown postgres:postgres "$ROOT/after/files" "$ROOT/before/files"
gen() { [ -f "$ROOT/after/files/$1" ] || "$CARGO_TARGET_DIR/release/tradebars-feeder" generate --symbols "$SYMBOLS" --trades "$2" --seed "$3" --out "$ROOT/after/files/$1" >/dev/null; }
for n in $SCALE $TRADES; do gen "trades-$n.dbn.zst" "$n" 7; done
gen "fresh-$FRESH_TRADES.dbn.zst" "$FRESH_TRADES" 9
for f in "$ROOT"/after/files/*.dbn.zst; do ln -sf "$f" "$ROOT/before/files/$(basename "$f")"; done

echo "bench-compare: after (this tree)"
BENCH_LONG=${BENCH_LONG:-0} TRADEBARS_BENCH_DIR=$ROOT/after bash scripts/bench.sh
cp bench-results/bench.csv "$ROOT/after.csv"


echo "bench-compare: before ($BASE_REV)"
rm -rf target/bench-base
git worktree prune
git worktree add --detach target/bench-base "$BASE_REV" >/dev/null
# A target directory of its own: in a shared one, its build would leave its library where
# this tree's next build, finding its own inputs unchanged, would not put its own back.
mkdir -p target/bench-base-target
ln -s "$PWD/target/bench-base-target" target/bench-base/target  # its scripts name their binaries under ./target
CARGO_TARGET_DIR=$PWD/target/bench-base-target TRADEBARS_BENCH_DIR=$ROOT/before bash target/bench-base/scripts/bench.sh
cp target/bench-base/bench-results/bench.csv "$ROOT/before.csv"
rm target/bench-base/target
git worktree remove --force target/bench-base

# The earlier revision installed its extension: this tree's goes back in.
bash scripts/install-extension.sh --release

mkdir -p bench-results
join -t, -a 2 -e - -o 0,1.2,2.2,2.3 <(tail -n +2 "$ROOT/before.csv" | sort -t, -k1,1) \
     <(tail -n +2 "$ROOT/after.csv" | sort -t, -k1,1) |
  awk -F, 'BEGIN { OFS = ","; print "measure,before,after,unit,after/before" }
           { r = ($2 != "-" && $2 + 0 != 0) ? sprintf("%.2f", $3 / $2) : "-"; print $1, $2, $3, $4, r }' \
  > bench-results/compare.csv
echo
column -s, -t < bench-results/compare.csv
echo "written to bench-results/compare.csv (before: $BASE_REV, after: $(git rev-parse --short HEAD))"
