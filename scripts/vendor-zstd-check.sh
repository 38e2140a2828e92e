#!/usr/bin/env bash
# Checks that vendor/zstd is the published zstd crate plus only the documented patch:
#  - every vendored file but Cargo.toml, src/bulk/compressor.rs and our own notes
#    (PITWALL.md, UPSTREAM.md, upstream.patch) is byte for byte the published one;
#  - Cargo.toml only drops lines (the examples, tests and dev-dependencies left out);
#  - src/bulk/compressor.rs is the published file with vendor/zstd/upstream.patch applied
#    (the patch offered upstream), plus the one doc-comment note that points here;
#  - the patch's own tests pass on the published crate with the patch applied: `new` makes no
#    compression context (what parquet-rs's ZSTDCodec::new, made for every zstd column chunk
#    it reads, calls), the first compression makes it with the level asked for.
# Fetches the published crate from crates.io (or cargo's cache). Exit 1 on any difference.
set -euo pipefail
cd "$(dirname "$0")/.."
version="$(sed -n 's/^version = "\(.*\)"/\1/p' vendor/zstd/Cargo.toml | head -n 1)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cached="$(ls ~/.cargo/registry/cache/*/zstd-"$version".crate 2>/dev/null | head -n 1 || true)"
if [ -n "$cached" ]; then
  cp "$cached" "$work/zstd.crate"
else
  curl -sSfL -o "$work/zstd.crate" "https://static.crates.io/crates/zstd/$version/download"
fi
tar xzf "$work/zstd.crate" -C "$work"
up="$work/zstd-$version"
fail=0
while IFS= read -r f; do
  case "$f" in
    Cargo.toml|src/bulk/compressor.rs|PITWALL.md|UPSTREAM.md|upstream.patch) continue ;;
  esac
  if ! cmp -s "vendor/zstd/$f" "$up/$f"; then echo "DIFF $f (not the published $version)"; fail=1; fi
done < <(cd vendor/zstd && find . -type f | sed 's|^\./||' | sort)
# Cargo.toml: every vendored line is a published line, in the same order.
if ! diff "$up/Cargo.toml" vendor/zstd/Cargo.toml | grep -q '^>'; then
  echo "ok   Cargo.toml only leaves out published lines"
else
  echo "DIFF Cargo.toml adds or changes lines"; fail=1
fi
cp "$up/src/bulk/compressor.rs" "$work/patched.rs"
patch -s "$work/patched.rs" vendor/zstd/upstream.patch
python3 - "$work/patched.rs" vendor/zstd/src/bulk/compressor.rs <<'PY' || fail=1
import sys
note = "///\n/// (Pitwall's copy: the zstd context is made on first use, not by `new`. See\n/// `vendor/zstd/PITWALL.md`.)\n"
patched, vendored = (open(p).read() for p in sys.argv[1:])
if vendored.replace(note, "", 1) == patched and note in vendored:
    print("ok   src/bulk/compressor.rs = published + upstream.patch (+ the note pointing to PITWALL.md)")
else:
    print("DIFF src/bulk/compressor.rs is not published + upstream.patch")
    sys.exit(1)
PY
[ "$fail" -eq 0 ] || exit 1
echo "vendor/zstd is zstd $version with only the documented patch"
# The patch's tests, on the published crate (its dev-dependencies included) with the patch.
patch -s "$up/src/bulk/compressor.rs" vendor/zstd/upstream.patch
# Other unit tests of the crate include files the published package leaves out: empty
# placeholders let the test binary compile; only the patch's tests run.
mkdir -p "$up/assets" "$up/zstd-safe/zstd-sys/src"
touch "$up/assets/example.txt.zst" "$up/zstd-safe/zstd-sys/src/bindings_zstd.rs"
CARGO_TARGET_DIR="$PWD/target/vendor-zstd" cargo test -q --manifest-path "$up/Cargo.toml" --lib \
  -- bulk::compressor::lazy_context_tests 2>&1 | grep -E 'test result|panicked|error' >&2
echo "upstream.patch's tests pass on zstd $version"
