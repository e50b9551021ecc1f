"""The records edgeav writes: per-window lines, events and alerts (design.md section 6).

One builder serves replay's JSON lines and the daemon's MQTT payloads, so they cannot
differ. Every record is valid against the JSON Schema of the same name in
``edgeav/schemas/`` (tests check each one written). Numbers are rounded (times to the
millisecond, scores to 1e-4) so replay output is byte-identical run to run and
readable.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from functools import cache
from importlib import resources
from typing import Any

from edgeav.decide import EventChange, Incident

WINDOW_SCHEMA = "edgeav.window/1"
EVENT_SCHEMA = "edgeav.event/1"
ALERT_SCHEMA = "edgeav.alert/1"

# Fixed namespace: record ids are uuid5 of what identifies the record, so replay gives the same ids every run.
_ID_NAMESPACE = uuid.UUID("6f1c8e0a-4b7e-4f51-9a36-0d7c2f9e5a11")


def iso_utc(unix_s: float) -> str:
    """ISO-8601 UTC with milliseconds and a ``Z``."""
    dt = datetime.fromtimestamp(unix_s, tz=timezone.utc)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _t(x: float) -> float:
    return round(float(x), 3)


def _s(x: float) -> float:
    return round(float(x), 4)


class RecordBuilder:
    """Builds the records of one camera's stream.

    ``wall_origin`` is the Unix time of stream time 0 when it is known (live: 0.0,
    because live times are Unix seconds; a file with a creation time: that time),
    else ``None`` and the ISO ``start``/``end`` fields are left out.
    """

    def __init__(self, camera: str, bundle_id: str, wall_origin: float | None, source: str = "") -> None:
        self.camera = camera
        self.bundle_id = bundle_id
        self.wall_origin = wall_origin
        self.source = source  # distinguishes ids of different footage replayed under one camera name

    def _id(self, *parts: object) -> str:
        return str(uuid.uuid5(_ID_NAMESPACE, "|".join(map(str, (self.camera, self.source, *parts)))))

    def _times(self, t_start: float, t_end: float) -> dict[str, Any]:
        out: dict[str, Any] = {"t_start": _t(t_start), "t_end": _t(t_end)}
        if self.wall_origin is not None:
            out["start"] = iso_utc(self.wall_origin + t_start)
            out["end"] = iso_utc(self.wall_origin + t_end)
        return out

    def window(self, t_start: float, t_end: float, *, label: str | None, probs: dict[str, float] | None,
               anomaly_score: float | None, anomaly: bool, missing: tuple[str, ...] | list[str]) -> dict[str, Any]:
        return {
            "schema": WINDOW_SCHEMA,
            "camera": self.camera,
            "t_start": _t(t_start),
            "t_end": _t(t_end),
            "label": label,
            "probs": None if probs is None else {k: _s(v) for k, v in probs.items()},
            "anomaly_score": None if anomaly_score is None else _s(anomaly_score),
            "anomaly": bool(anomaly),
            "missing": list(missing),
        }

    def event(self, change: EventChange) -> dict[str, Any]:
        return {
            "schema": EVENT_SCHEMA,
            "type": "event",
            # One id for the start, updates and end of one event, so consumers can join them.
            "id": self._id("event", change.label, _t(change.t_start)),
            "camera": self.camera,
            "phase": change.phase,
            "label": change.label,
            **self._times(change.t_start, change.t_end),
            "score": _s(change.score),
            "bundle": self.bundle_id,
        }

    def alert(self, incident: Incident, threshold: float, clip: dict[str, str] | None = None) -> dict[str, Any]:
        rec: dict[str, Any] = {
            "schema": ALERT_SCHEMA,
            "type": "alert",
            "kind": "anomaly",
            "id": self._id("alert", _t(incident.t_start)),
            "camera": self.camera,
            **self._times(incident.t_start, incident.t_end),
            "score": _s(incident.score),
            "threshold": _s(threshold),
            "bundle": self.bundle_id,
        }
        if clip is not None:
            rec["clip"] = clip
        return rec


def dumps(record: dict[str, Any]) -> str:
    """One JSON line, keys in a fixed order (the builder's), no spaces to spare."""
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False)


@cache
def load_schema(name: str) -> dict[str, Any]:
    """The JSON Schema for ``window``, ``event`` or ``alert`` records."""
    text = resources.files("edgeav").joinpath("schemas", f"{name}.json").read_text()
    return json.loads(text)
