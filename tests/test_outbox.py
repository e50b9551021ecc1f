"""The bounded MQTT outbox: a broker gone for days fills it to its cap, never the disk.

Real SQLite files in a temporary state directory; records built by the pipeline's
:class:`edgeav.records.RecordBuilder` and queued through :class:`edgeav.mqtt.MqttPublisher`
(so each record's kind comes from the record itself); delivery after the broker is back goes
through a real mosquitto (tests/mqtt_broker.py).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import pytest
from mqtt_broker import Broker, Subscriber, free_port, wait_until

from edgeav.config import parse_config
from edgeav.decide import EventChange, Incident
from edgeav.errors import UserError
from edgeav.metrics import mqtt_metrics, render
from edgeav.mqtt import MqttPublisher, Topics
from edgeav.outbox import OUTBOX_NAME, Outbox
from edgeav.records import RecordBuilder

NODE = "box1"
CAM = "gate"
TOPICS = Topics("edgeav", NODE)
CAP = 100  # the smallest cap the config allows

# The CREATE TABLE of the outbox before it was bounded (commit 7fad4c8..f7a327b): files in the field look like this.
OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    msg_id  TEXT    NOT NULL,
    topic   TEXT    NOT NULL,
    payload BLOB    NOT NULL,
    qos     INTEGER NOT NULL,
    retain  INTEGER NOT NULL DEFAULT 0,
    held    INTEGER NOT NULL DEFAULT 0,
    created REAL    NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_ready ON outbox (held, seq);
"""


def mqtt_config(port: int = 1883, **mqtt: object):
    return parse_config({"node": {"name": NODE}, "mqtt": {"host": "127.0.0.1", "port": port,
                                                          "outbox_max_messages": CAP, **mqtt}}, "test.yaml").mqtt


def records(kinds: str, start: int = 0) -> list[dict]:
    """One record per letter: ``a`` an alert, ``e`` an event; distinct ids, in order."""
    rb = RecordBuilder(CAM, "bundle-test", wall_origin=1.7e9)
    out = []
    for i, k in enumerate(kinds, start):
        if k == "a":
            out.append(rb.alert(Incident(10.0 * i, 10.0 * i + 1.5, 0.9), 0.5))
        else:
            out.append(rb.event(EventChange("start", "car", 10.0 * i, 10.0 * i + 1.0, 0.8)))
    return out


@pytest.fixture
def publisher(tmp_path):
    """An unconnected publisher over a capped outbox: the broker is away, everything queues."""
    made: list[MqttPublisher] = []

    def make(state: Path | None = None, port: int = 1883) -> MqttPublisher:
        cfg = mqtt_config(port)
        pub = MqttPublisher(cfg, NODE, Outbox(state or tmp_path / "state", cfg.outbox_max_messages), [CAM])
        made.append(pub)
        return pub

    yield make
    for p in made:
        p.stop(timeout_s=0.5)
        p.outbox.close()


def outbox_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "edgeav.outbox" and r.levelno == logging.WARNING]


def test_full_outbox_drops_the_oldest_events_first_and_keeps_every_alert(publisher, caplog):
    caplog.set_level(logging.INFO)
    pub = publisher()
    recs = records("ae" * 60)  # 60 alerts and 60 events, interleaved: 20 over the cap
    for rec in recs:
        pub.publish_record(rec)
    events = [r["id"] for r in recs if r["type"] == "event"]
    kept = [r["id"] for r in recs if r["id"] not in set(events[:20])]
    assert pub.outbox.ids() == kept  # the 20 oldest events went; all alerts and the newest events stayed, in order
    assert pub.outbox.depth() == CAP
    snap = pub.snapshot()
    assert snap["dropped"] == {"state": 0, "stats": 0, "outbox_event": 20, "outbox_alert": 0}
    assert snap["outbox_depth"] == CAP
    text = render(mqtt_metrics(snap))
    assert 'edgeav_mqtt_dropped_total{kind="outbox_event"} 20' in text
    assert 'edgeav_mqtt_dropped_total{kind="outbox_alert"} 0' in text
    # One warning for the first drop, not one per drop; it says why and how to change the cap.
    warnings = outbox_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert "cap of 100" in warnings[0] and "mqtt.outbox_max_messages" in warnings[0]
    assert "broker has not acknowledged" in warnings[0] and "oldest event" in warnings[0]

    # 100 more events: warned again when the count of dropped events passes 100, not in between.
    for rec in records("e" * 100, start=200):
        pub.publish_record(rec)
    assert pub.outbox.drops() == {"event": 120, "alert": 0}
    assert len(outbox_warnings(caplog)) == 2
    assert "100 event(s) and 0 alert(s)" in outbox_warnings(caplog)[1]  # logged as the 100th went


def test_all_alert_outbox_drops_its_oldest_alert_but_not_a_held_one_nor_the_new_message(publisher, caplog):
    caplog.set_level(logging.WARNING)
    pub = publisher()
    first, *rest = records("a" * CAP)
    held = pub.publish_record(first, held=True)  # waiting for its evidence clip
    for rec in rest:
        pub.publish_record(rec)
    newer = records("aae", start=500)
    for rec in newer:
        pub.publish_record(rec)
    # Held and oldest, yet kept; the next two oldest alerts dropped; the new event (the message being put) kept.
    assert pub.outbox.ids() == [first["id"]] + [r["id"] for r in rest[3:]] + [r["id"] for r in newer]
    assert pub.snapshot()["dropped"]["outbox_alert"] == 3
    assert pub.snapshot()["dropped"]["outbox_event"] == 0
    assert any("oldest alert" in w and "only alerts" in w for w in outbox_warnings(caplog))
    pub.release(held, first)
    assert pub.outbox.pending(1)[0].msg_id == first["id"]


def test_only_held_rows_left_then_the_oldest_held_one_goes(tmp_path):
    box = Outbox(tmp_path, max_messages=CAP)
    seqs = [box.put(f"held-{i}", "edgeav/box1/gate/alerts", b"{}", 1, held=True) for i in range(CAP)]
    box.put("new", "edgeav/box1/gate/events", b"{}", 1, kind="event")
    assert box.ids() == [f"held-{i}" for i in range(1, CAP)] + ["new"]
    box.release(seqs[0])  # its clip finished after it was dropped: nothing to release, nothing breaks
    assert box.depth() == CAP and box.drops() == {"event": 0, "alert": 1}
    with pytest.raises(ValueError, match="kind"):
        box.put("x", "t", b"{}", 1, kind="window")
    box.close()


def write_old_outbox(state: Path, rows: list[tuple[str, str, int]]) -> None:
    state.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(state / OUTBOX_NAME)
    db.executescript(OLD_SCHEMA)
    for i, (msg_id, topic, held) in enumerate(rows):
        db.execute("INSERT INTO outbox (msg_id, topic, payload, qos, retain, held, created) VALUES (?,?,?,?,?,?,?)",
                   (msg_id, topic, b'{"id": "%s"}' % msg_id.encode(), 1, 0, held, 1.7e9 + i))
    db.commit()
    db.close()


def test_an_outbox_of_the_old_schema_opens_keeps_its_rows_and_knows_their_kinds(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    state = tmp_path / "state"
    write_old_outbox(state, [("old-alert-1", TOPICS.alerts(CAM), 0), ("old-event", TOPICS.events(CAM), 0),
                             ("old-alert-2", TOPICS.alerts(CAM), 1)])
    box = Outbox(state, max_messages=CAP)
    assert box.ids() == ["old-alert-1", "old-event", "old-alert-2"]
    assert [r.msg_id for r in box.pending(10)] == box.ids()  # the held row of the dead run is publishable
    assert box.pending(1)[0].payload == b'{"id": "old-alert-1"}'
    assert any("upgraded" in r.getMessage() and "3 queued" in r.getMessage() for r in caplog.records)
    for i in range(CAP - 3):
        box.put(f"new-{i}", TOPICS.alerts(CAM), b"{}", 1)
    box.put("one-more", TOPICS.alerts(CAM), b"{}", 1)
    # The migrated event is recognised as an event (from its topic) and goes before any alert.
    assert "old-event" not in box.ids() and box.ids()[:2] == ["old-alert-1", "old-alert-2"]
    assert box.drops() == {"event": 1, "alert": 0}
    box.close()
    # Opened again (the column exists now): nothing migrated twice, the rows still there.
    again = Outbox(state, max_messages=CAP)
    assert again.depth() == CAP and again.ids()[0] == "old-alert-1"
    again.close()


def test_a_lowered_cap_trims_the_outbox_when_it_is_opened(tmp_path):
    box = Outbox(tmp_path, max_messages=1000)
    for i in range(150):
        box.put(f"m{i}", TOPICS.events(CAM) if i % 3 == 0 else TOPICS.alerts(CAM), b"{}", 1,
                kind="event" if i % 3 == 0 else "alert")
    box.close()
    box = Outbox(tmp_path, max_messages=CAP)
    assert box.depth() == CAP and box.drops() == {"event": 50, "alert": 0}
    assert all(int(m[1:]) % 3 != 0 for m in box.ids())
    box.close()


def test_the_cap_is_a_checked_config_field():
    assert parse_config({"node": {"name": NODE}, "mqtt": {}}, "t.yaml").mqtt.outbox_max_messages == 100_000
    with pytest.raises(UserError, match=r"mqtt\.outbox_max_messages.*10"):
        parse_config({"node": {"name": NODE}, "mqtt": {"outbox_max_messages": 10}}, "t.yaml")


def test_after_the_outage_what_is_left_is_delivered_in_order(publisher, tmp_path):
    port = free_port()
    state = tmp_path / "state"
    away = publisher(state, port)  # no broker yet: nothing is sent
    recs = records("aeeae" * 24)  # 120 records, 20 over the cap
    for rec in recs:
        away.publish_record(rec)
    events = [r["id"] for r in recs if r["type"] == "event"]
    left = [r for r in recs if r["id"] not in set(events[:20])]
    away.outbox.close()

    with Broker(port=port):
        sub = Subscriber(port, [f"{TOPICS.base}/#"])
        back = publisher(state, port)
        back.start()
        wait_until(lambda: back.outbox.depth() == 0, 15, "the outbox to drain")
        for topic, kind in ((TOPICS.alerts(CAM), "alert"), (TOPICS.events(CAM), "event")):
            want = [r["id"] for r in left if r["type"] == kind]
            wait_until(lambda t=topic, w=want: len(set(json.loads(p)["id"] for p in sub.on(t))) == len(w), 10,
                       f"every {kind}")
            got = [json.loads(p)["id"] for p in sub.on(topic)]
            assert list(dict.fromkeys(got)) == want  # oldest first; QoS-1 duplicates only
        sub.close()
