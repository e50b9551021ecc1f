"""``edgeav bench``: replay against the decoding floor, on footage made in the same run.

Makes 60 s of 1280x720, 25 fps footage with audio (``edgeav synth``), times FFmpeg
decoding both streams and discarding them (the floor: nothing can replay faster than
it decodes), then times ``edgeav replay`` of the same file in a child process, with
per-stage times, windows per second and the child's peak memory. Prints a table.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edgeav.errors import UserError


def _time(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"{cmd[0]} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr else proc.returncode}")
    return time.perf_counter() - t0


def run(args: argparse.Namespace) -> int:
    from edgeav.synth import synthesize

    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise UserError("edgeav bench needs the ffmpeg command for the decode-only floor (apt-get install ffmpeg)")
    with tempfile.TemporaryDirectory(prefix="edgeav-bench-") as tmp:
        footage = Path(tmp) / "bench.mp4"
        t0 = time.perf_counter()
        synthesize(footage, seconds=args.seconds, seed=1, width=args.width, height=args.height, fps=args.fps)
        synth_s = time.perf_counter() - t0
        floors = [_time([ffmpeg, "-hide_banner", "-nostats", "-loglevel", "error", "-i", str(footage),
                         "-map", "0:v", "-map", "0:a", "-f", "null", "-"]) for _ in range(args.repeat)]
        stats_path = Path(tmp) / "stats.json"
        cmd = [sys.executable, "-m", "edgeav", "replay", str(footage), "--quiet", "--stats", str(stats_path)]
        if args.models:
            cmd += ["--models", args.models]
        replays = []
        for _ in range(args.repeat):
            replays.append(_time(cmd))
        stats: dict[str, Any] = json.loads(stats_path.read_text())
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    floor, replay = min(floors), min(replays)
    rows = [
        ("footage", f"{args.seconds:.0f} s, {args.width}x{args.height} @ {args.fps:g} fps + AAC audio "
                    f"(synthesised in {synth_s:.1f} s)"),
        ("ffmpeg decode-only (floor)", f"{floor:.2f} s"),
        ("edgeav replay (whole process)", f"{replay:.2f} s  = {replay / floor:.2f} x the floor"),
        ("  decode", f"{stats['times']['decode']:.2f} s"),
        ("  preprocess", f"{stats['times']['preprocess']:.2f} s"),
        ("  embed", f"{stats['times']['embed']:.2f} s"),
        ("  decide", f"{stats['times']['decide']:.2f} s"),
        ("windows", f"{stats['windows']}  ({stats['windows'] / replay:.0f} windows/s)"),
        ("peak memory (largest child)", f"{peak_mb:.0f} MB"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print(f"(best of {args.repeat}; {args.repeat} runs each)")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("bench", help="time replay against FFmpeg's decode-only floor",
                              description="Synthesise footage, time ffmpeg decode-only and edgeav replay on it.")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--fps", type=float, default=25.0)
    p.add_argument("--repeat", type=int, default=3, help="runs of each, the best is reported (default 3)")
    p.add_argument("--models", metavar="BUNDLE_DIR", help="model bundle (default: the shipped one)")
    p.set_defaults(func=run)
