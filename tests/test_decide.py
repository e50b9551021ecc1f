"""Events with hysteresis and anomaly alerts with duration and cooldown; records valid against their schemas."""

from __future__ import annotations

from dataclasses import replace

import jsonschema
import numpy as np

from edgeav.decide import AnomalyDecider, AnomalyParams, EventLocalizer, EventParams
from edgeav.records import RecordBuilder, dumps, load_schema

CLASSES = ["background", "car", "dog"]


def _run_events(series: list[tuple[float, float, float]], params: EventParams):
    loc = EventLocalizer(CLASSES, params)
    changes = []
    for k, (bg, car, dog) in enumerate(series):
        changes += loc.update(k * 0.5, k * 0.5 + 1.0, np.array([bg, car, dog]))
    return changes + loc.flush()


def test_hysteresis_gives_one_event_through_a_dip() -> None:
    params = EventParams(start_threshold=0.6, end_threshold=0.4, start_windows=2, end_windows=2, smooth_windows=1)
    car = [0.1, 0.1, 0.7, 0.8, 0.5, 0.9, 0.3, 0.2, 0.1, 0.1]  # a dip to 0.5 stays above the end threshold
    changes = _run_events([(1 - c, c, 0.0) for c in car], params)
    assert [(c.phase, c.label) for c in changes] == [("start", "car"), ("end", "car")]
    start, end = changes
    assert start.t_start == 1.0            # the first window of the run above the start threshold
    assert end.t_end == 3.5                # the end of the last window above the end threshold
    assert end.score == 0.9


def test_a_single_spike_needs_start_windows() -> None:
    params = EventParams(start_windows=2, end_windows=1, smooth_windows=1)
    spike = [0.0, 0.9, 0.0, 0.0]
    assert _run_events([(1 - c, c, 0.0) for c in spike], params) == []
    params1 = EventParams(start_windows=1, end_windows=1, smooth_windows=1)
    assert [c.phase for c in _run_events([(1 - c, c, 0.0) for c in spike], params1)] == ["start", "end"]


def test_overlapping_events_of_two_classes_and_updates() -> None:
    params = EventParams(start_windows=1, end_windows=1, smooth_windows=1, update_interval_s=2.0)
    series = [(0.0, 0.8, 0.7)] * 8 + [(1.0, 0.0, 0.0)]
    changes = _run_events(series, params)
    phases = [(c.phase, c.label) for c in changes]
    assert phases.count(("start", "car")) == 1 and phases.count(("start", "dog")) == 1
    assert ("update", "car") in phases
    assert phases[-2:] == [("end", "car"), ("end", "dog")]


def test_open_event_is_closed_at_end_of_stream() -> None:
    changes = _run_events([(0.1, 0.9, 0.0)] * 4, EventParams(smooth_windows=1))
    assert [c.phase for c in changes] == ["start", "end"] and changes[-1].t_end == 2.5


def _alerts(scores: list[float], params: AnomalyParams) -> list:
    dec = AnomalyDecider(params)
    out = []
    for k, s in enumerate(scores):
        inc = dec.update(k * 0.5, k * 0.5 + 1.0, s)
        if inc is not None:
            out.append(inc)
    return out


def test_one_incident_one_alert_and_cooldown() -> None:
    p = AnomalyParams(threshold=1.0, min_duration_s=1.5, cooldown_s=5.0)
    scores = [0.2, 1.2, 1.5, 1.1, 1.3, 0.2,   # incident 1: alert once, at the window where it lasted 1.5 s
              0.1, 1.4, 1.4, 1.4, 0.1,        # within the cooldown after incident 1: no alert
              *[0.1] * 10, 1.2, 1.2, 1.2]     # after the cooldown: a new alert
    alerts = _alerts(scores, p)
    assert len(alerts) == 2
    assert (alerts[0].t_start, alerts[0].t_end, alerts[0].score) == (0.5, 2.0, 1.5)
    assert alerts[1].t_start == 10.5


def test_a_worse_run_within_the_cooldown_gets_its_own_alert_and_a_no_worse_one_stays_quiet() -> None:
    # A glass break, then (within the cooldown) a run no worse than 1.5x it, then a crash well above both.
    scores = [0.2, 2.0, 2.0, 0.2,   # incident: alert at 0.5 s, peak 2.0
              2.5, 2.5, 0.2,        # within the cooldown, 2.5 <= 1.5 x 2.0: the same incident, its peak now 2.5
              4.0, 4.0, 0.2,        # within the cooldown, 4.0 > 1.5 x 2.5: a worse incident, its own alert
              5.0, 5.0, 0.2]        # within that one's cooldown, 5.0 <= 1.5 x 4.0: quiet
    p = AnomalyParams(threshold=1.0, min_duration_s=1.0, cooldown_s=5.0)
    alerts = _alerts(scores, p)
    assert [(a.t_start, a.score) for a in alerts] == [(0.5, 2.0), (3.5, 4.0)]
    assert len(_alerts(scores, replace(p, escalation=None))) == 1, "without escalation the cooldown silences all"
    assert len(_alerts(scores, replace(p, escalation=3.0))) == 1
    # After the cooldown has passed, a run is a new incident whatever its level.
    assert len(_alerts([2.0, 2.0, 0.2, *[0.2] * 12, 1.2, 1.2], p)) == 2


def test_short_blip_gives_no_alert_and_missing_scores_break_a_run() -> None:
    p = AnomalyParams(threshold=1.0, min_duration_s=2.0, cooldown_s=0.0)
    assert _alerts([0.0, 5.0, 5.0, 0.0], p) == []
    assert _alerts([5.0, 5.0, None, 5.0, 5.0], p) == []  # type: ignore[list-item]


def test_records_are_valid_and_ids_stable() -> None:
    p = EventParams(start_windows=1, end_windows=1, smooth_windows=1)
    changes = _run_events([(0.1, 0.9, 0.0)] * 3 + [(1.0, 0.0, 0.0)], p)
    b = RecordBuilder("gate", "bundle-abc", wall_origin=1_700_000_000.0, source="street.mp4")
    events = [b.event(c) for c in changes]
    for e in events:
        jsonschema.validate(e, load_schema("event"))
    assert events[0]["id"] == events[1]["id"], "start and end of one event share its id"
    assert events[0]["start"] == "2023-11-14T22:13:20.000Z"
    inc = _alerts([2.0, 2.0, 2.0], AnomalyParams(threshold=1.0))[0]
    alert = b.alert(inc, 1.0, clip={"path": "/clips/a.mp4", "sha256": "0" * 64})
    jsonschema.validate(alert, load_schema("alert"))
    window = b.window(0.0, 1.0, label="car", probs={"background": 0.1, "car": 0.9}, anomaly_score=0.42,
                      anomaly=False, missing=())
    jsonschema.validate(window, load_schema("window"))
    # No wall time known: the ISO fields are left out, the record stays valid.
    bare = RecordBuilder("gate", "bundle-abc", wall_origin=None).alert(inc, 1.0)
    jsonschema.validate(bare, load_schema("alert"))
    assert "start" not in bare
    assert dumps(alert) == dumps(b.alert(inc, 1.0, clip={"path": "/clips/a.mp4", "sha256": "0" * 64}))
