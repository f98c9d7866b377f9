#!/usr/bin/env bash
# README command 2: the whole test suite, as CI runs it.
# Installs what cargo cannot (redis-server, mosquitto-clients, chromium and
# chromium-driver, a C linker) when missing, then: rustfmt check, clippy with warnings as errors, build, every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# Outside the clone so reruns (and fresh clones) reuse compiled dependencies.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/fieldline/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v mosquitto_pub >/dev/null || need+=(mosquitto-clients)
command -v cc >/dev/null || need+=(gcc libc6-dev)
# The web UI's end-to-end tests drive a real headless Chromium over WebDriver.
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
# The .deb install test builds a throwaway Debian root (tests/it/package.rs).
command -v debootstrap >/dev/null || need+=(debootstrap)
if ((${#need[@]})); then
  echo "==> installing ${need[*]}"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
  elif command -v sudo >/dev/null; then
    sudo apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
  else
    echo "error: missing ${need[*]}; install them with: apt-get install -y ${need[*]}" >&2
    exit 1
  fi
fi
if ! command -v cargo >/dev/null; then
  echo "error: cargo not found; install Rust (1.88 or newer) with rustup: https://rustup.rs" >&2
  exit 1
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo build (binaries used by the end-to-end tests)"
cargo build --workspace --bins --locked
echo "==> cargo test"
cargo test --workspace --locked
