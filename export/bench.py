"""Per-window encoder time of a bundle: audio + video, batch 1, one thread (``python -m export.bench``).

Needs only onnxruntime when given a bundle. Without ``--models`` it exports freshly initialised
encoders of the default architecture to a temporary bundle first (that needs torch): the time
depends on the architecture, not on the weights.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


def time_per_window(bundle: Any, repeats: int = 200, warmup: int = 20, seed: int = 0) -> dict[str, float]:
    """Median milliseconds per call of each encoder at batch 1 on random windows of the bundle's shape."""
    ws = bundle.window_spec
    rng = np.random.default_rng(seed)
    audio = (0.1 * rng.standard_normal((1, ws.samples_per_window))).astype(np.float32)
    frames = rng.integers(0, 256, (1, ws.frames_per_window, ws.frame_height, ws.frame_width, 3), dtype=np.uint8)
    out: dict[str, float] = {}
    for name, fn, x in (("audio_ms", bundle.embed_audio, audio), ("video_ms", bundle.embed_video, frames)):
        for _ in range(warmup):
            fn(x)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t0)
        out[name] = round(1000.0 * float(np.median(times)), 3)
    out["total_ms"] = round(out["audio_ms"] + out["video_ms"], 3)
    return out


def bench_bundle(path: str | Path, precision: str, repeats: int = 200) -> dict[str, Any]:
    from edgeav.bundle import load_bundle

    bundle = load_bundle(path, threads=1, precision=precision, with_heads=False)
    return {"bundle": str(path), "bundle_id": bundle.bundle_id, "precision": precision, "threads": 1, "batch": 1,
            **time_per_window(bundle, repeats=repeats)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m export.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=None, help="bundle directory (default: export untrained default encoders)")
    ap.add_argument("--precision", choices=["fp32", "int8", "all"], default="all",
                    help="which models to time (default: every precision the bundle has)")
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--target-ms", type=float, default=5.0, help="per-window budget to compare with (default 5)")
    ap.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edgeav-bench-") as tmp:
        path = args.models
        if path is None:
            try:
                import torch  # noqa: F401
            except ImportError:
                ap.error("without --models BUNDLE_DIR the benchmark exports the default encoders, which needs torch")
            from export.onnx_export import export_untrained

            path = str(Path(tmp) / "bundle")
            export_untrained(path, quantize="int8" if args.precision in ("int8", "all") else None)
        from edgeav.bundle import read_manifest
        from edgeav.errors import EdgeavError

        try:
            manifest = read_manifest(path)
            for line in _bench_lines(path, manifest, args):
                print(line, flush=True)
        except EdgeavError as exc:
            print(f"python -m export.bench: error: {exc}", file=sys.stderr)
            return exc.exit_code
    return 0


def _bench_lines(path: str, manifest: dict[str, Any], args: argparse.Namespace) -> Iterator[str]:
    """One result line per precision, yielded as each is measured."""
    precisions = ["fp32", "int8"] if args.precision == "all" else [args.precision]
    for prec in [p for p in precisions if manifest["models"]["audio"].get(p)]:
        r = bench_bundle(path, prec, repeats=args.repeats)
        r["target_ms"] = args.target_ms
        r["within_target"] = r["total_ms"] <= args.target_ms
        if args.json:
            yield json.dumps(r)
        else:
            yield (f"{prec:5s} batch 1, 1 thread: audio {r['audio_ms']:.2f} ms + video {r['video_ms']:.2f} ms "
                   f"= {r['total_ms']:.2f} ms per window (target <= {args.target_ms:g} ms: "
                   f"{'met' if r['within_target'] else 'NOT met'})")


if __name__ == "__main__":
    sys.exit(main())
