"""The measured roughness (edgeav.roughness) and the anomaly memory's kNN part that scores it."""

from __future__ import annotations

import numpy as np

from edgeav.roughness import RANGES_HZ, roughness

SR = 16_000
T = np.arange(SR) / SR


def voice(f0: float, rate: float = 0.0, depth: float = 0.3, noise: float = 0.02, seed: int = 0) -> np.ndarray:
    """1 s of a harmonic voice at ``f0`` whose loudness beats ``rate`` times a second (0: steady), in a little
    background noise, as the footage's audio is."""
    x = sum(np.sin(2 * np.pi * f0 * k * T + k) / k for k in range(1, 9))
    if rate:
        x = x * (1 + depth * np.sin(2 * np.pi * rate * T))
    return (x + noise * np.random.default_rng(seed).standard_normal(SR)).astype(np.float32)


def horn(f1: float, seed: int = 0) -> np.ndarray:
    """Two tones a major third apart, as a car horn: they beat at a quarter of the lower pitch."""
    return voice(f1, seed=seed) + voice(1.26 * f1, seed=seed + 1)


def test_the_range_that_beats_stands_out_and_steady_sounds_and_noise_do_not():
    x = np.stack([voice(600, 35), voice(600, 70), voice(600, 150), voice(600), voice(600, noise=1.0)])
    r = roughness(x, SR)
    assert r.shape == (5, len(RANGES_HZ)) == (5, 3) and r.dtype == np.float32
    for i in range(3):  # a rate in the range's own bin: well above the others
        assert r[i, i] > 1.5 and np.delete(r[i], i).max() < r[i, i] - 0.8, r[i]
    assert r[3].max() < 0.6 and r[4].max() < 1.2, r[3:]  # a steady voice, white noise


def test_an_irregular_beat_as_a_real_scream_has_stands_out_as_well():
    """A real scream's roughness is chaotic rather than one steady rate (the synth's is steady): a beat whose rate
    wanders, or a loudness shaken by 20-80 Hz noise, still rises well above a steady voice's."""
    rng = np.random.default_rng(1)
    steady = voice(600)
    wander = 45 * (1 + 0.5 * np.cumsum(rng.standard_normal(SR)) / np.sqrt(SR) * 3)  # a random walk around 45 Hz
    hz = np.arange(SR // 2 + 1)  # 1 Hz bins of a 1 s window
    noise = rng.standard_normal(len(hz)) + 1j * rng.standard_normal(len(hz))
    shaken = np.fft.irfft(np.where((hz > 20) & (hz < 80), noise, 0), n=SR)
    rough = [steady * (1 + 0.3 * np.sin(2 * np.pi * np.cumsum(wander) / SR)),
             steady * (1 + 0.3 * shaken / shaken.std())]
    r = roughness(np.stack([*rough, steady]).astype(np.float32), SR)
    assert (r[:2, :2].max(axis=1) > 2.0).all() and r[2].max() < 0.6, r


def test_any_batch_any_sample_rate_and_degenerate_windows():
    x = np.stack([voice(500, 40, seed=s) for s in range(4)])
    whole = roughness(x, SR)
    np.testing.assert_allclose(whole, np.concatenate([roughness(x[i:i + 1], SR) for i in range(4)]), atol=1e-5)
    at8k = roughness(x[:, ::2], 8000)  # bands above 4 kHz left out; the beat still found (a strided view too)
    assert (at8k[:, 0] > 1.5).all() and (at8k[:, 0] > at8k[:, 1:].max(axis=1)).all(), at8k
    silent = roughness(np.zeros((2, SR), np.float32), SR)
    np.testing.assert_allclose(silent, 0.0, atol=1e-5)  # finite: a dead microphone is steady, not NaN
    assert (roughness(x[:, :400], SR) == 0).all()  # 25 ms: too short for a 20 Hz beat
    assert roughness(np.zeros((0, SR), np.float32), SR).shape == (0, 3)


def test_a_scream_like_roughness_is_unusual_where_horns_and_voices_are_normal():
    """The memory learns the site's roughness: horns (which beat too, faster), steady voices and noise are
    normal; a voice beating 45 times a second is flagged, a horn at a pitch between the heard ones is not."""
    from edgeav.calibrate import calibrate

    rng = np.random.default_rng(3)
    normal = []
    for i in range(240):
        kind = i % 3
        if kind == 0:
            normal.append(horn(rng.uniform(330, 480), seed=i))
        elif kind == 1:
            normal.append(voice(rng.uniform(150, 700), seed=i))
        else:
            normal.append(voice(300, noise=rng.uniform(0.3, 1.5), seed=i))
    feats = roughness(np.stack(normal), SR)
    mem, _ = calibrate({"audio_roughness": feats}, ("audio_roughness",), 0.5, 1.0, memory_size=200)
    probe = roughness(np.stack([voice(640, 45, seed=901), voice(520, 55, seed=902), horn(405, seed=903),
                                voice(420, seed=904)]), SR)
    s = mem.score({"audio_roughness": probe})
    assert (s[:2] > mem.threshold).all() and (s[2:] < mem.threshold).all(), (s, mem.threshold)
