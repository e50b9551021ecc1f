"""Batches that carry each anchor's mined positives with it (design.md section 3, step 4).

A positive pair only reaches the loss when both windows sit in the same batch; with
uniformly shuffled batches of 256 out of 100,000 windows a mined partner would
share its anchor's batch 0.3% of the time. :class:`PairBatchSampler` therefore builds
each batch from anchors *plus their partners*:

- the windows are visited in a seeded random order; each not yet *anchored* window
  is put into the open batch together with those of its partners not already in
  it; when the group does not fit, the batch is closed and a new one begun with
  the group (so batches may fall a few windows short of ``batch_size``);
- a window counts as anchored once some batch holds it and all its partners, so a
  window pulled in as somebody's partner whose own partners happen to be there too
  is not repeated; others appear again later as anchors;
- every window therefore appears in at least one batch per epoch together with
  all its partners, and each mined pair (i, j) meets in at least one batch, where
  both loss directions see it;
- the plan depends only on ``(seed, epoch)``: call :meth:`set_epoch` like with
  ``torch.utils.data.DistributedSampler``.

It is a plain iterable of ``list[int]`` window ids (usable as a DataLoader
``batch_sampler``); DDP sharding can later take every ``world_size``-th batch.
:func:`batch_positives` gives the ``[B, B]`` positives matrix of a batch for the
losses in ``train.losses`` (temporal identity OR mined pairs present in the batch).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:  # train.epg imports this module; a runtime import here would be circular
    from train.epg import PairSet


class PairBatchSampler:
    """Seeded batches of window ids in which every anchor meets all its mined partners."""

    def __init__(self, n: int, batch_size: int, pairs: PairSet | None = None, seed: int = 0) -> None:
        if n < 1:
            raise ValueError(f"n: {n} windows, need at least 1")
        if batch_size < 2:
            raise ValueError(f"batch_size: {batch_size} is too small for a contrastive batch (need >= 2)")
        if pairs is not None:
            if pairs.n != n:
                raise ValueError(f"pairs cover {pairs.n} windows, the sampler {n}")
            most = int(pairs.counts().max(initial=0))
            if 1 + most > batch_size:
                raise ValueError(f"batch_size: {batch_size} cannot hold an anchor with {most} partners")
        self.n, self.batch_size, self.pairs, self.seed = n, batch_size, pairs, seed
        self.epoch = 0
        self._plan: list[list[int]] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose plan :meth:`__iter__` yields (a new shuffle per epoch)."""
        if epoch != self.epoch:
            self.epoch, self._plan = epoch, None

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.plan())

    def __len__(self) -> int:
        return len(self.plan())

    def plan(self) -> list[list[int]]:
        """The epoch's batches (computed once per epoch and cached)."""
        if self._plan is None:
            self._plan = self._build()
        return self._plan

    def _build(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.n).tolist()
        if self.pairs is None:
            return [order[i:i + self.batch_size] for i in range(0, self.n, self.batch_size)]
        indptr, indices = self.pairs.indptr.tolist(), self.pairs.indices.tolist()

        def partners(w: int) -> list[int]:
            return indices[indptr[w]:indptr[w + 1]]

        anchored = bytearray(self.n)
        batches: list[list[int]] = []
        cur: list[int] = []
        members: set[int] = set()

        def close() -> None:
            for w in cur:
                if not anchored[w] and members.issuperset(partners(w)):
                    anchored[w] = 1
            batches.append(cur)

        for a in order:
            if anchored[a]:
                continue
            group = [a, *partners(a)]
            need = [w for w in dict.fromkeys(group) if w not in members]
            if len(cur) + len(need) > self.batch_size:
                close()
                cur, members = [], set()
                need = list(dict.fromkeys(group))
            cur.extend(need)
            members.update(need)
            anchored[a] = 1
        if cur:
            close()
        return batches


def batch_positives(batch: Sequence[int], pairs: PairSet | None = None) -> torch.Tensor:
    """``[B, B]`` bool: ``[p, q]`` True when audio of ``batch[q]`` is a positive of video of ``batch[p]``.

    The diagonal (temporal positives) is always True; off the diagonal, the mined
    pairs whose two windows are both in the batch.
    """
    size = len(batch)
    pos = np.eye(size, dtype=bool)
    if pairs is not None and size:
        where = {int(w): p for p, w in enumerate(batch)}
        if len(where) != size:
            raise ValueError("a batch must not hold the same window twice")
        for p, w in enumerate(batch):
            for j in pairs.partners(int(w)).tolist():
                q = where.get(j)
                if q is not None:
                    pos[p, q] = True
    return torch.from_numpy(pos)


def __getattr__(name: str) -> Any:
    # ``train.objective`` looks the random-partner control up here (``pairs: random``); it
    # lives in train.epg beside EPGPairs, whose bank, schedule and sampler it shares.
    if name == "RandomPartnerPairs":
        from train.epg import RandomPartnerPairs

        return RandomPartnerPairs
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["PairBatchSampler", "batch_positives"]
