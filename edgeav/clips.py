"""Evidence clips: the seconds around an alert, cut from a ring buffer of encoded packets, no re-encoding.

:class:`ClipRecorder` receives every demuxed packet of one camera (video and, where the stream
has it, audio) with its time on the pipeline's clock, and keeps the last few seconds (from a
video keyframe on, so a clip always starts decodable). :meth:`ClipRecorder.request` asks for
``[t_start - pre_s, t_end + post_s]``; once packets past the end have arrived (or a deadline
passed, e.g. the camera went away) a writer thread remuxes the packets into
``<clips_dir>/<camera>/<UTC time>_<alert id>.mp4`` (temporary name, then renamed: a clip
that exists is complete), hashes it, and calls back with ``{"path", "sha256"}`` for the alert.

Packets are copied into the ring as bytes plus timing, so the demuxer's buffers are never
held and overlapping clips never share mutable packets. Memory is bounded by ``max_bytes``.

:func:`enforce_retention` deletes clips oldest first past an age or a total size.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from edgeav.bundle import sha256_file
from edgeav.records import iso_utc

log = logging.getLogger(__name__)

ClipCallback = Callable[[dict[str, str] | None], None]


@dataclass(frozen=True)
class _Packet:
    t: float  # pipeline clock time of the packet's presentation time
    stream: int  # index into ClipRecorder._templates
    data: bytes
    pts: int  # packets without a pts are not kept
    dts: int | None
    duration: int
    keyframe: bool
    time_base: Fraction


@dataclass
class _Request:
    t_from: float
    t_to: float
    name: str
    callback: ClipCallback
    deadline: float  # monotonic: write with what is there by then




class ClipRecorder:
    """Ring buffer of one camera's encoded packets and the writer of its evidence clips."""

    def __init__(self, camera: str, clips_dir: str | Path, *, pre_s: float = 5.0, post_s: float = 5.0,
                 max_bytes: int = 64 * 2**20, retention: tuple[float, int] | None = None) -> None:
        self.camera = camera
        self.dir = Path(clips_dir) / camera
        self.pre_s = pre_s
        self.post_s = post_s
        self.max_bytes = max_bytes
        self.retention = retention  # (max_age_days, max_bytes) applied to clips_dir after each clip
        self.clips_dir = Path(clips_dir)
        self.written = 0
        self.failed = 0
        self._ring: deque[_Packet] = deque()
        self._ring_bytes = 0
        self._templates: list[Any] = []  # copies of the demuxer's streams, for add_stream_from_template
        self._types: list[str] = []
        self._holder: Any = None
        self._stream_index: dict[int, int] = {}
        self._pending: list[_Request] = []
        self._newest = float("-inf")
        self._lock = threading.Lock()
        self._jobs: queue.Queue[tuple[_Request, list[_Packet], list[Any], Any] | None] = queue.Queue()
        self._writer = threading.Thread(target=self._write_loop, name=f"clips-{camera}", daemon=True)
        self._writer.start()

    # ------------------------------------------------------------------------------ packets in
    def add_packet(self, packet: Any, t: float) -> None:
        """One demuxed packet (``av.Packet``) whose presentation time is ``t`` on the pipeline clock."""
        if packet.size == 0 or packet.pts is None:
            return  # flush packets carry nothing
        stream = packet.stream
        with self._lock:
            key = id(stream)
            if key not in self._stream_index:
                if stream.type in self._types:
                    # A new container (the source reconnected): its packets must not mix with the old ones.
                    self._reset()
                self._stream_index[key] = len(self._templates)
                self._types.append(stream.type)
                # A copy of the stream's codec parameters that outlives the demuxer (a closed input's streams
                # must never be touched again: FFmpeg frees them), held by an output container never written.
                if self._holder is None:
                    self._holder = av.open(io.BytesIO(), "w", format="mp4")
                self._templates.append(self._holder.add_stream_from_template(stream))
            video = stream.type == "video"
            p = _Packet(t, self._stream_index[key], bytes(packet), packet.pts, packet.dts,
                        int(packet.duration or 0), bool(packet.is_keyframe and video), packet.time_base)
            self._ring.append(p)
            self._ring_bytes += len(p.data)
            self._newest = max(self._newest, t)
            self._trim()
            self._dispatch(time.monotonic())

    def _reset(self) -> None:
        self._ring.clear()
        self._ring_bytes = 0
        self._templates = []
        self._types = []
        self._holder = None  # (the old one stays alive in the jobs that still reference its streams)
        self._stream_index = {}

    def _trim(self) -> None:
        """Forget what no clip can need, keeping the ring starting at a video keyframe."""
        keep_from = self._newest - self.pre_s - 1.0
        for r in self._pending:
            keep_from = min(keep_from, r.t_from)
        while self._ring and (self._ring_bytes > self.max_bytes or self._ring[0].t < keep_from):
            # Drop up to (not including) the next video keyframe: the ring must start decodable.
            nxt = next((i for i, p in enumerate(self._ring) if i > 0 and p.keyframe), None)
            if nxt is None or (self._ring_bytes <= self.max_bytes and self._ring[nxt].t > keep_from):
                break
            for _ in range(nxt):
                self._ring_bytes -= len(self._ring.popleft().data)

    # ------------------------------------------------------------------------------ requests
    def request(self, t_start: float, t_end: float, name: str, callback: ClipCallback,
                timeout_s: float | None = None) -> None:
        """Ask for the clip around ``[t_start, t_end]``; ``callback`` gets ``{"path", "sha256"}`` or None."""
        wait = self.post_s + (5.0 if timeout_s is None else timeout_s)
        req = _Request(t_start - self.pre_s, t_end + self.post_s, name, callback, time.monotonic() + wait)
        with self._lock:
            self._pending.append(req)
            self._dispatch(time.monotonic())

    def poll(self) -> None:
        """Write clips whose deadline passed (the camera stopped sending); call now and then."""
        with self._lock:
            self._dispatch(time.monotonic())

    def flush(self, timeout_s: float = 5.0) -> None:
        """Write every pending clip with what the ring holds and wait for the writer (shutdown)."""
        with self._lock:
            self._dispatch(float("inf"))
        self._jobs.put(None)
        self._writer.join(timeout=timeout_s)

    def _dispatch(self, now: float) -> None:
        ready = [r for r in self._pending if self._newest >= r.t_to or now >= r.deadline]
        for r in ready:
            self._pending.remove(r)
            self._jobs.put((r, self._select(r), list(self._templates), self._holder))

    def _select(self, r: _Request) -> list[_Packet]:
        packets = list(self._ring)
        keyframes = [i for i, p in enumerate(packets) if p.keyframe]
        if not keyframes:
            return []
        # From the last keyframe at or before the clip's start (else the first one there is), to the end.
        before = [i for i in keyframes if packets[i].t <= r.t_from]
        start = before[-1] if before else keyframes[0]
        return [p for p in packets[start:] if p.t <= r.t_to]

    # ------------------------------------------------------------------------------ writing
    def _write_loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            req, packets, templates, _holder = job  # (the holder keeps the templates' streams alive)
            result = None
            try:
                result = self._write(req, packets, templates)
            except Exception as exc:  # a clip must never take the daemon down
                self.failed += 1
                log.error("clips: %s: could not write the clip %s: %s", self.camera, req.name, exc)
            try:
                req.callback(result)
            except Exception:
                log.exception("clips: callback failed")

    def _write(self, req: _Request, packets: list[_Packet], templates: list[Any]) -> dict[str, str] | None:
        if not packets:
            self.failed += 1
            log.warning("clips: %s: no video around %s in the buffer; alert sent without a clip",
                        self.camera, req.name)
            return None
        self.dir.mkdir(parents=True, exist_ok=True)
        stamp = iso_utc(req.t_from + self.pre_s).replace(":", "").replace("-", "")
        final = self.dir / f"{stamp}_{req.name}.mp4"
        tmp = final.with_name(f".{final.name}.part")
        # One origin for every stream: the earliest decode time, so no timestamp goes negative.
        origin = min(float((p.dts if p.dts is not None else p.pts) * p.time_base) for p in packets)
        try:
            with av.open(str(tmp), "w", format="mp4") as out:
                streams = [out.add_stream_from_template(t) for t in templates]
                for p in packets:
                    shift = round(origin / p.time_base)
                    pkt = av.Packet(p.data)
                    pkt.pts = p.pts - shift
                    pkt.dts = p.dts - shift if p.dts is not None else None
                    pkt.duration = p.duration
                    pkt.time_base = p.time_base
                    pkt.is_keyframe = p.keyframe
                    pkt.stream = streams[p.stream]
                    out.mux(pkt)
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        digest = sha256_file(final)
        self.written += 1
        log.info("clips: %s: wrote %s (%d packets)", self.camera, final, len(packets))
        if self.retention is not None:
            enforce_retention(self.clips_dir, *self.retention, keep=final)
        return {"path": str(final), "sha256": digest}


def enforce_retention(clips_dir: str | Path, max_age_days: float, max_bytes: int,
                      keep: Path | None = None, now: float | None = None) -> int:
    """Delete clips older than ``max_age_days`` and then the oldest until the total is within ``max_bytes``.

    0 disables a limit. ``keep`` (the clip just written) is never deleted. Returns how many were deleted.
    """
    root = Path(clips_dir)
    if not root.is_dir():
        return 0
    files = []
    for path in root.rglob("*.mp4"):
        try:
            st = path.stat()
        except OSError:
            continue
        files.append((st.st_mtime, st.st_size, path))
    files.sort()
    now = time.time() if now is None else now
    total = sum(size for _m, size, _p in files)
    deleted = 0
    for mtime, size, path in files:
        too_old = max_age_days > 0 and now - mtime > max_age_days * 86400
        too_big = max_bytes > 0 and total > max_bytes
        if not (too_old or too_big) or (keep is not None and path == keep):
            continue
        try:
            path.unlink()
        except OSError as exc:
            log.warning("clips: cannot delete %s: %s", path, exc.strerror)
            continue
        total -= size
        deleted += 1
    if deleted:
        log.info("clips: retention deleted %d clip(s) in %s", deleted, root)
    return deleted
