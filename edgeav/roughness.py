"""How rough a window sounds: the ``audio_roughness`` window feature.

Why a measured feature and not a learnt one: a scream's pitch and timbre sit among a street's sirens, horns and
voices (tonal, sweeping, 400-1200 Hz), and the audio model's log-mel frames (10 ms apart) cannot see what sets it
apart: its loudness fluctuates 20 to 200 times a second (heard as roughness; screams and alarms occupy that
range, speech and music mostly do not: Arnal et al., Current Biology 2015), and it does so together in every
frequency band, because one voice source drives them all. The anomaly memory learns which roughness is normal at
the site (a kNN part of :class:`edgeav.calibrate.ScorerPart`, like the learnt features): horns beat too, engines
rumble at their firing rate, and what is usual differs per site.

Method, per window: the spectrum is cut into :data:`BANDS_HZ`; each band's envelope (the magnitude of its
analytic signal, taken at :data:`ENVELOPE_RATE` samples a second from the band's own bins) is normalised by its
mean (floored: :data:`LEVEL_FLOOR`, :data:`MODULATION_FLOOR`), and the log power spectrum of its fluctuation is
averaged over the bands (a geometric mean: a modulation shared by every band stands out, one band's noise does
not). The feature is, per range of :data:`RANGES_HZ`, how far that co-modulation spectrum's highest point
(smoothed over 3 bins) rises above its median over 10-250 Hz: a natural-log ratio, near 0 for a steady tone and
small for noise, large where the whole sound beats at one rate. Through OpenCV's row DFTs: 0.5-0.9 ms a window
of 1 s at 16 kHz on a 2-core box.

How it was chosen (README, "Roughness"; exploratory scripts over site 5150's windows, beside the other parts at
the 1/h setting): screams caught 8 -> 15 of 19 with the 3 ranges kept; 13 with 5 ranges over 20-200 Hz, 12 with 7
over 10-250 Hz, 8 with 10, 5 with the modulation power per band and range (no co-modulation). Then checked on
site 7373, not used for the choice: screams 5 -> 12 of 16. Synth footage only, whose screams beat more steadily
than real ones; not measured on real recordings (an irregular beat scores higher than a steady one: tested).
"""

from __future__ import annotations

import numpy as np

ROUGHNESS_FEATURE = "audio_roughness"  # the window feature's name (edgeav.bundle.SIGNAL_FEATURES)
# Acoustic bands (Hz): about a third of an octave wide and more, so that each holds a voice's harmonic or two
# (a harmonic pair beats at the voice's pitch, above these ranges) and enough bins for a steady envelope.
BANDS_HZ = ((250, 500), (500, 800), (800, 1200), (1200, 1800), (1800, 2600), (2600, 3600), (3600, 5000),
            (5000, 7000))
RANGES_HZ = ((20, 50), (50, 100), (100, 200))  # modulation rates (Hz) whose prominence the feature gives
BASE_HZ = (10, 250)  # the co-modulation spectrum's median over these rates is its floor
ENVELOPE_RATE = 2048  # envelope samples per second: above the widest band (no aliasing) and the ranges
LEVEL_FLOOR = 1e-3  # a band's level counts as at least this share of the window's loudest band's (-60 dB)
MODULATION_FLOOR = 1e-6  # per bin, as a share of the level's power: a depth of 0.002, far below hearing


def roughness_dims() -> int:
    """The feature's width."""
    return len(RANGES_HZ)


def roughness(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mono float windows ``[B, S]`` at ``sample_rate`` -> ``[B, len(RANGES_HZ)]`` float32: per modulation range,
    the co-modulation spectrum's peak over its median (natural log; see the module doc). Bands above the
    Nyquist frequency are left out; a window too short for the lowest range gives 0."""
    import cv2  # here, not at the top: see edgeav.motion.band_shifts

    audio = np.ascontiguousarray(audio, dtype=np.float32)  # OpenCV would copy a strided view anyway
    b, s = audio.shape
    seconds = s / sample_rate
    bands = [(round(lo * seconds), round(min(hi, sample_rate / 2) * seconds)) for lo, hi in BANDS_HZ
             if lo < sample_rate / 2]
    n = int(ENVELOPE_RATE * seconds)
    base = (round(BASE_HZ[0] * seconds), round(BASE_HZ[1] * seconds))
    # smooth[:, i] below is centred on bin i + 1; a range's bins must exist and lie inside the base's
    ranges = [(max(round(lo * seconds), 1) - 1, round(hi * seconds) - 1) for lo, hi in RANGES_HZ]
    if b == 0 or not bands or base[1] - base[0] < 3 or n // 2 < base[1] or any(hi <= lo for lo, hi in ranges):
        return np.zeros((b, len(RANGES_HZ)), np.float32)
    # OpenCV's row DFTs: several times faster here than numpy's on these sizes. Unscaled: the normalisation by
    # each envelope's level below takes the scale out.
    spec = cv2.dft(audio, flags=cv2.DFT_ROWS | cv2.DFT_COMPLEX_OUTPUT)  # [B, S, 2]: real, imaginary
    z = np.zeros((b, len(bands), n, 2), np.float32)
    for j, (lo, hi) in enumerate(bands):
        w = min(hi - lo, n)
        z[:, j, :w] = spec[:, lo:lo + w]  # the band moved to 0 Hz: its envelope is the same
    band = cv2.idft(z.reshape(b * len(bands), n, 2), flags=cv2.DFT_ROWS)
    env = cv2.magnitude(band[..., 0], band[..., 1]).reshape(b, len(bands), n)
    level = env.mean(axis=2, keepdims=True)
    # A band far below the window's loudest (empty, or rounding noise) counts as steady, not as noise scaled up.
    level = np.maximum(level, LEVEL_FLOOR * level.max(axis=1, keepdims=True) + 1e-12)
    f = cv2.dft((env - level).reshape(b * len(bands), n), flags=cv2.DFT_ROWS | cv2.DFT_COMPLEX_OUTPUT)
    f = f[:, :base[1] + 2].reshape(b, len(bands), -1, 2)
    # the modulation's power per bin as a share of the level's (a depth of a at one rate gives a^2 / 4), floored
    fluct = (f[..., 0] ** 2 + f[..., 1] ** 2) / (level * n) ** 2 + MODULATION_FLOOR
    comod = np.log(fluct).mean(axis=1)  # [B, bins]: the geometric mean over the bands
    floor = np.median(comod[:, base[0]:base[1]], axis=1)
    smooth = (comod[:, :-2] + comod[:, 1:-1] + comod[:, 2:]) / 3
    return np.stack([smooth[:, lo:hi].max(axis=1) - floor for lo, hi in ranges], axis=1).astype(np.float32)
