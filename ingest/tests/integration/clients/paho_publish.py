#!/usr/bin/env python3
"""Publishes uplinks with Eclipse paho-mqtt (1.6 or 2.x) at QoS 1, one after another,
waiting for each PUBACK — what a standard device client does, with no ack-topic
subscription. Used by ingest/tests/integration/endpoint.rs.

usage: paho_publish.py HOST PORT CLIENT_ID USERNAME PASSWORD TOPIC PAYLOAD...
       (USERNAME and PASSWORD "-" for none)

Prints "connected", then "puback N" as the N-th publish is acknowledged. Exits 0 once
every publish is acknowledged, 2 when the CONNECT is refused, 3 on a timeout.
"""

import sys
import threading

import paho.mqtt.client as mqtt

TIMEOUT_S = 20


def main() -> int:
    host, port, client_id, username, password, topic = sys.argv[1:7]
    payloads = sys.argv[7:]
    if hasattr(mqtt, "CallbackAPIVersion"):  # paho-mqtt 2.x
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
        )
    else:  # paho-mqtt 1.x
        client = mqtt.Client(client_id=client_id, protocol=mqtt.MQTTv311)
    if username != "-":
        client.username_pw_set(username, None if password == "-" else password)

    connected = threading.Event()
    outcome = {}

    # 1.x calls (client, userdata, flags, rc); 2.x (…, reason_code, properties).
    def on_connect(_client, _userdata, _flags, rc, _properties=None):
        outcome["rc"] = rc
        connected.set()

    client.on_connect = on_connect
    client.connect(host, int(port), keepalive=30)
    client.loop_start()
    try:
        if not connected.wait(TIMEOUT_S):
            print("timeout waiting for CONNACK", flush=True)
            return 3
        if outcome["rc"] != 0:
            print(f"refused {outcome['rc']}", flush=True)
            return 2
        print("connected", flush=True)
        for n, payload in enumerate(payloads, 1):
            info = client.publish(topic, payload, qos=1)
            info.wait_for_publish(timeout=TIMEOUT_S)
            if not info.is_published():
                print(f"timeout waiting for PUBACK {n}", flush=True)
                return 3
            print(f"puback {n}", flush=True)
        client.disconnect()
        return 0
    finally:
        client.loop_stop()


if __name__ == "__main__":
    sys.exit(main())
