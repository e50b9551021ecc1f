"""Cut timestamped video frames and audio blocks into windows on one clock.

The same assembler serves every source: a file (its own timestamps), an RTSP camera
and a microphone (capture times on the host clock). Windows lie on the grid
``origin + k * hop`` and span ``window_s``. A window's frames are the frames nearest
to its sample instants (:meth:`WindowSpec.frame_times`), exactly as
:func:`edgeav.preprocess.nearest_frame_indices` picks them for training; a frame is
converted and resized only when some window picks it, and at most once.

A window is emitted when both modalities cover it. Live sources also call
:meth:`WindowAssembler.expire` with the current time: a window whose deadline has
passed is emitted with the uncovered modality listed in ``missing``, so one dead
microphone never stalls the video.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeav.preprocess import WindowSpec

VIDEO = "video"
AUDIO = "audio"

# Share of a window's audio that must be real samples (not gap filler) for the audio to count as present.
MIN_AUDIO_COVERAGE = 0.5
# A discontinuity in audio timestamps larger than this is a gap (filled with silence), smaller is jitter.
AUDIO_GAP_TOLERANCE_S = 0.02


@dataclass
class Window:
    """One window: its place on the clock and the model inputs (``None`` for a missing modality)."""

    index: int
    t_start: float
    t_end: float
    frames: np.ndarray | None
    audio: np.ndarray | None
    missing: tuple[str, ...] = ()


@dataclass
class _Pending:
    index: int
    t_start: float
    targets: np.ndarray
    picks: list[Any] = field(default_factory=list)  # converted frames, one per resolved target


class WindowAssembler:
    """Turns frames and audio into :class:`Window` objects in time order.

    ``convert(raw)`` turns a raw frame (e.g. a PyAV ``VideoFrame``) into the model's
    ``H x W x 3`` uint8 input; it is called only for frames that a window picks.
    """

    def __init__(self, spec: WindowSpec, convert: Callable[[Any], np.ndarray], *, has_video: bool = True,
                 has_audio: bool = True, origin: float = 0.0, first_index: int = 0) -> None:
        # ``first_index``: the first window on the grid to assemble (a decoder that starts part-way into a
        # file, see edgeav.splitdecode); window k still starts at ``origin + k * hop_s``, the same float.
        self.spec = spec
        self.convert = convert
        self.has_video = has_video
        self.has_audio = has_audio
        self.origin = origin
        self._next_index = first_index
        self._pending: list[_Pending] = []
        self._prev: tuple[float, Any] | None = None     # last raw frame seen
        self._converted: dict[int, np.ndarray] = {}      # id(raw) -> converted, for frames picked twice
        self._video_end = -math.inf                       # timestamp of the newest frame
        self._first_video_t: float | None = None
        self._frame_dt = 0.0                              # last frame interval, to know where video ends
        self._video_ended = False
        self._audio_ended = False
        sr = spec.sample_rate
        self._sr = sr
        self._audio = np.zeros(0, dtype=np.float32)
        self._audio_ok = np.zeros(0, dtype=bool)
        self._audio_t0: float | None = None               # clock time of self._audio[0]
        self.frames_converted = 0

    # ------------------------------------------------------------------ input
    def add_video_frame(self, t: float, raw: Any) -> list[Window]:
        """Feed one decoded frame with its capture time; returns the windows it completes."""
        if self._first_video_t is None:
            self._first_video_t = t
        self._register_windows_until(t)
        for p in self._pending:
            while len(p.picks) < len(p.targets) and p.targets[len(p.picks)] <= t:
                tau = p.targets[len(p.picks)]
                if self._prev is not None and abs(tau - self._prev[0]) <= abs(t - tau):
                    p.picks.append(self._convert(self._prev[1]))
                else:
                    p.picks.append(self._convert(raw))
        # Only the newest raw frame can still be picked by a later target.
        if self._prev is not None:
            self._converted.pop(id(self._prev[1]), None)
            self._frame_dt = t - self._prev[0]
        self._prev = (t, raw)
        self._video_end = t
        return self._emit_complete()

    def add_audio(self, t0: float, samples: np.ndarray) -> list[Window]:
        """Feed mono float32 samples at ``spec.sample_rate`` whose first sample was captured at ``t0``."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if self._audio_t0 is None:
            self._audio_t0 = t0
        end_t = self._audio_t0 + len(self._audio) / self._sr
        offset = t0 - end_t
        if offset > AUDIO_GAP_TOLERANCE_S:  # a hole: fill with silence marked as not covered
            gap = round(offset * self._sr)
            self._audio = np.concatenate([self._audio, np.zeros(gap, np.float32)])
            self._audio_ok = np.concatenate([self._audio_ok, np.zeros(gap, bool)])
        elif offset < -AUDIO_GAP_TOLERANCE_S:  # overlap (a source restarted its clock): drop what we have twice
            drop = round(-offset * self._sr)
            samples = samples[drop:]
        self._audio = np.concatenate([self._audio, samples])
        self._audio_ok = np.concatenate([self._audio_ok, np.ones(len(samples), bool)])
        self._register_windows_until(self._audio_end)
        return self._emit_complete()

    def expire(self, now: float, deadline_s: float) -> list[Window]:
        """Live mode: emit every window whose end is more than ``deadline_s`` before ``now``, complete or not."""
        self._register_windows_until(now - deadline_s - self.spec.window_s)
        out = []
        while self._pending and self._pending[0].t_start + self.spec.window_s + deadline_s <= now:
            out.append(self._finish(self._pending.pop(0)))
        self._trim_audio()
        return out

    def end_video(self) -> list[Window]:
        """The video stream ended (a file's video is shorter than its audio): stop waiting for frames."""
        self._video_ended = True
        return self._emit_complete()

    def end_audio(self) -> list[Window]:
        """The audio stream ended: stop waiting for samples."""
        self._audio_ended = True
        return self._emit_complete()

    def finish(self) -> list[Window]:
        """End of stream: emit every whole window up to the end of the longer stream, flagging gaps."""
        self._video_ended = self._audio_ended = True
        end = max(self._video_end + self._frame_dt, self._audio_end)
        if not math.isfinite(end):
            return []
        self._register_windows_until(end - self.spec.window_s + 1e-6)
        out = []
        while self._pending and self._pending[0].t_start + self.spec.window_s <= end + 1e-6:
            out.append(self._finish(self._pending.pop(0)))
        self._pending.clear()
        return out

    @property
    def video_end(self) -> float:
        """End of the video seen so far (last frame time plus one frame interval); -inf before any frame."""
        return self._video_end + self._frame_dt

    @property
    def audio_end(self) -> float:
        """Clock time just after the last audio sample seen; -inf before any audio."""
        return self._audio_end

    # --------------------------------------------------------------- internals
    @property
    def _audio_end(self) -> float:
        if self._audio_t0 is None:
            return -math.inf
        return self._audio_t0 + len(self._audio) / self._sr

    def _convert(self, raw: Any) -> np.ndarray:
        key = id(raw)
        got = self._converted.get(key)
        if got is None:
            got = self.convert(raw)
            self._converted[key] = got
            self.frames_converted += 1
        return got

    def _register_windows_until(self, t: float) -> None:
        """Create pending windows whose start is at or before ``t``."""
        while True:
            t_start = self.origin + self._next_index * self.spec.hop_s
            if t_start > t + 1e-9:
                break
            self._pending.append(_Pending(self._next_index, t_start, self.spec.frame_times(t_start)))
            self._next_index += 1

    def _video_done(self, p: _Pending) -> bool:
        return not self.has_video or self._video_ended or len(p.picks) == len(p.targets)

    def _audio_done(self, p: _Pending) -> bool:
        return not self.has_audio or self._audio_ended or self._audio_end >= p.t_start + self.spec.window_s - 1e-9

    def _emit_complete(self) -> list[Window]:
        out = []
        while self._pending and self._video_done(self._pending[0]) and self._audio_done(self._pending[0]):
            out.append(self._finish(self._pending.pop(0)))
        if out:
            self._trim_audio()
        return out

    def _finish(self, p: _Pending) -> Window:
        t_end = p.t_start + self.spec.window_s
        missing: list[str] = []
        frames = None
        if self.has_video:
            # Targets after the last frame take the last frame (the nearest one), as in training.
            while len(p.picks) < len(p.targets) and self._prev is not None:
                p.picks.append(self._convert(self._prev[1]))
            if len(p.picks) == len(p.targets) and self._video_covers(p.t_start, t_end):
                frames = np.stack(p.picks)
        if frames is None:
            missing.append(VIDEO)
        audio = self._audio_slice(p.t_start) if self.has_audio else None
        if audio is None:
            missing.append(AUDIO)
        return Window(p.index, p.t_start, t_end, frames, audio, tuple(missing))

    def _video_covers(self, t_start: float, t_end: float) -> bool:
        first = self._first_video_t
        return first is not None and first < t_end and self._video_end >= t_start

    def _audio_slice(self, t_start: float) -> np.ndarray | None:
        if self._audio_t0 is None:
            return None
        n = self.spec.samples_per_window
        i0 = round((t_start - self._audio_t0) * self._sr)
        out = np.zeros(n, np.float32)
        ok = np.zeros(n, bool)
        lo, hi = max(i0, 0), min(i0 + n, len(self._audio))
        if hi > lo:
            out[lo - i0:hi - i0] = self._audio[lo:hi]
            ok[lo - i0:hi - i0] = self._audio_ok[lo:hi]
        return out if ok.mean() >= MIN_AUDIO_COVERAGE else None

    def _trim_audio(self) -> None:
        """Drop samples no pending or future window can need."""
        if self._audio_t0 is None:
            return
        keep_from = self.origin + self._next_index * self.spec.hop_s
        if self._pending:
            keep_from = self._pending[0].t_start
        cut = int((keep_from - self._audio_t0) * self._sr) - 1
        if cut > self._sr:  # trim in big steps: concatenation cost stays small
            self._audio = self._audio[cut:]
            self._audio_ok = self._audio_ok[cut:]
            self._audio_t0 += cut / self._sr
