#!/usr/bin/env bash
# Minimal reproduction of a tansu 0.6.0 group coordinator fault (issue 24, point 0), kept so
# that it can be re-checked against a newer tansu.
#
#   scripts/repro-idle-group.sh [--static]
#
# A server is killed with SIGKILL five times, 1-3 s apart, while a 6-car replay runs into a
# new 4-partition topic; each time it is started again at once with the same flags. With
# dynamic membership (`--instance-id off`, the default here) the last server usually joins a
# group whose dead leader's assignment tansu keeps: its JoinGroup makes it leader, but tansu's
# SyncGroup in the "formed" state ignores the new leader's assignments (`let _ = assignments;`
# in tansu-broker's coordinator/group/administrator.rs) and answers with the old map, where
# the new member has nothing. Heartbeats then succeed, so nothing ever rebalances: 0 rows
# ingested for good. Pitwall works around it twice: static membership by default (the
# restarted server takes its old member's place: `--static` here shows that), and a watchdog
# that warns and rejoins the group after 75 s without partitions (the script prints the
# "partitions:" line of `pitwall stats`, which shows the rejoin).
#
# Needs `cargo build --bins` first; starts its own broker on a spare port.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${CARGO_TARGET_DIR:-target}/debug
MEMBERSHIP=(--instance-id off)
[ "${1:-}" = "--static" ] && MEMBERSHIP=()
WORK=$(mktemp -d)
export PITWALL_KAFKA_PORT=$((21000 + RANDOM % 1000)) PITWALL_BROKER_STATE="$WORK/broker"
BROKER=$(scripts/broker.sh start | tail -n 1)
FLIGHT=127.0.0.1:$((22000 + RANDOM % 1000))
TOPIC=idle-$RANDOM
trap 'kill -9 $(cat "$WORK/pid") 2>/dev/null || true; scripts/broker.sh stop >/dev/null 2>&1 || true' EXIT

start() {
  "$BIN/pitwall-server" --brokers "$BROKER" --topic "$TOPIC" --data-dir "$WORK/data" \
    --flight-addr "$FLIGHT" --http-addr off "${MEMBERSHIP[@]}" >>"$WORK/server.log" 2>&1 &
  echo $! >"$WORK/pid"
  until "$BIN/pitwall" --server "http://$FLIGHT" queries >/dev/null 2>&1; do sleep 0.1; done
}

start
"$BIN/pitwall" replay --brokers "$BROKER" --topic "$TOPIC" --partitions 4 --cars 6 \
  --speed 500 --quiet &
REPLAY=$!
for kill in 1 2 3 4 5; do
  sleep $((1 + RANDOM % 3))
  kill -9 "$(cat "$WORK/pid")"; wait "$(cat "$WORK/pid")" 2>/dev/null || true
  echo "kill -9 #$kill"
  start
done
wait $REPLAY
for after in 30 60 90 120; do
  sleep 30
  echo "== $after s after the replay"
  "$BIN/pitwall" --server "http://$FLIGHT" stats | grep -E "^(ingested|partitions):"
done
