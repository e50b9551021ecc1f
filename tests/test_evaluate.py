"""`edgeav evaluate`: the three downstream tasks on real footage, and its metrics on hand-computed cases."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeav.calibrate import knn_scores
from edgeav.labels import LabelledEvent, Labels
from tests.conftest import assert_one_line_error, run_edgeav
from train.evaluate import (
    ANOMALY_FEATURE_SETS,
    LabelledWindows,
    anomaly_metrics,
    average_precision,
    event_queries,
    markdown,
    search_precision,
)

FEATURES = set(ANOMALY_FEATURE_SETS)  # a bundle exported by this version gives every feature


def test_evaluate_checkpoint_gives_every_metric_in_range(tiny_bundle: Path, footage_dir: Path):
    """A run directory: exported on the fly, every anomaly feature choice measured."""
    run = tiny_bundle.parent / "run"
    proc = run_edgeav("evaluate", run, "--probe", footage_dir / "normal.mp4", "--test",
                      footage_dir / "anomalies.mp4", "--json", timeout=300)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    # 60 s and 40 s of footage, 1 s windows every 0.5 s
    assert r["windows"] == {"probe": 119, "test": 79, "normal": 119, "test_anomalous": r["windows"]["test_anomalous"]}
    assert 0 < r["windows"]["test_anomalous"] < 79
    loc = r["localisation"]
    assert 0.0 <= loc["segment_accuracy"] <= 1.0 and 0.0 <= loc["majority_accuracy"] <= 1.0
    # 40 whole seconds minus the anomalous ones and kinds the probe footage lacks
    assert loc["segments"] + loc["segments_left_out"] <= 40 and loc["segments_left_out"] >= 2
    assert loc["probe_classes"][0] == "background"
    assert set(r["anomaly"]) == FEATURES
    for name, a in r["anomaly"].items():
        assert 0.0 <= a["auroc"] <= 1.0, name
        assert 0.0 < a["average_precision"] <= 1.0, name
        assert a["false_alarms_per_hour_at_90"] >= 0, name
    assert r["search"]["queries"] + r["search"]["queries_without_relevant"] == 2  # car, dog (anomalies are not queries)
    assert r["model"]["checkpoint"] == str(run)


def test_evaluate_bundle_against_a_floor(tiny_bundle: Path, footage_dir: Path):
    """A bundle against itself as the floor: every figure equals the floor's and none beats it (strictly)."""
    args = ("evaluate", tiny_bundle, "--probe", footage_dir / "normal.mp4", "--test", footage_dir / "anomalies.mp4",
            "--floor", tiny_bundle)
    proc = run_edgeav(*args, "--json", timeout=300)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert set(r["anomaly"]) == FEATURES
    for section, key in [(r["localisation"], "segment_accuracy"), (r["search"], "p_at_10"),
                         *((a, "auroc") for a in r["anomaly"].values())]:
        assert section[f"{key}_floor"] == section[key]
        # nothing measured (no event kind recurs in this short test footage: no search query) -> no verdict
        assert section[f"{key}_beats_floor"] is (False if section[key] is not None else None)
    assert r["localisation"]["segment_accuracy_beats_floor"] is False
    acc = r["localisation"]["segment_accuracy"]
    assert f"| {acc} (floor {acc}) |" in markdown(r)  # the table the command prints without --json


def test_evaluate_refuses_footage_without_labels(tiny_bundle: Path, footage_dir: Path, tmp_path: Path):
    bare = tmp_path / "bare.mp4"
    shutil.copy(footage_dir / "normal.mp4", bare)
    proc = run_edgeav("evaluate", tiny_bundle, "--probe", footage_dir / "normal.mp4", "--test", bare, timeout=60)
    assert_one_line_error(proc, "--test", "bare.labels.json")
    proc = run_edgeav("evaluate", tmp_path / "nothing", "--probe", bare, "--test", bare, timeout=60)
    assert_one_line_error(proc, "nothing")


def _windows(labels: list[str], anomalous: list[bool], sidecar: Labels | None = None) -> LabelledWindows:
    n = len(labels)
    return LabelledWindows(files=[Path("x.mp4")], file_index=np.zeros(n, dtype=np.int64),
                           t_starts=np.arange(n) * 0.5, audio=np.zeros((n, 1), np.float32),
                           frames=np.zeros((n, 1, 1, 1, 3), np.uint8), labels=labels,
                           anomalous=np.array(anomalous), sidecars=[sidecar or Labels("x.mp4", n * 0.5 + 0.5)],
                           hop_s=0.5, window_s=1.0)


def _at(deg: float) -> list[float]:
    return [np.cos(np.radians(deg)), np.sin(np.radians(deg))]


def test_search_precision_on_a_constructed_case():
    # query: windows 0-1 (kind car, at 0 deg); excluded: 0-2. Candidates by angle from the query:
    # car at 1, 3, 5, 30 deg; dog at 2, 4, 6, 7, 8, 9, 10 deg; background at 11 deg. Top 10 by cosine:
    # 1c 2d 3c 4d 5c 6d 7d 8d 9d 10d -> 3 cars: P@10 = 0.3; AP@10 = (1/1 + 2/3 + 3/5) / min(10, 4 cars).
    angles = [0, 0, 0, 1, 3, 5, 30, 2, 4, 6, 7, 8, 9, 10, 11]
    labels = ["car"] * 7 + ["dog"] * 7 + ["background"]
    emb = np.array([_at(a) for a in angles], dtype=np.float32)
    r = search_precision(emb, labels, [("car", np.array([0, 1]), np.array([0, 1, 2]))], k=10)
    assert r["p_at_10"] == 0.3
    assert r["map_at_10"] == pytest.approx((1 + 2 / 3 + 3 / 5) / 4, abs=1e-4)
    # a dog query (window 12 at 9 deg, excluding itself): nearest 10, 8, 7, 11(bg), 6, 5(car), 4, 3(car), 2, 1(car)
    r = search_precision(emb, labels, [("dog", np.array([12]), np.array([12]))], k=10)
    assert r["p_at_10"] == 0.6
    # nothing relevant left: skipped, not scored as zero
    r = search_precision(emb, labels, [("background", np.array([14]), np.array([14]))], k=10)
    assert r["queries"] == 0 and r["queries_without_relevant"] == 1 and r["p_at_10"] is None


def test_event_queries_exclude_the_event_and_skip_anomalies():
    sc = Labels("x.mp4", 10.0, (LabelledEvent("car", 2.0, 4.0), LabelledEvent("explosion", 6.0, 7.0, anomaly=True)))
    w = _windows([sc.segment_label(t, t + 1) for t in np.arange(19) * 0.5],
                 [sc.segment_is_anomaly(t, t + 1) for t in np.arange(19) * 0.5], sc)
    (kind, members, excluded), = event_queries(w)
    assert kind == "car"
    assert members.tolist() == [4, 5, 6]  # windows [2, 3), [2.5, 3.5), [3, 4)
    assert excluded.tolist() == [3, 4, 5, 6, 7]  # every window overlapping [2, 4)


def test_anomaly_auroc_and_average_precision_on_a_constructed_case():
    # normal memory: the origin (k=1: the score is the distance to it). Test scores 1..6, anomalous at
    # scores 2, 5, 6: of the 3 x 3 (anomalous, normal) pairs, the anomaly ranks higher in 7 (not 2 < 3, 2 < 4).
    normal = np.zeros((4, 2), np.float32)
    scores = [1, 2, 3, 4, 5, 6]
    test = np.array([[s, 0] for s in scores], np.float32)
    anomalous = [False, True, False, False, True, True]
    w = _windows(["background"] * 6, anomalous)
    r = anomaly_metrics(knn_scores(test, normal, 1), w)
    assert r["auroc"] == pytest.approx(7 / 9, abs=1e-4)
    # ranked 6, 5, 4, 3, 2, 1: positives at ranks 1, 2, 5 -> (1 + 1 + 3/5) / 3
    assert r["average_precision"] == pytest.approx((1 + 1 + 0.6) / 3, abs=1e-4)
    assert average_precision(np.array(scores), np.array(anomalous)) == pytest.approx(2.6 / 3)
    # the threshold catching 90% of anomalous windows lies between 2 and 5: normal windows 3 and 4 are above
    # it, one run of consecutive windows -> one false alarm in (6 * 0.5 + 0.5) s
    assert r["false_alarms_per_hour_at_90"] == pytest.approx(1 / (3.5 / 3600), abs=0.01)
