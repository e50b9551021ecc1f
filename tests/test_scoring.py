"""Replay output scored against labels: the definitions the README's figures rest on."""

from __future__ import annotations

import numpy as np

from edgeav.decide import AnomalyParams
from edgeav.labels import LabelledEvent, Labels
from edgeav.scoring import alerts_at, combine, score_replay


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
    assert s["caught_by_kind"] == {"scream": [1, 1]} and both["caught_by_kind"] == {"scream": [1, 2]}


def test_alerts_at_another_threshold_go_through_the_runtime_decider() -> None:
    """One replay's window scores give the alerts of any other threshold: runs above it, one alert per run
    (a run must last the minimum duration), none within the cooldown after the last, missing scores skipped."""
    scores = [0.1, 2.0, 2.5, 0.2, 0.1, 3.0, None, 0.1] + [0.1] * 60 + [1.5, 1.6, 0.1]
    windows = [{"t_start": i * 0.5, "t_end": i * 0.5 + 1.0, "anomaly_score": s} for i, s in enumerate(scores)]
    high = alerts_at(windows, 1.8)
    assert [(a["t_start"], a["score"]) for a in high] == [(0.5, 2.0)]  # the run at 2.5 s: inside the cooldown
    low = alerts_at(windows, 1.0)
    assert [a["t_start"] for a in low] == [0.5, 34.0]  # 34 s: the cooldown (3 s after 2.0 s) is over
    later = alerts_at(windows, 1.0, AnomalyParams(cooldown_s=40.0))  # a longer one hides the run at 34 s
    assert [a["t_start"] for a in later] == [0.5]
    assert alerts_at(windows, 10.0) == []


def _replay(rng: np.random.Generator, minutes: float, anomaly_at: float | None = None) -> tuple[Labels, list[dict]]:
    """A replayed file's window records: independent normal scores every 0.5 s, and where ``anomaly_at`` is
    given a labelled anomaly there whose windows score far above anything normal."""
    n = int(minutes * 120)
    scores = rng.gamma(4.0, 0.1, n)
    events: tuple[LabelledEvent, ...] = ()
    if anomaly_at is not None:
        events = (LabelledEvent("scream", anomaly_at, anomaly_at + 2.0, visible=False, anomaly=True),)
        scores[int(anomaly_at * 2) - 1:int(anomaly_at * 2) + 4] = 50.0
    windows = [{"t_start": i * 0.5, "t_end": i * 0.5 + 1.0, "anomaly_score": float(s)} for i, s in enumerate(scores)]
    return Labels("f.mp4", n * 0.5 + 0.5, events), windows


def test_threshold_check_cross_validates_the_threshold_rule_on_the_replays_normal_windows() -> None:
    """On exchangeable files the rule, set on some files' normal windows (the anomaly and 5 s around it left out,
    so it cannot lift the threshold), gives about the asked-for rate on the others."""
    from edgeav.scoring import normal_scores, threshold_check

    rng = np.random.default_rng(11)
    replayed = [_replay(rng, 30.0, anomaly_at=600.0 if i % 2 else None) for i in range(8)]
    labels, recs = replayed[1]
    kept = normal_scores(labels, recs)
    assert len(kept) == len(recs) - 25 and max(kept) < 50.0  # 2 s of anomaly + 5 s each side, at 0.5 s hops
    check = threshold_check(replayed, (6.0, 60.0), 0.5, files_per_fold=2)
    for rate in (6.0, 60.0):
        assert rate / 2 <= check[f"{rate:g}"]["false_alarms_per_hour"] <= rate * 2, check
