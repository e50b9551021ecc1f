"""``edgeav bench-live``: one live camera end to end, on this box, with numbers.

Synthesises footage (default 1280x720, 25 fps, 16 kHz AAC audio), serves it over RTSP on
loopback with the GStreamer server of the source tree (``tests/rtsp_server.py``, run by the
system ``/usr/bin/python3`` with python3-gi: a development checkout, not an installed box),
and runs :class:`edgeav.live.LiveCamera` on it with the camera's own audio. It prints:

* decision latency: for onsets spread every 50 ms over the run, the time from the onset (on the
  common clock) to the moment the pipeline finished the first window that contains it, median
  and p95; and the pipeline's own delay (window end -> window processed);
* CPU share of this process (capture, decode, windows, embedding; not the server) in % of one
  core, from ``getrusage`` over the measured period, and the process's peak resident memory;
* windows, drops, reconnects and the measured A/V skew from the health report.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeav.errors import UserError

SERVER_SCRIPT = Path(__file__).resolve().parents[1] / "tests" / "rtsp_server.py"
WARMUP_S = 4.0


class _Timing:
    """A sink that notes when each window's record came out of the pipeline."""

    def __init__(self) -> None:
        self.rows: list[tuple[float, float, float]] = []  # (t_start, t_end, wall time processed)
        self.lock = threading.Lock()

    def window(self, record: dict[str, Any]) -> None:
        now = time.time()
        with self.lock:
            self.rows.append((record["t_start"], record["t_end"], now))

    def event(self, record: dict[str, Any]) -> None:
        pass

    def alert(self, record: dict[str, Any]) -> None:
        pass


def onset_latencies(rows: list[tuple[float, float, float]], t_from: float, t_to: float,
                    step: float = 0.05) -> np.ndarray:
    """For onsets every ``step`` in ``[t_from, t_to)``: processed time of the first window containing it, minus it."""
    if not rows:
        return np.zeros(0)
    arr = np.array(sorted(rows, key=lambda r: r[1]))
    out = []
    for tau in np.arange(t_from, t_to, step):
        ok = (arr[:, 0] <= tau) & (arr[:, 1] > tau)
        if ok.any():
            out.append(arr[ok, 2].min() - tau)
    return np.array(out)


def _load_server() -> Any:
    if not SERVER_SCRIPT.is_file():
        raise UserError(f"edgeav bench-live needs a source checkout: {SERVER_SCRIPT} (the test RTSP server) is missing")
    spec = importlib.util.spec_from_file_location("edgeav_bench_rtsp_server", SERVER_SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    why = mod.server_available()
    if why:
        raise UserError(f"edgeav bench-live: {why}")
    return mod


def run(args: argparse.Namespace) -> int:
    from edgeav.bundle import load_bundle, resolve_bundle_dir
    from edgeav.config import CameraConfig
    from edgeav.live import LiveCamera
    from edgeav.synth import synthesize

    if args.seconds < WARMUP_S + 5:
        raise UserError(f"--seconds must be at least {WARMUP_S + 5:g}, got {args.seconds:g}")
    server_mod = _load_server()
    bundle = load_bundle(resolve_bundle_dir(args.models))
    with tempfile.TemporaryDirectory(prefix="edgeav-bench-live-") as tmp:
        footage = Path(tmp) / "live.mp4"
        synthesize(footage, seconds=args.seconds + 5, seed=2, width=args.width, height=args.height, fps=args.fps,
                   sample_rate=16000)
        sink = _Timing()
        server = server_mod.RtspServer(footage, max_seconds=int(args.seconds + 60)).start()
        cam = CameraConfig.model_validate({"name": "bench", "video": {"url": server.url},
                                           "audio": {"source": "camera"}})
        live = LiveCamera(cam, bundle, [sink])
        try:
            live.start()
            deadline = time.monotonic() + 20
            while not live.health()["streaming"]:
                if time.monotonic() > deadline:
                    raise UserError(f"the RTSP stream did not start: {live.health()['sources']}")
                time.sleep(0.05)
            time.sleep(WARMUP_S)
            r0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.time()
            time.sleep(args.seconds - WARMUP_S)
            r1, w1 = resource.getrusage(resource.RUSAGE_SELF), time.time()
            health = live.health()
        finally:
            live.stop(10.0)
            server.kill()
    cpu = (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / (w1 - w0)
    with sink.lock:
        rows = list(sink.rows)
    lat = onset_latencies(rows, w0, w1 - 3.0)
    delay = np.array([p - e for s, e, p in rows if w0 <= e <= w1])
    result = {
        "camera": f"{args.width}x{args.height} @ {args.fps:g} fps H.264 + 16 kHz AAC over RTSP/TCP (loopback)",
        "bundle": bundle.bundle_id, "measured_s": round(w1 - w0, 1),
        "onset_to_decision_s": {"median": _r(np.median(lat)) if len(lat) else None,
                                "p95": _r(np.percentile(lat, 95)) if len(lat) else None, "onsets": len(lat)},
        "window_end_to_processed_s": {"median": _r(np.median(delay)) if len(delay) else None,
                                      "p95": _r(np.percentile(delay, 95)) if len(delay) else None},
        "cpu_percent_of_one_core": round(100 * cpu, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "frames": health["frames"], "windows": health["windows"], "windows_dropped": health["windows_dropped"],
        "reconnects": health["reconnects"], "skew_ms": health["skew_ms"],
        "video_latency_ms": health["sources"]["video"]["latency_ms"],
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result.items():
            print(f"{k:28s} {v}")
    return 0


def _r(x: float) -> float:
    return round(float(x), 3)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("bench-live", help="benchmark one live RTSP camera: decision latency, CPU, memory",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=40.0, help="measured run length, warm-up included (default 40)")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--fps", type=float, default=25.0)
    p.add_argument("--models", metavar="BUNDLE_DIR", help="model bundle (default: the shipped one)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=run)
