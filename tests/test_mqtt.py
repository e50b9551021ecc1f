"""MQTT output against a real mosquitto: nothing lost to outages or restarts, availability, auth, TLS.

The publisher here is edgeav's own (:class:`edgeav.mqtt.MqttPublisher` over the SQLite outbox);
the records are built by :class:`edgeav.records.RecordBuilder`, as the pipeline builds them, and
every payload received is validated against the package's JSON Schemas.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
from mqtt_broker import Broker, Subscriber, free_port, make_test_ca, wait_until

from edgeav.config import parse_config
from edgeav.decide import EventChange, Incident
from edgeav.metrics import mqtt_metrics, render
from edgeav.mqtt import MqttPublisher, Topics
from edgeav.outbox import Outbox
from edgeav.records import RecordBuilder, load_schema

NODE = "box1"
CAM = "gate"
TOPICS = Topics("edgeav", NODE)
# The scenario is a 60 s outage; the suite uses a short one (the mechanism does not depend on the
# length: the outbox is on disk and paho retries with a capped backoff). EDGEAV_TEST_OUTAGE_S=60 runs it in full.
OUTAGE_S = float(os.environ.get("EDGEAV_TEST_OUTAGE_S", "3"))


def mqtt_config(port: int, **mqtt: object):
    return parse_config({"node": {"name": NODE}, "mqtt": {"host": "127.0.0.1", "port": port, **mqtt}},
                        "test.yaml").mqtt


def alerts(n: int, first: int = 0) -> list[dict]:
    rb = RecordBuilder(CAM, "bundle-test", wall_origin=1.7e9)
    return [rb.alert(Incident(10.0 * i, 10.0 * i + 1.5, 0.9), 0.5) for i in range(first, first + n)]


def received_ids(sub: Subscriber, topic: str) -> list[str]:
    out = []
    for payload in sub.on(topic):
        rec = json.loads(payload)
        jsonschema.validate(rec, load_schema(rec["type"]))
        out.append(rec["id"])
    return out


@pytest.fixture
def publishers():
    made: list[MqttPublisher] = []
    yield made
    for p in made:
        p.stop(timeout_s=1)
        p.outbox.close()


def start_publisher(made: list, cfg, state_dir: Path, **kw: object) -> MqttPublisher:
    pub = MqttPublisher(cfg, NODE, Outbox(state_dir), [CAM], reconnect_max_s=1, **kw)
    pub.start()
    made.append(pub)
    return pub


def test_alerts_published_while_the_broker_is_down_all_arrive(tmp_path, publishers):
    """A burst of alerts, the broker stopped in the middle and started again: every id arrives."""
    with Broker(persistence=True) as broker:
        # The consumer keeps a durable session, as a control room's subscriber would.
        sub = Subscriber(broker.port, [TOPICS.alerts(CAM)], client_id="control-room", persistent=True)
        pub = start_publisher(publishers, mqtt_config(broker.port), tmp_path / "state")
        burst = alerts(40)
        for rec in burst[:10]:
            pub.publish_record(rec)
        wait_until(lambda: len(sub.on(TOPICS.alerts(CAM))) >= 10, 10, "the first alerts")
        broker.stop()
        for rec in burst[10:]:
            pub.publish_record(rec)  # broker away: on disk, waiting
            time.sleep(0.02)
        assert pub.outbox.depth() == 30
        time.sleep(OUTAGE_S)
        broker.start()
        wait_until(lambda: pub.outbox.depth() == 0, 20, "the outbox to drain after the broker returned")
        want = [r["id"] for r in burst]
        wait_until(lambda: set(received_ids(sub, TOPICS.alerts(CAM))) >= set(want), 10, "every alert")
        got = received_ids(sub, TOPICS.alerts(CAM))
        # Nothing lost; order kept; duplicates only as QoS-1 redelivery (consumers de-duplicate by id).
        assert list(dict.fromkeys(got)) == want
        assert len(got) - len(want) <= 10
        assert pub.counters.reconnects >= 1
        sub.close()


def test_a_burst_over_a_healthy_broker_arrives_exactly_once(tmp_path, publishers):
    """No needless duplicates: a PUBACK and the sender racing must not publish an acknowledged row again."""
    with Broker() as broker:
        sub = Subscriber(broker.port, [TOPICS.alerts(CAM)])
        pub = start_publisher(publishers, mqtt_config(broker.port), tmp_path / "state")
        burst = alerts(1500)
        wait_until(lambda: pub.counters.connected, 10, "the connection")
        for rec in burst:
            pub.publish_record(rec)
        wait_until(lambda: pub.outbox.depth() == 0, 30, "the outbox to drain")
        want = [r["id"] for r in burst]
        wait_until(lambda: len(sub.on(TOPICS.alerts(CAM))) >= len(want), 10, "every alert")
        time.sleep(0.3)  # a late duplicate would arrive now
        assert received_ids(sub, TOPICS.alerts(CAM)) == want
        assert pub.counters.published == len(want)
        sub.close()


def test_first_connection_retried_and_queued_alerts_survive_a_restart(tmp_path, publishers):
    """No broker at boot: alerts queue on disk; the daemon restarts; the broker comes up; all arrive."""
    port = free_port()
    cfg = mqtt_config(port)
    state = tmp_path / "state"
    first = start_publisher(publishers, cfg, state)
    burst = alerts(12)
    event = RecordBuilder(CAM, "bundle-test", 1.7e9).event(EventChange("start", "car", 3.0, 4.0, 0.8))
    for rec in [*burst, event]:
        first.publish_record(rec)
    time.sleep(1.5)  # a few refused connection attempts
    assert first.outbox.depth() == 13 and not first.counters.connected
    # Best-effort messages are not queued while the broker is away: dropped, and each drop counted.
    window = RecordBuilder(CAM, "b", 0.0).window(1.0, 2.0, label=None, probs=None, anomaly_score=0.1,
                                                 anomaly=False, missing=["audio"])
    assert first.publish_state(CAM, window) is False and first.publish_stats({"x": 1}) is False
    assert first.counters.dropped == {"state": 1, "stats": 1}
    text = render(mqtt_metrics(first.snapshot()))
    assert 'edgeav_mqtt_dropped_total{kind="state"} 1' in text and "edgeav_outbox_depth 13" in text
    assert "edgeav_mqtt_connected 0" in text
    first.stop(timeout_s=0.5)
    first.outbox.close()
    publishers.remove(first)

    with Broker(port=port):
        sub = Subscriber(port, [f"{TOPICS.base}/#"])
        second = start_publisher(publishers, cfg, state)
        wait_until(lambda: second.outbox.depth() == 0, 15, "the queued alerts to be delivered")
        wait_until(lambda: len(set(received_ids(sub, TOPICS.alerts(CAM)))) == 12, 10, "all alerts")
        assert set(received_ids(sub, TOPICS.alerts(CAM))) == {r["id"] for r in burst}
        assert received_ids(sub, TOPICS.events(CAM)) == [event["id"]]
        sub.close()


PUBLISHER_PROCESS = """
import sys, time
sys.path.insert(0, sys.argv[3])
from edgeav.config import parse_config
from edgeav.mqtt import MqttPublisher
from edgeav.outbox import Outbox
cfg = parse_config({"node": {"name": "box1"}, "mqtt": {"port": int(sys.argv[1]), "keepalive": 30}}, "t").mqtt
pub = MqttPublisher(cfg, "box1", Outbox(sys.argv[2]), ["gate"])
pub.start()
print("started", flush=True)
time.sleep(60)
"""


def test_status_online_then_last_will_offline_on_kill(tmp_path, publishers):
    with Broker() as broker:
        sub = Subscriber(broker.port, [TOPICS.status])
        repo = str(Path(__file__).resolve().parents[1])
        proc = subprocess.Popen([sys.executable, "-c", PUBLISHER_PROCESS, str(broker.port), str(tmp_path), repo],
                                stdout=subprocess.PIPE, text=True)
        try:
            wait_until(lambda: b"online" in sub.on(TOPICS.status), 15, "online")
            os.kill(proc.pid, signal.SIGKILL)
            wait_until(lambda: sub.on(TOPICS.status)[-1:] == [b"offline"], 10, "the last will")
        finally:
            proc.kill()
            proc.wait(timeout=5)
        sub.close()
        # Retained: a consumer that subscribes later learns the node is offline.
        late = Subscriber(broker.port, [TOPICS.status])
        wait_until(lambda: late.messages, 5, "the retained status")
        assert late.messages == [(TOPICS.status, b"offline", True)]
        late.close()
        # A clean stop also says offline; a start says online again.
        pub = start_publisher(publishers, mqtt_config(broker.port), tmp_path / "s2")
        late = Subscriber(broker.port, [TOPICS.status])
        wait_until(lambda: late.on(TOPICS.status)[-1:] == [b"online"], 10, "online")
        late.close()
        # The broker restarts and forgets everything (no persistence): `online` is republished on reconnect.
        broker.stop()
        broker.start()
        wait_until(lambda: pub.counters.reconnects >= 1 and pub.counters.connected, 10, "the reconnect")
        time.sleep(0.5)  # (the republished `online` is on its way; a subscriber now must get it as retained)
        late = Subscriber(broker.port, [TOPICS.status])
        wait_until(lambda: late.messages, 5, "the retained status after the broker's restart")
        assert late.messages == [(TOPICS.status, b"online", True)]
        pub.stop()
        wait_until(lambda: late.on(TOPICS.status)[-1:] == [b"offline"], 10, "offline after a clean stop")
        late.close()


def test_wrong_password_is_one_line_retried_and_never_logged(tmp_path, publishers, caplog):
    secret = "s3cr3t-Pa55"
    with Broker(users={"edge": secret}) as broker:
        bad = tmp_path / "bad.pass"
        bad.write_text("not-the-password-xyz\n")
        bad.chmod(0o600)
        caplog.set_level(logging.INFO, logger="edgeav.mqtt")
        pub = start_publisher(publishers, mqtt_config(broker.port, username="edge", password_file=str(bad)),
                              tmp_path / "s1")
        pub.publish_record(alerts(1)[0])
        wait_until(lambda: pub.counters.refused >= 2, 15, "a retried connection")
        assert pub.counters.connected is False and pub.outbox.depth() == 1  # kept for later, not lost
        refusals = [r for r in caplog.records if "refused" in r.getMessage()]
        assert len(refusals) == 1, "one line per reason, not one per retry"
        assert "Not authorized" in refusals[0].getMessage() or "password" in refusals[0].getMessage().lower()
        assert all("not-the-password-xyz" not in r.getMessage() for r in caplog.records)

        good = tmp_path / "good.pass"
        good.write_text(secret + "\n")
        good.chmod(0o600)
        sub = Subscriber(broker.port, [TOPICS.alerts(CAM)], username="edge", password=secret)
        ok = start_publisher(publishers, mqtt_config(broker.port, username="edge", password_file=str(good)),
                             tmp_path / "s2")
        ok.publish_record(alerts(1, first=5)[0])
        wait_until(lambda: sub.on(TOPICS.alerts(CAM)), 10, "an alert with the right password")
        assert all(secret not in r.getMessage() for r in caplog.records)
        sub.close()


def test_tls_with_a_test_ca_and_client_certificate_over_mqtt5(tmp_path, publishers):
    pki = make_test_ca(tmp_path / "pki")
    with Broker(tls={**pki, "require_certificate": True}) as broker:
        cfg = mqtt_config(broker.port, protocol=5, tls={"ca_file": str(pki["cafile"]),
                                                        "cert_file": str(pki["client_cert"]),
                                                        "key_file": str(pki["client_key"])})
        pub = start_publisher(publishers, cfg, tmp_path / "s")
        assert pub.protocol == "5"
        rec = alerts(1)[0]
        pub.publish_record(rec)
        # The outbox row leaves only on the broker's PUBACK: it arrived over the TLS connection.
        wait_until(lambda: pub.outbox.depth() == 0, 15, "the alert acknowledged over TLS")
        assert pub.counters.connected
        # Without the right CA the connection is refused by us (certificate check), never silently accepted.
        other = make_test_ca(tmp_path / "other")
        bad = mqtt_config(broker.port, tls={"ca_file": str(other["cafile"])})
        untrusted = start_publisher(publishers, bad, tmp_path / "s3")
        untrusted.publish_record(rec)
        time.sleep(2)
        assert not untrusted.counters.connected and untrusted.outbox.depth() == 1


def test_home_assistant_discovery_and_state_payloads(tmp_path, publishers):
    with Broker() as broker:
        sub = Subscriber(broker.port, ["homeassistant/#", f"{TOPICS.base}/#"])
        pub = start_publisher(publishers, mqtt_config(broker.port, discovery=True), tmp_path / "s")
        wait_until(lambda: len([t for t, _p, _r in sub.messages if t.startswith("homeassistant/")]) >= 3, 10,
                   "discovery configs")
        configs = {t: json.loads(p) for t, p, _r in sub.messages if t.startswith("homeassistant/")}
        by_kind = {t.split("/")[1] + ":" + t.split("/")[2].rsplit("_", 1)[-1]: c for t, c in configs.items()}
        assert set(by_kind) == {"binary_sensor:anomaly", "sensor:score", "sensor:event"}
        for c in configs.values():  # every entity follows the node's availability
            assert c["availability_topic"] == TOPICS.status and c["payload_not_available"] == "offline"
            assert c["device"]["identifiers"] == [f"edgeav_{NODE}"]
        assert by_kind["binary_sensor:anomaly"]["state_topic"] == TOPICS.state(CAM)
        assert by_kind["sensor:event"]["state_topic"] == TOPICS.events(CAM)
        # The state the sensors read: retained, valid against its schema, rate limited.
        window = RecordBuilder(CAM, "b", 0.0).window(1.0, 2.0, label="car", probs={"car": 0.9, "background": 0.1},
                                                     anomaly_score=1.2, anomaly=True, missing=[])
        assert pub.publish_state(CAM, window) is True
        assert pub.publish_state(CAM, window) is False  # within the rate limit: skipped, not queued
        wait_until(lambda: sub.on(TOPICS.state(CAM)), 5, "state")
        state = json.loads(sub.on(TOPICS.state(CAM))[0])
        jsonschema.validate(state, load_schema("state"))
        assert state["anomaly"] is True and state["anomaly_score"] == 1.2
        late = Subscriber(broker.port, [TOPICS.state(CAM)])
        wait_until(lambda: late.messages, 5, "the retained state")
        assert late.messages[0][2] is True
        late.close()
        sub.close()
