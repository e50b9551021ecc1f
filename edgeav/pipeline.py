"""The one pipeline: windows -> embeddings -> decisions -> records, for live cameras and replayed files alike.

A source yields timestamped items on one clock; :class:`CameraPipeline` assembles them
into windows (:mod:`edgeav.windows`), embeds them in batches with the bundle's ONNX
encoders, runs the event localiser and the anomaly decider (:mod:`edgeav.decide`) and
hands records (:mod:`edgeav.records`) to its sinks. Replay feeds a file source
and never drops; the daemon feeds live sources through a bounded queue that drops the
oldest windows and counts them (see :class:`CameraPipeline.submit`).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from edgeav.bundle import (
    DERIVED_FEATURES,
    MODALITIES,
    SIGNAL_FEATURES,
    Bundle,
    feature_name,
    joint_embedding,
)
from edgeav.decide import AnomalyDecider, AnomalyParams, EventLocalizer, EventParams
from edgeav.index import IndexWriter
from edgeav.labels import BACKGROUND
from edgeav.motion import HELD_FEATURES, SpeedHold
from edgeav.preprocess import FrameResizer, WindowSpec
from edgeav.records import RecordBuilder
from edgeav.windows import AUDIO, VIDEO, Window, WindowAssembler

T = TypeVar("T")


class Sink(Protocol):
    """Where records go: JSON-lines files, MQTT, the index, a report."""

    def window(self, record: dict[str, Any]) -> None: ...
    def event(self, record: dict[str, Any]) -> None: ...
    def alert(self, record: dict[str, Any]) -> None: ...


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


def decision_params(config: Any | None) -> tuple[EventParams, AnomalyParams]:
    """The config's ``events`` and ``anomaly`` sections as the deciders' parameters (defaults without a config).

    Replay and the daemon both call this: one mapping for live and offline. The anomaly threshold comes
    from the bundle's calibration (:class:`CameraPipeline`), re-set for the config's false-alarm rate when
    it gives one.
    """
    if config is None:
        return EventParams(), AnomalyParams()
    ev, an = config.events, config.anomaly
    events = EventParams(start_threshold=ev.start_threshold, end_threshold=ev.end_threshold,
                         start_windows=ev.start_windows, end_windows=ev.end_windows)
    return events, AnomalyParams(false_alarms_per_hour=an.false_alarms_per_hour, min_duration_s=an.min_duration_s,
                                 cooldown_s=an.cooldown_s, escalation=an.escalation)


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


class CameraPipeline:
    """Everything after capture for one camera."""

    def __init__(self, camera: str, bundle: Bundle, sinks: list[Sink], *, events: EventParams | None = None,
                 anomaly: AnomalyParams | None = None, wall_origin: float | None = None, source_id: str = "",
                 batch_size: int = 16, index: IndexWriter | None = None, embed_threads: int = 0) -> None:
        # ``embed_threads``: embed batches in that many worker threads, ahead of the decisions, which stay in
        # the caller's thread and in window order (embedding is stateless: the same arrays either way).
        # Replay uses it so that onnxruntime runs on every core once decoding ends instead of on one; 0
        # embeds in the caller (the daemon's cameras each have their own thread already).
        self.camera = camera
        self.bundle = bundle
        self.sinks = sinks
        self.batch_size = batch_size
        self.stats = PipelineStats()
        self.records = RecordBuilder(camera, bundle.bundle_id, wall_origin, source=source_id)
        head = bundle.event_head
        self.class_names = list(head.class_names) if head is not None else []
        params = events or EventParams()
        if head is not None:
            thresholds = dict(zip(head.class_names, map(float, head.thresholds), strict=True))
            params = replace(params, class_thresholds=thresholds)
        self.localizer = EventLocalizer(self.class_names, params) if head is not None else None
        self.decider = None
        self._anomaly_features = bundle.anomaly.features if bundle.anomaly is not None else ()
        self._holds = {name: SpeedHold(bundle.window_spec.hop_s) for name in HELD_FEATURES}  # one per held feature
        if bundle.anomaly is not None:
            base = anomaly or AnomalyParams()
            threshold = base.threshold
            if threshold is None and base.false_alarms_per_hour is not None:
                threshold = bundle.anomaly.threshold_for(base.false_alarms_per_hour, bundle.window_spec.hop_s)
            elif threshold is None:
                threshold = bundle.anomaly.threshold
            self.decider = AnomalyDecider(replace(base, threshold=threshold))
        self._batch: list[Window] = []
        self._embedder = (ThreadPoolExecutor(embed_threads, thread_name_prefix="edgeav-embed")
                          if embed_threads > 0 else None)
        # Batches being embedded, oldest first; at most ``embed_threads + 1`` so the windows waiting in
        # memory stay bounded (the caller waits for the oldest instead of queueing more).
        self._embedding: deque[tuple[list[Window], Future[tuple[dict[str, np.ndarray], float, float]]]] = deque()
        self._max_embedding = embed_threads + 1
        self.index = index
        self._index_source = index.source_id(camera, source_id) if index is not None else 0
        if index is not None:
            self.sinks = [*sinks, _IndexRecords(index, self._index_source)]

    # -------------------------------------------------------------------- feeding
    def submit(self, windows: list[Window]) -> None:
        """Queue windows; they are processed in batches of ``batch_size``, in order."""
        self._batch.extend(windows)
        while len(self._batch) >= self.batch_size:
            self._process(self._batch[: self.batch_size])
            del self._batch[: self.batch_size]

    def close(self) -> None:
        """Process what is queued and close open events."""
        if self._batch:
            self._process(self._batch)
            self._batch = []
        while self._embedding:
            self._decide_oldest()
        if self._embedder is not None:
            self._embedder.shutdown()
        if self.localizer is not None:
            t0, c0 = time.perf_counter(), time.thread_time()
            for change in self.localizer.flush():
                self._emit_event(change)
            self.stats.add("decide", t0, c0)

    # ----------------------------------------------------------------- processing
    def _embed(self, windows: list[Window]) -> tuple[dict[str, np.ndarray], float, float]:
        """Every feature the pipeline uses, ``[len(windows), ...]`` each; NaN rows where a window lacks
        the feature's modality. With the wall and thread CPU seconds it took (charged by the caller's
        thread: the stats are not shared between threads)."""
        t0, c0 = time.perf_counter(), time.thread_time()
        out: dict[str, np.ndarray] = {}
        for m in MODALITIES:
            inputs = [w.audio if m == AUDIO else w.frames for w in windows]
            idx = [i for i, x in enumerate(inputs) if x is not None]
            outputs = self.bundle.outputs_for(m, self._anomaly_features)
            x = np.stack([inputs[i] for i in idx]) if idx else None
            got = self.bundle.run(m, x, outputs) if x is not None else None
            named = list(zip((feature_name(m, o) for o in outputs), got or [None] * len(outputs), strict=True))
            for name, modality in SIGNAL_FEATURES.items():  # measured on the inputs; the speeds held in _decide
                if modality == m and name in self._anomaly_features:
                    named.append((name, self.bundle.measure(name, x) if x is not None else None))
            for name, value in named:
                # [B, D] or, for a bag feature (audio_patches), [B, P, D]; all NaN: no window had the modality
                shape = value.shape[1:] if value is not None else (self.bundle.feature_dims.get(name, 1),)
                full = np.full((len(windows), *shape), np.nan, np.float32)
                if value is not None:
                    full[idx] = value
                out[name] = full
        return out, time.perf_counter() - t0, time.thread_time() - c0

    def _process(self, windows: list[Window]) -> None:
        if self._embedder is None:
            self._decide(windows, self._embed(windows))
            return
        self._embedding.append((windows, self._embedder.submit(self._embed, windows)))
        while len(self._embedding) >= self._max_embedding:
            self._decide_oldest()

    def _decide_oldest(self) -> None:
        windows, future = self._embedding.popleft()
        self._decide(windows, future.result())

    def _decide(self, windows: list[Window], embedded: tuple[dict[str, np.ndarray], float, float]) -> None:
        feats, wall, cpu = embedded
        self.stats.times.embed += wall
        self.stats.cpu.embed += cpu
        t0, c0 = time.perf_counter(), time.thread_time()
        # A missing modality's embedding is zero for the index and the event head, NaN for the anomaly scorer.
        audio_emb = np.nan_to_num(feats[AUDIO], nan=0.0)
        video_emb = np.nan_to_num(feats[VIDEO], nan=0.0)
        both = np.array([w.audio is not None and w.frames is not None for w in windows])
        joint = joint_embedding(audio_emb, video_emb)
        for name, derive in DERIVED_FEATURES.items():
            if name == "joint" or name in self._anomaly_features:
                value = joint if name == "joint" else derive(audio_emb, video_emb)
                feats[name] = np.where(both[:, None], value, np.nan).astype(np.float32)
        t_starts = np.array([w.t_start for w in windows])
        for name, hold in self._holds.items():  # held here, in window order, whichever thread measured them
            if name in feats:
                feats[name] = hold.apply(t_starts, feats[name])
        if self.index is not None:
            self.index.add(self._index_source, t_starts, np.array([w.t_end for w in windows]), audio_emb, video_emb)
        probs = self.bundle.event_head.predict_proba(joint) if self.bundle.event_head is not None else None
        mem = self.bundle.anomaly
        scores = mem.score({f: feats[f] for f in mem.features}) if mem is not None else None
        for i, w in enumerate(windows):
            self.stats.windows += 1
            self.stats.missing_audio += AUDIO in w.missing
            self.stats.missing_video += VIDEO in w.missing
            p = probs[i] if probs is not None and both[i] else None
            label = self.class_names[int(np.argmax(p))] if p is not None else None
            if label is not None:
                self.stats.labels[label] = self.stats.labels.get(label, 0) + 1
            score = None if scores is None or np.isnan(scores[i]) else float(scores[i])
            is_anomaly = score is not None and self.decider is not None and score >= self.decider.params.threshold
            record = self.records.window(
                w.t_start, w.t_end, label=label,
                probs=None if p is None else dict(zip(self.class_names, map(float, p), strict=True)),
                anomaly_score=score, anomaly=is_anomaly, missing=w.missing)
            for sink in self.sinks:
                sink.window(record)
            if self.localizer is not None:
                for change in self.localizer.update(w.t_start, w.t_end, p):
                    self._emit_event(change)
            if self.decider is not None:
                incident = self.decider.update(w.t_start, w.t_end, score)
                if incident is not None:
                    self.stats.alerts += 1
                    rec = self.records.alert(incident, self.decider.params.threshold)
                    for sink in self.sinks:
                        sink.alert(rec)
        self.stats.add("decide", t0, c0)

    def _emit_event(self, change: Any) -> None:
        if change.label == BACKGROUND:
            return
        if change.phase == "start":
            self.stats.events += 1
        rec = self.records.event(change)
        for sink in self.sinks:
            sink.event(rec)


@dataclass
class _IndexRecords:
    """Keeps events and alerts beside the embeddings, so `edgeav search --event ID` can find them."""

    index: IndexWriter
    source: int

    def window(self, record: dict[str, Any]) -> None:
        pass

    def event(self, record: dict[str, Any]) -> None:
        if record["phase"] == "end":
            self.index.add_record({"source": self.source, "record": record})

    def alert(self, record: dict[str, Any]) -> None:
        self.index.add_record({"source": self.source, "record": record})


# ------------------------------------------------------------------------------------------- file source

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
        from edgeav import media, splitdecode

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


def run_file(path: str | Path, pipeline: CameraPipeline, av_offset_s: float = 0.0,
             progress: Callable[[float], None] | None = None, *, prefetch: bool = True,
             reader: FileReader | None = None) -> PipelineStats:
    """Replay one file through ``pipeline``: every window, none dropped, in order.

    ``reader``: the file's :class:`FileReader` when the caller started decoding earlier (it must be for
    ``path`` and the bundle's window spec); else one is made here, decoding in the background unless
    ``prefetch`` is false.
    """
    spec = pipeline.bundle.window_spec
    if reader is None:
        # Two batches ahead: the decoder fills the next batch while the current one is embedded.
        reader = FileReader(path, spec, av_offset_s=av_offset_s, depth=2 * pipeline.batch_size, background=prefetch)
    elif reader.spec != spec or reader.path != Path(path):
        raise ValueError(f"reader for {reader.path} with {reader.spec} given to run {path} with {spec}")
    stats = pipeline.stats
    with reader:
        for got in reader:
            pipeline.submit(got)
            if progress is not None:
                progress(got[-1].t_end)
    pipeline.close()
    stats.absorb_decoding(reader.stats)
    stats.run_cpu += time.process_time() - reader.cpu_t0 - reader.other_cpu
    return stats


def _file_windows(path: str | Path, info: Any, spec: WindowSpec, stats: PipelineStats,
                  av_offset_s: float, split: bool = False) -> Iterator[list[Window]]:
    """A file's windows as the decoder completes them (lists, in order); the last list holds the tail.

    ``split``: the video's second half decodes in another thread (:mod:`edgeav.splitdecode`), where the
    file allows it; the windows are the same.
    """
    from edgeav import media, splitdecode

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
