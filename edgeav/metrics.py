"""The Prometheus text endpoint (``metrics.listen``, loopback by default) and the numbers behind it.

The daemon hands :class:`MetricsServer` a ``collect()`` function returning :class:`Metric`
families; each scrape calls it and renders the text exposition format 0.0.4, so the
endpoint always shows current figures and keeps no state of its own. Counters end in
``_total``. Served by the standard library's HTTP server in one daemon thread: no new
dependency, nothing to do when nobody scrapes.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from edgeav.errors import UserError

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_NOT_IN_NAME = re.compile(r"[^a-zA-Z0-9_]")  # Prometheus metric names: [a-zA-Z_:][a-zA-Z0-9_:]*


@dataclass
class Metric:
    """One metric family: a name, its type (``counter``/``gauge``), help text and labelled samples."""

    name: str
    kind: str
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def add(self, value: float, **labels: str) -> Metric:
        self.samples.append((labels, float(value)))
        return self


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(int(value)) if float(value).is_integer() and abs(value) < 2**53 else repr(float(value))


def render(metrics: Iterable[Metric]) -> str:
    """The text exposition format: ``# HELP``, ``# TYPE`` and one line per sample."""
    lines: list[str] = []
    for m in metrics:
        lines.append(f"# HELP {m.name} {m.help}")
        lines.append(f"# TYPE {m.name} {m.kind}")
        for labels, value in m.samples:
            label_text = ",".join(f'{k}="{_escape(str(v))}"' for k, v in sorted(labels.items()))
            lines.append(f"{m.name}{{{label_text}}} {_number(value)}" if label_text else f"{m.name} {_number(value)}")
    return "\n".join(lines) + "\n"


# What the per-camera health numbers mean; any other numeric key becomes a gauge with a generic help text.
CAMERA_COUNTERS = {
    "frames": "video frames decoded",
    "audio_blocks": "audio blocks captured",
    "windows": "windows processed",
    "windows_dropped": "windows dropped because inference fell behind",
    "events": "events started",
    "alerts": "anomaly alerts raised",
    "clips": "evidence clips written",
    "reconnects": "source reconnects",
    "decode_seconds": "seconds spent decoding",
    "preprocess_seconds": "seconds spent converting frames",
    "embed_seconds": "seconds spent in the ONNX encoders (inference)",
    "decide_seconds": "seconds spent in the event and anomaly decisions",
}


def camera_metrics(health: Mapping[str, Mapping[str, Any]]) -> list[Metric]:
    """Per-camera families from each camera's health dict (numbers only; nested dicts flattened with '_')."""
    families: dict[str, Metric] = {}
    for camera, h in sorted(health.items()):
        for key, value in _numeric_leaves(h):
            if key in CAMERA_COUNTERS:
                name, kind, text = f"edgeav_camera_{key}_total", "counter", CAMERA_COUNTERS[key]
            elif key.endswith(("last_progress", "last_window_end", "last_data", "_since")):
                continue  # timestamps, not measurements
            else:
                name, kind, text = f"edgeav_camera_{key}", "gauge", f"camera health figure {key}"
            families.setdefault(name, Metric(name, kind, text)).add(value, camera=camera)
        sources = h.get("sources")
        if isinstance(sources, Mapping):  # per-source state as a 0/1 gauge: alert on `== 0 for 5m`
            up = families.setdefault("edgeav_source_streaming", Metric(
                "edgeav_source_streaming", "gauge", "1 while the source (video, audio) is streaming"))
            for source, status in sorted(sources.items()):
                if isinstance(status, Mapping) and "state" in status:
                    up.add(status["state"] == "streaming", camera=camera, source=str(source))
    return list(families.values())


def _numeric_leaves(data: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, float]]:
    for key, value in data.items():
        name = _NOT_IN_NAME.sub("_", f"{prefix}{key}")
        if isinstance(value, (bool, int, float)):
            yield name, float(value)
        elif isinstance(value, Mapping):
            yield from _numeric_leaves(value, f"{name}_")


def mqtt_metrics(snapshot: Mapping[str, Any]) -> list[Metric]:
    """MQTT families from :meth:`edgeav.mqtt.MqttPublisher.snapshot`."""
    out = [
        Metric("edgeav_mqtt_connected", "gauge", "1 while connected to the broker").add(snapshot["connected"]),
        Metric("edgeav_mqtt_reconnects_total", "counter", "reconnects to the broker").add(snapshot["reconnects"]),
        Metric("edgeav_mqtt_refused_total", "counter", "connections refused by the broker").add(snapshot["refused"]),
        Metric("edgeav_mqtt_published_total", "counter", "outbox messages sent (redeliveries included)")
        .add(snapshot["published"]),
        Metric("edgeav_mqtt_acked_total", "counter", "outbox messages acknowledged by the broker")
        .add(snapshot["acked"]),
        Metric("edgeav_outbox_depth", "gauge", "events and alerts waiting for the broker's acknowledgement")
        .add(snapshot["outbox_depth"]),
    ]
    dropped = Metric("edgeav_mqtt_dropped_total", "counter",
                     "messages dropped: state/stats (best effort), outbox_event/outbox_alert (the outbox at its cap)")
    for kind, n in sorted(snapshot["dropped"].items()):
        dropped.add(n, kind=kind)
    out.append(dropped)
    return out


class MetricsServer:
    """``GET /metrics`` on ``host:port``; a daemon thread; :meth:`stop` closes the socket."""

    def __init__(self, host: str, port: int, collect: Callable[[], Iterable[Metric]]) -> None:
        self.collect = collect
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] not in ("/metrics", "/"):
                    self.send_error(404, "try /metrics")
                    return
                try:
                    body = render(outer.collect()).encode()
                except Exception:
                    log.exception("metrics: collecting failed")
                    self.send_error(500)
                    return
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # scrapes are not worth a log line each
                pass

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise UserError(f"metrics.listen: {host}:{port}: cannot listen ({exc.strerror or exc})") from None
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="metrics", daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        log.info("metrics: serving http://%s:%d/metrics", self._server.server_address[0], self.port)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
