"""How fast things move across the picture, row band by row band: the ``video_speed`` window feature.

Why a measured speed and not a learnt feature: at the models' frame size (112x64 from a 720p camera) a person is
4-10 px tall, and a runner looks like a walker; what sets them apart is how fast they cross the view, and a
person crossing a sidewalk at a car's speed is unusual where the same speed on the road is not. The anomaly
memory learns each band's normal speeds from the site's own footage (:class:`edgeav.calibrate.ScorerPart`,
kind "ceiling"): no band, road or sidewalk, is named anywhere.

Method, per window of ``F`` frames: the differences of consecutive frames ``d_i = f_{i+1} - f_i`` cancel the
static background and keep what moved; where something moves at ``v`` px per frame gap, ``d_{i+1}`` is ``d_i``
shifted by ``v`` (both hold the object at its middle position, with opposite signs at its outer ones). The
horizontal cross-correlation of ``d_i`` and ``d_{i+1}``, summed over a band's rows and normalised by their
energies, therefore peaks at ``v``; the window's pairs are averaged before the peak is taken (a spurious peak
of one pair rarely recurs in the next), refined to a fraction of a pixel by a parabola, and set to 0 where it
is weak (sensor noise, a flicker). The correlations are computed through OpenCV's row DFT: about 0.1 ms a
window on a 2-core box, against the milliseconds its frames took to decode.

A runner is fast for seconds; a spurious speed (two passers-by whose differences happen to line up, a light
bar's lamps blinking in turn) lasts a window. :class:`SpeedHold` keeps each band's smallest speed over the
last :data:`HOLD_WINDOWS` consecutive windows: at site 5150 (README, "Measured speed"), scored alone against
their ceiling at 4 false alarms in 4 h, the held speeds caught 16 of 24 runners, the unheld ones 4.
"""

from __future__ import annotations

import numpy as np

SPEED_FEATURE = "video_speed"  # the window feature's name (edgeav.bundle.SIGNAL_FEATURES)
VELOCITY_FEATURE = "video_velocity"  # the same with the direction kept: band_velocities
HELD_FEATURES = (SPEED_FEATURE, VELOCITY_FEATURE)  # held over consecutive windows of a stream (SpeedHold)
BAND_ROWS = 4  # rows of the model's frame per band: 16 bands at 64 rows, a few per person
MAX_SHIFT = 20  # px per frame gap, at the model's frame width: a car crossing in 2 s at 4 frames a second
MIN_PEAK = 0.2  # normalised correlation below which a band holds nothing moving coherently (speed 0)
HOLD_WINDOWS = 3  # see SpeedHold: 2 s of frames at the bundles' 1 s windows, 0.5 s hop
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def speed_bands(frame_height: int) -> int:
    """How many row bands (the feature's width) a frame of ``frame_height`` rows gives."""
    return max(1, frame_height // BAND_ROWS)


def band_speeds(frames: np.ndarray) -> np.ndarray:
    """uint8 RGB windows ``[B, F, H, W, 3]`` -> ``[B, H // BAND_ROWS]`` float32: per row band, the speed (px
    per frame gap, either direction) of what moves there coherently, 0 where nothing does. Windows of fewer
    than 3 frames have no pair of differences: all 0."""
    return np.abs(band_shifts(frames))


def band_velocities(frames: np.ndarray) -> np.ndarray:
    """The ``video_velocity`` feature: :func:`band_speeds` with the direction kept, ``[B, 2 * (H // BAND_ROWS)]``
    float32: per row band the speed of what moves there rightwards (0 if it moves leftwards or nothing does),
    then per band leftwards. Traffic keeps to its side of the road: a lane's normal ceiling is high in its one
    direction and a walker's the other way, so a runner (or a wrong-way driver) against the lane's traffic stands
    out where the unsigned speed's ceiling, set by that lane's cars, hides it."""
    s = band_shifts(frames)
    return np.concatenate([np.maximum(s, 0.0), np.maximum(-s, 0.0)], axis=1)


def band_shifts(frames: np.ndarray) -> np.ndarray:
    """Per row band the signed shift (px per frame gap, positive rightwards) of what moves there coherently, 0
    where nothing does: ``[B, H // BAND_ROWS]`` float32 (see the module doc)."""
    import cv2  # here, not at the top: replay imports this module before its first frame, cv2 costs ~20 ms

    b, f, h, w = frames.shape[:4]
    nb = speed_bands(h)
    if b == 0 or f < 3:
        return np.zeros((b, nb), np.float32)
    grey = frames.astype(np.float32) @ _LUMA  # [B, F, H, W]
    d = np.diff(grey, axis=1)[:, :, :nb * BAND_ROWS]  # [B, P, rows, W]
    p = f - 1
    n = cv2.getOptimalDFTSize(w + MAX_SHIFT + 1)  # zero-padded: the correlation does not wrap round
    rows = np.zeros((b * p * nb * BAND_ROWS, n), np.float32)
    rows[:, :w] = d.reshape(-1, w)
    spec = cv2.dft(rows, flags=cv2.DFT_ROWS).reshape(b, p, nb * BAND_ROWS, n)  # packed (CCS) spectra
    later = np.ascontiguousarray(spec[:, 1:]).reshape(-1, n)
    earlier = np.ascontiguousarray(spec[:, :-1]).reshape(-1, n)
    # IDFT(D_{i+1} . conj(D_i))[s] = sum_x d_i[x] d_{i+1}[x + s]: the correlation at shift s (s < 0 at the end)
    corr = cv2.idft(cv2.mulSpectrums(later, earlier, cv2.DFT_ROWS, conjB=True),
                    flags=cv2.DFT_ROWS | cv2.DFT_REAL_OUTPUT | cv2.DFT_SCALE)
    corr = corr.reshape(b, p - 1, nb, BAND_ROWS, n).sum(axis=3)  # [B, P-1, nb, n]
    energy = np.einsum("bpkrw,bpkrw->bpk", *(d.reshape(b, p, nb, BAND_ROWS, w),) * 2)  # [B, P, nb]
    norm = np.sqrt(energy[:, :-1] * energy[:, 1:]) + 1e-3
    # shifts -MAX_SHIFT-1 .. MAX_SHIFT+1 (one beyond each end for the parabola), averaged over the pairs
    c = np.concatenate([corr[..., n - MAX_SHIFT - 1:], corr[..., :MAX_SHIFT + 2]], axis=-1) / norm[..., None]
    c = c.mean(axis=1)  # [B, nb, 2 * MAX_SHIFT + 3]
    k = c[..., 1:-1].argmax(axis=-1)[..., None] + 1
    top, left, right = (np.take_along_axis(c, k + o, axis=-1)[..., 0] for o in (0, -1, 1))
    curv = left - 2.0 * top + right
    frac = np.where(curv < 0, 0.5 * (left - right) / np.where(curv < 0, curv, -1.0), 0.0)
    shift = k[..., 0] - (MAX_SHIFT + 1) + np.clip(frac, -0.5, 0.5)
    return np.where(top >= MIN_PEAK, shift, 0.0).astype(np.float32)


class SpeedHold:
    """Each band's smallest speed over the last :data:`HOLD_WINDOWS` consecutive windows of one stream.

    ``apply`` takes windows in time order, in as many calls as come (a pipeline's batches, a file's windows at
    once: the same result). A window that does not follow the previous one on the hop grid, or has no video
    (a NaN row, kept NaN), starts the history afresh: speeds are held only across frames that were seen.
    """

    def __init__(self, hop_s: float, windows: int = HOLD_WINDOWS) -> None:
        self.hop_s = hop_s
        self.windows = windows
        self._recent: list[np.ndarray] = []
        self._last_t: float | None = None

    def apply(self, t_starts: np.ndarray, speeds: np.ndarray) -> np.ndarray:
        out = np.empty_like(speeds, dtype=np.float32)
        for i, (t, v) in enumerate(zip(np.asarray(t_starts, dtype=np.float64), speeds, strict=True)):
            follows = self._last_t is not None and abs(t - self._last_t - self.hop_s) < 0.25 * self.hop_s
            seen = bool(np.isfinite(v).all())
            if not follows or not seen:
                self._recent = []
            self._last_t = float(t)
            if not seen:
                out[i] = np.nan
                continue
            self._recent = [*self._recent[-(self.windows - 1):], v]
            out[i] = np.min(self._recent, axis=0)
        return out
