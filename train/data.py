"""Training data: footage -> decoded windows in an on-disk cache -> a memory-mapped dataset.

Each file is decoded once by :func:`edgeav.media.footage_windows` (the runtime's own decoding and frame
preprocessing) and stored as ``.npy`` arrays under a key made of the file's content hash (and its WAV
companion's) and every preprocessing parameter. Later epochs and later runs memory-map those arrays and
decode nothing. A cache entry is written to a temporary directory and renamed into place, so an
interrupted run never leaves a half entry that looks complete.

The split is by time: the last ``val_fraction`` of each file is held out (windows that straddle the split
point are dropped), so validation retrieval measures moments the encoders never trained on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeav.errors import UserError
from edgeav.media import MediaInfo, footage_windows, probe
from edgeav.preprocess import WindowSpec

log = logging.getLogger(__name__)

# Bump when the cached arrays' meaning changes (decoding or frame preprocessing), so old entries are ignored.
CACHE_VERSION = 2


def default_cache_dir() -> Path:
    env = os.environ.get("EDGEAV_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgeav" / "windows"


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def cache_key(info: MediaInfo, spec: WindowSpec) -> str:
    """Content hash of the footage (and its WAV companion) + preprocessing parameters + cache version."""
    parts = {
        "version": CACHE_VERSION,
        "video": file_sha256(info.path),
        "audio": file_sha256(info.audio_path) if info.separate_audio else None,
        "spec": dataclasses.asdict(spec),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:40]


@dataclass
class CachedFile:
    """One file's windows, memory-mapped from the cache."""

    path: Path
    key: str
    t_starts: np.ndarray
    frames: np.ndarray    # uint8 [N, F, H, W, 3], memory-mapped
    audio: np.ndarray     # float32 [N, S], memory-mapped
    duration: float
    from_cache: bool

    def __len__(self) -> int:
        return len(self.t_starts)


def load_or_decode(path: Path, spec: WindowSpec, cache_dir: Path, info: MediaInfo | None = None) -> CachedFile:
    """The file's windows from the cache, decoding and storing them first if they are not there."""
    info = info or probe(path)
    key = cache_key(info, spec)
    entry = cache_dir / key
    from_cache = (entry / "meta.json").is_file()
    if not from_cache:
        w = footage_windows(path, spec, info)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=cache_dir))
        try:
            np.save(tmp / "t_starts.npy", w.t_starts)
            np.save(tmp / "frames.npy", w.frames)
            np.save(tmp / "audio.npy", w.audio)
            meta = {"footage": str(path), "duration": w.duration, "windows": len(w), "version": CACHE_VERSION,
                    "spec": dataclasses.asdict(spec)}
            (tmp / "meta.json").write_text(json.dumps(meta))
            try:
                os.replace(tmp, entry)
            except OSError:  # another process stored the same entry meanwhile: theirs is as good as ours
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    try:
        meta = json.loads((entry / "meta.json").read_text())
        return CachedFile(
            path=path, key=key,
            t_starts=np.load(entry / "t_starts.npy"),
            frames=np.load(entry / "frames.npy", mmap_mode="r"),
            audio=np.load(entry / "audio.npy", mmap_mode="r"),
            duration=float(meta["duration"]), from_cache=from_cache,
        )
    except (OSError, ValueError, KeyError) as exc:
        # A damaged entry (disk full, manual edits): drop it and decode again.
        log.warning("cache entry %s for %s is damaged (%s); decoding again", entry, path, exc)
        shutil.rmtree(entry, ignore_errors=True)
        return load_or_decode(path, spec, cache_dir, info)


@dataclass
class BadFile:
    path: Path
    reason: str


class WindowDataset:
    """All windows of all files, addressed by one global index; ``train_idx``/``val_idx`` split by time."""

    def __init__(self, files: list[CachedFile], spec: WindowSpec, val_fraction: float) -> None:
        self.files = files
        self.spec = spec
        self.offsets = np.cumsum([0] + [len(f) for f in files])
        train, val = [], []
        for f, off in zip(files, self.offsets[:-1], strict=True):
            split_t = f.duration * (1.0 - val_fraction)
            ends = f.t_starts + spec.window_s
            tr = np.nonzero(ends <= split_t + 1e-6)[0]
            va = np.nonzero(f.t_starts >= split_t - 1e-6)[0] if val_fraction > 0 else np.zeros(0, np.int64)
            train.append(tr + off)
            val.append(va + off)
        self.train_idx = np.concatenate(train).astype(np.int64) if train else np.zeros(0, np.int64)
        self.val_idx = np.concatenate(val).astype(np.int64) if val else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def footage_seconds(self) -> float:
        return float(sum(f.duration for f in self.files))

    def locate(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Global indices -> (file number, index within the file)."""
        fi = np.searchsorted(self.offsets, idx, side="right") - 1
        return fi, idx - self.offsets[fi]

    def t_start(self, idx: np.ndarray) -> np.ndarray:
        fi, li = self.locate(np.asarray(idx))
        return np.array([self.files[f].t_starts[i] for f, i in zip(fi, li, strict=True)])

    def fetch(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frames ``uint8 [B, F, H, W, 3]`` and audio ``float32 [B, S]`` of the given windows (copies)."""
        idx = np.asarray(idx, dtype=np.int64)
        s = self.spec
        frames = np.empty((len(idx), s.frames_per_window, s.frame_height, s.frame_width, 3), np.uint8)
        audio = np.empty((len(idx), s.samples_per_window), np.float32)
        fi, li = self.locate(idx)
        for f in np.unique(fi):
            sel = np.nonzero(fi == f)[0]
            local = li[sel]
            order = np.argsort(local)  # ascending reads from the memory map
            frames[sel[order]] = self.files[f].frames[local[order]]
            audio[sel[order]] = self.files[f].audio[local[order]]
        return frames, audio


def probe_footage(paths: list[Path], skip_bad: bool) -> tuple[list[MediaInfo], list[BadFile]]:
    """Read every file's headers before anything is decoded, so a bad file stops a run before it starts.

    Without ``skip_bad`` the first bad file raises its reason; with it, bad files are collected.
    """
    bad: list[BadFile] = []
    infos: list[MediaInfo] = []
    for p in paths:
        try:
            infos.append(probe(p))
        except UserError as exc:
            if not skip_bad:
                raise UserError(f"{exc} (use --skip-bad to train on the other files)") from None
            bad.append(BadFile(p, str(exc)))
    return infos, bad


def build_dataset(infos: list[MediaInfo], spec: WindowSpec, cache_dir: Path, val_fraction: float,
                  skip_bad: bool, bad: list[BadFile] | None = None) -> tuple[WindowDataset, list[BadFile]]:
    """Decode (or load from the cache) each probed file into one dataset.

    A file that fails while decoding (truncated, corrupt) stops everything with its reason, or with
    ``skip_bad`` joins ``bad``. A dataset with no training windows is a :class:`UserError`.
    """
    bad = list(bad or [])
    files: list[CachedFile] = []
    for info in infos:
        try:
            cf = load_or_decode(info.path, spec, cache_dir, info)
        except UserError as exc:
            if not skip_bad:
                raise UserError(f"{exc} (use --skip-bad to train on the other files)") from None
            bad.append(BadFile(info.path, str(exc)))
            continue
        if len(cf) == 0:
            reason = f"{info.path}: too short for one {spec.window_s:g} s window ({cf.duration:.2f} s)"
            if not skip_bad:
                raise UserError(reason)
            bad.append(BadFile(info.path, reason))
            continue
        files.append(cf)
    ds = WindowDataset(files, spec, val_fraction)
    if len(ds.train_idx) == 0:
        n = len(infos) + len(bad) - sum(b.path in {i.path for i in infos} for b in bad)
        if n == 0:
            raise UserError("empty dataset: no footage files in the given FOOTAGE")
        extra = f", {len(bad)} skipped as bad" if bad else ""
        raise UserError(f"empty dataset: {n} footage file(s){extra} gave no training windows")
    return ds, bad
