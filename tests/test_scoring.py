"""Replay output scored against labels: the definitions the README's figures rest on."""

from __future__ import annotations

from edgeav.labels import LabelledEvent, Labels
from edgeav.scoring import combine, score_replay


def test_segment_accuracy_recall_and_false_alarms() -> None:
    labels = Labels("x.mp4", 10.0, (LabelledEvent("car", 2.0, 5.0),
                                    LabelledEvent("scream", 7.0, 8.0, visible=False, anomaly=True)))
    truth = ["background", "background", "car", "car", "car", "background", "background", "scream", "background",
             "background"]
    predicted = list(truth)
    predicted[3] = "dog"  # one wrong segment of ten
    windows = [{"t_start": k * 0.5, "label": predicted[int(k * 0.5)] if k % 2 == 0 else "ignored"}
               for k in range(19)]
    alerts = [{"t_start": 7.5, "t_end": 8.5}, {"t_start": 0.0, "t_end": 1.0}]
    s = score_replay(labels, windows, alerts)
    assert s["segments"] == 10 and s["segment_accuracy"] == 0.9
    assert s["anomalies"] == 1 and s["anomalies_caught"] == 1 and s["anomaly_recall"] == 1.0
    assert s["false_alarms"] == 1
    assert s["false_alarms_per_hour"] == round(1 / (10 / 3600), 3)
    both = combine([s, score_replay(labels, windows, [])])
    assert both["anomalies"] == 2 and both["anomaly_recall"] == 0.5 and both["segment_accuracy"] == 0.9
