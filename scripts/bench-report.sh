#!/usr/bin/env bash
# Reruns the commands of BENCHMARKS.md's results table and prints the table (Markdown) with
# this machine and commit, so the page's numbers are regenerated, not edited by hand:
#
#   scripts/bench-report.sh [ROW...]     rows: latency throughput subscribers slow dashboards
#                                         udp micro hours loops fuzz replay archive faults
#                                         (default: all)
#
# It builds the release binaries and examples, starts a broker as scripts/test.sh does
# (unless PITWALL_TEST_KAFKA names one), and runs each row's command; a row whose command
# fails prints "failed" with the command's last line. PITWALL_FUZZ_SECS (default 600) sets
# each fuzz run's length; `archive` needs DuckDB for Python and ../shared's race.
# Progress goes to stderr, the table to stdout. Run it with nothing else busy on the machine.
set -euo pipefail
cd "$(dirname "$0")/.."

rows=("$@")
[ ${#rows[@]} -eq 0 ] && rows=(latency throughput subscribers slow dashboards udp micro hours loops fuzz replay archive faults)
log() { echo "bench-report: $*" >&2; }

machine="$(nproc) vCPU $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//; s/ [0-9]*-Core Processor//; s/(R)//g; s/(TM)//g' | cut -c1-40)"
commit="$(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo -dirty)"
work="$(mktemp -d -t pitwall-bench-report.XXXXXX)"
cleanup() { [ -n "${PITWALL_BROKER_STATE:-}" ] && scripts/broker.sh stop >/dev/null 2>&1; rm -rf "$work"; }
trap cleanup EXIT

log "building release binaries and examples"
cargo build --release --locked --workspace --bins --examples >&2
bin=target/release

need_broker() {
  [ -n "${PITWALL_TEST_KAFKA:-}" ] && return
  export PITWALL_KAFKA_PORT="${PITWALL_KAFKA_PORT:-19392}"
  export PITWALL_BROKER_STATE="$work/broker"
  PITWALL_TEST_KAFKA="$(scripts/broker.sh start | tail -n 1)"
  export PITWALL_TEST_KAFKA
}

# `pitwall bench ... --json` into $work/NAME.json
bench() {
  local name="$1"; shift
  need_broker
  log "pitwall bench $*"
  "$bin/pitwall" bench --brokers "$PITWALL_TEST_KAFKA" "$@" --json > "$work/$name.json"
}
# A field of a bench report: j NAME 'python expression over r'
j() { python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print($2)" "$work/$1.json"; }

row() { echo "| $1 | $2 | $3 | $machine | $commit | $4 |"; }
met() { python3 -c "import sys; print('met' if $1 else '**missed**')"; }

latency() {
  bench latency --cars 20 --rate 60 --duration 60
  row '`pitwall bench --cars 20 --rate 60 --duration 60`' 'p99 <= 50 ms; RSS <= 300 MB' \
    "p50/p99 $(j latency '"%.0f/%.0f" % (r["latency_ms"]["p50"], r["latency_ms"]["p99"])') ms; RSS $(j latency '"%.0f" % r["server_peak_rss_mb"]') MB peak; CPU $(j latency '"%.0f" % r["server_cpu_percent"]')%" \
    "$(met "$(j latency 'r["latency_ms"]["p99"] <= 50 and r["server_peak_rss_mb"] <= 300')")"
}

throughput() {
  bench throughput --cars 200 --rate 1000 --duration 60
  row '`pitwall bench --cars 200 --rate 1000 --duration 60`' '>= 200K rows/s, backlog < 1 s; p99 <= 250 ms; RSS <= 300 MB' \
    "$(j throughput '"{:,.0f}".format(r["rows_in_per_s"])') rows/s, backlog $(j throughput '"{:,}".format(r["backlog_rows"])') rows; p99 $(j throughput '"%.0f" % r["latency_ms"]["p99"]') ms; RSS $(j throughput '"%.0f" % r["server_peak_rss_mb"]') MB" \
    "$(met "$(j throughput 'r["rows_in_per_s"] >= 0.99 * 200000 and r["backlog_rows"] < 200000 and r["latency_ms"]["p99"] <= 250 and r["server_peak_rss_mb"] <= 300')")"
}

subscribers() {
  bench subs1 --cars 20 --rate 1000 --duration 30 --subscribers 1
  bench subs10 --cars 20 --rate 1000 --duration 30 --subscribers 10
  local c1 c10
  c1="$(j subs1 'r["server_cpu_percent"]')"; c10="$(j subs10 'r["server_cpu_percent"]')"
  row '`pitwall bench --cars 20 --rate 1000 --duration 30 --subscribers 1` vs `10`' '10 subscribers <= +10% CPU' \
    "$(printf '%.0f%% vs %.0f%% of a core' "$c1" "$c10")" "$(met "$c10 <= 1.10 * $c1")"
}

slow() {
  [ -f "$work/subs1.json" ] || bench subs1 --cars 20 --rate 1000 --duration 30 --subscribers 1
  bench slow --cars 20 --rate 1000 --duration 30 --slow-subscriber
  local p0 p1
  p0="$(j subs1 'r["latency_ms"]["p99"]')"; p1="$(j slow 'r["latency_ms"]["p99"]')"
  row '`pitwall bench --cars 20 --rate 1000 --duration 30 --slow-subscriber`' 'a reader that never reads is dropped; the p99 of the others within 50 ms' \
    "dropped: $(j slow 'str(r["slow_subscriber_dropped"]).lower()'); p99 $p1 vs $p0 ms" \
    "$(met "$(j slow 'r["slow_subscriber_dropped"] is True') and $p1 - $p0 <= 50")"
}

dashboards() {
  bench dash0 --cars 20 --rate 60 --duration 30
  bench dash5 --cars 20 --rate 60 --duration 30 --dashboards 5
  local c0 c5 p0 p5
  c0="$(j dash0 'r["server_cpu_percent"]')"; c5="$(j dash5 'r["server_cpu_percent"]')"
  p0="$(j dash0 'r["latency_ms"]["p99"]')"; p5="$(j dash5 'r["latency_ms"]["p99"]')"
  row '`pitwall bench --cars 20 --rate 60 --duration 30` vs `--dashboards 5`' '5 pages: <= +10% server CPU, p99 within 5 ms' \
    "$(printf 'CPU %.1f%% vs %.1f%%; p99 %s vs %s ms; %s kB/s a page' "$c0" "$c5" "$p0" "$p5" "$(j dash5 'round(r["dashboard_bytes"] / 5 / r["duration_s"] / 1000)')")" \
    "$(met "$c5 <= 1.10 * $c0 + 1 and $p5 - $p0 <= 5")"
}

# Criterion's mean throughput of one benchmark, in M elements/s.
udp() {
  log "pitwall bench --format f1-udp"
  "$bin/pitwall" bench --format f1-udp --cars 20 --rate 60 --duration 60 --json > "$work/udp.json"
  row '`pitwall bench --format f1-udp --cars 20 --rate 60 --duration 60` (game packets to `--udp`)' 'over_rev p99 <= 20 ms, datagram to Flight row' \
    "p50/p99 $(j udp '"%.0f/%.0f" % (r["latency_ms"]["p50"], r["latency_ms"]["p99"])') ms over $(j udp 'r["sampled_rows_received"]') rows; CPU $(j udp '"%.0f" % r["server_cpu_percent"]')%; RSS $(j udp '"%.0f" % r["server_peak_rss_mb"]') MB" \
    "$(met "$(j udp 'r["latency_ms"]["p99"] <= 20 and r["sampled_rows_received"] > 0')")"
}

thrpt() {
  grep -A3 "^$1" "$work/criterion.txt" | grep -m1 'thrpt:' \
    | python3 -c 'import re,sys; s=sys.stdin.read(); v=re.findall(r"([\d.]+) (K|M|G)?elem/s", s)[1]; print(round(float(v[0]) * {"K":1e-3,"M":1,"G":1e3,"":1e-6}[v[1]], 2))'
}

micro() {
  log "cargo bench (decode, archive write, engine step)"
  cargo bench --locked --bench pitwall -- --warm-up-time 1 --measurement-time 3 \
    2>/dev/null > "$work/criterion.txt"
  local json pb arch
  json="$(thrpt decode/json_16k_rows)"; pb="$(thrpt decode/protobuf_16k_rows)"; arch="$(thrpt archive/telemetry_files)"
  row '`cargo bench --bench pitwall`: decode' '>= 1.5M rows/s per core' \
    "JSON ${json}M rows/s, Protobuf ${pb}M" "$(met "$json >= 1.5 and $pb >= 1.5")"
  row 'same: Parquet archive write (sort, split, zstd)' '>= 1M rows/s' "${arch}M rows/s" "$(met "$arch >= 1.0")"
  row 'same: engine step, all default queries, 10,000 rows' '(none)' "$(thrpt engine_step/default_queries_10000)M rows/s" '-'
  local udp
  udp="$(thrpt udp/decode_1000_frames)"
  row 'same: EA F1 game datagrams (Motion, Lap Data, Car Telemetry of 22 cars), decode / decode and join into rows' '>= 1M datagrams/s per core' \
    "${udp}M / $(thrpt udp/decode_and_join_1000_frames)M datagrams/s" "$(met "$udp >= 1.0")"
}

hours() {
  log "engine_hours"
  "$bin/examples/engine_hours" > "$work/hours.txt"
  local ratio median rss
  ratio="$(grep -m1 '^ratio:' "$work/hours.txt" | grep -oE '[0-9.]+')"
  median="$(grep -m1 '^each minute' "$work/hours.txt" | grep -oE 'median [0-9.]+' | cut -d' ' -f2)"
  rss="$(grep -m1 '^peak RSS:' "$work/hours.txt" | grep -oE '[0-9]+')"
  row '`engine_hours` (20 cars, 2.9 h, 50 ms micro-batches)' 'hour 2 within 1.2x of minute 1; peak RSS <= 300 MB' \
    "${ratio}x (every minute: median ${median}x); peak RSS ${rss} MB" "$(met "$median <= 1.2 and $rss <= 300")"
}

loops() {
  log "engine_hours --loops 10 --buffer-kb 256"
  "$bin/examples/engine_hours" --loops 10 --buffer-kb 256 > "$work/loops.txt"
  local rss
  # RSS at each round's end, less the example's own step log.
  rss="$(grep -oE '\(([0-9]+) MB without' "$work/loops.txt" | grep -oE '[0-9]+' | tr '\n' ' ')"
  row '`engine_hours --loops 10 --buffer-kb 256`' 'RSS flat over 10 rounds (last <= first + 10%)' \
    "RSS at round ends: ${rss% }MB" "$(met "$(echo "$rss" | awk '{print $NF " <= 1.1 * " $1}')")"
}

fuzz() {
  local secs="${PITWALL_FUZZ_SECS:-600}" out udp
  for f in json_decoder protobuf_decoder udp_source; do
    log "fuzz $f for $secs s"
    PITWALL_FUZZ_SECS="$secs" cargo test --locked --workspace --lib -- \
      "fuzz_${f}" --nocapture > "$work/fuzz-$f.txt" 2>&1 || true
  done
  out="$(for f in json_decoder protobuf_decoder; do grep -hoE '[0-9,]+ batches' "$work/fuzz-$f.txt" | tail -1; done | paste -sd/ -)"
  ok() { grep -c 'test result: ok. 1 passed' "$work/fuzz-$1.txt" | awk '{print ($1 == 1) ? "True" : "False"}'; }
  row "\`PITWALL_FUZZ_SECS=$secs cargo test --workspace --lib -- fuzz_json_decoder\` / \`fuzz_protobuf_decoder\`" 'no crash, hang or unbounded allocation' \
    "JSON / Protobuf: ${out:-no count printed}" "$(met "$(ok json_decoder) and $(ok protobuf_decoder)")"
  udp="$(grep -hoE '[0-9]+ datagrams in [^,]*|slowest datagram [^;]*' "$work/fuzz-udp_source.txt" | paste -sd';' -)"
  row "\`PITWALL_FUZZ_SECS=$secs cargo test --workspace --lib -- fuzz_udp_source\`" 'no crash or hang (10 minutes)' \
    "${udp:-no count printed}" "$(met "$(ok udp_source)")"
}

replay() {
  need_broker
  log "pitwall replay --max (the bundled race)"
  "$bin/pitwall" replay --brokers "$PITWALL_TEST_KAFKA" --topic "bench-report-$$" --max --quiet > "$work/replay.txt"
  local rate
  rate="$(grep -oE '[0-9]+ rows/s' "$work/replay.txt" | grep -oE '[0-9]+')"
  row '`pitwall replay --max` (bundled race, JSON, 4 partitions)' '>= 300K rows/s' "$(printf "%'d" "$rate") rows/s" "$(met "$rate >= 300000")"
}

archive() {
  if ! [ -d ../shared/data/2023-british-gp-race ] || ! python3 -c 'import duckdb' 2>/dev/null; then
    row '`scripts/archive-bench.sh`' 'no slower than DuckDB' 'not run: needs ../shared/data and DuckDB for Python' '-'
    return
  fi
  need_broker
  log "scripts/archive-bench.sh"
  scripts/archive-bench.sh > "$work/archive.txt" 2>&1
  local ours duck
  ours="$(grep -oE '^best [0-9.]+ ms' "$work/archive.txt" | grep -oE '[0-9.]+' | paste -sd/ -)"
  duck="$(grep -oE 'duckdb: .* best [0-9.]+ s' "$work/archive.txt" | grep -oE '[0-9.]+ s$' | tr -d ' s' | awk '{printf "%.1f\n", $1 * 1000}' | paste -sd/ -)"
  row '`scripts/archive-bench.sh` (per-lap stats over the archived race, as written / merged)' 'no slower than DuckDB' \
    "Pitwall ${ours} ms vs DuckDB ${duck} ms" \
    "$(met "all(float(a) <= float(b) for a, b in zip('$ours'.split('/'), '$duck'.split('/')))")"
}

faults() {
  log "scripts/faults-eval.sh 1 2 3 (and the clean race)"
  scripts/faults-eval.sh 1 2 3 > "$work/faults.txt"
  local out
  out="$(python3 - target/faults-eval <<'PY'
import json, sys, os
d = sys.argv[1]
runs = [json.load(open(os.path.join(d, f"seed-{s}.json"))) for s in (1, 2, 3)]
clean = json.load(open(os.path.join(d, "clean.json")))
lap_level = {"power_loss", "drs_fault"}
parts, ok = [], True
for k in ["over_rev", "lock_up", "flat_line", "dropout", "spike", "gearbox", "power_loss", "drs_fault"]:
    ks = [x for r in runs for x in r["kinds"] if x["kind"] == k]
    found, faults = sum(x["found"] for x in ks), sum(x["faults"] for x in ks)
    good, alerts = sum(x["matching_alerts"] for x in ks), sum(x["alerts"] for x in ks)
    delay = max((x["median_delay_s"] or 0) for x in ks)
    ok &= found >= 0.9 * faults and good >= 0.9 * alerts and (k in lap_level or delay < 5)
    parts.append(f"`{k}` {found}/{faults}, {good}/{alerts}, {delay:.1f} s")
base = [r["baseline"]["precision"] or 0 for r in runs]
ok &= clean["false_per_car_hour"] <= 1
print(f"recall, precision, worst median delay pooled over seeds 1-3: {'; '.join(parts)}. "
      f"Clean race: {clean['false_alerts']} alerts ({clean['false_per_car_hour']:.2f} per car-hour). "
      f"Old score's precision at its best threshold: {min(base):.2f}-{max(base):.2f}")
print("met" if ok else "**missed**")
PY
)"
  row '`scripts/faults-eval.sh` (the bundled race, 4 faults of each kind at seeds 1-3, and clean)' \
    'per kind recall >= 0.9 at precision >= 0.9; median delay < 5 s (sample-level); clean race <= 1 false alert per car-hour' \
    "$(head -n 1 <<< "$out")" "$(tail -n 1 <<< "$out")"
}

# The broker is started here, not in a row: each row runs in a subshell (`$(...)`), and what
# it started there would outlive the script.
for r in "${rows[@]}"; do
  case "$r" in latency|throughput|subscribers|slow|dashboards|replay|archive) need_broker; break ;; esac
done

echo "| command | target | latest result | machine | commit | met? |"
echo "|---|---|---|---|---|---|"
for r in "${rows[@]}"; do
  if ! out="$("$r" 2>"$work/$r.err")"; then
    out="| $r | | failed: $(tail -n 1 "$work/$r.err") | $machine | $commit | **failed** |"
  fi
  echo "$out"
done
