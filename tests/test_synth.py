"""`edgeav synth`: determinism, labels that agree with the signal, a file players open, one-line errors.

The signal checks pair a scripted scene with the same seed's ambient-only scene: the
ambient scene is rendered from its own random streams, so whatever differs between
the two files is the scripted events, and it must differ exactly where the labels say.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import assert_one_line_error, run_edgeav

from edgeav.labels import load_labels, sidecar_path
from edgeav.synth import ANOMALIES, KINDS, PROFILES, RECURRING, synthesize
from edgeav.synth.timeline import random_timeline

W, H, FPS, SR, SECONDS, SEED = 320, 180, 15.0, 16000, 16.0, 5

# A siren first (heard 2 s before it is seen), then a car, a silent bicycle, an off-screen horn,
# a dog and an audio-only glass break: visible/audible in every combination.
SCRIPT = [
    {"kind": "siren", "start": 0.5, "duration": 4.5, "lead": 2.0, "tail": 0.5, "loudness": -14, "direction": "right"},
    {"kind": "car", "start": 5.5, "duration": 2.5, "loudness": -14, "direction": "left"},
    {"kind": "bicycle", "start": 8.5, "duration": 3.0, "direction": "right"},
    {"kind": "offscreen", "start": 9.0, "duration": 2.0, "variant": "horn", "loudness": -14},
    {"kind": "dog", "start": 12.0, "duration": 1.5, "loudness": -12, "lane": "near"},
    {"kind": "glass_break", "start": 14.0, "duration": 1.5, "loudness": -12},
]


def decode(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frame times, luma frames, mono audio) as a player decodes them."""
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        frames = [(float(f.pts * vs.time_base), f.to_ndarray(format="gray")) for f in c.decode(vs)]
    with av.open(str(path)) as c:
        audio = np.concatenate([f.to_ndarray().mean(axis=0) for f in c.decode(audio=0)])
    times = np.array([t for t, _ in frames])
    return times, np.stack([y for _, y in frames]).astype(np.int16), audio.astype(np.float64)


def band_energy(audio: np.ndarray, t0: float, t1: float, lo: float = 150.0, hi: float = 6000.0) -> float:
    seg = audio[round(t0 * SR):round(t1 * SR)]
    spec = np.abs(np.fft.rfft(seg)) ** 2
    f = np.fft.rfftfreq(len(seg), 1 / SR)
    return float(spec[(f >= lo) & (f < hi)].sum() / max(len(seg), 1))


def render(path: Path, events: list[dict]) -> Path:
    synthesize(path, seconds=SECONDS, seed=SEED, profile="street", width=W, height=H, fps=FPS, sample_rate=SR,
               events=events)
    return path


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict:
    d = tmp_path_factory.mktemp("synth")
    scene, empty = render(d / "scene.mp4", SCRIPT), render(d / "empty.mp4", [])
    return {"scene": scene, "empty": empty, "labels": load_labels(sidecar_path(scene)),
            "detail": json.loads(sidecar_path(scene).read_text())["synth"]["events"],
            "a": decode(scene), "b": decode(empty)}


def changed_pixels(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per frame, how many luma pixels differ by more than 30 levels (coding noise stays far below)."""
    return (np.abs(a - b) > 30).sum(axis=(1, 2))


def frame_diff(pair: dict, t0: float, t1: float) -> np.ndarray:
    """Changed pixels (scene vs ambient-only) of each frame inside [t0, t1)."""
    times, fa, fb = pair["a"][0], pair["a"][1], pair["b"][1]
    idx = np.nonzero((times >= t0) & (times < t1))[0]
    return changed_pixels(fa[idx], fb[idx])


def test_sidecar_lists_exactly_the_scripted_events(pair: dict) -> None:
    labels = pair["labels"]
    assert labels.duration == SECONDS and labels.footage == "scene.mp4"
    got = [(e.label, e.start, e.end, e.audible, e.visible, e.anomaly) for e in labels.events]
    assert got == [
        ("siren", 0.5, 5.0, True, True, False),
        ("car", 5.5, 8.0, True, True, False),
        ("bicycle", 8.5, 11.5, False, True, False),
        ("offscreen", 9.0, 11.0, True, False, False),
        ("dog", 12.0, 13.5, True, True, False),
        ("glass_break", 14.0, 15.5, True, False, True),
    ]
    siren = pair["detail"][0]
    assert siren["audible_span"] == [0.5, 5.0] and siren["visible_span"] == [2.5, 4.5]


def test_audible_events_raise_band_energy_inside_their_interval_only(pair: dict) -> None:
    audio, quiet = pair["a"][2], pair["b"][2]
    assert len(audio) == len(quiet) == pytest.approx(SECONDS * SR, abs=1024)
    for e in pair["labels"].events:
        if not e.audible:
            continue
        # Every second of the audible span (incl. the siren before it is seen) is louder than the ambient.
        for t in np.arange(e.start, e.end - 0.49, 0.5):
            ratio = band_energy(audio, t, t + 0.5) / band_energy(quiet, t, t + 0.5)
            assert ratio > 3.0, f"{e.label} at {t:.1f} s: band energy only x{ratio:.2f} over the ambient"
    # Before the first event and in the gap with only the silent bicycle, nothing was added.
    for t0, t1 in ((0.0, 0.45), (11.05, 11.95)):
        ratio = band_energy(audio, t0, t1) / band_energy(quiet, t0, t1)
        assert 0.8 < ratio < 1.25, f"audio changed in [{t0}, {t1}) where no event is audible: x{ratio:.2f}"


def test_visible_events_change_pixels_inside_their_view_span(pair: dict) -> None:
    for ev in pair["detail"]:
        if ev["visible_span"] is None:
            continue
        v0, v1 = ev["visible_span"]
        # The object shows in (nearly) every frame of its view span; a parked car or the tree may hide it briefly.
        d = frame_diff(pair, v0 + 0.1 * (v1 - v0), v1 - 0.1 * (v1 - v0))
        assert len(d) >= 10 and np.median(d) >= 20 and np.mean(d > 0) >= 0.75, f"{ev['label']}: {d}"
    # Before anything is visible (the siren's 2 s lead) the picture is exactly the ambient picture.
    assert frame_diff(pair, 0.0, 2.5).max() == 0.0


def test_silent_event_adds_no_audio_and_offscreen_sound_changes_no_pixels(tmp_path: Path, pair: dict) -> None:
    bike = render(tmp_path / "bike.mp4", [{"kind": "bicycle", "start": 3.0, "duration": 5.0, "direction": "right"}])
    horn = render(tmp_path / "horn.mp4", [{"kind": "offscreen", "start": 3.0, "duration": 5.0, "loudness": -10}])
    _, bike_frames, bike_audio = decode(bike)
    _, horn_frames, horn_audio = decode(horn)
    _, empty_frames, empty_audio = pair["b"]
    # The bicycle: seen, never heard (bit-identical soundtrack).
    assert np.array_equal(bike_audio, empty_audio)
    changed = changed_pixels(bike_frames, empty_frames)
    assert changed[:45].max() == 0  # not there before it enters
    assert np.median(changed[50:115]) >= 20 and np.mean(changed[50:115] > 0) >= 0.75  # seen while in view
    # The horn: heard, never seen (bit-identical pictures).
    assert np.array_equal(horn_frames, empty_frames)
    assert band_energy(horn_audio, 3.0, 8.0) > 10 * band_energy(empty_audio, 3.0, 8.0)


def test_same_arguments_give_identical_files_and_another_seed_does_not(tmp_path: Path) -> None:
    def make(name: str, seed: int) -> tuple[str, str]:
        out = tmp_path / name / "street.mp4"
        out.parent.mkdir()
        proc = run_edgeav("synth", out, "--seconds", "8", "--seed", seed, "--profile", "street-anomalies",
                          "--width", "320", "--height", "180", timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "x real time" in proc.stderr  # the rate is reported
        return (hashlib.sha256(out.read_bytes()).hexdigest(),
                hashlib.sha256(sidecar_path(out).read_bytes()).hexdigest())

    first = make("a", 11)
    assert make("b", 11) == first
    assert make("c", 12)[0] != first[0]


def test_players_see_both_streams_with_the_requested_format(tmp_path: Path) -> None:
    out = tmp_path / "fmt.mp4"
    labels = synthesize(out, seconds=6.0, seed=1, profile="easy", width=256, height=144, fps=12.5,
                        sample_rate=22050)
    assert load_labels(sidecar_path(out)) == labels
    probe = json.loads(subprocess.run(
        ["timeout", "30", "ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", str(out)],
        capture_output=True, text=True, check=True).stdout)
    streams = {s["codec_type"]: s for s in probe["streams"]}
    v, a = streams["video"], streams["audio"]
    assert (v["codec_name"], v["width"], v["height"], v["pix_fmt"]) == ("h264", 256, 144, "yuv420p")
    assert Fraction(v["r_frame_rate"]) == Fraction(25, 2)
    assert (a["codec_name"], int(a["sample_rate"]), a["channels"]) == ("aac", 22050, 1)
    assert float(probe["format"]["duration"]) == pytest.approx(6.0, abs=0.05)
    with av.open(str(out)) as c:
        vs = c.streams.video[0]
        keyframes = [float(p.pts * vs.time_base) for p in c.demux(vs) if p.is_keyframe]
        assert float(vs.duration * vs.time_base) == pytest.approx(6.0, abs=0.1)
    assert keyframes[:3] == [0.0, 2.0, 4.0]  # a fixed GOP, like an IP camera
    with av.open(str(out)) as c:
        assert sum(f.samples for f in c.decode(audio=0)) == pytest.approx(6.0 * 22050, abs=1024)
    with av.open(str(out)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 75


def test_profiles_schedule_recurring_events_and_rare_anomalies() -> None:
    hour = 3600.0
    street = random_timeline(PROFILES["street"], seed=0, seconds=hour)
    anomalous = random_timeline(PROFILES["street-anomalies"], seed=0, seconds=hour)
    assert {e.kind for e in street} == set(RECURRING)
    assert not any(e.anomaly for e in street)
    anomalies = [e for e in anomalous if e.anomaly]
    assert {e.kind for e in anomalies} == set(ANOMALIES)
    assert 10 <= len(anomalies) <= 40  # a few per 10 minutes
    # Adding the anomaly kinds does not reshuffle the recurring events (independent streams).
    assert [(e.kind, e.start, e.end) for e in anomalous if not e.anomaly] == [(e.kind, e.start, e.end) for e in street]
    for e in anomalous:
        assert 0 <= e.start < e.end <= hour
        assert e.anomaly == KINDS[e.kind].anomaly
    # Events overlap in time; a kind's occurrences vary in colour, size, speed and loudness.
    assert any(a.end > b.start for a, b in itertools.pairwise(anomalous))
    cars = [e for e in street if e.kind == "car"]
    assert len({e.params["colour"] for e in cars}) == len(cars)
    for key in ("size", "loudness", "pitch"):
        values = [e.params[key] for e in cars]
        assert np.std(values) > 0.05 * abs(np.mean(values)) or np.std(values) > 1.0


@pytest.mark.parametrize(("args", "needles"), [
    (["--seconds", "0"], ["seconds", "0"]),
    (["--seconds", "-3"], ["seconds", "-3"]),
    (["--fps", "0"], ["fps", "0"]),
    (["--width", "321"], ["width", "321", "even"]),
    (["--height", "181"], ["height", "181", "even"]),
    (["--profile", "desert"], ["profile", "desert"]),
    (["--sample-rate", "12345"], ["sample_rate", "12345"]),
])
def test_bad_arguments_are_one_line_errors(tmp_path: Path, args: list[str], needles: list[str]) -> None:
    out = tmp_path / "x.mp4"
    proc = run_edgeav("synth", out, "--seconds", "2", *args, timeout=60) if "--seconds" not in args else \
        run_edgeav("synth", out, *args, timeout=60)
    assert_one_line_error(proc, *needles)
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize(("content", "needles"), [
    ('[{"kind": "unicorn", "start": 1}]', ["events[0].kind", "unicorn"]),
    ('[{"kind": "car", "start": 1,}]', ["not valid JSON", "line 1"]),
    ('{"kind": "car"}', ["top level", "list"]),
    ('[{"kind": "car", "start": 1, "speed": 2, "duration": 3}]', ["events[0]", "duration or speed"]),
    ('[{"kind": "car", "start": 1, "colour": "red"}]', ["events[0].colour", "red"]),
    ('[{"kind": "car", "start": 1.5, "duration": 3}]', ["events[0]", "after the end"]),
    ('[{"kind": "car", "start": 1, "wheels": 4}]', ["events[0]", "wheels"]),
])
def test_bad_timelines_are_one_line_errors_naming_the_file(tmp_path: Path, content: str, needles: list[str]) -> None:
    timeline = tmp_path / "timeline.json"
    timeline.write_text(content)
    proc = run_edgeav("synth", tmp_path / "x.mp4", "--seconds", "3", "--events", timeline, timeout=60)
    assert_one_line_error(proc, "timeline.json", *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["timeline.json"]


def test_unwritable_output_is_a_one_line_error(tmp_path: Path) -> None:
    proc = run_edgeav("synth", tmp_path / "missing" / "x.mp4", "--seconds", "2", timeout=60)
    assert_one_line_error(proc, "missing")
    proc = run_edgeav("synth", "/proc/edgeav-synth.mp4", "--seconds", "2", timeout=60)
    assert_one_line_error(proc, "/proc/edgeav-synth.mp4", "cannot write")


def test_cli_events_file_places_exactly_those_events_with_their_parameters(tmp_path: Path) -> None:
    timeline = tmp_path / "timeline.json"
    timeline.write_text(json.dumps([{"kind": "car", "start": 1.0, "duration": 2.0, "colour": [250, 10, 10],
                                     "direction": "right", "lane": "far", "size": 1.3}]))
    out = tmp_path / "red.mp4"
    proc = run_edgeav("synth", out, "--seconds", "4", "--seed", "2", "--width", "192", "--height", "108",
                      "--events", timeline, timeout=60)
    assert proc.returncode == 0, proc.stderr
    labels = load_labels(sidecar_path(out))
    assert [(e.label, e.start, e.end) for e in labels.events] == [("car", 1.0, 3.0)]
    with av.open(str(out)) as c:
        vs = c.streams.video[0]
        red = [(float(f.pts * vs.time_base), int(((rgb[..., 0] > 150) & (rgb[..., 1] < 80) & (rgb[..., 2] < 80)).sum()))
               for f in c.decode(vs) for rgb in [f.to_ndarray(format="rgb24").astype(int)]]
    inside = [n for t, n in red if 1.2 <= t <= 2.8]
    outside = [n for t, n in red if t < 1.0 or t > 3.0]
    # The red car while it crosses (the tree may hide it for a moment) adds far more red than the
    # background's awnings and signs ever show under the changing light.
    assert np.median(inside) >= max(outside) + 50, red


def test_recordings_of_one_site_share_the_scene(tmp_path):
    """--site fixes the place: two seeds of one site differ only in what happens, another site looks different."""
    import av as _av

    from edgeav.synth import synthesize as _synth

    def first_frame(name: str, seed: int, site: int | None) -> np.ndarray:
        path = tmp_path / f"{name}.mp4"
        _synth(path, seconds=1, seed=seed, site=site, width=160, height=90, events=[])
        with _av.open(str(path)) as c:
            return next(c.decode(video=0)).to_ndarray(format="rgb24").astype(np.float32)

    a, b, other = first_frame("a", 1, 7), first_frame("b", 2, 7), first_frame("c", 1, 8)
    same_site = np.abs(a - b).mean()
    other_site = np.abs(a - other).mean()
    assert same_site < 0.25 * other_site, (same_site, other_site)
