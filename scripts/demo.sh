#!/usr/bin/env bash
# README command 1: a fleet server (embedded store, no Redis), two agents and simulated
# sensors on this machine.
# Builds the binaries, then runs `fieldline-fleet demo` (embedded store, no Redis
# needed), which prints the web UI's URL with a login, the API URLs and the admin token.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/fieldline/target}"

if ! command -v cargo >/dev/null; then
  echo "error: cargo not found; install Rust (1.88 or newer) with rustup: https://rustup.rs" >&2
  exit 1
fi
cargo build --locked -p fieldline-agent -p fieldline-fleet
exec "$CARGO_TARGET_DIR/debug/fieldline-fleet" demo "$@"
