"""Benchmark of EPG mining: time and peak memory of the chunked mutual top-k at bank sizes.

    python -m train.epg_bench [--sizes 20000 50000 200000] [--dim 128] [--k 5] [--chunk-size ROWS]

Each size runs in its own interpreter so its peak resident set size (``ru_maxrss``)
is its own and not the high-water mark of a larger run before it. The bank is
synthetic: unit 128-d audio and video embeddings around 64 shared "event"
centres plus noise, in files of 400 windows at a 0.5 s hop, so the mutual pairs
and the exclusion lists look like footage rather than pure noise. It prints, per
size: the mining time, the random control and sampler-plan times (what the
training loop adds per epoch), pairs per anchor, the pair precision against the
synthetic centres (with its chance rate), the RSS before mining (data + imports)
and the peak, and what a dense N x N float32 matrix would have needed. ``cpu s`` is the
process CPU time of the mining (all threads): on a shared machine, wall time
over CPU time / threads shows how much the neighbours took.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

GIB = 1 << 30


def _rss_now_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def run_one(n: int, dim: int, k: int, chunk_size: int | None, seed: int) -> dict[str, float]:
    """Mine one synthetic bank of ``n`` windows and return the measurements."""
    import numpy as np
    import torch

    from train.epg import EPGConfig, mine_pairs, pair_stats, random_pairs
    from train.sampler import PairBatchSampler

    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(64, dim, generator=g), dim=1)
    kind = torch.randint(0, 64, (n,), generator=g)
    z_video = torch.nn.functional.normalize(centres[kind] + 0.2 * torch.randn(n, dim, generator=g), dim=1)
    z_audio = torch.nn.functional.normalize(centres[kind] + 0.2 * torch.randn(n, dim, generator=g), dim=1)
    files = np.arange(n) // 400
    times = (np.arange(n) % 400) * 0.5
    labels = [f"kind{int(c)}" for c in kind.tolist()]
    rss_before = _rss_now_bytes()
    cfg = EPGConfig(k=k, chunk_size=chunk_size)

    t0, c0 = time.perf_counter(), time.process_time()
    pairs = mine_pairs(z_video, z_audio, files, times, cfg)
    t_mine, c_mine = time.perf_counter() - t0, time.process_time() - c0
    t0 = time.perf_counter()
    random_pairs(pairs.counts(), files, times, cfg.exclude_within_s, seed)
    t_random = time.perf_counter() - t0
    t0 = time.perf_counter()
    batches = PairBatchSampler(n, 256, pairs, seed=seed).plan()
    t_sampler = time.perf_counter() - t0
    stats = pair_stats(pairs, labels)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # KiB on Linux
    return {
        "n": n, "dim": dim, "k": k, "threads": torch.get_num_threads(),
        "mine_s": t_mine, "mine_cpu_s": c_mine, "random_s": t_random, "sampler_s": t_sampler,
        "batches": len(batches), "epoch_windows": sum(map(len, batches)),
        "pairs": stats["pairs"], "per_anchor_mean": stats["per_anchor_mean"],
        "share_with_any": stats["share_with_any"], "precision": stats["precision"], "chance": stats["chance"],
        "rss_before_gib": rss_before / GIB, "peak_rss_gib": peak / GIB, "dense_nxn_gib": 4.0 * n * n / GIB,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.epg_bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000, 50_000, 200_000])
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--chunk-size", type=int, default=None, help="video rows per matrix product (default: auto)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--memory-limit-gib", type=float, default=24.0, help="the budget a run must fit in")
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)   # child mode: one size, JSON out
    args = ap.parse_args(argv)
    if args.one is not None:
        print(json.dumps(run_one(args.one, args.dim, args.k, args.chunk_size, args.seed)))
        return 0

    header = (f"{'N':>8} {'mine s':>8} {'cpu s':>8} {'random s':>9} {'sampler s':>10} {'pairs/anchor':>13} {'>=1':>6} "
              f"{'precision':>10} {'chance':>7} {'RSS before':>11} {'peak RSS':>9} {'dense NxN':>10}")
    print(f"EPG mining benchmark: dim {args.dim}, k {args.k}, chunk {args.chunk_size or 'auto'}")
    print(header)
    ok = True
    threads = "?"
    for n in args.sizes:
        cmd = [sys.executable, "-m", "train.epg_bench", "--one", str(n), "--dim", str(args.dim),
               "--k", str(args.k), "--seed", str(args.seed)]
        if args.chunk_size:
            cmd += ["--chunk-size", str(args.chunk_size)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(f"{n:>8} failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
            ok = False
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        threads = str(r["threads"])
        fits = r["peak_rss_gib"] < args.memory_limit_gib
        ok &= fits
        print(f"{n:>8} {r['mine_s']:>8.1f} {r['mine_cpu_s']:>8.1f} {r['random_s']:>9.2f} {r['sampler_s']:>10.2f} "
              f"{r['per_anchor_mean']:>13.2f} {r['share_with_any']:>6.2f} {r['precision']:>10.3f} "
              f"{r['chance']:>7.3f} {r['rss_before_gib']:>9.2f} G {r['peak_rss_gib']:>7.2f} G "
              f"{r['dense_nxn_gib']:>8.1f} G" + ("" if fits else f"  OVER {args.memory_limit_gib} GiB"))
    print(f"torch threads: {threads}; every size fits in {args.memory_limit_gib} GiB: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
