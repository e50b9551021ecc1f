"""``edgeav evaluate``: argparse only; the work is in ``train.evaluate`` (imported when the command runs).

A bundle is evaluated without torch; a checkpoint or run directory needs the train extra (it is
exported to a temporary bundle, and its pre-projection features come from torch).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from edgeav.errors import EXIT_OK


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="downstream metrics of frozen encoders on labelled footage (localisation, anomaly, search)",
        description="Fit a linear probe on --probe footage and score event localisation on --test footage (1 s "
                    "segments); kNN anomaly AUROC of --test against --normal windows for each feature choice; "
                    "event search P@10 with each labelled test event as a query. Footage needs label sidecars.")
    p.add_argument("model", metavar="CHECKPOINT_OR_BUNDLE", help="model bundle directory, run directory or .pt")
    p.add_argument("--probe", nargs="+", required=True, metavar="FOOTAGE", help="labelled footage to fit the probe on")
    p.add_argument("--test", nargs="+", required=True, metavar="FOOTAGE",
                   help="labelled footage to score, with anomalies marked in its sidecars")
    p.add_argument("--normal", nargs="+", default=None, metavar="FOOTAGE",
                   help="normal footage for the anomaly memory (default: the probe footage)")
    p.add_argument("--floor", default=None, metavar="CHECKPOINT_OR_BUNDLE",
                   help="untrained encoders (e.g. RUN/checkpoints/epoch_000.pt) evaluated alike: each figure is "
                        "marked with the floor's and whether it beats it")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON instead of a table")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime threads (default 2)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from train.evaluate import compare_with_floor, evaluate, markdown

    cache: dict = {}  # footage decoded once for both models
    result = evaluate(args.model, args.probe, args.test, args.normal, threads=args.threads, cache=cache)
    if args.floor:
        floor = evaluate(args.floor, args.probe, args.test, args.normal, threads=args.threads, cache=cache)
        result = compare_with_floor(result, floor)
    sys.stdout.write((json.dumps(result, indent=1) if args.json else markdown(result)) + "\n")
    return EXIT_OK
