"""What keeps `edgeav replay` near the decoding floor, and that it changes nothing a user sees.

Background decoding (reader.prefetched): the same records as the serial path, errors and early stops
handled. Start-up: `edgeav replay` builds its parser without importing the other commands' modules.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeav.bundle import load_bundle
from edgeav.pipeline import CameraPipeline, run_file
from edgeav.reader import FileReader, prefetched


class _Records:
    """Every record the pipeline emits, in order."""

    def __init__(self) -> None:
        self.records: list[tuple[str, dict[str, Any]]] = []

    def window(self, record: dict[str, Any]) -> None:
        self.records.append(("window", record))

    def event(self, record: dict[str, Any]) -> None:
        self.records.append(("event", record))

    def alert(self, record: dict[str, Any]) -> None:
        self.records.append(("alert", record))


def test_prefetched_replay_emits_exactly_the_serial_records(tiny_bundle: Path, footage_dir: Path) -> None:
    """Background decoding and embedding ahead in worker threads (replay's defaults on a multi-core box) give
    the serial path's records, in its order."""
    bundle = load_bundle(tiny_bundle)
    footage = footage_dir / "anomalies.mp4"
    got = {}
    for prefetch, embed_threads in ((False, 0), (True, 0), (True, 2)):
        sink = _Records()
        pipeline = CameraPipeline("cam", bundle, [sink], source_id=str(footage), batch_size=8,
                                  embed_threads=embed_threads)
        stats = run_file(footage, pipeline, prefetch=prefetch)
        got[prefetch, embed_threads] = (sink.records, stats.windows, stats.frames_converted, stats.alerts)
        # The CPU accounting `edgeav bench` prints: every stage charged, none twice (the process CPU of the run
        # holds the threads' shares and FFmpeg's decoder threads besides).
        cpu = stats.cpu.as_dict()
        assert all(cpu[stage] > 0 for stage in ("decode", "preprocess", "embed", "decide")), cpu
        assert stats.run_cpu >= sum(cpu.values()), (stats.run_cpu, cpu)
    serial = got[False, 0]
    assert serial[1] == 79 and serial[2] > 0 and serial[3] > 0  # 40 s: every window on the 0.5 s grid, an alert
    assert got[True, 0] == serial, "background decoding must not change a single record"
    assert got[True, 2] == serial, "embedding in worker threads must not change a single record or its order"


def test_a_reader_started_before_the_bundle_loads_gives_the_same_records(tiny_bundle: Path, footage_dir: Path) -> None:
    """Replay starts decoding the first file before it loads the sessions (FileReader): same records, and a reader
    that is never read stops its thread when closed (a bundle that fails to load leaves nothing running)."""
    footage = footage_dir / "anomalies.mp4"
    before = set(threading.enumerate())
    bundle = load_bundle(tiny_bundle)
    unread = FileReader(footage, bundle.window_spec, depth=4)
    unread.close()
    assert not [t for t in set(threading.enumerate()) - before if t.name == "edgeav-decode"]
    got = []
    for early in (False, True):
        reader = FileReader(footage, bundle.window_spec, depth=16) if early else None
        sink = _Records()
        pipeline = CameraPipeline("cam", load_bundle(tiny_bundle), [sink], source_id=str(footage), batch_size=8)
        stats = run_file(footage, pipeline, reader=reader)
        got.append((sink.records, stats.windows, stats.frames_converted))
        assert stats.cpu.decode > 0 and stats.times.decode > 0 and stats.frames_converted > 0
    assert got[0] == got[1]
    with FileReader(footage, bundle.window_spec) as other, pytest.raises(ValueError, match="reader for"):
        run_file(footage_dir / "x.mp4", CameraPipeline("cam", bundle, []), reader=other)


def _numbers(n: int, closed: threading.Event, fail_at: int | None = None) -> Iterator[int]:
    try:
        for i in range(n):
            if i == fail_at:
                raise ValueError(f"bad item {i}")
            yield i
    finally:
        closed.set()


def test_prefetched_keeps_order_and_raises_the_producers_error_after_its_items() -> None:
    closed = threading.Event()
    assert list(prefetched(_numbers(100, closed), depth=3)) == list(range(100))
    assert closed.is_set()
    seen: list[int] = []
    closed = threading.Event()
    with pytest.raises(ValueError, match="bad item 5"):
        for i in prefetched(_numbers(10, closed, fail_at=5), depth=2):
            seen.append(i)
    assert seen == [0, 1, 2, 3, 4] and closed.is_set()


def test_a_consumer_that_stops_early_stops_and_closes_the_producer() -> None:
    closed = threading.Event()
    before = set(threading.enumerate())
    items = prefetched(_numbers(10_000, closed), depth=2, name="test-prefetch")
    assert next(items) == 0
    items.close()  # what an exception in the consumer's loop does to the generator
    assert closed.is_set(), "the producer's generator is closed (a decoder's container with it)"
    assert not [t for t in set(threading.enumerate()) - before if t.name == "test-prefetch"]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc")
def test_replay_starts_without_the_other_commands_modules(tmp_path: Path) -> None:
    # pydantic and yaml (edgeav.config) cost ~0.1 s of CPU at every start; replay needs them only with --config.
    # And numpy's BLAS keeps to one thread (its spinning workers took CPU from the decoder): a matrix product
    # after the run leaves the process with its main thread only.
    code = ("import os, sys\nfrom edgeav.cli import main\n"
            "code = main(sys.argv[1:])\n"
            "heavy = ('pydantic', 'yaml', 'edgeav.config', 'edgeav.daemon')\n"
            "import numpy as np\na = np.ones((400, 400))\na @ a\n"
            "print(code, sorted(m for m in heavy if m in sys.modules), len(os.listdir('/proc/self/task')))")
    missing = tmp_path / "missing.mp4"
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    for argv in (["replay", str(missing)], ["--log-level", "debug", "replay", str(missing)]):
        proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60,
                              env=env)
        assert proc.stdout.split("\n")[-2] == "2 [] 1", proc.stdout + proc.stderr
        assert proc.stderr.startswith("edgeav: error:") and "missing.mp4" in proc.stderr
    # Every other command, and the top-level help, still sees every command.
    proc = subprocess.run([sys.executable, "-m", "edgeav", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "replay" in proc.stdout and "config" in proc.stdout


def test_what_replay_needs_before_its_first_frame_leaves_opencv_and_onnxruntime_for_later() -> None:
    # replay.run starts the first file's reader after these imports and reads the window spec through the bundle
    # module; OpenCV (~20 ms) and onnxruntime (~30 ms) must then load beside decoding, not before it.
    code = ("import sys\nimport edgeav.replay, edgeav.reader, edgeav.media, edgeav.splitdecode, edgeav.bundle\n"
            "print(sorted(m for m in ('cv2', 'onnxruntime', 'edgeav.pipeline') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_bench_prints_the_floor_replay_and_where_the_cpu_goes() -> None:
    import re

    from tests.conftest import run_edgeav

    proc = run_edgeav("bench", "--seconds", "3", "--width", "320", "--height", "180", "--repeat", "2", timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in proc.stdout.splitlines()
                if re.search(r"\S\s{2,}\S", line))

    def seconds(row: str) -> float:
        return float(re.match(r"([\d.]+) s", rows[row]).group(1))

    floor_wall, replay_wall = seconds("ffmpeg decode-only (floor)"), seconds("edgeav replay (whole process)")
    ratio = float(re.search(r"= ([\d.]+) x the floor", rows["edgeav replay (whole process)"]).group(1))
    # The printed ratio is of the unrounded times: within the rounding of the two printed ones.
    assert (replay_wall - 0.005) / (floor_wall + 0.005) - 0.01 <= ratio <= (replay_wall + 0.005) / (floor_wall - 0.005)
    parts = [seconds(f"CPU: {stage}") for stage in ("start-up", "decode", "preprocess", "embed", "decide")]
    assert all(p >= 0 for p in parts) and parts[1] > 0 and parts[3] > 0, rows
    replay_cpu = float(re.search(r"([\d.]+) s CPU", rows["edgeav replay (whole process)"]).group(1))
    assert sum(parts) <= replay_cpu + 0.05, (parts, replay_cpu)  # the parts are shares of the whole
    assert "cores" in rows["machine"] and rows["windows"].startswith("5 ")
    assert rows["encoding"].startswith("--encoding camera: x264 veryfast"), rows  # a camera's stream by default
