"""Downstream metrics of frozen encoders on labelled footage (``edgeav evaluate``, issue #5).

Three tasks, one frozen encoder pair (design.md section 3, step 5):

1. event localisation: the bundle's own event-head fit (:func:`edgeav.heads.fit_event_head`, numpy
   logistic regression on the joint ``[audio | video]`` embedding) on the PROBE footage's windows,
   scored on the TEST footage's 1 s segments (AVE convention, as :mod:`edgeav.scoring`: segment
   ``[k, k+1)`` is the window starting at ``k``, truth ``Labels.segment_label``). Segments of an
   anomaly or of a kind the probe never saw cannot be right and are left out (counted).
2. anomaly detection: mean distance to the ``k`` nearest NORMAL windows (:mod:`edgeav.calibrate`'s
   kNN over its k-center coreset: the product's scorer), AUROC / average precision of anomalous vs
   normal test windows, and false alarms per hour at the threshold that catches 90% of anomalous
   windows; for every feature choice the models export (:data:`ANOMALY_FEATURE_SETS`: embeddings,
   pre-projection features, front-end summaries, audio patches; per modality and max-combined). The lab saw training
   hurt kNN anomaly detection, so all are reported and the caller compares them with the untrained floor.
3. search: each labelled (non-anomalous) event of the test footage is a query (the mean joint
   embedding of its windows); the candidates are the test windows that do not overlap it; a
   candidate is relevant when its label is the query's kind. P@10 and mAP@10.

Features come from the ONNX bundle (what the product runs); a checkpoint is exported to a
temporary bundle first. This module imports torch only for checkpoints.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeav.errors import UserError
from edgeav.labels import BACKGROUND, Labels, load_labels, sidecar_path
from edgeav.preprocess import WindowSpec

SEARCH_K = 10
ANOMALY_K = 3
ANOMALY_MEMORY = 2000
CATCH_SHARE = 0.9  # false alarms are counted at the threshold that catches this share of anomalous windows


# ---------------------------------------------------------------------------------------------- footage


@dataclass
class LabelledWindows:
    """Decoded windows of labelled footage, kept raw so any encoder can embed them (decode once, embed many)."""

    files: list[Path]
    file_index: np.ndarray  # [N]
    t_starts: np.ndarray  # [N] seconds from the file's start
    audio: np.ndarray  # [N, S] float32
    frames: np.ndarray  # [N, F, H, W, 3] uint8
    labels: list[str]  # [N] Labels.segment_label of the window's span
    anomalous: np.ndarray  # [N] bool
    sidecars: list[Labels]
    hop_s: float
    window_s: float

    def __len__(self) -> int:
        return len(self.t_starts)

    @property
    def hours(self) -> float:
        return sum(s.duration for s in self.sidecars) / 3600.0


def load_windows(items: Sequence[str | Path], spec: WindowSpec, role: str) -> LabelledWindows:
    """Decode FOOTAGE arguments (files or directories) into windows with their sidecar labels.

    Every file needs its ``edgeav.labels/1`` sidecar; all sidecars are checked before any decoding.
    """
    from edgeav import media

    files = media.find_footage([str(i) for i in items])
    if not files:
        raise UserError(f"--{role}: no footage files in {', '.join(map(str, items))}")
    sidecars = []
    for f in files:
        sc = sidecar_path(f)
        if not sc.is_file():
            raise UserError(f"--{role}: {sc}: labels sidecar not found for footage {f}")
        sidecars.append(load_labels(sc))
    idx, ts, audio, frames, labels, anomalous = [], [], [], [], [], []
    for i, (f, lab) in enumerate(zip(files, sidecars, strict=True)):
        w = media.footage_windows(f, spec)
        idx.append(np.full(len(w), i, dtype=np.int64))
        ts.append(w.t_starts)
        audio.append(w.audio)
        frames.append(w.frames)
        for t in w.t_starts:
            labels.append(lab.segment_label(float(t), float(t) + spec.window_s))
            anomalous.append(lab.segment_is_anomaly(float(t), float(t) + spec.window_s))
    return LabelledWindows(files=files, file_index=np.concatenate(idx), t_starts=np.concatenate(ts),
                           audio=np.concatenate(audio), frames=np.concatenate(frames), labels=labels,
                           anomalous=np.array(anomalous, dtype=bool), sidecars=sidecars, hop_s=spec.hop_s,
                           window_s=spec.window_s)


# ---------------------------------------------------------------------------------------------- metrics


def _l2(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Mean of the precision at the rank of each positive (scores descending; ties in input order)."""
    pos = np.asarray(positive, dtype=bool)
    if not pos.any():
        return None
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    hits = pos[order]
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision_at[hits].mean())


def search_precision(emb: np.ndarray, labels: Sequence[str], queries: Sequence[tuple[str, np.ndarray, np.ndarray]],
                     k: int = SEARCH_K) -> dict[str, Any]:
    """P@k and mAP@k of event queries by cosine similarity.

    ``queries``: ``(kind, member windows, excluded windows)``: the query vector is the mean of the
    members' embeddings; excluded windows (the event's own span) are not candidates. A candidate is
    relevant when its label is ``kind``. AP@k divides by ``min(k, relevant candidates)`` so a query
    with fewer than k relevant windows can still score 1. Queries with no relevant candidate are
    skipped (counted): nothing could be found.
    """
    e = _l2(emb)
    lab = np.asarray(labels, dtype=object)
    p_at, ap_at, per_kind, skipped = [], [], {}, 0
    for kind, members, excluded in queries:
        cand = np.ones(len(e), dtype=bool)
        cand[np.asarray(excluded, dtype=np.int64)] = False
        relevant = cand & (lab == kind)
        if not relevant.any():
            skipped += 1
            continue
        q = _l2(e[np.asarray(members, dtype=np.int64)].mean(axis=0, keepdims=True))[0]
        ci = np.flatnonzero(cand)
        sims = e[ci] @ q
        top = ci[np.argsort(-sims, kind="mergesort")[:k]]
        hits = relevant[top]
        p_at.append(float(hits.sum()) / k)
        prec = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        ap_at.append(float((prec * hits).sum()) / min(k, int(relevant.sum())))
        per_kind.setdefault(kind, []).append(p_at[-1])
    return {
        f"p_at_{k}": round(float(np.mean(p_at)), 4) if p_at else None,
        f"map_at_{k}": round(float(np.mean(ap_at)), 4) if ap_at else None,
        "queries": len(p_at),
        "queries_without_relevant": skipped,
        f"p_at_{k}_per_kind": {c: round(float(np.mean(v)), 4) for c, v in sorted(per_kind.items())},
    }


def event_queries(w: LabelledWindows) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """One query per labelled non-anomalous event: members = its windows labelled with its kind,
    excluded = every window overlapping the event (a neighbour of itself would be found trivially)."""
    out = []
    lab = np.asarray(w.labels, dtype=object)
    for fi, sc in enumerate(w.sidecars):
        in_file = w.file_index == fi
        for ev in sc.events:
            if ev.anomaly:
                continue
            overlap = in_file & (w.t_starts < ev.end) & (w.t_starts + w.window_s > ev.start)
            members = np.flatnonzero(overlap & (lab == ev.label))
            if len(members):
                out.append((ev.label, members, np.flatnonzero(overlap)))
    return out


def localisation(x_probe: np.ndarray, y_probe: Sequence[str], x_test: np.ndarray, w_test: LabelledWindows,
                 ) -> dict[str, Any]:
    """Probe fitted on the probe windows; accuracy and per-class F1 on the test footage's 1 s segments."""
    from edgeav.heads import fit_event_head

    head, fit = fit_event_head(x_probe, list(y_probe))
    seg = np.isclose(w_test.t_starts, np.round(w_test.t_starts))  # windows starting on a whole second
    known = np.array([lab in head.class_names for lab in w_test.labels]) & ~w_test.anomalous
    use = seg & known
    y = np.asarray(w_test.labels, dtype=object)[use]
    if not len(y):
        raise UserError("--test: no 1 s segment of a kind the probe footage has; nothing to score")
    pred = np.asarray(head.predict(x_test[use]), dtype=object)
    f1 = {}
    for c in head.class_names:
        tp = float(((pred == c) & (y == c)).sum())
        denom = float((pred == c).sum() + (y == c).sum())
        if (y == c).any():
            f1[c] = round(2 * tp / denom, 4)
    events = [c for c in f1 if c != BACKGROUND]
    return {
        "segment_accuracy": round(float((pred == y).mean()), 4),
        "majority_accuracy": round(float((y == BACKGROUND).mean()), 4),
        "event_macro_f1": round(float(np.mean([f1[c] for c in events])), 4) if events else None,
        "per_class_f1": f1,
        "segments": int(use.sum()),
        "segments_left_out": int((seg & ~known).sum()),
        "probe_classes": head.class_names,
        "probe_l2": fit.get("l2"),
    }


def anomaly_metrics(s: np.ndarray, w_test: LabelledWindows) -> dict[str, Any]:
    """AUROC / average precision of anomaly scores ``s`` over the test windows, and false alarms per hour at
    the threshold that catches 90% of the anomalous windows."""
    from edgeav.calibrate import alarm_onsets, auroc

    au = auroc(s, w_test.anomalous)
    ap = average_precision(s, w_test.anomalous)
    out: dict[str, Any] = {"auroc": round(au, 4) if au is not None else None,
                           "average_precision": round(ap, 4) if ap is not None else None}
    if w_test.anomalous.any():
        thr = float(np.quantile(s[w_test.anomalous], 1.0 - CATCH_SHARE))
        alarms = 0
        for fi in range(len(w_test.files)):  # runs of normal windows above the threshold, per file
            sel = w_test.file_index == fi
            normal_s = np.where(w_test.anomalous[sel], -np.inf, s[sel])
            alarms += alarm_onsets(normal_s, thr)
        out["false_alarms_per_hour_at_90"] = round(alarms / w_test.hours, 2) if w_test.hours else None
    return out


def anomaly(normal: dict[str, np.ndarray], test: dict[str, np.ndarray], names: tuple[str, ...],
            w_test: LabelledWindows, k: int = ANOMALY_K, memory_size: int = ANOMALY_MEMORY) -> dict[str, Any]:
    """The product's scorer (:func:`edgeav.calibrate.calibrate` on ``names``) fitted on the normal windows'
    features, then :func:`anomaly_metrics` of its scores on the test windows."""
    from edgeav.calibrate import calibrate

    mem, _ = calibrate(normal, names, hop_s=0.5, false_alarms_per_hour=1.0, k=k, memory_size=memory_size)
    return anomaly_metrics(mem.score(test), w_test)


# ---------------------------------------------------------------------------------------------- features


# The feature choices the anomaly scorer is measured on: single features and the max-combined pairs
# (names as in edgeav.bundle.feature_name; "+" joins the parts of one memory).
ANOMALY_FEATURE_SETS = ("joint", "audio", "video", "audio+video", "audio_pre", "video_pre", "audio_pre+video_pre",
                        "audio_summary", "video_summary", "audio_summary+video_summary", "av_disagreement",
                        "joint+av_disagreement", "audio_summary+video_summary+av_disagreement", "audio_patches",
                        "audio_patches+audio_summary+video_summary")


def _features(bundle: Any, w: LabelledWindows) -> dict[str, np.ndarray]:
    return bundle.features(w.audio, w.frames)


def evaluate_features(bundle: Any, probe: LabelledWindows, test: LabelledWindows,
                      normal: LabelledWindows | None = None) -> dict[str, Any]:
    """All three tasks for a loaded bundle's encoders (every feature its models give)."""
    fp, ft = _features(bundle, probe), _features(bundle, test)
    fn_ = _features(bundle, normal) if normal is not None else fp
    normal_w = normal if normal is not None else probe
    keep = ~normal_w.anomalous
    result: dict[str, Any] = {
        "windows": {"probe": len(probe), "test": len(test), "normal": int(keep.sum()),
                    "test_anomalous": int(test.anomalous.sum())},
        "localisation": localisation(fp["joint"], probe.labels, ft["joint"], test),
        "anomaly": {name: anomaly({n: fn_[n][keep] for n in name.split("+")}, ft, tuple(name.split("+")), test)
                    for name in ANOMALY_FEATURE_SETS if all(n in fp for n in name.split("+"))},
        "search": search_precision(ft["joint"], test.labels, event_queries(test)),
    }
    return result


def is_bundle(path: str | Path) -> bool:
    from edgeav.bundle import MANIFEST_NAME

    return (Path(path) / MANIFEST_NAME).is_file()


def evaluate(model: str | Path, probe: Sequence[str | Path], test: Sequence[str | Path],
             normal: Sequence[str | Path] | None = None, threads: int = 2,
             cache: dict[str, LabelledWindows] | None = None) -> dict[str, Any]:
    """Evaluate a bundle, or a checkpoint / run directory (exported to a temporary bundle first).
    ``cache``: decoded footage kept between calls (the ablation's many runs)."""
    from edgeav.bundle import load_bundle

    def windows(items: Sequence[str | Path], role: str, spec: WindowSpec) -> LabelledWindows:
        key = role + ":" + "\0".join(map(str, items))
        if cache is not None and key in cache:
            return cache[key]
        w = load_windows(items, spec, role)
        if cache is not None:
            cache[key] = w
        return w

    def run_all(bundle_dir: Path) -> dict[str, Any]:
        b = load_bundle(bundle_dir, threads=threads, with_heads=False)
        spec = b.window_spec
        wp, wt = windows(probe, "probe", spec), windows(test, "test", spec)
        wn = windows(normal, "normal", spec) if normal else None
        if not wt.anomalous.any():
            raise UserError("--test: the sidecars mark no window anomalous; anomaly AUROC needs some")
        r = evaluate_features(b, wp, wt, wn)
        r["bundle_id"] = b.bundle_id
        return r

    src = Path(model)
    if is_bundle(src):
        out = run_all(src)
        out["model"] = {"bundle": str(src)}
        return out
    if not src.exists():
        raise UserError(f"{src}: no such bundle, run directory or checkpoint")
    from edgeav.cli import require_train_extra

    require_train_extra("evaluate")
    from export.onnx_export import export_encoders
    from train.models import load_checkpoint

    try:
        audio, video, params, summary = load_checkpoint(src)
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{src}: checkpoint does not fit this version's encoders ({first})") from None
    test_files = [str(p) for p in test]
    with tempfile.TemporaryDirectory(prefix="edgeav-evaluate-") as tmp:
        bdir = Path(tmp) / "bundle"
        export_encoders(audio, video, params, summary, bdir, parity_footage=test_files[:1], source=str(src))
        out = run_all(bdir)
    out["model"] = {"checkpoint": str(src), "epoch": summary.get("epoch"), "untrained": summary.get("untrained")}
    return out


def compare_with_floor(result: dict[str, Any], floor: dict[str, Any]) -> dict[str, Any]:
    """Mark each headline figure of ``result`` with the untrained floor's and whether it beats it (strictly)."""

    def mark(section: dict[str, Any], floor_section: dict[str, Any] | None, key: str) -> None:
        ours = section.get(key)
        theirs = (floor_section or {}).get(key)
        section[f"{key}_floor"] = theirs
        section[f"{key}_beats_floor"] = None if ours is None or theirs is None else bool(ours > theirs)

    mark(result["localisation"], floor["localisation"], "segment_accuracy")
    mark(result["search"], floor["search"], f"p_at_{SEARCH_K}")
    for name, a in result["anomaly"].items():
        mark(a, floor["anomaly"].get(name), "auroc")
    result["untrained_floor"] = {"model": floor.get("model"), "bundle_id": floor.get("bundle_id")}
    return result


# ---------------------------------------------------------------------------------------------- report


def markdown(result: dict[str, Any]) -> str:
    """A short markdown table of one evaluation (with the untrained floor's figure where it was measured)."""
    loc, se = result["localisation"], result["search"]

    def floor(section: dict[str, Any], key: str) -> str:
        if f"{key}_floor" not in section:
            return ""
        return f" (floor {section[f'{key}_floor']}{', beats it' if section[f'{key}_beats_floor'] else ''})"

    p = f"p_at_{SEARCH_K}"
    lines = ["| task | metric | value |", "|---|---|---|",
             f"| localisation | segment accuracy ({loc['segments']} segments; majority {loc['majority_accuracy']}) "
             f"| {loc['segment_accuracy']}{floor(loc, 'segment_accuracy')} |",
             f"| localisation | event macro-F1 | {loc['event_macro_f1']} |"]
    for name, a in result["anomaly"].items():
        lines.append(f"| anomaly ({name}) | AUROC / AP / false alarms per h at 90% caught | {a['auroc']}"
                     f"{floor(a, 'auroc')} / {a['average_precision']} / {a.get('false_alarms_per_hour_at_90')} |")
    lines.append(f"| search ({se['queries']} queries) | P@{SEARCH_K} / mAP@{SEARCH_K} | {se[p]}{floor(se, p)} / "
                 f"{se[f'map_at_{SEARCH_K}']} |")
    return "\n".join(lines)
