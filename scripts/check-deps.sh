#!/usr/bin/env bash
# The dependency rule of ARCHITECTURE.md, checked on the source (scripts/test.sh runs it):
#  - the data path never reaches back into its outputs: server/src/ingest, engine and archive
#    import neither `flight` nor `web` (tests included);
#  - the CLI never imports server internals: `pitwall-server` is at most a dev-dependency of
#    client-cli (for its end-to-end tests), and client-cli/src never names `pitwall_server`.
# Prints each offending line and exits 1; prints one line and exits 0 when the rule holds.
set -euo pipefail
cd "$(dirname "$0")/.."

bad=0
if hits=$(grep -rnE '(crate|super)::(flight|web)\b|\bpitwall_server::(flight|web)\b' \
    server/src/ingest server/src/engine server/src/archive); then
  echo "check-deps: ingest, engine and archive must not import flight or web:" >&2
  echo "$hits" >&2
  bad=1
fi
if hits=$(grep -rn 'pitwall_server' client-cli/src); then
  echo "check-deps: client-cli/src must not use server internals (pitwall_server):" >&2
  echo "$hits" >&2
  bad=1
fi
# [dependencies] (not [dev-dependencies]) of client-cli must not name pitwall-server.
if awk '/^\[/{section=$0} section=="[dependencies]" && /^pitwall-server/' client-cli/Cargo.toml | grep -q .; then
  echo "check-deps: client-cli/Cargo.toml: pitwall-server may only be a dev-dependency" >&2
  bad=1
fi
if [ "$bad" -ne 0 ]; then exit 1; fi
echo "check-deps: ingest, engine and archive import neither flight nor web; the CLI uses no server internals"
