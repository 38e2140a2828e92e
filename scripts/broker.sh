#!/usr/bin/env bash
# A real Kafka-protocol broker for Pitwall's tests and demos: tansu 0.6.0 on loopback.
#
#   scripts/broker.sh start [--durable [DIR]]   start (memory storage, or sqlite under DIR)
#   scripts/broker.sh stop                      stop the broker this script started
#   scripts/broker.sh status                    say whether it runs; exit 1 when it does not
#
# Port: $PITWALL_KAFKA_PORT (default 19092). `start` installs tansu with cargo when it is not on
# the PATH or in ~/.cargo/bin (about 15 minutes on 2 cores, once), waits until the broker
# answers, and prints the bootstrap address (127.0.0.1:PORT) as its last line.
# State (pid, log, data dir) lives in $PITWALL_BROKER_STATE (default /tmp/pitwall-broker-PORT).
set -euo pipefail

PORT="${PITWALL_KAFKA_PORT:-19092}"
STATE="${PITWALL_BROKER_STATE:-${TMPDIR:-/tmp}/pitwall-broker-$PORT}"
TANSU_VERSION="0.6.0"
PIDFILE="$STATE/pid"
LOG="$STATE/broker.log"
URL="tcp://127.0.0.1:$PORT"

die() { echo "broker.sh: $*" >&2; exit 1; }

tansu_bin() {
  if command -v tansu >/dev/null 2>&1; then command -v tansu; return; fi
  if [ -x "$HOME/.cargo/bin/tansu" ]; then echo "$HOME/.cargo/bin/tansu"; return; fi
  return 1
}

ensure_tansu() {
  local bin
  if bin=$(tansu_bin) && "$bin" --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
    echo "$bin"; return
  fi
  echo "broker.sh: installing tansu $TANSU_VERSION with cargo (once; about 15 minutes on 2 cores)" >&2
  cargo install "tansu@$TANSU_VERSION" --locked --features libsql,dynostore >&2 \
    || die "cargo install tansu@$TANSU_VERSION failed"
  tansu_bin || die "tansu is not on the PATH after installing it"
}

running_pid() {
  [ -f "$PIDFILE" ] || return 1
  local pid; pid=$(cat "$PIDFILE")
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q "tansu" \
    && echo "$pid"
}

answers() { "$1" topic list --broker "$URL" >/dev/null 2>&1; }

start() {
  local durable="" dir=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --durable) durable=1; if [ $# -gt 1 ] && [ "${2#--}" = "$2" ]; then dir="$2"; shift; fi ;;
      *) die "unknown option $1 (usage: start [--durable [DIR]])" ;;
    esac
    shift
  done
  local bin; bin=$(ensure_tansu)
  mkdir -p "$STATE"
  if pid=$(running_pid); then
    answers "$bin" || die "a broker started earlier (pid $pid) does not answer on $URL; run stop first"
    echo "broker.sh: already running (pid $pid)" >&2
    echo "127.0.0.1:$PORT"; return
  fi
  if answers "$bin"; then die "port $PORT already has a broker this script did not start"; fi
  local storage="memory://tansu/" workdir="$STATE"
  if [ -n "$durable" ]; then
    workdir="${dir:-$STATE/data}"; mkdir -p "$workdir"
    # tansu joins even an absolute sqlite path onto its working directory: run it from there.
    storage="sqlite://tansu.db"
  fi
  (cd "$workdir" && exec "$bin" broker --listener-url "$URL" --advertised-listener-url "$URL" \
      --storage-engine "$storage" >>"$LOG" 2>&1) &
  echo $! > "$PIDFILE"
  for _ in $(seq 1 200); do
    if answers "$bin"; then
      echo "broker.sh: tansu ($storage, in $workdir) up, pid $(cat "$PIDFILE"), log $LOG" >&2
      echo "127.0.0.1:$PORT"; return
    fi
    running_pid >/dev/null || { tail -n 20 "$LOG" >&2; die "tansu exited during startup"; }
    sleep 0.1
  done
  die "tansu did not answer on $URL within 20 s (log: $LOG)"
}

stop() {
  local pid
  if ! pid=$(running_pid); then echo "broker.sh: no broker started by this script on port $PORT" >&2; rm -f "$PIDFILE"; return 0; fi
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
  [ -d "/proc/$pid" ] && kill -9 "$pid" 2>/dev/null || true
  rm -f "$PIDFILE"
  echo "broker.sh: stopped pid $pid" >&2
}

status() {
  local pid
  if pid=$(running_pid); then echo "running: pid $pid on 127.0.0.1:$PORT (log $LOG)"; else echo "not running"; return 1; fi
}

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start [--durable [DIR]] | stop | status" >&2; exit 2 ;;
esac
