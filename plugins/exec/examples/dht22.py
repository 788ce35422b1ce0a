#!/usr/bin/env python3
"""A fake DHT22 (temperature and humidity) for sensorgate's exec plugin, stream mode.

It prints one JSON object a line on standard output (exec protocol 1) and logs on
standard error with the prefixes E! W! I! D!. Standard library only, so it runs
anywhere; to read a real DHT22, replace read_sensor() (for instance with the
adafruit-circuitpython-dht package: `adafruit_dht.DHT22(board.D4)`), keep the rest.

    [[device]]
    name = "greenhouse"
    plugin = "exec"
    poll_interval = "5s"          # this script reads SENSORGATE_POLL_INTERVAL_MS
    command = ["python3", "/opt/sensors/dht22.py"]

Options: --form point (default: one line per point, with its unit) or --form object
(one line {"temperature": .., "humidity": ..}); --fail-rate F, the share of reads
that fail a checksum like a real DHT22 does now and then (default 0.05).
"""

import argparse
import json
import math
import os
import random
import signal
import sys
import time


class Stop(Exception):
    """SIGTERM came: time to exit."""


def log(prefix, message):
    """One line on standard error; sensorgate logs it at the prefix's level."""
    print(f"{prefix} {message}", file=sys.stderr, flush=True)


def emit(obj):
    """One reading line. flush=True matters: a pipe is block-buffered otherwise
    (sensorgate also sets PYTHONUNBUFFERED=1)."""
    print(json.dumps(obj, ensure_ascii=False), flush=True)


def read_sensor(t0, fail_rate):
    """A slow daily wave plus noise; None when the 'checksum' fails."""
    if random.random() < fail_rate:
        return None
    phase = (time.time() - t0) / 600.0 * 2 * math.pi
    temperature = 21.0 + 3.0 * math.sin(phase) + random.uniform(-0.2, 0.2)
    humidity = 45.0 - 10.0 * math.sin(phase) + random.uniform(-1.0, 1.0)
    return round(temperature, 1), round(humidity, 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--form", choices=["point", "object"], default="point")
    parser.add_argument("--fail-rate", type=float, default=0.05)
    args = parser.parse_args()

    # sensorgate sends SIGTERM on shutdown. Raising from the handler ends a
    # time.sleep() at once (a flag alone would wait for the sleep to finish).
    def stop(_signum, _frame):
        raise Stop()

    signal.signal(signal.SIGTERM, stop)

    interval = int(os.environ.get("SENSORGATE_POLL_INTERVAL_MS", "2000")) / 1000.0
    device = os.environ.get("SENSORGATE_DEVICE", "dht22")
    log("I!", f"fake DHT22 for device {device}, a reading every {interval:g}s")
    t0 = time.time()
    try:
        while True:
            reading = read_sensor(t0, args.fail_rate)
            if reading is None:
                log("W!", "checksum did not validate; trying again at the next interval")
            else:
                temperature, humidity = reading
                if args.form == "object":
                    emit({"temperature": temperature, "humidity": humidity})
                else:
                    emit({"point": "temperature", "value": temperature, "unit": "°C"})
                    emit({"point": "humidity", "value": humidity, "unit": "%"})
                log("D!", f"read {temperature} °C, {humidity} %")
            time.sleep(interval)
    except Stop:
        log("I!", "stopping")
    return 0


if __name__ == "__main__":
    sys.exit(main())
