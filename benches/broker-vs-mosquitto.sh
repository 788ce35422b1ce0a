#!/usr/bin/env bash
# Throughput, loss, latency, peak RSS and CPU of sensorgate's embedded broker against
# mosquitto, same load (benches/mqtt-load), same machine, alternating A B A B ...
#
#   benches/broker-vs-mosquitto.sh
#   ROUNDS=5 OUT=/tmp/cmp.json SCENARIO="--qos 1 --subscribers 4" benches/broker-vs-mosquitto.sh
#
# Environment:
#   ROUNDS         rounds of (A = mosquitto, B = sensorgate); default 3
#   SCENARIO       extra mqtt-load arguments; they override the default scenario
#                  "--publishers 1 --subscribers 1 --qos 0 --size 64 --count 200000 --rate 0"
#   OUT            also write the results as JSON to this file
#   BUILD          1 (default): cargo build --release first; 0: use the binaries as they are
#   B_BROKER       sensorgate (default) | mosquitto (mosquitto on both sides: tests this script)
#   SENSORGATE     sensorgate binary (default: <target dir>/release/sensorgate)
#   MQTT_LOAD      mqtt-load binary  (default: <target dir>/release/mqtt-load)
#   MOSQUITTO      mosquitto binary  (default: mosquitto on PATH, else /usr/sbin/mosquitto)
#   START_TIMEOUT  seconds a broker may take to accept connections (default 20)
#   STOP_TIMEOUT   seconds between SIGTERM and SIGKILL (default 10)
#   PAUSE          seconds of rest between runs (default 1)
#   KEEP_TMP       1: keep the temporary directory (configs, broker logs, raw results)
# Only 127.0.0.1 is used. Exit status: 0 when every run produced a result, else 1.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=${ROUNDS:-3}
SCENARIO=${SCENARIO:-}
OUT=${OUT:-}
BUILD=${BUILD:-1}
B_BROKER=${B_BROKER:-sensorgate}
START_TIMEOUT=${START_TIMEOUT:-20}
STOP_TIMEOUT=${STOP_TIMEOUT:-10}
PAUSE=${PAUSE:-1}
KEEP_TMP=${KEEP_TMP:-0}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [[ $TARGET_DIR != /* ]]; then TARGET_DIR=$ROOT/$TARGET_DIR; fi
SENSORGATE=${SENSORGATE:-$TARGET_DIR/release/sensorgate}
MQTT_LOAD=${MQTT_LOAD:-$TARGET_DIR/release/mqtt-load}
MOSQUITTO=${MOSQUITTO:-$(command -v mosquitto || echo /usr/sbin/mosquitto)}
DEFAULT_SCENARIO=(--publishers 1 --subscribers 1 --qos 0 --size 64 --count 200000 --rate 0)
read -r -a EXTRA <<<"$SCENARIO"
LOAD_ARGS=("${DEFAULT_SCENARIO[@]}" "${EXTRA[@]}")

BENCH="broker-vs-mosquitto"
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"

[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer, not '$ROUNDS'"
[[ $B_BROKER == sensorgate || $B_BROKER == mosquitto ]] || die "B_BROKER must be sensorgate or mosquitto"
command -v python3 >/dev/null || die "python3 is needed (free ports, the summary)"
[[ -x $MOSQUITTO ]] || die "mosquitto not found (apt-get install -y mosquitto)"

TMP=$(mktemp -d /tmp/broker-vs-mosquitto.XXXXXX)
PIDS=()
cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do stop_pid "$pid" 3 || true; done
    if [[ $KEEP_TMP == 1 || $rc != 0 ]]; then
        echo "broker-vs-mosquitto: files kept in $TMP" >&2
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_mosquitto() { # dir port -> sets BROKER_PID
    local dir=$1 port=$2
    cat >"$dir/mosquitto.conf" <<EOF
listener $port 127.0.0.1
allow_anonymous true
max_queued_messages 0
persistence false
EOF
    "$MOSQUITTO" -c "$dir/mosquitto.conf" >"$dir/broker.log" 2>&1 &
    BROKER_PID=$!
}

start_sensorgate() { # dir port -> sets BROKER_PID
    local dir=$1 port=$2
    mkdir -p "$dir/state"
    cat >"$dir/sensorgate.toml" <<EOF
[gateway]
id = "bench"
state_dir = "$dir/state"
[broker]
listen = "127.0.0.1:$port"
EOF
    "$SENSORGATE" run --config "$dir/sensorgate.toml" >"$dir/broker.log" 2>&1 &
    BROKER_PID=$!
}

# One measurement: run_one ROUND SIDE BROKER; appends a JSON line to $TMP/runs.jsonl.
run_one() {
    local round=$1 side=$2 broker=$3 dir port rc cpu0 cpu1 hwm load_json
    dir=$TMP/r$round-$side
    mkdir -p "$dir"
    port=$(free_port)
    "start_$broker" "$dir" "$port"
    PIDS+=("$BROKER_PID")
    log "round $round $side: $broker pid $BROKER_PID on 127.0.0.1:$port"
    rc=0
    wait_port "$BROKER_PID" "$port" || rc=$?
    if ((rc != 0)); then
        if ((rc == 2)); then
            log "round $round $side: $broker exited before it accepted connections; its log:"
        else
            log "round $round $side: $broker did not accept connections on port $port within ${START_TIMEOUT}s; its log:"
        fi
        tail -n 20 "$dir/broker.log" >&2 || true
        stop_pid "$BROKER_PID"
        PIDS=()
        printf '{"round":%d,"side":"%s","broker":"%s","ok":false,"error":"broker did not start"}\n' \
            "$round" "$side" "$broker" >>"$TMP/runs.jsonl"
        return 0
    fi
    cpu0=$(cpu_seconds "$BROKER_PID")
    rc=0
    # mqtt-load stops itself at --max-time (default 120 s); `timeout` is the backstop. In the
    # background, so that a signal to this script is handled at once (wait is interruptible).
    timeout -k 5 600 "$MQTT_LOAD" --host 127.0.0.1 --port "$port" "${LOAD_ARGS[@]}" \
        >"$dir/load.json" 2>"$dir/load.err" &
    local load_pid=$!
    PIDS+=("$load_pid")
    wait "$load_pid" || rc=$?
    PIDS=("$BROKER_PID")
    if alive "$BROKER_PID"; then
        cpu1=$(cpu_seconds "$BROKER_PID")
        hwm=$(vmhwm_kib "$BROKER_PID")
    else
        cpu1=$cpu0 hwm=null
        log "round $round $side: $broker died during the run; its log:"
        tail -n 20 "$dir/broker.log" >&2 || true
    fi
    stop_pid "$BROKER_PID"
    PIDS=() # stopped and reaped: never signal a PID that may have been reused
    load_json=$(tail -n 1 "$dir/load.json")
    if [[ $load_json != \{* ]]; then
        log "round $round $side: mqtt-load failed (exit $rc):"
        cat "$dir/load.err" >&2
        printf '{"round":%d,"side":"%s","broker":"%s","ok":false,"error":"mqtt-load exit %d"}\n' \
            "$round" "$side" "$broker" "$rc" >>"$TMP/runs.jsonl"
        return 0
    fi
    if ((rc != 0)); then
        log "round $round $side: mqtt-load exit $rc:"
        grep -i 'warning\|error' "$dir/load.err" >&2 || true
    fi
    printf '{"round":%d,"side":"%s","broker":"%s","ok":%s,"load_exit":%d,"cpu_s":%s,"vmhwm_kib":%s,"load":%s}\n' \
        "$round" "$side" "$broker" "$([[ $rc == 0 && $hwm != null ]] && echo true || echo false)" "$rc" \
        "$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { printf "%.3f", b - a }')" "$hwm" "$load_json" \
        >>"$TMP/runs.jsonl"
}

cd "$ROOT"
if [[ $BUILD == 1 ]]; then
    pkgs=(-p sensorgate-mqtt-load)
    [[ $B_BROKER == sensorgate ]] && pkgs=(-p sensorgate "${pkgs[@]}")
    log "cargo build --release ${pkgs[*]}"
    cargo build --release "${pkgs[@]}"
fi
[[ -x $MQTT_LOAD ]] || die "$MQTT_LOAD not found: build it (cargo build --release -p sensorgate-mqtt-load) or set MQTT_LOAD"
if [[ $B_BROKER == sensorgate ]]; then
    [[ -x $SENSORGATE ]] || die "$SENSORGATE not found: build it (cargo build --release -p sensorgate) or set SENSORGATE"
fi

log "scenario: mqtt-load ${LOAD_ARGS[*]}; $ROUNDS round(s) of A=mosquitto, B=$B_BROKER"
: >"$TMP/runs.jsonl"
for ((round = 1; round <= ROUNDS; round++)); do
    run_one "$round" A mosquitto
    sleep "$PAUSE"
    run_one "$round" B "$B_BROKER"
    if ((round < ROUNDS)); then sleep "$PAUSE"; fi
done

# The table, medians and ratios; the JSON for OUT.
python3 - "$TMP/runs.jsonl" "$OUT" "$B_BROKER" "${LOAD_ARGS[*]}" "$("$MOSQUITTO" -h 2>/dev/null | head -n 1)" <<'PY'
import json, os, statistics, sys

runs_file, out_file, b_broker, scenario, mosq_version = sys.argv[1:6]
runs = [json.loads(line) for line in open(runs_file) if line.strip()]

def metrics(r):
    if "load" not in r:
        return None
    l = r["load"]
    rec = l.get("received", 0)
    return {
        "msgs_per_s": l.get("msgs_per_s"),
        "lost": l.get("lost"),
        "duplicates": l.get("duplicates"),
        "p50_ms": l.get("p50_ms"),
        "p99_ms": l.get("p99_ms"),
        "max_ms": l.get("max_ms"),
        "vmhwm_mib": None if r.get("vmhwm_kib") is None else round(r["vmhwm_kib"] / 1024, 1),
        "cpu_s": r.get("cpu_s"),
        "cpu_s_per_100k": round(r["cpu_s"] / rec * 1e5, 3) if rec else None,
    }

for r in runs:
    r["metrics"] = metrics(r)

sides = {"A": "mosquitto", "B": b_broker if b_broker != "mosquitto" else "mosquitto (B)"}
cols = [("msgs_per_s", "msgs/s", "{:.0f}"), ("lost", "lost", "{:.0f}"), ("p50_ms", "p50 ms", "{:.2f}"),
        ("p99_ms", "p99 ms", "{:.2f}"), ("vmhwm_mib", "VmHWM MiB", "{:.1f}"),
        ("cpu_s_per_100k", "CPU s/100k", "{:.3f}")]

def fmt(v, f):
    return "-" if v is None else f.format(v)

head = "{:>5}  {:<14}".format("round", "broker") + "".join("{:>12}".format(c[1]) for c in cols)
print(f"scenario: mqtt-load {scenario}")
print(head)
print("-" * len(head))
for r in runs:
    m = r["metrics"]
    row = "{:>5}  {:<14}".format(r["round"], sides[r["side"]])
    if m is None:
        row += "  FAILED: " + r.get("error", "?")
    else:
        row += "".join("{:>12}".format(fmt(m[c[0]], c[2])) for c in cols)
        if not r.get("ok"):
            row += "  (errors: see mqtt-load stderr)"
    print(row)
print("-" * len(head))

medians = {}
for side in ("A", "B"):
    ms = [r["metrics"] for r in runs if r["side"] == side and r["metrics"]]
    med = {}
    for key, _, _ in cols:
        vals = [m[key] for m in ms if m[key] is not None]
        med[key] = statistics.median(vals) if vals else None
    medians[side] = med
    print("{:>5}  {:<14}".format("med", sides[side]) + "".join("{:>12}".format(fmt(med[c[0]], c[2])) for c in cols))

def ratio(key):
    a, b = medians["A"][key], medians["B"][key]
    return round(b / a, 3) if a and b is not None else None

ratios = {"msgs_per_s": ratio("msgs_per_s"), "vmhwm": ratio("vmhwm_mib"), "cpu_per_msg": ratio("cpu_s_per_100k")}
print()
print(f"ratio {sides['B']}/mosquitto (medians): msgs/s {fmt(ratios['msgs_per_s'], '{:.2f}')}x, "
      f"peak RSS {fmt(ratios['vmhwm'], '{:.2f}')}x, CPU per message {fmt(ratios['cpu_per_msg'], '{:.2f}')}x")

if out_file:
    result = {
        "scenario": scenario,
        "brokers": {"A": "mosquitto", "B": b_broker},
        "mosquitto_version": mosq_version,
        "nproc": os.cpu_count(),
        "runs": [{k: v for k, v in r.items()} for r in runs],
        "median": {sides[s]: medians[s] for s in ("A", "B")},
        "ratio_b_over_a": ratios,
    }
    with open(out_file, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(f"results written to {out_file}")
sys.exit(0 if all(r["metrics"] is not None for r in runs) else 1)
PY
