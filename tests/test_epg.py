"""Embedding-based pair generation and the pair-aware batch sampler.

The mining rule is checked on a constructed case whose neighbours are worked out
by hand, and the chunked search against a brute-force N x N reference written
independently here (numpy, float64, full matrix, argsort).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # the train extra; CI installs it

from edgeav.labels import LabelledEvent, Labels  # noqa: E402
from train.epg import (  # noqa: E402
    EPGConfig,
    MemoryBank,
    PairGenerator,
    PairSet,
    mine_pairs,
    near_in_time,
    pair_stats,
    random_pairs,
    window_labels,
)
from train.losses.multipos import multipos_loss  # noqa: E402
from train.sampler import PairBatchSampler, batch_positives  # noqa: E402


def unit(*parts: tuple[int, float], d: int = 16) -> list[float]:
    v = np.zeros(d)
    for dim, w in parts:
        v[dim] = w
    return (v / np.linalg.norm(v)).tolist()


# Eight windows, k = 1. Worked out by hand (cosines in the comments):
#   v0=e0 <-> a1=e0 (1.0) and v1=e1 <-> a0=e1 (1.0): the same event in two windows of
#       file A, 10 s apart: far enough, both directions mined.
#   v2=e2 -> a3 (0.6) but a3=.6e2+.8e3 prefers v4=e3 (0.8): (2,3) one-sided, excluded; (4,3) mutual.
#   v5=e4 and a6=e4 (1.0) are windows of file F 0.5 s apart: temporal, excluded; v5's
#       best allowed audio is then a7=e4+.3e5 (0.958), whose best video is v5: (5,7).
#   fillers, each mutual with one partner: v3=e8 <-> a2 (0.894), v6=e9 <-> a4 (0.981), v7=e10 <-> a5 (0.819).
VIDEO = [unit((0, 1)), unit((1, 1)), unit((2, 1)), unit((8, 1)),
         unit((3, 1)), unit((4, 1)), unit((9, 1)), unit((10, 1))]
AUDIO = [unit((1, 1)), unit((0, 1)), unit((8, 1), (11, 0.5)), unit((2, 0.6), (3, 0.8)),
         unit((9, 1), (12, 0.2)), unit((10, 1), (13, 0.7)), unit((4, 1)), unit((4, 1), (5, 0.3))]
FILES = ["A", "A", "B", "C", "D", "F", "F", "G"]
TIMES = [0.0, 10.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.0]
HAND_PAIRS = {(0, 1), (1, 0), (4, 3), (5, 7), (3, 2), (6, 4), (7, 5)}
HAND_SIMS = {(0, 1): 1.0, (1, 0): 1.0, (6, 4): 1 / math.sqrt(1.04), (5, 7): 1 / math.sqrt(1.09),
             (3, 2): 1 / math.sqrt(1.25), (7, 5): 1 / math.sqrt(1.49), (4, 3): 0.8}


def as_set(p: PairSet) -> set[tuple[int, int]]:
    return set(zip(p.rows().tolist(), p.indices.tolist(), strict=True))


def mine_hand(**kw: object) -> PairSet:
    cfg = EPGConfig(**{"k": 1, "max_rank_product": 1, "exclude_within_s": 1.0, **kw})  # type: ignore[arg-type]
    return mine_pairs(torch.tensor(VIDEO), torch.tensor(AUDIO), FILES, TIMES, cfg)


def test_mutual_topk_hand_case() -> None:
    pairs = mine_hand()
    assert as_set(pairs) == HAND_PAIRS
    assert (2, 3) not in as_set(pairs)          # one-sided neighbour
    assert (5, 6) not in as_set(pairs)          # same file, 0.5 s apart
    for i, j, s in zip(pairs.rows(), pairs.indices, pairs.scores, strict=True):
        assert s == pytest.approx(HAND_SIMS[(int(i), int(j))], abs=1e-6)
    # The near-in-time rule is inclusive and configurable: at W = 0.4 s, windows 5 and 6
    # (0.5 s apart) are fair game and mutual at cosine 1, which displaces (5, 7).
    loose = as_set(mine_hand(exclude_within_s=0.4))
    assert loose == (HAND_PAIRS - {(5, 7)}) | {(5, 6)}
    assert as_set(mine_hand(exclude_within_s=0.5)) == HAND_PAIRS


def test_quantile_cutoff_keeps_the_most_similar_mutual_pairs() -> None:
    # 7 mutual pairs; 40% -> ceil(2.8) = 3 kept: the two at cosine 1 and (6, 4) at 0.981.
    assert as_set(mine_hand(cutoff="quantile", keep_fraction=0.4)) == {(0, 1), (1, 0), (6, 4)}
    assert as_set(mine_hand(cutoff="quantile", keep_fraction=1.0)) == HAND_PAIRS
    # The rank rules do not move when the similarity scale drifts: add a common
    # component 3*e15 to every unit embedding; after renormalising every cosine s
    # becomes (s + 9) / 10, so a cosine floor at 0.85 would now pass everything.
    squeeze = np.zeros(16)
    squeeze[15] = 3.0
    drifted_v = torch.tensor(np.asarray(VIDEO) + squeeze)
    drifted_a = torch.tensor(np.asarray(AUDIO) + squeeze)
    for kw, expected in [({}, HAND_PAIRS), ({"cutoff": "quantile", "keep_fraction": 0.4}, {(0, 1), (1, 0), (6, 4)})]:
        cfg = EPGConfig(k=1, max_rank_product=1, **kw)  # type: ignore[arg-type]
        drifted = mine_pairs(drifted_v, drifted_a, FILES, TIMES, cfg)
        assert as_set(drifted) == expected
    assert float(drifted.scores.min()) == pytest.approx((0.981 + 9) / 10, abs=1e-3)


def brute_force(zv: np.ndarray, za: np.ndarray, files: np.ndarray, times: np.ndarray, k: int,
                within: float, cutoff: str, max_rp: int, keep: float) -> set[tuple[int, int]]:
    """The rule written plainly with the full N x N matrix, for comparison."""
    zv = zv / np.linalg.norm(zv, axis=1, keepdims=True)
    za = za / np.linalg.norm(za, axis=1, keepdims=True)
    s = zv.astype(np.float64) @ za.astype(np.float64).T
    banned = (files[:, None] == files[None, :]) & (np.abs(times[:, None] - times[None, :]) <= within)
    s[banned] = -np.inf
    row_rank = {}  # (i, j) -> rank of audio j for video i
    for i in range(len(s)):
        for r, j in enumerate(np.argsort(-s[i], kind="stable")[:k]):
            if np.isfinite(s[i, j]):
                row_rank[(i, int(j))] = r + 1
    col_rank = {}
    for j in range(len(s)):
        for r, i in enumerate(np.argsort(-s[:, j], kind="stable")[:k]):
            if np.isfinite(s[i, j]):
                col_rank[(int(i), j)] = r + 1
    mutual = {p: row_rank[p] * col_rank[p] for p in row_rank if p in col_rank}
    if cutoff == "rank_product":
        return {p for p, rp in mutual.items() if rp <= max_rp}
    ranked = sorted(mutual, key=lambda p: -s[p])
    return set(ranked[: math.ceil(keep * len(ranked))])


@pytest.mark.parametrize("chunk", [1, 7, 64, 300])
def test_chunked_search_equals_brute_force(chunk: int) -> None:
    rng = np.random.default_rng(11)
    n, d, k = 300, 8, 4
    zv = rng.standard_normal((n, d)).astype(np.float32)
    za = (zv + 0.8 * rng.standard_normal((n, d))).astype(np.float32)
    files = rng.integers(0, 6, n)
    times = rng.integers(0, 80, n) * 0.5
    for cutoff, max_rp, keep in [("rank_product", 16, 1.0), ("rank_product", 4, 1.0),
                                 ("rank_product", 1, 1.0), ("quantile", 16, 0.3)]:
        cfg = EPGConfig(k=k, cutoff=cutoff, max_rank_product=max_rp, keep_fraction=keep,  # type: ignore[arg-type]
                        exclude_within_s=1.5, chunk_size=chunk)
        got = mine_pairs(zv, za, files, times, cfg)
        ref = brute_force(zv, za, files, times, k, 1.5, cutoff, max_rp, keep)
        assert as_set(got) == ref, (cutoff, max_rp)
        assert len(ref) > 20
        assert got.counts().max() <= k
        # Partners are listed best first.
        for i in range(n):
            sc = got.scores[got.indptr[i]:got.indptr[i + 1]]
            assert np.all(np.diff(sc) <= 0)


def test_rank_cutoffs_nest() -> None:
    rng = np.random.default_rng(5)
    z = rng.standard_normal((200, 6)).astype(np.float32)
    files, times = np.arange(200), np.zeros(200)
    za = z + 0.5 * rng.standard_normal(z.shape).astype(np.float32)
    sets = [as_set(mine_pairs(z, za, files, times, EPGConfig(k=5, max_rank_product=r))) for r in (1, 2, 5, 25)]
    assert sets[0] <= sets[1] <= sets[2] <= sets[3]
    assert len(sets[0]) < len(sets[3])


def test_near_in_time_lists() -> None:
    files = np.array([0, 0, 0, 1, 0, 1])
    times = np.array([0.0, 0.5, 1.0, 0.5, 5.0, 2.0])
    excl = near_in_time(files, times, 0.5)
    got = [set(row.tolist()) for row in excl]
    assert got == [{0, 1}, {0, 1, 2}, {1, 2}, {3}, {4}, {5}]


def test_random_control_matches_counts_and_respects_exclusions() -> None:
    rng = np.random.default_rng(2)
    n = 400
    zv = rng.standard_normal((n, 8)).astype(np.float32)
    files = rng.integers(0, 4, n)
    times = np.arange(n) * 0.5
    epg = mine_pairs(zv, zv + 0.3 * rng.standard_normal((n, 8)).astype(np.float32), files, times, EPGConfig())
    ctrl = random_pairs(epg.counts(), files, times, 1.0, seed=7)
    assert np.array_equal(ctrl.counts(), epg.counts()) and epg.num_pairs > 50
    r, c = ctrl.rows(), ctrl.indices
    assert not np.any((files[r] == files[c]) & (np.abs(times[r] - times[c]) <= 1.0))
    assert len(set(zip(r.tolist(), c.tolist(), strict=True))) == ctrl.num_pairs   # no repeats
    again = random_pairs(epg.counts(), files, times, 1.0, seed=7)
    assert np.array_equal(again.indices, ctrl.indices)
    assert not np.array_equal(random_pairs(epg.counts(), files, times, 1.0, seed=8).indices, ctrl.indices)
    # Random partners overlap the mined ones only by chance.
    assert len(as_set(ctrl) & as_set(epg)) < 0.05 * epg.num_pairs


def test_random_control_with_tight_exclusions() -> None:
    # Two files of 6 windows, everything within 10 s of the same file excluded: the only
    # eligible partners of a window are the other file's 6 windows; ask for all of them.
    files = np.repeat([0, 1], 6)
    times = np.tile(np.arange(6.0), 2)
    counts = np.full(12, 6)
    ctrl = random_pairs(counts, files, times, 10.0, seed=0)
    for i in range(12):
        assert sorted(ctrl.partners(i).tolist()) == sorted(np.flatnonzero(files != files[i]).tolist())


def test_pair_stats_by_hand() -> None:
    pairs = PairSet(indptr=np.array([0, 1, 2, 3, 3]), indices=np.array([1, 0, 3]))
    stats = pair_stats(pairs, ["car", "car", "background", "background"])
    assert stats["pairs"] == 3
    assert stats["per_anchor_mean"] == 0.75 and stats["per_anchor_max"] == 1 and stats["share_with_any"] == 0.75
    assert stats["precision"] == pytest.approx(2 / 3)          # background-background is not a match
    assert stats["chance"] == pytest.approx(2 * 1 / (4 * 3))   # the two car windows, ordered pairs
    sidecar = Labels(footage="x.mp4", duration=10.0, events=(LabelledEvent("car", 2.0, 3.6),))
    assert window_labels({"x": sidecar}, ["x", "x", "x"], [1.5, 2.0, 2.5], 1.0) == ["background", "car", "car"]
    with pytest.raises(KeyError, match="y"):
        window_labels({"x": sidecar}, ["y"], [0.0], 1.0)


def test_memory_bank_orders_rows_by_window_id_and_generator_schedule() -> None:
    perm = np.array([3, 0, 7, 1, 6, 2, 5, 4])      # input row r holds window perm[r]
    inv = np.argsort(perm)
    bank = MemoryBank()
    bank.update(np.asarray(AUDIO)[perm], np.asarray(VIDEO)[perm], np.asarray(FILES)[perm],
                np.asarray(TIMES)[perm], window_ids=perm, epoch=3)
    assert inv.tolist() != list(range(8))
    cfg = EPGConfig(k=1, max_rank_product=1, warmup_epochs=2, every=2)
    assert as_set(bank.mine(cfg)) == HAND_PAIRS
    labels = ["car", "car", "dog", "bus", "bus", "x", "y", "x"]
    gen = PairGenerator(cfg, mode="epg")
    assert [gen.wants_refresh(e) for e in range(6)] == [False, False, True, False, True, False]
    assert gen.refresh(0, bank) is None and gen.refresh(1, bank) is None
    mined = gen.refresh(2, bank, labels)
    assert mined is not None and as_set(mined) == HAND_PAIRS
    # Same non-background label: (0,1), (1,0) car; (4,3) bus; (5,7), (7,5) x. Not: (3,2) bus-dog, (6,4) y-bus.
    assert gen.stats["precision"] == pytest.approx(5 / 7)
    assert gen.stats["per_anchor_mean"] == pytest.approx(7 / 8) and gen.stats["share_with_any"] == 7 / 8
    assert gen.refresh(3, bank) is mined                   # reused between recomputations
    rnd = PairGenerator(cfg, mode="random", seed=1)
    ctrl = rnd.refresh(2, bank, labels)
    assert ctrl is not None and np.array_equal(ctrl.counts(), mined.counts())
    assert "epg_precision" in rnd.stats
    assert PairGenerator(cfg, mode="temporal").refresh(2, bank) is None
    with pytest.raises(ValueError, match="permutation"):
        bank.update(AUDIO, VIDEO, FILES, TIMES, window_ids=[0] * 8)
    with pytest.raises(ValueError, match="pairs"):
        PairGenerator(cfg, mode="mined")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"pairs\.k"):
        EPGConfig(k=0)


def sampler_case(n: int = 500, seed: int = 0) -> PairSet:
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 8)).astype(np.float32)
    return mine_pairs(z, z + 0.4 * rng.standard_normal((n, 8)).astype(np.float32), np.arange(n) // 50,
                      (np.arange(n) % 50) * 0.5, EPGConfig(k=5, max_rank_product=25))


def test_sampler_puts_every_anchors_partners_in_its_batch() -> None:
    pairs = sampler_case()
    n = pairs.n
    assert pairs.counts().max() >= 3
    sampler = PairBatchSampler(n, 32, pairs, seed=4)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    seen = set()
    for b in batches:
        assert 0 < len(b) <= 32 and len(set(b)) == len(b)
        seen.update(b)
    assert seen == set(range(n))
    # Each window has one batch holding it and all its partners.
    for i in range(n):
        need = {i, *pairs.partners(i).tolist()}
        assert any(need <= set(b) for b in batches), i
    # Duplicates kept modest: a window re-appears only when its partners are elsewhere.
    assert sum(map(len, batches)) < n * (1 + pairs.counts().mean())
    # Deterministic per (seed, epoch), different across epochs and seeds.
    assert list(PairBatchSampler(n, 32, pairs, seed=4)) == batches
    sampler.set_epoch(1)
    assert list(sampler) != batches
    assert list(PairBatchSampler(n, 32, pairs, seed=5)) != batches
    # Temporal mode: a plain seeded permutation cut into batches.
    plain = list(PairBatchSampler(n, 32, None, seed=4))
    assert sorted(w for b in plain for w in b) == list(range(n)) and max(map(len, plain)) == 32
    with pytest.raises(ValueError, match="batch_size"):
        PairBatchSampler(n, int(pairs.counts().max()), pairs)


def test_batch_positives_feed_the_loss() -> None:
    pairs = sampler_case(200, seed=1)
    batch = next(iter(PairBatchSampler(pairs.n, 24, pairs, seed=0)))
    pos = batch_positives(batch, pairs)
    assert pos.dtype == torch.bool and pos.shape == (len(batch), len(batch))
    expected = np.eye(len(batch), dtype=bool)
    for p, w in enumerate(batch):
        for q, x in enumerate(batch):
            if x in pairs.partners(w).tolist():
                expected[p, q] = True
    assert np.array_equal(pos.numpy(), expected) and expected.sum() > len(batch)
    assert torch.equal(batch_positives(batch, None), torch.eye(len(batch), dtype=torch.bool))
    z = torch.nn.functional.normalize(torch.randn(len(batch), 8), dim=1)
    assert torch.isfinite(multipos_loss(z, z, pos, 10.0))


def tiny_dataset(tmp_path):  # type: ignore[no-untyped-def]
    """The loop's real WindowDataset over two in-memory files (40 windows each, hop 0.5 s), with sidecars."""
    from edgeav.labels import write_labels
    from edgeav.preprocess import WindowSpec
    from train.data import CachedFile, WindowDataset

    files = []
    for name, car in (("a", (5.0, 8.0)), ("b", (10.0, 13.0))):
        path = tmp_path / f"{name}.mp4"
        write_labels(Labels(footage=path.name, duration=20.5, events=(LabelledEvent("car", *car),)),
                     tmp_path / f"{name}.labels.json")
        files.append(CachedFile(path=path, key=name, t_starts=np.arange(40) * 0.5,
                                frames=np.zeros((40, 1, 1, 1, 3), np.uint8), audio=np.zeros((40, 1), np.float32),
                                duration=20.5, from_cache=False))
    return WindowDataset(files, WindowSpec(), val_fraction=0.2)


def test_training_loop_strategies(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from edgeav.errors import UserError
    from train.epg import EPGPairs, RandomPartnerPairs
    from train.losses.fne import fne_loss
    from train.objective import resolve_loss, resolve_pairs
    from train.params import load_config

    assert resolve_pairs("epg") is EPGPairs and resolve_pairs("random") is RandomPartnerPairs
    assert resolve_loss("multipos") is multipos_loss and resolve_loss("fne") is fne_loss
    ds = tiny_dataset(tmp_path)
    train_set = set(ds.train_idx.tolist())
    assert len(train_set) == 62

    # Car windows embed near one direction (both modalities), the rest at random.
    rng = np.random.default_rng(0)
    car = np.array([ds.files[f].t_starts[i] for f, i in zip(*ds.locate(np.arange(len(ds))), strict=True)])
    fnum = ds.locate(np.arange(len(ds)))[0]
    is_car = np.where(fnum == 0, (car >= 4.5) & (car <= 7.0), (car >= 9.5) & (car <= 12.0))
    base = rng.standard_normal((len(ds), 16))
    base[is_car] = 0.3 * base[is_car] + np.eye(16)[0] * 4
    za, zv = base + 0.1 * rng.standard_normal(base.shape), base + 0.1 * rng.standard_normal(base.shape)

    def embed(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return za[idx].astype(np.float32), zv[idx].astype(np.float32)

    cfg = load_config(overrides={"train": {"pairs": "epg", "loss": "multipos"}, "optim": {"batch_size": 16},
                                 "pairs": {"k": 3, "max_rank_product": 9, "warmup_epochs": 1}})
    epg = EPGPairs(cfg, ds)
    first = epg.epoch_batches(1, 16)
    assert {int(w) for b in first for w in b} == train_set and epg.positives(first[0]) is None
    stats = epg.end_epoch(1, embed)
    assert stats["pairs"] > 10 and stats["precision"] > 2 * stats["chance"] > 0
    mined = epg.gen.current
    assert mined is not None
    batches = epg.epoch_batches(2, 16)
    assert {int(w) for b in batches for w in b} == train_set
    seen_pair = 0
    for row in range(mined.n):
        w = int(ds.train_idx[row])
        partners = {int(ds.train_idx[j]) for j in mined.partners(row)}
        assert any({w, *partners} <= set(b.tolist()) for b in batches)
    for b in batches:
        pos = epg.positives(b)
        assert pos is not None and pos.shape == (len(b), len(b)) and pos.diagonal().all()
        seen_pair += int(pos.sum()) - len(b)
        loss = multipos_loss(torch.from_numpy(za[b]).float(), torch.from_numpy(zv[b]).float(),
                             torch.from_numpy(pos), 10.0)
        assert torch.isfinite(loss)
    assert seen_pair >= mined.num_pairs
    # The control: same counts, through the same strategy machinery.
    ctrl = RandomPartnerPairs(cfg, ds)
    ctrl_stats = ctrl.end_epoch(1, embed)
    assert ctrl.gen.current is not None and np.array_equal(ctrl.gen.current.counts(), mined.counts())
    assert ctrl_stats["epg_precision"] == pytest.approx(stats["precision"])
    # Resume: the saved pairs give the same batches.
    again = EPGPairs(cfg, ds)
    again.load_state_dict(epg.state_dict())
    assert all(np.array_equal(x, y) for x, y in zip(again.epoch_batches(2, 16), batches, strict=True))
    for pairs_cfg, needle in [({"k": 0}, r"pairs\.k"), ({"kk": 1}, r"pairs\.kk")]:
        with pytest.raises(UserError, match=needle):
            EPGPairs(load_config(overrides={"pairs": pairs_cfg}), ds)
    with pytest.raises(UserError, match=r"optim\.batch_size"):
        EPGPairs(load_config(overrides={"optim": {"batch_size": 3}, "pairs": {"k": 3}}), ds)
