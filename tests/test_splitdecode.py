"""Decoding a file's video in two halves at once (edgeav.splitdecode) gives exactly the windows of one decoder.

Real files through ffmpeg/PyAV: keyframes every 2 s with an odd duration, B-frames, an open GOP, a file whose
only keyframe is the first (falls back to one decoder), variable frame rate, video without audio, audio-only
footage (never split), a file cut short in its second half (same error), early close, and the CLI's records.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from edgeav import media, splitdecode
from edgeav.errors import UserError
from edgeav.preprocess import WindowSpec
from edgeav.reader import FileReader
from tests.conftest import run_edgeav
from tests.footage_helpers import ffmpeg


def _clip(path: Path, seconds: float, video_args: list[str], *, audio: bool = True, vf: str | None = None,
          extra: list[str] | None = None) -> Path:
    args = ["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=15"]
    if audio:
        args += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"]
    args += ["-t", str(seconds)]
    if vf:
        args += ["-vf", vf, "-fps_mode", "vfr"]
    args += ["-c:v", "libx264", "-pix_fmt", "yuv420p", *video_args]
    if audio:
        args += ["-c:a", "aac", "-ac", "2"]
    ffmpeg(*args, *(extra or []), str(path))
    return path


def _windows(path: Path, split: bool) -> tuple[list[tuple[Any, ...]], Any]:
    """Every window of ``path`` as comparable bytes, and the reader's stats."""
    reader = FileReader(path, WindowSpec(), split=split)
    out = []
    with reader:
        for got in reader:
            out += [(w.index, w.t_start, w.t_end, None if w.frames is None else w.frames.tobytes(),
                     None if w.audio is None else w.audio.tobytes(), w.missing) for w in got]
    return out, reader.stats


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("split")
    fast = ["-preset", "ultrafast"]
    return {
        # keyframe every 2 s, an odd duration: the split lands on a keyframe before the middle
        "gop2s_odd": _clip(d / "gop.mp4", 41.3, [*fast, "-g", "30"]),
        # B-frames (frames shown before the keyframe decode after it) and a 1 s GOP
        "bframes": _clip(d / "bf.mp4", 27.7, ["-preset", "veryfast", "-bf", "3", "-g", "15"]),
        # open GOP: the keyframes are I-frames that later frames' predecessors may reference
        "open_gop": _clip(d / "open.mp4", 30.0, [*fast, "-bf", "2", "-g", "20", "-x264-params", "open-gop=1"]),
        # one keyframe, at 0: nothing near the middle
        "one_keyframe": _clip(d / "one.mp4", 30.0, [*fast, "-g", "10000", "-sc_threshold", "0"]),
        # variable frame rate: every 7th frame dropped and a 3 s hole just after the middle
        "vfr": _clip(d / "vfr.mp4", 36.0, [*fast, "-g", "23"],
                     vf="select='not(eq(mod(n\\,7)\\,3))*not(between(t\\,16\\,19))'"),
        "video_only": _clip(d / "vo.mp4", 25.1, [*fast, "-g", "15"], audio=False),
    }


@pytest.mark.parametrize("kind", ["gop2s_odd", "bframes", "open_gop", "vfr", "video_only"])
def test_two_halves_give_the_windows_of_one_decoder(clips: dict[str, Path], kind: str) -> None:
    serial, serial_stats = _windows(clips[kind], split=False)
    halves, stats = _windows(clips[kind], split=True)
    assert serial_stats.split_at is None
    assert len(halves) == len(serial) and halves == serial, "splitting must not change a single window"
    if kind != "open_gop":  # an open GOP may fall back to one decoder; either way the windows are the same
        assert stats.split_at is not None, "the second half should have been decoded in its own thread"
        info = media.probe(clips[kind], require_audio=False)
        target = splitdecode.split_target(info)
        assert target is not None and target * splitdecode.MIN_KEYFRAME_FRACTION <= stats.split_at <= target
    assert stats.frames_converted == serial_stats.frames_converted
    if kind == "video_only":
        assert all(w[5] == ("audio",) for w in halves)


def test_a_file_without_a_keyframe_near_the_middle_decodes_in_one_thread(clips: dict[str, Path]) -> None:
    serial, _ = _windows(clips["one_keyframe"], split=False)
    halves, stats = _windows(clips["one_keyframe"], split=True)
    assert stats.split_at is None and halves == serial and len(serial) == 59


def test_short_and_audio_only_files_are_never_split(tmp_path: Path, clips: dict[str, Path]) -> None:
    short = _clip(tmp_path / "short.mp4", 12.0, ["-preset", "ultrafast", "-g", "15"])
    assert splitdecode.split_target(media.probe(short)) is None
    audio_only = tmp_path / "a.m4a"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000", "-t", "40", "-c:a", "aac", str(audio_only))
    assert splitdecode.split_target(media.probe(audio_only, require_video=False)) is None
    assert splitdecode.split_target(media.probe(clips["gop2s_odd"])) is not None


def test_closing_early_stops_both_decoders(clips: dict[str, Path]) -> None:
    before = set(threading.enumerate())
    reader = FileReader(clips["gop2s_odd"], WindowSpec(), split=True)
    next(iter(reader))
    reader.close()
    left = [t for t in set(threading.enumerate()) - before if t.name.startswith("edgeav-decode")]
    assert not left, left


def test_a_file_cut_short_in_its_second_half_gives_the_same_error(tmp_path: Path) -> None:
    src = _clip(tmp_path / "src.mp4", 30.0, ["-preset", "ultrafast", "-g", "15"], extra=["-movflags", "+faststart"])
    cut = tmp_path / "cut.mp4"
    data = src.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.8)])  # index kept, the last fifth of the media gone
    errors = []
    for split in (False, True):
        with pytest.raises(UserError) as exc:
            _windows(cut, split)
        errors.append(str(exc.value))
    assert errors[0] == errors[1] and "cut.mp4" in errors[0]


def test_replay_records_are_byte_identical_with_and_without_the_split(tiny_bundle: Path, footage_dir: Path,
                                                                      tmp_path: Path) -> None:
    footage = footage_dir / "anomalies.mp4"  # 40 s: long enough to split
    outs = []
    for split in ("0", "1"):
        ev, win, st = (tmp_path / f"{split}.{n}" for n in ("events.jsonl", "windows.jsonl", "stats.json"))
        proc = run_edgeav("replay", footage, "--models", tiny_bundle, "--out", ev, "--windows", win, "--stats", st,
                          env={splitdecode.SPLIT_ENV: split})
        assert proc.returncode == 0, proc.stderr
        assert f'"files_split": {split}' in st.read_text()
        outs.append((ev.read_bytes(), win.read_bytes(), proc.stdout))
    assert outs[0] == outs[1]
