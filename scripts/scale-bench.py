#!/usr/bin/env python3
"""Several servers in one consumer group (README, "Running several servers"): two figures.

  scripts/scale-bench.py throughput [--cars 200] [--laps 1-20]
  scripts/scale-bench.py pause [--kills 10]

The servers of a group share one archive (`--shared-archive`), as in docker-compose.yml.

throughput: 1, 2 and 3 release `pitwall-server`s in one group on a 6-partition topic, each
pinned to one core with taskset (servers 1 and 3 share core 0 on a 2-core machine). Once the
group is stable, `pitwall replay --max` publishes the race with --cars cars; the figure is the
rows of that backlog over the time from the first publish to the last row ingested, summed over
the servers. The producer runs on the same machine (its CPU is shared with the servers).

pause: two servers, the race replayed at 20x in a loop; one is killed with SIGKILL, and the
pause is the time until the other owns every partition and ingests rows again; the killed one
is started again and the group waits to be stable before the next kill.

Needs `cargo build --release --bins`; starts its own broker (scripts/broker.sh) on a spare
port. Prints one JSON object per figure.
"""

import argparse
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release")
GROUP_OPTS = [
    "--instance-id", "off",
    "--kafka-opt", "session.timeout.ms=6000",
    "--kafka-opt", "heartbeat.interval.ms=500",
    "--kafka-opt", "max.poll.interval.ms=12000",
]


def log(*a):
    print("scale-bench:", *a, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server of `group`, writing its part of the group's shared archive (`--shared-archive`)."""

    def __init__(self, work, name, broker, topic, group, core):
        self.port = free_port()
        self.log = open(os.path.join(work, f"{name}.log"), "ab")
        argv = [
            os.path.join(BIN, "pitwall-server"),
            "--brokers", broker, "--topic", topic, "--group", group,
            "--flight-addr", f"127.0.0.1:{self.port}", "--http-addr", "off",
            "--data-dir", os.path.join(work, f"archive-{group}"), "--shared-archive", *GROUP_OPTS,
        ]
        if core is not None:
            argv = ["taskset", "-c", str(core)] + argv
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=self.log)

    def stats(self):
        out = subprocess.run(
            [os.path.join(BIN, "pitwall"), "--server", f"http://127.0.0.1:{self.port}", "stats"],
            capture_output=True, text=True, timeout=20,
        )
        if out.returncode != 0:
            return None
        rows = int(re.search(r"ingested:\s+(\d+) rows", out.stdout).group(1))
        # "partitions:    0, 1, 2" (maybe followed by "; rejoined the group N time(s)").
        m = re.search(r"partitions:\s+(\d[\d, ]*)", out.stdout)
        parts = [int(p) for p in m.group(1).split(",") if p.strip()] if m else []
        return rows, parts

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill9()


def wait(what, cond, timeout=180, every=0.2):
    started = time.time()
    while True:
        v = cond()
        if v:
            return v
        if time.time() - started > timeout:
            raise SystemExit(f"scale-bench: {what}: not after {timeout} s")
        time.sleep(every)


def stable(servers):
    """Every server owns partitions and together they own the 6, once each."""
    s = [x.stats() for x in servers]
    if any(x is None or not x[1] for x in s):
        return None
    owned = sorted(p for x in s for p in x[1])
    return s if owned == list(range(6)) else None


def replay(broker, topic, *args):
    return subprocess.Popen(
        [os.path.join(BIN, "pitwall"), "replay", "--brokers", broker, "--topic", topic,
         "--partitions", "6", "--quiet", *args],
        stdout=subprocess.DEVNULL,
    )


def create_topic(broker, topic):
    # A replay of nothing would not create it; a short one does (and is consumed first).
    replay(broker, topic, "--laps", "1-1", "--cars", "1", "--max").wait()


def throughput(args, broker, work):
    figures = {}
    for n in (1, 2, 3):
        topic, group = f"scale-{n}-{random.randrange(1 << 30)}", f"g{n}"
        create_topic(broker, topic)
        servers = [Server(work, f"t{n}-{i}", broker, topic, group, i % 2) for i in range(n)]
        base = wait(f"{n} servers stable", lambda: stable(servers))
        before = sum(r for r, _ in base)
        t0 = time.time()
        p = replay(broker, topic, "--max", "--cars", str(args.cars), "--laps", args.laps)
        p.wait()
        produced_at = time.time() - t0
        # The backlog's rows: what the servers ingest until nothing more comes for 3 s.
        last, last_change, total = -1, time.time(), 0
        while time.time() - last_change < 3:
            s = [x.stats() for x in servers]
            total = sum(x[0] for x in s if x) - before
            if total != last:
                last, last_change = total, time.time()
            time.sleep(0.1)
        elapsed = last_change - t0
        figures[n] = {"rows": total, "seconds": round(elapsed, 2),
                      "rows_per_s": round(total / elapsed), "published_in_s": round(produced_at, 2)}
        log(f"{n} server(s): {figures[n]}")
        for x in servers:
            x.stop()
    one = figures[1]["rows_per_s"]
    print(json.dumps({"figure": "throughput", "cars": args.cars, "laps": args.laps,
                      "servers": figures,
                      "ratio": {n: round(f["rows_per_s"] / one, 2) for n, f in figures.items()}}))


def pause(args, broker, work):
    topic, group = f"pause-{random.randrange(1 << 30)}", "gp"
    create_topic(broker, topic)
    feed = replay(broker, topic, "--speed", "20", "--loop")
    servers = [Server(work, f"p{i}", broker, topic, group, None) for i in range(2)]
    pauses = []
    try:
        for k in range(args.kills):
            wait("two servers stable", lambda: stable(servers))
            victim = random.randrange(2)
            survivor = servers[1 - victim]
            rows_before = survivor.stats()[0]
            servers[victim].kill9()
            t0 = time.time()

            def resumed():
                s = survivor.stats()
                return s and s[1] == list(range(6)) and s[0] > rows_before
            wait("the survivor to own every partition", resumed, timeout=300, every=0.1)
            pauses.append(time.time() - t0)
            log(f"kill {k + 1}: {pauses[-1]:.1f} s")
            servers[victim] = Server(work, f"p{victim}-{k}", broker, topic, group, None)
    finally:
        feed.terminate()
        for x in servers:
            x.stop()
    print(json.dumps({"figure": "rebalance_pause", "kills": len(pauses),
                      "p50_s": round(statistics.median(pauses), 1), "max_s": round(max(pauses), 1),
                      "all_s": [round(p, 1) for p in pauses]}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("figure", choices=["throughput", "pause"])
    ap.add_argument("--cars", type=int, default=200)
    ap.add_argument("--laps", default="1-20")
    ap.add_argument("--kills", type=int, default=10)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="pitwall-scale-")
    env = dict(os.environ, PITWALL_KAFKA_PORT=str(free_port()),
               PITWALL_BROKER_STATE=os.path.join(work, "broker"))
    broker = subprocess.run([os.path.join(ROOT, "scripts/broker.sh"), "start"], env=env,
                            capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    log(f"broker {broker}, work {work}")
    try:
        (throughput if args.figure == "throughput" else pause)(args, broker, work)
    finally:
        subprocess.run([os.path.join(ROOT, "scripts/broker.sh"), "stop"], env=env,
                       capture_output=True)


if __name__ == "__main__":
    main()
