#!/usr/bin/env bash
# Runs every test of the workspace, from a fresh clone, with nothing else running:
#  - installs tansu 0.6.0 when missing (cached in ~/.cargo/bin; about 15 minutes once),
#  - installs Debian's chromium and chromium-driver when missing (the dashboard tests drive a
#    real browser over WebDriver; apt, no browser download),
#  - starts it on a free loopback port (memory storage) unless PITWALL_TEST_KAFKA names a
#    broker to use instead (any real Kafka, e.g. the one of docker-compose.yml),
#  - checks the lints (`cargo clippy --all-targets -D warnings`), the dependency rule of
#    ARCHITECTURE.md (scripts/check-deps.sh) and that dev-dependencies change no feature of
#    the shipped dependency tree (scripts/check-features.sh), and that vendor/zstd is the
#    published crate plus the documented patch, whose tests pass (scripts/vendor-zstd-check.sh),
#  - runs `cargo test --workspace`: one build of the dependency tree, which also builds both
#    binaries (each package has integration tests, and cargo builds a package's binaries for
#    them); the end-to-end tests run those,
#  - stops the broker it started.
set -euo pipefail
cd "$(dirname "$0")/.."

# .cargo/config.toml builds for x86-64-v3; a CPU without AVX2 gets the plain x86-64 baseline.
if [ "$(uname -m)" = x86_64 ] && ! grep -qw avx2 /proc/cpuinfo 2>/dev/null; then
  export RUSTFLAGS="${RUSTFLAGS:--C target-cpu=x86-64}"
  export CFLAGS_x86_64_unknown_linux_gnu="${CFLAGS_x86_64_unknown_linux_gnu:--march=x86-64}"
fi

# The dashboard tests need a real Chromium and its WebDriver, from Debian's packages.
if ! [ -x /usr/bin/chromium ] || ! [ -x /usr/bin/chromedriver ]; then
  echo "test.sh: installing chromium and chromium-driver (apt-get)" >&2
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  if ! { $sudo_cmd apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq chromium chromium-driver; } >&2; then
    echo "test.sh: chromium / chromium-driver could not be installed with apt-get; the dashboard tests will fail" >&2
  fi
fi

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if [ -z "${PITWALL_TEST_KAFKA:-}" ]; then
  port="${PITWALL_KAFKA_PORT:-19092}"
  while port_in_use "$port"; do port=$((port + 1)); done
  export PITWALL_KAFKA_PORT="$port"
  export PITWALL_BROKER_STATE="$(mktemp -d -t pitwall-test-broker.XXXXXX)"
  trap 'scripts/broker.sh stop; rm -rf "$PITWALL_BROKER_STATE"' EXIT
  PITWALL_TEST_KAFKA="$(scripts/broker.sh start | tail -n 1)"
  export PITWALL_TEST_KAFKA
fi
echo "test.sh: broker $PITWALL_TEST_KAFKA" >&2

cargo clippy --workspace --all-targets --locked -- -D warnings
scripts/check-deps.sh
scripts/check-features.sh
scripts/vendor-zstd-check.sh
cargo test --workspace --locked "$@"
