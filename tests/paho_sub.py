#!/usr/bin/env python3
"""The classic paho-mqtt subscriber: print `topic payload` for N messages, then exit.

usage: paho_sub.py HOST PORT FILTER [COUNT]   (exit 1 if COUNT messages do not come in 10 s)
"""
import sys
import time

import paho.mqtt.client as mqtt

host, port, topic = sys.argv[1], int(sys.argv[2]), sys.argv[3]
want = int(sys.argv[4]) if len(sys.argv) > 4 else 5
got = []


def on_connect(client, userdata, flags, rc, *args):
    client.subscribe(topic)


def on_message(client, userdata, msg):
    print(msg.topic, msg.payload.decode("utf-8", "replace"), flush=True)
    got.append(msg)


try:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
except AttributeError:  # paho-mqtt 1.x
    client = mqtt.Client()
client.on_connect = on_connect
client.on_message = on_message
client.connect(host, port, 30)
client.loop_start()
deadline = time.time() + 10
while len(got) < want and time.time() < deadline:
    time.sleep(0.05)
client.loop_stop()
client.disconnect()
sys.exit(0 if len(got) >= want else 1)
