"""``edgeav bench``: replay against the decoding floor, on footage made in the same run.

Makes 60 s of 1280x720, 25 fps footage with audio (``edgeav synth``; the video encoded as a camera's
encoder does, or with ``--encoding synth`` as ``edgeav synth`` does: see ENCODINGS), times FFmpeg
decoding both streams and discarding them (the floor: nothing can replay faster than
it decodes), then times ``edgeav replay`` of the same file in a child process, with
per-stage times, windows per second and the child's peak memory. Prints a table.

The floor and replay runs alternate, so a machine that gets busier half-way slows both
alike. Beside wall times it prints CPU seconds (user + system, all threads) and where
replay's CPU goes, and how much CPU other processes took while it timed: on a small box
shared with other work, wall times alone mislead, and CPU seconds over the cores say what
a quiet machine could reach at best.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edgeav.errors import UserError

# How the bench footage's video is encoded (x264 presets; both: no B-frames, a keyframe every 2 s).
# "camera": what an IP camera's encoder writes and what replay is for (CABAC, deblocking, High profile).
# "synth": `edgeav synth`'s own (CAVLC, no deblocking: quick to write, and about half the decoding work of
# the camera's, which makes replay's fixed costs, start-up and the models, a larger share of the floor).
ENCODINGS = {"camera": ("veryfast", "x264 veryfast: High profile, CABAC, deblocking, as an IP camera's encoder"),
             "synth": ("ultrafast", "x264 ultrafast: CAVLC, no deblocking, edgeav synth's own")}


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _busy_seconds() -> float | None:
    """CPU seconds every process on the machine has used since boot (Linux ``/proc/stat``), or None."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _time(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd``; its wall and CPU seconds."""
    c0, t0 = _children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise UserError(f"{cmd[0]} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr else proc.returncode}")
    return wall, _children_cpu() - c0


def _describe_bundle(models: str | None) -> str:
    """Which bundle replay ran, and whether its video model has the input normalisation folded in (export.fold)."""
    from edgeav.bundle import read_manifest, resolve_bundle_dir

    d = resolve_bundle_dir(models)
    m = read_manifest(d)
    folded = ((m.get("models") or {}).get("video") or {}).get("input_normalisation") or {}
    how = "folded into the first convolution" if folded.get("folded") else "not folded (exported before export.fold)"
    return f"{'the shipped default' if not models else d} ({m.get('bundle_id')}); video input normalisation {how}"


def run(args: argparse.Namespace) -> int:
    from edgeav.synth import synthesize

    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise UserError("edgeav bench needs the ffmpeg command for the decode-only floor (apt-get install ffmpeg)")
    if args.repeat < 1:
        raise UserError(f"--repeat must be at least 1, got {args.repeat}")
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="edgeav-bench-") as tmp:
        footage = Path(tmp) / "bench.mp4"
        t0 = time.perf_counter()
        preset, encoding = ENCODINGS[args.encoding]
        synthesize(footage, seconds=args.seconds, seed=1, width=args.width, height=args.height, fps=args.fps,
                   preset=preset)
        synth_s = time.perf_counter() - t0
        floor_cmd = [ffmpeg, "-hide_banner", "-nostats", "-loglevel", "error", "-i", str(footage),
                     "-map", "0:v", "-map", "0:a", "-f", "null", "-"]
        stats_path = Path(tmp) / "stats.json"
        replay_cmd = [sys.executable, "-m", "edgeav", "replay", str(footage), "--quiet", "--stats", str(stats_path)]
        if args.models:
            replay_cmd += ["--models", args.models]
        load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        busy0, wall0, ours0 = _busy_seconds(), time.perf_counter(), _children_cpu()
        floors, replays = [], []
        best_stats: dict[str, Any] = {}
        for _ in range(args.repeat):  # alternating, so both see the same machine
            floors.append(_time(floor_cmd))
            replays.append(_time(replay_cmd))
            if replays[-1][0] == min(w for w, _ in replays):
                best_stats = json.loads(stats_path.read_text())
        busy1, wall1, ours1 = _busy_seconds(), time.perf_counter(), _children_cpu()
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        footage_kbps = footage.stat().st_size * 8 / 1000 / args.seconds
    others = None if busy0 is None or busy1 is None else max(0.0, (busy1 - busy0) - (ours1 - ours0)) / (wall1 - wall0)
    floor, floor_cpu = min(w for w, _ in floors), min(c for _, c in floors)
    replay, replay_cpu = min(w for w, _ in replays), min(c for _, c in replays)
    ratios = [r / f for (f, _), (r, _) in zip(floors, replays, strict=True)]
    times, cpu = best_stats["times"], best_stats["cpu"]
    run_cpu, process_cpu = best_stats["run_cpu"], best_stats["process_cpu"]
    decoding_cpu = run_cpu - cpu["preprocess"] - cpu["embed"] - cpu["decide"]
    rest = max(decoding_cpu - cpu["decode"], 0.0)
    rows = [
        ("footage", f"{args.seconds:.0f} s, {args.width}x{args.height} @ {args.fps:g} fps + AAC audio "
                    f"(synthesised in {synth_s:.1f} s)"),
        ("encoding", f"--encoding {args.encoding}: {encoding}, no B-frames, "
                     f"{footage_kbps:.0f} kbit/s with the audio"),
        ("machine", f"{cores} cores; load average {load_before:.2f} before timing; other processes used "
                    f"{others:.2f} cores while timing" if others is not None and load_before is not None
                    else f"{cores} cores"),
        ("bundle", _describe_bundle(args.models)),
        ("ffmpeg decode-only (floor)", f"{floor:.2f} s wall, {floor_cpu:.2f} s CPU"),
        ("edgeav replay (whole process)", f"{replay:.2f} s wall = {replay / floor:.2f} x the floor "
                                          f"(median of pairs {statistics.median(ratios):.2f} x), "
                                          f"{replay_cpu:.2f} s CPU"),
        ("  stage wall (overlapping)", "decode {decode:.2f}, preprocess {preprocess:.2f}, embed {embed:.2f}, "
                                       "decide {decide:.2f} s".format(**times)),
        ("  CPU: start-up", f"{process_cpu - run_cpu:.2f} s (interpreter, imports, bundle and sessions; the "
                            f"sessions load while the file starts decoding)"),
        ("  CPU: decode", f"{decoding_cpu:.2f} s (decoding thread {cpu['decode']:.2f}: demuxing, window assembly "
                          f"and, on <= 2 cores, FFmpeg's decoding; the rest {rest:.2f}: the second half's decoder "
                          f"where the video was split, FFmpeg's frame threads where it has them, hand-offs)"),
        ("  video decoded in", "two halves at once (edgeav.splitdecode)" if best_stats.get("files_split")
                               else "one thread (file too short, or fewer than 2 idle cores)"),
        ("  CPU: preprocess", f"{cpu['preprocess']:.2f} s ({best_stats['frames_converted']} frames resized)"),
        ("  CPU: embed", f"{cpu['embed']:.2f} s"),
        ("  CPU: decide", f"{cpu['decide']:.2f} s"),
        ("CPU against the floor's", f"{replay_cpu / floor_cpu:.2f} x"),
        ("wall at best on idle cores", f"{replay_cpu / cores:.2f} s (replay's CPU spread evenly over {cores} cores; "
                                       f"the floor spreads its own over {floor_cpu / floor:.1f} here)"),
        ("windows", f"{best_stats['windows']}  ({best_stats['windows'] / replay:.0f} windows/s)"),
        ("peak memory (largest child)", f"{peak_mb:.0f} MB"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print(f"(best of {args.repeat} alternating runs each; the CPU breakdown is the fastest replay's)")
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
    p.add_argument("--encoding", choices=sorted(ENCODINGS), default="camera",
                   help="how the footage's video is encoded: 'camera' (default; x264 veryfast: CABAC and "
                        "deblocking, like an IP camera's stream) or 'synth' (edgeav synth's ultrafast: about half "
                        "the decoding work)")
    p.set_defaults(func=run)
