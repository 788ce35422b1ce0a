#!/usr/bin/env bash
# The test command: installs what the tests need when it is missing, then runs the
# format check, clippy and every test of the workspace.
#
#   tests/run.sh            everything
#   tests/run.sh -- NAME    only tests whose name contains NAME (after the checks)
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian packages: real peers for the tests (mosquitto_sub, mosquitto as a broker, socat).
missing=()
for pkg in mosquitto mosquitto-clients socat; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Python packages: the classic paho subscriber.
if ! python3 -c 'import paho.mqtt.client' 2>/dev/null; then
  echo "== installing paho-mqtt"
  python3 -m pip install --quiet paho-mqtt 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages paho-mqtt
fi

# pymodbus: a Modbus simulator nobody here wrote (plugins/modbus/tests/pymodbus_server.py
# is written for the 3.16 data model).
if ! python3 -c 'import pymodbus' 2>/dev/null; then
  echo "== installing pymodbus"
  python3 -m pip install --quiet 'pymodbus>=3.16,<4' 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages 'pymodbus>=3.16,<4'
fi
# pyserial: pymodbus's serial (RTU) server needs it.
if ! python3 -c 'import serial' 2>/dev/null; then
  echo "== installing pyserial"
  python3 -m pip install --quiet pyserial 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages pyserial
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
# The property tests (ACL, MQTT packet parsing) explore from a fixed seed here, so this
# command gives the same verdict every time; a plain `cargo test` explores new cases.
export PROPTEST_RNG_SEED="${PROPTEST_RNG_SEED:-20261122}"
if [ "${1:-}" = "--" ]; then shift; fi
cargo test --workspace "$@"
