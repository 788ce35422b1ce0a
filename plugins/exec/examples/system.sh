#!/bin/sh
# Gateway health for sensorgate's exec plugin, poll mode: started once per
# poll_interval, prints its readings (exec protocol 1) and exits. POSIX sh and awk only.
#
#   [[device]]
#   name = "gateway"
#   plugin = "exec"
#   poll_interval = "30s"
#   mode = "poll"
#   timeout = "5s"
#   command = ["sh", "/opt/sensors/system.sh"]
#
# Exit 0 when all went well; a non-zero exit with nothing printed marks the device
# offline, and what was last written to standard error is in the warning.

set -u

# Load averages: one line, every key a point.
if read -r l1 l5 l15 _rest < /proc/loadavg; then
    printf '{"load1": %s, "load5": %s, "load15": %s}\n' "$l1" "$l5" "$l15"
else
    echo "E! cannot read /proc/loadavg" >&2
    exit 1
fi

# Memory the kernel says is available, with its unit: the one-reading form.
avail=$(awk '/^MemAvailable:/ { print $2 }' /proc/meminfo 2>/dev/null)
if [ -n "${avail:-}" ]; then
    printf '{"point": "mem_available", "value": %s, "unit": "KiB"}\n' "$avail"
fi

# The SoC temperature, where the board has a sensor (a Raspberry Pi does).
zone=/sys/class/thermal/thermal_zone0/temp
if [ -r "$zone" ]; then
    awk '{ printf "{\"point\": \"cpu_temperature\", \"value\": %.1f, \"unit\": \"°C\"}\n", $1 / 1000 }' "$zone"
else
    echo "D! no $zone on this machine; no cpu_temperature" >&2
fi
