"""Symmetric cross-modal InfoNCE with temporal positives (the usual baseline; CLIP's loss)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def infonce_loss(z_audio: torch.Tensor, z_video: torch.Tensor, positives: torch.Tensor | None,
                 logit_scale: torch.Tensor) -> torch.Tensor:
    """Mean of audio->video and video->audio cross-entropy; the partner of row i is column i.

    ``positives`` is accepted for the common loss signature and must be None or contain the identity:
    this loss uses the temporal pair only (``multipos`` is the loss that uses several positives).
    """
    logits = logit_scale * (z_audio @ z_video.t())  # [B, B], rows: audio anchors
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
