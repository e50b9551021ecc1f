"""The frame-grid figure: ``python -m edgeav.synth.grid OUT.png [--seed S]``.

Generates a short scripted scene with one of each kind (anomalies included),
decodes frames from the MP4 (what a model would see), and tiles them with the
labels active at each instant.  The README's ``tests/figures/synth_grid.png`` is
made by this command.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import av
import cv2
import numpy as np

from edgeav.labels import Labels
from edgeav.synth.generate import synthesize

# One moment per tile: (kind, start, extra parameters); the tile is taken mid-view.
SHOWCASE: tuple[tuple[str, float, dict], ...] = (
    ("car", 0.5, {"duration": 4.0, "direction": "right"}),
    ("truck", 5.0, {"duration": 6.0, "variant": "bus", "direction": "left"}),
    ("motorbike", 11.5, {"duration": 3.0, "direction": "right"}),
    ("bicycle", 15.0, {"duration": 5.0, "direction": "left", "lane": "far"}),
    ("talking", 20.5, {"duration": 6.0, "lane": "near"}),
    ("dog", 27.0, {"duration": 5.0, "lane": "near"}),
    ("siren", 32.5, {"duration": 10.0, "lead": 3.0, "tail": 3.0, "direction": "right"}),
    ("truck", 43.0, {"duration": 6.0, "variant": "truck", "direction": "right"}),
    ("explosion", 49.5, {"duration": 4.0, "variant": "explosion", "x": 0.55}),
    ("crash", 54.0, {"duration": 6.0}),
    ("running", 60.5, {"duration": 3.0, "lane": "near"}),
    ("offscreen", 64.0, {"duration": 2.0, "variant": "horn"}),
)
SECONDS = 67.0


def tile_times(labels: Labels) -> list[float]:
    """A representative instant per showcased event: where the object is well inside the view."""
    times = []
    for kind, start, p in SHOWCASE:
        if kind == "siren":
            times.append(start + p["lead"] + (p["duration"] - p["lead"] - p["tail"]) * 0.5)
        elif kind == "explosion":
            times.append(start + 0.15)
        elif kind == "crash":
            times.append(start + 0.33 * p["duration"])
        else:
            times.append(start + 0.5 * p["duration"])
    return times


def decode_at(path: Path, times: list[float]) -> list[np.ndarray]:
    """RGB frames nearest each time, decoded from the file."""
    out: dict[int, np.ndarray] = {}
    wanted = {i: t for i, t in enumerate(times)}
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        for frame in c.decode(s):
            assert frame.pts is not None and s.time_base is not None
            ft = float(frame.pts * s.time_base)
            for i, t in list(wanted.items()):
                if ft >= t - 1e-6:
                    out[i] = frame.to_ndarray(format="rgb24")
                    del wanted[i]
            if not wanted:
                break
    return [out[i] for i in range(len(times))]


def make_grid(out_png: Path, seed: int = 7, width: int = 640, height: int = 360, cols: int = 3,
              tile_width: int = 384) -> None:
    events = [{"kind": k, "start": s, **p} for k, s, p in SHOWCASE]
    with tempfile.TemporaryDirectory() as tmp:
        mp4 = Path(tmp) / "showcase.mp4"
        labels = synthesize(mp4, seconds=SECONDS, seed=seed, profile="street-anomalies", width=width,
                            height=height, events=events)
        times = tile_times(labels)
        frames = decode_at(mp4, times)
    tiles = []
    for t, img in zip(times, frames, strict=True):
        active = [e for e in labels.events if e.start <= t < e.end]
        text = ", ".join(e.label + ("" if e.visible else " (heard)") + (" [anomaly]" if e.anomaly else "")
                         for e in active) or "background"
        img = cv2.resize(img, (tile_width, round(height * tile_width / width)), interpolation=cv2.INTER_AREA)
        bar = np.full((24, tile_width, 3), 20, np.uint8)
        cv2.putText(bar, f"t={t:5.1f}s  {text}", (6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1,
                    cv2.LINE_AA)
        tiles.append(np.vstack([bar, img]))
    while len(tiles) % cols:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.hstack(tiles[i:i + cols]) for i in range(0, len(tiles), cols)]
    grid = np.vstack(rows)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out_png), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise SystemExit(f"cannot write {out_png}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path, help="PNG to write (e.g. tests/figures/synth_grid.png)")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    make_grid(args.out, seed=args.seed)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
