"""Symmetric cross-modal multi-positive InfoNCE (SupCon form), the L^EPG of design.md section 3.

Why a multi-positive loss: with embedding-based pair generation an anchor has its
temporal partner *and* the windows EPG mined for it. Treating the mined ones as
negatives (plain InfoNCE) pushes recurring events apart; counting them as
positives lets every window of "a car passing" pull together.

The SupCon form: for each anchor, the loss is minus the *mean over its positives*
of the log-softmax of ``similarity * logit_scale`` over all candidates of the
other modality in the batch. It is computed in both directions (video anchors
against audio candidates and audio anchors against video candidates) and the two
are averaged. With identity positives it is exactly the usual symmetric
(CLIP-style) InfoNCE, which ``tests/test_losses.py`` checks.

Interface shared by every loss in ``train.losses`` (agreed with the training loop)::

    loss(z_audio [B, D], z_video [B, D], positives [B, B] bool | None, logit_scale) -> scalar

``positives[i, j]`` is True when audio ``j`` is a positive of video ``i``; the
audio-to-video direction reads the same matrix by columns (video ``i`` is then a
positive of audio ``j``). ``None`` means the temporal identity. Embeddings arrive
L2-normalised, so ``z_video @ z_audio.T`` is the cosine similarity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def cross_modal_logits(z_audio: Tensor, z_video: Tensor, logit_scale: Tensor | float) -> Tensor:
    """``[B, B]`` logits, row ``i`` = video ``i``, column ``j`` = audio ``j``: cosine * scale."""
    if z_audio.ndim != 2 or z_video.ndim != 2 or z_audio.shape != z_video.shape:
        raise ValueError(f"z_audio {tuple(z_audio.shape)} and z_video {tuple(z_video.shape)} must both be [B, D]")
    return (z_video @ z_audio.T) * logit_scale


def positives_mask(positives: Tensor | None, batch: int, device: torch.device) -> Tensor:
    """The boolean ``[B, B]`` positives matrix; ``None`` becomes the identity (temporal positives)."""
    if positives is None:
        return torch.eye(batch, dtype=torch.bool, device=device)
    if positives.shape != (batch, batch):
        raise ValueError(f"positives has shape {tuple(positives.shape)}, expected ({batch}, {batch})")
    if positives.dtype != torch.bool:
        raise ValueError(f"positives must be a bool tensor, got {positives.dtype}")
    return positives.to(device)


def multipos_loss(z_audio: Tensor, z_video: Tensor, positives: Tensor | None = None,
                     logit_scale: Tensor | float = 1.0) -> Tensor:
    """Symmetric multi-positive InfoNCE; see the module docstring for the definition.

    Every anchor must have at least one positive (a row or column of ``positives``
    that is all False has no defined loss): that is a caller bug, so it raises
    rather than silently dropping the anchor.
    """
    logits = cross_modal_logits(z_audio, z_video, logit_scale)
    pos = positives_mask(positives, logits.shape[0], logits.device)
    n_v2a = pos.sum(dim=1)
    n_a2v = pos.sum(dim=0)
    if bool((n_v2a == 0).any()) or bool((n_a2v == 0).any()):
        raise ValueError("every video row and audio column of positives needs at least one True "
                         "(include the temporal identity)")
    zero = logits.new_zeros(())
    # Video anchor i: softmax over the audio candidates of row i. torch.where (not a
    # product with the mask) so a -inf log-probability off the mask cannot turn into NaN.
    logp_v2a = F.log_softmax(logits, dim=1)
    loss_v2a = -torch.where(pos, logp_v2a, zero).sum(dim=1) / n_v2a
    # Audio anchor j: softmax over the video candidates of column j.
    logp_a2v = F.log_softmax(logits, dim=0)
    loss_a2v = -torch.where(pos, logp_a2v, zero).sum(dim=0) / n_a2v
    return 0.5 * (loss_v2a.mean() + loss_a2v.mean())


__all__ = ["cross_modal_logits", "multipos_loss", "positives_mask"]
