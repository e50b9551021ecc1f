"""Light training augmentation, applied per window with a per-window random generator.

Each window's generator is seeded from (seed, epoch, window index), so a window gets the same
augmentation whichever process (DDP rank) or batch position it lands in: one process and two give the
same batch. Hooks are plain callables kept in lists, so other pair/loss work can add its own
(``Augmenter.video_hooks.append(fn)``; ``fn(frames uint8 [F,H,W,3], rng) -> frames``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from train.params import AugmentCfg

VideoHook = Callable[[np.ndarray, np.random.Generator], np.ndarray]
AudioHook = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def window_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed & 0xFFFFFFFF, epoch, int(index), 0xA06])


class Augmenter:
    """Photometric jitter and horizontal flip for video; gain and a little noise for audio."""

    def __init__(self, cfg: AugmentCfg, seed: int) -> None:
        self.cfg = cfg
        self.seed = seed
        self.video_hooks: list[VideoHook] = []
        self.audio_hooks: list[AudioHook] = []
        if cfg.enabled:
            if cfg.hflip > 0:
                self.video_hooks.append(self._hflip)
            if cfg.shift > 0:
                self.video_hooks.append(self._shift)
            if cfg.brightness > 0 or cfg.contrast > 0:
                self.video_hooks.append(self._photometric)
            if cfg.audio_gain_db > 0:
                self.audio_hooks.append(self._gain)
            if cfg.audio_noise > 0:
                self.audio_hooks.append(self._noise)

    def _hflip(self, frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return frames[:, :, ::-1] if rng.random() < self.cfg.hflip else frames

    def _shift(self, frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Translate the whole window by up to ``shift`` of its size (edges repeated): a camera that moved a little."""
        _, h, w, _ = frames.shape
        dy = int(round(rng.uniform(-self.cfg.shift, self.cfg.shift) * h))
        dx = int(round(rng.uniform(-self.cfg.shift, self.cfg.shift) * w))
        if dx == 0 and dy == 0:
            return frames
        ys = np.clip(np.arange(h) - dy, 0, h - 1)
        xs = np.clip(np.arange(w) - dx, 0, w - 1)
        return frames[:, ys][:, :, xs]

    def _photometric(self, frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        b = rng.uniform(-self.cfg.brightness, self.cfg.brightness) * 255.0
        c = 1.0 + rng.uniform(-self.cfg.contrast, self.cfg.contrast)
        x = frames.astype(np.float32)
        mean = x.mean()
        x = (x - mean) * c + mean + b
        return np.clip(x, 0, 255).astype(np.uint8)

    def _gain(self, wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return wave * np.float32(10.0 ** (rng.uniform(-self.cfg.audio_gain_db, self.cfg.audio_gain_db) / 20.0))

    def _noise(self, wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return wave + rng.standard_normal(wave.shape, dtype=np.float32) * np.float32(self.cfg.audio_noise)

    def __call__(self, frames: np.ndarray, audio: np.ndarray, indices: np.ndarray,
                 epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Augment a batch in place of copies (``frames [B,F,H,W,3]``, ``audio [B,S]``)."""
        if not (self.video_hooks or self.audio_hooks):
            return frames, audio
        for i, idx in enumerate(indices):
            rng = window_rng(self.seed, epoch, int(idx))
            f, a = frames[i], audio[i]
            for hook in self.video_hooks:
                f = hook(f, rng)
            for hook in self.audio_hooks:
                a = hook(a, rng)
            frames[i], audio[i] = f, a
        return frames, audio
