#!/usr/bin/env bash
# Cross builds for the Raspberry Pi without Docker: what `cross build --release --target
# …` does for users, proven here with rustup's targets, cargo-zigbuild (zig cc as the C
# compiler and linker, against glibc 2.31 so that the binary also runs on Raspberry Pi
# OS bullseye) and qemu-user.
#
#   packaging/cross-build.sh [options] [TARGET…]
#
#   TARGET      aarch64-unknown-linux-gnu (64-bit Pi OS) and/or
#               armv7-unknown-linux-gnueabihf (32-bit Pi OS); default: both
#   --smoke     run the binary under qemu-user: `--version`, `check` of the packaged
#               default config, then the daemon on a test config (a free port, one sim
#               device) until a reading arrives over MQTT (mosquitto_sub); SIGTERM by PID
#   --deb       build the .deb (`cargo deb --target … --no-build`) and run lintian on it
#   --profile P cargo profile (default: release, as CI builds it)
#   --cc gcc    Debian's cross gcc instead of zig: the binary then needs the build
#               machine's glibc (2.36 on bookworm) and does not run on bullseye
#
# Installs what is missing (apt: qemu-user, libc6-*-cross, lintian; pip: cargo-zigbuild,
# ziglang; rustup targets; cargo-deb). Binaries: $CARGO_TARGET_DIR (default target/)
# /<target>/<profile>/sensorgate; .debs in $CARGO_TARGET_DIR/debian/.
set -euo pipefail
cd "$(dirname "$0")/.."

# The oldest glibc the release binaries must run with: Raspberry Pi OS bullseye.
GLIBC=2.31
CARGO_DEB_VERSION=3.8.0
ZIGBUILD_VERSION=0.24.0
ZIGLANG_VERSION=0.17.1

smoke=0 deb=0 profile=release cc=zig targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=1 ;;
    --deb) deb=1 ;;
    --profile) profile="$2"; shift ;;
    --cc) cc="$2"; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) targets+=("$1") ;;
  esac
  shift
done
[ ${#targets[@]} -gt 0 ] || targets=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
step() { echo "== $* ($(date -u +%T))"; }

# Per target: Debian's multiarch name (libc6-dev-<deb>-cross, qemu-<qemu>).
gnu_of() { case "$1" in aarch64-*) echo aarch64-linux-gnu ;; armv7-*) echo arm-linux-gnueabihf ;; *) echo "unsupported target $1" >&2; exit 2 ;; esac; }
deb_of() { case "$1" in aarch64-*) echo arm64 ;; armv7-*) echo armhf ;; esac; }
qemu_of() { case "$1" in aarch64-*) echo qemu-aarch64 ;; armv7-*) echo qemu-arm ;; esac; }

# --- tools ------------------------------------------------------------------------------
apt_missing=()
need_apt() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed" || apt_missing+=("$1"); }
need_apt binutils
for t in "${targets[@]}"; do
  need_apt "libc6-$(deb_of "$t")-cross"
  if [ "$cc" = gcc ]; then need_apt "gcc-$(gnu_of "$t")"; need_apt "libc6-dev-$(deb_of "$t")-cross"; fi
done
if [ $smoke = 1 ]; then need_apt qemu-user; need_apt mosquitto-clients; fi
if [ $deb = 1 ]; then need_apt lintian; fi
if [ ${#apt_missing[@]} -gt 0 ]; then
  step "installing ${apt_missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
fi
if [ "$cc" = zig ] && ! command -v cargo-zigbuild >/dev/null; then
  step "installing cargo-zigbuild $ZIGBUILD_VERSION, ziglang $ZIGLANG_VERSION"
  pip=(python3 -m pip install --quiet "cargo-zigbuild==$ZIGBUILD_VERSION" "ziglang==$ZIGLANG_VERSION")
  "${pip[@]}" 2>/dev/null || "${pip[@]}" --break-system-packages
fi
if [ $deb = 1 ] && ! cargo deb --version >/dev/null 2>&1; then
  step "installing cargo-deb $CARGO_DEB_VERSION"
  cargo install --quiet --locked cargo-deb --version "$CARGO_DEB_VERSION"
fi
installed=$(rustup target list --installed)
for t in "${targets[@]}"; do
  grep -qx "$t" <<<"$installed" || rustup target add "$t"
done

# --- smoke run helpers ------------------------------------------------------------------
pids=()
tmp=$(mktemp -d)
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_exit PID SECONDS: 0 once PID is gone, 1 on time-out.
wait_exit() {
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    kill -0 "$1" 2>/dev/null || return 0
    sleep 0.1
  done
  return 1
}

smoke_run() { # target binary
  local t=$1 bin=$2 gnu qemu port dir pid reading rss status
  gnu=$(gnu_of "$t") qemu=$(qemu_of "$t")
  local run=("$qemu" -L "/usr/$gnu" "$bin")
  step "$t: smoke run under $qemu"
  "${run[@]}" --version
  "${run[@]}" check --config packaging/debian/sensorgate.toml >/dev/null

  port=$(free_port)
  dir="$tmp/$t"
  mkdir -p "$dir"
  cat >"$dir/sensorgate.toml" <<EOF
[gateway]
id = "smoke"
topic_prefix = "smoke$port"
state_dir = "$dir/state"

[broker]
listen = "127.0.0.1:$port"

[[device]]
name = "demo"
plugin = "sim"
poll_interval = "500ms"

[[device.point]]
name = "counter"
signal = "counter"
EOF
  "${run[@]}" run --config "$dir/sensorgate.toml" 2>"$dir/daemon.log" &
  pid=$!
  pids+=("$pid")
  # The broker under qemu takes a moment: mosquitto_sub retries until it connects.
  reading=""
  for _ in $(seq 1 60); do
    reading=$(mosquitto_sub -h 127.0.0.1 -p "$port" -t "smoke$port/demo/counter" -C 1 -W 5 2>/dev/null) && break
    kill -0 "$pid" 2>/dev/null || { cat "$dir/daemon.log"; echo "FAIL: the daemon exited" >&2; return 1; }
    sleep 0.5
  done
  if ! grep -q '"value":' <<<"$reading"; then
    cat "$dir/daemon.log"
    echo "FAIL: no reading on smoke$port/demo/counter (got: ${reading:-nothing})" >&2
    return 1
  fi
  echo "reading: $reading"
  sleep 3
  rss=$(awk '/^VmRSS/ {print $2, $3}' "/proc/$pid/status")
  echo "idle RSS under $qemu (qemu included, indicative): $rss"
  kill -TERM "$pid"
  if ! wait_exit "$pid" 30; then
    cat "$dir/daemon.log"
    echo "FAIL: no exit within 30 s of SIGTERM" >&2
    return 1
  fi
  status=0
  wait "$pid" || status=$?
  if [ $status != 0 ] || ! grep -q "stopped" "$dir/daemon.log"; then
    cat "$dir/daemon.log"
    echo "FAIL: exit status $status after SIGTERM" >&2
    return 1
  fi
  echo "stopped cleanly (exit 0)"
}

# --- build ------------------------------------------------------------------------------
for t in "${targets[@]}"; do
  gnu=$(gnu_of "$t")
  start=$(date +%s)
  if [ "$cc" = zig ]; then
    step "$t: cargo zigbuild --profile $profile (glibc $GLIBC)"
    cargo zigbuild --locked --profile "$profile" --target "$t.$GLIBC" -p sensorgate --bin sensorgate
    max_glibc=$GLIBC
  else
    step "$t: cargo build --profile $profile with $gnu-gcc"
    upper=$(tr 'a-z-' 'A-Z_' <<<"$t")
    env "CARGO_TARGET_${upper}_LINKER=$gnu-gcc" "CC_${t//-/_}=$gnu-gcc" "AR_${t//-/_}=$gnu-ar" \
      cargo build --locked --profile "$profile" --target "$t" -p sensorgate --bin sensorgate
    max_glibc=$(dpkg-query -W -f='${Version}' "libc6-$(deb_of "$t")-cross" | cut -d- -f1)
  fi
  echo "build time: $(($(date +%s) - start)) s"
  out_dir=$profile
  if [ "$profile" = dev ]; then out_dir=debug; fi
  bin="$target_dir/$t/$out_dir/sensorgate"

  # The newest glibc symbol version the binary asks for.
  need=$(readelf --dyn-syms --wide "$bin" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
  echo "$t: $(stat -c %s "$bin") bytes, $(file -b "$bin" 2>/dev/null | cut -d, -f1-2), needs GLIBC_$need"
  if [ "$(printf '%s\n%s\n' "$need" "$max_glibc" | sort -V | tail -1)" != "$max_glibc" ]; then
    echo "FAIL: $bin needs GLIBC_$need, more than $max_glibc" >&2
    exit 1
  fi

  if [ $smoke = 1 ]; then
    smoke_run "$t" "$bin"
  fi

  if [ $deb = 1 ]; then
    step "$t: cargo deb"
    debfile=$(cargo deb --target "$t" --profile "$profile" --no-build --no-strip | tail -1)
    dpkg-deb --info "$debfile" | sed -n '/Package:/,/Depends:/p'
    dpkg-deb --contents "$debfile" | awk '{print $6}'
    lintian --fail-on error --suppress-tags no-manual-page,unknown-field "$debfile"
    echo "deb: $debfile"
  fi
done
