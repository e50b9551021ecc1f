"""Event head and anomaly calibration: numpy parts on controlled data, then the commands on synth footage."""

from __future__ import annotations

import numpy as np
import pytest

from edgeav.calibrate import (
    AnomalyMemory,
    alarm_onsets,
    calibrate,
    greedy_k_center,
    knn_scores,
    threshold_for_rate,
)
from edgeav.heads import EventHead, fit_event_head


def _clusters(rng: np.random.Generator, n_per: list[int], d: int = 16, spread: float = 0.6):
    centres = rng.standard_normal((len(n_per), d)) * 2.0
    x = np.concatenate([c + spread * rng.standard_normal((n, d)) for c, n in zip(centres, n_per, strict=True)])
    y = np.concatenate([np.full(n, i) for i, n in enumerate(n_per)])
    return x.astype(np.float32), y


def test_event_head_learns_imbalanced_classes_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    names = ["background", "car", "dog"]
    x, y = _clusters(rng, [600, 80, 40])
    order = rng.permutation(len(y))
    x, y = x[order], y[order]
    head, metrics = fit_event_head(x, [names[i] for i in y])
    assert head.class_names == names
    assert metrics["heldout_segment_accuracy"] >= 0.95, metrics
    xt, yt = _clusters(np.random.default_rng(0), [300, 60, 60])  # same centres, fresh samples
    xt = xt + 0.0
    p = head.predict_proba(xt)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    # rare classes are found, not swallowed by background
    for c in (1, 2):
        assert (p.argmax(1)[yt == c] == c).mean() >= 0.9
    assert all(0.2 <= t <= 0.9 for t in head.thresholds)
    head.save(tmp_path / "h.npz")
    back = EventHead.load(tmp_path / "h.npz")
    np.testing.assert_array_equal(back.predict_proba(xt), p)


def test_event_head_needs_an_event():
    from edgeav.errors import UserError

    with pytest.raises(UserError, match="no event"):
        fit_event_head(np.zeros((50, 4), np.float32), ["background"] * 50)


def test_coreset_keeps_rare_normal_modes():
    rng = np.random.default_rng(1)
    x, y = _clusters(rng, [3000, 15], d=8, spread=0.3)
    keep = greedy_k_center(x, 100)
    assert len(keep) == 100 and len(set(keep.tolist())) == 100
    assert (y[keep] == 1).any(), "the rare mode must survive subsampling"
    # every point is close to the coreset: the covering radius beats a random subset of the same size
    radius = np.sqrt(((x[:, None] - x[keep][None]) ** 2).sum(-1).min(1)).max()
    rand = rng.choice(len(x), 100, replace=False)
    rand_radius = np.sqrt(((x[:, None] - x[rand][None]) ** 2).sum(-1).min(1)).max()
    assert radius < rand_radius


def test_knn_scores_exact():
    rng = np.random.default_rng(2)
    mem = rng.standard_normal((50, 6)).astype(np.float32)
    q = rng.standard_normal((7, 6)).astype(np.float32)
    d = np.sqrt(((q[:, None] - mem[None]) ** 2).sum(-1))
    want = np.sort(d, axis=1)[:, :3].mean(1)
    np.testing.assert_allclose(knn_scores(q, mem, 3, chunk=4), want, rtol=1e-4)


@pytest.mark.parametrize("n", [40_000, 600])
def test_threshold_meets_the_false_alarm_rate(n):
    """On fresh normal scores, the rate above the threshold is near the target (empirical and tail fit)."""
    rng = np.random.default_rng(3)
    hop, target = 0.5, 18.0  # per hour: p = 0.0025 of windows
    scores = rng.gamma(4.0, 0.1, n)
    thr, method = threshold_for_rate(scores, target, hop)
    assert ("quantile" in method) == (n == 40_000)
    fresh = rng.gamma(4.0, 0.1, 2_000_000)
    rate = (fresh > thr).mean() * 3600 / hop
    assert target / 3 <= rate <= target * 3, (rate, method)


def test_calibrated_memory_flags_the_unseen():
    rng = np.random.default_rng(4)
    normal, _ = _clusters(rng, [1500, 300], d=12, spread=0.4)
    normal = normal[rng.permutation(len(normal))]
    mem, metrics = calibrate(normal, hop_s=0.5, false_alarms_per_hour=5.0, k=3, memory_size=300)
    assert len(mem.memory) == 300 and metrics["memory_size"] == 300
    fresh, _ = _clusters(np.random.default_rng(4), [1500, 300], d=12, spread=0.4)
    odd = (rng.standard_normal((100, 12)) * 2.0 + 6.0).astype(np.float32)
    assert (mem.score(odd) >= mem.threshold).mean() >= 0.95
    false_alarm_rate = (mem.score(fresh) >= mem.threshold).mean() * 3600 / 0.5
    assert false_alarm_rate <= 5.0 * 3
    assert alarm_onsets(np.array([0, 2, 2, 0, 3, 0, 0, 4]), 1) == 3
    # the half-feature variants select the right half of the joint embedding
    joint = np.concatenate([normal, normal * 0 + 1], axis=1)
    a = AnomalyMemory(normal[:50], k=1, threshold=1.0, features="audio")
    assert np.allclose(a.score(joint[:50]), 0, atol=1e-3)
