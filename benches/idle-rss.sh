#!/usr/bin/env bash
# Memory and CPU of an idle sensorgate: the demo configuration (config/sensorgate.toml: the
# broker and one simulated device), no MQTT clients, for DURATION seconds.
#
#   benches/idle-rss.sh
#   DURATION=300 SAMPLE=10 OUT=/tmp/idle.json benches/idle-rss.sh
#
# Environment:
#   DURATION       seconds to let it idle (default 60)
#   SAMPLE         also print VmRSS every SAMPLE seconds (default 0 = only at the end)
#   CONFIG         the configuration to copy (default: config/sensorgate.toml; a conf.d/ beside
#                  it is copied too)
#   OUT            also write the result as JSON to this file
#   BUILD          1: cargo build --release -p sensorgate first; 0 (default): use the binary as is
#   SENSORGATE     the binary (default: <target dir>/release/sensorgate)
#   START_TIMEOUT  seconds it may take to accept connections (default 20)
#   STOP_TIMEOUT   seconds between SIGTERM and SIGKILL (default 10)
# The listener is moved to a free 127.0.0.1 port (SENSORGATE__BROKER__LISTEN) and the state to a
# temporary directory (SENSORGATE__GATEWAY__STATE_DIR). A configuration that would talk to
# anything but loopback (an [upstream], a non-127.0.0.1 listener) is refused.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DURATION=${DURATION:-60}
SAMPLE=${SAMPLE:-0}
CONFIG=${CONFIG:-$ROOT/config/sensorgate.toml}
OUT=${OUT:-}
BUILD=${BUILD:-0}
START_TIMEOUT=${START_TIMEOUT:-20}
STOP_TIMEOUT=${STOP_TIMEOUT:-10}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [[ $TARGET_DIR != /* ]]; then TARGET_DIR=$ROOT/$TARGET_DIR; fi
SENSORGATE=${SENSORGATE:-$TARGET_DIR/release/sensorgate}

BENCH="idle-rss"
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"

[[ $DURATION =~ ^[0-9]+$ ]] || die "DURATION must be whole seconds, not '$DURATION'"
[[ $SAMPLE =~ ^[0-9]+$ ]] || die "SAMPLE must be whole seconds, not '$SAMPLE'"
[[ -f $CONFIG ]] || die "no configuration at $CONFIG"
# Every file the daemon will read: the config and a conf.d/ beside it. `listen` itself is
# overridden below; the other listeners (listen_v5, listen_tls) must be empty or on 127.0.0.1.
CONF_FILES=("$CONFIG")
if [[ -d $(dirname "$CONFIG")/conf.d ]]; then
    while IFS= read -r f; do CONF_FILES+=("$f"); done < <(find "$(dirname "$CONFIG")/conf.d" -maxdepth 1 -name '*.toml' | sort)
fi
for f in "${CONF_FILES[@]}"; do
    if grep -Eq '^[[:space:]]*\[[[:space:]]*upstream' "$f"; then
        die "$f has an [upstream] section: this benchmark only uses 127.0.0.1"
    fi
    if grep -E '^[[:space:]]*listen_[a-z0-9_]+[[:space:]]*=' "$f" | grep -Ev '=[[:space:]]*"(127\.0\.0\.1:[0-9]+)?"' | grep -q .; then
        die "$f has a listener that is not on 127.0.0.1"
    fi
done

cd "$ROOT"
if [[ $BUILD == 1 ]]; then
    log "cargo build --release -p sensorgate"
    cargo build --release -p sensorgate
fi
[[ -x $SENSORGATE ]] || die "$SENSORGATE not found: build it (cargo build --release -p sensorgate) or set SENSORGATE"

TMP=$(mktemp -d /tmp/idle-rss.XXXXXX)
PID=
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n $PID ]]; then stop_pid "$PID" 3 || true; fi
    if [[ $rc != 0 ]]; then echo "idle-rss: files kept in $TMP" >&2; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM


cp "$CONFIG" "$TMP/sensorgate.toml"
if [[ -d $(dirname "$CONFIG")/conf.d ]]; then cp -r "$(dirname "$CONFIG")/conf.d" "$TMP/conf.d"; fi
mkdir -p "$TMP/state"
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')

# Started from the temporary directory, so a relative path in the copy stays in there too.
(cd "$TMP" && exec env SENSORGATE__BROKER__LISTEN="127.0.0.1:$PORT" SENSORGATE__GATEWAY__STATE_DIR="$TMP/state" \
    "$SENSORGATE" run --config "$TMP/sensorgate.toml") >"$TMP/sensorgate.log" 2>&1 &
PID=$!
log "sensorgate pid $PID, broker on 127.0.0.1:$PORT, idling ${DURATION}s"

deadline=$((SECONDS + START_TIMEOUT))
until timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$PORT" 2>/dev/null; do
    if ! alive "$PID"; then
        log "sensorgate exited before it accepted connections; its log:"
        tail -n 20 "$TMP/sensorgate.log" >&2
        exit 1
    fi
    if ((SECONDS >= deadline)); then
        log "sensorgate did not accept connections within ${START_TIMEOUT}s; its log:"
        tail -n 20 "$TMP/sensorgate.log" >&2
        exit 1
    fi
    sleep 0.1
done
rss_start=$(status_kib "$PID" VmRSS)
cpu_start=$(cpu_seconds "$PID")

end=$((SECONDS + DURATION))
while ((SECONDS < end)); do
    step=$((end - SECONDS))
    if ((SAMPLE > 0 && SAMPLE < step)); then step=$SAMPLE; fi
    sleep "$step"
    alive "$PID" || { log "sensorgate exited during the idle period; its log:"; tail -n 20 "$TMP/sensorgate.log" >&2; exit 1; }
    if ((SAMPLE > 0)); then
        log "t+$((DURATION - (end - SECONDS)))s VmRSS $(mib "$(status_kib "$PID" VmRSS)") MiB, CPU $(cpu_seconds "$PID") s"
    fi
done

rss=$(status_kib "$PID" VmRSS)
hwm=$(status_kib "$PID" VmHWM)
cpu=$(cpu_seconds "$PID")
threads=$(status_kib "$PID" Threads)
log_lines=$(wc -l <"$TMP/sensorgate.log")
stop_pid "$PID"
PID=

idle_cpu=$(awk -v a="$cpu_start" -v b="$cpu" 'BEGIN { printf "%.3f", b - a }')
echo "sensorgate idle for ${DURATION}s ($(basename "$CONFIG")):"
echo "  VmRSS   $(mib "$rss") MiB (at start $(mib "$rss_start") MiB)"
echo "  VmHWM   $(mib "$hwm") MiB"
echo "  CPU     $cpu s total, $idle_cpu s while idle ($(awk -v c="$idle_cpu" -v d="$DURATION" 'BEGIN { if (d > 0) printf "%.2f", 100 * c / d; else print "-" }') % of one core)"
echo "  threads $threads, log lines $log_lines"
if [[ -n $OUT ]]; then
    printf '{"duration_s":%d,"vmrss_kib":%d,"vmrss_start_kib":%d,"vmhwm_kib":%d,"cpu_s":%s,"cpu_idle_s":%s,"threads":%d,"log_lines":%d}\n' \
        "$DURATION" "$rss" "$rss_start" "$hwm" "$cpu" "$idle_cpu" "$threads" "$log_lines" >"$OUT"
    echo "result written to $OUT"
fi
