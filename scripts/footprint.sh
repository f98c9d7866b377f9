#!/usr/bin/env bash
# Measures the agent's footprint: stripped binary size, idle RSS, and peak RSS while
# sensors publish ~RATE msg/s over MQTT for SECONDS; Mosquitto (with one subscriber,
# the agent's equivalent of a consumer) under the same load is the baseline.
#
#   scripts/footprint.sh [AGENT_BINARY] [RATE] [SECONDS] [RUNNER...]
#
# RUNNER runs the agent binary, e.g. "qemu-aarch64-static -L /usr/aarch64-linux-gnu -E
# LD_LIBRARY_PATH=/usr/aarch64-linux-gnu/lib" for an ARM build under emulation.
# The load generator is `fieldline-agent simulate` (host build, rumqttc, QoS 1).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
host="${CARGO_TARGET_DIR:-$HOME/.cache/fieldline/target}"
agent="${1:-$host/gateway/fieldline-agent}"
rate="${2:-10000}"
secs="${3:-20}"
shift $(( $# < 3 ? $# : 3 )) || true
runner=("$@")
sim="$host/debug/fieldline-agent"
[ -x "$sim" ] || (cd "$root" && cargo build -q -p fieldline-agent)

port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
dir="$(mktemp -d)"
pids=()
trap '{ kill -9 "${pids[@]}"; wait "${pids[@]}"; } 2>/dev/null || true; rm -rf "$dir"' EXIT

# 100 devices x 10 metrics per round; the interval sets the rate.
devices="$(seq -s, -f 'd%g' 1 100)"
metrics="m0,m1,m2,m3,m4,m5,m6,m7,m8,m9"
interval_ms=$(( 1000 * 1000 / rate ))

load() { # port, label, pid to watch
  local p="$1" label="$2" pid="$3" peak=0 r
  local rounds=$(( secs * 1000 / interval_ms ))
  "$sim" simulate --broker "127.0.0.1:$p" --devices "$devices" --metrics "$metrics" \
    --interval "${interval_ms}ms" --rounds "$rounds" >"$dir/sim-$label.log" 2>&1 &
  local simpid=$!
  local start=$SECONDS
  while kill -0 "$simpid" 2>/dev/null; do
    r="$(rss_kb "$pid")"; ((r > peak)) && peak=$r
    sleep 0.2
  done
  local took=$(( SECONDS - start ))
  local sent; sent="$(grep -o 'published=[0-9]*' "$dir/sim-$label.log" | cut -d= -f2)"
  echo "$peak $took ${sent:-0}"
}

mport="$(port)"
cat >"$dir/agent.toml" <<TOML
[agent]
id = "footprint"
data_dir = "$dir/agent"
[mqtt]
listen = "127.0.0.1:$mport"
[uplink]
fleet_url = "http://127.0.0.1:9"
TOML
"${runner[@]}" "$agent" run --config "$dir/agent.toml" >"$dir/agent.log" 2>&1 &
apid=$!
pids+=("$apid")
sleep 5
# shellcheck disable=SC2009
real_pid="$(pgrep -P "$apid" -f fieldline-agent || echo "$apid")"
idle="$(rss_kb "$real_pid")"
read -r apeak atook asent < <(load "$mport" agent "$real_pid")

bport="$(port)"
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$bport" >"$dir/mosquitto.conf"
mosquitto -c "$dir/mosquitto.conf" >"$dir/mosquitto.log" 2>&1 &
mpid=$!
pids+=("$mpid")
sleep 0.5
mosquitto_sub -p "$bport" -t 'sensors/#' >/dev/null &
pids+=($!)
sleep 0.5
midle="$(rss_kb "$mpid")"
read -r mpeak mtook msent < <(load "$bport" mosquitto "$mpid")

size="$(stat -c %s "$agent")"
echo "| what | fieldline-agent | mosquitto + 1 subscriber (baseline) |"
echo "|---|---|---|"
echo "| binary size (stripped) | $(( size / 1024 )) KiB | |"
echo "| idle RSS | $(( idle / 1024 )) MiB | $(( midle / 1024 )) MiB |"
echo "| peak RSS at ~$rate msg/s for ${secs}s | $(( apeak / 1024 )) MiB ($asent msgs in ${atook}s) | $(( mpeak / 1024 )) MiB ($msent msgs in ${mtook}s) |"
