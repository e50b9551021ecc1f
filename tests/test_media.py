"""edgeav.media on real files written by ffmpeg/PyAV: probing, timing of frames and audio, bad footage."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from footage_helpers import ffmpeg, lavfi_clip, make_bad_footage, write_av

from edgeav.errors import UserError
from edgeav.media import (
    decode_audio,
    find_footage,
    footage_windows,
    iter_audio_blocks,
    iter_video_frames,
    iter_yuv_frames,
    probe,
    video_thread_type,
)
from edgeav.preprocess import WindowSpec


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_bad_footage(tmp_path_factory.mktemp("bad"))


def test_probe_reports_streams(tmp_path: Path) -> None:
    clip = lavfi_clip(tmp_path / "cam.mp4", seconds=3, size="320x240", fps=15)
    info = probe(clip)
    assert (info.width, info.height) == (320, 240)
    assert info.fps == pytest.approx(15)
    assert info.duration == pytest.approx(3.0, abs=0.1)
    assert info.sample_rate == 44100 and info.channels == 2
    assert info.audio_path == clip and not info.separate_audio


def test_audio_is_mono_16k_and_frames_follow_the_clock(tmp_path: Path) -> None:
    """A white flash and a beep at 2.0-2.5 s must land in the windows that cover 2.0-2.5 s, not elsewhere."""
    fps, sr, seconds = 15, 44100, 5
    n = fps * seconds
    frames = np.full((n, 120, 160, 3), 30, np.uint8)
    t = np.arange(n) / fps
    frames[(t >= 2.0) & (t < 2.5)] = 230
    ta = np.arange(sr * seconds) / sr
    audio = np.where((ta >= 2.0) & (ta < 2.5), 0.5 * np.sin(2 * np.pi * 1000 * ta), 0.0).astype(np.float32)
    clip = write_av(tmp_path / "flash.mp4", frames, audio, fps, sr)

    spec = WindowSpec(window_s=0.5, hop_s=0.25, frames_per_window=2)
    w = footage_windows(clip, spec)
    assert w.frames.shape[1:] == (2, 64, 112, 3) and w.frames.dtype == np.uint8
    assert w.audio.shape[1] == 8000 and w.audio.dtype == np.float32
    brightness = w.frames.reshape(len(w), -1).mean(1)
    loudness = np.sqrt((w.audio ** 2).mean(1))
    flash = int(np.argmax(brightness))
    assert w.t_starts[flash] == pytest.approx(2.0)
    assert w.t_starts[int(np.argmax(loudness))] == pytest.approx(2.0)
    assert brightness[np.abs(w.t_starts - 1.0) < 1e-6][0] < 60  # a window before the flash is dark
    # Resampled to 16 kHz mono: the beep's spectrum peaks at 1 kHz.
    spectrum = np.abs(np.fft.rfft(w.audio[flash]))
    assert np.fft.rfftfreq(8000, 1 / 16000)[int(np.argmax(spectrum))] == pytest.approx(1000, abs=4)


def test_video_with_a_wav_companion(tmp_path: Path) -> None:
    lavfi_clip(tmp_path / "cam2.mp4", seconds=3, audio=False)
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=300:sample_rate=48000", "-t", "3", str(tmp_path / "cam2.wav"))
    info = probe(tmp_path / "cam2.mp4")
    assert info.separate_audio and info.audio_path.name == "cam2.wav" and info.sample_rate == 48000
    audio = decode_audio(tmp_path / "cam2.mp4", audio_path=info.audio_path)
    assert len(audio) == pytest.approx(3 * 16000, abs=200)
    w = footage_windows(tmp_path / "cam2.mp4")
    assert len(w) == 5 and float(np.abs(w.audio).max()) > 0.05


def test_yuv_frames_are_i420_in_time_order(tmp_path: Path) -> None:
    clip = lavfi_clip(tmp_path / "c.mp4", seconds=2, size="320x240", fps=10)
    got = list(iter_yuv_frames(clip))
    assert len(got) == 20
    ts = [t for t, _ in got]
    assert ts[0] == pytest.approx(0.0) and np.all(np.diff(ts) > 0)
    assert got[0][1].shape == (360, 320) and got[0][1].dtype == np.uint8


def test_find_footage_takes_directories_and_globs(tmp_path: Path) -> None:
    for name in ("b.mp4", "a.mkv"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "a.labels.json").write_text("{}")
    (tmp_path / "b.wav").write_bytes(b"x")
    assert [p.name for p in find_footage([tmp_path])] == ["a.mkv", "b.mp4"]
    assert [p.name for p in find_footage([str(tmp_path / "*.mp4"), tmp_path / "b.mp4"])] == ["b.mp4"]
    with pytest.raises(UserError, match=r"nothere\.mp4: no such file"):
        find_footage([tmp_path / "nothere.mp4"])


@pytest.mark.parametrize("reason", ["empty", "unreadable", "no audio stream", "no video stream", "truncated",
                                    "truncated "])
def test_bad_footage_is_named_with_its_reason(bad_dir: dict[str, Path], reason: str) -> None:
    path = bad_dir[reason]
    with pytest.raises(UserError) as exc:
        footage_windows(path)
    msg = str(exc.value)
    assert str(path) in msg and reason.strip() in msg and "\n" not in msg


def test_frame_resizer_keeps_the_picture_whatever_the_pixel_format() -> None:
    """A 720p picture, red on the left and blue on the right, arrives as the camera sends it
    (yuv420p, full-range yuvj420p, nv12): the model input is the same small picture each time."""
    import av

    from edgeav.preprocess import FrameResizer

    rgb = np.zeros((720, 1280, 3), np.uint8)
    rgb[:, :640] = (220, 30, 30)
    rgb[:, 640:] = (30, 30, 220)
    source = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    resize = FrameResizer(112, 64)
    outs = {fmt: resize(source.reformat(format=fmt)) for fmt in ("yuv420p", "yuvj420p", "nv12")}
    for fmt, out in outs.items():
        assert out.shape == (64, 112, 3) and out.dtype == np.uint8, fmt
        left, right = out[:, :50].reshape(-1, 3).mean(0), out[:, 62:].reshape(-1, 3).mean(0)
        assert np.abs(left - (220, 30, 30)).max() < 12, (fmt, left)
        assert np.abs(right - (30, 30, 220)).max() < 12, (fmt, right)
    assert np.abs(outs["yuv420p"].astype(int) - outs["nv12"].astype(int)).max() <= 2


def test_decoder_threading_changes_no_pixel(tmp_path: Path) -> None:
    """Replay decodes in one thread on a 2-core box and with frame threads on bigger ones (media.video_thread_type):
    either way the frames and their times must be the same, or outputs would depend on the machine."""
    assert video_thread_type(2) == "SLICE" and video_thread_type(8) == "AUTO"
    clip = lavfi_clip(tmp_path / "t.mp4", seconds=2, size="320x240", fps=15, audio=False)
    got = {tt: [(t, f.to_ndarray(format="yuv420p")) for t, f in iter_video_frames(clip, thread_type=tt)]
           for tt in ("NONE", "SLICE", "FRAME")}
    assert len(got["NONE"]) == 30
    for tt in ("SLICE", "FRAME"):
        assert [t for t, _ in got[tt]] == [t for t, _ in got["NONE"]]
        assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(got[tt], got["NONE"], strict=True))


def _resampled_blocks(path: Path, rate: int) -> list[tuple[float, np.ndarray]]:
    """The general path, spelt out: every decoded frame through FFmpeg's resampler to mono float at ``rate``."""
    out: list[tuple[float, np.ndarray]] = []
    with av.open(str(path)) as c:
        s = c.streams.audio[0]
        r = av.AudioResampler(format="flt", layout="mono", rate=rate)
        t = None
        for frame in [*c.decode(s), None]:
            if t is None and frame is not None:
                t = float(frame.pts * frame.time_base) - (c.start_time or 0) / av.time_base
            for o in r.resample(frame):
                out.append((t, o.to_ndarray().reshape(-1)))
                t += o.samples / rate
    return out


@pytest.mark.parametrize("rate", [16000, 44100])
def test_audio_already_mono_16k_skips_the_resampler_with_the_same_samples(tmp_path: Path, rate: int) -> None:
    """A 16 kHz mono track (the synth footage's, many cameras') is passed through without FFmpeg's resampler:
    blocks, times and samples must equal the resampler's; any other track still goes through it."""
    ta = np.arange(rate * 2) / rate
    audio = (0.3 * np.sin(2 * np.pi * 700 * ta)).astype(np.float32)
    clip = write_av(tmp_path / "m.mp4", np.zeros((20, 64, 64, 3), np.uint8), audio, 10, rate)
    got = list(iter_audio_blocks(clip))
    want = _resampled_blocks(clip, 16000)
    assert len(got) == len(want) > 10
    for (t1, a), (t2, b) in zip(got, want, strict=True):
        assert t1 == pytest.approx(t2, abs=1e-9) and a.dtype == np.float32 and np.array_equal(a, b)
