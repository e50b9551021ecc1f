"""The site's normal memory and its anomaly threshold (``edgeav calibrate``), without torch.

Score: the mean Euclidean distance from a window's features to its ``k`` nearest neighbours in a
memory of normal windows (design.md section 3: kNN distance to the site's normal embeddings), per
feature (a part: the embeddings, the pre-projection features, or the summaries of what the models'
front ends saw), each part rescaled by its own normal scores, and the largest part taken
(:class:`ScorerPart`). Which features: measured (README, "Anomaly features"; ``--features auto``). The
measured speeds of :mod:`edgeav.motion` are scored against each band's normal ceiling instead (kind
"ceiling", :data:`CEILING_FEATURES`).

Memory: bounded by a greedy k-center coreset (each new point is the one farthest from those already
kept), so a few hours of footage fit in a few MB and the rare-but-normal moments survive the
subsampling that a random subset would drop.

Threshold from a false-alarm rate: scores of normal windows must come from a memory that did not
contain them (a window is at distance 0 from itself), so the calibration windows are split into
contiguous folds and each fold is scored against a coreset of the others. The target rate X alarms
per hour over windows every ``hop`` seconds allows a fraction ``p = X * hop / 3600`` of normal windows
above the threshold, divided by the extremal index: an incident lifts several consecutive windows, and the
runtime raises one alert per run of them (min duration, cooldown), so alarms are runs, not windows. The
index (runs per window above a high threshold, the "runs" estimator of extreme-value theory) is measured on
the calibration's own scores in time order; counting windows instead (index 1) set thresholds that gave a
third of the asked-for alarms at a held-out site. Where the calibration footage holds enough windows
(``n * p >= 5``) the threshold is the empirical ``1 - p`` quantile; otherwise the score tail above its 90th
percentile is fitted with an exponential (peaks over threshold) and extrapolated.
"""

from __future__ import annotations

import argparse
import itertools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeav.errors import UserError

log = logging.getLogger("edgeav.calibrate")

MEMORY_FORMAT = "edgeav.anomaly_memory/2"
LEGACY_FORMAT = "edgeav.anomaly_memory/1"  # one joint/audio/video embedding memory, raw distances
# The features a part may use: see edgeav.bundle.feature_name (embeddings, pre-projection, front-end summary).
FEATURES = ("joint", "audio", "video", "audio_pre", "video_pre", "audio_summary", "video_summary", "audio_patches",
            "av_disagreement", "video_speed", "video_velocity", "audio_roughness")
# Measured best at a held-out synth site (README, "Anomaly features"); used when the bundle gives them all.
DEFAULT_FEATURES = ("audio_patches", "audio_summary", "video_summary", "video_speed", "audio_roughness")
PREVIOUS_DEFAULT_FEATURES = ("audio_summary", "video_summary")  # for bundles exported before audio_patches
# Bag features (``[B, P, D]``: a window is a bag of P instances, e.g. audio_patches): the memory is a coreset of
# at most BAG_MEMORY instances, chosen among evenly spaced ones: BAG_SAMPLE for every BAG_SAMPLE_WINDOWS windows
# (an hour at the bundles' 0.5 s hop), never fewer than BAG_SAMPLE (the coreset's cost grows with both). Scoring a
# window costs P x BAG_MEMORY distances; 1000 caught as many anomalies at the held-out site as 4000 (README,
# "Anomaly features"). The sample grows with the footage so that a short, rare normal sound is sampled as densely
# in a long calibration as in a short one: with a fixed 20000, 120 min at site 5150 caught 56 of 101 for 12 false
# alarms in 4 h, with 40000 61 for 12 (at 60 min, 40000 gave 51 for 3 against 53 for 4: no gain beyond density).
BAG_MEMORY = 1000
BAG_SAMPLE = 20000
BAG_SAMPLE_WINDOWS = 7200
SPREAD_QUANTILE = 0.99  # a part's normal scores are rescaled so that median -> 0 and this quantile -> 1
# Features scored against a per-dimension ceiling instead of by kNN distance (ScorerPart kind "ceiling"): the
# speeds of edgeav.motion, where what matters is how far a band's speed goes beyond the fastest normal one there,
# not which combination of bands moves (vehicles give endless new combinations on the road bands: at site 5150,
# alone at 4 false alarms in 4 h, a kNN part on the speeds caught 0-5 of 24 runners, the ceiling 16).
CEILING_FEATURES = ("video_speed", "video_velocity")
# The ceiling is the normal windows' value this fraction from the top, per dimension: a rare fast normal thing
# seen once (a light bar blinking across two lamps) does not set it.
CEILING_TOP = 1.0 / 2000
CEILING_SPREAD_FLOOR = 1.0  # px per frame gap: the rescaled unit of a site whose normal speeds never vary
# A ceiling part's scores follow another law than the kNN parts' (zero most of the time, then pixels), so one
# threshold on the largest part cannot share the false-alarm rate between them from an hour's scores: the ceiling
# part is scaled so that its own threshold for this share of the target rate meets the kNN parts' threshold (site
# 5150: 71 of 101 caught for 4 false alarms in 4 h with 0.5, 72 for 5 with 1.0, against 63 for 4 without it).
CEILING_RATE_SHARE = 0.5
# The normal memory also holds every normal window's audio pitch-shifted by 1 to this many semitones up and down
# (`edgeav calibrate --pitch-semitones`): a street's sirens, horns and engines come at pitches an hour of footage
# has not all heard. At the held-out site 5150 (README, "Anomalies at a new site") +-4 caught 53 of 101 against 46
# without (4 and 3 false alarms in 4 h), and at site 6061 38 of 56 against 30 (3 and 2 in 2 h).
PITCH_SEMITONES = 4
# A pitch-shifted copy of a bag feature keeps every 4th instance of each window (a different quarter per copy):
# the memory samples BAG_SAMPLE-proportionate instances from the pool anyway, and whole copies made calibrating
# 60 min peak at 2.5 GB (1.5 GB thinned: README, "Anomalies at a new site"), growing with the footage.
BAG_COPY_STRIDE = 4


def pitch_factors(semitones: int) -> tuple[float, ...]:
    """The frequency factors of 1 to ``semitones`` semitones down and up (none for 0)."""
    return tuple(2.0 ** (k / 12.0) for k in (*range(-semitones, 0), *range(1, semitones + 1)))


def knn_scores(x: np.ndarray, memory: np.ndarray, k: int, chunk: int = 2048) -> np.ndarray:
    """Mean distance from each row of ``x`` to its ``k`` nearest rows of ``memory`` (exact, chunked).

    In float64: ``|x|^2 + |m|^2 - 2 x.m`` cancels badly in float32 for near neighbours, the ones that matter.
    """
    m = np.asarray(memory, dtype=np.float64)
    m_sq = (m * m).sum(1)
    kk = min(k, len(m))
    out = np.empty(len(x), dtype=np.float32)
    for i in range(0, len(x), chunk):
        q = np.asarray(x[i:i + chunk], dtype=np.float64)
        d = np.maximum((q * q).sum(1)[:, None] + m_sq[None, :] - 2.0 * (q @ m.T), 0.0)
        near = np.partition(d, kk - 1, axis=1)[:, :kk] if kk < d.shape[1] else d
        out[i:i + chunk] = np.sqrt(near).mean(axis=1)
    return out


def greedy_k_center(x: np.ndarray, size: int) -> np.ndarray:
    """Indices of a greedy k-center coreset of ``x`` (deterministic: starts at the point nearest the mean)."""
    n = len(x)
    if n <= size:
        return np.arange(n)
    x = np.asarray(x, dtype=np.float64)
    sq = (x * x).sum(1)
    first = int(np.argmin(((x - x.mean(0)) ** 2).sum(1)))
    chosen = [first]
    nearest = np.maximum(sq + sq[first] - 2.0 * (x @ x[first]), 0.0)
    for _ in range(size - 1):
        nxt = int(np.argmax(nearest))
        chosen.append(nxt)
        nearest = np.minimum(nearest, np.maximum(sq + sq[nxt] - 2.0 * (x @ x[nxt]), 0.0))
    return np.array(sorted(chosen))


def bag_memory(x: np.ndarray | list[np.ndarray], memory_size: int, sample: int = BAG_SAMPLE) -> np.ndarray:
    """The memory of a feature: a coreset of its rows, or of a bag feature's ``[B, P, D]`` instances (at most
    :data:`BAG_MEMORY`, from at most ``sample`` evenly spaced ones, see :func:`pool_sample`: deterministic). ``x``
    may come in pieces (one pool, not copied into one array: pitch-shifted copies make it several times the
    footage)."""
    pieces = [np.asarray(p) for p in (x if isinstance(x, list) else [x])]
    pieces = [p for p in pieces if len(p)]
    if pieces[0].ndim == 2:
        rows = np.concatenate(pieces, dtype=np.float64)
        return rows[greedy_k_center(rows, memory_size)]
    flat = [p.reshape(-1, p.shape[-1]) for p in pieces]
    ends = np.cumsum([len(f) for f in flat])
    picks = np.linspace(0, ends[-1] - 1, min(int(ends[-1]), sample)).astype(np.int64)
    which = np.searchsorted(ends, picks, side="right")
    starts = np.concatenate([[0], ends[:-1]])
    inst = np.concatenate([flat[i][picks[which == i] - starts[i]] for i in range(len(flat))], dtype=np.float64)
    return inst[greedy_k_center(inst, min(memory_size, BAG_MEMORY))]


def window_distances(x: np.ndarray, memory: np.ndarray, k: int) -> np.ndarray:
    """kNN distance per window: of its row ``[B]``, or of each of a bag's instances ``[B, P]`` (see
    :data:`BAG_POOLS` for how a bag's distances make the window's scores)."""
    if x.ndim == 2:
        return knn_scores(x, memory, k)
    b, p, d = x.shape
    return knn_scores(x.reshape(b * p, d), memory, k).reshape(b, p)


# How a bag feature's instance distances ``[B, P]`` make window distances, each rescaled by its own normal scores
# and the larger taken: its most unusual instance (a 60 ms glass break among 23 patches of street) and the mean
# over the window (a sound unusual throughout it, such as a scream, whose every patch is a little unusual: its
# most unusual one is no rarer than a horn's or a barking dog's). Both come from the same distances: the mean
# costs nothing at run time. Site 5150 (README, "Anomaly features"): 53 -> 60 of 101 caught, 4 false alarms.
BAG_POOLS = ("max", "mean")


def pooled(d: np.ndarray, pool: str) -> np.ndarray:
    """Window distances ``[B]`` from instance distances ``[B, P]`` (rows' ``[B]`` pass through)."""
    if d.ndim == 1:
        return d
    return d.max(axis=1) if pool == "max" else d.mean(axis=1)


def thinned_copy(v: np.ndarray, copy: int, stride: int = BAG_COPY_STRIDE) -> np.ndarray:
    """A bag feature's altered copy ``[B, P, D]`` cut to every ``stride``-th instance of each window, starting at
    ``copy % stride`` (so the copies between them keep every instance): ``[B, P // stride, D]``. Rows
    (``[B, D]``) are returned whole."""
    if v.ndim != 3 or stride <= 1:
        return v
    return np.ascontiguousarray(v[:, copy % stride::stride][:, :v.shape[1] // stride])


def pool_sample(x: np.ndarray, variants: np.ndarray | None) -> int:
    """How many bag instances the coreset chooses among, for windows ``x`` and their ``variants``: BAG_SAMPLE per
    BAG_SAMPLE_WINDOWS windows (at least BAG_SAMPLE), and the windows' own are sampled as densely as without
    copies, so copies add to them instead of thinning them out."""
    own = BAG_SAMPLE * max(1.0, len(x) / BAG_SAMPLE_WINDOWS)
    return round(own * (1 + (0 if variants is None else variants.size / x.size)))


def fold_edges(n: int, folds: int, min_size: int) -> np.ndarray:
    """Boundaries of ``folds`` contiguous folds of ``n`` windows (fewer where a fold would hold fewer than
    ``min_size``; at least 2)."""
    return np.linspace(0, n, max(2, min(folds, n // min_size)) + 1).astype(int)


def out_of_fold_scores(x: np.ndarray, k: int, memory_size: int, folds: int = 5,
                       variants: np.ndarray | None = None) -> np.ndarray:
    """Each contiguous fold of windows scored against a memory of the other folds: honest normal distances
    (``[B]`` for rows, ``[B, P]`` per instance for bags).

    ``variants`` (``[A, B, ...]``: A altered copies of every window, see :func:`fit_part`) join the memory of
    the folds their windows belong to, never the memory a copy of the same window is scored against.
    """
    n = len(x)
    edges = fold_edges(n, folds, max(k + 1, 2))
    out = np.empty(x.shape[:2] if x.ndim == 3 else n, dtype=np.float32)
    sample = pool_sample(x, variants)
    for lo, hi in itertools.pairwise(edges):
        pool = [x[:lo], x[hi:]]
        if variants is not None:
            pool += [v for a in variants for v in (a[:lo], a[hi:])]
        out[lo:hi] = window_distances(x[lo:hi], bag_memory(pool, memory_size, sample), k)
    return out


KEPT_FROM = 0.5  # the calibration keeps its normal scores from the median up: enough to re-threshold later
TAIL_FIT_FROM = 0.9  # where the exponential tail fit starts (see the module doc)


@dataclass(frozen=True)
class ScoreTail:
    """The upper half of the out-of-fold normal scores (sorted, from the median up), their count and
    minimum: all :func:`threshold_for_rate` needs, so the runtime can re-threshold for another rate."""

    tail: np.ndarray
    count: int
    minimum: float
    extremal_index: float = 1.0  # runs per window above a high threshold (1: every window its own alarm)

    @classmethod
    def of(cls, scores: np.ndarray) -> ScoreTail:
        """From normal scores in time order (the order matters for the extremal index only)."""
        x = np.asarray(scores, dtype=np.float64)
        s = np.sort(x)
        start = int(np.floor((len(s) - 1) * KEPT_FROM))
        return cls(tail=s[start:].astype(np.float32), count=len(s), minimum=float(s[0]),
                   extremal_index=extremal_index(x))

    def quantile(self, q: float) -> float:
        """numpy's default (linear) quantile of the whole score set, for ``q >= KEPT_FROM``."""
        pos = (self.count - 1) * q
        i = int(np.floor(pos))
        at = i - int(np.floor((self.count - 1) * KEPT_FROM))
        t = self.tail.astype(np.float64)
        nxt = t[min(at + 1, len(t) - 1)]
        return float(t[at] + (pos - i) * (nxt - t[at]))


RUNS_QUANTILE = 0.99  # the high threshold the extremal index is measured at
RUNS_MIN_ABOVE = 20  # fewer windows above it than this: too few runs to measure, count windows (index 1)


def extremal_index(scores: np.ndarray) -> float:
    """Runs of consecutive windows above the 99th percentile per window above it, in ``[0.1, 1]``."""
    x = np.asarray(scores, dtype=np.float64)
    if len(x) == 0:
        return 1.0
    u = float(np.quantile(x, RUNS_QUANTILE))
    above = int((x > u).sum())
    if above < RUNS_MIN_ABOVE:
        return 1.0
    return float(np.clip(alarm_onsets(x, u) / above, 0.1, 1.0))


def threshold_for_rate(scores: np.ndarray | ScoreTail, false_alarms_per_hour: float,
                       hop_s: float) -> tuple[float, str]:
    """The score above which normal windows raise at most ``false_alarms_per_hour`` alarms (runs of windows;
    see the module doc). ``scores``: normal scores in time order, or their :class:`ScoreTail`."""
    tail = scores if isinstance(scores, ScoreTail) else ScoreTail.of(scores)
    n = tail.count
    p = false_alarms_per_hour * hop_s / 3600.0 / tail.extremal_index
    if p > 1.0 - KEPT_FROM:
        raise UserError(f"false_alarms_per_hour: {false_alarms_per_hour:g} would put every other window above the "
                        f"threshold (at most {(1.0 - KEPT_FROM) * 3600.0 / hop_s * tail.extremal_index:g} per hour)")
    if n * p >= 5:
        return tail.quantile(1.0 - p), "empirical quantile"
    u = tail.quantile(TAIL_FIT_FROM)
    t = tail.tail.astype(np.float64)
    excess = t[t > u] - u
    beta = float(excess.mean()) if len(excess) else 0.0
    if beta <= 0:
        beta = max(float(t[-1] - tail.minimum) / 10.0, 1e-6)
    return u + beta * float(np.log(0.1 / p)), "exponential tail above the 90th percentile"


def alarm_onsets(scores: np.ndarray, threshold: float) -> int:
    """How many runs of consecutive windows lie above ``threshold`` (one incident per run)."""
    above = np.asarray(scores) > threshold
    return int(above[0]) + int((above[1:] & ~above[:-1]).sum()) if len(above) else 0


@dataclass
class ScorerPart:
    """kNN distance on one feature, rescaled so that the parts of a memory are comparable.

    Features are standardised per dimension with the normal footage's statistics (a log-mel band and a
    motion cell have nothing in common in scale), and a part's score is its distance rescaled by its own
    out-of-fold normal scores: ``(d - median) / (q99 - median)``. The memory's score is the largest
    part's: a scream is unusual sound over a usual picture, and averaging would dilute it.
    """

    feature: str
    memory: np.ndarray  # [M, d] float32, standardised; kind "ceiling": [1, d], the per-dimension ceiling
    mean: np.ndarray  # [d]
    scale: np.ndarray  # [d]
    centre: float  # of the rows' distances, or of a bag's largest instance distance ("max" pool)
    spread: float
    # A bag's other pools (BAG_POOLS after "max") by name: (centre, spread) of their normal distances. Empty for
    # rows and for memories calibrated before the mean pool (their scores are unchanged).
    pools: dict[str, tuple[float, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._memory64 = np.asarray(self.memory, dtype=np.float64)  # converted once, not per window

    @property
    def kind(self) -> str:
        """"knn", or "ceiling" (:data:`CEILING_FEATURES`): the distance is how far the window's largest excess over
        the memory's one row of per-dimension ceilings goes (negative below them all)."""
        return "ceiling" if self.feature in CEILING_FEATURES else "knn"

    def distances(self, x: np.ndarray, k: int) -> np.ndarray:
        """Rows ``[B, D]`` -> ``[B]``, or bags ``[B, P, D]`` -> per instance ``[B, P]``."""
        z = (np.asarray(x, dtype=np.float64) - self.mean) / self.scale
        if self.kind == "ceiling":
            return (z - self._memory64[0]).max(axis=1)
        return window_distances(z, self._memory64, k)

    def scores(self, x: np.ndarray, k: int) -> np.ndarray:
        return rescaled(self.distances(x, k), {"max": (self.centre, self.spread), **self.pools})


def rescaled(d: np.ndarray, rescaling: dict[str, tuple[float, float]]) -> np.ndarray:
    """Window scores from distances (``[B]``, or a bag's ``[B, P]``): each pool's ``(d - centre) / spread``, the
    largest taken."""
    return np.max([(pooled(d, pool) - c) / s for pool, (c, s) in rescaling.items()], axis=0).astype(np.float32)


STANDARDISE_CHUNK = 65536  # rows per step: the statistics never hold a float64 copy of the footage's features


def standardisation(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and scale of rows ``x`` ``[N, D]``; the scale is floored so a dimension that never
    moved on normal footage cannot turn its first small change into an enormous distance.

    Two passes over chunks, accumulated in float64 (as exact as ``x.std`` in float64, without its full-size
    float64 temporaries: an hour's audio patches are 66 MB in float32)."""
    n = len(x)
    total = np.zeros(x.shape[1], dtype=np.float64)
    for i in range(0, n, STANDARDISE_CHUNK):
        total += x[i:i + STANDARDISE_CHUNK].sum(axis=0, dtype=np.float64)
    mean = total / n
    sq = np.zeros_like(mean)
    for i in range(0, n, STANDARDISE_CHUNK):
        sq += ((x[i:i + STANDARDISE_CHUNK] - mean) ** 2).sum(axis=0)
    sd = np.sqrt(sq / n)
    return mean.astype(np.float32), np.maximum(sd, 0.1 * float(np.median(sd)) + 1e-6).astype(np.float32)


def standardised(x: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``(x - mean) / scale`` in float32 (distances are taken in float64 chunk by chunk, see :func:`knn_scores`;
    the memory is stored in float32)."""
    z = np.subtract(x, mean, dtype=np.float32)
    z /= scale
    return z


def fit_part(feature: str, x: np.ndarray, k: int, memory_size: int, variants: np.ndarray | None = None,
             pools: tuple[str, ...] = BAG_POOLS) -> tuple[ScorerPart, np.ndarray]:
    """A part from normal windows ``x`` (``[B, D]``, or bags ``[B, P, D]``) in time order, and its out-of-fold
    (honest) normal scores.

    ``variants``: ``[A, B, ...]``, A altered copies of each normal window (the audio pitch-shifted: see
    :func:`edgeav.preprocess.pitch_shifted`) that the memory also holds, so that a normal sound at a pitch the
    calibration footage did not happen to hold is not unusual. The standardisation and the rescaling come from the
    windows themselves; the copies are never scored. ``pools``: how a bag's instance distances make its window
    scores (:data:`BAG_POOLS`; "max" among them).
    """
    # float32 throughout (the features and their copies are the bulk of calibrate's memory: several times the
    # footage's size); distances are taken in float64 a chunk at a time.
    if feature in CEILING_FEATURES:
        return fit_ceiling_part(feature, x)
    x = np.asarray(x)
    mean, scale = standardisation(x.reshape(-1, x.shape[-1]))
    z = standardised(x, mean, scale)
    zv = None if variants is None else standardised(variants, mean, scale)
    oof = out_of_fold_scores(z, k, memory_size, variants=zv).astype(np.float64)
    rescaling = {pool: _rescaling(pooled(oof, pool)) for pool in (pools if oof.ndim == 2 else ("max",))}
    scores = rescaled(oof, rescaling)
    centre, spread = rescaling.pop("max")
    instances = [z] if zv is None else [z, *zv]
    part = ScorerPart(feature=feature, memory=bag_memory(instances, memory_size, pool_sample(z, zv)).astype(np.float32),
                      mean=mean, scale=scale, centre=centre, spread=spread, pools=rescaling)
    return part, scores


def _rescaling(d: np.ndarray, floor: float = 1e-9) -> tuple[float, float]:
    """(centre, spread) that map normal distances' median to 0 and their SPREAD_QUANTILE to 1."""
    centre = float(np.median(d))
    return centre, max(float(np.quantile(d, SPREAD_QUANTILE)) - centre, floor)


def ceiling(x: np.ndarray) -> np.ndarray:
    """Per dimension of rows ``x`` ``[N, d]``: the value :data:`CEILING_TOP` of them from the top."""
    return np.sort(np.asarray(x, dtype=np.float64), axis=0)[-max(1, int(len(x) * CEILING_TOP))]


def fit_ceiling_part(feature: str, x: np.ndarray, folds: int = 5) -> tuple[ScorerPart, np.ndarray]:
    """A "ceiling" part (:data:`CEILING_FEATURES`) from normal rows ``x`` ``[B, d]`` in time order, and its
    out-of-fold normal scores: each contiguous fold against the ceiling of the others, as the kNN parts'."""
    x = np.asarray(x, dtype=np.float64)
    edges = fold_edges(len(x), folds, 2)
    oof = np.concatenate([(x[lo:hi] - ceiling(np.concatenate([x[:lo], x[hi:]]))).max(axis=1)
                          for lo, hi in itertools.pairwise(edges)])
    centre, spread = _rescaling(oof, CEILING_SPREAD_FLOOR)
    d = x.shape[1]
    part = ScorerPart(feature=feature, memory=ceiling(x)[None].astype(np.float32), mean=np.zeros(d, np.float32),
                      scale=np.ones(d, np.float32), centre=centre, spread=spread)
    return part, (oof - centre) / spread


def match_ceiling_parts(parts: list[ScorerPart], oofs: list[np.ndarray], false_alarms_per_hour: float,
                        hop_s: float) -> None:
    """Scale each ceiling part (in place, with its normal scores) so that its own threshold for
    :data:`CEILING_RATE_SHARE` of the target rate meets the kNN parts' threshold (see that constant)."""
    knn = [o for p, o in zip(parts, oofs, strict=True) if p.kind == "knn"]
    if not knn or len(knn) == len(parts):
        return
    target, _ = threshold_for_rate(np.max(np.stack(knn), axis=0), false_alarms_per_hour, hop_s)
    for i, p in enumerate(parts):
        if p.kind != "ceiling":
            continue
        own, _ = threshold_for_rate(oofs[i], false_alarms_per_hour * CEILING_RATE_SHARE, hop_s)
        if target > 0:
            # own < 1 (below the normal scores' 99th percentile) only where the footage never moved: a speed of a
            # pixel per frame gap above the ceiling then meets the threshold, rather than any speed at all
            gain = target / max(own, 1.0)
            p.spread /= gain
            oofs[i] = oofs[i] * gain


@dataclass
class AnomalyMemory:
    """kNN anomaly scorer over one or more features: ``score(features) -> [B]``; ``>= threshold`` is anomalous."""

    parts: list[ScorerPart]
    k: int
    threshold: float
    normal: ScoreTail | None = None  # the calibration's normal scores (None in a version-1 memory)

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(p.feature for p in self.parts)

    @classmethod
    def single(cls, feature: str, memory: np.ndarray, k: int, threshold: float) -> AnomalyMemory:
        """Raw kNN distances on one feature, neither standardised nor rescaled (a version-1 memory)."""
        mem = np.asarray(memory, dtype=np.float32)
        d = mem.shape[1] if mem.ndim == 2 else 0
        return cls([ScorerPart(feature, mem, np.zeros(d, np.float32), np.ones(d, np.float32), 0.0, 1.0)], k, threshold)

    def threshold_for(self, false_alarms_per_hour: float, hop_s: float) -> float:
        """The threshold for another false-alarm rate than the calibrated one, from the stored normal scores
        (the config's ``anomaly.false_alarms_per_hour``)."""
        if self.normal is None:
            raise UserError("anomaly.false_alarms_per_hour: the bundle's anomaly memory was calibrated by an older "
                            "version and keeps no normal scores to re-threshold with; run edgeav calibrate again "
                            "or leave the setting out (the calibrated threshold is used)")
        return threshold_for_rate(self.normal, false_alarms_per_hour, hop_s)[0]

    def score(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """Window features by name (rows of NaN where a window lacks that feature's modality) -> scores [B].

        The largest part's score; NaN for a window none of whose parts could be scored.
        """
        n = len(next(iter(features.values())))
        out = np.full(n, np.nan, np.float32)
        for part in self.parts:
            x = np.asarray(features[part.feature])
            ok = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
            if ok.any():
                s = part.scores(x[ok], self.k)
                out[ok] = np.fmax(out[ok], s)
        return out

    def save(self, path: str | Path) -> None:
        arrays: dict[str, np.ndarray] = {"format": np.array(MEMORY_FORMAT), "k": np.array(self.k),
                                         "threshold": np.array(self.threshold),
                                         "features": np.array(list(self.features))}
        if self.normal is not None:
            arrays.update({"tail": self.normal.tail, "tail_count": np.array(self.normal.count),
                           "tail_min": np.array(self.normal.minimum),
                           "tail_extremal_index": np.array(self.normal.extremal_index)})
        for i, p in enumerate(self.parts):
            arrays.update({f"memory_{i}": p.memory.astype(np.float32), f"mean_{i}": p.mean, f"scale_{i}": p.scale,
                           f"centre_{i}": np.array(p.centre), f"spread_{i}": np.array(p.spread)})
            if p.pools:  # absent in memories from before the mean pool: those load with "max" alone
                arrays[f"pools_{i}"] = np.array(list(p.pools))
                arrays[f"pool_rescaling_{i}"] = np.array(list(p.pools.values()), dtype=np.float64)
        with open(path, "wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> AnomalyMemory:
        p = Path(path)
        try:
            with np.load(p, allow_pickle=False) as z:
                data = {key: z[key] for key in z.files}
        except (OSError, ValueError, EOFError) as exc:
            raise UserError(f"{p}: not a readable anomaly memory ({exc})") from None
        fmt = str(data.get("format", ""))
        if fmt not in (MEMORY_FORMAT, LEGACY_FORMAT):
            raise UserError(f"{p}: anomaly memory format {fmt!r} is not {MEMORY_FORMAT!r}")
        want = ["k", "threshold", "features"]
        if fmt == LEGACY_FORMAT:
            want.append("memory")
        else:
            n = int(np.atleast_1d(data.get("features", np.array([]))).size)
            want += [f"{key}_{i}" for i in range(n) for key in ("memory", "mean", "scale", "centre", "spread")]
        missing = [key for key in want if key not in data]
        if missing:
            raise UserError(f"{p}: anomaly memory lacks {', '.join(missing)}")
        names = [str(f) for f in np.atleast_1d(data["features"])]
        if not names or any(f not in FEATURES for f in names):
            raise UserError(f"{p}: anomaly memory names unknown features {names}")
        if fmt == LEGACY_FORMAT:  # raw distances on one embedding: the same scores as before
            return cls.single(names[0], data["memory"], int(data["k"]), float(data["threshold"]))
        else:
            parts = [ScorerPart(f, data[f"memory_{i}"].astype(np.float32), data[f"mean_{i}"].astype(np.float32),
                                data[f"scale_{i}"].astype(np.float32), float(data[f"centre_{i}"]),
                                float(data[f"spread_{i}"]), _load_pools(p, f, data, i)) for i, f in enumerate(names)]
        for part in parts:
            m = part.memory
            if m.ndim != 2 or len(m) == 0 or part.mean.shape != (m.shape[1],) or part.scale.shape != (m.shape[1],) \
                    or not (part.scale > 0).all() or not part.spread > 0 or (part.kind == "ceiling" and len(m) != 1):
                raise UserError(f"{p}: anomaly memory part {part.feature!r} is empty or malformed")
        normal = None
        if "tail" in data and "tail_count" in data and "tail_min" in data:
            normal = ScoreTail(data["tail"].astype(np.float32), int(data["tail_count"]), float(data["tail_min"]),
                               float(data.get("tail_extremal_index", 1.0)))
            if normal.tail.ndim != 1 or not len(normal.tail) or normal.count < len(normal.tail):
                raise UserError(f"{p}: anomaly memory's normal score tail is malformed")
        return cls(parts=parts, k=int(data["k"]), threshold=float(data["threshold"]), normal=normal)

    @classmethod
    def from_bundle(cls, bundle_dir: Path, section: dict[str, Any], dims: dict[str, int]) -> AnomalyMemory:
        """Load the memory a manifest's ``anomaly`` section names and check it fits the bundle's models
        (``dims``: the width of every feature the bundle gives)."""
        name = section.get("memory")
        if not isinstance(name, str):
            raise UserError(f"{bundle_dir / 'manifest.json'}: anomaly.memory: {name!r} is not a file name")
        mem = cls.load(bundle_dir / name)
        for part in mem.parts:
            if part.feature not in dims:
                raise UserError(f"{bundle_dir / name}: memory uses the {part.feature} feature, which this bundle's "
                                f"models do not give (memory from another bundle?)")
            if part.memory.shape[1] != dims[part.feature]:
                raise UserError(f"{bundle_dir / name}: memory holds {part.memory.shape[1]}-d {part.feature} features "
                                f"but the bundle's models give {dims[part.feature]} (memory from another bundle?)")
        if abs(float(section.get("threshold", mem.threshold)) - mem.threshold) > 1e-9 * max(1.0, abs(mem.threshold)):
            raise UserError(f"{bundle_dir / name}: threshold {mem.threshold} differs from the manifest's "
                            f"anomaly.threshold {section.get('threshold')}")
        return mem


def _load_pools(path: Path, feature: str, data: dict[str, np.ndarray], i: int) -> dict[str, tuple[float, float]]:
    """A part's other bag pools from a saved memory (none where it has none: calibrated before them)."""
    if f"pools_{i}" not in data:
        return {}
    names = [str(n) for n in np.atleast_1d(data[f"pools_{i}"])]
    r = np.asarray(data.get(f"pool_rescaling_{i}", np.zeros((0, 2))), dtype=np.float64)
    if r.shape != (len(names), 2) or any(n not in BAG_POOLS[1:] for n in names) or not (r[:, 1] > 0).all():
        raise UserError(f"{path}: anomaly memory part {feature!r} has malformed pools {names}")
    return {n: (float(c), float(s)) for n, (c, s) in zip(names, r, strict=True)}


def auroc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve by ranks (ties get their average rank); None without both classes."""
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if n1 == 0 or n0 == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(len(s))
    # average rank of each run of equal scores
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], len(s)]
    for a, b in zip(starts, ends, strict=True):
        ranks[order[a:b]] = (a + b + 1) / 2.0
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def calibrate(features: dict[str, np.ndarray], names: tuple[str, ...], hop_s: float, false_alarms_per_hour: float,
              k: int = 3, memory_size: int = 2000, variants: dict[str, np.ndarray] | None = None,
              bag_pools: tuple[str, ...] = BAG_POOLS) -> tuple[AnomalyMemory, dict[str, Any]]:
    """Build the memory and threshold from normal windows' ``features`` (by name, time order) on ``names``;
    ``variants``: by name, altered copies of the same windows for the memory (see :func:`fit_part`)."""
    n = len(features[names[0]])
    if n < 4 * (k + 1):
        raise UserError(f"calibrate: only {n} normal windows; need at least {4 * (k + 1)} "
                        "(give more normal footage)")
    variants = variants or {}
    fitted = [fit_part(name, features[name], k, memory_size, variants.get(name), bag_pools) for name in names]
    parts, oofs = [p for p, _ in fitted], [o for _, o in fitted]
    match_ceiling_parts(parts, oofs, false_alarms_per_hour, hop_s)
    oof = np.max(np.stack(oofs), axis=0)
    normal = ScoreTail.of(oof)
    threshold, method = threshold_for_rate(normal, false_alarms_per_hour, hop_s)
    mem = AnomalyMemory(parts=parts, k=k, threshold=threshold, normal=normal)
    hours = n * hop_s / 3600.0
    onsets = alarm_onsets(oof, threshold)
    metrics = {
        "normal_windows": n,
        "normal_hours": round(hours, 4),
        "memory_size": max(len(p.memory) for p in parts),
        "threshold_method": method,
        "extremal_index": round(normal.extremal_index, 4),
        "normal_score_p50": round(float(np.median(oof)), 6),
        "normal_score_max": round(float(oof.max()), 6),
        "calibration_false_alarms": onsets,
        "calibration_false_alarms_per_hour": round(onsets / hours, 3) if hours > 0 else None,
    }
    return mem, metrics


def incidents_caught(scores: np.ndarray, anomalous: np.ndarray, file_index: np.ndarray,
                     threshold: float) -> tuple[int, int, int]:
    """``(caught, anomalies, false alarms)`` over labelled windows: an anomaly (a run of anomalous windows)
    is caught when one of its windows, or a neighbour, reaches the threshold; a false alarm is a run of
    windows at or above it that touches no anomaly."""
    above = np.asarray(scores) >= threshold
    caught = total = false = 0
    for f in np.unique(file_index):
        sel = np.flatnonzero(file_index == f)
        a, up = np.asarray(anomalous)[sel], above[sel]
        near = a | np.r_[a[1:], False] | np.r_[False, a[:-1]]  # windows half over an anomaly belong to it
        for run_mask in (a, up):
            starts = np.flatnonzero(run_mask & ~np.r_[False, run_mask[:-1]])
            ends = np.flatnonzero(run_mask & ~np.r_[run_mask[1:], False]) + 1
            for s0, e0 in zip(starts, ends, strict=True):
                lo, hi = max(s0 - 1, 0), min(e0 + 1, len(a))
                if run_mask is a:
                    total += 1
                    caught += bool(up[lo:hi].any())
                elif not near[s0:e0].any():
                    false += 1
    return caught, total, false


def candidate_feature_sets(available: tuple[str, ...]) -> list[tuple[str, ...]]:
    """What ``--features auto`` compares: every single feature, every audio feature with every video one, each
    such pair with the audio-visual disagreement, and each pair of a whole-window audio feature and a video one
    with the audio patches (short sounds a window's statistics average away)."""
    have = [f for f in FEATURES if f in available]
    audio = [f for f in have if f.startswith("audio")]
    video = [f for f in have if f.startswith("video")]
    pairs = [(a, v) for a in audio for v in video]
    extra = [(*p, "av_disagreement") for p in pairs] if "av_disagreement" in have else []
    patched = [("audio_patches", *p) for p in pairs if p[0] != "audio_patches"] if "audio_patches" in have else []
    return [(f,) for f in have] + pairs + extra + patched


def choose_features(normal: dict[str, np.ndarray], validation: Any, hop_s: float, false_alarms_per_hour: float,
                    k: int, memory_size: int, variants: dict[str, np.ndarray] | None = None
                    ) -> tuple[tuple[str, ...], list[dict[str, Any]]]:
    """Calibrate each candidate feature set on ``normal`` and replay it over the labelled ``validation``
    windows (:class:`edgeav.bundle.EmbeddedFootage`): the set that catches the most anomalies net of false
    alarms at its own calibrated threshold wins, AUROC breaking ties.

    design.md section 3: the scorer uses the features that measure best on the site, and which ones do
    differs (video features can be swamped by a scene they never saw, audio by wind).
    """
    rows = []
    for names in candidate_feature_sets(tuple(normal)):
        mem, _ = calibrate(normal, names, hop_s, false_alarms_per_hour, k, memory_size, variants)
        s = mem.score({n: validation.features[n] for n in names})
        caught, total, false = incidents_caught(s, validation.anomalous, validation.file_index, mem.threshold)
        au = auroc(s, validation.anomalous)
        rows.append({"features": list(names), "caught": caught, "anomalies": total, "false_alarms": false,
                     "auroc": None if au is None else round(au, 4)})
    best = max(rows, key=lambda r: (r["caught"] - r["false_alarms"], r["auroc"] or 0.0))
    return tuple(best["features"]), rows


def run(args: argparse.Namespace) -> int:
    from edgeav.bundle import embed_footage, load_bundle, replace_part, writable_bundle_dir

    if not args.false_alarms_per_hour > 0:
        raise UserError(f"--false-alarms-per-hour: {args.false_alarms_per_hour} must be > 0")
    if args.features == "auto" and not args.validate:
        raise UserError("--features auto needs --validate FOOTAGE with anomalies marked in its sidecar")
    if args.k < 1 or args.memory_size < args.k:
        raise UserError(f"--k {args.k} / --memory-size {args.memory_size}: need 1 <= k <= memory size")
    if not 0 <= args.pitch_semitones <= 12:
        raise UserError(f"--pitch-semitones: {args.pitch_semitones} must be from 0 to 12")
    d = writable_bundle_dir(args.models, "calibrate")
    bundle = load_bundle(d, threads=args.threads, with_heads=False)
    factors = pitch_factors(args.pitch_semitones)
    # Copies of only the features the memory will use (every one for --features auto): they are the bulk.
    wanted = (None if args.features == "auto"
              else [f.strip() for f in args.features.split(",")] if args.features
              else [f for d in (DEFAULT_FEATURES, PREVIOUS_DEFAULT_FEATURES) for f in d])
    emb = embed_footage(bundle, args.footage, require_labels=False, pitch_factors=factors, variant_features=wanted,
                       bag_stride=BAG_COPY_STRIDE)
    paths = emb.files
    mask = ~emb.anomalous
    dropped = int((~mask).sum())
    if dropped:
        log.info("calibrate: leaving out %d windows that the sidecars mark anomalous", dropped)
    normal = {name: x if mask.all() else x[mask] for name, x in emb.features.items()}  # no copy when all normal
    variants = {name: v if mask.all() else v[:, mask] for name, v in emb.variants.items()}
    hop = bundle.window_spec.hop_s
    comparison = None
    if args.features == "auto":
        val = embed_footage(bundle, args.validate, require_labels=True)
        if not val.anomalous.any() or val.anomalous.all():
            raise UserError(f"--validate {' '.join(args.validate)}: the sidecars must mark some windows anomalous "
                            "and some not, to compare features")
        names, comparison = choose_features(normal, val, hop, args.false_alarms_per_hour, args.k, args.memory_size,
                                            variants)
        print("calibrate: on the validation footage (caught/anomalies, false alarms, AUROC): " + "; ".join(
            f"{'+'.join(r['features'])} {r['caught']}/{r['anomalies']}, {r['false_alarms']}, {r['auroc']}"
            for r in comparison) + f"; using {'+'.join(names)}")
    elif args.features:
        names = tuple(f.strip() for f in args.features.split(",") if f.strip())
        bad = [f for f in names if f not in emb.features]
        if bad or not names:
            raise UserError(f"--features {args.features}: {', '.join(bad) or 'empty'} is not a feature this bundle "
                            f"gives ({', '.join(emb.features)}, or auto)")
    else:
        names = next((d for d in (DEFAULT_FEATURES, PREVIOUS_DEFAULT_FEATURES) if all(f in emb.features for f in d)),
                     ("joint",))
    bundle.close()  # the footage is embedded: the sessions' arenas need not sit beside the memory being built
    mem, metrics = calibrate(normal, names, hop, args.false_alarms_per_hour, k=args.k, memory_size=args.memory_size,
                             variants=variants)
    metrics["windows_marked_anomalous_left_out"] = dropped
    metrics["pitch_semitones"] = args.pitch_semitones
    if comparison is not None:
        metrics["feature_selection"] = {"validation_footage": [str(p) for p in val.files], "candidates": comparison}
    if metrics["threshold_method"].startswith("exponential"):
        need_min = 300.0 / args.false_alarms_per_hour  # n * p >= 5 windows above it, in minutes
        log.warning("calibrate: %.1f min of normal footage is too short to observe %g false alarms/hour; the threshold "
                    "is extrapolated from the score tail (about %.0f min would measure it directly)",
                    metrics["normal_hours"] * 60, args.false_alarms_per_hour, need_min)
    written = replace_part(d, bundle.manifest, "anomaly", mem.save, file_field="memory", section={
        "score": "largest over features of the mean distance to the k nearest normal windows (standardised "
                 "features), each rescaled by its normal scores: median 0, 99th percentile 1; video_speed and "
                 "video_velocity: the largest excess over their normal ceiling, scaled to meet the others' "
                 "threshold",
        "k": mem.k,
        "threshold": mem.threshold,
        "false_alarms_per_hour": args.false_alarms_per_hour,
        "features": list(mem.features),
        "precision": bundle.precision,
        "footage": [str(p) for p in paths],
        "metrics": metrics,
    })
    print(f"calibrate: {metrics['normal_windows']} normal windows ({metrics['normal_hours'] * 60:.1f} min), memory "
          f"{metrics['memory_size']}, threshold {mem.threshold:.4f} for {args.false_alarms_per_hour:g} false "
          f"alarms/hour ({metrics['threshold_method']}); bundle {written['bundle_id']} ({d})")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("calibrate", help="build the site's normal memory and anomaly threshold (no torch)",
                              description="Embed normal footage, keep a bounded coreset of it as the normal memory, "
                                          "and set the anomaly threshold for a target false-alarm rate.")
    p.add_argument("--models", default=None, metavar="BUNDLE_DIR",
                   help="model bundle to calibrate (modified in place)")
    p.add_argument("footage", nargs="+", metavar="FOOTAGE", help="normal footage files or directories of them")
    p.add_argument("--false-alarms-per-hour", type=float, default=1.0,
                   help="target false alarms per hour on normal footage (default 1.0)")
    p.add_argument("--k", type=int, default=3, help="neighbours averaged in the score (default 3)")
    p.add_argument("--memory-size", type=int, default=2000, help="most normal windows kept (default 2000)")
    p.add_argument("--features", default=None, metavar="NAMES",
                   help=f"comma-separated features the memory scores ({', '.join(FEATURES)}); default "
                        f"{','.join(DEFAULT_FEATURES)} where the bundle gives them (bundles exported before "
                        f"audio_patches: {','.join(PREVIOUS_DEFAULT_FEATURES)}), else joint; auto: the set that "
                        "catches most anomalies net of false alarms on --validate footage")
    p.add_argument("--validate", nargs="+", default=None, metavar="FOOTAGE",
                   help="labelled footage with anomalies (sidecars) to choose --features auto on")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime threads (default 2)")
    p.add_argument("--pitch-semitones", type=int, default=PITCH_SEMITONES, metavar="N",
                   help=f"the memory also holds the normal audio shifted by 1 to N semitones up and down, so a "
                        f"normal sound at an unheard pitch is not unusual (default {PITCH_SEMITONES}; 0: none; "
                        f"costs 2N more audio-model passes over the footage)")
    p.set_defaults(func=run)
