"""The event timeline: scripted (``--events``) or drawn at random for a profile.

Both paths end in the same resolved :class:`Event` list, whose spans *are* the
labels: the renderers draw an object exactly during ``vis`` and add sound exactly
during ``aud`` (sample-accurate), and the label is their union.

Randomness is split into independent streams (``numpy`` PCG64 seeded from
``(seed, purpose, kind, occurrence)``), so adding a kind or an event never reshuffles
the others, and a scripted timeline keeps the same ambient scene as a random one.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeav.errors import UserError
from edgeav.labels import LabelledEvent
from edgeav.synth.kinds import KINDS, PROFILES, ROAD, WALK, Profile

# Stream purposes: the first number after the seed in every SeedSequence.
STREAM_TIMELINE, STREAM_EVENT, STREAM_SCENE, STREAM_AMBIENT_AUDIO, STREAM_LIFE = 1, 2, 3, 4, 5

PARAM_KEYS = ("kind", "start", "duration", "speed", "direction", "lane", "colour", "color", "size",
              "loudness", "pitch", "variant", "x", "lead", "tail")


def rng_for(seed: int, *keys: int) -> np.random.Generator:
    """An independent random stream for ``(seed, *keys)``."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed & 0xFFFFFFFF, *keys])))


def kind_key(name: str) -> int:
    """A stable number per kind name (not its position in a list, which may change)."""
    return zlib.crc32(name.encode())


@dataclass(frozen=True)
class Event:
    """One resolved occurrence: its kind, spans and every parameter the renderers need."""

    kind: str
    start: float
    end: float
    vis: tuple[float, float] | None
    aud: tuple[float, float] | None
    anomaly: bool
    seed: int                       # the event's own random stream (details such as clothes, timbre)
    params: dict[str, Any] = field(default_factory=dict)

    def label(self) -> LabelledEvent:
        return LabelledEvent(label=self.kind, start=self.start, end=self.end, audible=self.aud is not None,
                             visible=self.vis is not None, anomaly=self.anomaly)


def _bad(where: str, key: str, value: object, allowed: str) -> UserError:
    return UserError(f"{where}.{key}: {value!r} is not allowed ({allowed})")


def _number(spec: dict, where: str, key: str, lo: float, hi: float) -> float | None:
    if key not in spec:
        return None
    v = spec[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
        raise _bad(where, key, v, f"a number from {lo:g} to {hi:g}")
    return float(v)


def _colour(spec: dict, where: str) -> tuple[int, int, int] | None:
    key = "colour" if "colour" in spec else "color" if "color" in spec else None
    if key is None:
        return None
    v = spec[key]
    if isinstance(v, str) and len(v) == 7 and v[0] == "#":
        try:
            return int(v[1:3], 16), int(v[3:5], 16), int(v[5:7], 16)
        except ValueError:
            pass
    elif (isinstance(v, list) and len(v) == 3
          and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in v)):
        return v[0], v[1], v[2]
    raise _bad(where, key, v, 'an RGB list such as [200, 30, 30] or "#c81e1e"')


def random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """Any hue, any saturation, any brightness: no kind is recognisable by its colour."""
    import colorsys

    h, s, v = rng.random(), rng.uniform(0.0, 0.9), rng.uniform(0.25, 0.95)
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return round(r * 255), round(g * 255), round(b * 255)


def resolve_event(spec: dict, *, seed: int, index: int, where: str, seconds: float,
                  rng: np.random.Generator) -> Event:
    """Validate one timeline entry and draw every parameter it leaves out."""
    if not isinstance(spec, dict):
        raise UserError(f"{where}: {spec!r} is not allowed (an object such as {{\"kind\": \"car\", \"start\": 3}})")
    unknown = sorted(set(spec) - set(PARAM_KEYS))
    if unknown:
        raise UserError(f"{where}: unknown parameter {unknown[0]!r} (known: {', '.join(PARAM_KEYS)})")
    kind = spec.get("kind")
    if kind not in KINDS:
        raise _bad(where, "kind", kind, "one of " + ", ".join(KINDS))
    k = KINDS[kind]
    if "start" not in spec:
        raise UserError(f"{where}.start: missing (seconds from the start of the footage)")
    start = _number(spec, where, "start", 0.0, max(seconds - 1e-3, 0.0))
    assert start is not None
    duration = _number(spec, where, "duration", 0.2, 3600.0)
    speed = _number(spec, where, "speed", 0.1, 10.0)
    if duration is not None and speed is not None:
        raise UserError(f"{where}: give duration or speed, not both (speed scales the kind's typical duration)")
    if k.path is None and speed is not None:
        raise _bad(where, "speed", speed, f"{kind} does not move; give duration")
    span_range = (8.0, 16.0) if kind == "siren" else k.duration
    if duration is None:
        duration = float(rng.uniform(*span_range)) / (speed or 1.0)
    duration = round(duration, 3)
    end = round(start + duration, 3)

    direction = spec.get("direction", "left" if rng.random() < 0.5 else "right")
    if direction not in ("left", "right"):
        raise _bad(where, "direction", direction, '"left" or "right"')
    lane = spec.get("lane", "near" if rng.random() < 0.55 else "far")
    if lane not in ("near", "far"):
        raise _bad(where, "lane", lane, '"near" or "far"')
    if k.path == ROAD and "lane" not in spec:
        lane = "near" if direction == "right" else "far"   # traffic keeps to its side
    colour = _colour(spec, where) or random_colour(rng)
    size = _number(spec, where, "size", 0.3, 3.0)
    size = float(rng.uniform(0.75, 1.3)) if size is None else size
    loudness = _number(spec, where, "loudness", -80.0, 0.0)
    loudness = float(rng.uniform(*k.loudness)) if loudness is None else loudness
    pitch = _number(spec, where, "pitch", 0.25, 4.0)
    pitch = float(2.0 ** rng.uniform(-0.4, 0.4)) if pitch is None else pitch
    if k.variants:
        variant = spec.get("variant", k.variants[int(rng.integers(len(k.variants)))])
        if variant not in k.variants:
            raise _bad(where, "variant", variant, "one of " + ", ".join(k.variants))
    elif "variant" in spec:
        raise _bad(where, "variant", spec["variant"], f"{kind} has no variants")
    else:
        variant = ""
    x = _number(spec, where, "x", 0.0, 1.0)
    x = float(rng.uniform(0.15, 0.85)) if x is None else x

    if end > seconds + 1e-9:
        raise UserError(f"{where}: ends at {end:g} s, after the end of the footage ({seconds:g} s)")
    vis: tuple[float, float] | None = (start, end) if k.visible else None
    aud: tuple[float, float] | None = (start, end) if k.audible else None
    params: dict[str, Any] = dict(direction=direction, lane=lane, colour=colour, size=size, loudness=loudness,
                                  pitch=pitch, variant=variant, x=x)
    if kind == "siren":
        # Heard before it enters the view and after it leaves: the label is the audible span.
        lead = _number(spec, where, "lead", 0.0, 600.0)
        tail = _number(spec, where, "tail", 0.0, 600.0)
        frac_cross = float(rng.uniform(0.3, 0.5))
        free = duration * (1.0 - frac_cross)
        share = float(rng.uniform(0.35, 0.65))
        lead = round(free * share, 3) if lead is None else lead
        tail = round(free * (1 - share), 3) if tail is None else tail
        if lead + tail > duration - 0.5:
            raise UserError(f"{where}: lead + tail ({lead + tail:g} s) leave under 0.5 s of the "
                            f"{duration:g} s siren in view")
        vis = (round(start + lead, 3), round(end - tail, 3))
        params.update(lead=lead, tail=tail)
    elif "lead" in spec or "tail" in spec:
        raise _bad(where, "lead" if "lead" in spec else "tail", spec.get("lead", spec.get("tail")),
                   "only a siren has lead/tail")
    return Event(kind=kind, start=start, end=end, vis=vis, aud=aud, anomaly=k.anomaly,
                 seed=int(rng.integers(2**31)), params=params)


def scripted_timeline(events: object, *, seed: int, seconds: float, source: str = "events") -> list[Event]:
    """Exactly the given events, each validated; parameters left out are drawn from the seed."""
    if not isinstance(events, list):
        raise UserError(f"{source}: {type(events).__name__} is not allowed (a list of event objects)")
    out = []
    for i, spec in enumerate(events):
        rng = rng_for(seed, STREAM_EVENT, 0, i)
        out.append(resolve_event(spec, seed=seed, index=i, where=f"{source}[{i}]", seconds=seconds, rng=rng))
    return sorted(out, key=lambda e: (e.start, e.kind))


def random_timeline(profile: Profile, *, seed: int, seconds: float) -> list[Event]:
    """Poisson arrivals per kind from the profile's rates; each kind has its own stream."""
    out: list[Event] = []
    for kind, per_min in profile.rates.items():
        if per_min <= 0:
            continue
        arrivals = rng_for(seed, STREAM_TIMELINE, kind_key(kind))
        t, n = 0.0, 0
        while True:
            t += float(arrivals.exponential(60.0 / per_min))
            if t >= seconds:
                break
            rng = rng_for(seed, STREAM_EVENT, kind_key(kind), n)
            n += 1
            # Draw the span first so an event that would run past the end is skipped, not cut.
            span = (8.0, 16.0) if kind == "siren" else KINDS[kind].duration
            duration = round(float(rng.uniform(*span)), 3)
            if t + duration > seconds:
                continue
            spec = {"kind": kind, "start": round(t, 3), "duration": duration}
            out.append(resolve_event(spec, seed=seed, index=n, where=f"{kind}#{n}", seconds=seconds, rng=rng))
    return keep_lanes_clear(sorted(out, key=lambda e: (e.start, e.kind)))


# Longest drawn length of each road kind as a fraction of a 16:9 frame's width (sprites.py sizes x 1.15).
_ROAD_LENGTH = {"car": 0.21, "truck": 0.42, "motorbike": 0.095, "bicycle": 0.085, "siren": 0.245}
_LANE_SCALE = {"far": 0.78, "near": 1.0}


def _progress(e: Event, t: float) -> tuple[float, float]:
    """(rear, front) of a crossing vehicle at ``t``, as distance travelled since entering (frame widths)."""
    assert e.vis is not None
    w = _ROAD_LENGTH[e.kind] * e.params["size"] * _LANE_SCALE[e.params["lane"]]
    front = (1 + w) * (t - e.vis[0]) / (e.vis[1] - e.vis[0])
    return front - w, front


def _follows(a: Event, b: Event, margin: float = 0.02) -> bool:
    """True when ``b`` (entering after ``a`` in the same lane) stays behind ``a`` the whole time."""
    assert a.vis is not None and b.vis is not None
    if b.vis[0] >= a.vis[1]:
        return True
    t_last = min(a.vis[1], b.vis[1])
    return all(_progress(b, t)[1] <= _progress(a, t)[0] - margin for t in (b.vis[0], t_last))


def keep_lanes_clear(events: list[Event]) -> list[Event]:
    """Random traffic does not drive through itself: a vehicle that would catch up with the one ahead
    in its lane takes the other lane (and direction), or is left out when both are taken."""
    from dataclasses import replace

    out: list[Event] = []
    lanes: dict[str, list[Event]] = {"near": [], "far": []}
    for e in events:
        if e.kind not in _ROAD_LENGTH:
            out.append(e)
            continue
        other = "far" if e.params["lane"] == "near" else "near"
        flipped = replace(e, params={**e.params, "lane": other,
                                     "direction": "left" if e.params["direction"] == "right" else "right"})
        for cand in (e, flipped):
            lane = lanes[cand.params["lane"]]
            if all(_follows(a, cand) for a in lane):
                lane.append(cand)
                out.append(cand)
                break
    return out


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise UserError(f"profile: {name!r} is not allowed (one of {', '.join(PROFILES)})")
    return PROFILES[name]


__all__ = ["ROAD", "WALK", "Event", "get_profile", "random_timeline", "rng_for", "scripted_timeline"]
