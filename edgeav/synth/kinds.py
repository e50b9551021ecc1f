"""The event kinds the synthetic street knows, and the profiles that mix them.

One :class:`KindSpec` per label name.  The label strings are a contract (training,
evaluation and the README rely on them); parameters are drawn per occurrence so no
kind has one colour, size, speed, loudness or pitch.  Which kinds look or sound
alike (by design, so that untrained features cannot solve the footage):

- look: car ~ truck (van-sized trucks, long cars) ~ siren vehicle (a car or van with
  a light bar) ~ the two vehicles of a crash; motorbike ~ bicycle (a rider on two
  wheels); talking ~ running ~ silent passers-by (people).
- sound: car ~ truck ~ motorbike (engine harmonics and tyre noise at different
  pitches); siren ~ offscreen horn ~ scream (tonal, sweeping); talking ~ scream ~
  distant chatter (voice); offscreen construction ~ glass_break ~ crash ~ explosion
  (impulsive, metallic).
"""

from __future__ import annotations

from dataclasses import dataclass

# Where an object moves: "road" (vehicles, in two lanes), "walk" (sidewalks), or
# None (not a moving object: audio-only or a stationary effect).
ROAD, WALK = "road", "walk"


@dataclass(frozen=True)
class KindSpec:
    """What every occurrence of a kind shares."""

    name: str
    anomaly: bool
    audible: bool
    visible: bool
    path: str | None          # ROAD / WALK for objects that cross the view, else None
    duration: tuple[float, float]  # typical span (s): crossing time for moving kinds
    loudness: tuple[float, float]  # dBFS range of the event's level (ignored when not audible)
    variants: tuple[str, ...] = ()


KINDS: dict[str, KindSpec] = {k.name: k for k in (
    # recurring
    KindSpec("car", False, True, True, ROAD, (3.0, 6.5), (-35.0, -16.0)),
    KindSpec("truck", False, True, True, ROAD, (4.5, 9.0), (-31.0, -13.0), ("truck", "bus")),
    KindSpec("motorbike", False, True, True, ROAD, (2.2, 4.5), (-34.0, -14.0)),
    KindSpec("talking", False, True, True, WALK, (5.0, 11.0), (-37.0, -18.0)),
    KindSpec("dog", False, True, True, WALK, (3.5, 8.0), (-33.0, -14.0)),
    KindSpec("siren", False, True, True, ROAD, (3.0, 6.0), (-29.0, -12.0), ("wail", "yelp", "hilo")),
    KindSpec("bicycle", False, False, True, ROAD, (4.0, 8.0), (-99.0, -99.0)),
    KindSpec("offscreen", False, True, False, None, (1.0, 6.0), (-35.0, -14.0), ("horn", "construction")),
    # anomalies
    KindSpec("glass_break", True, True, False, None, (0.8, 2.2), (-32.0, -12.0)),
    KindSpec("scream", True, True, False, None, (0.8, 2.5), (-32.0, -12.0)),
    KindSpec("explosion", True, True, True, None, (2.5, 5.0), (-24.0, -6.0), ("explosion", "gunshot")),
    KindSpec("crash", True, True, True, ROAD, (5.0, 8.0), (-26.0, -8.0)),
    KindSpec("running", True, True, True, WALK, (2.0, 4.0), (-36.0, -20.0)),
)}

RECURRING = ("car", "truck", "motorbike", "talking", "dog", "siren", "bicycle", "offscreen")
ANOMALIES = ("glass_break", "scream", "explosion", "crash", "running")


@dataclass(frozen=True)
class Profile:
    """How often each kind happens (events per minute) and how busy the ambient scene is."""

    name: str
    rates: dict[str, float]
    passersby_per_min: float   # silent people walking by: life that is no event
    clouds: float              # depth of moving cloud shadows (0: none)
    noise_sigma: float         # sensor noise, in luma levels
    ambient_db: tuple[float, float]  # traffic hum + wind level range (dBFS)
    chatter_per_min: float     # distant, unlabelled voices
    gusts_per_min: float       # wind gusts
    drift: float               # depth of the slow lighting drift (0: constant light)


_STREET_RATES = {"car": 2.2, "truck": 0.7, "motorbike": 0.6, "talking": 0.8, "dog": 0.6,
                 "siren": 0.2, "bicycle": 0.7, "offscreen": 0.7}
_ANOMALY_RATES = {"glass_break": 0.08, "scream": 0.08, "explosion": 0.07, "crash": 0.07, "running": 0.08}

PROFILES: dict[str, Profile] = {p.name: p for p in (
    Profile("street", dict(_STREET_RATES), passersby_per_min=2.5, clouds=0.3, noise_sigma=2.5,
            ambient_db=(-44.0, -30.0), chatter_per_min=1.0, gusts_per_min=1.5, drift=0.45),
    Profile("street-anomalies", {**_STREET_RATES, **_ANOMALY_RATES}, passersby_per_min=2.5, clouds=0.3,
            noise_sigma=2.5, ambient_db=(-44.0, -30.0), chatter_per_min=1.0, gusts_per_min=1.5, drift=0.45),
    Profile("easy", {k: v * 0.6 for k, v in _STREET_RATES.items()}, passersby_per_min=0.3, clouds=0.0,
            noise_sigma=1.0, ambient_db=(-50.0, -46.0), chatter_per_min=0.0, gusts_per_min=0.0, drift=0.1),
)}
