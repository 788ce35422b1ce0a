#!/usr/bin/env bash
# The cost of the broker front: the same load (benches/mqtt-load) through
#   secured    sensorgate with password_file + acl_file (the front checks every packet)
#   open       sensorgate without them (anonymous clients on loopback)
#   mosquitto  mosquitto 2 with the same password and ACL files
# (Until session 4 the middle column was rumqttd's own listener inside the same process;
# sensorgate no longer starts rumqttd's listeners: every client reaches its router
# through the front, on an in-process link.)
# for QoS 0 and QoS 1, 1 -> 1 and 10 -> 1: throughput flat-out, and p99 latency at a
# fixed rate well below every broker's throughput (with TCP_NODELAY on the clients).
#
#   benches/broker-front.sh
#   ROUNDS=3 OUT=/tmp/front.json benches/broker-front.sh
#
# Environment:
#   ROUNDS      rounds of every (scenario, target); medians are reported (default 1)
#   OUT         also write every run and the medians as JSON to this file
#   BUILD       1 (default): cargo build --release first; 0: use the binaries as they are
#   COUNT       messages per publisher in the 1 -> 1 throughput runs (default 100000;
#               10 -> 1 runs send COUNT/10 per publisher)
#   RATE        total messages per second of the latency runs (default 2000)
#   SECS        length of a latency run in seconds (default 4)
#   SENSORGATE, MQTT_LOAD, MOSQUITTO   binaries (defaults: <target dir>/release/…, PATH)
#   KEEP_TMP    1: keep the temporary directory (configs, logs, raw results)
# Only 127.0.0.1 is used. Goal (issue 6): secured >= 0.8 x open, >= 1.0 x mosquitto.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=${ROUNDS:-1}
OUT=${OUT:-}
BUILD=${BUILD:-1}
COUNT=${COUNT:-100000}
RATE=${RATE:-2000}
SECS=${SECS:-4}
KEEP_TMP=${KEEP_TMP:-0}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [[ $TARGET_DIR != /* ]]; then TARGET_DIR=$ROOT/$TARGET_DIR; fi
SENSORGATE=${SENSORGATE:-$TARGET_DIR/release/sensorgate}
MQTT_LOAD=${MQTT_LOAD:-$TARGET_DIR/release/mqtt-load}
MOSQUITTO=${MOSQUITTO:-$(command -v mosquitto || echo /usr/sbin/mosquitto)}

BENCH="broker-front"
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"

[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
command -v python3 >/dev/null || die "python3 is needed"
command -v mosquitto_passwd >/dev/null || die "mosquitto_passwd is needed (apt-get install -y mosquitto)"
[[ -x $MOSQUITTO ]] || die "mosquitto not found"

cd "$ROOT"
if [[ $BUILD == 1 ]]; then
    log "cargo build --release -p sensorgate -p sensorgate-mqtt-load"
    cargo build --release -p sensorgate -p sensorgate-mqtt-load
fi
[[ -x $SENSORGATE ]] || die "$SENSORGATE not found (BUILD=1, or set SENSORGATE)"
[[ -x $MQTT_LOAD ]] || die "$MQTT_LOAD not found (BUILD=1, or set MQTT_LOAD)"

start_tmp

# The same users and rules for both brokers.
mosquitto_passwd -c -b "$TMP/passwd" bench bench-secret >/dev/null
cat >"$TMP/acl" <<'EOF'
user bench
topic readwrite load/#
EOF

start_sensorgate() { # name port extra-broker-keys
    mkdir -p "$TMP/$1/state"
    cat >"$TMP/$1/sensorgate.toml" <<EOF
[gateway]
id = "bench-$1"
state_dir = "$TMP/$1/state"
[broker]
listen = "127.0.0.1:$2"
$3
EOF
    "$SENSORGATE" run --config "$TMP/$1/sensorgate.toml" >"$TMP/$1/log" 2>&1 &
    PIDS+=($!)
    wait_port "${PIDS[-1]}" "$2" || { tail -n 20 "$TMP/$1/log" >&2; die "sensorgate ($1) did not start"; }
}
SG_PORT=$(free_port)
start_sensorgate sg "$SG_PORT" "password_file = \"$TMP/passwd\"
acl_file = \"$TMP/acl\""
OPEN_PORT=$(free_port)
start_sensorgate open "$OPEN_PORT" ""

MQ_PORT=$(free_port)
mkdir -p "$TMP/mq"
cat >"$TMP/mq/mosquitto.conf" <<EOF
listener $MQ_PORT 127.0.0.1
user $(id -un)
allow_anonymous false
password_file $TMP/passwd
acl_file $TMP/acl
max_queued_messages 0
persistence false
EOF
"$MOSQUITTO" -c "$TMP/mq/mosquitto.conf" >"$TMP/mq/log" 2>&1 &
PIDS+=($!)
wait_port "${PIDS[-1]}" "$MQ_PORT" || die "mosquitto did not start"
log "sensorgate secured :$SG_PORT, open :$OPEN_PORT, mosquitto :$MQ_PORT"

declare -A PORT=([secured]=$SG_PORT [open]=$OPEN_PORT [mosquitto]=$MQ_PORT)
AUTH=(--username bench --password bench-secret)
: >"$TMP/runs.jsonl"
run() { # kind qos pubs target args...
    local kind=$1 qos=$2 pubs=$3 target=$4 rc=0 out
    shift 4
    out=$TMP/run.json
    timeout -k 5 300 "$MQTT_LOAD" --port "${PORT[$target]}" --qos "$qos" --publishers "$pubs" \
        --subscribers 1 --size 64 "${AUTH[@]}" "$@" >"$out" 2>"$TMP/run.err" || rc=$?
    if [[ $(tail -n 1 "$out" 2>/dev/null) != \{* ]]; then
        log "$kind qos$qos $pubs->1 $target: mqtt-load failed ($rc)"; cat "$TMP/run.err" >&2
        return 0
    fi
    printf '{"kind":"%s","qos":%d,"pubs":%d,"target":"%s","exit":%d,"load":%s}\n' \
        "$kind" "$qos" "$pubs" "$target" "$rc" "$(tail -n 1 "$out")" >>"$TMP/runs.jsonl"
    sleep 0.5
}

for ((round = 1; round <= ROUNDS; round++)); do
    for qos in 0 1; do
        for pubs in 1 10; do
            for target in secured open mosquitto; do
                log "round $round: QoS $qos $pubs->1 $target"
                run throughput "$qos" "$pubs" "$target" --count $((COUNT / pubs)) --rate 0
                per=$(python3 -c "print($RATE / $pubs)")
                run latency "$qos" "$pubs" "$target" --count $((RATE * SECS / pubs)) --rate "$per" --nodelay
            done
        done
    done
done

python3 - "$TMP/runs.jsonl" "$OUT" "$ROUNDS" "$COUNT" "$RATE" <<'PY'
import json, statistics, sys
runs_file, out_file, rounds, count, rate = sys.argv[1:6]
runs = [json.loads(l) for l in open(runs_file) if l.strip()]
targets = ["secured", "open", "mosquitto"]
def med(kind, qos, pubs, target, key):
    v = [r["load"].get(key) for r in runs if (r["kind"], r["qos"], r["pubs"], r["target"]) == (kind, qos, pubs, target)]
    v = [x for x in v if x is not None]
    return statistics.median(v) if v else None
def lost(kind, qos, pubs, target):
    return sum(r["load"].get("lost", 0) for r in runs if (r["kind"], r["qos"], r["pubs"], r["target"]) == (kind, qos, pubs, target))
def f(v, p="{:.0f}"):
    return "-" if v is None else p.format(v)
print(f"throughput flat-out ({count} messages, 64 B) and p99 at {rate} msgs/s; medians of {rounds} round(s)")
print("{:<10}{:<8}".format("scenario", "target") + "".join("{:>12}".format(h) for h in ["msgs/s", "lost", "p99 ms", "lost@rate", "x open", "x mosq"]))
summary = {}
for qos in (0, 1):
    for pubs in (1, 10):
        name = f"qos{qos} {pubs}->1"
        for t in targets:
            tp = med("throughput", qos, pubs, t, "msgs_per_s")
            p99 = med("latency", qos, pubs, t, "p99_ms")
            base_r = med("throughput", qos, pubs, "open", "msgs_per_s")
            base_m = med("throughput", qos, pubs, "mosquitto", "msgs_per_s")
            xr = tp / base_r if tp and base_r else None
            xm = tp / base_m if tp and base_m else None
            summary.setdefault(name, {})[t] = {"msgs_per_s": tp, "p99_ms": p99, "x_open": xr, "x_mosquitto": xm,
                                               "lost": lost("throughput", qos, pubs, t), "lost_at_rate": lost("latency", qos, pubs, t)}
            print("{:<10}{:<10}".format(name, t) + "".join("{:>12}".format(x) for x in [
                f(tp), str(lost("throughput", qos, pubs, t)), f(p99, "{:.2f}"), str(lost("latency", qos, pubs, t)),
                f(xr, "{:.2f}"), f(xm, "{:.2f}")]))
if out_file:
    json.dump({"runs": runs, "summary": summary}, open(out_file, "w"), indent=2)
    print(f"written to {out_file}")
PY
