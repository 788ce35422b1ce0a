#!/usr/bin/env bash
# Where a broker-only sensorgate spends its CPU and memory under one mqtt-load scenario:
#
#   benches/profile.sh                        # threads: CPU seconds per thread (default)
#   MODE=syscalls benches/profile.sh          # + strace -c -f: system calls per message
#                                             # (strace slows every call, so more messages
#                                             # share one: read these as a lower bound)
#   MODE=perf benches/profile.sh              # + perf record -g: the hottest symbols
#   MODE=heap ARGS="--publishers 10 --count 20000" benches/profile.sh
#                                             # heaptrack: the peak heap and who holds it
#
# Environment:
#   MODE        threads | syscalls | perf | heap (default threads)
#   ARGS        mqtt-load arguments (default: QoS 0 1 -> 1 at 5 000 msgs/s, 50 000 messages,
#               --nodelay: the paced scenario of benches/suite.py)
#   SENSORGATE, MQTT_LOAD   binaries (default: <target dir>/release/…). For MODE=perf and
#               MODE=heap, a binary with symbols reads better:
#               CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_RELEASE_DEBUG=1 \
#                 CARGO_TARGET_DIR=/tmp/symtarget cargo build --release -p sensorgate
#               SENSORGATE=/tmp/symtarget/release/sensorgate MODE=perf benches/profile.sh
#   KEEP_TMP    1: keep the temporary directory (config, log, perf.data, heaptrack file)
# Only 127.0.0.1 is used; the daemon is stopped by its PID. Needs strace, perf or
# heaptrack for those modes (Debian packages of the same names).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MODE=${MODE:-threads}
ARGS=${ARGS:---rate 5000 --count 50000 --nodelay}
KEEP_TMP=${KEEP_TMP:-0}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [[ $TARGET_DIR != /* ]]; then TARGET_DIR=$ROOT/$TARGET_DIR; fi
SENSORGATE=${SENSORGATE:-$TARGET_DIR/release/sensorgate}
MQTT_LOAD=${MQTT_LOAD:-$TARGET_DIR/release/mqtt-load}

BENCH="profile"
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"

case $MODE in
threads) ;;
syscalls) command -v strace >/dev/null || die "strace is needed (apt-get install -y strace)" ;;
perf) command -v perf >/dev/null || die "perf is needed (apt-get install -y linux-perf)" ;;
heap) command -v heaptrack >/dev/null || die "heaptrack is needed (apt-get install -y heaptrack)" ;;
*) die "MODE must be threads, syscalls, perf or heap, not '$MODE'" ;;
esac
[[ -x $SENSORGATE ]] || die "$SENSORGATE not found (cargo build --release -p sensorgate)"
[[ -x $MQTT_LOAD ]] || die "$MQTT_LOAD not found (cargo build --release -p sensorgate-mqtt-load)"

start_tmp

PORT=$(free_port)
mkdir -p "$TMP/state"
cat >"$TMP/sensorgate.toml" <<EOF
[gateway]
id = "profile"
state_dir = "$TMP/state"
[broker]
listen = "127.0.0.1:$PORT"
EOF
if [[ $MODE == heap ]]; then
    heaptrack -o "$TMP/heaptrack" "$SENSORGATE" run --config "$TMP/sensorgate.toml" >"$TMP/log" 2>&1 &
else
    "$SENSORGATE" run --config "$TMP/sensorgate.toml" >"$TMP/log" 2>&1 &
fi
PIDS+=($!)
wait_port "${PIDS[0]}" "$PORT" || { tail -n 20 "$TMP/log" >&2; die "sensorgate did not start"; }
# The daemon's own PID (under heaptrack, its child).
PID=${PIDS[0]}
if [[ $MODE == heap ]]; then
    PID=$(pgrep -n -f "$SENSORGATE run --config $TMP/sensorgate.toml") || die "no sensorgate process"
fi

TRACER=
case $MODE in
syscalls)
    strace -c -f -p "$PID" -o "$TMP/strace" 2>/dev/null &
    TRACER=$!
    ;;
perf)
    perf record -F 2000 -g -p "$PID" -o "$TMP/perf.data" >/dev/null 2>&1 &
    TRACER=$!
    ;;
esac
# strace and perf take a moment to attach to every thread.
[[ -z $TRACER ]] || sleep 2
before=$(cpu_seconds "$PID")
log "mqtt-load --port $PORT $ARGS"
# shellcheck disable=SC2086
timeout -k 5 300 "$MQTT_LOAD" --port "$PORT" $ARGS >"$TMP/load.json" 2>"$TMP/load.err" ||
    { cat "$TMP/load.err" >&2; die "mqtt-load failed"; }
after=$(cpu_seconds "$PID")
if [[ -n $TRACER ]]; then
    kill -INT "$TRACER" 2>/dev/null || true
    wait "$TRACER" 2>/dev/null || true
fi

delivered=$(python3 -c 'import json,sys; r=json.loads(open(sys.argv[1]).read().splitlines()[-1]); print(r["received"] if "received" in r else r["expected"] - r["lost"])' "$TMP/load.json")
echo "load: $(tail -n 1 "$TMP/load.json" | cut -c1-160)…"
python3 - "$before" "$after" "$delivered" <<'PY'
import sys
before, after, n = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
print(f"sensorgate CPU during the load: {after - before:.2f} s, {1e5 * (after - before) / max(n, 1):.3f} s per 100 000 deliveries")
PY
echo "per thread (user + system seconds since start):"
tck=$(getconf CLK_TCK)
for t in /proc/"$PID"/task/*; do
    sed 's/^.*) //' "$t/stat" | awk -v name="$(cat "$t/comm")" -v t="$tck" '{ printf "  %-18s user %6.2f  system %6.2f\n", name, $12 / t, $13 / t }'
done | sort -k5 -n -r || true
case $MODE in
syscalls)
    echo "system calls during the load ($delivered deliveries):"
    awk -v n="$delivered" 'NR > 2 && $4 ~ /^[0-9]+$/ { printf "  %-14s %8d calls  %5.2f per delivery\n", $NF, $4, $4 / n }' "$TMP/strace" | head -n 8 || true
    ;;
perf)
    echo "hottest symbols (perf, whole process):"
    perf report -i "$TMP/perf.data" --no-children --sort sym --stdio 2>/dev/null | grep -E '^ +[0-9.]+%' | head -n 15 || true
    ;;
heap)
    # The daemon first (a clean stop), then heaptrack finishes writing its file.
    stop_pid "$PID"
    deadline=$((SECONDS + 60))
    while alive "${PIDS[0]}" && ((SECONDS < deadline)); do sleep 0.2; done
    stop_pid "${PIDS[0]}"
    PIDS=()
    echo "heap (heaptrack_print):"
    heaptrack_print --print-peaks 1 --print-allocators 0 --print-temporary 0 --print-leaks 0 \
        "$TMP"/heaptrack*.zst 2>/dev/null | grep -E 'peak heap memory|consumed over|^    (sensorgate|rumqttd|bytes|alloc::collections)' | head -n 40 || true
    ;;
esac
