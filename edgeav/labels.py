"""The labels sidecar (``<footage stem>.labels.json``, schema ``edgeav.labels/1``).

Written by ``edgeav synth``, read by training evaluation, ``fit-events``,
``calibrate`` and the replay benchmarks. Times are seconds from the footage start.
A 1 s segment's label is the label of the event covering most of it, or
``background``; a segment touched by an ``anomaly: true`` event over most of it is anomalous.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgeav.errors import UserError, read_json_file

SCHEMA = "edgeav.labels/1"
BACKGROUND = "background"


@dataclass(frozen=True)
class LabelledEvent:
    label: str
    start: float
    end: float
    audible: bool = True
    visible: bool = True
    anomaly: bool = False


@dataclass(frozen=True)
class Labels:
    footage: str
    duration: float
    events: tuple[LabelledEvent, ...] = field(default_factory=tuple)

    def to_json(self) -> dict:
        return {
            "schema": SCHEMA,
            "footage": self.footage,
            "duration": self.duration,
            "events": [asdict(e) for e in self.events],
        }

    def segment_label(self, t0: float, t1: float) -> str:
        """The label of the event covering most of ``[t0, t1)``, or ``background``."""
        best, best_cover = BACKGROUND, 0.0
        for e in self.events:
            cover = min(e.end, t1) - max(e.start, t0)
            if cover > best_cover:
                best, best_cover = e.label, cover
        return best if best_cover > 0.5 * (t1 - t0) else BACKGROUND

    def segment_is_anomaly(self, t0: float, t1: float) -> bool:
        """True when anomalous events cover more than half of ``[t0, t1)``."""
        cover = sum(max(0.0, min(e.end, t1) - max(e.start, t0)) for e in self.events if e.anomaly)
        return cover > 0.5 * (t1 - t0)

    @property
    def kinds(self) -> list[str]:
        return sorted({e.label for e in self.events})


def sidecar_path(footage: str | Path) -> Path:
    p = Path(footage)
    return p.with_name(p.stem + ".labels.json")


def write_labels(labels: Labels, path: str | Path) -> None:
    Path(path).write_text(json.dumps(labels.to_json(), indent=1) + "\n")


def _need(cond: bool, path: Path, where: str, value: object, allowed: str) -> None:
    if not cond:
        raise UserError(f"{path}: {where}: {value!r} is not allowed ({allowed})")


def load_labels(path: str | Path) -> Labels:
    """Read and validate a sidecar; every problem is a one-line :class:`UserError` naming the field."""
    p = Path(path)
    data = read_json_file(p, "labels file")
    _need(isinstance(data, dict), p, "top level", type(data).__name__, "an object")
    _need(data.get("schema") == SCHEMA, p, "schema", data.get("schema"), f"expected {SCHEMA!r}")
    duration = data.get("duration")
    _need(isinstance(duration, (int, float)) and duration > 0, p, "duration", duration, "a positive number")
    events_raw = data.get("events", [])
    _need(isinstance(events_raw, list), p, "events", type(events_raw).__name__, "a list")
    events = []
    for i, e in enumerate(events_raw):
        where = f"events[{i}]"
        _need(isinstance(e, dict), p, where, e, "an object")
        _need(isinstance(e.get("label"), str) and e["label"] != "", p, f"{where}.label", e.get("label"),
              "a non-empty string")
        for key in ("start", "end"):
            _need(isinstance(e.get(key), (int, float)), p, f"{where}.{key}", e.get(key), "a number of seconds")
        _need(0 <= e["start"] < e["end"], p, f"{where}.end", e["end"], f"greater than start {e['start']} >= 0")
        for key in ("audible", "visible", "anomaly"):
            _need(isinstance(e.get(key, False), bool), p, f"{where}.{key}", e.get(key), "true or false")
        events.append(LabelledEvent(label=e["label"], start=float(e["start"]), end=float(e["end"]),
                                    audible=e.get("audible", True), visible=e.get("visible", True),
                                    anomaly=e.get("anomaly", False)))
    return Labels(footage=str(data.get("footage", "")), duration=float(duration), events=tuple(events))
