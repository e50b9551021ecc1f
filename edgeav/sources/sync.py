"""Measured A/V skew: pairs sharp onsets seen in the picture with onsets heard in the sound.

A flash and a bang (a clapperboard, a door slam, a light switched on with a click) happen at
one instant; their timestamps on the common clock differ by the residual A/V skew of the
capture path. The health report shows the median over the last pairs, so an installer can
check a camera/microphone pair with one clap in front of a light, and set ``av_offset_ms``.

Cheap by design (it runs on every frame): the mean luma of a sparse grid of the Y plane, and
the RMS of 10 ms audio frames.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

LUMA_JUMP = 25.0          # mean-luma rise (0..255) between consecutive frames that counts as a flash
AUDIO_ONSET_RMS = 0.05    # an audio onset must reach this RMS (about -26 dBFS) ...
AUDIO_ONSET_RATIO = 8.0   # ... and this many times the recent background RMS
PAIR_WINDOW_S = 0.5       # a flash and a bang further apart than this are not the same incident
REFRACTORY_S = 0.5        # onsets closer than this to the previous one are the same incident
AUDIO_HOP_S = 0.01


def mean_luma(frame: Any, step: int = 8) -> float:
    """Mean of every ``step``-th pixel of a PyAV frame's Y plane (no colour conversion, no copy of the frame)."""
    plane = frame.planes[0]
    buf = np.frombuffer(plane, dtype=np.uint8)
    rows = buf.reshape(-1, plane.line_size)[: frame.height: step, : frame.width: step]
    return float(rows.mean())


class SkewMeter:
    """Feed it frames' luma and audio blocks on the common clock; read :attr:`skews`."""

    def __init__(self, sample_rate: int, keep: int = 20) -> None:
        self.sr = sample_rate
        self.hop = round(AUDIO_HOP_S * sample_rate)
        self.skews: deque[float] = deque(maxlen=keep)   # audio onset minus video onset, seconds
        self._video: deque[float] = deque(maxlen=8)
        self._audio: deque[float] = deque(maxlen=8)
        self._prev_luma: float | None = None
        self._last_video_onset = -np.inf
        self._last_audio_onset = -np.inf
        self._bg: deque[float] = deque(maxlen=100)      # recent RMS of 10 ms frames (1 s)
        self._tail = np.zeros(0, np.float32)
        self._tail_t = 0.0
        self._prev_seg = np.zeros(0, np.float32)
        self._prev_seg_t = -np.inf

    def video(self, t: float, luma: float) -> None:
        prev, self._prev_luma = self._prev_luma, luma
        if prev is not None and luma - prev >= LUMA_JUMP and t - self._last_video_onset > REFRACTORY_S:
            self._last_video_onset = t
            self._onset(t, self._video, self._audio, video=True)

    def audio(self, t0: float, samples: np.ndarray) -> None:
        if len(self._tail) and abs(self._tail_t + len(self._tail) / self.sr - t0) < 0.02:
            x, t0 = np.concatenate([self._tail, samples]), self._tail_t
        else:
            x = samples
        n = len(x) // self.hop
        for i in range(n):
            seg = x[i * self.hop:(i + 1) * self.hop]
            rms = float(np.sqrt(np.mean(seg * seg)))
            bg = float(np.median(self._bg)) if len(self._bg) >= 10 else None
            t = t0 + i * self.hop / self.sr
            if (bg is not None and rms >= AUDIO_ONSET_RMS and rms >= AUDIO_ONSET_RATIO * (bg + 1e-4)
                    and t - self._last_audio_onset > REFRACTORY_S):
                # The sound may have started late in the previous 10 ms frame, too weak there to trip the
                # RMS test: look back one frame for its first sample at half this frame's peak.
                back = self._prev_seg if abs(self._prev_seg_t + len(self._prev_seg) / self.sr - t) < 1e-3 else seg[:0]
                span = np.concatenate([back, seg])
                first = int(np.argmax(np.abs(span) >= 0.5 * np.abs(seg).max())) - len(back)
                onset = t + first / self.sr
                self._last_audio_onset = onset
                self._onset(onset, self._audio, self._video, video=False)
            self._bg.append(rms)
            self._prev_seg, self._prev_seg_t = seg, t
        self._tail = x[n * self.hop:]
        self._tail_t = t0 + n * self.hop / self.sr

    def _onset(self, t: float, mine: deque[float], other: deque[float], *, video: bool) -> None:
        near = [u for u in other if abs(u - t) <= PAIR_WINDOW_S]
        if not near:
            mine.append(t)
            return
        u = min(near, key=lambda v: abs(v - t))
        other.remove(u)
        self.skews.append(u - t if video else t - u)

    def report(self) -> dict[str, Any]:
        s = list(self.skews)
        return {"skew_ms": None if not s else round(float(np.median(s)) * 1000, 1),
                "skew_pairs": len(s), "skew_last_ms": None if not s else round(s[-1] * 1000, 1)}
