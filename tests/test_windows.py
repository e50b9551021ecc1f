"""The window assembler cuts streams exactly as training does, and flags what is missing."""

from __future__ import annotations

import numpy as np

from edgeav.preprocess import WindowSpec, nearest_frame_indices
from edgeav.windows import AUDIO, VIDEO, WindowAssembler

SPEC = WindowSpec(window_s=1.0, hop_s=0.5, frames_per_window=4, frame_width=4, frame_height=2, sample_rate=1000)


def _frame(i: int) -> np.ndarray:
    return np.full((2, 4, 3), i % 256, np.uint8)


def _feed(asm: WindowAssembler, frame_ts: np.ndarray, audio: np.ndarray, block: int = 37) -> list:
    """Interleave frames and audio blocks in time order, like a demuxer."""
    out = []
    ai = 0
    for i, t in enumerate(frame_ts):
        while ai < len(audio) and ai / SPEC.sample_rate <= t:
            out += asm.add_audio(ai / SPEC.sample_rate, audio[ai:ai + block])
            ai += block
        out += asm.add_video_frame(float(t), i)
    while ai < len(audio):
        out += asm.add_audio(ai / SPEC.sample_rate, audio[ai:ai + block])
        ai += block
    return out + asm.finish()


def test_frames_and_audio_match_the_training_cut() -> None:
    rng = np.random.default_rng(0)
    # 10 s at an irregular ~15 fps (jittered timestamps, as from a camera).
    frame_ts = np.cumsum(rng.uniform(0.05, 0.085, size=150))
    frame_ts -= frame_ts[0]
    duration = float(frame_ts[-1])
    audio = rng.standard_normal(int(duration * SPEC.sample_rate)).astype(np.float32)
    asm = WindowAssembler(SPEC, convert=_frame)
    windows = _feed(asm, frame_ts, audio)

    starts = SPEC.window_starts(duration)
    assert [w.t_start for w in windows[: len(starts)]] == list(starts)
    for w in windows[: len(starts)]:
        assert w.missing == ()
        want = nearest_frame_indices(frame_ts, SPEC.frame_times(w.t_start))
        assert [int(f[0, 0, 0]) for f in w.frames] == [int(i) % 256 for i in want]
        i0 = round(w.t_start * SPEC.sample_rate)
        np.testing.assert_array_equal(w.audio, audio[i0:i0 + SPEC.samples_per_window])
    # Each frame is converted at most once although windows overlap.
    assert asm.frames_converted <= len(frame_ts)


def test_video_only_stream_flags_audio_missing() -> None:
    asm = WindowAssembler(SPEC, convert=_frame, has_audio=True)
    frame_ts = np.arange(0, 5, 1 / 15)
    windows = _feed(asm, frame_ts, np.zeros(0, np.float32))
    assert windows and all(w.missing == (AUDIO,) and w.audio is None for w in windows)
    assert all(w.frames is not None for w in windows)


def test_audio_gap_is_flagged_and_not_invented() -> None:
    rng = np.random.default_rng(1)
    asm = WindowAssembler(SPEC, convert=_frame)
    audio = rng.standard_normal(6000).astype(np.float32)
    audio_with_hole = audio.copy()
    frame_ts = np.arange(0, 6, 1 / 10)
    out = []
    ai = 0
    for i, t in enumerate(frame_ts):
        while ai < 6000 and ai / 1000 <= t:
            if not 2000 <= ai < 4000:  # two seconds never arrive
                out += asm.add_audio(ai / 1000, audio_with_hole[ai:ai + 100])
            ai += 100
        out += asm.add_video_frame(float(t), i)
    out += asm.finish()
    by_start = {w.t_start: w for w in out}
    assert AUDIO in by_start[2.5].missing and by_start[2.5].audio is None
    assert by_start[0.5].missing == ()
    assert by_start[4.5].missing == ()
    np.testing.assert_array_equal(by_start[4.5].audio, audio[4500:5500])


def test_live_deadline_emits_windows_without_the_dead_microphone() -> None:
    asm = WindowAssembler(SPEC, convert=_frame, origin=1000.0)
    got = []
    for i, t in enumerate(np.arange(1000.0, 1003.0, 0.1)):
        got += asm.add_video_frame(float(t), i)
        got += asm.expire(now=float(t), deadline_s=0.5)
    assert got, "windows must flow although the audio never arrives"
    assert all(w.missing == (AUDIO,) for w in got)
    assert got[0].t_start == 1000.0
    assert [w.index for w in got] == list(range(len(got)))


def test_late_video_flagged_missing_when_only_audio_flows() -> None:
    asm = WindowAssembler(SPEC, convert=_frame)
    got = []
    for k in range(40):
        got += asm.add_audio(k * 0.1, np.ones(100, np.float32))
        got += asm.expire(now=k * 0.1, deadline_s=0.5)
    assert got and all(w.missing == (VIDEO,) and w.audio is not None for w in got)
