"""False-negative elimination (FNE): the ablation that only *removes* suspected false negatives.

Where the multi-positive loss (``train.losses.multipos``) pulls mined partners
together, FNE keeps the temporal partner as the only positive and merely drops
the suspected false negatives (``positives`` minus its diagonal) from the
softmax denominator, so they are neither pulled nor pushed. Comparing the two
separates "stop pushing recurring events apart" from "pull them together".

Symmetric like the other losses: video anchor ``i`` over the audio candidates of
row ``i`` (suspects ``positives[i, j]``, ``j != i``, removed) and audio anchor ``j``
over the video candidates of column ``j`` (suspects ``positives[i, j]``, ``i != j``,
removed), averaged. With no suspects it is exactly the symmetric InfoNCE. Same
interface as every loss in ``train.losses`` (see ``multipos``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from train.losses.multipos import cross_modal_logits, positives_mask


def fne_loss(z_audio: Tensor, z_video: Tensor, positives: Tensor | None = None,
                logit_scale: Tensor | float = 1.0) -> Tensor:
    """Symmetric InfoNCE with the temporal positive only and suspected false negatives masked out."""
    logits = cross_modal_logits(z_audio, z_video, logit_scale)
    batch = logits.shape[0]
    eye = torch.eye(batch, dtype=torch.bool, device=logits.device)
    suspects = positives_mask(positives, batch, logits.device) & ~eye
    # -inf leaves the entry out of the log-sum-exp; the diagonal is never masked, so
    # every row and column keeps a finite target and the loss stays finite.
    masked = logits.masked_fill(suspects, float("-inf"))
    target = torch.arange(batch, device=logits.device)
    return 0.5 * (F.cross_entropy(masked, target) + F.cross_entropy(masked.T, target))


__all__ = ["fne_loss"]
