"""MQTT output (design.md sections 4 and 6): availability, events and alerts through the durable outbox.

Topics under ``<prefix>/<node>/``: ``status`` (retained ``online``/``offline``; ``offline`` is
also the last will, and ``online`` is republished on every (re)connect), ``<camera>/events``,
``<camera>/alerts``, ``<camera>/state`` (retained, rate limited) and ``stats``.

Delivery: events and alerts go through :class:`~edgeav.outbox.Outbox` (on disk before they are
published, deleted on PUBACK), so nothing is lost to a broker outage or a restart, up to the
outbox's cap (``mqtt.outbox_max_messages``: past it the oldest events go first, then the oldest
alerts, each drop counted and logged). State and stats are best effort: when the broker is away
or paho's queue is backed up they are dropped and each drop is counted (:attr:`MqttPublisher.counters`).

The first connection is retried like any other (a broker that is not up yet at boot is
normal): paho's network thread reconnects with backoff forever; a refused connection (bad
credentials, bad certificate) is logged as one line each time the reason changes, never
with the password. Consumers de-duplicate by record id, the QoS-1 contract.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import ssl
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edgeav.config import MqttConfig
from edgeav.errors import UserError
from edgeav.outbox import Outbox
from edgeav.records import dumps, iso_utc

log = logging.getLogger(__name__)

ONLINE = b"online"
OFFLINE = b"offline"
PROTOCOLS = {"3.1.1": paho.MQTTv311, "5": paho.MQTTv5}
STATE_SCHEMA = "edgeav.state/1"
STATS_SCHEMA = "edgeav.stats/1"


@dataclass(frozen=True)
class Topics:
    """The topic layout of one node: ``<prefix>/<node>/...``."""

    prefix: str
    node: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.node}"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def stats(self) -> str:
        return f"{self.base}/stats"

    def events(self, camera: str) -> str:
        return f"{self.base}/{camera}/events"

    def alerts(self, camera: str) -> str:
        return f"{self.base}/{camera}/alerts"

    def state(self, camera: str) -> str:
        return f"{self.base}/{camera}/state"


@dataclass
class MqttCounters:
    """What the stats topic and the metrics endpoint report about MQTT."""

    connected: bool = False
    connects: int = 0  # successful CONNACKs; reconnects = connects - 1
    refused: int = 0
    published: int = 0  # outbox messages handed to the broker (redeliveries included)
    acked: int = 0
    rejected: int = 0  # MQTT 5 PUBACK with a failure reason code: deleted, logged
    # Best-effort messages dropped, by topic kind. The outbox counts its own drops (it drops inside its write
    # transaction, whoever puts); :meth:`MqttPublisher.snapshot` reports them beside these as
    # ``outbox_event`` and ``outbox_alert``.
    dropped: dict[str, int] = field(default_factory=lambda: {"state": 0, "stats": 0})

    @property
    def reconnects(self) -> int:
        return max(0, self.connects - 1)


def discovery_messages(cfg: MqttConfig, topics: Topics, cameras: Iterable[str]) -> list[tuple[str, bytes]]:
    """Home Assistant MQTT discovery configs (retained): per camera an anomaly binary sensor,
    the current anomaly score and the last event, all tied to the node's availability topic."""
    device = {"identifiers": [f"edgeav_{topics.node}"], "name": f"edgeav {topics.node}",
              "manufacturer": "edgeav", "model": "edgeav daemon"}
    avail = {"availability_topic": topics.status, "payload_available": "online",
             "payload_not_available": "offline"}
    out: list[tuple[str, bytes]] = []
    for cam in cameras:
        uid = f"edgeav_{topics.node}_{cam}"
        items = [
            ("binary_sensor", f"{uid}_anomaly", {
                "name": f"{cam} anomaly", "state_topic": topics.state(cam), "device_class": "problem",
                "value_template": "{{ 'ON' if value_json.anomaly else 'OFF' }}"}),
            ("sensor", f"{uid}_score", {
                "name": f"{cam} anomaly score", "state_topic": topics.state(cam), "state_class": "measurement",
                "value_template": "{{ value_json.anomaly_score if value_json.anomaly_score is not none "
                                  "else 'unknown' }}"}),
            ("sensor", f"{uid}_last_event", {
                "name": f"{cam} last event", "state_topic": topics.events(cam),
                "value_template": "{{ value_json.label }}", "json_attributes_topic": topics.events(cam)}),
        ]
        for component, object_id, conf in items:
            payload = {**conf, "unique_id": object_id, "object_id": object_id, "device": device, **avail}
            out.append((f"{cfg.discovery_prefix}/{component}/{object_id}/config", json.dumps(payload).encode()))
    return out


def state_payload(record: dict[str, Any], time_s: float | None = None) -> dict[str, Any]:
    """A camera's current scores from its latest window record (the retained ``state`` topic)."""
    now = time.time() if time_s is None else time_s
    return {"schema": STATE_SCHEMA, "camera": record["camera"], "time": iso_utc(now),
            "t_start": record["t_start"], "t_end": record["t_end"], "label": record["label"],
            "probs": record["probs"], "anomaly_score": record["anomaly_score"], "anomaly": record["anomaly"],
            "missing": record["missing"]}


class MqttPublisher:
    """One broker connection for the node: the outbox sender, availability and best-effort topics."""

    def __init__(self, cfg: MqttConfig, node: str, outbox: Outbox, cameras: Iterable[str] = (), *,
                 protocol: str | None = None, max_inflight: int = 50, state_interval_s: float = 1.0,
                 reconnect_max_s: float = 10.0, availability: bool = True, client_id: str | None = None) -> None:
        protocol = protocol or cfg.protocol
        if protocol not in PROTOCOLS:
            raise UserError(f"mqtt protocol {protocol!r}: allowed: {', '.join(PROTOCOLS)}")
        self.cfg = cfg
        self.topics = Topics(cfg.prefix, node)
        self.outbox = outbox
        self.cameras = list(cameras)
        self.protocol = protocol
        self.max_inflight = max_inflight
        self.state_interval_s = state_interval_s
        # availability=False: a helper (replay) that must not mark the node online/offline.
        self.availability = availability
        self.client_id = client_id or cfg.client_id or f"edgeav-{node}"
        self.counters = MqttCounters()
        self._lock = threading.Lock()
        self._inflight: dict[int, tuple[int, float]] = {}  # paho mid -> (outbox seq, publish time)
        self._early: dict[int, float] = {}  # PUBACKs that beat the bookkeeping of their publish()
        self._direct: set[int] = set()  # mids of best-effort messages (no outbox row)
        self._last_state: dict[str, float] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._last_refusal = ""
        self._sender: threading.Thread | None = None
        self._client = self._make_client(reconnect_max_s)

    # -------------------------------------------------------------------------------- connection
    def _make_client(self, reconnect_max_s: float) -> paho.Client:
        # Reconnect backoff 1 s doubling to reconnect_max_s (10 s): a broker back after an outage gets the
        # queued alerts within 10 s, and a box retrying an absent broker costs nothing worth saving.
        cfg = self.cfg
        kwargs: dict[str, Any] = {"client_id": self.client_id,
                                  "protocol": PROTOCOLS[self.protocol]}
        if self.protocol == "3.1.1":
            kwargs["clean_session"] = True
        client = paho.Client(CallbackAPIVersion.VERSION2, **kwargs)
        client.max_inflight_messages_set(self.max_inflight)
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(1, int(max(1, reconnect_max_s)))
        if self.availability:
            client.will_set(self.topics.status, OFFLINE, qos=1, retain=True)
        if cfg.username is not None:
            client.username_pw_set(cfg.username, cfg.read_password())
        if cfg.tls is not None:
            try:
                client.tls_set(ca_certs=str(cfg.tls.ca_file) if cfg.tls.ca_file else None,
                               certfile=str(cfg.tls.cert_file) if cfg.tls.cert_file else None,
                               keyfile=str(cfg.tls.key_file) if cfg.tls.key_file else None,
                               cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
            except (ssl.SSLError, OSError, ValueError) as exc:
                # The message names the file, never its contents or a password.
                raise UserError(f"mqtt.tls: cannot load the CA/client certificate ({exc.__class__.__name__}: "
                                f"{getattr(exc, 'strerror', None) or getattr(exc, 'reason', None) or 'bad file'})"
                                ) from None
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        return client

    def start(self) -> None:
        """Connect in the background (retrying until the broker answers) and start sending the outbox."""
        log.info("mqtt: connecting to %s:%d as %s (MQTT %s%s)", self.cfg.host, self.cfg.port,
                 self.client_id, self.protocol, ", TLS" if self.cfg.tls else "")
        self._client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive)
        self._client.loop_start()
        self._sender = threading.Thread(target=self._send_loop, name="mqtt-outbox", daemon=True)
        self._sender.start()

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.counters.refused += 1
            text = str(reason)
            if text != self._last_refusal:  # one line per new reason, not one per retry
                log.error("mqtt: %s:%d refused the connection: %s; retrying", self.cfg.host, self.cfg.port, text)
                self._last_refusal = text
            return
        self._last_refusal = ""
        with self._lock:
            self._direct.clear()  # best-effort messages of the last connection: paho's business now, not a backlog
        self.counters.connects += 1
        self.counters.connected = True
        log.info("mqtt: connected to %s:%d%s", self.cfg.host, self.cfg.port,
                 "" if self.counters.connects == 1 else f" (reconnect {self.counters.reconnects})")
        if self.availability:
            client.publish(self.topics.status, ONLINE, qos=1, retain=True)
        if self.cfg.discovery and self.availability:
            for topic, payload in discovery_messages(self.cfg, self.topics, self.cameras):
                client.publish(topic, payload, qos=1, retain=True)
        self._wake.set()

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        was = self.counters.connected
        self.counters.connected = False
        if was and not self._stop.is_set():
            log.warning("mqtt: lost the connection to %s:%d (%s); reconnecting", self.cfg.host, self.cfg.port,
                        reason)

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        with self._lock:
            if mid in self._direct:
                self._direct.discard(mid)
                return
            entry = self._inflight.pop(mid, None)
            if entry is None:
                self._early[mid] = time.monotonic()
                return
            # Under the lock: between leaving the in-flight set and leaving the outbox, the sender would see
            # the row as pending and publish it again (a needless duplicate).
            self._acked(entry[0], reason)

    def _acked(self, seq: int, reason: Any) -> None:
        if reason is not None and getattr(reason, "is_failure", False):
            # MQTT 5: the broker refused this message (e.g. ACL); resending cannot help.
            self.counters.rejected += 1
            log.error("mqtt: broker rejected queued message %d: %s; dropped from the outbox", seq, reason)
        else:
            self.counters.acked += 1
        self.outbox.ack(seq)

    # -------------------------------------------------------------------------------- the outbox
    def _send_loop(self) -> None:
        stale_s = 2.0 * self.cfg.keepalive + 30.0
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            if not self.counters.connected:
                continue
            now = time.monotonic()
            with self._lock:
                # paho resends its own in-flight messages after a reconnect; one unanswered for this long is
                # assumed lost and sent again under a new mid (a duplicate at worst).
                for mid, (_seq, t) in list(self._inflight.items()):
                    if now - t > stale_s:
                        del self._inflight[mid]
                for mid, t in list(self._early.items()):
                    if now - t > 60.0:
                        del self._early[mid]
                busy = {seq for seq, _t in self._inflight.values()}
            room = self.max_inflight - len(busy)
            if room <= 0:
                continue
            rows = self.outbox.pending(room, exclude=busy)
            for row in rows:
                info = self._client.publish(row.topic, row.payload, qos=row.qos, retain=row.retain)
                if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break  # disconnected meanwhile: the row stays queued
                self.counters.published += 1
                with self._lock:
                    if self._early.pop(info.mid, None) is None:
                        self._inflight[info.mid] = (row.seq, time.monotonic())
                    else:
                        self._acked(row.seq, None)
            if rows and len(rows) == room:
                self._wake.set()  # there may be more queued than there was room for

    def _record_topic(self, record: dict[str, Any]) -> str:
        if record["type"] == "alert":
            return self.topics.alerts(record["camera"])
        return self.topics.events(record["camera"])

    def publish_record(self, record: dict[str, Any], held: bool = False) -> int:
        """Queue an event or alert durably (it is on disk when this returns) and return its outbox seq."""
        seq = self.outbox.put(record["id"], self._record_topic(record), dumps(record).encode(), self.cfg.qos,
                              held=held, kind="alert" if record["type"] == "alert" else "event")
        if not held:
            self._wake.set()
        return seq

    def release(self, seq: int, record: dict[str, Any]) -> None:
        """Publish a held record, now complete (an alert with its evidence clip)."""
        self.outbox.release(seq, dumps(record).encode())
        self._wake.set()

    # -------------------------------------------------------------------------------- best effort
    def _best_effort(self, kind: str, topic: str, payload: bytes, retain: bool) -> bool:
        # Dropped rather than queued in paho's memory when the broker is away or slow (counted).
        if not self.counters.connected or len(self._direct) >= self.max_inflight:
            self.counters.dropped[kind] += 1
            return False
        info = self._client.publish(topic, payload, qos=min(self.cfg.qos, 1), retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self.counters.dropped[kind] += 1
            return False
        with self._lock:
            if self._early.pop(info.mid, None) is None:
                self._direct.add(info.mid)
        return True

    def publish_state(self, camera: str, window_record: dict[str, Any]) -> bool:
        """The camera's retained current state, at most once per ``state_interval_s`` (skips are not drops)."""
        now = time.monotonic()
        if now - self._last_state.get(camera, -1e9) < self.state_interval_s:
            return False
        self._last_state[camera] = now
        payload = json.dumps(state_payload(window_record), separators=(",", ":")).encode()
        return self._best_effort("state", self.topics.state(camera), payload, retain=True)

    def publish_stats(self, stats: dict[str, Any]) -> bool:
        return self._best_effort("stats", self.topics.stats, json.dumps(stats, separators=(",", ":")).encode(),
                                 retain=False)

    # -------------------------------------------------------------------------------- shutdown
    def wait_drained(self, timeout_s: float) -> int:
        """Wait until the outbox is empty or ``timeout_s`` passed; returns how many remain queued."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = self.outbox.depth()
            if left == 0 or time.monotonic() >= deadline:
                return left
            self._wake.set()
            time.sleep(0.05)

    def stop(self, timeout_s: float = 3.0) -> None:
        """Publish ``offline`` (retained) if connected, disconnect cleanly and stop the threads."""
        self._stop.set()
        self._wake.set()
        if self._sender is not None:
            self._sender.join(timeout=2.0)
        if self.counters.connected and self.availability:
            info = self._client.publish(self.topics.status, OFFLINE, qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout=timeout_s)
        self._client.disconnect()
        self._client.loop_stop()
        self.counters.connected = False

    def snapshot(self) -> dict[str, Any]:
        """MQTT figures for the stats topic and the metrics endpoint."""
        c = self.counters
        return {"connected": c.connected, "reconnects": c.reconnects, "refused": c.refused,
                "published": c.published, "acked": c.acked, "rejected": c.rejected,
                "dropped": {**c.dropped, **{f"outbox_{kind}": n for kind, n in self.outbox.drops().items()}},
                "outbox_depth": self.outbox.depth()}


class MqttSink:
    """A pipeline sink (see :class:`edgeav.pipeline.Sink`) that publishes one camera's records.

    Events and alerts go through the outbox. With a clip recorder, an alert is committed to the
    outbox at once but *held* while its evidence clip is recorded, then released with the clip's
    path and sha256 (or without, when no clip could be made): a crash meanwhile still delivers it.
    ``state=True`` also publishes the camera's retained state from its windows (the daemon; replay
    publishes events and alerts only).
    """

    def __init__(self, publisher: MqttPublisher, clips: Any = None, state: bool = True) -> None:
        self.publisher = publisher
        self.clips = clips
        self.state = state

    def window(self, record: dict[str, Any]) -> None:
        if self.state:
            self.publisher.publish_state(record["camera"], record)

    def event(self, record: dict[str, Any]) -> None:
        self.publisher.publish_record(record)

    def alert(self, record: dict[str, Any]) -> None:
        if self.clips is None:
            self.publisher.publish_record(record)
            return
        seq = self.publisher.publish_record(record, held=True)

        def done(clip: dict[str, str] | None, seq: int = seq, record: dict[str, Any] = record) -> None:
            self.publisher.release(seq, {**record, "clip": clip} if clip else record)

        self.clips.request(record["t_start"], record["t_end"], record["id"][:8], done)


def publisher_from_config(config: Any, cameras: Iterable[str], *, helper: bool = False) -> MqttPublisher:
    """The publisher of a loaded :class:`edgeav.config.Config` (its ``mqtt`` section must be set).

    ``helper=True`` (``edgeav replay``): its own client id, so it never kicks the daemon of the same
    node off the broker, and no availability messages (the node's status is the daemon's).
    """
    mqtt = config.mqtt
    assert mqtt is not None
    outbox = Outbox(config.storage.state_dir, max_messages=mqtt.outbox_max_messages)
    client_id = f"{mqtt.client_id}-replay-{os.getpid()}" if helper else None
    return MqttPublisher(mqtt, config.node.name, outbox, cameras, availability=not helper, client_id=client_id)
