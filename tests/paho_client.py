#!/usr/bin/env python3
"""A paho-mqtt client for the broker tests: connect, subscribe, publish, listen, and print
what the broker answered as JSON lines on stdout:

  {"connack": CODE}          the CONNACK's return code (3.1.1) or reason code (v5)
  {"suback": [CODE, ...]}    one code per filter (3.1.1: granted QoS or 128; v5 reason codes)
  {"puback": MID}            a QoS 1 publish was acknowledged
  {"msg": TOPIC, "payload": TEXT, "retain": BOOL}
  {"closed": RC}             the connection ended without our DISCONNECT

usage: paho_client.py HOST PORT [--v5] [--id ID] [--user U] [--password P]
         [--keepalive S] [--sub FILTER]... [--qos Q] [--rh 0|1|2] [--pub TOPIC PAYLOAD]...
         [--count N] [--wait S] [--cafile F] [--cert F --key F]
         [--persistent [--expiry S]] [--no-ack] [--will TOPIC PAYLOAD [--will-retain]]
         [--drop | --disconnect-with-will]
Listens for --count messages or --wait seconds (default 2) after its publishes.
--persistent: 3.1.1 clean session off / MQTT 5 clean start off with a session expiry
(--expiry, default 3600 s); the connack line then says "session_present" too.
--no-ack: never acknowledge a QoS 1 message. --drop: end by closing the socket
without DISCONNECT (the broker sends the will). --disconnect-with-will: MQTT 5
DISCONNECT with reason 0x04 (the broker sends the will too).
"""
import argparse
import json
import sys
import time

import paho.mqtt.client as mqtt

ap = argparse.ArgumentParser()
ap.add_argument("host")
ap.add_argument("port", type=int)
ap.add_argument("--v5", action="store_true")
ap.add_argument("--id", default="")
ap.add_argument("--user")
ap.add_argument("--password")
ap.add_argument("--keepalive", type=int, default=30)
ap.add_argument("--sub", action="append", default=[])
ap.add_argument("--qos", type=int, default=0)
ap.add_argument("--rh", type=int, default=0, help="v5 retain handling of --sub")
ap.add_argument("--pub", nargs=2, action="append", default=[])
ap.add_argument("--count", type=int, default=0)
ap.add_argument("--wait", type=float, default=2.0)
ap.add_argument("--cafile")
ap.add_argument("--cert")
ap.add_argument("--key")
ap.add_argument("--persistent", action="store_true")
ap.add_argument("--expiry", type=int, default=3600)
ap.add_argument("--no-ack", action="store_true")
ap.add_argument("--will", nargs=2)
ap.add_argument("--will-retain", action="store_true")
ap.add_argument("--drop", action="store_true")
ap.add_argument("--disconnect-with-will", action="store_true")
ap.add_argument("--alias-max", type=int, default=0, help="v5 topic alias maximum")
a = ap.parse_args()

state = {"connack": None, "suback": False, "msgs": 0, "closed": False, "pubacks": 0}


def out(obj):
    print(json.dumps(obj), flush=True)


def code(c):
    return c.value if hasattr(c, "value") else int(c)


def on_connect(client, userdata, flags, rc, properties=None):
    state["connack"] = code(rc)
    present = flags.get("session present") if isinstance(flags, dict) else getattr(flags, "session_present", None)
    out({"connack": code(rc), "session_present": bool(present)})


def on_subscribe(client, userdata, mid, granted, properties=None):
    out({"suback": [code(g) for g in granted]})
    state["suback"] = True


def on_message(client, userdata, msg):
    out({"msg": msg.topic, "payload": msg.payload.decode("utf-8", "replace"), "retain": bool(msg.retain)})
    state["msgs"] += 1


def on_publish(client, userdata, mid, *args):
    if a.qos > 0:
        out({"puback": mid})
        state["pubacks"] += 1


def on_disconnect(client, userdata, rc, *args):
    if not state["closed"]:
        out({"closed": code(rc)})
    state["closed"] = True


protocol = mqtt.MQTTv5 if a.v5 else mqtt.MQTTv311
if a.v5:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION1, client_id=a.id, protocol=protocol)
else:
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION1, client_id=a.id, protocol=protocol, clean_session=not a.persistent
    )
if a.no_ack:
    client.manual_ack_set(True)
if a.will:
    client.will_set(a.will[0], a.will[1], qos=1, retain=a.will_retain)
client.on_connect = on_connect
client.on_subscribe = on_subscribe
client.on_message = on_message
client.on_publish = on_publish
client.on_disconnect = on_disconnect
if a.user is not None:
    client.username_pw_set(a.user, a.password)
if a.cafile:
    client.tls_set(ca_certs=a.cafile, certfile=a.cert, keyfile=a.key)


def run_until(pred, seconds):
    deadline = time.time() + seconds
    while not pred() and not state["closed"] and time.time() < deadline:
        client.loop(0.05)


try:
    if a.v5:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = None
        if a.persistent or a.alias_max:
            props = Properties(PacketTypes.CONNECT)
        if a.persistent:
            props.SessionExpiryInterval = a.expiry
        if a.alias_max:
            props.TopicAliasMaximum = a.alias_max
        client.connect(a.host, a.port, a.keepalive, clean_start=not a.persistent, properties=props)
    else:
        client.connect(a.host, a.port, a.keepalive)
except Exception as e:  # noqa: BLE001 - report every connect failure the same way
    out({"closed": str(e)})
    sys.exit(0)
run_until(lambda: state["connack"] is not None, 10)
if state["connack"] != 0:
    if state["connack"] is None and not state["closed"]:
        out({"closed": "no CONNACK"})
    sys.exit(0)
if a.sub:
    if a.v5:
        from paho.mqtt.subscribeoptions import SubscribeOptions

        client.subscribe([(f, SubscribeOptions(qos=a.qos, retainHandling=a.rh)) for f in a.sub])
    else:
        client.subscribe([(f, a.qos) for f in a.sub])
    run_until(lambda: state["suback"], 10)
for topic, payload in a.pub:
    client.publish(topic, payload, qos=a.qos)
if a.qos > 0 and a.pub:
    run_until(lambda: state["pubacks"] >= len(a.pub), 10)
if a.count:
    run_until(lambda: state["msgs"] >= a.count, max(a.wait, 10))
else:
    run_until(lambda: False, a.wait)
if not state["closed"]:
    state["closed"] = True
    if a.drop:
        client.socket().close()
    elif a.disconnect_with_will:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.reasoncodes import ReasonCode

        client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"))
        client.loop(0.1)
    else:
        client.disconnect()
        client.loop(0.1)
