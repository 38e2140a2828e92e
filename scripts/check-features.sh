#!/usr/bin/env bash
# Checks that the workspace resolves one feature set with and without dev-dependencies: then
# `cargo build --release` (the README's main job) and `cargo bench` / `cargo build --examples`
# / `cargo test` in the same profile share every compiled dependency instead of building the
# tree again. A difference names the crate and the features to add to proto/Cargo.toml's
# alignment list (or to the workspace dependency).
set -euo pipefail
cd "$(dirname "$0")/.."
tree() { cargo tree --workspace --locked -e "$1" -f '{p} {f}' --prefix none | sed 's/ (\*)$//' | sort -u; }
nodev=$(tree normal,build)
dev=$(tree normal,build,dev)
# Crates from crates.io in both trees whose features differ (the workspace's own crates, which
# print their path, are left out: the server's `testing` feature recompiles only the server).
diff=$(comm -13 <(echo "$nodev") <(echo "$dev") | grep -v ' (/' | while read -r name version features; do
  if echo "$nodev" | grep -q "^$name $version "; then
    echo "$name $version: with dev-dependencies [$features], without [$(echo "$nodev" | grep "^$name $version " | cut -d' ' -f3-)]"
  fi
done)
if [ -n "$diff" ]; then
  echo "check-features: dev-dependencies change the features of crates the binaries use:" >&2
  echo "$diff" >&2
  exit 1
fi
echo "check-features: one feature set with and without dev-dependencies" >&2
