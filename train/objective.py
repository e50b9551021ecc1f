"""What is trained against what: the pair strategy (which windows share a batch, which are positives) and
the loss, both chosen by name and plugged into the loop.

A loss is a callable ``loss(z_audio [B, D], z_video [B, D], positives: bool [B, B] or None, logit_scale)
-> scalar``; ``positives[i, j]`` says audio window i and video window j are a positive pair, None means
temporal pairs only (the identity).

A pair strategy is a class ``Strategy(cfg: Config, dataset: WindowDataset)`` with

- ``name: str``
- ``epoch_batches(epoch: int, batch_size: int) -> list[np.ndarray]``: the epoch's *global* batches of
  dataset indices (every DDP rank calls it and must get the same answer: seed from ``cfg.train.seed``
  and ``epoch``, never from global random state); the loop gives each rank its slice;
- ``positives(batch: np.ndarray) -> np.ndarray | None``: bool ``[B, B]`` for a global batch;
- ``end_epoch(epoch: int, embed) -> dict``: called after each epoch with ``embed(indices) -> (z_audio,
  z_video)`` (numpy, eval mode, no augmentation), e.g. to refresh a memory bank; returns numbers to log;
- ``state_dict() -> dict`` / ``load_state_dict(d)``: saved in checkpoints for ``--resume``.

Strategies and losses are looked up lazily in the modules below, so one that is not written yet gives a
one-line "not available yet" error instead of a traceback, and appears as soon as its module exists.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from edgeav.errors import UserError

LossFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None", torch.Tensor], torch.Tensor]

LOSSES: dict[str, tuple[str, str]] = {
    "infonce": ("train.losses.infonce", "infonce_loss"),
    "multipos": ("train.losses.multipos", "multipos_loss"),
    "fne": ("train.losses.fne", "fne_loss"),
}
PAIRS: dict[str, tuple[str, str]] = {
    "temporal": ("train.objective", "TemporalPairs"),
    "epg": ("train.epg", "EPGPairs"),
    "random": ("train.sampler", "RandomPartnerPairs"),
}


def _resolve(kind: str, table: dict[str, tuple[str, str]], name: str) -> Any:
    if name not in table:
        raise UserError(f"unknown {kind} {name!r} (choose from {', '.join(table)})")
    module, attr = table[name]
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:  # the module exists but something it imports is missing: a real bug
            raise
        raise UserError(f"--{kind} {name} is not available yet in this version ({module} is not implemented)") from None
    if not hasattr(mod, attr):
        raise UserError(f"--{kind} {name} is not available yet in this version ({module}.{attr} is missing)")
    return getattr(mod, attr)


def resolve_loss(name: str) -> LossFn:
    return _resolve("loss", LOSSES, name)


def resolve_pairs(name: str) -> type:
    return _resolve("pairs", PAIRS, name)


class TemporalPairs:
    """The baseline: shuffled batches, the temporally aligned partner is the only positive."""

    name = "temporal"

    def __init__(self, cfg: Any, dataset: Any) -> None:
        self.seed = int(cfg.train.seed)
        self.train_idx = np.asarray(dataset.train_idx)

    def epoch_batches(self, epoch: int, batch_size: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, epoch, 0xBA7C])
        order = self.train_idx[rng.permutation(len(self.train_idx))]
        if len(order) < batch_size:  # a tiny dataset: one batch of everything
            return [order] if len(order) >= 2 else []
        n = len(order) // batch_size  # drop the ragged tail (it changes every epoch)
        return [order[i * batch_size:(i + 1) * batch_size] for i in range(n)]

    def positives(self, batch: np.ndarray) -> np.ndarray | None:
        return None

    def end_epoch(self, epoch: int, embed: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
