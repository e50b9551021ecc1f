"""``edgeav search``: find moments like this one in indexed footage (query by example).

Exact search: cosine similarity by one matrix-vector product over every indexed window
(embeddings are L2-normalised), then the best windows are merged with their
neighbours into moments. At our scale (a day of one camera, ~170,000 windows) that is
milliseconds (``python -m edgeav.search_bench`` prints the figure); past tens of millions
of windows an approximate nearest-neighbour library (FAISS, an IVF-PQ or HNSW index)
takes over, as design.md section 5 says.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeav.errors import UserError
from edgeav.index import IndexedWindows, iter_records, read_index, read_meta

if TYPE_CHECKING:
    from edgeav.media import MediaInfo

MODES = ("joint", "audio", "video")
# A window joins the moment it touches when its similarity is within this of the moment's best.
MERGE_MARGIN = 0.1


@dataclass(frozen=True)
class Moment:
    camera: str
    footage: str
    t_start: float
    t_end: float
    score: float
    source: int

    def to_json(self) -> dict[str, Any]:
        return {"camera": self.camera, "footage": self.footage, "t_start": round(self.t_start, 3),
                "t_end": round(self.t_end, 3), "score": round(self.score, 4)}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / max(float(np.linalg.norm(x)), 1e-12)


def similarity(index: IndexedWindows, q_audio: np.ndarray, q_video: np.ndarray, mode: str) -> np.ndarray:
    """Cosine similarity of every indexed window to the query: one modality, or the mean of both."""
    if mode == "audio":
        return index.audio @ _unit(q_audio)
    if mode == "video":
        return index.video @ _unit(q_video)
    return 0.5 * (index.audio @ _unit(q_audio) + index.video @ _unit(q_video))


def top_moments(index: IndexedWindows, scores: np.ndarray, top: int,
                exclude: tuple[int, float, float] | None = None, pool: int = 20) -> list[Moment]:
    """The ``top`` best moments: the best ``pool * top`` windows, adjacent ones merged, ranked by their best window.

    ``exclude`` = (source, t0, t1) drops windows overlapping the query itself.
    """
    s = scores.astype(np.float64).copy()
    if exclude is not None:
        src, t0, t1 = exclude
        s[(index.source == src) & (index.t_start < t1) & (index.t_end > t0)] = -np.inf
    m = min(len(s), max(top * pool, top))
    if m == 0:
        return []
    cand = np.argpartition(-s, m - 1)[:m]
    cand = cand[np.isfinite(s[cand])]
    cand = cand[np.lexsort((index.t_start[cand], index.source[cand], -s[cand]))]  # best first, ties by time
    # Greedy, best window first: a window touching a moment joins it when it is nearly as similar as the
    # moment's best (so one occurrence becomes one time range), otherwise it is suppressed; a window
    # touching no moment starts a new one while there is room.
    moments: list[list[Any]] = []  # [source, t0, t1, best]
    for i in cand:
        src, t0, t1, sc = int(index.source[i]), float(index.t_start[i]), float(index.t_end[i]), float(s[i])
        near = next((mo for mo in moments if mo[0] == src and t0 <= mo[2] + 1e-6 and t1 >= mo[1] - 1e-6), None)
        if near is not None:
            if sc >= near[3] - MERGE_MARGIN:
                near[1], near[2] = min(near[1], t0), max(near[2], t1)
            continue
        if len(moments) < top:
            moments.append([src, t0, t1, sc])
    return [_moment(index, *mo) for mo in moments]


def _moment(index: IndexedWindows, src: int, t0: float, t1: float, score: float) -> Moment:
    name = index.names.get(src, {"camera": f"source{src}", "footage": ""})
    return Moment(name["camera"], name["footage"], t0, t1, score, src)


def query_from_index(index: IndexedWindows, source: int, t0: float, t1: float) -> tuple[np.ndarray, np.ndarray]:
    sel = (index.source == source) & (index.t_start >= t0 - 1e-6) & (index.t_end <= t1 + 1e-6)
    if not sel.any():  # an event shorter than a window: take the windows overlapping it
        sel = (index.source == source) & (index.t_start < t1) & (index.t_end > t0)
    if not sel.any():
        raise UserError(f"no indexed windows of that source between {t0:.2f} and {t1:.2f} s")
    return index.audio[sel].mean(0), index.video[sel].mean(0)


def find_event(directory: Path, event_id: str) -> tuple[int, float, float]:
    for entry in iter_records(directory):
        rec = entry.get("record", {})
        if rec.get("id") == event_id:
            return int(entry["source"]), float(rec["t_start"]), float(rec["t_end"])
    raise UserError(f"{directory}: no event or alert with id {event_id!r} in this index")


# The streams a query clip must have for each --mode (the others are not decoded).
MODE_STREAMS = {"joint": ("video", "audio"), "audio": ("audio",), "video": ("video",)}


def check_clip_streams(clip: Path, mode: str) -> tuple[MediaInfo, tuple[str, ...]]:
    """The clip's headers and the modalities to decode from it for ``mode``; a clip missing one is a
    :class:`UserError`.

    A video-only clip is a fine query for ``--mode video`` (and an audio-only one for ``--mode audio``);
    a clip missing a stream the mode compares gets one line naming the clip, the stream and the mode that works.
    """
    from edgeav.media import probe

    info = probe(clip, require_audio=False, require_video=False)
    present = {"video": info.has_video, "audio": info.has_audio}
    need = MODE_STREAMS[mode]
    missing = [m for m in need if not present[m]]
    if missing:
        what = missing[0]
        other = "video" if what == "audio" else "audio"
        if what == "audio":
            why = f"no audio stream (and no {clip.stem}.wav beside it)"
        else:
            why = "no video stream (an audio-only file)"
        uses = "(the default) compares audio and video" if mode == "joint" else f"compares {what} only"
        raise UserError(f"{clip}: {why}, and --mode {mode} {uses}: search this clip with --mode {other}")
    return info, need


def query_from_clip(models: str | None, clip: Path, start: float | None, end: float | None,
                    meta: dict[str, Any], mode: str = "joint") -> tuple[np.ndarray, np.ndarray]:
    """The query embeddings of a clip (or its ``start``-``end`` part); a modality ``mode`` ignores is zeros."""
    from edgeav.bundle import load_bundle
    from edgeav.media import footage_windows

    info, modalities = check_clip_streams(clip, mode)
    bundle = load_bundle(models)
    if bundle.bundle_id != meta["bundle_id"]:
        raise UserError(f"bundle {bundle.bundle_id} is not the one this index was built with ({meta['bundle_id']}): "
                        "give the index's bundle with --models")
    fw = footage_windows(clip, bundle.window_spec, info, modalities=modalities)
    t0 = -np.inf if start is None else start
    t1 = np.inf if end is None else end
    sel = (fw.t_starts >= t0 - 1e-6) & (fw.t_starts + bundle.window_spec.window_s <= t1 + 1e-6)
    if not sel.any():
        sel = (fw.t_starts < t1) & (fw.t_starts + bundle.window_spec.window_s > t0)
    if not sel.any():
        raise UserError(f"{clip}: no window between --start {start} and --end {end}")
    dim = int(meta["embedding_size"])
    qa = bundle.embed_audio(fw.audio[sel]).mean(0) if "audio" in modalities else np.zeros(dim, np.float32)
    qv = bundle.embed_video(fw.frames[sel]).mean(0) if "video" in modalities else np.zeros(dim, np.float32)
    return qa, qv


def run(args: argparse.Namespace) -> int:
    directory = Path(args.index)
    meta = read_meta(directory)
    if args.top < 1:
        raise UserError(f"--top: {args.top} must be at least 1")
    index = read_index(directory)
    exclude = None
    if args.event:
        src, t0, t1 = find_event(directory, args.event)
        qa, qv = query_from_index(index, src, t0, t1)
        exclude = (src, t0, t1)
    else:
        clip = Path(args.clip)
        qa, qv = query_from_clip(args.models, clip, args.start, args.end, meta, args.mode)
        for sid, n in index.names.items():  # the clip is indexed footage: do not return the query itself
            if n["footage"] and Path(n["footage"]).resolve() == clip.resolve():
                exclude = (sid, args.start or 0.0, args.end if args.end is not None else np.inf)
    moments = top_moments(index, similarity(index, qa, qv, args.mode), args.top, exclude)
    if args.json:
        json.dump([m.to_json() for m in moments], sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    if not moments:
        print("no matches (the index is empty)")
    for rank, m in enumerate(moments, 1):
        where = f"{m.footage} " if m.footage else ""
        print(f"{rank:>3}. {m.camera:<12} {where}{m.t_start:9.2f}-{m.t_end:9.2f} s  score {m.score:.3f}")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("search", help="find moments like a clip or an event in indexed footage",
                              description="Query by example over an index written by `edgeav replay --index`.")
    p.add_argument("--index", required=True, metavar="DIR", help="index directory")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--clip", metavar="FILE", help="query footage (use --start/--end for a part of it)")
    q.add_argument("--event", metavar="ID", help="id of an event or alert recorded in the index")
    p.add_argument("--start", type=float, help="query start in seconds (with --clip)")
    p.add_argument("--end", type=float, help="query end in seconds (with --clip)")
    p.add_argument("--top", type=int, default=10, help="moments to return (default 10)")
    p.add_argument("--mode", choices=MODES, default="joint", help="similarity: joint (default), audio or video")
    p.add_argument("--models", metavar="BUNDLE_DIR", help="bundle that built the index (for --clip)")
    p.add_argument("--json", action="store_true", help="print a JSON list of moments")
    p.set_defaults(func=run)
