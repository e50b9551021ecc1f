"""The one pipeline: windows -> embeddings -> decisions -> records, for live cameras and replayed files alike.

A source yields timestamped items on one clock; :class:`CameraPipeline` assembles them
into windows (:mod:`edgeav.windows`), embeds them in batches with the bundle's ONNX
encoders, runs the event localiser and the anomaly decider (:mod:`edgeav.decide`) and
hands records (:mod:`edgeav.records`) to its sinks. Replay feeds a file source
and never drops; the daemon feeds live sources through a bounded queue that drops the
oldest windows and counts them (see :class:`CameraPipeline.submit`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

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
from edgeav.reader import FileReader, PipelineStats
from edgeav.records import RecordBuilder
from edgeav.windows import AUDIO, VIDEO, Window


class Sink(Protocol):
    """Where records go: JSON-lines files, MQTT, the index, a report."""

    def window(self, record: dict[str, Any]) -> None: ...
    def event(self, record: dict[str, Any]) -> None: ...
    def alert(self, record: dict[str, Any]) -> None: ...


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
