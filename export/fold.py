"""Export-time folding of the video encoder's input normalisation into its first convolution.

:class:`train.models.VideoEncoder` turns uint8 frames into float, scales them to 0..1, normalises each RGB
channel (``(x - mean) / std``), adds the motion channels (each frame minus the window's mean frame, times
``motion_gain``), lays the frames out as channels and convolves. Everything before the convolution is linear
in the uint8 pixels ``u``: the convolution's input is ``A (u - m)`` per pixel, where ``m = 255 * mean`` per
RGB channel and ``A`` is a fixed ``[channels, 3F]`` matrix (the normalised frame ``(u / 255 - mean) / std`` is
``(u - m) / (255 std)``; the motion channels do not change when every frame is shifted by the same ``m``). So

    conv(A (u - m)) = conv'(u - m),   conv' = the first convolution's weights multiplied through A,

exactly, zero padding included (``u - m`` is zero where the normalised input is zero), with half the input
channels when the motion channels are on. In onnxruntime the element-wise normalisation (Cast, Mul, Sub,
Div, ReduceMean, Sub, Mul, Concat, Transpose over every input value) cost about half the video model's time;
the folded model does one Transpose of the uint8 input, one Cast and one Sub.

The folded model computes the same function; only float rounding differs. The export checks the folded
ONNX model against the unfolded model on every output, within :data:`FOLD_TOL`, and exports the unfolded
model otherwise. Training never sees this module: it exists only for export.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Largest absolute difference a folded export may show against the unfolded model, on any output.
FOLD_TOL = 1e-5


def input_affine(encoder: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A [C_in, 3F], m [3F])``: the first convolution's input channels are ``A @ (u - m)``, where ``u`` is the
    window's uint8 pixel (channel ``f * 3 + c``, the layout of :meth:`VideoEncoder.normalise`)."""
    f = encoder.frames
    mean = encoder.mean.detach().double().reshape(3)
    std = encoder.std.detach().double().reshape(3)
    a = 1.0 / (255.0 * std)                     # per RGB channel: x = a * (u - 255 mean)
    eye_f = torch.eye(f, dtype=torch.float64)
    rows = [torch.kron(eye_f, torch.diag(a))]   # [3F, 3F]: frame f channel c -> a_c * (u_fc - m_c)
    if encoder.motion_gain > 0 and f > 1:
        # g * (x_fc - mean_f' x_f'c) = g * a_c * (u_fc - mean_f' u_f'c): any shift common to the frames cancels.
        centre = eye_f - torch.full((f, f), 1.0 / f, dtype=torch.float64)
        rows.append(encoder.motion_gain * torch.kron(centre, torch.diag(a)))
    return torch.cat(rows), (255.0 * mean).repeat(f)


def can_fold(encoder: Any) -> bool:
    """Whether ``encoder`` has the layout this module folds (a bias-free first convolution over the normalised
    frames and, when on, the motion channels)."""
    try:
        conv = encoder.cnn[0][0]
    except (AttributeError, IndexError, TypeError):
        return False
    if not isinstance(conv, nn.Conv2d) or conv.bias is not None or conv.groups != 1:
        return False
    if conv.padding_mode != "zeros":
        return False
    return conv.in_channels == input_affine(encoder)[0].shape[0]


class FoldedVideo(nn.Module):
    """``VideoEncoder.all_outputs`` with the input normalisation folded into the first convolution."""

    weight: torch.Tensor
    offset: torch.Tensor

    def __init__(self, encoder: Any) -> None:
        super().__init__()
        if not can_fold(encoder):
            raise ValueError("this video encoder's first layer cannot be folded")
        self.encoder = encoder
        conv = encoder.cnn[0][0]
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        a, m = input_affine(encoder)
        w = conv.weight.detach().double()                                   # [O, C_in, kh, kw]
        self.register_buffer("weight", torch.einsum("okyx,kj->ojyx", w, a).float())
        self.register_buffer("offset", m.reshape(1, -1, 1, 1).float())     # [1, 3F, 1, 1]

    def first_conv(self, frames: torch.Tensor) -> torch.Tensor:
        """The encoder's first convolution of its normalised input, from the uint8 frames ``[B, F, H, W, 3]``."""
        b, f, h, w, c = frames.shape
        u = frames.permute(0, 1, 4, 2, 3).reshape(b, f * c, h, w).to(torch.float32)  # transposed as uint8
        return F.conv2d(u - self.offset, self.weight, stride=self.stride, padding=self.padding,
                        dilation=self.dilation)

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        enc = self.encoder
        x = self.first_conv(frames)
        for layer in list(enc.cnn[0])[1:]:  # the first block's norm and activation
            x = layer(x)
        feats = enc.pooled(enc.cnn[1:](x))
        return F.normalize(enc.proj(feats), dim=-1), feats, enc.motion_grid(frames)

    def all_outputs(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What the exporter records (the same as :meth:`VideoEncoder.all_outputs`)."""
        return self(frames)
