"""A local microphone through sounddevice (PortAudio).

Device: by index (as ``python -m sounddevice`` lists them) or by (part of) its name,
case-insensitive; ``None`` is the system default input. Mono float32 at the bundle's rate (16 kHz):
the stream is opened at the configured rate (or 16 kHz, or the device's default when it refuses
that) and resampled with FFmpeg's resampler.

Clock (:class:`MicClock`). PortAudio gives every block its ADC time (``inputBufferAdcTime``) on
the stream's clock, which is mapped to Unix time by comparing the stream clock with ``time.time()``
in each callback (under PulseAudio both are the wall clock; on raw ALSA the stream clock is
monotonic). The ADC time rests on the driver's delay report, which PulseAudio's ALSA plugin gets
wrong by 100 to 500 ms around stream start on a loaded machine (measured here: a click "captured"
0.19 s before it was played). So the timeline is the sample count (samples are contiguous),
anchored by the ADC times that are physically plausible: not after the block arrived, and not
more than a block (plus 10 ms) before the arrival bound. When no recent ADC time
is plausible the anchor is the arrival bound itself (the least-delayed block).

A device that fails or stops delivering (unplugged, PulseAudio source unloaded) is closed and
reopened with backoff; meanwhile the camera runs video-only, its windows flagged ``missing: audio``.
PortAudio lists devices once per initialisation, so when the device is not found the library is
re-initialised to rescan (only while no other microphone stream is open in this process).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from typing import Any

import av
import numpy as np

from edgeav.preprocess import AUDIO_SAMPLE_RATE, to_mono_float
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

BLOCK_S = 0.02            # 20 ms blocks: small against the 100 ms A/V budget, cheap in callbacks
ANCHOR_BLOCKS = 25        # ADC anchors kept for the median (0.5 s)
BOUND_WINDOW_S = 2.0      # the arrival bound looks this far back
STEADY_S = 0.003          # consecutive ADC offsets further apart than this are not trusted
_open_streams = 0         # microphone streams open in this process (see module docstring: rescans)
_open_lock = threading.Lock()


class MicClock:
    """Sample count -> Unix time for one open stream (see the module docstring).

    The arrival bound is the minimum of ``arrival - capture time of the block's end`` over the
    last ``BOUND_WINDOW_S``: a sliding window, not an all-time minimum, because a source that
    silently loses samples (PulseAudio under load does, without flagging an overflow) makes the
    sample count run slow, and only a bound that forgets old blocks follows it.
    """

    def __init__(self, rate: int, block_s: float) -> None:
        self.rate = rate
        # How much earlier than the arrival bound an ADC time may put a block: the fastest delivery
        # seen is about one block after capture; an ADC time further back is a wrong delay report.
        self.slack_s = block_s + 0.01
        self.n = 0                                # samples seen
        self._bounds: deque[tuple[float, float]] = deque()  # (arrival, arrival - n_end / rate)
        self.anchors: deque[float] = deque(maxlen=ANCHOR_BLOCKS)
        self.mode = "arrival"
        self.rejected = 0
        self._prev_off: float | None = None

    def block(self, frames: int, adc_unix: float | None, arrival: float) -> float:
        """Register a block of ``frames`` samples; return the Unix time of its first sample."""
        start = self.n / self.rate
        self.n += frames
        self._bounds.append((arrival, arrival - self.n / self.rate))
        while self._bounds[0][0] < arrival - BOUND_WINDOW_S:
            self._bounds.popleft()
        bound = min(b for _, b in self._bounds)
        if adc_unix is not None and adc_unix > 0:
            off = adc_unix - start
            # A good ADC time moves with the samples: its offset from the sample count stays put. One
            # that stands still while blocks go by (seen under PulseAudio) ramps by a block each time.
            steady = self._prev_off is not None and abs(off - self._prev_off) <= STEADY_S
            self._prev_off = off
            if steady and bound - self.slack_s <= off <= bound + 0.005:
                self.anchors.append(off)
            else:
                self.rejected += 1
                if not steady:
                    self.anchors.clear()  # the stream's timeline moved (lost samples): old anchors are stale
        if self.anchors:
            self.mode = "adc"
            return start + float(np.median(self.anchors))
        self.mode = "arrival"
        return start + bound


def resolve_device(device: str | int | None) -> tuple[int | None, dict[str, Any]]:
    """The PortAudio input device for a config value; raises LookupError with the choices."""
    import sounddevice as sd

    devices = sd.query_devices()
    inputs = [(i, d) for i, d in enumerate(devices) if d["max_input_channels"] > 0]
    if device is None:
        info = sd.query_devices(kind="input")
        return None, dict(info)
    if isinstance(device, int):
        for i, d in inputs:
            if i == device:
                return i, dict(d)
    else:
        want = device.lower()
        exact = [(i, d) for i, d in inputs if d["name"].lower() == want]
        part = exact or [(i, d) for i, d in inputs if want in d["name"].lower()]
        if part:
            return part[0][0], dict(part[0][1])
    names = ", ".join(f"{i}: {d['name']}" for i, d in inputs) or "none"
    raise LookupError(f"no input device {device!r} (inputs: {names})")


class MicrophoneSource(SourceThread):
    """One microphone feeding ``sink.audio`` with mono float32 at ``sample_rate``."""

    def __init__(self, name: str, sink: CaptureSink, *, device: str | int | None = None,
                 device_rate: int | None = None, av_offset_s: float = 0.0, stall_s: float = 2.0,
                 backoff: Backoff | None = None, sample_rate: int = AUDIO_SAMPLE_RATE) -> None:
        super().__init__(SourceStatus(name, "microphone"))
        self.sink = sink
        self.device = device
        self.device_rate = device_rate
        self.av_offset_s = av_offset_s
        self.stall_s = stall_s
        self.backoff = backoff or Backoff()
        self.sample_rate = sample_rate
        self.clock_rejected = 0
        self.device_name = ""

    def _run(self) -> None:
        first = True
        while not self.stopping:
            if not first:
                self.status.set_state(CONNECTING, "reopening")
            first = False
            why = self._session()
            if self.stopping:
                break
            self._back_off(self.backoff, why)

    def _open(self, blocks: queue.SimpleQueue) -> Any:
        import sounddevice as sd

        global _open_streams
        try:
            index, info = resolve_device(self.device)
        except LookupError:
            with _open_lock:
                if _open_streams == 0:  # rescan: a replugged USB microphone gets a new index
                    sd._terminate()
                    sd._initialize()
            index, info = resolve_device(self.device)

        def callback(indata: np.ndarray, frames: int, ti: Any, status: Any) -> None:
            # PortAudio's thread: copy and hand over, nothing else (no allocation-heavy work, no locks).
            blocks.put((indata.copy(), frames, ti.inputBufferAdcTime, ti.currentTime, time.time(),
                        bool(status.input_overflow)))

        rates = [self.device_rate] if self.device_rate else [self.sample_rate, int(info["default_samplerate"])]
        last_exc: Exception | None = None
        for rate in dict.fromkeys(rates):
            try:
                stream = sd.InputStream(device=index, samplerate=rate, channels=1, dtype="float32",
                                        blocksize=int(rate * BLOCK_S), latency="low", callback=callback)
                stream.start()
            except (sd.PortAudioError, ValueError) as exc:
                last_exc = exc
                continue
            with _open_lock:
                _open_streams += 1
            self.device_name = str(info["name"])
            return stream
        raise OSError(f"cannot open input device {info['name']!r}: {last_exc}")

    def _session(self) -> str:
        blocks: queue.SimpleQueue = queue.SimpleQueue()
        try:
            stream = self._open(blocks)
        except (LookupError, OSError) as exc:
            return str(exc)
        try:
            return self._pump(stream, blocks)
        finally:
            self._close(stream)

    def _close(self, stream: Any) -> None:
        global _open_streams
        try:
            stream.abort(ignore_errors=True)
            stream.close(ignore_errors=True)
        except Exception:  # a vanished device may fail to close; it is gone either way
            log.debug("closing the microphone stream failed", exc_info=True)
        with _open_lock:
            _open_streams -= 1

    def _pump(self, stream: Any, blocks: queue.SimpleQueue) -> str:
        rate = int(stream.samplerate)
        clock = MicClock(rate, BLOCK_S)
        resampler = (av.AudioResampler(format="flt", layout="mono", rate=self.sample_rate)
                     if rate != self.sample_rate else None)
        stream_to_unix: deque[float] = deque(maxlen=32)
        got = False
        out_next: float | None = None
        while not self.stopping:
            try:
                data, frames, adc, cur, arrival, overflow = blocks.get(timeout=self.stall_s)
            except queue.Empty:
                if got:
                    self.status.set_state(STALLED, f"no audio for {self.stall_s:g} s")
                return f"no audio for {self.stall_s:g} s (device gone?)" if got else "the device delivers no audio"
            if not stream.active:
                return "the stream stopped (device gone?)"
            if overflow:  # samples were lost: the sample count no longer tells time; start a new timeline
                clock = MicClock(rate, BLOCK_S)
                out_next = None
            if cur:
                stream_to_unix.append(arrival - cur)
            to_unix = float(np.median(stream_to_unix)) if stream_to_unix else 0.0
            t0 = clock.block(frames, adc + to_unix if adc else None, arrival) - self.av_offset_s
            mono = to_mono_float(data)
            if resampler is not None:
                frame = av.AudioFrame.from_ndarray(mono.reshape(1, -1), format="flt", layout="mono")
                frame.sample_rate = rate
                mono = np.concatenate([f.to_ndarray().reshape(-1) for f in resampler.resample(frame)] or
                                      [np.zeros(0, np.float32)])
                if out_next is not None and abs(t0 - out_next) < 0.05:
                    t0 = out_next
                out_next = t0 + len(mono) / self.sample_rate
            if not got:
                got = True
                self.backoff.reset()
                self.status.set_state(STREAMING, f"{self.device_name!r} at {rate} Hz")
            self.status.audio_blocks += 1
            self.status.last_data = t0 + len(mono) / self.sample_rate
            self.status.latency_s = arrival - self.status.last_data
            self.status.clock = clock.mode
            self.clock_rejected = clock.rejected
            if len(mono):
                self.sink.audio(t0, mono.astype(np.float32, copy=False))
        return "stopped"
