"""``edgeav synth OUT.mp4 --seconds N --seed S [...]``: write footage and its labels sidecar."""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

from edgeav.errors import UserError, read_json_file
from edgeav.labels import sidecar_path
from edgeav.synth.kinds import KINDS, PROFILES


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "synth", help="generate deterministic street footage (H.264 + AAC MP4) with a labels sidecar",
        description="Render a synthetic street scene seen by a fixed camera, with its sounds, and write "
                    "OUT.mp4 plus OUT.labels.json (edgeav.labels/1). The same arguments give byte-identical "
                    f"files. Event kinds: {', '.join(KINDS)}.")
    p.add_argument("out", metavar="OUT.mp4", type=Path, help="the footage to write")
    p.add_argument("--seconds", type=float, default=60.0, help="duration in seconds (default 60)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--site", type=int, default=None,
                   help="seed of the place itself (buildings, colours, light; default: --seed): recordings of one "
                        "site share a scene")
    p.add_argument("--profile", default="street",
                   help=f"scene profile: {', '.join(PROFILES)} (default street; street-anomalies adds rare anomalies)")
    p.add_argument("--width", type=int, default=640, help="frame width in pixels, even (default 640)")
    p.add_argument("--height", type=int, default=360, help="frame height in pixels, even (default 360)")
    p.add_argument("--fps", type=float, default=15.0, help="frame rate (default 15)")
    p.add_argument("--sample-rate", type=int, default=16000, help="audio sample rate in Hz (default 16000)")
    p.add_argument("--events", metavar="TIMELINE.json", type=Path,
                   help='script the timeline exactly: a JSON list such as [{"kind": "car", "start": 12.0, '
                        '"duration": 4}] (optional keys: duration or speed, direction, lane, colour, size, '
                        "loudness in dBFS RMS, pitch, variant, x, lead/tail for a siren)")
    p.set_defaults(func=run)


def load_timeline(path: Path) -> list:
    """Read a ``--events`` file; every problem is one line naming the file."""
    data = read_json_file(path, "events file")
    if not isinstance(data, list):
        raise UserError(f"{path}: top level: {type(data).__name__} is not allowed (a list of event objects)")
    return data


def run(args: argparse.Namespace) -> int:
    from edgeav.synth.generate import synthesize

    events = load_timeline(args.events) if args.events is not None else None
    bar = None
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=100, unit="%", desc="synth", leave=False, file=sys.stderr)

    def progress(fraction: float) -> None:
        if bar is not None:
            bar.n = round(100 * fraction)
            bar.refresh()

    t0, c0 = time.perf_counter(), time.process_time()
    try:
        labels = synthesize(args.out, seconds=args.seconds, seed=args.seed, profile=args.profile, width=args.width,
                            height=args.height, fps=args.fps, sample_rate=args.sample_rate, events=events,
                            progress=progress, site=args.site)
    except UserError as exc:
        if args.events is not None and str(exc).startswith("events"):
            raise UserError(f"{args.events}: {exc}") from None  # name the file the bad entry is in
        raise
    finally:
        if bar is not None:
            bar.close()
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    counts = Counter(e.label for e in labels.events)
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(counts.items())) or "none"
    sys.stderr.write(
        f"edgeav synth: wrote {args.out} and {sidecar_path(args.out).name}: {args.seconds:g} s, "
        f"{args.width}x{args.height} @ {args.fps:g} fps, {args.sample_rate} Hz, {len(labels.events)} events "
        f"({kinds}); {dt:.1f} s = {args.seconds / dt:.1f}x real time "
        f"({cpu:.1f} s of CPU = {args.seconds / max(cpu, 1e-9):.1f}x)\n")
    return 0
