"""The two encoders and the checkpoint format (issue #4; `export/` builds on this interface).

Interface (stable; the export issue depends on it):

- :class:`AudioEncoder`: ``forward(wave float32 [B, S]) -> [B, D]`` L2-normalised. The log-mel front end
  (framing + windowed DFT as a ``Conv1d`` with a fixed basis, power, mel matrix, log) is *inside* the model,
  so the exported ONNX graph takes raw 16 kHz samples and training and runtime cannot drift. No
  ``torch.stft``: only Conv1d/Mul/Add/MatMul/Log, which export to plain ONNX ops.
  ``features(wave) -> [B, P]`` is the pooled pre-projection feature; ``frontend_params()`` the front end's
  parameters for the manifest.
- :class:`VideoEncoder`: ``forward(frames uint8 [B, F, H, W, 3]) -> [B, D]`` L2-normalised. Pixel
  normalisation (buffers ``mean``/``std``, per RGB channel, measured in one pass over the training footage)
  is inside, so the runtime hands it the uint8 frames of :func:`edgeav.preprocess.FrameResizer`.
- :func:`build_encoders` (from the params dict), :func:`load_checkpoint` (eval mode).

Checkpoint (``torch.save`` dict, ``format == "edgeav.checkpoint/1"``)::

    {"format", "params", "audio": state_dict, "video": state_dict, "logit_scale": float,
     "epoch": int, "optimizer", "scheduler", "summary": {"footage_seconds", "windows", "pairs",
     "loss", "epochs", "seed", "metrics": {...}}}

``params`` is JSON-able: ``{"window": {WindowSpec fields}, "embed_dim": int, "audio": {front end +
CNN sizes}, "video": {CNN sizes}, "temperature": {...}}``; :func:`window_spec` turns it back into an
:class:`edgeav.preprocess.WindowSpec`.

Normalisation layers are GroupNorm, not BatchNorm: a sample's embedding then does not depend on the other
samples in its batch, so DDP shards give the same loss as one process and the exported model behaves the
same at batch size 1 on the edge box as in training.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeav.errors import UserError
from edgeav.preprocess import WindowSpec
from train.params import load_config

CHECKPOINT_FORMAT = "edgeav.checkpoint/1"
MOTION_CELL = 8  # pixels per side of a cell of the video summary's motion grid

# The defaults of configs/train.default.yaml (validated by train.params): one source of truth.
DEFAULT_PARAMS: dict[str, Any] = load_config().model_params()


def merged_params(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """DEFAULT_PARAMS with ``overrides`` merged in (nested dicts merged key by key)."""
    out = copy.deepcopy(DEFAULT_PARAMS)

    def merge(dst: dict[str, Any], src: dict[str, Any]) -> None:
        for k, v in src.items():
            if isinstance(v, dict) and isinstance(dst.get(k), dict):
                merge(dst[k], v)
            else:
                dst[k] = copy.deepcopy(v)

    merge(out, overrides or {})
    return out


def window_spec(params: dict[str, Any]) -> WindowSpec:
    """The :class:`WindowSpec` a model was trained with."""
    return WindowSpec(**params["window"])


# ---------------------------------------------------------------------------------------------- front end


def _hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_matrix(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """HTK-style triangular mel filterbank, ``[n_mels, n_fft // 2 + 1]`` (float32)."""
    n_bins = n_fft // 2 + 1
    bin_hz = np.linspace(0.0, sample_rate / 2.0, n_bins)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    fb = np.zeros((n_mels, n_bins), dtype=np.float64)
    for m in range(n_mels):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        up = (bin_hz - lo) / max(mid - lo, 1e-9)
        down = (hi - bin_hz) / max(hi - mid, 1e-9)
        fb[m] = np.clip(np.minimum(up, down), 0.0, None)
    return fb.astype(np.float32)


def dft_basis(n_fft: int, win: int) -> np.ndarray:
    """Periodic-Hann-windowed DFT basis as Conv1d weights ``[2 * (n_fft//2 + 1), 1, win]``: cos rows then sin.

    A ``win``-sample frame zero-padded to ``n_fft`` has the DFT of these ``win`` taps at frequencies
    ``k / n_fft``, so the convolution needs no padding. Scaled by ``2 / sum(window)`` so a full-scale
    sine has magnitude about 1.
    """
    n = np.arange(win, dtype=np.float64)
    window = 0.5 - 0.5 * np.cos(2.0 * math.pi * n / win)
    k = np.arange(n_fft // 2 + 1, dtype=np.float64)[:, None]
    phase = 2.0 * math.pi * k * n[None, :] / n_fft
    scale = 2.0 / window.sum()
    basis = np.concatenate([np.cos(phase) * window, -np.sin(phase) * window], axis=0) * scale
    return basis[:, None, :].astype(np.float32)


class LogMel(nn.Module):
    """wave ``[B, S]`` -> log-mel ``[B, n_mels, T]`` with ONNX-friendly ops only."""

    basis: torch.Tensor
    mel: torch.Tensor

    def __init__(self, sample_rate: int, n_fft: int, win: int, hop: int, n_mels: int,
                 fmin: float, fmax: float) -> None:
        super().__init__()
        if win > n_fft:
            raise ValueError(f"audio.win ({win}) must be <= audio.n_fft ({n_fft})")
        self.n_bins = n_fft // 2 + 1
        self.hop = hop
        self.register_buffer("basis", torch.from_numpy(dft_basis(n_fft, win)), persistent=True)
        self.register_buffer("mel", torch.from_numpy(mel_matrix(sample_rate, n_fft, n_mels, fmin, fmax)),
                             persistent=True)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        spec = F.conv1d(wave.unsqueeze(1), self.basis, stride=self.hop)  # [B, 2K, T]
        re, im = spec[:, : self.n_bins], spec[:, self.n_bins:]
        power = re * re + im * im
        mel = torch.matmul(self.mel, power)  # [n_mels, K] @ [B, K, T] -> [B, n_mels, T]
        return torch.log(mel + 1e-6)


# ---------------------------------------------------------------------------------------------- CNN parts


def _conv_block(cin: int, cout: int, stride: int) -> nn.Sequential:
    groups = math.gcd(8, cout)
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(groups, cout),
        nn.ReLU(inplace=True),
    )


def _cnn(cin: int, channels: list[int], blocks: list[int]) -> nn.Sequential:
    """Stages of one stride-2 conv then ``blocks[i]`` stride-1 convs; returns the feature map (no pooling)."""
    if len(channels) != len(blocks):
        raise ValueError(f"channels {channels} and blocks {blocks} must have the same length")
    layers: list[nn.Module] = []
    c = cin
    for cout, nb in zip(channels, blocks, strict=True):
        layers.append(_conv_block(c, cout, 2))
        layers.extend(_conv_block(cout, cout, 1) for _ in range(nb))
        c = cout
    return nn.Sequential(*layers)


def _out_size(n: int, stages: int) -> int:
    """Size after ``stages`` stride-2, kernel-3, padding-1 convolutions."""
    for _ in range(stages):
        n = (n - 1) // 2 + 1
    return n


class _AllReduceSum(torch.autograd.Function):
    """Sum over DDP ranks whose gradient is the sum of every rank's gradient (each rank's loss used it)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        out = grad.clone()
        dist.all_reduce(out)
        return out


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics are those of the *global* batch when training under DDP.

    In the projection head it removes what every window shares (a fixed camera's background dominates the
    pooled features), so the contrastive loss sees the differences between windows from the first step
    instead of collapsing to one constant embedding. Statistics are summed over all ranks with an
    autograd-aware all-reduce, so N processes compute what one process computes on the whole batch. In
    eval mode (and in the exported ONNX model) it is the usual per-window affine map of running statistics.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        import torch.distributed as dist

        n = torch.full((1,), float(x.shape[0]), dtype=x.dtype, device=x.device)
        stats = torch.cat([x.sum(0), (x * x).sum(0), n])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            stats = _AllReduceSum.apply(stats)
        c = x.shape[1]
        count = stats[-1]
        mean = stats[:c] / count
        var = (stats[c:2 * c] / count - mean * mean).clamp_min(0.0)
        with torch.no_grad():
            m = self.momentum if self.momentum is not None else 0.1
            unbiased = var * (count / (count - 1).clamp_min(1.0))
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(unbiased.detach(), alpha=m)
            self.num_batches_tracked.add_(1)
        y = (x - mean) * torch.rsqrt(var + self.eps)
        return y * self.weight + self.bias if self.affine else y


def _projection(p: int, d: int, hidden: int = 256) -> nn.Sequential:
    """BN -> Linear -> BN -> ReLU -> Linear (SimCLR-style head; BN with global-batch statistics)."""
    return nn.Sequential(GlobalBatchNorm1d(p), nn.Linear(p, hidden), GlobalBatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, d))


PATCH_POOL = 2  # log-mel bands and frames averaged in pairs before patches are cut (32 bands x 20 ms)
PATCH_FRAMES = 3  # a patch spans this many pooled frames (60 ms) ...
PATCH_STRIDE = 2  # ... and one starts every this many (40 ms)


def spectral_patches(mel: torch.Tensor) -> torch.Tensor:
    """Normalised log-mel ``[B, n_mels, T]`` -> short spectro-temporal patches ``[B, P, (n_mels / 2) * 3]``.

    The anomaly scorer's ``audio_patches`` feature (edgeav.calibrate scores each patch against the normal
    patches and keeps a window's most unusual one): breaking glass is a few tens of milliseconds of a
    spectrum the street never makes, which a whole window's statistics average away. Measured at a held-out
    synth site (README, "Anomaly features"): glass breaks caught 11 -> 17 of 24 at 1 false alarm per hour.
    """
    b, _, t = mel.shape
    t_used = (t // PATCH_POOL) * PATCH_POOL
    pooled = F.avg_pool2d(mel[:, :, :t_used].unsqueeze(1), PATCH_POOL).squeeze(1)  # [B, n_mels/2, T/2]
    steps = range(0, pooled.shape[2] - PATCH_FRAMES + 1, PATCH_STRIDE)
    return torch.stack([pooled[:, :, s:s + PATCH_FRAMES].reshape(b, -1) for s in steps], dim=1)


class AudioEncoder(nn.Module):
    """Raw 16 kHz mono samples -> L2-normalised embedding; the log-mel front end is part of the model."""

    mel_mean: torch.Tensor
    mel_std: torch.Tensor

    def __init__(self, params: dict[str, Any]) -> None:
        super().__init__()
        a = params["audio"]
        self.sample_rate = int(params["window"]["sample_rate"])
        self._frontend = {k: a[k] for k in ("n_fft", "win", "hop", "n_mels", "fmin", "fmax")}
        self.frontend = LogMel(self.sample_rate, int(a["n_fft"]), int(a["win"]), int(a["hop"]),
                               int(a["n_mels"]), float(a["fmin"]), float(a["fmax"]))
        # Per-mel-band normalisation of the log-mel, measured on the training footage (set_normalisation).
        self.register_buffer("mel_mean", torch.zeros(int(a["n_mels"]), 1))
        self.register_buffer("mel_std", torch.ones(int(a["n_mels"]), 1))
        self.cnn = _cnn(1, list(a["channels"]), list(a["blocks"]))
        # Pool over time only: which mel bands are active is what tells sounds apart (pitch, engine vs bark).
        self.freq_out = _out_size(int(a["n_mels"]), len(a["channels"]))
        self.feature_dim = int(a["channels"][-1]) * self.freq_out
        self.proj = _projection(self.feature_dim, int(params["embed_dim"]))

    def frontend_params(self) -> dict[str, Any]:
        """Front end parameters for the bundle manifest (sample counts at ``sample_rate``)."""
        return {**self._frontend, "sample_rate": self.sample_rate, "log_eps": 1e-6, "window": "hann"}

    def log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """Normalised log-mel ``[B, n_mels, T]``."""
        return (self.frontend(wave) - self.mel_mean) / self.mel_std

    def features(self, wave: torch.Tensor) -> torch.Tensor:
        """Pre-projection features ``[B, P]``: the CNN map averaged over time, per frequency row."""
        return self._pooled(self.log_mel(wave))

    def _pooled(self, mel: torch.Tensor) -> torch.Tensor:
        return self.cnn(mel.unsqueeze(1)).mean(dim=3).flatten(1)  # [B, C, F', T'] -> [B, C * F']

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(self.features(wave)), dim=-1)

    def all_outputs(self, wave: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(embedding, features, summary, patches)``: what the exported model gives the runtime.

        ``summary`` ``[B, 4 * n_mels]`` is the front end's own view of the window, per band of the normalised
        log-mel: its mean and its maximum over time, its largest rise from one 10 ms frame to the next (an
        onset: breaking glass, an impact) and its range (how much the band moves). The anomaly scorer
        measured best on it (README, "Anomaly features"): a scream or breaking glass is a spectrum the street
        never makes, which the trained embedding, taught to match sounds with pictures, partly averages away.
        """
        mel = self.log_mel(wave)
        feats = self._pooled(mel)
        top = mel.amax(dim=2)
        onset = torch.relu(mel[:, :, 1:] - mel[:, :, :-1]).amax(dim=2)
        summary = torch.cat([mel.mean(dim=2), top, onset, top - mel.amin(dim=2)], dim=1)
        return F.normalize(self.proj(feats), dim=-1), feats, summary, spectral_patches(mel)

    @torch.no_grad()
    def set_normalisation(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mel_mean.copy_(mean.reshape(-1, 1))
        self.mel_std.copy_(std.reshape(-1, 1).clamp_min(1e-3))


class VideoEncoder(nn.Module):
    """uint8 RGB frames ``[B, F, H, W, 3]`` -> L2-normalised embedding; early fusion of the F frames."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, params: dict[str, Any]) -> None:
        super().__init__()
        v = params["video"]
        self.frames = int(params["window"]["frames_per_window"])
        # Per-RGB-channel statistics of the training footage (set_normalisation), on a 0..1 scale.
        self.register_buffer("mean", torch.full((3,), 0.5))
        self.register_buffer("std", torch.full((3,), 0.25))
        # Motion channels: each frame minus the window's mean frame. A fixed camera's background is nearly the
        # same in every window, so without them the small moving things that matter barely move the features.
        self.motion_gain = float(v.get("motion_gain", 4.0))
        cin = 3 * self.frames * (2 if self.motion_gain > 0 and self.frames > 1 else 1)
        self.cnn = _cnn(cin, list(v["channels"]), list(v["blocks"]))
        # Global average pooling alone forgets *where* things are; a 1x1 squeeze to a few channels kept per
        # cell of the final grid keeps position (a car on the left sounds different from one on the right).
        c = int(v["channels"][-1])
        stages = len(v["channels"])
        h = _out_size(int(params["window"]["frame_height"]), stages)
        w = _out_size(int(params["window"]["frame_width"]), stages)
        g = int(v.get("grid_channels", 16))
        self.squeeze = nn.Conv2d(c, g, 1)
        self.feature_dim = c + g * h * w
        self.proj = _projection(self.feature_dim, int(params["embed_dim"]))

    def normalise(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, F, H, W, 3]`` -> float ``[B, F*3 (+ F*3 motion), H, W]`` normalised per channel."""
        x = frames.to(torch.float32) * (1.0 / 255.0)
        x = (x - self.mean) / self.std
        if self.motion_gain > 0 and self.frames > 1:
            x = torch.cat([x, (x - x.mean(dim=1, keepdim=True)) * self.motion_gain], dim=1)
        b, f, h, w, c = x.shape
        return x.permute(0, 1, 4, 2, 3).reshape(b, f * c, h, w)

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        """Pre-projection features ``[B, P]``: global average of the map, then the squeezed grid."""
        return self.pooled(self.cnn(self.normalise(frames)))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The CNN's map ``[B, C, H', W']`` -> pre-projection features (also export.fold's, on its folded CNN)."""
        return torch.cat([x.mean(dim=(2, 3)), torch.relu(self.squeeze(x)).flatten(1)], dim=1)

    @staticmethod
    def motion_grid(frames: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, F, H, W, 3]`` -> the motion summary ``[B, (H / 8) * (W / 8)]`` (see :meth:`all_outputs`)."""
        x = frames.to(torch.float32) * (1.0 / 255.0)
        motion = (x - x.mean(dim=1, keepdim=True)).abs().mean(dim=4).amax(dim=1)  # [B, H, W]
        return F.avg_pool2d(motion.unsqueeze(1), MOTION_CELL).flatten(1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(self.features(frames)), dim=-1)

    def all_outputs(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(embedding, features, summary)``: what the exported model gives the runtime.

        ``summary`` ``[B, (H / 8) * (W / 8)]``: how much the picture moves in each 8x8-pixel cell (the
        largest over the window's frames of the mean absolute difference from the window's mean frame,
        0..1 scale; the largest, not the mean, so a flash in one frame counts whole). The anomaly scorer
        measured best on it (README, "Anomaly features"): a crash or a flash moves more of the picture,
        and faster, than the street's traffic ever does.
        """
        feats = self.features(frames)
        return F.normalize(self.proj(feats), dim=-1), feats, self.motion_grid(frames)

    @torch.no_grad()
    def set_normalisation(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean.reshape(3))
        self.std.copy_(std.reshape(3).clamp_min(1e-3))


def build_encoders(params: dict[str, Any]) -> tuple[AudioEncoder, VideoEncoder]:
    """Fresh (randomly initialised) encoders for ``params`` (see :data:`DEFAULT_PARAMS`)."""
    return AudioEncoder(params), VideoEncoder(params)


# ---------------------------------------------------------------------------------------------- budget


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_macs(module: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass on ``example`` (conv and linear layers), per batch item."""
    total = 0

    def conv_hook(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        k = int(np.prod(m.weight.shape[1:]))  # cin/groups * kernel
        total += int(out[0].numel()) * k

    def linear_hook(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        total += int(out[0].numel()) * m.in_features

    hooks = []
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    try:
        with torch.no_grad():
            if isinstance(module, AudioEncoder):
                module(example[:1])
                # The front end's conv is functional (F.conv1d) and the mel a matmul: count them too.
                fe = module.frontend
                t = (example.shape[-1] - fe.basis.shape[-1]) // fe.hop + 1
                total += int(fe.basis.shape[0] * fe.basis.shape[-1] * t + fe.mel.numel() * t)
            else:
                module(example[:1])
    finally:
        for h in hooks:
            h.remove()
    return total


def example_inputs(params: dict[str, Any], batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero inputs of the right shapes: (wave ``[B, S]``, frames ``[B, F, H, W, 3]``); for export and budgets."""
    spec = window_spec(params)
    wave = torch.zeros(batch, spec.samples_per_window, dtype=torch.float32)
    frames = torch.zeros(batch, spec.frames_per_window, spec.frame_height, spec.frame_width, 3, dtype=torch.uint8)
    return wave, frames


def budget(audio: AudioEncoder, video: VideoEncoder, params: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Parameters and MACs per window of each encoder (issue #4 budget: <= 2 M params, <= 0.2 GMACs each)."""
    wave, frames = example_inputs(params)
    return {
        "audio": {"params": count_params(audio), "macs": count_macs(audio, wave)},
        "video": {"params": count_params(video), "macs": count_macs(video, frames)},
    }


# ---------------------------------------------------------------------------------------------- checkpoints


def load_checkpoint(path: str | Path) -> tuple[AudioEncoder, VideoEncoder, dict[str, Any], dict[str, Any]]:
    """Load ``edgeav.checkpoint/1`` -> (audio encoder, video encoder, params, summary), both in eval mode.

    A run directory is accepted too (its ``best.pt`` if there is one, else ``last.pt``).
    """
    p = Path(path)
    if p.is_dir():
        p = p / "best.pt" if (p / "best.pt").is_file() else p / "last.pt"
    if not p.is_file():
        raise UserError(f"{path}: no checkpoint there")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a damaged file
        raise UserError(f"{p}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        fmt = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise UserError(f"{p}: not an {CHECKPOINT_FORMAT} checkpoint (format {fmt!r})")
    params = ckpt["params"]
    audio, video = build_encoders(params)
    audio.load_state_dict(ckpt["audio"])
    video.load_state_dict(ckpt["video"])
    audio.eval()
    video.eval()
    return audio, video, params, dict(ckpt.get("summary") or {})
