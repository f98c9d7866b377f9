#!/usr/bin/env bash
# Fuzz every decoder that takes outside bytes (common/fuzz): sensor payloads, SenML,
# the fleet's CBOR batch/heartbeat decoding, config text. Usage:
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default 60 s, all targets)
# Needs a nightly toolchain (rustup toolchain install nightly); installs cargo-fuzz.
# A crash leaves its input in common/fuzz/artifacts/<target>/ and exits non-zero;
# new interesting inputs go to a scratch corpus, the committed seeds stay as they are.
set -euo pipefail
cd "$(dirname "$0")/../common"
secs="${1:-60}"
shift || true
targets=("$@")
((${#targets[@]})) || targets=(payload senml wire config)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/fieldline/target-fuzz}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
scratch="${FUZZ_CORPUS_DIR:-$HOME/.cache/fieldline/fuzz-corpus}"
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t"
  echo "==> fuzz $t for ${secs}s"
  cargo +nightly fuzz run -O "$t" "$scratch/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$secs" -max_len=65536 -print_final_stats=1
done
