"""Live capture's pure parts: backoff, the RTSP and microphone clocks, the skew meter, the driver's refusals.

No network or sound here (those are in test_live_rtsp.py / test_live_mic.py): numbers in, numbers out.
"""

from __future__ import annotations

import random
import struct

import numpy as np
import pytest

from edgeav.config import CameraConfig
from edgeav.errors import UserError
from edgeav.sources.base import Backoff
from edgeav.sources.microphone import MicClock
from edgeav.sources.rtsp import StreamClock, prft_wallclock
from edgeav.sources.sync import SkewMeter


def test_backoff_doubles_to_the_cap_with_jitter_and_resets():
    b = Backoff(initial_s=0.5, factor=2.0, cap_s=2.0, jitter=0.25, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(8)]
    bases = [0.5, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]
    for d, base in zip(delays, bases, strict=True):
        assert 0.75 * base <= d <= base
    assert len(set(delays)) == len(delays)  # jittered: no two sources in lockstep
    b.reset()
    assert b.next_delay() <= 0.5
    with pytest.raises(ValueError):
        Backoff(initial_s=3.0, cap_s=2.0)


def test_stream_clock_prefers_sender_reports_and_distrusts_an_unsynced_camera():
    c = StreamClock()
    # Before any RTCP report: arrival smoothed; the least-delayed packet sets the offset.
    c.observe(0.0, 0.0, arrival=1000.30, sender_wall=None)
    c.observe(0.1, 0.1, arrival=1000.35, sender_wall=None)  # arrived 0.05 s earlier than predicted
    assert c.mode == "arrival"
    assert c.to_wall(0.2) == pytest.approx(1000.45)
    # A sender report: the camera's wall clock for this timestamp wins.
    c.observe(0.2, 0.2, arrival=1000.60, sender_wall=1000.42)
    assert c.mode == "rtcp"
    assert c.to_wall(1.2) == pytest.approx(1001.42)
    # A camera whose clock is minutes off ours is timed by arrival instead.
    off = StreamClock()
    off.observe(0.0, 0.0, arrival=2000.1, sender_wall=1700.0)
    assert off.mode == "arrival" and off.to_wall(1.0) == pytest.approx(2001.1)


def test_stream_clock_arrival_offset_follows_drift_but_not_queueing_spikes():
    c = StreamClock()
    t = 0.0
    for i in range(200):  # 10 s of packets, each delayed 20 ms, one burst delayed 500 ms
        t = i * 0.05
        spike = 0.5 if 100 <= i < 104 else 0.0
        c.observe(t, t, arrival=5000.0 + t + 0.02 + spike, sender_wall=None)
    assert c.to_wall(t) == pytest.approx(5000.0 + t + 0.02, abs=1e-6)


class _Pkt:
    def __init__(self, payload: bytes | None) -> None:
        self.payload = payload

    def has_sidedata(self, kind: str) -> bool:
        return kind == "prft" and self.payload is not None

    def get_sidedata(self, kind: str) -> bytes:
        assert self.payload is not None
        return self.payload


def test_prft_side_data_is_read_as_microseconds():
    raw = struct.pack("<qi", 1_795_000_000_123_456, 0)  # AVProducerReferenceTime {wallclock, flags}
    assert prft_wallclock(_Pkt(raw)) == pytest.approx(1_795_000_000.123456)
    assert prft_wallclock(_Pkt(None)) is None


def test_mic_clock_uses_plausible_adc_times_and_rejects_impossible_ones():
    rate, block = 16000, 320
    c = MicClock(rate, block_s=0.02)
    true0 = 100.0
    for k in range(60):  # every block arrives 5 ms after its last sample; ADC times 1 ms early (plausible)
        start = true0 + k * block / rate
        got = c.block(block, adc_unix=start - 0.001, arrival=start + block / rate + 0.005)
    assert c.mode == "adc" and got == pytest.approx(start - 0.001, abs=1e-6)
    bad = MicClock(rate, block_s=0.02)
    for k in range(60):  # ADC times 0.3 s early: impossible against arrival, so arrival rules
        start = true0 + k * block / rate
        got = bad.block(block, adc_unix=start - 0.3, arrival=start + block / rate + 0.005)
    assert bad.mode == "arrival" and got == pytest.approx(start + 0.005, abs=1e-6)
    assert bad.rejected == 60


def test_skew_meter_pairs_a_flash_with_a_bang():
    sr = 16000
    m = SkewMeter(sr)
    t0 = 1000.0
    audio = np.random.default_rng(0).normal(0, 0.002, 3 * sr).astype(np.float32)
    bang = int(1.530 * sr)
    audio[bang:bang + 160] = 0.8
    for i in range(0, len(audio), 320):
        m.audio(t0 + i / sr, audio[i:i + 320])
    for k in range(60):  # 20 fps; the flash is in the frames from 1.5 s on
        m.video(t0 + k / 20, 200.0 if 30 <= k <= 32 else 20.0)
    rep = m.report()
    assert rep["skew_pairs"] == 1
    assert rep["skew_ms"] == pytest.approx(30.0, abs=0.2)


def test_skew_meter_finds_a_bang_that_starts_at_the_end_of_an_analysis_frame():
    sr = 16000
    m = SkewMeter(sr)
    audio = np.zeros(2 * sr, np.float32)
    bang = sr + 140  # 20 samples before the end of a 10 ms frame: too little there to trip the RMS test
    audio[bang:bang + 400] = 0.1
    m.audio(50.0, audio)
    m.video(51.0, 10.0)
    m.video(51.0 + bang / sr - 1.0 + 0.0001, 250.0)
    assert m.report()["skew_ms"] == pytest.approx(-0.1, abs=0.05)


def test_live_camera_refuses_a_file_source(tmp_path):
    from edgeav.live import LiveCamera
    from tests.test_bundle import make_toy_bundle

    (tmp_path / "f.mp4").write_bytes(b"x")
    make_toy_bundle(tmp_path / "b", seed=1)
    from edgeav.bundle import load_bundle

    cam = CameraConfig.model_validate({"name": "gate", "video": {"file": str(tmp_path / "f.mp4")}})
    with pytest.raises(UserError, match=r"gate.*video\.url"):
        LiveCamera(cam, load_bundle(tmp_path / "b"), [])


def test_a_camera_down_for_long_logs_its_failure_once_not_every_retry(caplog):
    import logging

    from edgeav.sources.base import BACKING_OFF, CONNECTING, STREAMING, SourceStatus

    s = SourceStatus("gate", "rtsp")
    with caplog.at_level(logging.INFO, logger="edgeav.sources.base"):
        for i in range(20):
            s.set_state(BACKING_OFF, f"cannot open rtsp://cam/: Connection refused; retry in {i % 3}.5 s")
            s.reconnects += 1
            s.set_state(CONNECTING, "reconnecting")
        s.set_state(BACKING_OFF, "cannot open rtsp://cam/: Operation timed out; retry in 2.0 s")
        s.set_state(STREAMING, "first frame")
    lines = [r.getMessage() for r in caplog.records]
    assert sum("Connection refused" in ln for ln in lines) == 1
    assert sum("timed out" in ln for ln in lines) == 1      # a new reason is news
    assert lines[-1].endswith("streaming (first frame)")
    assert len(s.transitions) == 43  # start + every change, kept for the health report (up to 50)


def test_capture_sheds_new_frames_not_memory_when_the_assembler_is_starved():
    import queue

    from edgeav.live import MAX_CAPTURE_BACKLOG, _Capture

    q: queue.SimpleQueue = queue.SimpleQueue()
    seen: list[object] = []
    cap = _Capture(q, [seen.append, lambda p: 1 / 0])  # a broken listener must not break capture
    for i in range(MAX_CAPTURE_BACKLOG + 10):
        cap.video(float(i), object())
        cap.packet(i)
    cap.audio(0.0, np.zeros(320, np.float32))  # sound is small and always kept
    assert cap.frames_dropped == 10
    assert q.qsize() == MAX_CAPTURE_BACKLOG + 1
    assert seen == list(range(MAX_CAPTURE_BACKLOG + 10))


def test_interrupt_cuts_short_only_the_interrupted_thread():
    """Two PyAV opens blocked on silent TCP peers (accepted, never a byte; 20 s timeouts): interrupting one thread
    ends its call at once with FFmpeg's exit error, the other keeps waiting until it is interrupted in turn."""
    import socket
    import threading
    import time

    import av

    from edgeav.sources import av_interrupt

    servers = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]  # the kernel accepts; nobody talks
    outcome: dict[int, str] = {}

    def blocked_open(i: int, port: int) -> None:
        try:
            av.open(f"tcp://127.0.0.1:{port}", format="mpegts", timeout=(20.0, 20.0)).close()
            outcome[i] = "opened"
        except av.error.FFmpegError as exc:
            outcome[i] = type(exc).__name__
        finally:
            av_interrupt.release()

    threads = [threading.Thread(target=blocked_open, args=(i, s.getsockname()[1]), daemon=True)
               for i, s in enumerate(servers)]
    try:
        for th in threads:
            th.start()
        time.sleep(0.5)
        assert all(th.is_alive() for th in threads)  # both are waiting for data
        t0 = time.monotonic()
        assert av_interrupt.interrupt(threads[0])
        threads[0].join(3.0)
        assert not threads[0].is_alive() and time.monotonic() - t0 < 1.0 and outcome[0] == "ExitError"
        time.sleep(0.5)
        assert threads[1].is_alive(), outcome  # another camera's read is not touched
        av_interrupt.interrupt(threads[1])
        threads[1].join(3.0)
        assert not threads[1].is_alive() and outcome[1] == "ExitError"
    finally:
        for s in servers:
            s.close()
