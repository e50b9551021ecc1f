"""The embedding index: every window's audio and video embeddings with camera, footage and time, on disk.

Layout of an index directory::

    index.json            schema, embedding size, bundle id (an index holds one bundle's embeddings)
    names.jsonl           append-only: {"id": n, "camera": ..., "footage": ...} for each source
    seg-000000.f32        append-only rows of fixed size (see ROW below), one segment per ~64 MB
    records.jsonl         append-only: the event and alert records written with the windows

Why this shape: rows have a fixed size and are appended with one ``write`` each, so a crash
mid-write leaves at most a partial last row, which readers ignore (the file size is cut
down to whole rows) — the index is never lost. Segments are plain float32 arrays read in
chunks straight into the result (peak RAM ~1x the index): no pickle, no database, and
retention deletes whole old segments.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeav.errors import UserError

SCHEMA = "edgeav.index/1"
META = "index.json"
NAMES = "names.jsonl"
RECORDS = "records.jsonl"
SEGMENT_BYTES = 64 * 1024 * 1024
# A row: t_start, t_end (as float32 pairs of a float64 split would be fragile: store float64 as two float32 words)
_HEAD = 5  # t_start (f64 = 2 words), t_end (f64 = 2 words), source id (1 word, as float32-bit-cast uint32)
# read_index reads segments through a buffer of about this many bytes (the only memory beyond the result).
_READ_BYTES = 4 * 1024 * 1024


def _row_size(dim: int) -> int:
    return _HEAD + 2 * dim


@dataclass
class IndexedWindows:
    """What a search sees: times, sources and the two embeddings of every indexed window."""

    t_start: np.ndarray       # float64 [N]
    t_end: np.ndarray         # float64 [N]
    source: np.ndarray        # uint32 [N]
    audio: np.ndarray         # float32 [N, D]
    video: np.ndarray         # float32 [N, D]
    names: dict[int, dict[str, str]]

    def __len__(self) -> int:
        return len(self.t_start)


class IndexWriter:
    """Appends windows of one or more sources to an index directory (created when missing)."""

    def __init__(self, directory: str | Path, embedding_size: int, bundle_id: str,
                 max_age_days: float | None = None, max_bytes: int | None = None) -> None:
        self.dir = Path(directory)
        self.dim = embedding_size
        self.bundle_id = bundle_id
        self.max_age_days = max_age_days
        self.max_bytes = max_bytes
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"{self.dir}: cannot create the index directory ({exc.strerror})") from None
        meta_path = self.dir / META
        if meta_path.exists():
            meta = read_meta(self.dir)
            if meta["embedding_size"] != embedding_size or meta["bundle_id"] != bundle_id:
                raise UserError(f"{self.dir}: index holds embeddings of bundle {meta['bundle_id']} "
                                f"({meta['embedding_size']}-d); this bundle is {bundle_id} ({embedding_size}-d): "
                                "use another --index directory")
        else:
            _atomic_write(meta_path, json.dumps({"schema": SCHEMA, "embedding_size": embedding_size,
                                                 "bundle_id": bundle_id}) + "\n")
        self._names = _read_names(self.dir)
        self._segment: Path | None = None
        self._fh: Any = None
        self._records = None

    def source_id(self, camera: str, footage: str = "") -> int:
        for sid, n in self._names.items():
            if n["camera"] == camera and n["footage"] == footage:
                return sid
        sid = max(self._names, default=-1) + 1
        self._names[sid] = {"camera": camera, "footage": footage}
        with open(self.dir / NAMES, "a", encoding="utf-8") as f:
            f.write(json.dumps({"id": sid, "camera": camera, "footage": footage}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return sid

    def add(self, source: int, t_start: np.ndarray, t_end: np.ndarray, audio: np.ndarray, video: np.ndarray) -> None:
        """Append windows (one ``write`` per window so a crash cuts at most the last one)."""
        n = len(t_start)
        rows = np.empty((n, _row_size(self.dim)), dtype=np.float32)
        rows[:, 0:2] = np.asarray(t_start, np.float64).view(np.float32).reshape(n, 2)
        rows[:, 2:4] = np.asarray(t_end, np.float64).view(np.float32).reshape(n, 2)
        rows[:, 4] = np.full(n, source, np.uint32).view(np.float32)
        rows[:, _HEAD:_HEAD + self.dim] = audio
        rows[:, _HEAD + self.dim:] = video
        fh = self._open_segment()
        for row in rows:
            fh.write(row.tobytes())
        fh.flush()

    def add_record(self, record: dict[str, Any]) -> None:
        if self._records is None:
            self._records = open(self.dir / RECORDS, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self._records.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._records.flush()

    def close(self) -> None:
        for fh in (self._fh, self._records):
            if fh is not None:
                fh.flush()
                os.fsync(fh.fileno())
                fh.close()
        self._fh = self._records = None
        self.apply_retention()

    def _open_segment(self) -> Any:
        if self._fh is not None and self._fh.tell() < SEGMENT_BYTES:
            return self._fh
        if self._fh is not None:
            self._fh.close()
        segs = segments(self.dir)
        if segs and segs[-1].stat().st_size < SEGMENT_BYTES and self._segment is None:
            path = segs[-1]
            _cut_partial_row(path, _row_size(self.dim))
        else:
            nxt = int(segs[-1].stem.split("-")[1]) + 1 if segs else 0
            path = self.dir / f"seg-{nxt:06d}.f32"
        self._segment = path
        self._fh = open(path, "ab")  # noqa: SIM115 (kept open across calls, closed in close())
        return self._fh

    def apply_retention(self, now: float | None = None) -> list[Path]:
        """Delete whole old segments beyond the age or size limit (never the newest one)."""
        removed: list[Path] = []
        segs = segments(self.dir)
        now = time.time() if now is None else now
        if self.max_age_days is not None:
            for s in segs[:-1]:
                if now - s.stat().st_mtime > self.max_age_days * 86400:
                    s.unlink()
                    removed.append(s)
            segs = [s for s in segs if s not in removed]
        if self.max_bytes is not None:
            while len(segs) > 1 and sum(s.stat().st_size for s in segs) > self.max_bytes:
                segs[0].unlink()
                removed.append(segs.pop(0))
        return removed


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _cut_partial_row(path: Path, row_words: int) -> None:
    size = path.stat().st_size
    whole = size - size % (row_words * 4)
    if whole != size:
        with open(path, "r+b") as f:
            f.truncate(whole)


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("seg-*.f32"))


def read_meta(directory: str | Path) -> dict[str, Any]:
    d = Path(directory)
    path = d / META
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{d}: not an edgeav index (no {META}); make one with `edgeav replay --index {d}`") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: unreadable index metadata ({exc})") from None
    if not isinstance(meta, dict) or meta.get("schema") != SCHEMA or not isinstance(meta.get("embedding_size"), int):
        raise UserError(f"{path}: not an {SCHEMA} index")
    return meta


def _read_names(directory: Path) -> dict[int, dict[str, str]]:
    out: dict[int, dict[str, str]] = {}
    path = directory / NAMES
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            n = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line after a crash
        out[int(n["id"])] = {"camera": n["camera"], "footage": n.get("footage", "")}
    return out


def read_index(directory: str | Path) -> IndexedWindows:
    """Every whole row of every segment (a torn last row is ignored).

    Peak memory stays near the loaded index's own size: the result arrays are allocated once and each
    segment is read in small chunks straight into its slice of them (no concatenated copy of the rows, no
    mapped segment pages counted against the process). ``python -m edgeav.search_bench`` measures it.
    """
    d = Path(directory)
    meta = read_meta(d)
    dim = meta["embedding_size"]
    words = _row_size(dim)
    row_bytes = words * 4
    sizes: list[tuple[Path, int]] = []
    for s in segments(d):
        try:
            n = s.stat().st_size // row_bytes
        except FileNotFoundError:  # removed by retention since the listing
            continue
        if n:
            sizes.append((s, n))
    total = sum(n for _, n in sizes)
    t_start = np.empty(total, np.float64)
    t_end = np.empty(total, np.float64)
    source = np.empty(total, np.uint32)
    audio = np.empty((total, dim), np.float32)
    video = np.empty((total, dim), np.float32)
    # The rows' float64 times and uint32 ids are stored as float32 words: write the words in place.
    t_start_words = t_start.view(np.float32).reshape(total, 2)
    t_end_words = t_end.view(np.float32).reshape(total, 2)
    source_words = source.view(np.float32)
    buf = np.empty((max(1, min(total, _READ_BYTES // row_bytes)), words), np.float32)
    at = 0
    for seg, n in sizes:
        try:
            f = open(seg, "rb")  # noqa: SIM115 (closed by the with below; opening may fail on its own)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise UserError(f"{seg}: cannot read the index segment ({exc.strerror})") from None
        with f:
            left = n
            while left:
                want = min(left, len(buf))
                got = f.readinto(buf[:want].data.cast("B"))
                k = got // row_bytes
                rows = buf[:k]
                t_start_words[at:at + k] = rows[:, 0:2]
                t_end_words[at:at + k] = rows[:, 2:4]
                source_words[at:at + k] = rows[:, 4]
                audio[at:at + k] = rows[:, _HEAD:_HEAD + dim]
                video[at:at + k] = rows[:, _HEAD + dim:]
                at += k
                left -= k
                if k < want:  # the segment was cut shorter since its size was read: keep its whole rows
                    break
    # Rows a concurrent retention removed are cut off (slicing the first axis copies nothing).
    return IndexedWindows(t_start=t_start[:at], t_end=t_end[:at], source=source[:at], audio=audio[:at],
                          video=video[:at], names=_read_names(d))


def iter_records(directory: str | Path) -> Iterator[dict[str, Any]]:
    path = Path(directory) / RECORDS
    if not path.exists():
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line after a crash
