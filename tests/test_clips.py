"""Evidence clips: real H.264/AAC packets through the ring buffer into an MP4 that PyAV opens, no re-encoding."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import av
import pytest
from footage_helpers import ffmpeg

from edgeav.clips import ClipRecorder, enforce_retention


@pytest.fixture(scope="module")
def camera_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 s of H.264 (a keyframe every second) with AAC audio, like an IP camera's stream."""
    p = tmp_path_factory.mktemp("cam") / "cam.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=15", "-f", "lavfi", "-i",
           "sine=frequency=440:sample_rate=16000", "-t", "12", "-c:v", "libx264", "-preset", "ultrafast",
           "-g", "15", "-pix_fmt", "yuv420p", "-c:a", "aac", str(p))
    return p


def feed(recorder: ClipRecorder, path: Path, until: float = 1e9, video_only: bool = False,
         at: tuple[float, object] | None = None) -> None:
    """Demux ``path`` and hand every packet to the recorder with its time (the file's clock);
    ``at=(t, fn)`` calls ``fn()`` once when the stream reaches ``t`` (an alert raised live)."""
    with av.open(str(path)) as c:
        streams = [s for s in c.streams if s.type == "video" or (s.type == "audio" and not video_only)]
        for packet in c.demux(streams):
            if packet.pts is None:
                continue
            t = float(packet.pts * packet.time_base)
            if t > until:
                break
            if at is not None and t >= at[0]:
                at[1]()  # type: ignore[operator]
                at = None
            recorder.add_packet(packet, t)


def wait_result(results: list, n: int = 1, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while len(results) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(results) >= n, "no clip callback"


def test_clip_around_an_alert_opens_with_video_and_audio(camera_file, tmp_path):
    rec = ClipRecorder("gate", tmp_path / "clips", pre_s=2.0, post_s=2.0)
    results: list = []
    with av.open(str(camera_file)) as c:
        packets = (p for p in c.demux() if p.pts is not None)
        for packet in packets:  # live: packets arrive, an alert is raised at 6.0 s for [5.2, 6.0]
            t = float(packet.pts * packet.time_base)
            rec.add_packet(packet, t)
            if t >= 6.0:
                rec.request(5.2, 6.0, "alert-1", results.append)
                break
        for packet in packets:
            t = float(packet.pts * packet.time_base)
            if t > 7.5:
                break
            rec.add_packet(packet, t)
        time.sleep(0.3)
        assert results == [], "the clip must wait for the seconds after the alert"
        for packet in packets:
            rec.add_packet(packet, float(packet.pts * packet.time_base))
    wait_result(results)
    clip = results[0]
    assert clip is not None
    path = Path(clip["path"])
    assert path.parent == tmp_path / "clips" / "gate" and path.suffix == ".mp4"
    assert clip["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    with av.open(str(path)) as c:
        kinds = sorted(s.type for s in c.streams)
        assert kinds == ["audio", "video"]
        v = c.streams.video[0]
        assert v.codec_context.name == "h264" and c.streams.audio[0].codec_context.name == "aac"  # not re-encoded
        frames = [f for f in c.decode(video=0)]
    duration = len(frames) / 15
    # From the keyframe at or before 3.2 s (3.0 s) to 8.0 s: about 5 s, decodable from its first frame.
    assert 4.5 <= duration <= 5.6, duration
    assert not [p for p in tmp_path.rglob("*.part")]
    rec.flush()


def test_pending_clip_written_on_deadline_and_without_audio(camera_file, tmp_path):
    """The camera stops sending after the alert: the clip is written with what there is, by the deadline."""
    rec = ClipRecorder("yard", tmp_path / "clips", pre_s=1.0, post_s=30.0)
    results: list = []
    feed(rec, camera_file, until=4.0, video_only=True)
    rec.request(3.0, 3.5, "a2", results.append, timeout_s=0.0)
    time.sleep(0.1)
    rec.poll()
    assert not results or results[0] is not None
    rec.flush()
    wait_result(results)
    with av.open(results[0]["path"]) as c:
        assert [s.type for s in c.streams] == ["video"]
        assert sum(1 for _ in c.decode(video=0)) >= 15


def test_no_video_in_the_buffer_gives_no_clip_not_a_broken_file(tmp_path):
    rec = ClipRecorder("empty", tmp_path / "clips")
    results: list = []
    rec.request(1.0, 2.0, "a3", results.append, timeout_s=0.0)
    rec.flush()
    assert results == [None]
    assert not list((tmp_path / "clips").rglob("*"))


def test_retention_by_age_then_size_oldest_first(tmp_path):
    d = tmp_path / "clips" / "cam"
    d.mkdir(parents=True)
    now = time.time()
    ages_days = [10, 5, 3, 2, 1]  # the first is past the 7-day limit
    for i, age in enumerate(ages_days):
        p = d / f"c{i}.mp4"
        p.write_bytes(b"x" * 1000)
        os.utime(p, (now - age * 86400, now - age * 86400))
    (d / "notes.txt").write_text("not a clip")
    deleted = enforce_retention(tmp_path / "clips", max_age_days=7, max_bytes=2500, now=now)
    assert deleted == 3
    assert sorted(p.name for p in d.iterdir()) == ["c3.mp4", "c4.mp4", "notes.txt"]
    assert enforce_retention(tmp_path / "clips", max_age_days=0, max_bytes=0, now=now) == 0
