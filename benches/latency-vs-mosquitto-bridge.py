#!/usr/bin/env python3
"""Poll -> upstream latency at 1000 readings/s: sensorgate's bridge against a mosquitto bridge.

    python3 benches/latency-vs-mosquitto-bridge.py            # 2 rounds x 15 s per side
    ROUNDS=3 SECONDS_PER_RUN=20 python3 benches/latency-vs-mosquitto-bridge.py
    POINTS=1000 POLL_MS=1000 OUT=/tmp/gw.json python3 benches/latency-vs-mosquitto-bridge.py

An upstream mosquitto ("the cloud") runs on a free 127.0.0.1 port, with one paho
subscriber (QoS 1) on `site/#` that takes, for every message, its receive time minus the
`ts` in its JSON payload (the time the reading was taken, milliseconds).

A (sensorgate): `sensorgate run` with one sim device of POINTS (10) `random` points polled
  every POLL_MS (10) ms (1000 readings/s), `[upstream]` to the cloud mosquitto, one out route at QoS 1,
  `durability = "always"` (each reading is committed to the SQLite outbox before it is
  published anywhere) or DURABILITY=offline.
B (mosquitto bridge): a local mosquitto bridging `bench/#` out at QoS 1 to the cloud
  mosquitto (what people use without sensorgate; messages in memory), and a paho client
  publishing the same 1000 JSON readings/s (100 batches of 10 a second, `ts` stamped
  just before publishing) to it at QoS 0.

A and B alternate, ROUNDS times; the first 2 s of each run are left out (connects,
start-up). Output: p50 / p99 / max latency and readings/s per run, the CPU (% of one core)
and VmRSS / VmHWM of the gateway process (A: sensorgate; B: the bridging mosquitto, not
its publisher, which plays the devices) over the measured window, the medians, and A/B
ratios (lower is better for A); OUT=file also writes them as JSON. Every process started is stopped
by PID (SIGTERM, then SIGKILL). Needs: mosquitto, python3 with paho-mqtt, a release
build (BUILD=1, the default, runs `cargo build --release -p sensorgate`).
"""

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone

import paho.mqtt.client as mqtt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROUNDS = int(os.environ.get("ROUNDS", "2"))
RUN_S = float(os.environ.get("SECONDS_PER_RUN", "15"))
WARMUP_S = 2.0
DURABILITY = os.environ.get("DURABILITY", "always")
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
SENSORGATE = os.environ.get("SENSORGATE", os.path.join(TARGET, "release", "sensorgate"))
MOSQUITTO = os.environ.get("MOSQUITTO", "mosquitto")
POINTS = int(os.environ.get("POINTS", "10"))
POLL_MS = int(os.environ.get("POLL_MS", "10"))
OUT = os.environ.get("OUT", "")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, limit=10.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {limit} s")


def stop(proc, grace=10.0):
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def parse_ts(ts):
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


class Cloud:
    """The upstream mosquitto and its subscriber."""

    def __init__(self, tmp):
        self.port = free_port()
        conf = os.path.join(tmp, "cloud.conf")
        with open(conf, "w") as f:
            f.write(f"listener {self.port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", conf], stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(tmp, "cloud.log"), "w"))
        wait_port(self.port)
        self.lock = threading.Lock()
        self.samples = []
        self.recording = False
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="cloud-sub")
        self.client.on_message = self.on_message
        self.client.connect("127.0.0.1", self.port)
        self.client.subscribe("site/#", qos=1)
        self.client.loop_start()

    def on_message(self, _c, _u, msg):
        now = time.time()
        if not self.recording:
            return
        try:
            ts = json.loads(msg.payload)["ts"]
        except (ValueError, KeyError, TypeError):
            return
        with self.lock:
            self.samples.append((now - parse_ts(ts)) * 1000.0)

    def record(self, seconds, pid):
        """Latency samples for `seconds` after the warm-up, and process `pid`'s CPU (% of
        one core) and memory over the same window."""
        time.sleep(WARMUP_S)
        with self.lock:
            self.samples = []
        cpu0 = cpu_seconds(pid)
        self.recording = True
        time.sleep(seconds)
        self.recording = False
        usage = {
            "cpu_pct": 100.0 * (cpu_seconds(pid) - cpu0) / seconds,
            "rss_mib": status_kib(pid, "VmRSS") / 1024,
            "hwm_mib": status_kib(pid, "VmHWM") / 1024,
        }
        with self.lock:
            return list(self.samples), usage

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()
        stop(self.proc)


def run_sensorgate(tmp, cloud, n):
    port = free_port()
    d = os.path.join(tmp, f"sg-{n}")
    os.makedirs(d)
    points = "".join(f'\n[[device.point]]\nname = "p{i}"\nsignal = "random"\n' for i in range(POINTS))
    conf = os.path.join(d, "sensorgate.toml")
    with open(conf, "w") as f:
        f.write(f"""[gateway]
id = "bench"
topic_prefix = "bench"
state_dir = "{d}/state"

[broker]
listen = "127.0.0.1:{port}"

[buffer]
durability = "{DURABILITY}"

[upstream]
url = "mqtt://127.0.0.1:{cloud.port}"
client_id = "sg-bench-{n}"

[[upstream.route]]
filter = "bench/#"
direction = "out"
qos = 1
remote_prefix = "site/"

[[device]]
name = "dev"
plugin = "sim"
poll_interval = "{POLL_MS}ms"
{points}""")
    env = dict(os.environ, RUST_LOG="warn")
    proc = subprocess.Popen([SENSORGATE, "run", "--config", conf], stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(d, "log"), "w"), env=env)
    try:
        wait_port(port)
        return cloud.record(RUN_S, proc.pid)
    finally:
        stop(proc)


def run_mosquitto_bridge(tmp, cloud, n):
    port = free_port()
    conf = os.path.join(tmp, f"bridge-{n}.conf")
    with open(conf, "w") as f:
        f.write(f"""listener {port} 127.0.0.1
allow_anonymous true
connection up
address 127.0.0.1:{cloud.port}
clientid mosq-bench-{n}
cleansession true
topic bench/# out 1 "" site/
""")
    proc = subprocess.Popen([MOSQUITTO, "-c", conf], stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(tmp, f"bridge-{n}.log"), "w"))
    pub = None
    stop_flag = threading.Event()
    try:
        wait_port(port)
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"dev-{n}")
        pub.connect("127.0.0.1", port)
        pub.loop_start()

        def publish():
            nxt = time.monotonic()
            while not stop_flag.is_set():
                t = time.time()
                ts = datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
                for i in range(POINTS):
                    pub.publish(f"bench/dev/p{i}", json.dumps({"value": 50.0, "ts": ts}), qos=0, retain=True)
                nxt += POLL_MS / 1000.0
                time.sleep(max(0.0, nxt - time.monotonic()))

        th = threading.Thread(target=publish, daemon=True)
        th.start()
        result = cloud.record(RUN_S, proc.pid)
        stop_flag.set()
        th.join(5)
        return result
    finally:
        stop_flag.set()
        if pub is not None:
            pub.loop_stop()
            pub.disconnect()
        stop(proc)


QUANTITIES = ("rate", "p50", "p99", "max", "cpu_pct", "rss_mib", "hwm_mib")


def summary(result):
    samples, usage = result
    if not samples:
        return None
    s = sorted(samples)
    pick = lambda q: s[min(len(s) - 1, int(q * len(s)))]
    return {"n": len(s), "rate": len(s) / RUN_S, "p50": pick(0.50), "p99": pick(0.99), "max": s[-1], **usage}


def main():
    if os.environ.get("BUILD", "1") == "1":
        subprocess.run(["cargo", "build", "--release", "-p", "sensorgate"], cwd=ROOT, check=True)
    if not os.access(SENSORGATE, os.X_OK):
        sys.exit(f"no {SENSORGATE}: cargo build --release -p sensorgate")
    tmp = tempfile.mkdtemp(prefix="latency-bench.")
    cloud = Cloud(tmp)
    results = {"A": [], "B": []}
    try:
        for r in range(ROUNDS):
            for side, run in (("A", run_sensorgate), ("B", run_mosquitto_bridge)):
                s = summary(run(tmp, cloud, f"{r}{side}"))
                if s is None:
                    sys.exit(f"round {r} {side}: nothing arrived upstream (files in {tmp})")
                results[side].append(s)
                print(f"round {r} {side}: {s['rate']:7.0f} readings/s  p50 {s['p50']:6.1f} ms  "
                      f"p99 {s['p99']:6.1f} ms  max {s['max']:7.1f} ms  CPU {s['cpu_pct']:5.1f} %  "
                      f"RSS {s['rss_mib']:5.1f} MiB (peak {s['hwm_mib']:5.1f})", flush=True)
                time.sleep(1)
    finally:
        cloud.close()
    med = {k: {q: statistics.median(x[q] for x in v) for q in QUANTITIES}
           for k, v in results.items()}
    print(f"\nmedians, {POINTS} points every {POLL_MS} ms, durability = {DURABILITY}:")
    for k, name in (("A", "sensorgate"), ("B", "mosquitto bridge")):
        m = med[k]
        print(f"  {k} {name:<17} p50 {m['p50']:6.1f} ms  p99 {m['p99']:6.1f} ms  ({m['rate']:.0f}/s)  "
              f"CPU {m['cpu_pct']:.1f} %  RSS {m['rss_mib']:.1f} MiB (peak {m['hwm_mib']:.1f})")
    ratio = lambda q: med["A"][q] / med["B"][q] if med["B"][q] > 0 else float("inf")
    print(f"  A/B: p50 {ratio('p50'):.2f}x  p99 {ratio('p99'):.2f}x  CPU {ratio('cpu_pct'):.2f}x")
    result = {"durability": DURABILITY, "points": POINTS, "poll_ms": POLL_MS, "seconds": RUN_S,
              "rounds": ROUNDS, "runs": results, "medians": med}
    print(json.dumps(result))
    if OUT:
        with open(OUT, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
