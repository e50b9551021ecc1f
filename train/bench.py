"""Training benchmark: synthesise footage, train the default config on it, print time, windows/s, loss curve.

    python -m train.bench [--seconds 600] [--config FILE] [--epochs N] [--work DIR]

Everything is timed end to end as a user would meet it: synthesis (``edgeav synth``'s generator, 640x360 at
15 fps by default), decoding into a fresh window cache, and training (``edgeav train``'s own loop, same
code path). The issue's target: 10 minutes of footage in at most 5 minutes on a 2-core CPU, loss falling.
The machine's load average is printed too, since other work on the same cores slows every number.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=600.0, help="footage length (default 600 = 10 min)")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--fps", type=float, default=15.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", default="street")
    ap.add_argument("--config", help="training config merged over the default")
    ap.add_argument("--epochs", type=int, help="override the config's epochs")
    ap.add_argument("--work", help="working directory (default: a temporary one, removed afterwards)")
    args = ap.parse_args(argv)

    from edgeav.synth import synthesize
    from train.loop import train
    from train.params import load_config

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="edgeav-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    footage, run, cache = work / "bench.mp4", work / "run", work / "cache"
    shutil.rmtree(run, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    load0 = os.getloadavg()
    try:
        t0 = time.perf_counter()
        if not footage.exists():
            synthesize(footage, seconds=args.seconds, seed=args.seed, profile=args.profile, width=args.width,
                       height=args.height, fps=args.fps)
        t_synth = time.perf_counter() - t0
        over = {"progress": False, **({"epochs": args.epochs} if args.epochs is not None else {})}
        cfg = load_config(args.config, {"train": over})
        t1 = time.perf_counter()
        summary = train([str(footage)], run, cfg, cache_dir=cache)
        t_train = time.perf_counter() - t1
        log = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    epochs = [r for r in log if r["event"] == "epoch"]
    fit_s = sum(r["seconds"] for r in epochs)
    windows = sum(r["windows_per_s"] * r["seconds"] for r in epochs)
    total = t_synth + t_train
    print(f"footage: {args.seconds:.0f} s at {args.width}x{args.height} {args.fps:g} fps, "
          f"{summary['windows']} windows ({summary['train_windows']} train, {summary['val_windows']} held out)")
    print(f"synthesis: {t_synth:.1f} s; train command (decode + cache + {len(epochs)} epochs + checkpoints): "
          f"{t_train:.1f} s, of which optimisation {fit_s:.1f} s")
    print(f"training throughput: {windows / max(fit_s, 1e-9):.1f} windows/s")
    print("epoch  loss    val R@1 a->v  windows/s")
    untrained = summary["metrics"].get("untrained", {})
    print(f"    0    -       {untrained.get('r1_a2v', float('nan')):.3f}         -")
    for r in epochs:
        print(f"{r['epoch']:5d}  {r['loss']:.4f}  {r.get('val_r1_a2v', float('nan')):.3f}         "
              f"{r['windows_per_s']:.0f}")
    falls = len(epochs) >= 2 and epochs[-1]["loss"] < epochs[0]["loss"]
    print(f"loss falls: {'yes' if falls else 'NO'} ({epochs[0]['loss']:.4f} -> {epochs[-1]['loss']:.4f})"
          if epochs else "no epochs trained")
    load1 = os.getloadavg()
    print(f"total: {total:.1f} s (target <= 300 s); load average before {load0[0]:.1f}, after {load1[0]:.1f} "
          f"on {os.cpu_count()} CPUs")
    return 0 if falls else 1


if __name__ == "__main__":
    sys.exit(main())
