#!/usr/bin/env bash
# The fault-detection figures of BENCHMARKS.md: the bundled race with faults injected at
# seeds 1, 2 and 3 (4 faults of each kind), and the clean race, each played once by a server's
# embedded replay and scored from its archive by `pitwall faults score` (the shipped queries,
# the old lap_anomaly score beside them). No broker needed.
#
#   scripts/faults-eval.sh [SEED...]      (default: 1 2 3; the clean race always)
#
# Builds the release binaries; prints each run's table, and writes the JSON reports to
# target/faults-eval/. About a minute per run on a 2-vCPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."

seeds=("$@")
[ ${#seeds[@]} -eq 0 ] && seeds=(1 2 3)
out=target/faults-eval
work="$(mktemp -d -t pitwall-faults.XXXXXX)"
server_pid=""
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$out"

echo "faults-eval: building release binaries" >&2
cargo build --release --locked -p pitwall-server -p pitwall-cli --bins >&2
bin=target/release

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

run() { # NAME INJECT-ARGS...
    local name=$1; shift
    "$bin/pitwall" faults inject "$@" --out "$work/$name.parquet" >&2
    local port; port=$(free_port)
    PITWALL_BUNDLED="$work/$name.parquet" "$bin/pitwall-server" --embedded-once \
        --embedded-speed 1000 --queries-dir queries --data-dir "$work/$name-data" \
        --flight-addr "127.0.0.1:$port" --http-addr off 2>"$work/$name.log" &
    server_pid=$!
    local url="http://127.0.0.1:$port"
    for _ in $(seq 120); do "$bin/pitwall" --server "$url" queries >/dev/null 2>&1 && break; sleep 0.5; done
    "$bin/pitwall" --server "$url" faults score --labels "$work/$name.labels.json" --wait 900
    "$bin/pitwall" --server "$url" faults score --labels "$work/$name.labels.json" --json \
        > "$out/$name.json"
    kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
    server_pid=""
    echo
}

for seed in "${seeds[@]}"; do
    run "seed-$seed" --seed "$seed"
done
run clean --seed 0 --per-kind 0 --session clean
