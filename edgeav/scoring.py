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
from typing import Any

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
    caught = sum(any(a["t_start"] < e.end + slack_s and a["t_end"] > e.start - slack_s for a in alerts)
                 for e in anomalies)
    false_alarms = sum(not any(a["t_start"] < e.end + slack_s and a["t_end"] > e.start - slack_s for e in anomalies)
                       for a in alerts)
    hours = labels.duration / 3600.0
    return {
        "segments": total,
        "segment_accuracy": round(correct / total, 4) if total else None,
        "anomalies": len(anomalies),
        "anomalies_caught": caught,
        "anomaly_recall": round(caught / len(anomalies), 4) if anomalies else None,
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
    return {
        "files": len(scores), "segments": seg, "segment_accuracy": round(acc / seg, 4) if seg else None,
        "anomalies": an, "anomalies_caught": caught, "anomaly_recall": round(caught / an, 4) if an else None,
        "alerts": sum(s["alerts"] for s in scores), "false_alarms": fa, "hours": round(hours, 4),
        "false_alarms_per_hour": round(fa / hours, 3) if hours else None,
    }
