"""Footage and a model bundle that raise anomaly alerts at known times, without torch.

The bundle's encoders are the tiny linear ONNX graphs of ``tests/test_bundle.py`` (real
onnxruntime sessions); its anomaly memory holds the video embedding of a blue picture, so
red seconds are anomalous and blue ones are normal. The footage alternates ``blue_s`` of
blue with ``red_s`` of red (H.264 + AAC, written with PyAV like a camera recording), so
every red stretch is one alert: the number and times of alerts are known in advance.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from test_bundle import SPEC, make_toy_bundle

from edgeav.bundle import add_content_named_file, load_bundle, read_manifest, write_manifest
from edgeav.calibrate import AnomalyMemory
from edgeav.preprocess import prepare_frame_i420

FPS = 10
SIZE = (64, 48)
BLUE = (0, 0, 255)
RED = (255, 0, 0)


def _frame(rgb: tuple[int, int, int]) -> av.VideoFrame:
    img = np.zeros((SIZE[1], SIZE[0], 3), np.uint8)
    img[:] = rgb
    return av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")


def write_alert_footage(path: Path, seconds: float, blue_s: float = 2.0, red_s: float = 1.0) -> list[float]:
    """Write the footage; return the start times of its red stretches (one alert each)."""
    out = av.open(str(path), "w")
    v = out.add_stream("libx264", rate=FPS)
    v.width, v.height, v.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
    v.options = {"preset": "ultrafast", "g": str(FPS)}
    a = out.add_stream("aac", rate=16000)
    a.layout = "mono"
    period = blue_s + red_s
    reds = [k * period + blue_s for k in range(int(seconds // period) + 1) if k * period + blue_s + red_s <= seconds]
    blue, red = _frame(BLUE), _frame(RED)
    n = int(seconds * FPS)
    for i in range(n):
        t = i / FPS
        f = red if (t % period) >= blue_s else blue
        f = f.reformat()  # a fresh frame object per pts
        f.pts = i
        f.time_base = Fraction(1, FPS)
        for p in v.encode(f):
            out.mux(p)
    tone = (0.1 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * 16000)) / 16000)).astype(np.float32)
    for i in range(0, len(tone), 1024):
        af = av.AudioFrame.from_ndarray(tone[None, i:i + 1024], format="fltp", layout="mono")
        af.sample_rate, af.pts, af.time_base = 16000, i, Fraction(1, 16000)
        for p in a.encode(af):
            out.mux(p)
    for s in (v, a):
        for p in s.encode(None):
            out.mux(p)
    out.close()
    return reds


def make_alert_bundle(d: Path, seed: int = 3) -> Path:
    """A toy bundle whose anomaly memory is 'blue': red pictures score far above its threshold."""
    make_toy_bundle(d, seed=seed)
    bundle = load_bundle(d, with_heads=False)

    def video_embedding(rgb: tuple[int, int, int]) -> np.ndarray:
        small = prepare_frame_i420(_frame(rgb).to_ndarray(), SPEC.frame_width, SPEC.frame_height)
        frames = np.stack([small] * SPEC.frames_per_window)[None]
        return bundle.embed_video(frames)[0]

    blue, red = video_embedding(BLUE), video_embedding(RED)
    gap = float(np.linalg.norm(red - blue))
    assert gap > 0.2, "the toy encoder does not tell red from blue"
    mem = AnomalyMemory.single("video", blue[None], k=1, threshold=gap / 2)
    name = add_content_named_file(d, "anomaly", mem.save)
    manifest = dict(read_manifest(d))
    manifest["anomaly"] = {"memory": name, "k": 1, "threshold": mem.threshold, "features": "video"}
    write_manifest(d, manifest)
    return d
