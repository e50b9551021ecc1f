"""The live driver: one camera's sources -> the shared window assembler -> the one pipeline.

::

  RtspSource thread ──┐ (frames, camera audio, packets -> packet listeners)
                      ├─> capture queue ─> assembler thread ─> window queue ─> inference thread
  MicrophoneSource ───┘   (unbounded,       (WindowAssembler,    (bounded:       (CameraPipeline:
  thread                   put never         expire(), skew)      oldest dropped)  embed, decide, sinks)
                           blocks)

Capture threads never block: a put on the capture queue is O(1), and the assembler thread
only keeps frames a window will pick. When inference falls behind, the window queue drops the
OLDEST windows and counts them (the newest are what an operator needs), replay never drops.
A window whose deadline passed without one modality is emitted with it listed in ``missing``
(a dead microphone never stalls the video); a window with neither is not embedded at all.

Threads, not processes, by measurement: ``edgeav bench-live`` (one 1280x720, 25 fps H.264
camera with 16 kHz AAC, over RTSP/TCP, untrained full-size encoders) measured this whole
process at about 6 % of one core on this 2-core box, with a median onset-to-decision latency of
0.2 s (p95 0.42 s). Decoding (FFmpeg), resizing (OpenCV) and embedding (onnxruntime) release the
GIL, so the GIL-held share is smaller still: it would take well over a dozen such cameras before
the GIL, rather than decoding, limited one process. A process per camera would instead copy every
decoded frame between processes (1.4 MB per 720p frame, 35 MB/s per camera) and load the models
once per camera. So: one process, a few threads per camera (capture, assembler, inference);
FFmpeg and onnxruntime keep their own thread pools.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from edgeav.bundle import Bundle
from edgeav.config import CameraConfig, mask_url
from edgeav.decide import AnomalyParams, EventParams
from edgeav.errors import UserError
from edgeav.pipeline import CameraPipeline, Sink
from edgeav.reader import frame_converter
from edgeav.sources.base import STREAMING, Backoff, SourceThread
from edgeav.sources.microphone import MicrophoneSource
from edgeav.sources.rtsp import RtspSource
from edgeav.sources.sync import SkewMeter, mean_luma
from edgeav.windows import AUDIO, VIDEO, Window, WindowAssembler

log = logging.getLogger(__name__)

PacketListener = Callable[[Any], None]

# Seconds past a window's end to wait for a late modality before emitting it flagged as missing.
# Above the normal capture latency of both paths (RTSP over TCP: ~0.1-0.3 s; microphone: ~0.05 s).
DEFAULT_DEADLINE_S = 1.0
EXPIRE_EVERY_S = 0.1
MAX_CAPTURE_BACKLOG = 128  # items between capture and the assembler (about 4 s of 25 fps video + audio)


class _Capture:
    """The sink the sources call from their threads: O(1) puts, never blocking."""

    def __init__(self, q: queue.SimpleQueue, listeners: list[PacketListener]) -> None:
        self.q = q
        self.listeners = listeners
        self.frames_dropped = 0
        self._failed: set[int] = set()

    def video(self, t: float, frame: Any) -> None:
        # Decoded frames are big (1.4 MB at 720p): if the assembler thread is starved, shed new frames
        # here rather than let memory grow; audio blocks are small and always kept.
        if self.q.qsize() >= MAX_CAPTURE_BACKLOG:
            self.frames_dropped += 1
            return
        self.q.put((VIDEO, t, frame))

    def audio(self, t0: float, samples: np.ndarray) -> None:
        self.q.put((AUDIO, t0, samples))

    def packet(self, packet: Any) -> None:
        for fn in self.listeners:
            try:
                fn(packet)
            except Exception:  # a listener's bug must not stop capture; say so once per listener
                if id(fn) not in self._failed:
                    self._failed.add(id(fn))
                    log.exception("packet listener %r failed (further failures are logged at debug level)", fn)
                else:
                    log.debug("packet listener %r failed", fn, exc_info=True)


class LiveCamera:
    """One configured camera, live: start it, read its health, stop it."""

    def __init__(self, cam: CameraConfig, bundle: Bundle, sinks: list[Sink], events: EventParams | None = None,
                 anomaly: AnomalyParams | None = None, queue_windows: int = 64, *,
                 deadline_s: float = DEFAULT_DEADLINE_S, stall_s: float = 5.0, mic_stall_s: float = 2.0,
                 backoff: Callable[[], Backoff] = Backoff, **pipeline_kw: Any) -> None:
        if cam.video.url is None:
            raise UserError(f"camera {cam.name}: live capture needs video.url (a camera stream); "
                            "footage files are played with `edgeav replay`")
        if queue_windows < 1:
            raise ValueError("queue_windows must be >= 1")
        self.cam = cam
        self.name = cam.name
        self.spec = bundle.window_spec
        self.pipeline = CameraPipeline(cam.name, bundle, sinks, events=events, anomaly=anomaly, wall_origin=0.0,
                                       source_id=mask_url(cam.video.url), **pipeline_kw)  # no passwords in records
        self.deadline_s = deadline_s
        self.queue_windows = queue_windows
        self._listeners: list[PacketListener] = []
        self._captures: queue.SimpleQueue = queue.SimpleQueue()
        capture = self._capture = _Capture(self._captures, self._listeners)
        av_offset_s = cam.av_offset_ms / 1000.0
        source = cam.audio.source
        self.has_audio = source != "none"
        self.video_source = RtspSource(cam.name, cam.video.url, capture, want_audio=source == "camera",
                                       av_offset_s=av_offset_s, stall_s=stall_s, backoff=backoff(),
                                       sample_rate=self.spec.sample_rate)
        self.mic: MicrophoneSource | None = None
        if source == "microphone":
            self.mic = MicrophoneSource(cam.name, capture, device=cam.audio.device, device_rate=cam.audio.sample_rate,
                                        av_offset_s=av_offset_s, stall_s=mic_stall_s, backoff=backoff(),
                                        sample_rate=self.spec.sample_rate)
        self.skew = SkewMeter(self.spec.sample_rate)
        self._windows: deque[Window] = deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.windows_dropped = 0
        self.windows_empty = 0         # neither modality: not embedded (the camera was down)
        self.windows_video_only = 0    # emitted without audio while audio was configured
        self.windows_emitted = 0
        self.last_window_end: float | None = None
        self._last_progress = time.time()
        self._started = False

    # ------------------------------------------------------------------ control
    def add_packet_listener(self, fn: PacketListener) -> None:
        """``fn(packet)`` gets every demuxed encoded packet (video and audio; ``packet.stream`` tells which).

        Called from the capture thread: it must be quick (append to a ring buffer) and must not
        keep the packet's buffer for longer than it needs. Exceptions are logged, not raised.
        """
        self._listeners.append(fn)

    def start(self) -> None:
        if self._started:
            raise RuntimeError("already started")
        self._started = True
        for target, name in ((self._assemble_loop, "assemble"), (self._infer_loop, "infer")):
            th = threading.Thread(target=target, name=f"{name}-{self.name}", daemon=True)
            th.start()
            self._threads.append(th)
        for src in self._sources():
            src.start()

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Stop capture, process the windows already queued, close open events. True when all threads ended.

        An RTSP open or read in progress is interrupted (``RtspSource.stop``), so a stalled camera does not
        hold the stop for its stall or open timeout: well under a second, against the daemon's 10 s budget.
        """
        deadline = time.monotonic() + timeout_s
        for src in self._sources():
            src.stop()
        ok = all([src.join(max(0.0, deadline - time.monotonic())) for src in self._sources()])  # join each
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for th in self._threads:
            th.join(max(0.0, deadline - time.monotonic()))
            ok = ok and not th.is_alive()
        if ok:
            self.pipeline.close()
        return ok

    def _sources(self) -> list[SourceThread]:
        return [self.video_source] + ([self.mic] if self.mic is not None else [])

    # ------------------------------------------------------------------ health
    def health(self) -> dict[str, Any]:
        """A JSON-ready snapshot: per-source state and counters, windows, drops, queue, skew, progress."""
        video = self.video_source.status.as_dict()
        sources: dict[str, Any] = {"video": video}
        if self.mic is not None:
            sources["audio"] = self.mic.status.as_dict()
        elif self.video_source.audio_status is not None:
            sources["audio"] = self.video_source.audio_status.as_dict()
        stats = self.pipeline.stats
        with self._cond:
            depth = len(self._windows)
        return {
            "camera": self.name,
            "streaming": all(s["state"] == STREAMING for s in sources.values()),
            "sources": sources,
            "frames": video["frames"],
            "audio_blocks": sources["audio"]["audio_blocks"] if "audio" in sources else 0,
            "windows": stats.windows,
            "windows_dropped": self.windows_dropped,
            "frames_shed": self._capture.frames_dropped,   # the assembler thread could not keep up
            "windows_empty": self.windows_empty,
            "windows_video_only": self.windows_video_only,
            "missing_audio": stats.missing_audio,
            "missing_video": stats.missing_video,
            "queue_depth": depth,
            "queue_capacity": self.queue_windows,
            "reconnects": sum(s["reconnects"] for s in sources.values()),
            **self.skew.report(),
            "last_progress": round(self._last_progress, 3),
            "last_window_end": self.last_window_end,
        }

    def progressing(self, max_age_s: float) -> bool:
        """True while every thread is alive and something moved within ``max_age_s``.

        Movement is a window processed, or a source changing state (a camera that is down keeps
        retrying, which is the right thing; a hung read or a dead thread is not).
        """
        if not self._started or self._stop.is_set():
            return False
        threads_ok = all(th.is_alive() for th in self._threads) and all(s.alive for s in self._sources())
        last = max([self._last_progress] + [s.status.state_since for s in self._sources()])
        return threads_ok and time.time() - last <= max_age_s

    # ------------------------------------------------------------------ threads
    def _assemble_loop(self) -> None:
        convert = frame_converter(self.spec, self.pipeline.stats)
        asm: WindowAssembler | None = None
        next_expire = 0.0
        last_video_t = -math.inf
        while not self._stop.is_set():
            try:
                kind, t, item = self._captures.get(timeout=EXPIRE_EVERY_S)
            except queue.Empty:
                kind = None
            out: list[Window] = []
            if kind is not None:
                if asm is None:  # windows on the global grid k*hop, starting at the first capture
                    origin = math.floor(t / self.spec.hop_s) * self.spec.hop_s
                    asm = WindowAssembler(self.spec, convert, has_audio=self.has_audio, origin=origin)
                if kind == VIDEO and t <= last_video_t:
                    pass  # a reconnect onto a clock that stepped back: the assembler needs time to move forward
                elif kind == VIDEO:
                    last_video_t = t
                    self.skew.video(t, mean_luma(item))
                    out += asm.add_video_frame(t, item)
                else:
                    self.skew.audio(t, item)
                    out += asm.add_audio(t, item)
            now = time.time()
            if asm is not None and now >= next_expire:
                next_expire = now + EXPIRE_EVERY_S
                out += asm.expire(now, self.deadline_s)
            if out:
                self._enqueue(out)

    def _enqueue(self, windows: list[Window]) -> None:
        keep = []
        for w in windows:
            if VIDEO in w.missing and (AUDIO in w.missing or not self.has_audio):
                self.windows_empty += 1
                continue
            self.windows_video_only += self.has_audio and AUDIO in w.missing and VIDEO not in w.missing
            keep.append(w)
        if not keep:
            return
        with self._cond:
            for w in keep:
                if len(self._windows) >= self.queue_windows:
                    self._windows.popleft()  # inference is behind: the oldest window is the one to lose
                    self.windows_dropped += 1
                self._windows.append(w)
            self._cond.notify()

    def _infer_loop(self) -> None:
        while True:
            with self._cond:
                while not self._windows and not self._stop.is_set():
                    self._cond.wait()
                if not self._windows and self._stop.is_set():
                    return
                batch = [self._windows.popleft()
                         for _ in range(min(len(self._windows), self.pipeline.batch_size))]
            # One batch of exactly what is queued: no window waits for a full batch live.
            size = self.pipeline.batch_size
            self.pipeline.batch_size = len(batch)
            try:
                self.pipeline.submit(batch)
            except Exception:  # keep the camera alive; the log says what broke
                log.exception("camera %s: processing %d windows failed", self.name, len(batch))
            finally:
                self.pipeline.batch_size = size
            self.pipeline.stats.windows_dropped = self.windows_dropped
            self.windows_emitted += len(batch)
            self.last_window_end = batch[-1].t_end
            self._last_progress = time.time()
