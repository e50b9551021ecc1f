"""Replay's background decoding (pipeline.prefetched): same windows as the serial path, errors and stops handled."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeav.bundle import load_bundle
from edgeav.pipeline import CameraPipeline, prefetched, run_file


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
    bundle = load_bundle(tiny_bundle)
    footage = footage_dir / "anomalies.mp4"
    got = {}
    for prefetch in (False, True):
        sink = _Records()
        pipeline = CameraPipeline("cam", bundle, [sink], source_id=str(footage), batch_size=8)
        stats = run_file(footage, pipeline, prefetch=prefetch)
        got[prefetch] = (sink.records, stats.windows, stats.frames_converted)
    serial, threaded = got[False], got[True]
    assert serial[1] == 79 and serial[2] > 0  # 40 s: every window on the 0.5 s grid, frames converted
    assert threaded == serial, "background decoding must not change a single record"


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
