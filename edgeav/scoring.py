"""Score replay output against a footage's labels: segment accuracy, anomalies caught, false alarms.

Used by the default-bundle build, the benchmarks and the tests, so every figure in the README
comes from one definition:
- segment accuracy (the AVE convention): each whole second ``[k, k+1)`` of footage takes the label
  of the window starting at ``k`` and is compared with :meth:`Labels.segment_label`;
- an anomaly is caught when an alert overlaps its labelled interval widened by ``slack_s``;
- a false alarm is an alert that overlaps no widened anomaly interval.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import numpy as np

from edgeav.decide import AnomalyDecider, AnomalyParams
from edgeav.labels import Labels


def score_replay(labels: Labels, windows: Iterable[dict[str, Any]], alerts: Iterable[dict[str, Any]],
                 slack_s: float = 1.0) -> dict[str, Any]:
    by_start = {round(w["t_start"], 3): w for w in windows}
    correct = total = 0
    for k in range(int(labels.duration)):
        w = by_start.get(float(k))
        if w is None or w.get("label") is None:
            continue
        total += 1
        correct += w["label"] == labels.segment_label(float(k), float(k + 1))
    anomalies = [e for e in labels.events if e.anomaly]
    alerts = list(alerts)
    hit = [any(a["t_start"] < e.end + slack_s and a["t_end"] > e.start - slack_s for a in alerts) for e in anomalies]
    caught = sum(hit)
    by_kind: dict[str, list[int]] = {}
    for e, h in zip(anomalies, hit, strict=True):
        k = by_kind.setdefault(e.label, [0, 0])
        k[0] += h
        k[1] += 1
    false_alarms = sum(not any(a["t_start"] < e.end + slack_s and a["t_end"] > e.start - slack_s for e in anomalies)
                       for a in alerts)
    hours = labels.duration / 3600.0
    return {
        "segments": total,
        "segment_accuracy": round(correct / total, 4) if total else None,
        "anomalies": len(anomalies),
        "anomalies_caught": caught,
        "anomaly_recall": round(caught / len(anomalies), 4) if anomalies else None,
        "caught_by_kind": by_kind,  # label -> [caught, anomalies]
        "alerts": len(alerts),
        "false_alarms": false_alarms,
        "hours": round(hours, 4),
        "false_alarms_per_hour": round(false_alarms / hours, 3) if hours else None,
    }


def combine(scores: list[dict[str, Any]]) -> dict[str, Any]:
    """Pool per-file scores into one (sums, then ratios)."""
    seg = sum(s["segments"] for s in scores)
    acc = sum((s["segment_accuracy"] or 0) * s["segments"] for s in scores)
    an = sum(s["anomalies"] for s in scores)
    caught = sum(s["anomalies_caught"] for s in scores)
    fa = sum(s["false_alarms"] for s in scores)
    hours = sum(s["hours"] for s in scores)
    kinds: dict[str, list[int]] = {}
    for s in scores:
        for label, (c, n) in s.get("caught_by_kind", {}).items():
            k = kinds.setdefault(label, [0, 0])
            k[0] += c
            k[1] += n
    return {
        "files": len(scores), "segments": seg, "segment_accuracy": round(acc / seg, 4) if seg else None,
        "anomalies": an, "anomalies_caught": caught, "anomaly_recall": round(caught / an, 4) if an else None,
        "caught_by_kind": dict(sorted(kinds.items())),
        "alerts": sum(s["alerts"] for s in scores), "false_alarms": fa, "hours": round(hours, 4),
        "false_alarms_per_hour": round(fa / hours, 3) if hours else None,
    }


def alerts_at(windows: Iterable[dict[str, Any]], threshold: float, params: AnomalyParams | None = None
              ) -> list[dict[str, Any]]:
    """The alerts replay would have raised at another ``threshold``: its window records' anomaly scores, in
    time order, through the same decider (minimum duration, cooldown). How one replay gives a whole rate
    curve: the memory's ``threshold_for(rate)`` per rate, then this."""
    p = params or AnomalyParams()
    decider = AnomalyDecider(replace(p, threshold=threshold))
    out = []
    for w in windows:
        score = w.get("anomaly_score")
        inc = decider.update(float(w["t_start"]), float(w["t_end"]), None if score is None else float(score))
        if inc is not None:
            out.append({"t_start": inc.t_start, "t_end": inc.t_end, "score": inc.score})
    return out


def normal_scores(labels: Labels, windows: list[dict[str, Any]], margin_s: float = 5.0) -> list[float]:
    """A replay's window scores, in time order, without the windows within ``margin_s`` of a labelled anomaly
    (nor those without a score): what the site's normal footage scores under the deployed memory."""
    anomalies = [e for e in labels.events if e.anomaly]
    return [float(w["anomaly_score"]) for w in windows if w.get("anomaly_score") is not None
            and not any(w["t_end"] > e.start - margin_s and w["t_start"] < e.end + margin_s for e in anomalies)]


def threshold_check(replayed: list[tuple[Labels, list[dict[str, Any]]]], rates: Iterable[float], hop_s: float,
                    files_per_fold: int) -> dict[str, dict[str, float]]:
    """The calibration's threshold rule (:func:`edgeav.calibrate.threshold_for_rate`), cross-validated on a
    replay's own normal window scores: set on ``files_per_fold`` files' normal scores, the false alarms counted
    on the other files through the decider, every fold in turn. Where this meets the rate and the deployment
    does not, the rule is sound and the calibration footage scored lower than the days replayed (a memory that
    had not heard what they hold); where this misses too, the rule is at fault."""
    from edgeav.calibrate import threshold_for_rate

    n = len(replayed)
    normal = [normal_scores(labels, recs) for labels, recs in replayed]
    folds = [range(i, min(i + files_per_fold, n)) for i in range(0, n, files_per_fold)]
    out = {}
    for rate in rates:
        fa = hours = 0.0
        for fold in folds:
            scores = np.concatenate([normal[i] for i in fold])
            if len(scores) == 0:
                continue
            thr, _ = threshold_for_rate(scores, rate, hop_s)
            held = [score_replay(labels, [], alerts_at(recs, thr)) for i, (labels, recs) in enumerate(replayed)
                    if i not in fold]
            fa += sum(s["false_alarms"] for s in held)
            hours += sum(s["hours"] for s in held)
        out[f"{rate:g}"] = {"false_alarms_per_hour": round(fa / hours, 3) if hours else float("nan")}
    return out
