"""Embedding-based pair generation (EPG, design.md section 3): mine cross-modal positives from a memory bank.

Once per epoch (after a warm-up of temporal-only epochs) the training loop embeds
every training window with the current encoders and hands the audio and video
embeddings to a :class:`MemoryBank`. :class:`PairGenerator` then mines the
embedding-based labels ``y_e``; the loss uses ``y = y_t OR y_e`` where ``y_t`` is
the temporal identity.

The rule (ours, design.md section 3), for video window ``i`` and audio window ``j``:

1. Candidates: every audio window except those of the *same file within
   ``exclude_within_s`` seconds* of ``i`` (the window itself included). Those are
   temporal neighbours that share or continue the anchor's content: they would
   take the top-k slots on every epoch and teach nothing about *recurring* events,
   which is what EPG is for. They are removed before the top-k, so the ``k``
   slots go to genuinely mined candidates.
2. Mutual top-k by cosine similarity: ``a_j`` is among the ``k`` candidates most
   similar to ``v_i`` AND ``v_i`` is among the ``k`` candidates most similar to
   ``a_j``. One-sided neighbours are mostly hubs (a bland background window that
   is everybody's neighbour); mutuality removes them.
3. A rank-based cut-off, never a cosine floor: the lab saw the similarity scale
   drift between epochs so that a fixed floor let 3 to 5 times more pairs through
   from one epoch to the next. Both rules here depend only on the *order* of
   similarities, so any monotone drift of the scale leaves the result unchanged:
   - ``rank_product`` (default): keep the pair when ``rank_i(j) * rank_j(i) <=
     max_rank_product`` (ranks from 1). It is *local*: a pair is judged by its own
     two neighbour lists only. That matters on surveillance footage, where a long
     stretch of near-identical empty-scene windows has the highest similarities of
     the whole bank; a global rule would spend its quota there and starve the
     event pairs. Default ``max_rank_product = k``: one side must rank the other
     first, or both must rank each other within the first ``sqrt(k)``.
   - ``quantile``: keep the ``keep_fraction`` most similar of all mutual pairs of
     the epoch (a global rank rule; count proportional to the mutual pairs).

Defaults (k=5, rank product <= 5, warm-up 3 epochs, recompute every epoch) are
starting points for the ablation of issue #5, not measured optima: k small
because the lab's pair precision fell with looser rules, a warm-up because
random-init neighbours are mostly colour/loudness matches, and every epoch
because the encoders move fast early on.

Scale: the search is exact and chunked: a block of video rows against all audio
windows is one matrix product into a reused ``chunk x N`` buffer, from which the
row top-k (video->audio) is taken and the column top-k (audio->video) is merged
into a running ``k x N`` best list, so both directions cost one pass and memory
stays O(N*k + chunk*N), never N x N (200,000 windows would need 160 GB for the
full float32 matrix). ``python -m train.epg_bench`` measures it. Past a few
million windows an approximate library (FAISS) would take over (design.md section 5).

Output: a :class:`PairSet`, CSR arrays of mined audio partners per video window,
indexed by window id. :func:`random_pairs` is the control of issue #5: the same
number of partners per anchor, drawn at random, same format.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from edgeav.errors import UserError
from edgeav.labels import BACKGROUND, Labels, load_labels, sidecar_path
from train.sampler import PairBatchSampler, batch_positives

log = logging.getLogger(__name__)

CutoffRule = Literal["rank_product", "quantile"]
PairMode = Literal["temporal", "epg", "random"]


@dataclass(frozen=True)
class EPGConfig:
    """The knobs of the mining rule and its schedule (config values, see the module docstring)."""

    k: int = 5
    cutoff: CutoffRule = "rank_product"
    max_rank_product: int = 5          # rank_product rule: keep rank_i(j) * rank_j(i) <= this
    keep_fraction: float = 0.5         # quantile rule: keep this share of the mutual pairs
    exclude_within_s: float = 1.0      # same-file windows this close (inclusive) are temporal, not mined
    warmup_epochs: int = 3             # temporal-only epochs before the first mining
    every: int = 1                     # recompute every this many epochs after the warm-up
    chunk_size: int | None = None      # video rows per matrix product; None: a ~256 MiB buffer

    def __post_init__(self) -> None:
        def bad(name: str, allowed: str) -> ValueError:
            return ValueError(f"pairs.{name}: {getattr(self, name)!r} is not allowed ({allowed})")

        if not (isinstance(self.k, int) and self.k >= 1):
            raise bad("k", "an integer >= 1")
        if self.cutoff not in ("rank_product", "quantile"):
            raise bad("cutoff", "rank_product or quantile")
        if not (isinstance(self.max_rank_product, int) and self.max_rank_product >= 1):
            raise bad("max_rank_product", "an integer >= 1")
        if not (0.0 < self.keep_fraction <= 1.0):
            raise bad("keep_fraction", "a number in (0, 1]")
        if not (math.isfinite(self.exclude_within_s) and self.exclude_within_s >= 0):
            raise bad("exclude_within_s", "a number of seconds >= 0")
        if not (isinstance(self.warmup_epochs, int) and self.warmup_epochs >= 0):
            raise bad("warmup_epochs", "an integer >= 0")
        if not (isinstance(self.every, int) and self.every >= 1):
            raise bad("every", "an integer >= 1")
        if self.chunk_size is not None and not (isinstance(self.chunk_size, int) and self.chunk_size >= 1):
            raise bad("chunk_size", "an integer >= 1 or null")

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> EPGConfig:
        """From the training config's free-form ``pairs:`` section; unknown keys are refused by name."""
        known = set(cls.__dataclass_fields__)
        for key in values:
            if key not in known:
                raise ValueError(f"pairs.{key}: unknown key (known: {', '.join(sorted(known))})")
        return cls(**values)  # type: ignore[arg-type]

    def active(self, epoch: int) -> bool:
        """True once the warm-up is over (epochs count from 0): mined pairs are in use."""
        return epoch >= self.warmup_epochs

    def mines_at(self, epoch: int) -> bool:
        """True on the epochs where the labels are recomputed from fresh embeddings."""
        return self.active(epoch) and (epoch - self.warmup_epochs) % self.every == 0


@dataclass(frozen=True)
class PairSet:
    """Mined positives in CSR form: the audio partners of video window ``i`` are
    ``indices[indptr[i]:indptr[i + 1]]`` (window ids), best first for EPG.

    ``scores`` holds each pair's cosine similarity when known (None for the random control).
    """

    indptr: np.ndarray
    indices: np.ndarray
    scores: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.indptr) - 1

    @property
    def num_pairs(self) -> int:
        return len(self.indices)

    def partners(self, i: int) -> np.ndarray:
        return self.indices[self.indptr[i]:self.indptr[i + 1]]

    def counts(self) -> np.ndarray:
        """Mined partners per anchor window (the temporal partner not counted)."""
        return np.diff(self.indptr)

    def rows(self) -> np.ndarray:
        """The anchor of each pair, aligned with ``indices``."""
        return np.repeat(np.arange(self.n, dtype=np.int64), self.counts())

    def padded(self, width: int | None = None) -> np.ndarray:
        """``[N, width]`` partner ids padded with -1 (width defaults to the largest count)."""
        counts = self.counts()
        width = int(counts.max(initial=0)) if width is None else width
        if counts.max(initial=0) > width:
            raise ValueError(f"width {width} is smaller than the largest partner count {counts.max()}")
        out = np.full((self.n, width), -1, dtype=np.int64)
        slot = np.arange(self.num_pairs) - np.repeat(self.indptr[:-1], counts)
        out[self.rows(), slot] = self.indices
        return out


def _csr(n: int, rows: np.ndarray, cols: np.ndarray, scores: np.ndarray | None) -> PairSet:
    """Pack pairs (already grouped by row, in the wanted in-row order) into a :class:`PairSet`."""
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    return PairSet(indptr=indptr, indices=cols.astype(np.int64), scores=scores)


def near_in_time(file_codes: np.ndarray, times: np.ndarray, within_s: float) -> np.ndarray:
    """``[N, M]`` ids of the same-file windows within ``within_s`` seconds (inclusive) of each window.

    Every row contains the window itself; rows shorter than ``M`` are padded by
    repeating it. The relation is symmetric, which lets one mask serve both
    search directions. Cost O(N log N) and O(N*M) memory, M being the most
    windows any window has within ``within_s`` (5 at hop 0.5 s and W = 1 s).
    """
    n = len(times)
    order = np.lexsort((times, file_codes))
    f_sorted, t_sorted = file_codes[order], times[order]
    lo = np.empty(n, dtype=np.int64)
    hi = np.empty(n, dtype=np.int64)
    bounds = np.flatnonzero(np.diff(f_sorted)) + 1
    for start, stop in zip(np.r_[0, bounds], np.r_[bounds, n], strict=True):
        seg = t_sorted[start:stop]
        lo[start:stop] = start + np.searchsorted(seg, seg - within_s, side="left")
        hi[start:stop] = start + np.searchsorted(seg, seg + within_s, side="right")
    width = int((hi - lo).max(initial=1))
    pos = lo[:, None] + np.arange(width)[None, :]
    own = np.arange(n)[:, None]
    excl_sorted = np.where(pos < hi[:, None], order[np.minimum(pos, n - 1)], order[own])
    out = np.empty_like(excl_sorted)
    out[order] = excl_sorted
    return out


def _as_unit_rows(z: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    t = torch.as_tensor(z).detach().to("cpu", torch.float32)
    if t.ndim != 2:
        raise ValueError(f"{name} must be [N, D], got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    # Cosine similarity whatever the caller's normalisation (a no-op on unit rows).
    return torch.nn.functional.normalize(t, dim=1).contiguous()


def mutual_topk(z_video: torch.Tensor, z_audio: torch.Tensor, k: int, exclude: np.ndarray,
                chunk_size: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact chunked top-k in both directions.

    Returns ``(va_idx [N, k], va_sim [N, k], av_idx [N, k])``: for video ``i`` the ``k``
    most similar allowed audio windows, best first, with their similarities; for
    audio ``j`` the ``k`` most similar allowed video windows, best first. Entries
    with fewer than ``k`` allowed candidates are -1 (similarity -inf). ``exclude``
    is the symmetric ``[N, M]`` list of forbidden partners (see :func:`near_in_time`).
    """
    n = z_video.shape[0]
    kk = min(k, n)
    if chunk_size is None:
        chunk_size = max(1, min(4096, (256 << 20) // (4 * max(n, 1))))
    chunk_size = min(chunk_size, n)
    excl = torch.from_numpy(np.ascontiguousarray(exclude, dtype=np.int64))
    neg_inf = float("-inf")
    buf = torch.empty((chunk_size, n), dtype=torch.float32)
    va_sim = torch.empty((n, kk), dtype=torch.float32)
    va_idx = torch.empty((n, kk), dtype=torch.int64)
    col_sim = torch.full((kk, n), neg_inf)
    col_idx = torch.full((kk, n), -1, dtype=torch.int64)
    audio_t = z_audio.T
    with torch.no_grad():
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            s = buf[: stop - start]
            torch.mm(z_video[start:stop], audio_t, out=s)
            s.scatter_(1, excl[start:stop], neg_inf)
            torch.topk(s, kk, dim=1, out=(va_sim[start:stop], va_idx[start:stop]))
            # Column direction: the chunk's best videos for every audio window, merged
            # with the best seen so far (a running k x N list).
            kc = min(kk, stop - start)
            c_sim, c_idx = torch.topk(s, kc, dim=0)
            both_sim = torch.cat([col_sim, c_sim])
            both_idx = torch.cat([col_idx, c_idx + start])
            col_sim, sel = torch.topk(both_sim, kk, dim=0)
            col_idx = torch.gather(both_idx, 0, sel)
    va_idx[torch.isinf(va_sim)] = -1
    col_idx[torch.isinf(col_sim)] = -1
    return va_idx.numpy(), va_sim.numpy(), col_idx.T.contiguous().numpy()


def _encode_files(file_ids: Sequence[object] | np.ndarray, n: int) -> np.ndarray:
    arr = np.asarray(file_ids)
    if arr.shape != (n,):
        raise ValueError(f"file_ids has shape {arr.shape}, expected ({n},)")
    return np.unique(arr, return_inverse=True)[1].astype(np.int64)


def _times(times: Sequence[float] | np.ndarray, n: int) -> np.ndarray:
    arr = np.asarray(times, dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(f"times has shape {arr.shape}, expected ({n},)")
    if not np.isfinite(arr).all():
        raise ValueError("times contains NaN or infinite values")
    return arr


def mine_pairs(z_video: torch.Tensor | np.ndarray, z_audio: torch.Tensor | np.ndarray,
               file_ids: Sequence[object] | np.ndarray, times: Sequence[float] | np.ndarray,
               config: EPGConfig) -> PairSet:
    """The EPG labels ``y_e``: mutual top-k pairs that pass the rank cut-off (module docstring).

    Row ``i`` of the result lists the audio windows that are positives of video ``i``.
    """
    zv = _as_unit_rows(z_video, "z_video")
    za = _as_unit_rows(z_audio, "z_audio")
    if zv.shape != za.shape:
        raise ValueError(f"z_video {tuple(zv.shape)} and z_audio {tuple(za.shape)} must have the same shape")
    n = zv.shape[0]
    codes = _encode_files(file_ids, n)
    t = _times(times, n)
    if n == 0:
        return _csr(0, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    exclude = near_in_time(codes, t, config.exclude_within_s)
    va_idx, va_sim, av_idx = mutual_topk(zv, za, config.k, exclude, config.chunk_size)
    kk = va_idx.shape[1]
    rows = np.repeat(np.arange(n, dtype=np.int64), kk)
    cols = va_idx.reshape(-1)
    sims = va_sim.reshape(-1)
    rank_v = np.tile(np.arange(1, kk + 1), n)          # rank of a_j in v_i's list
    valid = cols >= 0
    rows, cols, sims, rank_v = rows[valid], cols[valid], sims[valid], rank_v[valid]
    back = av_idx[cols] == rows[:, None]                # is v_i in a_j's list, and where
    mutual = back.any(axis=1)
    rank_a = back.argmax(axis=1) + 1
    rows, cols, sims = rows[mutual], cols[mutual], sims[mutual]
    rank_product = rank_v[mutual] * rank_a[mutual]
    if config.cutoff == "rank_product":
        keep = rank_product <= config.max_rank_product
    else:
        n_keep = math.ceil(config.keep_fraction * len(sims))
        keep = np.zeros(len(sims), dtype=bool)
        keep[np.argsort(-sims, kind="stable")[:n_keep]] = True
    return _csr(n, rows[keep], cols[keep], sims[keep].astype(np.float32))


def random_pairs(counts: np.ndarray, file_ids: Sequence[object] | np.ndarray,
                 times: Sequence[float] | np.ndarray, exclude_within_s: float, seed: int) -> PairSet:
    """The control: ``counts[i]`` distinct partners for window ``i``, uniformly at random.

    Drawn under the same exclusion as EPG (not the window itself, not a same-file
    window within ``exclude_within_s``), so the only difference from EPG is *which*
    partners: same counts, same sampler, same loss. Deterministic given ``seed``.
    """
    counts = np.asarray(counts, dtype=np.int64)
    n = len(counts)
    codes = _encode_files(file_ids, n)
    t = _times(times, n)
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(n, dtype=np.int64), counts)
    cols = rng.integers(0, n, size=len(rows))

    def rejected(r: np.ndarray, c: np.ndarray) -> np.ndarray:
        near = (codes[r] == codes[c]) & (np.abs(t[r] - t[c]) <= exclude_within_s)
        # A partner drawn twice for the same anchor: keep the first, redraw the rest.
        order = np.lexsort((c, r))
        dup = np.zeros(len(r), dtype=bool)
        dup[order[1:]] = (r[order[1:]] == r[order[:-1]]) & (c[order[1:]] == c[order[:-1]])
        return near | dup

    # Rejection sampling: a handful of rounds settles everything unless an anchor's
    # eligible set is tiny; those few are finished with an explicit draw below.
    for _ in range(32):
        bad = rejected(rows, cols)
        if not bad.any():
            break
        cols[bad] = rng.integers(0, n, size=int(bad.sum()))
    else:
        for i in np.unique(rows[rejected(rows, cols)]):
            sl = slice(int(np.searchsorted(rows, i)), int(np.searchsorted(rows, i, side="right")))
            eligible = np.flatnonzero((codes != codes[i]) | (np.abs(t - t[i]) > exclude_within_s))
            if len(eligible) < counts[i]:
                raise ValueError(f"window {i}: only {len(eligible)} eligible partners for {counts[i]} draws")
            cols[sl] = rng.choice(eligible, size=int(counts[i]), replace=False)
    return _csr(n, rows, cols, None)


def pair_stats(pairs: PairSet, window_labels: Sequence[str] | None = None) -> dict[str, float]:
    """What the loop logs per mining: partners per anchor and, with labels, pair precision.

    ``precision``: share of pairs whose two windows carry the same non-background
    label. ``chance``: the same share for two distinct windows drawn at random
    (sum over event kinds of n_c (n_c - 1) / (N (N - 1))), the floor a precision
    must be read against (the lab saw 78% against a 19% chance).
    """
    counts = pairs.counts()
    n = pairs.n
    stats: dict[str, float] = {
        "pairs": float(pairs.num_pairs),
        "per_anchor_mean": float(counts.mean()) if n else 0.0,
        "per_anchor_max": float(counts.max(initial=0)),
        "share_with_any": float((counts > 0).mean()) if n else 0.0,
    }
    if window_labels is not None:
        labels = np.asarray(window_labels, dtype=object)
        if labels.shape != (n,):
            raise ValueError(f"window_labels has {labels.shape[0]} entries for {n} windows")
        kinds, codes = np.unique(labels.astype(str), return_inverse=True)
        event = kinds != BACKGROUND
        a, b = codes[pairs.rows()], codes[pairs.indices]
        same = (a == b) & event[a]
        stats["precision"] = float(same.mean()) if pairs.num_pairs else float("nan")
        per_kind = np.bincount(codes, minlength=len(kinds))[event].astype(np.float64)
        stats["chance"] = float((per_kind * (per_kind - 1)).sum() / (n * (n - 1))) if n > 1 else float("nan")
    return stats


def window_labels(labels_by_file: Mapping[Any, Labels], file_ids: Sequence[object] | np.ndarray,
                  t_start: Sequence[float] | np.ndarray, window_s: float) -> list[str]:
    """Per-window labels from the footage sidecars (``Labels.segment_label`` of each window's span).

    Every window's file needs a sidecar (a missing one raises ``KeyError`` naming the
    file): a precision measured over part of the bank would be misread as the whole.
    """
    out = []
    for f, t0 in zip(np.asarray(file_ids).tolist(), np.asarray(t_start, dtype=float).tolist(), strict=True):
        if f not in labels_by_file:
            raise KeyError(f"no labels for file {f!r}")
        out.append(labels_by_file[f].segment_label(t0, t0 + window_s))
    return out


@dataclass
class MemoryBank:
    """The audio and video embeddings of every training window, rows ordered by window id.

    Refreshed wholesale by :meth:`update` from the current encoders (the loop embeds
    all windows once per mining epoch); float32 on the CPU: 200,000 windows x 128
    dims x 2 modalities is 205 MB.
    """

    z_audio: torch.Tensor | None = None
    z_video: torch.Tensor | None = None
    file_ids: np.ndarray | None = None
    times: np.ndarray | None = None
    epoch: int | None = None

    @property
    def n(self) -> int:
        return 0 if self.z_audio is None else int(self.z_audio.shape[0])

    def update(self, z_audio: torch.Tensor | np.ndarray, z_video: torch.Tensor | np.ndarray,
               file_ids: Sequence[object] | np.ndarray, times: Sequence[float] | np.ndarray,
               window_ids: Sequence[int] | np.ndarray | None = None, epoch: int | None = None) -> None:
        """Replace the bank. ``window_ids[r]`` is the window id (dataset index, a
        permutation of 0..N-1) of row ``r`` of the inputs; None means rows are already in id order.
        ``times`` are window start times in seconds from the start of their file."""
        za = _as_unit_rows(z_audio, "z_audio")
        zv = _as_unit_rows(z_video, "z_video")
        if za.shape != zv.shape:
            raise ValueError(f"z_audio {tuple(za.shape)} and z_video {tuple(zv.shape)} must have the same shape")
        n = za.shape[0]
        f = np.asarray(file_ids)
        tt = _times(times, n)
        if f.shape != (n,):
            raise ValueError(f"file_ids has shape {f.shape}, expected ({n},)")
        if window_ids is not None:
            ids = np.asarray(window_ids, dtype=np.int64)
            if ids.shape != (n,) or not np.array_equal(np.sort(ids), np.arange(n)):
                raise ValueError("window_ids must be a permutation of 0..N-1")
            order = np.empty(n, dtype=np.int64)
            order[ids] = np.arange(n)               # order[w] = input row of window w
            idx = torch.from_numpy(order)
            za, zv, f, tt = za[idx], zv[idx], f[order], tt[order]
        self.z_audio, self.z_video, self.file_ids, self.times, self.epoch = za, zv, f, tt, epoch

    def mine(self, config: EPGConfig) -> PairSet:
        if self.z_audio is None or self.z_video is None or self.file_ids is None or self.times is None:
            raise RuntimeError("the memory bank is empty: call update() first")
        return mine_pairs(self.z_video, self.z_audio, self.file_ids, self.times, config)


@dataclass
class PairGenerator:
    """The schedule and the three pair modes of ``pairs: temporal|epg|random``.

    Per epoch the loop asks :meth:`wants_refresh`; if True it embeds every window,
    updates the bank and calls :meth:`refresh`. :attr:`current` is what the sampler
    and the loss use this epoch (None: temporal positives only), :attr:`stats` what to log.
    """

    config: EPGConfig = field(default_factory=EPGConfig)
    mode: PairMode = "epg"
    seed: int = 0
    current: PairSet | None = None
    stats: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in ("temporal", "epg", "random"):
            raise ValueError(f"pairs: {self.mode!r} is not allowed (temporal, epg or random)")

    def wants_refresh(self, epoch: int) -> bool:
        return self.mode != "temporal" and self.config.mines_at(epoch)

    def refresh(self, epoch: int, bank: MemoryBank, labels: Sequence[str] | None = None) -> PairSet | None:
        """Recompute the pairs from ``bank`` when the schedule says so; returns :attr:`current`."""
        if not self.wants_refresh(epoch):
            if self.mode == "temporal" or not self.config.active(epoch):
                self.current = None
            return self.current
        mined = bank.mine(self.config)
        if self.mode == "epg":
            self.current = mined
            self.stats = pair_stats(mined, labels)
        else:
            assert bank.file_ids is not None and bank.times is not None
            # A fresh draw per mining epoch, reproducible from (seed, epoch).
            seed = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0])
            self.current = random_pairs(mined.counts(), bank.file_ids, bank.times,
                                        self.config.exclude_within_s, seed)
            self.stats = pair_stats(self.current, labels)
            if labels is not None:
                self.stats["epg_precision"] = pair_stats(mined, labels)["precision"]
        self.stats["epoch"] = float(epoch)
        return self.current


class EPGPairs:
    """``pairs: epg`` for the training loop (the strategy interface of ``train.objective``).

    The bank holds the training windows only (``dataset.train_idx``; the held-out
    validation windows never become anyone's partner). Epochs count from 1 in the
    loop and the bank is filled in :meth:`end_epoch`, so pairs mined at the end of
    epoch ``e`` shape the batches of epoch ``e + 1``: with ``warmup_epochs: 3`` epochs
    1 to 3 are temporal-only and mining starts after epoch 3 (a warm-up of 0 behaves
    like 1: the first epoch has no embeddings to mine yet). Batches come from
    :class:`~train.sampler.PairBatchSampler` (every anchor with all its partners) and
    :meth:`positives` is :func:`~train.sampler.batch_positives` (``[p, q]``: audio of
    window ``q`` is a positive of video of window ``p``), the convention of
    ``train.losses.multipos`` and ``train.losses.fne``.
    """

    name = "epg"
    mode: PairMode = "epg"

    def __init__(self, cfg: Any, dataset: Any) -> None:
        try:
            self.config = EPGConfig.from_mapping(dict(cfg.pairs or {}))
        except (TypeError, ValueError) as exc:
            raise UserError(str(exc)) from None
        batch_size = int(cfg.optim.batch_size)
        if batch_size < self.config.k + 1:
            raise UserError(f"optim.batch_size: {batch_size} cannot hold an anchor and its up to "
                            f"pairs.k = {self.config.k} mined partners (need >= {self.config.k + 1})")
        self.seed = int(cfg.train.seed) & 0xFFFFFFFF
        self.train_idx = np.asarray(dataset.train_idx, dtype=np.int64)
        self._row = np.full(len(dataset), -1, dtype=np.int64)     # dataset index -> bank row
        self._row[self.train_idx] = np.arange(len(self.train_idx))
        self.file_nums = dataset.locate(self.train_idx)[0] if len(self.train_idx) else np.zeros(0, np.int64)
        self.times = np.asarray(dataset.t_start(self.train_idx), dtype=np.float64)
        self.labels = self._window_labels(dataset)
        self.bank = MemoryBank()
        self.gen = PairGenerator(self.config, self.mode, self.seed)

    def _window_labels(self, dataset: Any) -> list[str] | None:
        """Per-window labels for the precision statistic, when every file has a valid sidecar."""
        by_file: dict[int, Labels] = {}
        for num, f in enumerate(dataset.files):
            side = sidecar_path(f.path)
            if not side.is_file():
                return None
            try:
                by_file[num] = load_labels(side)
            except UserError as exc:
                log.warning("pair precision not logged: %s", exc)
                return None
        return window_labels(by_file, self.file_nums, self.times, float(dataset.spec.window_s))

    def epoch_batches(self, epoch: int, batch_size: int) -> list[np.ndarray]:
        if len(self.train_idx) == 0:
            return []
        sampler = PairBatchSampler(len(self.train_idx), batch_size, self.gen.current, seed=self.seed)
        sampler.set_epoch(epoch)
        return [self.train_idx[np.asarray(b, dtype=np.int64)] for b in sampler]

    def positives(self, batch: np.ndarray) -> np.ndarray | None:
        if self.gen.current is None:
            return None
        rows = self._row[np.asarray(batch, dtype=np.int64)]
        if (rows < 0).any():
            raise ValueError("positives() got windows that are not training windows")
        return batch_positives(rows.tolist(), self.gen.current).numpy()

    def end_epoch(self, epoch: int, embed: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]) -> dict:
        if not self.gen.wants_refresh(epoch):
            self.gen.refresh(epoch, self.bank)      # keeps or clears the pairs per the schedule
            return {}
        t0 = time.perf_counter()
        z_audio, z_video = embed(self.train_idx)
        t1 = time.perf_counter()
        self.bank.update(z_audio, z_video, self.file_nums, self.times, epoch=epoch)
        self.gen.refresh(epoch, self.bank, self.labels)
        return {**self.gen.stats, "embed_s": round(t1 - t0, 3), "mine_s": round(time.perf_counter() - t1, 3)}

    def state_dict(self) -> dict:
        cur = self.gen.current
        if cur is None:
            return {"mode": self.mode}
        return {"mode": self.mode, "indptr": cur.indptr, "indices": cur.indices, "scores": cur.scores,
                "stats": dict(self.gen.stats)}

    def load_state_dict(self, state: dict) -> None:
        if "indptr" not in state:
            return
        pairs = PairSet(np.asarray(state["indptr"]), np.asarray(state["indices"]), state.get("scores"))
        if state.get("mode") != self.mode or pairs.n != len(self.train_idx):
            log.warning("resume: saved %s pairs for %d windows do not fit this %s run of %d windows; "
                        "they are mined again", state.get("mode"), pairs.n, self.mode, len(self.train_idx))
            return
        self.gen.current, self.gen.stats = pairs, dict(state.get("stats") or {})


class RandomPartnerPairs(EPGPairs):
    """``pairs: random``, the control: per anchor as many partners as EPG mines, drawn at random,
    through the same bank, schedule, sampler and loss (``train.sampler`` re-exports it)."""

    name = "random"
    mode: PairMode = "random"


__all__ = [
    "EPGConfig",
    "EPGPairs",
    "MemoryBank",
    "PairGenerator",
    "PairSet",
    "RandomPartnerPairs",
    "mine_pairs",
    "mutual_topk",
    "near_in_time",
    "pair_stats",
    "random_pairs",
    "window_labels",
]
