#!/usr/bin/env bash
# What a new user meets on a fresh clone (BENCHMARKS.md, "Build"): clones this repository to
# DIR (default /tmp/pitwall-fresh), then runs, with an empty target directory,
#  1. the README's main-job command, until the server runs (its compile time),
#  2. the README's CLI alias with `watch speed_1s`, until the first row arrives,
#  3. the README's test command (scripts/test.sh),
# and prints each one's time and what it compiled, the binaries' sizes and their debug sections.
# Needs nothing running on ports 50051 and 8080. Takes about an hour on 2 cores.
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:-/tmp/pitwall-fresh}"
log="$(mktemp -d -t pitwall-fresh.XXXXXX)"
rm -rf "$dir" && git clone -q "$repo" "$dir" && cd "$dir" || exit 1
unset CARGO_TARGET_DIR
t0=$(date +%s)
echo "commit $(git rev-parse --short HEAD), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
cargo run --release --bin pitwall-server > "$log/main.out" 2> "$log/main.err" &
main=$!
until grep -q 'Running `' "$log/main.err" 2>/dev/null; do
  sleep 5
  kill -0 "$main" 2>/dev/null || { echo "the main job failed: $(tail -n 3 "$log/main.err")"; exit 1; }
done
t1=$(date +%s)
echo "main job: compiled and running after $((t1 - t0)) s"
timeout 900 cargo run --release --bin pitwall -- watch speed_1s --format csv 2> "$log/alias.err" | head -n 2 > "$log/alias.out"
t2=$(date +%s)
echo "CLI alias: first watch row $((t2 - t0)) s after the clone ($((t2 - t1)) s after the main job ran)"
kill -INT "$main"; sleep 3; wait "$main" 2>/dev/null
ls -l target/release/pitwall-server target/release/pitwall | awk '{printf "%s: %.1f MB\n", $9, $5 / 1e6}'
size -A target/release/pitwall-server | awk '$1 ~ /^\.debug/ {d += $2} $1 == ".text" {t = $2} END {printf "pitwall-server: .text %.1f MB, debug sections %.1f MB\n", t / 1e6, d / 1e6}'
t3=$(date +%s)
scripts/test.sh > "$log/test.out" 2> "$log/test.err"
rc=$?
echo "test command: exit $rc after $(( $(date +%s) - t3 )) s"
for f in main alias test; do
  echo "$f: $(grep -c '^ *Compiling' "$log/$f.err") crates compiled, $(grep -c '^ *Checking' "$log/$f.err") checked"
done
echo "logs: $log"
