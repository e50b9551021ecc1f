"""An RTSP camera through PyAV (FFmpeg): video, and the camera's own audio track when asked for.

Transport is RTSP over TCP (interleaved: one connection, no UDP ports to open or lose through a
NAT), with socket timeouts, a stall watchdog (no video frame for ``stall_s`` seconds) and
reconnects with exponential backoff, a cap and jitter, forever (:mod:`edgeav.sources.base`).
Only the streams needed are requested from the camera (``allowed_media_types``), so a camera
whose audio we do not use never sends it.

The common clock (Unix seconds), per stream (:class:`StreamClock`):

* once the camera has sent an RTCP sender report, FFmpeg attaches ``prft`` side data (producer
  reference time) to each packet: the sender's wall clock at that packet's timestamp. Frames are
  put at ``pts + (prft - packet pts)``: capture time on the camera's clock, independent of network
  and decoder delay, and the same for its audio and video streams. Used only while the camera's
  clock agrees with ours (within ``MAX_CLOCK_DISAGREEMENT_S``); a camera without NTP falls back to
* arrival time smoothed against the stream's own timestamps: ``offset = min(arrival - dts)``, the
  least-delayed packet bounds the capture time; the offset may creep up slowly (clock drift)
  and snaps down whenever a packet arrives earlier than predicted.

Decoding uses FFmpeg's slice threads, not frame threads: frame threading buffers a frame per
thread, which adds about 0.1 s of latency live (design.md section 7).
"""

from __future__ import annotations

import contextlib
import logging
import struct
import time
from typing import Any

import av
import numpy as np

from edgeav.config import mask_url
from edgeav.preprocess import AUDIO_SAMPLE_RATE
from edgeav.sources import av_interrupt
from edgeav.sources.base import (
    CONNECTING,
    STALLED,
    STREAMING,
    Backoff,
    CaptureSink,
    SourceStatus,
    SourceThread,
)

log = logging.getLogger(__name__)

# A camera whose RTCP wall clock is further than this from ours is not NTP-synced: use arrival times.
MAX_CLOCK_DISAGREEMENT_S = 3.0
# How fast the arrival-based offset may creep upwards (s per s): well above any crystal's drift,
# well below a network delay change, so queueing spikes do not leak into the timestamps.
ARRIVAL_DRIFT_PER_S = 0.002
# Audio blocks closer than this to the end of the previous one are taken as continuous.
AUDIO_CONTINUITY_S = 0.05


def prft_wallclock(packet: Any) -> float | None:
    """The sender's wall clock (Unix seconds) at ``packet``'s timestamp, from its ``prft`` side data."""
    if not packet.has_sidedata("prft"):
        return None
    raw = bytes(packet.get_sidedata("prft"))
    if len(raw) < 8:
        return None
    (wallclock_us,) = struct.unpack_from("<q", raw)  # AVProducerReferenceTime.wallclock, microseconds
    return wallclock_us / 1e6


class StreamClock:
    """Maps one stream's timestamps (seconds) to the common clock; see the module docstring."""

    def __init__(self, trust_sender: bool = True) -> None:
        self.trust_sender = trust_sender
        self.mode = "none"
        self._offset: float | None = None
        self._arrival_offset: float | None = None
        self._last_arrival = 0.0
        self.warned = False

    def observe(self, pts_s: float, dts_s: float, arrival: float, sender_wall: float | None) -> None:
        """Learn from one packet: its timestamps, when it arrived, and the sender's clock if known."""
        a_off = arrival - dts_s
        if self._arrival_offset is None:
            self._arrival_offset = a_off
        else:
            crept = self._arrival_offset + ARRIVAL_DRIFT_PER_S * max(0.0, arrival - self._last_arrival)
            self._arrival_offset = min(crept, a_off)
        self._last_arrival = arrival
        if sender_wall is not None and self.trust_sender:
            if abs(sender_wall - arrival) <= MAX_CLOCK_DISAGREEMENT_S:
                self._offset, self.mode = sender_wall - pts_s, "rtcp"
                return
            if not self.warned:
                self.warned = True
                log.warning("camera clock is %.1f s off ours (no NTP on the camera?): timing by arrival",
                            sender_wall - arrival)
        if self.mode != "rtcp" or sender_wall is not None:
            self._offset, self.mode = self._arrival_offset, "arrival"

    def to_wall(self, pts_s: float) -> float | None:
        return None if self._offset is None else pts_s + self._offset


class RtspSource(SourceThread):
    """One RTSP camera. ``want_audio``: also decode the camera's audio track (mono float32 16 kHz)."""

    def __init__(self, name: str, url: str, sink: CaptureSink, *, want_audio: bool, av_offset_s: float = 0.0,
                 stall_s: float = 5.0, open_timeout_s: float = 10.0, backoff: Backoff | None = None,
                 sample_rate: int = AUDIO_SAMPLE_RATE) -> None:
        super().__init__(SourceStatus(name, "rtsp"))
        self.url = url
        self.sink = sink
        self.want_audio = want_audio
        self.av_offset_s = av_offset_s
        self.stall_s = stall_s
        self.open_timeout_s = open_timeout_s
        self.backoff = backoff or Backoff()
        self.sample_rate = sample_rate
        self.audio_status = SourceStatus(name, "camera-audio") if want_audio else None

    def stop(self) -> None:
        """Stop now: a blocked open or read is interrupted (FFmpeg's interrupt callback), not waited for."""
        super().stop()
        th = self._thread
        if th is not None and th.is_alive():
            av_interrupt.interrupt(th)

    # ------------------------------------------------------------------ loop
    def _run(self) -> None:
        first = True
        try:
            while not self.stopping:
                if not first:
                    self.status.set_state(CONNECTING, "reconnecting")
                first = False
                why = self._session()
                if self.stopping:
                    break
                if self.audio_status is not None:
                    self.audio_status.set_state(STALLED, why)
                self._back_off(self.backoff, why)
        finally:
            av_interrupt.release()

    def _open(self) -> av.container.InputContainer:
        options = {
            "rtsp_transport": "tcp",
            "timeout": str(int(self.stall_s * 1e6)),        # socket I/O timeout, microseconds
            "allowed_media_types": "video+audio" if self.want_audio else "video",
            "analyzeduration": "1000000",                     # the camera's SDP says most; do not wait 5 s
            "probesize": "500000",
        }
        # PyAV's own watchdog interrupts a blocking open/read: the stall detector when no data comes at all.
        return av.open(self.url, options=options, timeout=(self.open_timeout_s, self.stall_s))

    def _session(self) -> str:
        """One connection, from open to loss; returns why it ended."""
        try:
            container = self._open()
        except (av.error.FFmpegError, OSError) as exc:
            return f"cannot open {mask_url(self.url)}: {_reason(exc)}"
        try:
            return self._stream(container)
        except (av.error.FFmpegError, OSError) as exc:
            if self.stopping:  # stop() interrupted the read: not a stall
                return "stopped"
            if self.status.state == STREAMING:  # PyAV's read watchdog fired, or the socket died
                self.status.set_state(STALLED, _reason(exc))
            return f"connection lost: {_reason(exc)}"
        finally:
            with contextlib.suppress(av.error.FFmpegError, OSError):
                container.close()

    def _stream(self, container: av.container.InputContainer) -> str:
        if not container.streams.video:
            return "the stream has no video"
        vs = container.streams.video[0]
        vs.thread_type = "SLICE"
        streams: list[Any] = [vs]
        aus = None
        if self.want_audio and container.streams.audio:
            aus = container.streams.audio[0]
            streams.append(aus)
        elif self.want_audio and self.audio_status is not None:
            # Configured `audio: {source: camera}` on a camera that sends no sound: run video-only, say so.
            self.audio_status.last_error = "the camera's stream has no audio track (set audio.source: none?)"
            self.audio_status.set_state(STALLED, self.audio_status.last_error)
        vclock, aclock = StreamClock(), StreamClock()
        resampler = av.AudioResampler(format="flt", layout="mono", rate=self.sample_rate) if aus else None
        audio_next: float | None = None
        last_video_t = -float("inf")
        last_frame_at = time.monotonic()
        got_frame = False
        for packet in container.demux(streams):
            if self.stopping:
                return "stopped"
            now_wall, now = time.time(), time.monotonic()
            if now - last_frame_at > self.stall_s:
                self.status.set_state(STALLED, f"no video frame for {now - last_frame_at:.1f} s")
                return f"stalled: no video frame for {self.stall_s:g} s"
            pts_or_none = packet.pts if packet.pts is not None else packet.dts
            if pts_or_none is None:
                continue  # a flush packet at end of stream
            self.status.packets += 1
            self.sink.packet(packet)
            tb = packet.time_base
            pts = pts_or_none
            dts = packet.dts if packet.dts is not None else pts
            is_video = packet.stream.index == vs.index
            clock = vclock if is_video else aclock
            clock.observe(float(pts * tb), float(dts * tb), now_wall, prft_wallclock(packet))
            frames: list[Any] = packet.decode()  # VideoFrame / AudioFrame: PyAV's stubs type it as a union
            for frame in frames:
                if frame.pts is None:
                    continue
                t = clock.to_wall(float(frame.pts * frame.time_base))
                if t is None:
                    continue
                if is_video:
                    if t <= last_video_t:  # the clock switched to the sender's reports: keep time increasing
                        self.status.frames_dropped += 1
                        continue
                    last_video_t, last_frame_at = t, now
                    self.status.frames += 1
                    self.status.last_data = t
                    self.status.latency_s = now_wall - t
                    self.status.clock = vclock.mode
                    if not got_frame:
                        got_frame = True
                        self.backoff.reset()
                        self.status.set_state(STREAMING, f"first frame ({vs.width}x{vs.height})")
                    self.sink.video(t, frame)
                else:
                    assert resampler is not None and self.audio_status is not None
                    t -= self.av_offset_s
                    for out in resampler.resample(frame):
                        block = out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
                        if audio_next is not None and abs(t - audio_next) < AUDIO_CONTINUITY_S:
                            t = audio_next  # continuous: keep sample-exact spacing
                        audio_next = t + len(block) / self.sample_rate
                        self._audio(t, block, now_wall, aclock.mode)
                        t = audio_next
        return "end of stream"

    def _audio(self, t0: float, block: np.ndarray, now_wall: float, mode: str) -> None:
        st = self.audio_status
        assert st is not None
        st.audio_blocks += 1
        st.last_data = t0 + len(block) / self.sample_rate
        st.latency_s = now_wall - st.last_data
        st.clock = mode
        st.set_state(STREAMING, "audio flowing")
        self.sink.audio(t0, block)

    def health(self) -> dict[str, Any]:
        return self.status.as_dict()


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or exc.__class__.__name__
    return mask_url(str(text))
