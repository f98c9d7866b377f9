#!/usr/bin/env bash
# Cross-builds the agent for the gateway targets without docker and smoke-tests it
# under qemu-user: start, accept MQTT, close a window, uplink it through a real fleet
# server into a real redis-server, stop cleanly on SIGTERM.
#
#   scripts/cross-test.sh [aarch64|armv7|all] [--unit-tests]
#
# Needs Debian bookworm (amd64) with Debian's Rust 1.96 and ARM sysroots; run once as root:
#   dpkg --add-architecture arm64      # not armhf: its stale index breaks apt here
#   apt-get update
#   apt-get install -y --no-install-recommends rustc-web cargo-web libstd-rust-web-dev:arm64 \
#     rust-web-src gcc-aarch64-linux-gnu libc6-dev-arm64-cross gcc-arm-linux-gnueabihf \
#     libc6-dev-armhf-cross qemu-user-static redis-server mosquitto-clients
# aarch64 links against Debian's prebuilt std; armv7 builds std from rust-web-src.
# Not part of scripts/test.sh (CI): from cold it takes 40-75 min on 2 shared cores, far
# over CI's budget (docs/BENCHMARKS.md); run it before a release or after dependency
# changes. CROSS_TARGET_DIR / CARGO_TARGET_DIR_HOST choose the target dirs.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
which="${1:-all}"
unit=0
[ "${2:-}" = --unit-tests ] && unit=1

# Debian's toolchain, not rustup's shims (those lack the ARM std: E0463 "can't find crate for core").
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
cargo=/usr/bin/cargo
[ -x "$cargo" ] && "$RUSTC" -V | grep -q '^rustc 1\.9[6-9]' || {
  echo "error: Debian's rustc-web 1.96 is not installed (see the header of $0)" >&2; exit 1; }
export CARGO_TARGET_DIR="${CROSS_TARGET_DIR:-$HOME/.cache/fieldline/cross-target}"
host_target="${CARGO_TARGET_DIR_HOST:-$HOME/.cache/fieldline/target}"

# Linkers and qemu runners. LD_LIBRARY_PATH matters: libstd-rust-web-dev:arm64 pulls a
# newer libc6:arm64 than the cross loader's, and the mix hangs thread creation.
cfg=(
  --config 'target.aarch64-unknown-linux-gnu.linker="aarch64-linux-gnu-gcc"'
  --config 'target.aarch64-unknown-linux-gnu.runner=["qemu-aarch64-static","-L","/usr/aarch64-linux-gnu","-E","LD_LIBRARY_PATH=/usr/aarch64-linux-gnu/lib"]'
  --config 'target.armv7-unknown-linux-gnueabihf.linker="arm-linux-gnueabihf-gcc"'
  --config 'target.armv7-unknown-linux-gnueabihf.runner=["qemu-arm-static","-L","/usr/arm-linux-gnueabihf","-E","LD_LIBRARY_PATH=/usr/arm-linux-gnueabihf/lib"]'
)

build() { # triple, extra cargo args...
  local triple="$1"; shift
  (cd "$root" && "$cargo" "${cfg[@]}" build --locked --profile gateway -p fieldline-agent --target "$triple" "$@")
  if ((unit)); then
    (cd "$root" && "$cargo" "${cfg[@]}" test --locked --release -p fieldline-common -p fieldline-agent --lib --target "$triple" "$@")
  fi
}

smoke() { # triple, qemu, sysroot
  local triple="$1" qemu="$2" sysroot="$3"
  local bin="$CARGO_TARGET_DIR/$triple/gateway/fieldline-agent"
  local dir; dir="$(mktemp -d)"
  local pids=()
  cleanup() { { kill -9 "${pids[@]}"; wait "${pids[@]}"; } 2>/dev/null || true; rm -rf "$dir"; }
  trap cleanup RETURN
  port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
  local rport fport mport
  rport="$(port)"; fport="$(port)"; mport="$(port)"
  redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" >"$dir/redis.log" 2>&1 &
  pids+=($!)
  sleep 0.5
  local boot="cross-bootstrap-$RANDOM$RANDOM$RANDOM"
  FIELDLINE_ADMIN_TOKEN="cross-admin-$RANDOM$RANDOM$RANDOM" FIELDLINE_BOOTSTRAP_TOKEN="$boot" \
    "$host_target/debug/fieldline-fleet" run --listen "127.0.0.1:$fport" --redis-url "redis://127.0.0.1:$rport/" >"$dir/fleet.log" 2>&1 &
  pids+=($!)
  cat >"$dir/agent.toml" <<TOML
[agent]
id = "cross-$triple"
data_dir = "$dir/agent"
[mqtt]
listen = "127.0.0.1:$mport"
[window]
size = "1s"
max_out_of_orderness = "100ms"
idle_timeout = "500ms"
[uplink]
fleet_url = "http://127.0.0.1:$fport"
heartbeat_interval = "500ms"
TOML
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$fport/healthz" >/dev/null && break; sleep 0.2; done
  # Enrollment runs on the emulated CPU too: it exercises the ARM build's HTTP client.
  "$qemu" -L "$sysroot" -E "LD_LIBRARY_PATH=$sysroot/lib" "$bin" enroll --config "$dir/agent.toml" --token "$boot" >"$dir/enroll.log" 2>&1 \
    || { echo "SMOKE FAILED for $triple: enroll"; cat "$dir/enroll.log" "$dir/fleet.log"; return 1; }
  "$qemu" -L "$sysroot" -E "LD_LIBRARY_PATH=$sysroot/lib" "$bin" run --config "$dir/agent.toml" >"$dir/agent.log" 2>&1 &
  local agent=$!
  pids+=("$agent")
  for _ in $(seq 100); do mosquitto_pub -p "$mport" -t sensors/probe/temp -m 21.5 2>/dev/null && break; sleep 0.2; done
  local found=""
  for _ in $(seq 100); do
    for p in 0 1 2 3; do
      if redis-cli -p "$rport" XRANGE "fl:{p$p}:records" - + | grep -qx 'probe/temp'; then found=1; fi
    done
    [ -n "$found" ] && break
    sleep 0.2
  done
  kill -TERM "$agent"
  local code=0
  wait "$agent" || code=$?
  if [ -z "$found" ] || [ "$code" != 0 ] || ! grep -q "state flushed" "$dir/agent.log"; then
    echo "SMOKE FAILED for $triple (window in redis: ${found:-no}, exit code $code)"; cat "$dir/agent.log"; return 1
  fi
  echo "smoke ok: $triple agent under $qemu: MQTT in, window result in Redis, clean exit; stripped size $(stat -c %s "$bin") bytes"
}

# The fleet server runs on the host: built with the host toolchain into the host target
# dir (not Debian's rustc and the cross target dir exported above).
[ -x "$host_target/debug/fieldline-fleet" ] || (cd "$root" && env -u RUSTC -u RUSTDOC \
  CARGO_TARGET_DIR="$host_target" cargo build --locked -p fieldline-fleet)
if [ "$which" = aarch64 ] || [ "$which" = all ]; then
  build aarch64-unknown-linux-gnu
  smoke aarch64-unknown-linux-gnu qemu-aarch64-static /usr/aarch64-linux-gnu
fi
if [ "$which" = armv7 ] || [ "$which" = all ]; then
  RUSTC_BOOTSTRAP=1 build armv7-unknown-linux-gnueabihf -Zbuild-std=std,panic_abort
  smoke armv7-unknown-linux-gnueabihf qemu-arm-static /usr/arm-linux-gnueabihf
fi
