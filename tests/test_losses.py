"""The multi-positive and false-negative-elimination losses against cases worked out by hand.

The hand cases use B = 3, D = 2 unit vectors whose dot products are exact
decimals, written out below; the expected losses are then plain ``math`` on those
numbers, independent of the code under test.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")  # the train extra; CI installs it

import torch.nn.functional as F  # noqa: E402

from train.losses.fne import fne_loss  # noqa: E402
from train.losses.infonce import infonce_loss  # noqa: E402
from train.losses.multipos import multipos_loss  # noqa: E402

# video:  v0 = (1, 0),     v1 = (0, 1), v2 = (0.6, 0.8)
# audio:  a0 = (0.8, 0.6), a1 = (0, 1), a2 = (1, 0)
Z_VIDEO = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=torch.float64)
Z_AUDIO = torch.tensor([[0.8, 0.6], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
# S[i][j] = v_i . a_j, by hand
S = [
    [0.8, 0.0, 1.0],
    [0.6, 1.0, 0.0],
    [0.96, 0.8, 0.6],   # 0.6*0.8 + 0.8*0.6, 0.8, 0.6
]
SCALE = 2.0


def log_softmax_at(values: list[float], at: int) -> float:
    return values[at] - math.log(sum(math.exp(v) for v in values))


def row(i: int, skip: tuple[int, ...] = ()) -> list[float]:
    return [SCALE * S[i][j] if j not in skip else -math.inf for j in range(3)]


def col(j: int, skip: tuple[int, ...] = ()) -> list[float]:
    return [SCALE * S[i][j] if i not in skip else -math.inf for i in range(3)]


def test_similarity_table_is_what_the_hand_case_assumes() -> None:
    assert torch.allclose(Z_VIDEO @ Z_AUDIO.T, torch.tensor(S, dtype=torch.float64))


def test_identity_positives_hand_case() -> None:
    # Plain symmetric InfoNCE: each video row against its own audio, each audio column against its own video.
    v2a = [-log_softmax_at(row(i), i) for i in range(3)]
    a2v = [-log_softmax_at(col(j), j) for j in range(3)]
    expected = 0.5 * (sum(v2a) / 3 + sum(a2v) / 3)
    got = multipos_loss(Z_AUDIO, Z_VIDEO, None, SCALE)
    assert got.item() == pytest.approx(expected, abs=1e-12)
    eye = torch.eye(3, dtype=torch.bool)
    assert multipos_loss(Z_AUDIO, Z_VIDEO, eye, SCALE).item() == pytest.approx(expected, abs=1e-12)


def test_multipos_hand_case() -> None:
    # Mined: audio 2 is a positive of video 0, audio 0 a positive of video 2 (plus the diagonal).
    pos = torch.eye(3, dtype=torch.bool)
    pos[0, 2] = True
    pos[2, 0] = True
    # video anchors: row 0 has positives {0, 2}, row 1 {1}, row 2 {2, 0}
    v2a = [
        -(log_softmax_at(row(0), 0) + log_softmax_at(row(0), 2)) / 2,
        -log_softmax_at(row(1), 1),
        -(log_softmax_at(row(2), 2) + log_softmax_at(row(2), 0)) / 2,
    ]
    # audio anchors: column 0 has positive videos {0, 2}, column 1 {1}, column 2 {2, 0}
    a2v = [
        -(log_softmax_at(col(0), 0) + log_softmax_at(col(0), 2)) / 2,
        -log_softmax_at(col(1), 1),
        -(log_softmax_at(col(2), 2) + log_softmax_at(col(2), 0)) / 2,
    ]
    expected = 0.5 * (sum(v2a) / 3 + sum(a2v) / 3)
    got = multipos_loss(Z_AUDIO, Z_VIDEO, pos, SCALE)
    assert got.item() == pytest.approx(expected, abs=1e-12)
    # A one-directional mined pair: only row 0 / column 2 gain a positive.
    pos1 = torch.eye(3, dtype=torch.bool)
    pos1[0, 2] = True
    v2a1 = [v2a[0], -log_softmax_at(row(1), 1), -log_softmax_at(row(2), 2)]
    a2v1 = [-log_softmax_at(col(0), 0), -log_softmax_at(col(1), 1), a2v[2]]
    expected1 = 0.5 * (sum(v2a1) / 3 + sum(a2v1) / 3)
    assert multipos_loss(Z_AUDIO, Z_VIDEO, pos1, SCALE).item() == pytest.approx(expected1, abs=1e-12)


def test_fne_hand_case() -> None:
    # Suspect: audio 2 for video 0. Row 0 drops audio 2, column 2 drops video 0; the rest is InfoNCE.
    pos = torch.eye(3, dtype=torch.bool)
    pos[0, 2] = True
    v2a = [-log_softmax_at(row(0, skip=(2,)), 0), -log_softmax_at(row(1), 1), -log_softmax_at(row(2), 2)]
    a2v = [-log_softmax_at(col(0), 0), -log_softmax_at(col(1), 1), -log_softmax_at(col(2, skip=(0,)), 2)]
    expected = 0.5 * (sum(v2a) / 3 + sum(a2v) / 3)
    assert fne_loss(Z_AUDIO, Z_VIDEO, pos, SCALE).item() == pytest.approx(expected, abs=1e-12)


def clip_infonce(z_audio: torch.Tensor, z_video: torch.Tensor, scale: float) -> torch.Tensor:
    """The usual symmetric InfoNCE (CLIP form), written with cross-entropy."""
    logits = scale * z_video @ z_audio.T
    target = torch.arange(len(logits))
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def unit(b: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, d, generator=g), dim=1)


@pytest.mark.parametrize("scale", [1.0, 14.3, torch.tensor(30.0)])
def test_identity_multipos_and_empty_fne_equal_infonce(scale: float | torch.Tensor) -> None:
    za, zv = unit(32, 16, 1), unit(32, 16, 2)
    ref = clip_infonce(za, zv, float(scale))
    eye = torch.eye(32, dtype=torch.bool)
    for loss in (multipos_loss, fne_loss):
        assert torch.allclose(loss(za, zv, None, scale), ref, atol=1e-6, rtol=1e-6)
        assert torch.allclose(loss(za, zv, eye, scale), ref, atol=1e-6, rtol=1e-6)
    # ... and equal the project's temporal baseline, so the ablation compares like with like.
    assert torch.allclose(infonce_loss(za, zv, None, torch.as_tensor(scale)), ref, atol=1e-6, rtol=1e-6)


def test_mined_positives_change_the_losses_in_the_expected_direction() -> None:
    # Audio 1 is an exact copy of audio 0: for video 0 the copy is a false negative.
    za, zv = unit(8, 4, 3), unit(8, 4, 4)
    za[1] = za[0]
    zv[0] = za[0]
    pos = torch.eye(8, dtype=torch.bool)
    pos[0, 1] = True
    scale = 10.0
    base = clip_infonce(za, zv, scale)
    # Removing the strongest negative of row 0 can only lower the loss.
    assert fne_loss(za, zv, pos, scale) < base
    # Gradients flow through every input of the multi-positive loss.
    za_g, zv_g = za.clone().requires_grad_(), zv.clone().requires_grad_()
    multipos_loss(za_g, zv_g, pos, torch.tensor(scale)).backward()
    assert za_g.grad is not None and zv_g.grad is not None
    assert torch.isfinite(za_g.grad).all() and torch.isfinite(zv_g.grad).all()


def test_bad_inputs_raise_clear_errors() -> None:
    za, zv = unit(4, 3, 5), unit(4, 3, 6)
    with pytest.raises(ValueError, match="at least one True"):
        multipos_loss(za, zv, torch.zeros(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"shape \(3, 3\)"):
        multipos_loss(za, zv, torch.eye(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        fne_loss(za, zv, torch.eye(4))
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        fne_loss(za, unit(5, 3, 7))
