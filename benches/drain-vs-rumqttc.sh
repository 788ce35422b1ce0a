#!/usr/bin/env bash
# Drain rate of a backlog (COUNT messages, 100 000) from sensorgate's outbox to mosquitto
# at QoS 1, against a plain rumqttc client publishing the same COUNT QoS 1 messages to the
# same mosquitto, alternating A B A B ... (issue 4's figure; goal: A >= 0.8 x B).
#
#   benches/drain-vs-rumqttc.sh
#   ROUNDS=3 OUT=/tmp/drain.json benches/drain-vs-rumqttc.sh
#
# A (sensorgate): `drain fill` (benches/drain.rs) appends COUNT messages to a fresh
#   <tmp>/<mode>-aN/state/buffer.db through sensorgate::buffer::Outbox while nothing runs,
#   then `sensorgate run` starts with [upstream] pointing at mosquitto and drain_rate =
#   DRAIN_RATE, and drains the backlog (no devices, nothing live).
# B (rumqttc): `drain publish` (benches/drain.rs), one rumqttc connection with 100
#   unacknowledged QoS 1 publishes at most (sensorgate's window), the same topics and
#   payloads, until every PUBACK is in.
# Each round runs A and B in two modes:
#   sub    one subscriber (mosquitto_sub -q 1, `-F %U`: a receive time per message),
#          subscribed before A or B starts, counts the messages on mosquitto. The
#          broker's delivery to it is part of the work (with QoS 1 towards the
#          subscriber that is what limits both, here).
#   nosub  no subscriber: the drain alone. A ends when the buffer is empty (every PUBACK
#          in, the rows deleted; polled every 10 ms with python's sqlite3, `SELECT
#          EXISTS`), B at its last PUBACK.
# Columns: start s: from starting the process to its first delivery (sub) or to its
#   CONNACK (nosub; A: the daemon's "upstream connected" log line); steady/s: messages
#   per second over first .. last delivery (sub) or CONNACK .. end (nosub); wall/s: over
#   process start .. end; done s (sub, A): until `sensorgate buffer stats` says
#   0 message(s) (polled every 0.1 s once the subscriber has them all).
#
# Environment:
#   ROUNDS         rounds of (A, B) x (sub, nosub); default 2
#   COUNT          messages per run; default 100000
#   SIZE           payload bytes (reading-like JSON, padded); default 70
#   DRAIN_RATE     [upstream] drain_rate of A; default 1000000 (no limit in practice)
#   TIMEOUT        seconds one run may take; default 120
#   OUT            also write the results as JSON to this file
#   BUILD          1 (default): cargo bench --bench drain --no-run and
#                  cargo build --release -p sensorgate first (nice); 0: use what is built
#   SENSORGATE     sensorgate binary (default: <target dir>/release/sensorgate)
#   DRAIN          the drain helper (default: the newest <target dir>/release/deps/drain-*)
#   MOSQUITTO, MOSQUITTO_SUB, MOSQUITTO_PUB   (default: on PATH)
#   PAUSE          seconds of rest between runs (default 1)
#   KEEP_TMP       1: keep the temporary directory (configs, logs, receive times)
# CARGO_TARGET_DIR is honoured. Only 127.0.0.1 is used. Exit status: 0 when every run
# delivered COUNT messages, else 1.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=${ROUNDS:-2}
COUNT=${COUNT:-100000}
SIZE=${SIZE:-70}
DRAIN_RATE=${DRAIN_RATE:-1000000}
TIMEOUT=${TIMEOUT:-120}
OUT=${OUT:-}
BUILD=${BUILD:-1}
PAUSE=${PAUSE:-1}
KEEP_TMP=${KEEP_TMP:-0}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [[ $TARGET_DIR != /* ]]; then TARGET_DIR=$ROOT/$TARGET_DIR; fi
SENSORGATE=${SENSORGATE:-$TARGET_DIR/release/sensorgate}
DRAIN=${DRAIN:-}
MOSQUITTO=${MOSQUITTO:-$(command -v mosquitto || echo /usr/sbin/mosquitto)}
MOSQUITTO_SUB=${MOSQUITTO_SUB:-$(command -v mosquitto_sub || echo /usr/bin/mosquitto_sub)}
MOSQUITTO_PUB=${MOSQUITTO_PUB:-$(command -v mosquitto_pub || echo /usr/bin/mosquitto_pub)}
TOPIC=bench/drain

BENCH="drain-vs-rumqttc"
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"

for v in ROUNDS COUNT SIZE DRAIN_RATE TIMEOUT; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, not '${!v}'"
done
command -v python3 >/dev/null || die "python3 is needed (free ports, the summary)"
[[ -x $MOSQUITTO ]] || die "mosquitto not found (apt-get install -y mosquitto)"
[[ -x $MOSQUITTO_SUB && -x $MOSQUITTO_PUB ]] ||
    die "mosquitto_sub/mosquitto_pub not found (apt-get install -y mosquitto-clients)"

if [[ $BUILD == 1 ]]; then
    log "building (release): the drain helper, sensorgate"
    # The bench first: it also links a bench-profile (panic = unwind) sensorgate into
    # target/release, which the release build then puts back.
    built=$(cd "$ROOT" && nice cargo bench -p sensorgate --bench drain --no-run \
        --message-format=json-render-diagnostics) || die "cargo bench --no-run failed"
    (cd "$ROOT" && nice cargo build --release -p sensorgate) >&2
    DRAIN=${DRAIN:-$(python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "drain" and m.get("executable"):
        print(m["executable"])
' <<<"$built" | tail -n1)}
fi
if [[ -z $DRAIN ]]; then
    DRAIN=$(find "$TARGET_DIR/release/deps" -maxdepth 1 -type f -executable \
        -regex '.*/drain-[0-9a-f]+' -printf '%T@ %p\n' 2>/dev/null | sort -n | tail -n1 | cut -d' ' -f2-)
fi
[[ -x $SENSORGATE ]] || die "no $SENSORGATE (cargo build --release -p sensorgate)"
[[ -n $DRAIN && -x $DRAIN ]] || die "no drain helper (cargo bench -p sensorgate --bench drain --no-run)"

TMP=$(mktemp -d /tmp/drain-vs-rumqttc.XXXXXX)
PIDS=()
cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do stop_pid "$pid" 3 || true; done
    if [[ $KEEP_TMP == 1 || $rc != 0 ]]; then
        echo "drain-vs-rumqttc: files kept in $TMP" >&2
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

now() { date +%s.%N; }
lines() { if [[ -f $1 ]]; then wc -l <"$1"; else echo 0; fi; }

# --- the upstream broker, for the whole script ---
MQ_PORT=$(free_port)
cat >"$TMP/mosquitto.conf" <<EOF
listener $MQ_PORT 127.0.0.1
allow_anonymous true
max_queued_messages 0
persistence false
EOF
"$MOSQUITTO" -c "$TMP/mosquitto.conf" >"$TMP/mosquitto.log" 2>&1 &
MQ_PID=$!
PIDS+=("$MQ_PID")
wait_port "$MQ_PID" "$MQ_PORT" || die "mosquitto did not start (see $TMP/mosquitto.log)"
# A retained marker: each run's subscriber gets it first, which shows it is subscribed.
"$MOSQUITTO_PUB" -h 127.0.0.1 -p "$MQ_PORT" -q 1 -r -t "$TOPIC/ready" -m ready
log "mosquitto $("$MOSQUITTO" -h 2>/dev/null | head -n1 | awk '{print $3}') on 127.0.0.1:$MQ_PORT (pid $MQ_PID)"
log "sensorgate: $SENSORGATE"
log "drain helper: $DRAIN"

# Starts the counting subscriber for run directory $1; waits for the marker.
SUB_PID=
start_sub() {
    local dir=$1 deadline
    "$MOSQUITTO_SUB" -h 127.0.0.1 -p "$MQ_PORT" -q 1 -i "drain-sub-$(basename "$dir")" \
        -t "$TOPIC/#" -C $((COUNT + 1)) -F '%U' >"$dir/recv.txt" 2>"$dir/sub.log" &
    SUB_PID=$!
    PIDS+=("$SUB_PID")
    deadline=$((SECONDS + 10))
    while (($(lines "$dir/recv.txt") < 1)); do
        ((SECONDS < deadline)) || die "the subscriber got no marker (see $dir)"
        alive "$SUB_PID" || die "mosquitto_sub exited (see $dir/sub.log)"
        sleep 0.05
    done
}
# Waits (TIMEOUT) until the subscriber has COUNT + 1 lines and exited; 1 on timeout.
wait_sub() {
    local deadline=$((SECONDS + TIMEOUT))
    while alive "$SUB_PID"; do
        if ((SECONDS >= deadline)); then
            log "timeout: $(($(lines "$1/recv.txt") - 1)) of $COUNT messages arrived"
            stop_pid "$SUB_PID" 3
            return 1
        fi
        sleep 0.02
    done
    wait "$SUB_PID" 2>/dev/null || true
}


RESULTS="$TMP/results.jsonl"
: >"$RESULTS"
FAILED=0

# Waits (TIMEOUT) until the buffer in state dir $1 is empty; prints the time (epoch s).
wait_empty() {
    python3 - "$1/buffer.db" "$TIMEOUT" <<'EOF'
import sqlite3, sys, time
db, limit = sys.argv[1], float(sys.argv[2])
c = sqlite3.connect(db, timeout=5)
end = time.time() + limit
while time.time() < end:
    if not c.execute("SELECT EXISTS (SELECT 1 FROM outbox)").fetchone()[0]:
        print(f"{time.time():.6f}")
        sys.exit(0)
    time.sleep(0.01)
sys.exit(1)
EOF
}

# The time of the daemon's "upstream connected" line in log $1 (epoch s), or 0.
connected_at() {
    python3 - "$1" <<'EOF'
import datetime, sys
for line in open(sys.argv[1], errors="replace"):
    if "upstream connected" in line:
        ts = line.split()[0].replace("Z", "+00:00")
        print(datetime.datetime.fromisoformat(ts).timestamp())
        break
else:
    print(0)
EOF
}

run_sensorgate() { # round mode
    local dir="$TMP/$2-a$1" port t0 t_end=0 t_conn ok=1 pid
    mkdir -p "$dir/state"
    "$DRAIN" fill "$dir/state" --count "$COUNT" --size "$SIZE" --topic "$TOPIC" 2>"$dir/fill.log" ||
        die "fill failed: $(cat "$dir/fill.log")"
    port=$(free_port)
    cat >"$dir/sensorgate.toml" <<EOF
[gateway]
id = "bench-drain"
state_dir = "$dir/state"

[broker]
listen = "127.0.0.1:$port"

[buffer]
max_bytes = "1 GiB"

[upstream]
url = "mqtt://127.0.0.1:$MQ_PORT"
client_id = "bench-drain-$2-a$1"
drain_rate = $DRAIN_RATE

[[upstream.route]]
filter = "$TOPIC/#"
direction = "out"
qos = 1
EOF
    if [[ $2 == sub ]]; then start_sub "$dir"; fi
    t0=$(now)
    "$SENSORGATE" run --config "$dir/sensorgate.toml" >/dev/null 2>"$dir/sensorgate.log" &
    pid=$!
    PIDS+=("$pid")
    if [[ $2 == sub ]]; then
        wait_sub "$dir" || ok=0
        # Every PUBACK in and the rows deleted: `buffer stats` says so.
        local deadline=$((SECONDS + 20)) stats=""
        while ((SECONDS < deadline)); do
            stats=$("$SENSORGATE" buffer stats --config "$dir/sensorgate.toml" 2>&1 || true)
            if [[ $stats == *": 0 message(s)"* ]]; then
                t_end=$(now)
                break
            fi
            sleep 0.1
        done
        if [[ $t_end == 0 ]]; then
            log "the buffer did not empty: $stats"
            ok=0
        fi
    elif ! t_end=$(wait_empty "$dir/state"); then
        log "the buffer did not empty within ${TIMEOUT}s"
        t_end=0
        ok=0
    fi
    stop_pid "$pid" 10
    t_conn=$(connected_at "$dir/sensorgate.log")
    result "$1" "$2" sensorgate "$dir" "$t0" "$t_end" "$t_conn" "$ok"
}

run_rumqttc() { # round mode
    local dir="$TMP/$2-b$1" t0 ok=1
    mkdir -p "$dir"
    if [[ $2 == sub ]]; then start_sub "$dir"; fi
    t0=$(now)
    if ! timeout "$TIMEOUT" "$DRAIN" publish --port "$MQ_PORT" --count "$COUNT" --size "$SIZE" \
        --topic "$TOPIC" --timeout "$TIMEOUT" >"$dir/publish.json" 2>"$dir/publish.log"; then
        log "the rumqttc publisher failed: $(cat "$dir/publish.log")"
        ok=0
    fi
    if [[ $2 == sub ]]; then wait_sub "$dir" || ok=0; fi
    result "$1" "$2" rumqttc "$dir" "$t0" 0 0 "$ok"
}

result() { # round mode subject dir t0 t_end t_connected ok
    python3 - "$@" "$COUNT" >>"$RESULTS" <<'EOF'
import json, sys
rnd, mode, subject, d, t0, t_end, t_conn, ok, count = sys.argv[1:10]
t0, t_end, t_conn, count = float(t0), float(t_end), float(t_conn), int(count)
r = {"round": int(rnd), "mode": mode, "subject": subject, "ok": ok == "1"}
if subject == "rumqttc":
    try:
        p = json.loads(open(d + "/publish.json").read().strip().splitlines()[-1])
        t_conn, t_end = p["connected"], p["done"]
        r["client_publish_s"] = p["publish_s"]
    except (OSError, ValueError, IndexError, KeyError):
        r["ok"] = False
if mode == "sub":
    times = []
    with open(d + "/recv.txt") as f:
        for line in list(f)[1:]:  # the first line is the retained marker
            try:
                times.append(float(line.strip()))
            except ValueError:
                pass
    r["received"] = len(times)
    if len(times) >= 2:
        r["start_s"] = round(times[0] - t0, 4)
        r["steady_s"] = round(times[-1] - times[0], 4)
        r["steady_msgs_per_s"] = round((len(times) - 1) / (times[-1] - times[0]))
        r["wall_s"] = round(times[-1] - t0, 4)
        r["wall_msgs_per_s"] = round(len(times) / (times[-1] - t0))
    if subject == "sensorgate" and t_end > 0:
        r["done_s"] = round(t_end - t0, 3)
else:
    r["received"] = count if r["ok"] else None
    if t_end > 0 and t_conn > 0:
        r["start_s"] = round(t_conn - t0, 4)
        r["steady_s"] = round(t_end - t_conn, 4)
        r["steady_msgs_per_s"] = round(count / (t_end - t_conn))
    if t_end > 0:
        r["wall_s"] = round(t_end - t0, 4)
        r["wall_msgs_per_s"] = round(count / (t_end - t0))
print(json.dumps(r))
EOF
    local got=$COUNT what=acknowledged
    if [[ $2 == sub ]]; then
        got=$(($(lines "$4/recv.txt") - 1))
        what=received
    fi
    if [[ $8 != 1 || $got -lt $COUNT ]]; then FAILED=1; fi
    log "round $1 $2 $3: $got of $COUNT $what"
}

log "COUNT=$COUNT SIZE=$SIZE ROUNDS=$ROUNDS DRAIN_RATE=$DRAIN_RATE; files in $TMP"
for ((r = 1; r <= ROUNDS; r++)); do
    for mode in sub nosub; do
        run_sensorgate "$r" "$mode"
        sleep "$PAUSE"
        run_rumqttc "$r" "$mode"
        sleep "$PAUSE"
    done
done

python3 - "$RESULTS" "$OUT" "$COUNT" "$SIZE" <<'EOF'
import json, statistics, sys
path, out, count, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rows = [json.loads(l) for l in open(path) if l.strip()]
def f(v, w=11, p=0):
    return f"{v:>{w}.{p}f}" if isinstance(v, (int, float)) else f"{'-':>{w}}"
print(f"drain of {count} x {size} B at QoS 1 to mosquitto: sensorgate's outbox (A) vs a plain rumqttc client (B)")
hdr = (f"{'round':>5}  {'mode':<6} {'subject':<11}{'received':>9}{'start s':>9}{'steady s':>9}"
       f"{'steady/s':>10}{'wall s':>9}{'wall/s':>10}{'done s':>9}")
print(hdr)
print("-" * len(hdr))
for r in rows:
    print(f"{r['round']:>5}  {r['mode']:<6} {r['subject']:<11}{f(r.get('received'), 9)}{f(r.get('start_s'), 9, 3)}"
          f"{f(r.get('steady_s'), 9, 3)}{f(r.get('steady_msgs_per_s'), 10)}{f(r.get('wall_s'), 9, 3)}"
          f"{f(r.get('wall_msgs_per_s'), 10)}{f(r.get('done_s'), 9, 3)}")
print("-" * len(hdr))
med, ratios = {}, {}
for mode in ("sub", "nosub"):
    for s in ("sensorgate", "rumqttc"):
        sel = [r for r in rows if r["subject"] == s and r["mode"] == mode]
        m = {}
        for k in ("steady_msgs_per_s", "wall_msgs_per_s"):
            vals = [r[k] for r in sel if isinstance(r.get(k), (int, float))]
            m[k] = statistics.median(vals) if vals else None
        med[f"{mode}/{s}"] = m
        print(f"{'med':>5}  {mode:<6} {s:<11}{'':>9}{'':>9}{'':>9}{f(m['steady_msgs_per_s'], 10)}"
              f"{'':>9}{f(m['wall_msgs_per_s'], 10)}")
    for k in ("steady_msgs_per_s", "wall_msgs_per_s"):
        a, b = med[f"{mode}/sensorgate"][k], med[f"{mode}/rumqttc"][k]
        ratios[f"{mode}/{k}"] = round(a / b, 3) if a and b else None
print()
for mode in ("sub", "nosub"):
    st, wa = ratios[f"{mode}/steady_msgs_per_s"], ratios[f"{mode}/wall_msgs_per_s"]
    fmt = lambda v: f"{v:.2f}x" if v else "-"
    print(f"ratio sensorgate/rumqttc, {mode:<5} (medians): steady {fmt(st)}, wall {fmt(wa)}   (goal >= 0.8x)")
if out:
    with open(out, "w") as fh:
        json.dump({"count": count, "size": size, "runs": rows, "medians": med, "ratios": ratios},
                  fh, indent=1)
EOF
if [[ $FAILED == 1 ]]; then
    log "some run did not deliver all $COUNT messages"
    exit 1
fi
