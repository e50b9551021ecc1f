"""Which window features let the anomaly scorer catch what, at a held-out synth site: the study behind the
README's "Anomaly features" table.

    python -m train.anomaly_study --work /tmp/site5150 [--models BUNDLE] [--rows NAME ...] [--rate 1] [--bound N]

``--work`` is a directory that ``python -m edgeav.site_eval --work DIR`` filled (``normal-SITE-*.mp4``: the
calibration footage; ``test-SITE-*.mp4`` with label sidecars: the held-out replay). Every row is the
product's scorer (:func:`edgeav.calibrate.calibrate`: standardised kNN per feature, rescaled, the largest part
deciding, threshold for ``--rate`` false alarms per hour from the out-of-fold normal scores) and the product's
decider (:class:`edgeav.decide.AnomalyDecider`) over the test windows, scored like ``site_eval``
(:func:`edgeav.scoring.score_replay`). What differs between rows is only the features: the bundle's (as
``edgeav calibrate`` sees them) and candidate features computed here in numpy, which the product does not
ship because they did not help:

- ``block_speed``: per 8x8 cell the horizontal shift (block matching, +-16 px) between consecutive sampled
  frames, where something moved: how fast things move where.
- ``centroid_speed``: per 4-pixel row band the speed of the moving pixels' centroid over the 4 frames (a line
  fit; only where it fits within 2 px and the moving mass stays): the same, robust to repeated texture.
- ``pitch``: per window the share of 25 ms frames voiced at each of 16 pitch bands (80-1600 Hz;
  normalised autocorrelation, the smallest lag within 90% of the best peak).
- ``mfcc``: a bag of 60 ms patches of 16 cepstral coefficients (level left out): the spectral envelope.
- ``roughness``: a bag of 256 ms patches of each of 12 frequency bands' envelope fluctuation at 4-12, 12-28,
  28-80 and 80-125 Hz (log modulation depth): how rough a sound is, the trait that sets human screams apart.
- ``footsteps``: per window the count of sharp 125-2500 Hz thuds and their onset train's autocorrelation in lag
  bands (a runner's strides).
- ``cuboids``: a bag of per-cell motion cuboids (each 8x8 cell's 4x4-pooled change over the 4 frames, and
  where the cell is).

Features are cached per file in ``--cache`` (default ``WORK/study-cache``). Prints one line per row: caught
of the anomalies and false alarms over the test hours, by kind. ``--bound N`` adds each row's upper bound
(:func:`upper_bound`): the most caught with at most N false alarms when the threshold and the ceiling parts'
scale are chosen on the test itself, which tells a row's features from its calibration. Needs the train extra
(OpenCV, torch for the filterbank).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROWS = {
    "summaries": ("audio_summary", "video_summary"),
    "default": ("audio_patches", "audio_summary", "video_summary", "video_speed", "audio_roughness"),
    "default-audio_roughness": ("audio_patches", "audio_summary", "video_summary", "video_speed"),
    "audio_roughness": ("audio_roughness",),
    "default-video_speed": ("audio_patches", "audio_summary", "video_summary"),
    "video_speed": ("video_speed",),
    "default-velocity": ("audio_patches", "audio_summary", "video_summary", "video_velocity", "audio_roughness"),
    "video_velocity": ("video_velocity",),
    "patches": ("audio_patches",),
    "pre": ("audio_pre", "video_pre"),
    "patches+pre+video_summary": ("audio_patches", "audio_pre", "video_summary"),
    "block_speed": ("block_speed",),
    "default+block_speed": ("audio_patches", "audio_summary", "video_summary", "block_speed"),
    "centroid_speed": ("centroid_speed",),
    "default+centroid_speed": ("audio_patches", "audio_summary", "video_summary", "centroid_speed"),
    "cuboids": ("cuboids",),
    "default+cuboids": ("audio_patches", "audio_summary", "video_summary", "cuboids"),
    "pitch": ("pitch",),
    "default+pitch": ("audio_patches", "audio_summary", "video_summary", "pitch"),
    "mfcc": ("mfcc",),
    "roughness": ("roughness",),
    "default+roughness": ("audio_patches", "audio_summary", "video_summary", "roughness"),
    "default+mfcc": ("audio_patches", "audio_summary", "video_summary", "mfcc"),
    "default-max-pool": ("audio_patches", "audio_summary", "video_summary"),
    "footsteps": ("footsteps",),
    "default+footsteps": ("audio_patches", "audio_summary", "video_summary", "video_speed", "audio_roughness",
                          "footsteps"),
}
# Rows that score a bag feature's windows by other pools than calibrate's (edgeav.calibrate.BAG_POOLS): the most
# unusual instance alone, as calibrate did before the mean pool.
ROW_BAG_POOLS = {"default-max-pool": ("max",)}
BUNDLE_FEATURES = ("audio_summary", "video_summary", "audio_patches", "audio_pre", "video_pre", "video_speed",
                   "video_velocity", "audio_roughness")


# ---------------------------------------------------------------------------------------------- candidate features

def block_speed(frames: np.ndarray, smax: int = 16, cell: int = 8, moved: float = 2.0) -> np.ndarray:
    import cv2

    b, f, h, w = frames.shape[:4]
    out = np.zeros((b, (h // cell) * (w // cell)), np.float32)
    for i in range(b):
        grey = [cv2.cvtColor(frames[i, j], cv2.COLOR_RGB2GRAY) for j in range(f)]
        best = np.zeros((h // cell, w // cell), np.float32)
        for j in range(f - 1):
            pad = cv2.copyMakeBorder(grey[j], 0, 0, smax, smax, cv2.BORDER_REPLICATE)
            sad = np.stack([cv2.resize(cv2.absdiff(grey[j + 1], pad[:, smax - s: smax - s + w]),
                                       (w // cell, h // cell), interpolation=cv2.INTER_AREA)
                            for s in range(-smax, smax + 1)]).astype(np.float32)
            shift = np.abs(sad.argmin(0) - smax).astype(np.float32)
            best = np.maximum(best, np.where(sad[smax] > moved, shift, 0.0))
        out[i] = best.reshape(-1)
    return out


def centroid_speed(frames: np.ndarray, band: int = 4, moved: float = 20.0, dt: float = 0.25,
                   max_residual: float = 2.0) -> np.ndarray:
    x = frames.astype(np.float32).mean(-1)  # [B, F, H, W]
    b, f, h, w = x.shape
    fg = (np.abs(x - np.median(x, axis=1, keepdims=True)) > moved).reshape(b, f, h // band, band, w).any(3)
    mass = fg.sum(3).astype(np.float32)  # [B, F, R]
    centre = (fg * np.arange(w, dtype=np.float32)).sum(3) / np.maximum(mass, 1)
    seen = (mass > 0).astype(np.float32)
    t = np.arange(f, dtype=np.float32)[None, :, None] * dt
    n = seen.sum(1)
    tm = (seen * t).sum(1) / np.maximum(n, 1)
    cm = (seen * centre).sum(1) / np.maximum(n, 1)
    slope = (seen * (t - tm[:, None]) * (centre - cm[:, None])).sum(1) / np.maximum(
        (seen * (t - tm[:, None]) ** 2).sum(1), 1e-6)
    resid = np.sqrt((seen * (centre - cm[:, None] - slope[:, None] * (t - tm[:, None])) ** 2).sum(1)
                    / np.maximum(n, 1))
    least = np.where(seen > 0, mass, np.inf).min(1)
    ok = (n >= f) & (resid <= max_residual) & (least >= 0.5 * mass.max(1))
    return np.where(ok, np.abs(slope), 0.0).astype(np.float32)


def cuboids(frames: np.ndarray, cell: int = 8, pool: int = 2) -> np.ndarray:
    g = frames.astype(np.float32).mean(-1)
    g = g - g.mean(1, keepdims=True)
    b, f, h, w = g.shape
    rows, cols = h // cell, w // cell
    c = g.reshape(b, f, rows, cell // pool, pool, cols, cell // pool, pool).mean((4, 7))
    c = c.transpose(0, 2, 4, 1, 3, 5).reshape(b, rows * cols, -1)
    rr, cc = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    where = np.stack([rr.ravel(), cc.ravel()], 1).astype(np.float32) * 4.0
    return np.concatenate([c, np.broadcast_to(where, (b, rows * cols, 2))], -1).astype(np.float32)


def _log_mel(audio: np.ndarray, n_mels: int = 64, sr: int = 16000, n_fft: int = 512, win: int = 400,
             hop: int = 160) -> np.ndarray:
    """``[B, S]`` -> ``[B, n_mels, T]``, the bundle front end's log-mel (numpy; its filterbank from train.models)."""
    from train.models import mel_matrix

    fb = mel_matrix(sr, n_fft, n_mels, 50.0, 8000.0)
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)).astype(np.float32)
    idx = np.arange(0, audio.shape[1] - win + 1, hop)[:, None] + np.arange(win)[None]
    power = np.abs(np.fft.rfft(audio[:, idx] * window, n=n_fft, axis=-1)) ** 2
    return np.log(np.einsum("mk,btk->bmt", fb, power.astype(np.float32)) + 1e-6)


def mfcc(audio: np.ndarray, n_cep: int = 16, span: int = 3, stride: int = 2) -> np.ndarray:
    m = _log_mel(audio)
    t = (m.shape[2] // 2) * 2
    m = m[:, :, :t].reshape(len(m), m.shape[1], t // 2, 2).mean(3)  # 20 ms frames
    bands = m.shape[1]
    k = np.arange(1, n_cep + 1)[:, None]  # orthonormal DCT-II rows 1..n_cep (row 0, the level, left out)
    basis = np.sqrt(2.0 / bands) * np.cos(np.pi * (np.arange(bands)[None, :] + 0.5) * k / bands)
    c = np.einsum("kb,nbt->nkt", basis.astype(np.float32), m)
    return np.stack([c[:, :, s:s + span].reshape(len(c), -1) for s in range(0, c.shape[2] - span + 1, stride)], 1)


PITCH_EDGES = np.geomspace(80, 1600, 17)


def pitch(audio: np.ndarray, frame: int = 400, hop: int = 160, sr: int = 16000, voiced: float = 0.6,
          near_best: float = 0.9, lo: int = 10, hi: int = 200) -> np.ndarray:
    window = np.hanning(frame + 1)[:-1].astype(np.float32)
    window_ac = np.correlate(window, window, "full")[frame - 1: frame + hi]
    idx = np.arange(0, audio.shape[1] - frame + 1, hop)[:, None] + np.arange(frame)[None]
    spec = np.fft.rfft(audio[:, idx] * window, n=1024, axis=-1)
    ac = np.fft.irfft(np.abs(spec) ** 2, axis=-1)[..., :hi + 1]
    r = (ac / np.maximum(ac[..., :1], 1e-12) / (window_ac / window_ac[0]))[..., lo:hi + 1]
    peak = (r[..., 1:-1] >= r[..., :-2]) & (r[..., 1:-1] >= r[..., 2:])
    rp = np.where(peak, r[..., 1:-1], -1.0)
    best = rp.max(-1, keepdims=True)
    f0 = sr / (lo + 1 + (rp >= near_best * best).argmax(-1))  # the smallest lag near the best: no sub-harmonics
    on = best[..., 0] > voiced
    return np.stack([((f0 >= PITCH_EDGES[k]) & (f0 < PITCH_EDGES[k + 1]) & on).mean(-1) for k in range(16)],
                    -1).astype(np.float32)


def _power_frames(audio: np.ndarray, n_fft: int, hop: int, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """``[B, S]`` -> the power spectra of Hann-windowed frames ``[B, T, n_fft // 2 + 1]`` and their frequencies."""
    window = np.hanning(n_fft + 1)[:-1].astype(np.float32)
    idx = np.arange(0, audio.shape[1] - n_fft + 1, hop)[:, None] + np.arange(n_fft)[None]
    return np.abs(np.fft.rfft(audio[:, idx] * window, axis=-1)) ** 2, np.fft.rfftfreq(n_fft, 1 / sr)


ROUGH_EDGES = np.geomspace(250, 7000, 13)
MOD_EDGES = (4.0, 12.0, 28.0, 80.0, 125.0)


def roughness(audio: np.ndarray, n_fft: int = 256, hop: int = 64, span: int = 64, stride: int = 32,
              sr: int = 16000) -> np.ndarray:
    """A bag of 256 ms patches: per frequency band, how deep its envelope fluctuates at 4-12, 12-28, 28-80 and
    80-125 Hz (log modulation depth). Fast fluctuations (30-150 Hz) are what makes a sound rough, and rough
    is what sets screams apart from other calls (Arnal et al. 2015)."""
    power, freqs = _power_frames(audio, n_fft, hop, sr)  # [B, T, K], [K]
    env = np.stack([np.sqrt(power[..., (freqs >= lo) & (freqs < hi)].sum(-1))
                    for lo, hi in itertools.pairwise(ROUGH_EDGES)], 1)  # [B, bands, T]
    mod_freqs = np.fft.rfftfreq(span, hop / sr)
    seg_window = np.hanning(span + 1)[:-1].astype(np.float32)
    out = []
    for s0 in range(0, env.shape[2] - span + 1, stride):
        e = env[:, :, s0:s0 + span]
        mean = e.mean(-1, keepdims=True)
        m = np.abs(np.fft.rfft((e - mean) * seg_window, axis=-1)) ** 2 / np.maximum(mean, 1e-8) ** 2 / span
        depth = np.stack([m[..., (mod_freqs >= lo) & (mod_freqs < hi)].mean(-1)
                          for lo, hi in itertools.pairwise(MOD_EDGES)], -1)
        out.append(np.log(depth + 1e-4).reshape(len(audio), -1))
    return np.stack(out, 1).astype(np.float32)


FOOTSTEP_LAGS = (0.04, 0.08, 0.16, 0.25, 0.42, 0.6)  # s: jackhammer, fast, ..., a runner's stride, walking


def footsteps(audio: np.ndarray, n_fft: int = 128, hop: int = 80, rise_db: float = 10.0, sr: int = 16000) -> np.ndarray:
    """Per window, the rhythm of sharp thuds at 125-2500 Hz: how many rise ``rise_db`` above the median level of
    the 100 ms before within 10 ms (a footfall's attack; a voice's syllables rise over tens of ms), and the
    autocorrelation of that onset train in lag bands (a runner's strides recur every 0.28-0.38 s, a jackhammer's
    every 45-80 ms). Running feet are quiet and short; what sets them apart from a street's other impulses would
    be how regularly they recur."""
    power, freqs = _power_frames(audio, n_fft, hop, sr)  # [B, T, K], [K]
    e = 10 * np.log10(power[..., (freqs >= 125) & (freqs < 2500)].sum(-1) + 1e-10)  # [B, T] dB
    # rise over the level of the 100 ms before (its median): a noise floor's flicker does not count
    before = np.median(np.lib.stride_tricks.sliding_window_view(e, 20, axis=1), -1)  # [B, T - 19]
    rise = np.zeros_like(e)
    rise[:, 21:] = e[:, 21:] - before[:, :-2]
    peak = np.zeros_like(e, dtype=bool)
    peak[:, 1:-1] = (rise[:, 1:-1] >= rise[:, :-2]) & (rise[:, 1:-1] > rise[:, 2:]) & (rise[:, 1:-1] > rise_db)
    onset = np.where(peak, rise, 0.0)
    count = np.log1p(peak.sum(-1))
    o = onset - onset.mean(-1, keepdims=True)
    n = o.shape[1]
    spec = np.fft.rfft(o, n=2 * n, axis=-1)
    ac = np.fft.irfft(np.abs(spec) ** 2, axis=-1)[:, :n]
    ac = ac / np.maximum(ac[:, :1], 1e-8) * n / np.maximum(n - np.arange(n), 1)  # unbiased, lag 0 = 1
    lags = np.arange(n) * hop / sr
    bands = [ac[:, (lags >= lo) & (lags < hi)].max(-1) for lo, hi in itertools.pairwise(FOOTSTEP_LAGS)]
    return np.stack([count, *bands], -1).astype(np.float32)


CANDIDATES: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]] = {
    "roughness": ("audio", roughness),
    "block_speed": ("frames", block_speed), "centroid_speed": ("frames", centroid_speed),
    "cuboids": ("frames", cuboids), "pitch": ("audio", pitch), "mfcc": ("audio", mfcc),
    "footsteps": ("audio", footsteps),
}


# ---------------------------------------------------------------------------------------------- the study

class Site:
    """A site_eval work directory: its footage, windows decoded once, features cached per file."""

    def __init__(self, work: Path, cache: Path, models: str | None) -> None:
        self.normal = sorted(work.glob("normal-*.mp4"))
        self.test = sorted(work.glob("test-*.mp4"))
        if not self.normal or not self.test:
            raise SystemExit(f"anomaly_study: {work} has no normal-*.mp4 / test-*.mp4 (run edgeav.site_eval "
                             f"--work {work} first)")
        self.cache = cache
        cache.mkdir(parents=True, exist_ok=True)
        self.models = models
        self._bundle: Any = None
        self._windows: tuple[Path, Any] | None = None

    def bundle(self) -> Any:
        if self._bundle is None:
            from edgeav.bundle import load_bundle

            self._bundle = load_bundle(self.models, threads=1, with_heads=False)
        return self._bundle

    def windows(self, path: Path) -> Any:
        from edgeav import media

        if self._windows is None or self._windows[0] != path:
            self._windows = (path, media.footage_windows(path, self.bundle().window_spec))
        return self._windows[1]

    def feature(self, name: str, path: Path) -> np.ndarray:
        f = self.cache / f"{path.stem}--{name}.npy"
        if f.exists():
            return np.load(f)
        w = self.windows(path)
        if name in CANDIDATES:
            kind, fn = CANDIDATES[name]
            x = w.frames if kind == "frames" else w.audio
            value = np.concatenate([fn(x[i:i + 200]) for i in range(0, len(x), 200)])
        else:
            value = self.bundle().features(w.audio, w.frames, (name,))[name]
        np.save(f, value.astype(np.float32))
        return value

    def variants(self, name: str, path: Path, semitones: int) -> np.ndarray:
        """``[A, B, ...]``: the bundle feature ``name`` of the file's windows pitch-shifted by 1 to ``semitones``
        semitones down and up, as `edgeav calibrate --pitch-semitones` adds them to the memory (bags thinned
        alike)."""
        from edgeav import media
        from edgeav.calibrate import BAG_COPY_STRIDE, pitch_factors

        def cached(n: str) -> Path:
            return self.cache / f"{path.stem}--{n}--pitch{semitones}-bag{BAG_COPY_STRIDE}.npy"

        if not cached(name).exists():  # every audio feature at once: one model pass per factor
            track = media.decode_audio(path, self.bundle().window_spec.sample_rate, media.probe(path).audio_path)
            names = [n for n in BUNDLE_FEATURES if n.startswith("audio")]
            for n, v in self.bundle().pitch_variants(track, self.t_starts(path), pitch_factors(semitones),
                                                     names, bag_stride=BAG_COPY_STRIDE).items():
                np.save(cached(n), v.astype(np.float32))
        return np.load(cached(name))

    def t_starts(self, path: Path) -> np.ndarray:
        f = self.cache / f"{path.stem}--t.npy"
        if not f.exists():
            np.save(f, self.windows(path).t_starts)
        return np.load(f)


def run_row(site: Site, names: tuple[str, ...], rate: float, semitones: int = 0,
            bag_pools: tuple[str, ...] | None = None, bound_false_alarms: int | None = None) -> dict[str, Any]:
    """One row: the product's calibrate on the normal files, its decider over the test files, scored. With
    ``bound_false_alarms``, also :func:`upper_bound` at that many false alarms over the test hours."""
    from edgeav.bundle import SIGNAL_FEATURES
    from edgeav.calibrate import BAG_POOLS, calibrate
    from edgeav.labels import load_labels, sidecar_path
    from edgeav.scoring import alerts_at, combine, score_replay

    for path in (*site.normal, *site.test):  # each file decoded once for all the row's features
        for n in names:
            site.feature(n, path)
        site.t_starts(path)
    normal = {n: np.concatenate([site.feature(n, p) for p in site.normal]) for n in names}
    shifted = [n for n in names if n.startswith("audio") and n in BUNDLE_FEATURES
               and n not in SIGNAL_FEATURES] if semitones else []
    variants = {n: np.concatenate([site.variants(n, p, semitones) for p in site.normal], axis=1) for n in shifted}
    mem, metrics = calibrate(normal, names, 0.5, rate, variants=variants, bag_pools=bag_pools or BAG_POOLS)
    scores, tests = [], []
    for path in site.test:
        feats = {n: site.feature(n, path) for n in names}
        s = mem.score(feats)
        labels = load_labels(sidecar_path(path))
        scores.append(score_replay(labels, [], alerts_at(_windows(site.t_starts(path), s), mem.threshold)))
        if bound_false_alarms is not None:  # each part's scores, for the sweep: only when asked for
            tests.append((labels, site.t_starts(path), np.stack([p.scores(feats[p.feature], mem.k)
                                                                  for p in mem.parts])))
    out = {**combine(scores), "extremal_index": metrics["extremal_index"]}
    if bound_false_alarms is not None:
        out["bound"] = upper_bound(tests, mem.threshold, [p.kind == "ceiling" for p in mem.parts], bound_false_alarms)
    return out


def _windows(t_starts: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
    return [{"t_start": float(t), "t_end": float(t) + 1.0, "anomaly_score": None if np.isnan(v) else float(v)}
            for t, v in zip(t_starts, scores, strict=True)]


BOUND_THRESHOLDS = np.linspace(0.7, 1.3, 13)  # times the calibrated threshold
BOUND_CEILING_GAINS = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0)  # times the calibrated ceiling parts' scale


def upper_bound(tests: list[tuple[Any, np.ndarray, np.ndarray]], threshold: float, ceiling: list[bool],
                false_alarms: int) -> dict[str, Any]:
    """The most anomalies caught with at most ``false_alarms`` over the test hours when the threshold and the
    ceiling parts' scale are chosen on the test itself (a sweep over :data:`BOUND_THRESHOLDS` and
    :data:`BOUND_CEILING_GAINS`): no calibration rule can beat it with these parts, so it tells whether what is
    missed is the features' or the calibration's. ``tests``: per test file its labels, window starts and per-part
    scores ``[parts, windows]``; the decider is the product's."""
    from edgeav.scoring import alerts_at, combine, score_replay

    best: dict[str, Any] = {}
    gains = BOUND_CEILING_GAINS if any(ceiling) else (1.0,)
    for gain in gains:
        scale = np.where(ceiling, gain, 1.0)[:, None]
        for f in BOUND_THRESHOLDS:
            r = combine([score_replay(labels, [], alerts_at(_windows(t, np.fmax.reduce(ps * scale)), threshold * f))
                         for labels, t, ps in tests])
            if r["false_alarms"] <= false_alarms and r["anomalies_caught"] > best.get("anomalies_caught", -1):
                best = {**r, "threshold_factor": round(float(f), 3), "ceiling_gain": gain}
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.anomaly_study", description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True, help="a directory edgeav.site_eval filled")
    ap.add_argument("--models", default=None, help="bundle the features come from (default: the shipped one)")
    ap.add_argument("--cache", default=None, help="feature cache (default WORK/study-cache)")
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--rate", type=float, default=1.0, help="false alarms per hour to calibrate for")
    ap.add_argument("--pitch-semitones", type=int, default=None,
                    help="the bundle's audio features of the normal footage pitch-shifted into the memory, as "
                         "edgeav calibrate does (default: calibrate's)")
    ap.add_argument("--bound", type=int, default=None, metavar="FALSE_ALARMS",
                    help="also print each row's upper bound: the most caught with at most this many false alarms "
                         "over the test hours, threshold and ceiling scale chosen on the test itself")
    ap.add_argument("--normal-files", type=int, default=None,
                    help="calibrate on the first N normal files only (by number: normal-SITE-1 ...)")
    args = ap.parse_args(argv)
    work = Path(args.work)
    from edgeav.calibrate import PITCH_SEMITONES

    semitones = PITCH_SEMITONES if args.pitch_semitones is None else args.pitch_semitones
    site = Site(work, Path(args.cache) if args.cache else work / "study-cache", args.models)
    if args.normal_files is not None:  # site_eval's --calibrate-minutes: its first files, in number order
        site.normal = sorted(site.normal, key=lambda p: int(p.stem.rsplit("-", 1)[1]))[:args.normal_files]
    print(f"anomaly_study: {len(site.normal)} calibration files, {len(site.test)} test files in {work}; "
          f"{args.rate:g} false alarms/hour; normal audio also pitch-shifted by 1 to {semitones} semitones",
          flush=True)
    for row in args.rows:
        t0 = time.time()
        r = run_row(site, ROWS[row], args.rate, semitones, ROW_BAG_POOLS.get(row), args.bound)
        kinds = ", ".join(f"{k} {c}/{n}" for k, (c, n) in r["caught_by_kind"].items())
        print(f"{row}: caught {r['anomalies_caught']}/{r['anomalies']}, false alarms {r['false_alarms']} in "
              f"{r['hours']:.1f} h ({kinds}; extremal index {r['extremal_index']}; {time.time() - t0:.0f} s)",
              flush=True)
        if "bound" in r:
            b = r["bound"]
            kinds = ", ".join(f"{k} {c}/{n}" for k, (c, n) in b["caught_by_kind"].items())
            print(f"{row}: upper bound at <= {args.bound} false alarms: caught {b['anomalies_caught']}, false alarms "
                  f"{b['false_alarms']} (threshold x{b['threshold_factor']}, ceiling parts x{b['ceiling_gain']}; "
                  f"{kinds})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
