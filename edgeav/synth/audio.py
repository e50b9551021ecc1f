"""The soundtrack: ambient street sound plus one synthesised sound per audible event.

Every event sound is a buffer exactly as long as the event's audible span, added at
its first sample (``round(start * sample_rate)``), so the label's interval is the
signal's interval to the sample.  Ambient sound (traffic hum, wind with gusts,
distant chatter) is rendered in fixed chunks from its own random streams, so adding
or removing an event never changes it: a silent event adds exactly nothing.

Synthesis is vectorised numpy: harmonic sums on a phase track, noise shaped in the
frequency domain, envelopes; no per-sample Python loops.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np

from edgeav.synth.kinds import Profile
from edgeav.synth.timeline import STREAM_AMBIENT_AUDIO, Event, rng_for

CHUNK_S = 10.0
_OVERLAP_S = 0.05
VOWELS = ((730, 1090), (270, 2290), (300, 870), (530, 1840), (660, 1720), (490, 1350), (440, 1020), (400, 1900))


# ----------------------------------------------------------------------------- building blocks

def fast_len(n: int) -> int:
    """The smallest 2^a * 3^b * 5^c >= n: FFT sizes that pocketfft handles fast."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


def shaped_noise(rng: np.random.Generator, n: int, sr: int, resp: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """White noise shaped by a magnitude response ``resp(freq_hz)``, scaled to unit RMS."""
    if n <= 0:
        return np.zeros(0, np.float32)
    m = fast_len(n)  # shaped noise is stationary: render a fast FFT length and keep the first n samples
    spec = np.fft.rfft(rng.standard_normal(m))
    spec *= resp(np.fft.rfftfreq(m, 1.0 / sr))
    out = np.fft.irfft(spec, m)[:n]
    rms = float(np.sqrt(np.mean(out * out))) or 1.0
    return (out / rms).astype(np.float32)


def band(lo: float, hi: float, tilt: float = 0.0) -> Callable[[np.ndarray], np.ndarray]:
    """A soft band-pass (second-order-like skirts) with an optional 1/f^tilt slope."""
    def resp(f: np.ndarray) -> np.ndarray:
        g = 1.0 / np.sqrt(1.0 + (lo / np.maximum(f, 1e-3)) ** 4) / np.sqrt(1.0 + (f / hi) ** 4)
        if tilt:
            g = g / np.maximum(f, 20.0) ** tilt
        return g
    return resp


def filtered(x: np.ndarray, sr: int, resp: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    if len(x) == 0:
        return x
    spec = np.fft.rfft(x)
    spec *= resp(np.fft.rfftfreq(len(x), 1.0 / sr))
    return np.fft.irfft(spec, len(x)).astype(np.float32)


def harmonics(f0: np.ndarray, sr: int, amps: np.ndarray | Callable[[int, np.ndarray], np.ndarray],
              phase0: float = 0.0) -> np.ndarray:
    """Sum of harmonics of a time-varying fundamental ``f0`` (Hz per sample); harmonics above Nyquist are skipped."""
    phase = phase0 + 2 * math.pi * np.cumsum(f0) / sr
    out = np.zeros(len(f0), np.float64)
    fmax = float(f0.max()) if len(f0) else 1.0
    count = len(amps) if not callable(amps) else 40
    for k in range(1, count + 1):
        if k * fmax >= 0.47 * sr:
            break
        a = amps[k - 1] if not callable(amps) else amps(k, f0)
        out += a * np.sin(k * phase)
    return out.astype(np.float32)


def fade_edges(x: np.ndarray, sr: int, ms: float = 3.0) -> np.ndarray:
    """Short raised-cosine ramps at both ends: no click, and still inside the span."""
    n = min(len(x) // 2, max(1, round(sr * ms / 1000)))
    if n > 1:
        ramp = 0.5 - 0.5 * np.cos(np.linspace(0, math.pi, n))
        x[:n] *= ramp
        x[-n:] *= ramp[::-1]
    return x


def decay(n: int, sr: int, tau: float, offset: int = 0) -> np.ndarray:
    t = np.arange(n) / sr
    e = np.exp(-t / tau)
    if offset:
        e = np.concatenate([np.zeros(offset), e[: n - offset]])
    return e.astype(np.float32)


PEAK = 0.9


def _normalise(x: np.ndarray, db: float) -> np.ndarray:
    """Scale to an RMS of ``db`` dBFS, but never past a peak of ``PEAK``: a bang is loud, not clipped."""
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0
    if rms > 0:
        peak = float(np.abs(x).max())
        x = x * min(10 ** (db / 20) / rms, PEAK / peak)
    return x.astype(np.float32)


def _place(buf: np.ndarray, snd: np.ndarray, at: int) -> None:
    at = max(0, at)
    m = min(len(snd), len(buf) - at)
    if m > 0:
        buf[at:at + m] += snd[:m]


# ----------------------------------------------------------------------------- sources

def engine(rng: np.random.Generator, n: int, sr: int, f0: float, doppler: np.ndarray, rough: float,
           noise_band: tuple[float, float], noise_mix: float) -> np.ndarray:
    """Engine harmonics with RPM wobble plus tyre/exhaust noise; ``rough`` flattens the harmonic slope."""
    t = np.arange(n) / sr
    wob = 1 + 0.04 * np.sin(2 * math.pi * rng.uniform(0.2, 0.6) * t + rng.uniform(0, 6.3))
    amps = (1.0 / np.arange(1, 41) ** (1.0 - rough)) * rng.uniform(0.5, 1.5, 40)
    tone = harmonics(f0 * wob * doppler, sr, amps)
    tone /= float(np.sqrt(np.mean(tone.astype(np.float64) ** 2))) or 1.0
    return tone + noise_mix * shaped_noise(rng, n, sr, band(*noise_band, tilt=0.3))


def voice(rng: np.random.Generator, n: int, sr: int, f0: float, busy: float = 0.7) -> np.ndarray:
    """Speech-like babble: voiced syllables with changing vowels, intonation and pauses."""
    out = np.zeros(n, np.float32)
    t = np.arange(n) / sr
    contour = f0 * (1 + 0.08 * np.sin(2 * math.pi * rng.uniform(0.2, 0.5) * t + rng.uniform(0, 6.3))
                    + 0.03 * np.sin(2 * math.pi * 5.5 * t))
    phase_track = 2 * math.pi * np.cumsum(contour) / sr
    pos = int(rng.uniform(0, 0.3) * sr)
    kmax = max(1, min(40, int(0.45 * sr / (f0 * 1.2))))
    ks = np.arange(1, kmax + 1)
    while pos < n:
        if rng.random() > busy:
            pos += int(rng.uniform(0.15, 0.5) * sr)
            continue
        syl = int(rng.uniform(0.1, 0.28) * sr)
        seg = slice(pos, min(n, pos + syl))
        m = seg.stop - seg.start
        if m <= 8:
            break
        f1, f2 = VOWELS[int(rng.integers(len(VOWELS)))]
        fk = ks * f0
        a = 1 / (1 + ((fk - f1) / 90) ** 2) + 0.7 / (1 + ((fk - f2) / 120) ** 2) + 0.2 / (1 + ((fk - 2600) / 200) ** 2)
        a *= ks ** -0.5
        ph = phase_track[seg]
        s = np.zeros(m)
        for k, ak in zip(ks, a, strict=True):
            s += ak * np.sin(k * ph)
        env = np.sin(np.linspace(0, math.pi, m)) ** 0.7
        out[seg] += (s * env).astype(np.float32)
        pos += syl + int(rng.uniform(0.0, 0.08) * sr)
    breath = shaped_noise(rng, n, sr, band(1500, 5000)) * 0.03
    return out + breath * (np.abs(out) > 0)


def bark_times(ev: Event) -> list[tuple[float, float]]:
    """(start, duration) of each bark, shared by the sound and the dog's open mouth."""
    rng = rng_for(ev.seed, 3)
    t0, t1 = ev.aud or ev.vis or (ev.start, ev.end)
    out, t = [], t0
    while True:
        d = float(rng.uniform(0.12, 0.25))
        if t + d > t1 - 0.1:
            break
        out.append((t, d))
        t += d + float(rng.uniform(0.08, 0.35))
    # The last bark ends where the event ends: the label's end is the sound's end.
    d = min(0.2, t1 - t0)
    if out and out[-1][0] + out[-1][1] > t1 - d:
        out.pop()
    out.append((t1 - d, d))
    return out


def shot_times(ev: Event) -> tuple[float, ...]:
    """Gunshot times, shared with the muzzle flashes; an explosion has one blast at its start."""
    if ev.params.get("variant") != "gunshot":
        return (ev.start,)
    rng = rng_for(ev.seed, 4)
    span = ev.end - ev.start
    return (ev.start, *sorted(ev.start + float(rng.uniform(0.1, 0.45)) * span
                              for _ in range(int(rng.integers(0, 3)))))


def _crossing_position(n: int, sr: int, lead: float = 0.0, tail: float = 0.0) -> np.ndarray:
    """-1 .. 1 while in view (0 in the middle), beyond that during a lead/tail: the distance model."""
    total = n / sr
    cross = max(1e-3, total - lead - tail)
    t = np.arange(n) / sr
    return (t - lead - cross / 2) / (cross / 2)


def event_sound(ev: Event, sr: int) -> np.ndarray:
    """The event's sound over its audible span, at the event's loudness (RMS, dBFS)."""
    assert ev.aud is not None
    n = round(ev.aud[1] * sr) - round(ev.aud[0] * sr)
    rng = rng_for(ev.seed, 2)
    p, k = ev.params, ev.kind
    pitch = p["pitch"]
    T = n / sr
    t = np.arange(n) / sr
    if k in ("car", "truck", "motorbike"):
        x = _crossing_position(n, sr)
        env = 1 / np.sqrt(1 + (2.2 * x) ** 2)
        doppler = 1 + 0.035 * -np.tanh(2.5 * x)
        if k == "car":
            s = engine(rng, n, sr, rng.uniform(28, 45) * pitch, doppler, 0.2, (250, 2500), 1.2)
        elif k == "truck":
            s = engine(rng, n, sr, rng.uniform(14, 24) * pitch, doppler, 0.45, (70, 1200), 0.9)
            if p["variant"] == "bus" and n > sr:
                at = int(rng.uniform(0.2, 0.7) * n)
                hiss = shaped_noise(rng, n - at, sr, band(2500, 7000)) * decay(n - at, sr, 0.25) * 1.5
                s[at:] += hiss
        else:
            rev = 1 + 0.25 * np.clip(np.sin(2 * math.pi * t / max(T, 0.5) * rng.uniform(0.5, 1.5)), 0, 1)
            s = engine(rng, n, sr, rng.uniform(70, 120) * pitch, doppler * rev, 0.6, (600, 4500), 0.7)
        s = s * env
    elif k == "siren":
        lead, tail = p.get("lead", 0.0), p.get("tail", 0.0)
        x = _crossing_position(n, sr, lead, tail)
        env = 1 / np.sqrt(1 + (1.4 * x) ** 2)
        doppler = 1 + 0.04 * -np.tanh(2.0 * x)
        v = p["variant"]
        if v == "wail":
            per = rng.uniform(3.0, 5.0)
            f = 650 + 550 * (0.5 - 0.5 * np.cos(2 * math.pi * t / per))
        elif v == "yelp":
            per = rng.uniform(0.25, 0.4)
            f = 650 + 600 * ((t / per) % 1.0)
        else:
            per = rng.uniform(0.5, 0.8)
            f = np.where((t / per) % 2 < 1, 700.0, 950.0)
        tone = harmonics(f * pitch * doppler, sr, np.array([1.0, 0.5, 0.33, 0.2, 0.12]))
        eng = engine(rng, n, sr, rng.uniform(28, 40), doppler, 0.2, (250, 2000), 1.0) * 0.15
        s = (tone + eng) * env
    elif k == "talking":
        s = np.zeros(n, np.float32)
        for _ in range(int(rng.integers(2, 4))):
            f0 = (rng.uniform(95, 140) if rng.random() < 0.5 else rng.uniform(170, 250)) * pitch
            s += voice(rng, n, sr, f0, busy=rng.uniform(0.65, 0.9)) * rng.uniform(0.5, 1.0)
    elif k == "scream":
        f0 = rng.uniform(420, 850) * pitch
        shape = np.sin(np.linspace(0, math.pi, n)) ** 0.5
        f = f0 * (0.8 + 0.35 * shape) * (1 + 0.02 * rng.standard_normal(n).cumsum() / math.sqrt(n))
        fk = np.arange(1, 21) * f0
        amps = 1 / (1 + ((fk - 950) / 250) ** 2) + 0.6 / (1 + ((fk - 2800) / 400) ** 2) + 0.1
        rough = 1 + 0.3 * np.sin(2 * math.pi * rng.uniform(35, 70) * t)
        s = harmonics(f, sr, amps) * rough * np.minimum(1, t / 0.05) * np.minimum(1, (T - t) / 0.2)
        s += 0.15 * shaped_noise(rng, n, sr, band(1000, 4000)) * shape
    elif k == "dog":
        s = np.zeros(n, np.float32)
        for tb, d in bark_times(ev):
            m = round(d * sr)
            tt = np.arange(m) / sr
            f = rng.uniform(380, 650) * pitch * (1.15 - 0.4 * tt / d)
            fk = np.arange(1, 16) * float(f.mean())
            amps = 1 / (1 + ((fk - rng.uniform(900, 1400)) / 300) ** 2) + 0.1
            tone = harmonics(f, sr, amps)
            tone /= float(np.sqrt(np.mean(tone.astype(np.float64) ** 2))) or 1.0
            b = tone + 0.35 * shaped_noise(rng, m, sr, band(400, 3000))
            b *= np.minimum(1, tt / 0.01) * np.exp(-tt / (0.4 * d))
            _place(s, b, round((tb - ev.aud[0]) * sr))
    elif k == "bicycle":  # not audible: never called (kept for completeness)
        s = np.zeros(n, np.float32)
    elif k == "offscreen":
        s = np.zeros(n, np.float32)
        if p["variant"] == "horn":
            f1 = rng.uniform(330, 480) * pitch
            pos, first = 0.0, True
            while pos < T - 0.2:
                d = min(float(rng.uniform(0.25, 1.2)), T - pos)
                if not first and pos + d > T:
                    break
                m = round(d * sr)
                hn = harmonics(np.full(m, f1), sr, np.array([1, 0, 0.33, 0, 0.2, 0, 0.14]))
                hn += harmonics(np.full(m, f1 * 1.26), sr, np.array([1, 0, 0.33, 0, 0.2]))
                _place(s, fade_edges(hn, sr, 10), round(pos * sr))
                pos += d + float(rng.uniform(0.1, 0.35))
                first = False
            # the last honk ends where the event ends
            d = min(0.6, T / 3)
            m = round(d * sr)
            hn = harmonics(np.full(m, f1), sr, np.array([1, 0, 0.33, 0, 0.2])) * 0.9
            _place(s, fade_edges(hn, sr, 10), n - m)
        else:  # construction: a jackhammer in bursts, metallic ringing
            rate = rng.uniform(12, 22)
            hits = np.arange(0, T, 1 / rate)
            on = (np.sin(2 * math.pi * t / rng.uniform(1.5, 3.0)) > -0.6).astype(np.float32)
            ring = shaped_noise(rng, n, sr, band(600, 4500))
            pulses = np.zeros(n, np.float32)
            for h in hits:
                i = round(h * sr)
                m = min(n - i, round(0.03 * sr))
                if m > 0:
                    pulses[i:i + m] += np.exp(-np.arange(m) / (0.006 * sr))
            metal = harmonics(np.full(n, rng.uniform(700, 1300) * pitch), sr, np.array([1, 0.6, 0.3, 0.5]))
            s = (ring * 0.6 + metal * 0.5) * pulses * np.maximum(on, 0.3)
    elif k == "glass_break":
        s = shaped_noise(rng, n, sr, band(1500, 7000)) * decay(n, sr, 0.03) * 3
        for _ in range(int(rng.integers(25, 60))):
            # Shards keep falling and tinkling until the event's end.
            at = int(min(n - 1, rng.uniform(0, 0.97) ** 1.5 * n))
            m = n - at
            if m < 16:
                continue
            tt = np.arange(m) / sr
            tink = np.zeros(m)
            for _ in range(3):
                partial = min(float(rng.uniform(2500, 7500)) * pitch, 0.45 * sr)
                tink += np.sin(2 * math.pi * partial * tt)
            level = rng.uniform(0.3, 1.0) * (1 - 0.5 * at / n)
            _place(s, (tink * np.exp(-tt / rng.uniform(0.015, 0.06)) * level).astype(np.float32), at)
        s *= np.minimum(1.0, (T - t) / 0.1)
    elif k == "explosion":
        s = np.zeros(n, np.float32)
        gun = p["variant"] == "gunshot"
        for ts in shot_times(ev):
            at = round((ts - ev.aud[0]) * sr)
            m = n - at
            crack = shaped_noise(rng, m, sr, band(300, 6000)) * decay(m, sr, 0.004 if gun else 0.01) * 6
            boom_tau = rng.uniform(0.08, 0.2) if gun else rng.uniform(0.4, 1.2)
            boom = shaped_noise(rng, m, sr, band(30, 600 if gun else 250, tilt=0.5)) * decay(m, sr, boom_tau) * 3
            _place(s, crack + boom, at)
        s *= np.minimum(1.0, (T - t) / 0.3)
    elif k == "crash":
        hit = round(0.3 * n)
        back = round(0.7 * n)
        doppler = np.ones(n)
        eng = engine(rng, n, sr, rng.uniform(28, 45) * pitch, doppler, 0.2, (250, 2500), 1.0)
        eng *= np.where(np.arange(n) < hit, 0.4 + 0.6 * np.arange(n) / max(hit, 1),
                        np.where(np.arange(n) < back, 0.05, 0.35))
        m = n - hit
        screech_n = min(hit, round(0.6 * sr))
        screech = shaped_noise(rng, screech_n, sr, band(1500, 3500)) + harmonics(
            np.full(screech_n, rng.uniform(1800, 2600)), sr, np.array([1.0]))
        _place(eng, screech * np.linspace(0.2, 1.0, screech_n) * 1.5, hit - screech_n)
        bang = shaped_noise(rng, m, sr, band(40, 5000, tilt=0.2)) * decay(m, sr, 0.12) * 8
        tt = np.arange(m) / sr
        crunch = sum(np.sin(2 * math.pi * rng.uniform(300, 2500) * tt) * rng.uniform(0.3, 1) for _ in range(6))
        crunch = crunch * np.exp(-tt / 0.35) * 2
        debris = shaped_noise(rng, m, sr, band(2000, 7000)) * decay(m, sr, 0.5) * np.abs(
            np.sin(2 * math.pi * 7 * tt)) * 0.8
        _place(eng, (bang + crunch + debris).astype(np.float32), hit)
        s = eng
    elif k == "running":
        s = np.zeros(n, np.float32)
        for _ in range(int(rng.integers(2, 5))):
            step = 1 / rng.uniform(2.6, 3.6)
            tstep = rng.uniform(0, step)
            while tstep < T - 0.06:
                m = min(round(0.06 * sr), n - round(tstep * sr))
                thud = shaped_noise(rng, m, sr, band(80, 2500, tilt=0.3)) * decay(m, sr, 0.012)
                _place(s, thud * rng.uniform(0.5, 1.0), round(tstep * sr))
                tstep += step * rng.uniform(0.92, 1.08)
        pant = shaped_noise(rng, n, sr, band(400, 3000)) * (0.5 + 0.5 * np.sin(2 * math.pi * 1.6 * t)) * 0.12
        s += pant
    else:
        raise AssertionError(f"no sound for {k}")
    return fade_edges(_normalise(np.asarray(s, np.float32), p["loudness"]), sr)


# ----------------------------------------------------------------------------- the mix

Gust = tuple[float, float, float]  # (start s, duration s, peak gain)


def wind_gusts(profile: Profile, seed: int, seconds: float) -> list[Gust]:
    """When the wind gusts: heard as wind noise, seen as the tree swaying (life that is no event)."""
    rng = rng_for(seed, STREAM_AMBIENT_AUDIO, 5)
    out: list[Gust] = []
    t = 0.0
    while profile.gusts_per_min > 0:
        t += float(rng.exponential(60 / profile.gusts_per_min))
        if t >= seconds:
            break
        out.append((t, float(rng.uniform(1.5, 5.0)), float(rng.uniform(1.5, 4.0))))
    return out


def gust_gain(gusts: list[Gust], t: float) -> float:
    """The wind's gain at ``t`` (1 when calm), the same curve the wind noise follows."""
    g = 1.0
    for g0, gd, ga in gusts:
        if g0 <= t < g0 + gd:
            g += (ga - 1) * math.sin(math.pi * (t - g0) / gd) ** 2
    return g


class Soundtrack:
    """Renders the soundtrack chunk by chunk (bounded memory for long footage)."""

    def __init__(self, events: list[Event], profile: Profile, seed: int, seconds: float, sr: int) -> None:
        self.sr, self.seed, self.profile = sr, seed, profile
        self.n_total = round(seconds * sr)
        self.chunk = round(CHUNK_S * sr)
        self.ov = round(_OVERLAP_S * sr)
        rng = rng_for(seed, STREAM_AMBIENT_AUDIO, 0)
        self.level_waves = [(rng.uniform(40, 240), rng.uniform(0, 6.3)) for _ in range(2)]
        self.gusts = wind_gusts(profile, seed, seconds)
        # Sources: (first sample, sample count, maker). Events plus unlabelled distant chatter.
        self.sources: list[tuple[int, int, Callable[[], np.ndarray]]] = []
        for ev in events:
            if ev.aud is not None:
                a = round(ev.aud[0] * sr)
                self.sources.append((a, round(ev.aud[1] * sr) - a, functools.partial(event_sound, ev, sr)))
        crng = rng_for(seed, STREAM_AMBIENT_AUDIO, 1)
        t = 0.0
        i = 0
        while profile.chatter_per_min > 0:
            t += float(crng.exponential(60 / profile.chatter_per_min))
            if t >= seconds:
                break
            d = float(crng.uniform(3.0, 8.0))
            a = round(t * sr)
            n = min(round(d * sr), self.n_total - a)
            self.sources.append((a, n, functools.partial(self._chatter, n, i)))
            i += 1
        self.sources.sort(key=lambda s: s[0])
        self._cache: dict[int, np.ndarray] = {}
        self._prev: tuple[int, np.ndarray] | None = None

    def _chatter(self, n: int, i: int) -> np.ndarray:
        rng = rng_for(self.seed, STREAM_AMBIENT_AUDIO, 2, i)
        s = sum(voice(rng, n, self.sr, rng.uniform(95, 240)) for _ in range(int(rng.integers(1, 3))))
        s = filtered(np.asarray(s, np.float32), self.sr, band(120, 900))
        lo, hi = self.profile.ambient_db
        return fade_edges(_normalise(s, float(rng.uniform(lo, hi)) - 2), self.sr, 200)

    def _level(self, t: np.ndarray) -> np.ndarray:
        lo, hi = self.profile.ambient_db
        x = np.sum([np.sin(2 * math.pi * t / per + ph) for per, ph in self.level_waves], axis=0) / 2
        return (10 ** ((lo + (hi - lo) * (0.5 + 0.5 * x)) / 20)).astype(np.float32)

    def _segment(self, k: int) -> np.ndarray:
        """Ambient noise for chunk ``k`` plus an overlap tail, from the chunk's own stream."""
        n = self.chunk + self.ov
        rng = rng_for(self.seed, STREAM_AMBIENT_AUDIO, 3, k)
        def hum_resp(f: np.ndarray) -> np.ndarray:  # low rumble with a bump where engines idle
            return band(25, 350, tilt=0.5)(f) * (1 + 1.5 / (1 + ((f - 110) / 40) ** 2))

        hum = shaped_noise(rng, n, self.sr, hum_resp)
        wind = shaped_noise(rng, n, self.sr, band(60, 1200, tilt=0.6))
        t = (k * self.chunk + np.arange(n)) / self.sr
        gust = np.ones(n, np.float32)
        for g0, gd, ga in self.gusts:
            if g0 < t[-1] and g0 + gd > t[0]:
                gust += (ga - 1) * np.clip(np.sin(math.pi * (t - g0) / gd), 0, None) ** 2 * ((t >= g0) & (t < g0 + gd))
        level = self._level(t)
        return level * (0.8 * hum + 0.45 * wind * gust)

    def ambient(self, k: int) -> np.ndarray:
        cur = self._segment(k)
        out = cur[: self.chunk].copy()
        if k > 0:
            prev = self._prev[1] if self._prev and self._prev[0] == k - 1 else self._segment(k - 1)
            ramp = np.linspace(0.0, 1.0, self.ov, dtype=np.float32)
            out[: self.ov] = out[: self.ov] * np.sqrt(ramp) + prev[self.chunk:] * np.sqrt(1 - ramp)
        self._prev = (k, cur)
        return out

    def chunks(self) -> int:
        return -(-self.n_total // self.chunk)

    def render_chunk(self, k: int) -> np.ndarray:
        """Samples ``[k * chunk, min((k + 1) * chunk, total))``: ambient plus every source overlapping them."""
        a0 = k * self.chunk
        a1 = min(a0 + self.chunk, self.n_total)
        out = self.ambient(k)[: a1 - a0]
        for i, (first, count, make) in enumerate(self.sources):
            if first >= a1:
                break
            if first + count <= a0:
                continue
            snd = self._cache.get(i)
            if snd is None:
                snd = self._cache[i] = make()
            lo, hi = max(a0, first), min(a1, first + count)
            out[lo - a0:hi - a0] += snd[lo - first:hi - first]
        # Forget sounds that are over.
        self._cache = {i: v for i, v in self._cache.items() if self.sources[i][0] + self.sources[i][1] > a1}
        np.clip(out, -1.0, 1.0, out=out)
        return out
