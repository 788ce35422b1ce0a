# shellcheck shell=bash
# Shell helpers shared by the benchmark scripts (sourced, not run). The script sets
# BENCH (its name, for messages) before sourcing; START_TIMEOUT and STOP_TIMEOUT are
# honoured when set.

die() { echo "${BENCH:-bench}: $*" >&2; exit 1; }
log() { echo "[$(date +%T)] $*" >&2; }

# The state letter of /proc/PID/stat (after the "(comm)" field, which may hold spaces).
proc_state() { sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1; }
alive() {
    local s
    s=$(proc_state "$1") || return 1
    [[ -n $s && $s != Z && $s != X ]]
}

# utime + stime of PID in seconds.
cpu_seconds() {
    sed 's/^.*) //' "/proc/$1/stat" | awk -v t="$(getconf CLK_TCK)" '{ printf "%.3f", ($12 + $13) / t }'
}
# A field of /proc/PID/status in KiB (VmRSS, VmHWM, …) or as it stands (Threads).
status_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
vmhwm_kib() { status_kib "$1" VmHWM; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# SIGTERM, then SIGKILL after $2 seconds (STOP_TIMEOUT, 10); reaps the child. Never
# waits unbounded.
stop_pid() {
    local pid=$1 timeout=${2:-${STOP_TIMEOUT:-10}} deadline
    alive "$pid" || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + timeout))
    while alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
    if alive "$pid"; then
        log "pid $pid did not stop within ${timeout}s of SIGTERM: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        deadline=$((SECONDS + 5))
        while alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
    fi
    alive "$pid" || wait "$pid" 2>/dev/null || true
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Wait until 127.0.0.1:$2 accepts a TCP connection while PID $1 is alive (START_TIMEOUT,
# 20 s). Returns 1 on timeout, 2 when the process is gone.
wait_port() {
    local pid=$1 port=$2 deadline=$((SECONDS + ${START_TIMEOUT:-20}))
    while ((SECONDS < deadline)); do
        alive "$pid" || return 2
        if timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    return 1
}

# A temporary directory TMP and a list PIDS of processes the script starts: on exit every
# PID is stopped and TMP removed (kept when KEEP_TMP=1 or the script failed). INT and TERM
# end the script the usual way.
start_tmp() {
    TMP=$(mktemp -d "/tmp/${BENCH:-bench}.XXXXXX")
    PIDS=()
    trap _cleanup_tmp EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}
_cleanup_tmp() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    if [[ ${KEEP_TMP:-0} == 1 || $rc != 0 ]]; then echo "${BENCH:-bench}: files kept in $TMP" >&2; else rm -rf "$TMP"; fi
    exit "$rc"
}
