"""`edgeav replay`: the pipeline over files — outputs valid, deterministic, complete; bad footage handled."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from edgeav import media
from edgeav.bundle import load_bundle
from edgeav.records import load_schema
from tests.conftest import assert_one_line_error, run_edgeav
from tests.footage_helpers import ffmpeg, lavfi_clip, make_bad_footage


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_replay_outputs_are_valid_complete_and_byte_identical(tiny_bundle: Path, footage_dir: Path,
                                                             tmp_path: Path) -> None:
    footage = footage_dir / "anomalies.mp4"
    outs = []
    for run in ("a", "b"):
        ev, win = tmp_path / f"{run}.events.jsonl", tmp_path / f"{run}.windows.jsonl"
        proc = run_edgeav("replay", footage, "--models", tiny_bundle, "--out", ev, "--windows", win)
        assert proc.returncode == 0, proc.stderr
        outs.append((ev.read_bytes(), win.read_bytes(), proc.stdout))
    assert outs[0] == outs[1], "replay must be deterministic: same input, byte-identical output"

    windows = _lines(tmp_path / "a.windows.jsonl")
    spec = load_bundle(tiny_bundle).window_spec
    starts = spec.window_starts(media.probe(footage).duration)
    assert [w["t_start"] for w in windows] == [round(float(t), 3) for t in starts], "every window, in order"
    schema_w = load_schema("window")
    for w in windows:
        jsonschema.validate(w, schema_w)
        assert w["missing"] == [] and w["label"] is not None and w["anomaly_score"] is not None
    records = _lines(tmp_path / "a.events.jsonl")
    for r in records:
        jsonschema.validate(r, load_schema(r["type"]))
    # Every event that starts also ends, with one id for its phases.
    phases: dict[str, list[str]] = {}
    for r in records:
        if r["type"] == "event":
            phases.setdefault(r["id"], []).append(r["phase"])
    assert all(p[0] == "start" and p[-1] == "end" for p in phases.values())
    # The human summary names the file and accounts for events and alerts.
    summary = outs[0][2]
    assert "anomalies.mp4" in summary and "events:" in summary and "alerts:" in summary
    n_alerts = sum(r["type"] == "alert" for r in records)
    assert (f"alerts: {n_alerts}" in summary) if n_alerts else ("alerts: none" in summary)


def test_video_only_footage_is_a_flagged_degraded_mode(tiny_bundle: Path, tmp_path: Path) -> None:
    clip = lavfi_clip(tmp_path / "silent.mp4", seconds=4, audio=False)
    win = tmp_path / "w.jsonl"
    proc = run_edgeav("replay", clip, "--models", tiny_bundle, "--windows", win)
    assert proc.returncode == 0, proc.stderr
    windows = _lines(win)
    assert windows and all(w["missing"] == ["audio"] and w["label"] is None for w in windows)
    assert "without audio" in proc.stdout


def test_audio_longer_than_video_flags_the_windows_without_video(tiny_bundle: Path, tmp_path: Path) -> None:
    video = lavfi_clip(tmp_path / "video3s.mp4", seconds=3, size="320x180", audio=False)
    clip = tmp_path / "long_audio.mp4"
    ffmpeg("-i", str(video), "-f", "lavfi", "-i", "sine=f=440:sample_rate=16000", "-t", "6", "-c:v", "copy",
           "-c:a", "aac", str(clip))
    win = tmp_path / "w.jsonl"
    proc = run_edgeav("replay", clip, "--models", tiny_bundle, "--windows", win)
    assert proc.returncode == 0, proc.stderr
    windows = _lines(win)
    assert windows[0]["missing"] == [] and windows[-1]["missing"] == ["video"]
    assert windows[-1]["t_end"] >= 5.5


def test_variable_frame_rate_footage_replays(tiny_bundle: Path, tmp_path: Path) -> None:
    clip = tmp_path / "vfr.mp4"
    # Drop frames irregularly and keep the timestamps of the rest: a variable frame rate, as cameras do under load.
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x180:rate=15", "-f", "lavfi", "-i", "sine=f=440:sample_rate=16000",
           "-t", "5", "-vf", "select='not(mod(n\\,3))+lt(n\\,20)'", "-fps_mode", "vfr", "-c:v", "libx264",
           "-c:a", "aac", str(clip))
    win = tmp_path / "w.jsonl"
    proc = run_edgeav("replay", clip, "--models", tiny_bundle, "--windows", win)
    assert proc.returncode == 0, proc.stderr
    windows = _lines(win)
    assert len(windows) >= 8 and all(w["missing"] == [] for w in windows)


@pytest.fixture(scope="module")
def bad_footage(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_bad_footage(tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize("kind", ["empty", "unreadable", "no video stream", "truncated", "truncated "])
def test_bad_footage_is_one_line_and_writes_nothing(kind: str, bad_footage: dict[str, Path], tiny_bundle: Path,
                                                   tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    proc = run_edgeav("replay", bad_footage[kind], "--models", tiny_bundle, "--out", out)
    assert_one_line_error(proc, str(bad_footage[kind]), kind.strip())
    assert not out.exists(), "no partial output presented as complete"
    assert not list(tmp_path.glob(".*part")), "temporary output removed"


def test_missing_bundle_and_output_directory_errors(footage_dir: Path, tmp_path: Path) -> None:
    proc = run_edgeav("replay", footage_dir / "normal.mp4", "--models", tmp_path / "nope")
    assert_one_line_error(proc, "nope")
    proc = run_edgeav("replay", footage_dir / "normal.mp4", "--models", tmp_path, "--out", tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    proc = run_edgeav("replay", footage_dir / "normal.mp4", "--embed-threads", "-1")
    assert_one_line_error(proc, "--embed-threads", "-1")
