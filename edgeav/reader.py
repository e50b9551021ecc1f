"""Reading a footage file into windows, decoding ahead in a background thread.

The first half of the pipeline for a replayed file (:func:`edgeav.pipeline.run_file`): decoding, window
assembly and the resizing of the frames a window picks. It is its own module so that ``edgeav replay`` can
start decoding its first file before OpenCV, onnxruntime and the pipeline's own modules are imported (it reads
the window spec through :mod:`edgeav.bundle`, which no longer pulls OpenCV in): on the bench's file the first
frame comes about 30 ms sooner (README, replay section), those imports run beside decoding. Nothing here
imports onnxruntime, OpenCV or the bundle.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from edgeav import media, splitdecode
from edgeav.preprocess import FrameResizer, WindowSpec
from edgeav.windows import VIDEO, Window, WindowAssembler

T = TypeVar("T")


@dataclass
class StageTimes:
    """Seconds spent per stage, for `edgeav bench` and the health report (wall, or CPU: see PipelineStats)."""

    decode: float = 0.0
    preprocess: float = 0.0
    embed: float = 0.0
    decide: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in self.__dict__.items()}


@dataclass
class PipelineStats:
    windows: int = 0
    windows_dropped: int = 0
    missing_audio: int = 0
    missing_video: int = 0
    events: int = 0
    alerts: int = 0
    frames_converted: int = 0
    times: StageTimes = field(default_factory=StageTimes)
    # CPU seconds of the thread that ran each stage. Exact for preprocess (swscale), embed (onnxruntime with
    # one intra-op thread runs in the caller) and decide; for decode only the Python side: FFmpeg's frame
    # threads are not the caller's. run_file's process CPU (``run_cpu``) minus the other three is decoding.
    cpu: StageTimes = field(default_factory=StageTimes)
    run_cpu: float = 0.0
    labels: dict[str, int] = field(default_factory=dict)
    # Where the file's video was split between two decoders (edgeav.splitdecode), None: one decoder.
    split_at: float | None = None

    def add(self, stage: str, wall_t0: float, cpu_t0: float) -> None:
        """Charge ``stage`` with the wall and thread CPU since ``perf_counter()``/``thread_time()`` gave the t0s."""
        setattr(self.times, stage, getattr(self.times, stage) + time.perf_counter() - wall_t0)
        setattr(self.cpu, stage, getattr(self.cpu, stage) + time.thread_time() - cpu_t0)

    def absorb_decoding(self, other: PipelineStats) -> None:
        """Add a :class:`FileReader`'s share (decoding, resizing, frames converted) to these stats."""
        for stage in ("decode", "preprocess"):
            for mine, theirs in ((self.times, other.times), (self.cpu, other.cpu)):
                setattr(mine, stage, getattr(mine, stage) + getattr(theirs, stage))
        self.frames_converted += other.frames_converted
        self.split_at = other.split_at


def frame_converter(spec: WindowSpec, stats: PipelineStats | None = None) -> Callable[[Any], np.ndarray]:
    """PyAV frame -> the model's RGB input, through the shared preprocessing; timed when ``stats`` is given."""

    resize = FrameResizer(spec.frame_width, spec.frame_height)

    def convert(frame: Any) -> np.ndarray:
        t0, c0 = time.perf_counter(), time.thread_time()
        out = resize(frame)
        if stats is not None:
            stats.add("preprocess", t0, c0)
        return out

    return convert


class FileReader:
    """One footage file's windows (lists, in order), decoded from the moment the reader is made.

    With ``background`` (the default) decoding, window assembly and frame resizing run in their own
    thread, ``depth`` items ahead of the consumer, so the decoder and onnxruntime (which releases the
    GIL) work at the same time instead of taking turns. Replay makes the first file's reader before it
    loads the bundle's onnxruntime sessions, so decoding, the floor of replay, also runs beside that
    loading. The windows and their order do not depend on any of it: outputs are byte-identical.

    Decoding's share of the stage times and CPU goes to :attr:`stats`; :func:`run_file` adds it to the
    pipeline's. Close the reader (or use it as a context manager) when it is not read to the end.
    """

    def __init__(self, path: str | Path, spec: WindowSpec, *, info: Any = None, av_offset_s: float = 0.0,
                 depth: int = 32, background: bool = True, split: bool | None = None) -> None:
        self.cpu_t0 = time.process_time()
        # Process CPU spent on other work (loading the bundle) while this file decoded ahead: not the file's.
        self.other_cpu = 0.0
        self.path = Path(path)
        self.spec = spec
        self.stats = PipelineStats()
        self.info = info if info is not None else media.probe(path, require_audio=False)
        # ``split``: decode the video's two halves at once (edgeav.splitdecode; same windows); None: when
        # the file is long enough and two cores are idle.
        if split is None:
            split = splitdecode.should_split(self.info)
        windows = _file_windows(path, self.info, spec, self.stats, av_offset_s, split)
        self._items: Iterator[list[Window]] = (Prefetcher(windows, depth, name="edgeav-decode") if background
                                               else windows)

    def __iter__(self) -> Iterator[list[Window]]:
        return self._items

    def close(self) -> None:
        """Stop decoding (if it is still going) and close the file."""
        close = getattr(self._items, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> FileReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _file_windows(path: str | Path, info: Any, spec: WindowSpec, stats: PipelineStats,
                  av_offset_s: float, split: bool = False) -> Iterator[list[Window]]:
    """A file's windows as the decoder completes them (lists, in order); the last list holds the tail.

    ``split``: the video's second half decodes in another thread (:mod:`edgeav.splitdecode`), where the
    file allows it; the windows are the same.
    """
    target = splitdecode.split_target(info) if split else None
    video = splitdecode.SplitVideo(path, info, spec, target) if target is not None else None
    convert = frame_converter(spec, stats)
    asm = WindowAssembler(spec, video.convert(convert) if video is not None else convert)
    if not info.has_audio:
        asm.end_audio()

    def clock(seconds: float) -> None:
        stats.times.decode += seconds

    decoded = media.iter_av(path, spec.sample_rate, info, av_offset_s, clock,
                            video=iter(video) if video is not None else None)
    try:
        while True:
            # Thread CPU of decoding and window assembly, less the resizing (charged to preprocess).
            c0, p0 = time.thread_time(), stats.cpu.preprocess
            decoded_item = next(decoded, None)
            if decoded_item is None:
                stats.cpu.decode += time.thread_time() - c0
                break
            kind, t, item = decoded_item
            got = asm.add_video_frame(t, item) if kind == VIDEO else asm.add_audio(t, item)
            stats.cpu.decode += time.thread_time() - c0 - (stats.cpu.preprocess - p0)
            if got:
                yield got
    finally:
        close = getattr(decoded, "close", None)  # a generator: close its containers now, in this thread,
        if close is not None:                     # also when the consumer stopped early
            close()
        if video is not None:
            video.close()
            stats.split_at = video.split_at
            # The second half's resizing (its decoding is in the process CPU run_file counts).
            for mine, theirs in ((stats.times, video.second_stats.times), (stats.cpu, video.second_stats.cpu)):
                mine.preprocess += theirs.preprocess
    # A file cut short (a recorder that died) must not pass as complete footage.
    media.check_decoded_length(info, asm.video_end, asm.audio_end if info.has_audio else None)
    tail = asm.finish()
    stats.frames_converted = asm.frames_converted
    if tail:
        yield tail


@dataclass(frozen=True)
class _End:
    """The producer's last message: it ended, normally or with ``failure``."""

    failure: BaseException | None


class Prefetcher(Iterator[T]):
    """``items`` produced by a background thread, started now, at most ``depth`` ahead of the consumer.

    Same items, same order; an exception raised by ``items`` is raised here after the items before
    it. :meth:`close` (also when the consumer stops early: an error, Ctrl-C) tells the producer to
    stop, closes ``items`` in the producer's own thread (so a decoder's container is closed) and waits
    for it.
    """

    def __init__(self, items: Iterator[T], depth: int, name: str = "edgeav-prefetch") -> None:
        self._q: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._done = False
        self._items = items
        self._worker = threading.Thread(target=self._produce, name=name, daemon=True)
        self._worker.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        failure: BaseException | None = None
        try:
            for item in self._items:
                if not self._put(item):
                    return
        except BaseException as exc:  # handed to the consumer, which raises it in its own thread
            failure = exc
        finally:
            close = getattr(self._items, "close", None)
            if close is not None:
                close()
        self._put(_End(failure))

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        item = self._q.get()
        if isinstance(item, _End):
            self.close()
            if item.failure is not None:
                raise item.failure
            raise StopIteration
        return item  # type: ignore[no-any-return]

    def close(self) -> None:
        self._done = True
        self._stop.set()
        self._worker.join()


def prefetched(items: Iterator[T], depth: int, name: str = "edgeav-prefetch") -> Iterator[T]:
    """``items`` through a :class:`Prefetcher` that starts at the first ``next()`` (a generator: closing it
    closes the prefetcher)."""
    p = Prefetcher(items, depth, name)
    try:
        yield from p
    finally:
        p.close()
