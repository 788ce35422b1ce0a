#!/usr/bin/env python3
"""Every performance scenario of sensorgate against mosquitto, in one run; writes BENCHMARKS.md.

    python3 benches/suite.py                    # the whole suite (about 10 minutes on 2 cores)
    QUICK=1 ROUNDS=1 python3 benches/suite.py   # a smoke run (about 3 minutes)
    ONLY=paced-qos0,idle python3 benches/suite.py

Scenarios (sensorgate and mosquitto on free 127.0.0.1 ports, one at a time, A B A B):
  flat-out  QoS 0 and QoS 1, 1 -> 1, 10 -> 1 and 1 -> 10, 64-byte payloads
            (benches/broker-vs-mosquitto.sh with benches/mqtt-load): msgs/s, loss, peak
            RSS (VmHWM), CPU seconds per 100 000 deliveries
  paced     QoS 0 and QoS 1 at 5 000 msgs/s with TCP_NODELAY clients: p50 / p99 latency,
            CPU per message
  idle      the demo gateway (config/sensorgate.toml) idle for IDLE_S seconds
            (benches/idle-rss.sh) beside an idle mosquitto: RSS, CPU
  gateway   the whole gateway: a 1 000-point sim device at 1 000 readings/s, bridged to an
            upstream mosquitto, against a mosquitto bridge fed the same readings
            (benches/latency-vs-mosquitto-bridge.py): CPU % of one core, RSS, poll -> upstream
            latency

Environment: ROUNDS (2), QUICK (0: 1 = smaller counts), ONLY (comma-separated scenario
names), BUILD (1: cargo build --release first), IDLE_S (60), OUT (BENCHMARKS.md at the
repository root), KEEP (1: keep the raw JSON results, printed at the end).
Needs mosquitto, python3 with paho-mqtt, and a machine left alone while it runs: the
ratios come from the same run, the absolute figures depend on the machine.
"""

import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROUNDS = int(os.environ.get("ROUNDS", "2"))
QUICK = os.environ.get("QUICK", "0") == "1"
ONLY = [s for s in os.environ.get("ONLY", "").split(",") if s]
BUILD = os.environ.get("BUILD", "1") == "1"
IDLE_S = int(os.environ.get("IDLE_S", "60"))
OUT = os.environ.get("OUT", os.path.join(ROOT, "BENCHMARKS.md"))
KEEP = os.environ.get("KEEP", "0") == "1"
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
MOSQUITTO = os.environ.get("MOSQUITTO", "mosquitto")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def count(n):
    return max(1000, n // 4) if QUICK else n


# name, mqtt-load arguments (added to broker-vs-mosquitto.sh's defaults: 1 -> 1, QoS 0,
# 200 000 x 64 B, flat-out)
FLAT = [
    ("qos0-1to1", f"--count {count(200000)}"),
    ("qos0-10to1", f"--publishers 10 --count {count(20000)}"),
    ("qos0-1to10", f"--subscribers 10 --count {count(50000)}"),
    ("qos1-1to1", f"--qos 1 --count {count(200000)}"),
    ("qos1-10to1", f"--qos 1 --publishers 10 --count {count(20000)}"),
    ("qos1-1to10", f"--qos 1 --subscribers 10 --count {count(20000)}"),
]
PACED = [
    ("paced-qos0", f"--rate 5000 --count {count(50000)} --nodelay"),
    ("paced-qos1", f"--qos 1 --rate 5000 --count {count(50000)} --nodelay"),
]


def wanted(name):
    return not ONLY or name in ONLY or name.split("-")[0] in ONLY


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(cmd, env=None, what=""):
    log(f"{what}: {' '.join(cmd)}")
    r = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, **(env or {})),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        sys.stderr.write(r.stdout[-3000:] + r.stderr[-3000:])
        raise SystemExit(f"suite: {what} failed (exit {r.returncode})")
    return r.stdout


def broker_pair(name, scenario, tmp):
    out = os.path.join(tmp, f"{name}.json")
    run(["bash", "benches/broker-vs-mosquitto.sh"],
        {"BUILD": "0", "ROUNDS": str(ROUNDS), "OUT": out, "SCENARIO": scenario}, name)
    with open(out) as f:
        return json.load(f)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_usage(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    kib = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("VmRSS", "VmHWM"):
                kib[key] = int(line.split()[1])
    return cpu, kib.get("VmRSS", 0), kib.get("VmHWM", 0)


def idle_mosquitto(tmp, seconds, result):
    port = free_port()
    conf = os.path.join(tmp, "idle-mosquitto.conf")
    with open(conf, "w") as f:
        f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    p = subprocess.Popen([MOSQUITTO, "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1)
        cpu0, _, _ = proc_usage(p.pid)
        time.sleep(seconds)
        cpu1, rss, hwm = proc_usage(p.pid)
        result.update({"vmrss_kib": rss, "vmhwm_kib": hwm, "cpu_idle_s": cpu1 - cpu0, "duration_s": seconds})
    finally:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def idle(tmp):
    out = os.path.join(tmp, "idle.json")
    mosq = {}
    t = threading.Thread(target=idle_mosquitto, args=(tmp, IDLE_S, mosq))
    t.start()
    run(["bash", "benches/idle-rss.sh"], {"BUILD": "0", "DURATION": str(IDLE_S), "OUT": out}, "idle")
    t.join()
    with open(out) as f:
        return {"sensorgate": json.load(f), "mosquitto": mosq}


def gateway(tmp):
    out = os.path.join(tmp, "gateway.json")
    run(["python3", "benches/latency-vs-mosquitto-bridge.py"],
        {"BUILD": "0", "ROUNDS": str(ROUNDS), "POINTS": "1000", "POLL_MS": "1000",
         "SECONDS_PER_RUN": "8" if QUICK else "20", "OUT": out}, "gateway")
    with open(out) as f:
        return json.load(f)


def machine():
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    def out(cmd):
        try:
            return subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True).stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            return "?"
    commit = out(["git", "rev-parse", "--short", "HEAD"])
    if out(["git", "status", "--porcelain", "--untracked-files=no"]) not in ("", "?"):
        commit += " (with uncommitted changes)"
    return {
        "cpus": os.cpu_count(), "cpu": model, "kernel": platform.release(),
        "mosquitto": out([MOSQUITTO, "-h"]), "rustc": out(["rustc", "--version"]),
        "commit": commit, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def fmt(v, spec="{:.2f}"):
    return "–" if v is None else spec.format(v)


def met(ok):
    return "–" if ok is None else ("yes" if ok else "**no**")


def render(results, m):
    L = []
    cmd = "python3 benches/suite.py" + (f"  (ROUNDS={ROUNDS}{', QUICK=1' if QUICK else ''})")
    L += ["# Benchmarks", "",
          "Generated by `python3 benches/suite.py` — do not edit by hand; run it again.", "",
          f"- Machine: {m['cpus']} × {m['cpu']}, Linux {m['kernel']}",
          f"- Peer: {m['mosquitto']}; sensorgate {m['commit']}, {m['rustc']}",
          f"- Run: {m['date']}, `{cmd}`, medians of {ROUNDS} round(s), sensorgate and mosquitto "
          "alternating on free 127.0.0.1 ports, the load generator (benches/mqtt-load) on the "
          "same cores. Ratios are sensorgate ÷ mosquitto from the same run; absolute figures "
          "depend on the machine (a shared machine is noisy).", ""]
    goals = []
    flat = [(n, results[n]) for n, _ in FLAT if n in results]
    if flat:
        L += ["## Flat-out (publishers as fast as they can; 64-byte payloads)", "",
              "| scenario | msgs/s sensorgate | msgs/s mosquitto | ratio | lost sg / mosq | peak RSS MiB sg / mosq | CPU s/100k sg / mosq | CPU ratio |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for n, r in flat:
            s, q, ratio = r["median"]["sensorgate"], r["median"]["mosquitto"], r["ratio_b_over_a"]
            L.append(f"| {n} | {fmt(s['msgs_per_s'], '{:,.0f}')} | {fmt(q['msgs_per_s'], '{:,.0f}')} | "
                     f"{fmt(ratio['msgs_per_s'])}× | {fmt(s['lost'], '{:.0f}')} / {fmt(q['lost'], '{:.0f}')} | "
                     f"{fmt(s['vmhwm_mib'], '{:.1f}')} / {fmt(q['vmhwm_mib'], '{:.1f}')} | "
                     f"{fmt(s['cpu_s_per_100k'], '{:.3f}')} / {fmt(q['cpu_s_per_100k'], '{:.3f}')} | "
                     f"{fmt(ratio['cpu_per_msg'])}× |")
            goals.append((f"{n}: msgs/s ≥ 1.0× mosquitto", fmt(ratio["msgs_per_s"]) + "×",
                          ratio["msgs_per_s"] is not None and ratio["msgs_per_s"] >= 1.0))
            qos1 = n.startswith("qos1")
            ok_rss = s["vmhwm_mib"] is not None and s["vmhwm_mib"] <= 20.0
            ok_loss = not qos1 or s["lost"] == 0
            goals.append((f"{n}: peak RSS ≤ 20 MiB" + (", no QoS 1 loss" if qos1 else ""),
                          f"{fmt(s['vmhwm_mib'], '{:.1f}')} MiB, lost {fmt(s['lost'], '{:.0f}')}",
                          ok_rss and ok_loss))
        L.append("")
    paced = [(n, results[n]) for n, _ in PACED if n in results]
    if paced:
        L += ["## Paced (5 000 msgs/s, clients with TCP_NODELAY): latency and CPU", "",
              "| scenario | p50 ms sg / mosq | p99 ms sg / mosq | p99 ratio | CPU s/100k sg / mosq | CPU ratio | lost sg / mosq |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for n, r in paced:
            s, q, ratio = r["median"]["sensorgate"], r["median"]["mosquitto"], r["ratio_b_over_a"]
            p99 = s["p99_ms"] / q["p99_ms"] if s["p99_ms"] and q["p99_ms"] else None
            L.append(f"| {n} | {fmt(s['p50_ms'])} / {fmt(q['p50_ms'])} | {fmt(s['p99_ms'])} / {fmt(q['p99_ms'])} | "
                     f"{fmt(p99)}× | {fmt(s['cpu_s_per_100k'], '{:.3f}')} / {fmt(q['cpu_s_per_100k'], '{:.3f}')} | "
                     f"{fmt(ratio['cpu_per_msg'])}× | {fmt(s['lost'], '{:.0f}')} / {fmt(q['lost'], '{:.0f}')} |")
            goals.append((f"{n}: p99 ≤ 2× mosquitto", fmt(p99) + "×", p99 is not None and p99 <= 2.0))
            goals.append((f"{n}: CPU per message ≤ 1.0× mosquitto", fmt(ratio["cpu_per_msg"]) + "×",
                          ratio["cpu_per_msg"] is not None and ratio["cpu_per_msg"] <= 1.0))
        L.append("")
    if "idle" in results:
        s, q = results["idle"]["sensorgate"], results["idle"]["mosquitto"]
        mib = lambda k: k / 1024
        L += [f"## Idle ({IDLE_S} s, no clients)", "",
              "| | VmRSS MiB | VmHWM MiB | CPU % of one core |", "| --- | ---: | ---: | ---: |",
              f"| sensorgate, demo config (broker + sim device) | {mib(s['vmrss_kib']):.1f} | {mib(s['vmhwm_kib']):.1f} | "
              f"{100 * float(s['cpu_idle_s']) / IDLE_S:.2f} |",
              f"| mosquitto, no configuration beyond a listener | {mib(q['vmrss_kib']):.1f} | {mib(q['vmhwm_kib']):.1f} | "
              f"{100 * q['cpu_idle_s'] / IDLE_S:.2f} |", ""]
        goals.append(("demo gateway idle RSS ≤ 12 MiB", f"{mib(s['vmrss_kib']):.1f} MiB", mib(s["vmrss_kib"]) <= 12.0))
    if "gateway" in results:
        g = results["gateway"]["medians"]
        a, b = g["A"], g["B"]
        L += ["## The whole gateway: 1 000-point sim device at 1 000 readings/s, bridged", "",
              "sensorgate polls, publishes locally, commits every reading to its SQLite outbox "
              "(`durability = \"always\"`) and bridges it at QoS 1 to an upstream mosquitto; the peer "
              "is a mosquitto bridge fed the same readings by a paho client (its CPU is the bridging "
              "mosquitto's alone; the paho publisher plays the devices).", "",
              "| | readings/s upstream | CPU % of one core | VmRSS MiB | poll → upstream p50 ms | p99 ms |",
              "| --- | ---: | ---: | ---: | ---: | ---: |",
              f"| sensorgate | {a['rate']:.0f} | {a['cpu_pct']:.1f} | {a['rss_mib']:.1f} | {a['p50']:.1f} | {a['p99']:.1f} |",
              f"| mosquitto bridge | {b['rate']:.0f} | {b['cpu_pct']:.1f} | {b['rss_mib']:.1f} | {b['p50']:.1f} | {b['p99']:.1f} |",
              ""]
        goals.append(("whole gateway at 1 000 readings/s ≤ 5 % of one core", f"{a['cpu_pct']:.1f} %", a["cpu_pct"] <= 5.0))
    if goals:
        L += ["## Goals (issue 8)", "", "| goal | measured | met |", "| --- | --- | --- |"]
        L += [f"| {g} | {v} | {met(ok)} |" for g, v, ok in goals]
        L.append("")
    L += ["## Reading these", "",
          "- Flat-out latency is queueing, not broker latency; see the paced rows for latency.",
          "- Routes: the scenarios' subscriptions (QoS 0, and QoS 1 of clean sessions) are routed by "
          "the gateway's front from the publisher's connection to the subscriber's, without "
          "rumqttd's router thread (src/broker/direct.rs); a persistent session's QoS 1, QoS 2 and "
          "`$share` subscriptions still go through the router, at about twice the CPU per message "
          "at a paced rate (benches/README.md, sessions 4 and 5).",
          "- Flow control: a subscriber that falls about half a MiB behind slows down the "
          "publishers of what it gets (the front stops reading them), so nothing is dropped. A "
          "subscriber that reads nothing for 2 s stops holding publishers back; what does not "
          "fit in its 1 MiB mailbox is then dropped and logged (mosquitto, which the comparison "
          "runs with `max_queued_messages 0` = no limit, queues instead).",
          "- Every tool: benches/README.md."]
    return "\n".join(L) + "\n"


def main():
    if BUILD:
        run(["cargo", "build", "--release", "-p", "sensorgate", "-p", "sensorgate-mqtt-load"], what="build")
    tmp = tempfile.mkdtemp(prefix="bench-suite.")
    results = {}
    for name, scenario in FLAT + PACED:
        if wanted(name):
            results[name] = broker_pair(name, scenario, tmp)
    if wanted("idle"):
        results["idle"] = idle(tmp)
    if wanted("gateway"):
        results["gateway"] = gateway(tmp)
    with open(os.path.join(tmp, "suite.json"), "w") as f:
        json.dump(results, f, indent=2)
    text = render(results, machine())
    with open(OUT, "w") as f:
        f.write(text)
    print(text)
    log(f"written to {OUT}; raw results in {tmp}" if KEEP else f"written to {OUT}")
    if not KEEP:
        subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    main()
