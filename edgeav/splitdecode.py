"""Decode a replayed file's video in two halves at once, giving exactly the frames one decoder gives.

On a 2-core box replay's floor is one thread decoding H.264 (plus the audio and the window assembly
beside it). A file, unlike a live stream, can be read from two places at once: a second PyAV container
on the same file seeks to the keyframe nearest before the middle (``tk``) and decodes from there in its
own thread, while the first decodes from the start. The first half's window assembler (the one that
also takes the audio, as before) then receives, from ``tk`` on, the second decoder's frames in place of
its own: the same timestamps, and for every frame a window picks, the picture already resized.

Why the windows are byte-identical to one decoder's (tests compare them on real files):
- H.264 decoding is exact and a keyframe (IDR) starts a fresh picture chain, so a frame at or after
  ``tk`` decodes to the same pixels from either container. The split is refused when the seek lands on
  a frame that is not a keyframe (an open GOP, a broken index) or far from the middle.
- The frames a window picks (:class:`~edgeav.windows.WindowAssembler`, nearest to each target) are a
  function of the frame times only. A target at or after ``tk`` picks between frames at or after ``tk``,
  which the second half's own assembler sees exactly as the first half's would; a target before ``tk``
  can pick, among the second half's frames, only the one at ``tk``, which is therefore always resized.
- The first half checks that its own decoding reaches ``tk`` exactly (its first frame at or after
  ``tk`` has that time) before it switches; otherwise it goes on alone, as without the split.

The assembler's state, the audio path, truncation checks and error messages are those of the serial
path, since it is fed the same sequence of frame times.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeav import media
from edgeav.preprocess import WindowSpec
from edgeav.windows import WindowAssembler

# Shorter files decode in one thread: the second container and thread cost about 10 ms, and below this the
# first windows matter more than the last ones.
MIN_SPLIT_S = 20.0
# The second half runs at most this far ahead of the first (its resized frames wait in memory meanwhile:
# about 8 picked 112x64 frames a second, ~50 MB for 300 s); on longer files the split point is this far in.
MAX_AHEAD_S = 300.0
# The split aims a little before the middle: the first half's thread also decodes the audio and assembles
# the windows, so it has more to do per second of footage.
SPLIT_FRACTION = 0.45
# The keyframe found by seeking must lie at least this share of the way to the aimed point.
MIN_KEYFRAME_FRACTION = 0.5
# Environment switch: "0" never splits, "1" splits whenever the file allows, unset decides by the cores.
SPLIT_ENV = "EDGEAV_SPLIT_DECODE"


@dataclass(frozen=True)
class Picture:
    """A second-half frame as the first half's assembler receives it: its resized picture if a window
    can pick it, else ``None`` (never converted: the split's proof says no window picks it)."""

    picture: np.ndarray | None


def idle_cores() -> int:
    """Cores free for another thread right now: usable cores less the other runnable threads (``/proc/loadavg``'s
    instantaneous count, which includes the thread asking)."""
    cores = media.usable_cores()
    try:
        running = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
    except (OSError, IndexError, ValueError):
        return cores
    return cores - max(running - 1, 0)


def split_target(info: Any) -> float | None:
    """Where to aim the split in ``info``'s file (seconds), or None when the file is not worth splitting."""
    if not info.has_video or not math.isfinite(info.duration) or info.duration < MIN_SPLIT_S:
        return None
    return min(info.duration * SPLIT_FRACTION, MAX_AHEAD_S)


def should_split(info: Any) -> bool:
    """Split when the file is long enough and two cores are idle (the decoder's and the second half's);
    ``EDGEAV_SPLIT_DECODE=0/1`` overrides the cores. Either way the windows are the same."""
    if split_target(info) is None:
        return False
    env = os.environ.get(SPLIT_ENV, "").strip()
    if env in ("0", "1"):
        return env == "1"
    return idle_cores() >= 2


class SplitVideo:
    """The video frames of ``path`` for the first half's assembler: its own decoding up to ``tk``, then
    the second half's (decoding in a background thread from the moment this is made).

    Iterate it as :func:`media.iter_video_frames`; pass :meth:`convert` (wrapping the usual resizer) as the
    assembler's ``convert``. :attr:`second_stats` holds the second half's resizing time (wall, CPU);
    :attr:`split_at` the keyframe time once the switch happened. Close it to stop the thread.
    """

    def __init__(self, path: str | Path, info: Any, spec: WindowSpec, target: float) -> None:
        from edgeav.reader import PipelineStats, Prefetcher, frame_converter  # here: reader imports this module

        self.path = Path(path)
        self.target = target
        self.split_at: float | None = None
        self.second_stats = PipelineStats()
        fps = info.fps if info.fps and math.isfinite(info.fps) and info.fps > 0 else 30.0
        depth = max(64, int(MAX_AHEAD_S * fps))
        self._second = Prefetcher(_second_half(self.path, spec, target, frame_converter(spec, self.second_stats)),
                                  depth, name="edgeav-decode-2")

    def convert(self, resize: Callable[[Any], np.ndarray]) -> Callable[[Any], np.ndarray]:
        """The assembler's converter: pictures the second half resized pass through, raw frames are resized."""

        def convert(raw: Any) -> np.ndarray:
            if isinstance(raw, Picture):
                if raw.picture is None:  # would be a broken proof, not bad footage: fail loudly
                    raise RuntimeError(f"{self.path}: split decoding: a window picked a frame the second half "
                                       f"did not resize")
                return raw.picture
            return resize(raw)

        return convert

    def __iter__(self) -> Iterator[tuple[float, Any]]:
        lowest = self.target * MIN_KEYFRAME_FRACTION
        tk: float | None = None
        asked = False
        first = media.iter_video_frames(self.path)
        try:
            for t, frame in first:
                if t >= lowest and not asked:
                    asked = True
                    tk = next(self._second, None)  # the keyframe the second half found, or None
                    if tk is None:
                        self._second.close()
                if tk is not None and t >= tk:
                    if t != tk:  # the two decoders disagree on the frames: go on alone
                        self._second.close()
                        tk = None
                    else:
                        break
                yield t, frame
            else:
                return
        finally:
            _close(first)
        self.split_at = tk
        yield from self._second

    def close(self) -> None:
        self._second.close()


def _second_half(path: Path, spec: WindowSpec, target: float,
                 resize: Callable[[Any], np.ndarray]) -> Iterator[Any]:
    """The second decoder: first its keyframe time ``tk`` (None: no usable keyframe, nothing follows), then
    ``(t, Picture)`` for every frame from ``tk`` on, in order."""
    frames = media.iter_video_frames(path, start_near=target)
    try:
        try:
            tk, frame = next(frames)
        except Exception:  # any trouble seeking: the first half decodes everything, as before
            yield None
            return
        if not frame.key_frame or tk < target * MIN_KEYFRAME_FRACTION or tk > target + 1e-6:
            yield None
            return
        yield tk
        pictures: dict[int, np.ndarray] = {}

        def keep(raw: Any) -> np.ndarray:
            pic = pictures.get(id(raw))
            if pic is None:
                pic = pictures[id(raw)] = resize(raw)
            return pic

        # Windows that can hold a target at or after tk: from the first one ending after tk.
        k = max(0, math.floor((tk - spec.window_s) / spec.hop_s) - 1)
        while k * spec.hop_s + spec.window_s <= tk:
            k += 1
        asm = WindowAssembler(spec, keep, has_audio=False, first_index=k)
        asm.add_video_frame(tk, frame)
        # The frame at tk is the one a target before tk may pick: always resized.
        keep(frame)
        prev_t, prev = tk, frame
        for t, raw in frames:
            asm.add_video_frame(t, raw)  # resolves the targets up to t: prev's fate is now known
            yield prev_t, Picture(pictures.pop(id(prev), None))
            prev_t, prev = t, raw
        asm.finish()  # targets after the last frame take it
        yield prev_t, Picture(pictures.pop(id(prev), None))
    finally:
        _close(frames)


def _close(frames: Iterator[Any]) -> None:
    """Close a frame generator now (its container), in this thread."""
    close = getattr(frames, "close", None)
    if close is not None:
        close()
