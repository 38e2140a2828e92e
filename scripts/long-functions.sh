#!/usr/bin/env bash
# The longest functions of the workspace (default: ten), by clippy's `too_many_lines` count
# (lines of code: blank lines and comments left out), longest first:
#   scripts/long-functions.sh [N]
# The lints (clippy.toml) keep every function at 120 or fewer; this lists where the next
# split would go. It runs clippy with a threshold of 40 in a scratch config directory.
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-10}"
conf="$(mktemp -d)"
trap 'rm -rf "$conf"' EXIT
echo 'too-many-lines-threshold = 40' > "$conf/clippy.toml"
# clippy only reports on crates it checks again: touch the members' roots.
touch server/src/lib.rs client-cli/src/lib.rs proto/src/lib.rs
CLIPPY_CONF_DIR="$conf" cargo clippy --workspace --all-targets --quiet --message-format=json \
    -- -W clippy::too_many_lines 2>/dev/null |
  python3 -c '
import json, re, sys
seen = {}
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    msg = m.get("message") or {}
    if (msg.get("code") or {}).get("code") != "clippy::too_many_lines":
        continue
    lines = int(re.search(r"\((\d+)/", msg["message"]).group(1))
    span = next(s for s in msg["spans"] if s["is_primary"])
    text = span["text"][0]["text"].strip() if span["text"] else ""
    name = re.search(r"fn\s+(\w+)", text)
    seen[(span["file_name"], span["line_start"])] = (lines, name.group(1) if name else "?")
rows = sorted(((l, f, ln, nm) for (f, ln), (l, nm) in seen.items()), reverse=True)
for l, f, ln, nm in rows[:int(sys.argv[1])]:
    print(f"{l:5d}  {f}:{ln}  {nm}")
' "$n"
