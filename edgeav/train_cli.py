"""``edgeav train``: argparse only; the work is in ``train.loop`` (needs the train extra, imported lazily)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from edgeav.errors import EXIT_OK


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="learn audio and video encoders from unlabeled footage (needs the train extra)",
        description="Train the audio and video encoders self-supervised on FOOTAGE (files, directories, globs). "
                    "Under `torchrun --nproc-per-node N -m edgeav.cli train ...` it trains with PyTorch DDP.",
    )
    p.add_argument("footage", nargs="+", metavar="FOOTAGE", help="footage files, directories or glob patterns")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory: checkpoints, log, config")
    p.add_argument("--config", metavar="FILE", help="YAML merged over configs/train.default.yaml")
    p.add_argument("--pairs", choices=["temporal", "epg", "random"], help="positive pairs (default: temporal)")
    p.add_argument("--loss", choices=["infonce", "multipos", "fne"], help="contrastive loss (default: infonce)")
    p.add_argument("--epochs", type=int, metavar="N", help="epochs (0: untrained encoders with normalisation)")
    p.add_argument("--seed", type=int, metavar="S", help="random seed")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where to train (default: auto)")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from its last.pt")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable footage (and say so) instead of stopping")
    p.add_argument("--cache-dir", metavar="DIR", help="decoded-window cache (default: $EDGEAV_CACHE_DIR or "
                                                     "~/.cache/edgeav/windows)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgeav.cli import require_train_extra
    from edgeav.errors import UserError

    require_train_extra("train")
    from train.loop import train
    from train.params import load_config

    if args.epochs is not None and args.epochs < 0:
        raise UserError(f"--epochs must be >= 0, got {args.epochs}")
    over: dict = {}
    for key in ("epochs", "seed", "pairs", "loss", "device"):
        value = getattr(args, key)
        if value is not None:
            over[key] = value
    if args.no_progress:
        over["progress"] = False
    cfg = load_config(args.config, {"train": over} if over else None)
    summary = train(args.footage, args.out, cfg, resume=args.resume, skip_bad=args.skip_bad,
                    cache_dir=args.cache_dir)
    brief = {k: summary.get(k) for k in ("epochs", "loss", "footage_seconds", "windows")}
    brief["best_val_r1_a2v"] = summary.get("metrics", {}).get("best_val_r1_a2v")
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one summary line, not one per process
        sys.stdout.write(json.dumps(brief) + "\n")
    return EXIT_OK
