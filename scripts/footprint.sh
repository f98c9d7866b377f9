#!/usr/bin/env bash
# Measures the agent's footprint: stripped binary size, idle RSS, and peak RSS while
# sensors publish ~RATE msg/s over MQTT for SECONDS; Mosquitto (with one subscriber,
# the agent's equivalent of a consumer) under the same load is the baseline.
#
#   scripts/footprint.sh [AGENT_BINARY] [RATE] [SECONDS] [RUNNER...]
#
# RUNNER runs the agent binary, e.g. "qemu-aarch64-static -L /usr/aarch64-linux-gnu -E
# LD_LIBRARY_PATH=/usr/aarch64-linux-gnu/lib" for an ARM build under emulation.
# The load generator is `fieldline-agent simulate` (host build, rumqttc, QoS 1). The
# agent runs with the default config (compare settings with FIELDLINE_* overrides in
# the environment, e.g. FIELDLINE_STORAGE__CACHE_CAPACITY_BYTES=4194304) and uplinks to
# a real fleet server (embedded store), whose view of the agent's counters proves no
# reading was lost: received = decoded = published. The peak covers the load and the
# SETTLE seconds after it (default 15), which include the first checkpoint (30 s after
# start): compacting the ingest log is the agent's largest allocation burst.
# FOOTPRINT_SMAPS=FILE keeps /proc/PID/smaps of the agent at its peak.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
host="${CARGO_TARGET_DIR:-$HOME/.cache/fieldline/target}"
agent="${1:-$host/gateway/fieldline-agent}"
rate="${2:-10000}"
secs="${3:-20}"
settle="${SETTLE:-15}"
shift $(( $# < 3 ? $# : 3 )) || true
runner=("$@")
sim="$host/debug/fieldline-agent"
fleet="$host/debug/fieldline-fleet"
[ -x "$sim" ] && [ -x "$fleet" ] || (cd "$root" && cargo build -q -p fieldline-agent -p fieldline-fleet)

port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
status_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
dir="$(mktemp -d)"
pids=()
trap '{ kill -9 "${pids[@]}"; wait "${pids[@]}"; } 2>/dev/null || true; rm -rf "$dir"' EXIT

# 100 devices x 10 metrics per round; the interval sets the rate.
devices="$(seq -s, -f 'd%g' 1 100)"
metrics="m0,m1,m2,m3,m4,m5,m6,m7,m8,m9"
interval_ms=$(( 1000 * 1000 / rate ))

# Prints "peak_rss_kb anon_kb file_kb threads seconds published" for one load run.
load() { # port, label, pid to watch
  local p="$1" label="$2" pid="$3" peak=0 anon=0 file=0 threads=0
  local rounds=$(( secs * 1000 / interval_ms ))
  "$sim" simulate --broker "127.0.0.1:$p" --devices "$devices" --metrics "$metrics" \
    --interval "${interval_ms}ms" --rounds "$rounds" >"$dir/sim-$label.log" 2>&1 &
  local simpid=$!
  local start=$SECONDS
  sample() { # keeps the peak and what made it up
    local r; r="$(status_kb "$pid" VmRSS)"
    if ((r > peak)); then
      peak=$r anon="$(status_kb "$pid" RssAnon)" file="$(status_kb "$pid" RssFile)"
      threads="$(status_kb "$pid" Threads)"
      [ -n "${FOOTPRINT_SMAPS:-}" ] && [ "$label" = agent ] && cp "/proc/$pid/smaps" "$FOOTPRINT_SMAPS" 2>/dev/null
    fi
    sleep 0.2
  }
  while kill -0 "$simpid" 2>/dev/null; do sample; done
  local took=$(( SECONDS - start ))
  local until=$(( SECONDS + settle ))
  while ((SECONDS < until)); do sample; done
  local sent; sent="$(grep -o 'published=[0-9]*' "$dir/sim-$label.log" | cut -d= -f2)"
  echo "$peak $anon $file $threads $took ${sent:-0}"
}

fport="$(port)" mport="$(port)"
admin="footprint-admin-$RANDOM$RANDOM$RANDOM" boot="footprint-boot-$RANDOM$RANDOM$RANDOM"
FIELDLINE_ADMIN_TOKEN="$admin" FIELDLINE_BOOTSTRAP_TOKEN="$boot" \
  "$fleet" run --listen "127.0.0.1:$fport" --data-dir "$dir/fleet" >"$dir/fleet.log" 2>&1 &
pids+=($!)
cat >"$dir/agent.toml" <<TOML
[agent]
id = "footprint"
data_dir = "$dir/agent"
[mqtt]
listen = "127.0.0.1:$mport"
[uplink]
fleet_url = "http://127.0.0.1:$fport"
TOML
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$fport/healthz" >/dev/null && break; sleep 0.2; done
"${runner[@]}" "$agent" enroll --config "$dir/agent.toml" --token "$boot" >"$dir/enroll.log" 2>&1 \
  || { cat "$dir/enroll.log" "$dir/fleet.log" >&2; exit 1; }
"${runner[@]}" "$agent" run --config "$dir/agent.toml" >"$dir/agent.log" 2>&1 &
apid=$!
pids+=("$apid")
sleep 5
# shellcheck disable=SC2009
real_pid="$(pgrep -P "$apid" -f fieldline-agent || echo "$apid")"
idle="$(status_kb "$real_pid" VmRSS)"
read -r apeak aanon afile athreads atook asent < <(load "$mport" agent "$real_pid")
# The settle time covered two heartbeats: the fleet knows the agent's final counters.
counters="$(curl -sf -H "Authorization: Bearer $admin" "http://127.0.0.1:$fport/api/v1/agents/footprint" \
  | python3 -c 'import json,sys; c=json.load(sys.stdin)["counters"]; print(c["messages_received"], c["readings_decoded"], c["dead_letters"])')"
read -r received decoded dead <<<"$counters"
after="$(status_kb "$real_pid" VmRSS)"

bport="$(port)"
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$bport" >"$dir/mosquitto.conf"
mosquitto -c "$dir/mosquitto.conf" >"$dir/mosquitto.log" 2>&1 &
mpid=$!
pids+=("$mpid")
sleep 0.5
mosquitto_sub -p "$bport" -t 'sensors/#' >/dev/null &
pids+=($!)
sleep 0.5
midle="$(status_kb "$mpid" VmRSS)"
read -r mpeak _ _ _ mtook msent < <(load "$bport" mosquitto "$mpid")

size="$(stat -c %s "$agent")"
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
echo "| what | fieldline-agent | mosquitto + 1 subscriber (baseline) |"
echo "|---|---|---|"
echo "| binary size (stripped) | $size B | |"
echo "| idle RSS | $(mib "$idle") MiB | $(mib "$midle") MiB |"
echo "| peak RSS at ~$rate msg/s for ${secs}s and ${settle}s after | $(mib "$apeak") MiB (anon $(mib "$aanon"), file $(mib "$afile"), $athreads threads; $asent msgs in ${atook}s) | $(mib "$mpeak") MiB ($msent msgs in ${mtook}s) |"
echo "| RSS ${settle}s after the load | $(mib "$after") MiB | |"
echo "| readings lost | $((asent - decoded)) (published $asent, received $received, decoded $decoded, dead letters $dead) | |"
