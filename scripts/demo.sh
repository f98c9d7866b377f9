#!/usr/bin/env bash
# README command 1: a fleet server, two agents and simulated sensors on this machine.
# Builds the binaries, then runs `fieldline-fleet demo`, which prints the URLs.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/fieldline/target}"

if ! command -v cargo >/dev/null; then
  echo "error: cargo not found; install Rust (1.88 or newer) with rustup: https://rustup.rs" >&2
  exit 1
fi
if ! command -v redis-server >/dev/null; then
  echo "error: redis-server not found; install it with: sudo apt-get install -y redis-server" >&2
  echo "       (the demo starts its own private instance on a free port and leaves any other alone)" >&2
  exit 1
fi
cargo build --locked -p fieldline-agent -p fieldline-fleet
exec "$CARGO_TARGET_DIR/debug/fieldline-fleet" demo "$@"
