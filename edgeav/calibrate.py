"""The site's normal memory and its anomaly threshold (``edgeav calibrate``), without torch.

Score: the mean Euclidean distance from a window's features to its ``k`` nearest neighbours in a
memory of normal windows (design.md section 3: kNN distance to the site's normal embeddings).

Memory: bounded by a greedy k-center coreset (each new point is the one farthest from those already
kept), so a few hours of footage fit in a few MB and the rare-but-normal moments survive the
subsampling that a random subset would drop.

Threshold from a false-alarm rate: scores of normal windows must come from a memory that did not
contain them (a window is at distance 0 from itself), so the calibration windows are split into
contiguous folds and each fold is scored against a coreset of the others. The target rate X alarms
per hour over windows every ``hop`` seconds allows a fraction ``p = X * hop / 3600`` of normal windows
above the threshold. Where the calibration footage holds enough windows (``n * p >= 5``) the threshold is
the empirical ``1 - p`` quantile; otherwise the score tail above its 90th percentile is fitted with an
exponential (peaks over threshold) and extrapolated. Counting every window above the threshold as
an alarm is conservative: the runtime merges consecutive windows into one alert (min duration, cooldown).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeav.errors import UserError

log = logging.getLogger("edgeav.calibrate")

MEMORY_FORMAT = "edgeav.anomaly_memory/1"
FEATURES = ("joint", "audio", "video")


def select_features(joint: np.ndarray, features: str) -> np.ndarray:
    """The part of :func:`edgeav.bundle.joint_embedding` the anomaly memory uses: all, audio half or video half."""
    j = np.asarray(joint, dtype=np.float32)
    half = j.shape[1] // 2
    if features == "joint":
        return j
    if features == "audio":
        return j[:, :half]
    if features == "video":
        return j[:, half:]
    raise ValueError(f"features must be one of {FEATURES}, got {features!r}")


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


def out_of_fold_scores(x: np.ndarray, k: int, memory_size: int, folds: int = 5) -> np.ndarray:
    """Each contiguous fold scored against a coreset of the other folds: honest normal scores."""
    n = len(x)
    folds = max(2, min(folds, n // max(k + 1, 2)))
    edges = np.linspace(0, n, folds + 1).astype(int)
    out = np.empty(n, dtype=np.float32)
    for i in range(folds):
        lo, hi = edges[i], edges[i + 1]
        rest = np.concatenate([x[:lo], x[hi:]])
        mem = rest[greedy_k_center(rest, memory_size)]
        out[lo:hi] = knn_scores(x[lo:hi], mem, k)
    return out


def threshold_for_rate(scores: np.ndarray, false_alarms_per_hour: float, hop_s: float) -> tuple[float, str]:
    """The score above which normal windows occur at most ``false_alarms_per_hour`` (see the module doc)."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    n = len(s)
    p = false_alarms_per_hour * hop_s / 3600.0
    if n * p >= 5:
        return float(np.quantile(s, 1.0 - p)), "empirical quantile"
    u = float(np.quantile(s, 0.9))
    excess = s[s > u] - u
    beta = float(excess.mean()) if len(excess) else 0.0
    if beta <= 0:
        beta = max(float(s[-1] - s[0]) / 10.0, 1e-6)
    return u + beta * float(np.log(0.1 / p)), "exponential tail above the 90th percentile"


def alarm_onsets(scores: np.ndarray, threshold: float) -> int:
    """How many runs of consecutive windows lie above ``threshold`` (one incident per run)."""
    above = np.asarray(scores) > threshold
    return int(above[0]) + int((above[1:] & ~above[:-1]).sum()) if len(above) else 0


@dataclass
class AnomalyMemory:
    """kNN anomaly scorer: ``score(joint) -> [B]``; ``score >= threshold`` is anomalous."""

    memory: np.ndarray  # [M, d] float32
    k: int
    threshold: float
    features: str

    def __post_init__(self) -> None:
        self._memory64 = np.asarray(self.memory, dtype=np.float64)  # converted once, not per window

    def score(self, joint: np.ndarray) -> np.ndarray:
        """Joint embeddings ``[B, 2D]`` -> anomaly scores ``[B]`` (higher is more unusual)."""
        return knn_scores(select_features(joint, self.features), self._memory64, self.k)

    def is_anomalous(self, joint: np.ndarray) -> np.ndarray:
        return self.score(joint) >= self.threshold

    def save(self, path: str | Path) -> None:
        with open(path, "wb") as f:
            np.savez(f, format=np.array(MEMORY_FORMAT), memory=self.memory.astype(np.float32),
                     k=np.array(self.k), threshold=np.array(self.threshold), features=np.array(self.features))

    @classmethod
    def load(cls, path: str | Path) -> AnomalyMemory:
        p = Path(path)
        try:
            with np.load(p, allow_pickle=False) as z:
                data = {key: z[key] for key in z.files}
        except (OSError, ValueError, EOFError) as exc:
            raise UserError(f"{p}: not a readable anomaly memory ({exc})") from None
        missing = [key for key in ("format", "memory", "k", "threshold", "features") if key not in data]
        if missing:
            raise UserError(f"{p}: anomaly memory lacks {', '.join(missing)}")
        if str(data["format"]) != MEMORY_FORMAT:
            raise UserError(f"{p}: anomaly memory format {str(data['format'])!r} is not {MEMORY_FORMAT!r}")
        mem = data["memory"]
        if mem.ndim != 2 or len(mem) == 0 or str(data["features"]) not in FEATURES:
            raise UserError(f"{p}: anomaly memory is empty or malformed")
        return cls(memory=mem.astype(np.float32), k=int(data["k"]), threshold=float(data["threshold"]),
                   features=str(data["features"]))

    @classmethod
    def from_bundle(cls, bundle_dir: Path, section: dict[str, Any], embedding_size: int) -> AnomalyMemory:
        """Load the memory a manifest's ``anomaly`` section names and check it fits the bundle's encoders."""
        name = section.get("memory")
        if not isinstance(name, str):
            raise UserError(f"{bundle_dir / 'manifest.json'}: anomaly.memory: {name!r} is not a file name")
        mem = cls.load(bundle_dir / name)
        want = embedding_size * (2 if mem.features == "joint" else 1)
        if mem.memory.shape[1] != want:
            raise UserError(f"{bundle_dir / name}: memory holds {mem.memory.shape[1]}-d {mem.features} features but "
                            f"the bundle's encoders give {want} (memory from another bundle?)")
        if abs(float(section.get("threshold", mem.threshold)) - mem.threshold) > 1e-9 * max(1.0, abs(mem.threshold)):
            raise UserError(f"{bundle_dir / name}: threshold {mem.threshold} differs from the manifest's "
                            f"anomaly.threshold {section.get('threshold')}")
        return mem


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


def compare_features(normal: np.ndarray, validation: np.ndarray, anomalous: np.ndarray, k: int,
                     memory_size: int) -> dict[str, float | None]:
    """Anomaly AUROC on labelled validation windows of a memory of ``normal`` windows, per feature set.

    design.md section 3: the scorer uses the features that measure best on the site, and which
    ones do differs (video features can be swamped by a scene they never saw, audio by wind).
    """
    out: dict[str, float | None] = {}
    for features in FEATURES:
        f = select_features(normal, features)
        mem = f[greedy_k_center(f, memory_size)]
        au = auroc(knn_scores(select_features(validation, features), mem, k), anomalous)
        out[features] = round(au, 4) if au is not None else None
    return out


def calibrate(x: np.ndarray, hop_s: float, false_alarms_per_hour: float, k: int = 3, memory_size: int = 2000,
              features: str = "joint") -> tuple[AnomalyMemory, dict[str, Any]]:
    """Build the memory and threshold from normal joint embeddings ``x`` in time order."""
    f = select_features(x, features)
    if len(f) < 4 * (k + 1):
        raise UserError(f"calibrate: only {len(f)} normal windows; need at least {4 * (k + 1)} "
                        "(give more normal footage)")
    oof = out_of_fold_scores(f, k, memory_size)
    threshold, method = threshold_for_rate(oof, false_alarms_per_hour, hop_s)
    keep = greedy_k_center(f, memory_size)
    mem = AnomalyMemory(memory=f[keep].astype(np.float32), k=k, threshold=threshold, features=features)
    hours = len(f) * hop_s / 3600.0
    onsets = alarm_onsets(oof, threshold)
    metrics = {
        "normal_windows": len(f),
        "normal_hours": round(hours, 4),
        "memory_size": len(keep),
        "threshold_method": method,
        "normal_score_p50": round(float(np.median(oof)), 6),
        "normal_score_max": round(float(oof.max()), 6),
        "calibration_false_alarms": onsets,
        "calibration_false_alarms_per_hour": round(onsets / hours, 3) if hours > 0 else None,
    }
    return mem, metrics


def run(args: argparse.Namespace) -> int:
    from edgeav.bundle import embed_footage, load_bundle, replace_part, writable_bundle_dir

    if not args.false_alarms_per_hour > 0:
        raise UserError(f"--false-alarms-per-hour: {args.false_alarms_per_hour} must be > 0")
    if args.features == "auto" and not args.validate:
        raise UserError("--features auto needs --validate FOOTAGE with anomalies marked in its sidecar")
    if args.k < 1 or args.memory_size < args.k:
        raise UserError(f"--k {args.k} / --memory-size {args.memory_size}: need 1 <= k <= memory size")
    d = writable_bundle_dir(args.models, "calibrate")
    bundle = load_bundle(d, threads=args.threads, with_heads=False)
    emb = embed_footage(bundle, args.footage, require_labels=False)
    x, paths = emb.joint, emb.files
    mask = ~emb.anomalous
    dropped = int((~mask).sum())
    if dropped:
        log.info("calibrate: leaving out %d windows that the sidecars mark anomalous", dropped)
    features, comparison = args.features, None
    if features == "auto":
        val = embed_footage(bundle, args.validate, require_labels=True)
        if not val.anomalous.any() or val.anomalous.all():
            raise UserError(f"--validate {' '.join(args.validate)}: the sidecars must mark some windows anomalous "
                            "and some not, to compare features")
        comparison = compare_features(x[mask], val.joint, val.anomalous, args.k, args.memory_size)
        measured = {f: a for f, a in comparison.items() if a is not None}
        features = max(measured, key=lambda f: measured[f]) if measured else "joint"
        print(f"calibrate: anomaly AUROC on the validation footage: "
              f"{', '.join(f'{f} {a}' for f, a in comparison.items())}; using {features}")
    mem, metrics = calibrate(x[mask], bundle.window_spec.hop_s, args.false_alarms_per_hour, k=args.k,
                             memory_size=args.memory_size, features=features)
    metrics["windows_marked_anomalous_left_out"] = dropped
    if comparison is not None:
        metrics["feature_selection"] = {"validation_footage": [str(p) for p in val.files],
                                        "validation_auroc": comparison}
    if metrics["threshold_method"].startswith("exponential"):
        need_min = 300.0 / args.false_alarms_per_hour  # n * p >= 5 windows above it, in minutes
        log.warning("calibrate: %.1f min of normal footage is too short to observe %g false alarms/hour; the threshold "
                    "is extrapolated from the score tail (about %.0f min would measure it directly)",
                    metrics["normal_hours"] * 60, args.false_alarms_per_hour, need_min)
    written = replace_part(d, bundle.manifest, "anomaly", mem.save, file_field="memory", section={
        "score": "mean Euclidean distance to the k nearest normal windows",
        "k": mem.k,
        "threshold": mem.threshold,
        "false_alarms_per_hour": args.false_alarms_per_hour,
        "features": mem.features,
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
    p.add_argument("--features", choices=[*FEATURES, "auto"], default="joint",
                   help="which embedding the memory holds (default joint = audio and video); auto: the one with "
                        "the best anomaly AUROC on --validate footage")
    p.add_argument("--validate", nargs="+", default=None, metavar="FOOTAGE",
                   help="labelled footage with anomalies (sidecars) to choose --features auto on")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime threads (default 2)")
    p.set_defaults(func=run)
