#!/usr/bin/env bash
# Builds the fieldline-agent .deb with dpkg-deb (no extra tooling needed).
#   scripts/build-deb.sh [--target TRIPLE] [--profile PROFILE] [--binary PATH] [--out DIR]
#                        [--compression xz|none] [--version VERSION]
# --binary packages an existing binary instead of building one (the package tests
# use it to inspect and install the package without a release build).
# --version overrides the workspace version (e.g. 0.1.0+git20261201 for snapshots;
# the install test builds a newer one to upgrade to).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/fieldline/target}"
target="" profile="gateway" binary="" out="$root/target/deb" compression="xz" version=""
while (($#)); do
  case "$1" in
    --target) target="$2"; shift 2 ;;
    --profile) profile="$2"; shift 2 ;;
    --binary) binary="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --compression) compression="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    *) echo "usage: $0 [--target TRIPLE] [--profile PROFILE] [--binary PATH] [--out DIR] [--compression xz|none] [--version VERSION]" >&2; exit 2 ;;
  esac
done

case "${target:-$(rustc -vV | sed -n 's/^host: //p')}" in
  x86_64-*) arch=amd64 ;;
  aarch64-*) arch=arm64 ;;
  armv7-*) arch=armhf ;;
  *) echo "error: no Debian architecture known for target '$target'" >&2; exit 2 ;;
esac
[ -n "$version" ] || version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n1)"

if [ -z "$binary" ]; then
  args=(build --locked --profile "$profile" -p fieldline-agent)
  [ -n "$target" ] && args+=(--target "$target")
  cargo "${args[@]}"
  dir="$CARGO_TARGET_DIR/${target:+$target/}$profile"
  [ "$profile" = dev ] && dir="$CARGO_TARGET_DIR/${target:+$target/}debug"
  binary="$dir/fieldline-agent"
fi
[ -x "$binary" ] || { echo "error: $binary is not an executable" >&2; exit 1; }

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
pkg="$root/agent/packaging"
install -D -m 0755 "$binary" "$stage/usr/bin/fieldline-agent"
install -D -m 0644 "$pkg/fieldline-agent.service" "$stage/lib/systemd/system/fieldline-agent.service"
install -D -m 0640 "$pkg/agent.toml" "$stage/etc/fieldline/agent.toml"
for f in "$root"/firmware-configs/*.toml; do
  [ -e "$f" ] && install -D -m 0644 "$f" "$stage/usr/share/fieldline/firmware-configs/$(basename "$f")"
done
for f in README.md docs/CONFIG.md docs/DEPLOYMENT.md; do
  [ -e "$root/$f" ] && install -D -m 0644 "$root/$f" "$stage/usr/share/doc/fieldline-agent/$(basename "$f")"
done
install -d "$stage/DEBIAN"
install -m 0755 "$pkg/debian/postinst" "$pkg/debian/prerm" "$pkg/debian/postrm" "$stage/DEBIAN/"
echo /etc/fieldline/agent.toml > "$stage/DEBIAN/conffiles"
size_kb="$(du -sk "$stage" --exclude=DEBIAN | cut -f1)"
# ca-certificates: without `[uplink] ca_file` the uplink trusts the system store, and
# the HTTP client refuses to start when that store is empty (seen on a minbase root).
cat > "$stage/DEBIAN/control" <<CONTROL
Package: fieldline-agent
Version: $version
Architecture: $arch
Maintainer: Fieldline developers <dev@fieldline.invalid>
Depends: libc6 (>= 2.34), adduser, ca-certificates
Section: net
Priority: optional
Installed-Size: $size_kb
Description: Fieldline edge agent for sensor gateways
 Embedded MQTT broker, event-time windowed aggregation and a durable,
 sequence-numbered outbox that uplinks to a Fieldline fleet server.
CONTROL
mkdir -p "$out"
deb="$out/fieldline-agent_${version}_${arch}.deb"
dpkg-deb --root-owner-group "-Z$compression" --build "$stage" "$deb" >/dev/null
echo "$deb"
