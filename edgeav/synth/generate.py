"""``synthesize``: one call that renders a scene, encodes it and writes its labels sidecar."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from edgeav.errors import RuntimeFailure, UserError
from edgeav.labels import Labels, sidecar_path
from edgeav.synth.audio import Soundtrack, bark_times, shot_times, wind_gusts
from edgeav.synth.encode import AAC_RATES, Mp4Writer
from edgeav.synth.scene import Scene, passersby
from edgeav.synth.sprites import Visual, visuals_for
from edgeav.synth.timeline import Event, get_profile, random_timeline, scripted_timeline

GENERATOR = "edgeav.synth/1"
MAX_SECONDS = 24 * 3600.0


def _check_args(seconds: float, seed: int, width: int, height: int, fps: float, sample_rate: int) -> Fraction:
    def num(v: object) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if not num(seconds) or not 0 < seconds <= MAX_SECONDS:
        raise UserError(f"seconds: {seconds!r} is not allowed (a duration above 0 and at most {MAX_SECONDS:g})")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise UserError(f"seed: {seed!r} is not allowed (an integer from 0 to {2**32 - 1})")
    for name, v, lo, hi in (("width", width, 64, 3840), ("height", height, 36, 2160)):
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi or v % 2:
            raise UserError(f"{name}: {v!r} is not allowed (an even number of pixels from {lo} to {hi}: "
                            "H.264 in yuv420p needs even sizes)")
    if not num(fps) or not 1 <= fps <= 120:
        raise UserError(f"fps: {fps!r} is not allowed (frames per second from 1 to 120)")
    if sample_rate not in AAC_RATES:
        raise UserError(f"sample_rate: {sample_rate!r} is not allowed (one of {', '.join(map(str, AAC_RATES))} Hz)")
    rate = Fraction(fps).limit_denominator(1001)
    if round(seconds * rate) < 1:
        raise UserError(f"seconds: {seconds!r} is not allowed (shorter than one frame at {fps:g} fps)")
    return rate


def _bark_env(ev: Event) -> Callable[[float], float]:
    barks = bark_times(ev)
    return lambda t: 1.0 if any(b <= t < b + d for b, d in barks) else 0.0


def _sidecar(labels: Labels, timeline: list[Event], **meta: Any) -> dict:
    """The ``edgeav.labels/1`` document plus a ``synth`` section (ignored by ``load_labels``)
    with each event's visible and audible spans and parameters, e.g. a siren's view span."""
    data = labels.to_json()
    data["synth"] = {"generator": GENERATOR, **meta, "events": [
        {"label": e.kind, "start": e.start, "end": e.end, "visible_span": list(e.vis) if e.vis else None,
         "audible_span": list(e.aud) if e.aud else None,
         "params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in e.params.items()}}
        for e in timeline]}
    return data


def synthesize(out_path: str | os.PathLike[str], *, seconds: float, seed: int, profile: str = "street",
               width: int = 640, height: int = 360, fps: float = 15.0, sample_rate: int = 16000,
               events: list[dict] | None = None,
               progress: Callable[[float], None] | None = None, site: int | None = None,
               preset: str = "ultrafast") -> Labels:
    """Render a street scene to ``out_path`` (MP4: H.264 + AAC) and its labels sidecar; return the labels.

    ``events`` scripts the timeline exactly (no random events; the ambient scene still runs).
    The same arguments always give byte-identical files. ``progress`` is called with the
    fraction done after each second of footage. ``site`` (default: ``seed``) seeds the place itself —
    buildings, colours, occluders, light — so several recordings (seeds) of one site share a scene, as a
    fixed camera's days do: calibrate on some, test on another. ``preset``: x264's (``ultrafast``: CAVLC, no
    deblocking, quick to write and to decode; ``veryfast``: CABAC and deblocking, as a camera's encoder).
    """
    rate = _check_args(seconds, seed, width, height, fps, sample_rate)
    if site is None:
        site = seed
    elif not isinstance(site, int) or isinstance(site, bool) or not 0 <= site < 2**32:
        raise UserError(f"site: {site!r} is not allowed (an integer from 0 to {2**32 - 1})")
    prof = get_profile(profile)
    out = Path(out_path)
    if out.suffix.lower() != ".mp4":
        raise UserError(f"{out}: the output must be an .mp4 file")
    if out.is_dir():
        raise UserError(f"{out}: is a directory, not an output file")
    if not out.parent.is_dir():
        raise UserError(f"{out}: the folder {out.parent} does not exist")
    timeline = (scripted_timeline(events, seed=seed, seconds=seconds) if events is not None
                else random_timeline(prof, seed=seed, seconds=seconds))

    scene = Scene(width, height, site, prof, wind_gusts(prof, seed, seconds))
    visuals: list[Visual] = []
    for ev in timeline:
        visuals += visuals_for(ev, width, height, bark_env=_bark_env(ev) if ev.kind == "dog" else None,
                               shots=shot_times(ev) if ev.kind == "explosion" else ())
    visuals += passersby(prof, seed, seconds, width, height)
    visuals.sort(key=lambda v: v.t0)
    sound = Soundtrack(timeline, prof, seed, seconds, sample_rate)

    n_frames = round(seconds * rate)
    writer = Mp4Writer(out, width, height, rate, sample_rate, preset=preset)
    side = sidecar_path(out)
    side_tmp = side.with_name(f".{side.name}.partial-{os.getpid()}")
    try:
        next_visual, active = 0, []
        next_chunk = 0
        step = max(1, round(float(rate)))
        for i in range(n_frames):
            t = float(Fraction(i) / rate)
            # Audio goes in ahead of the video it accompanies, so the file interleaves like a camera's.
            while next_chunk < sound.chunks() and next_chunk * sound.chunk <= (t + 1.0) * sample_rate:
                writer.write_audio(sound.render_chunk(next_chunk), next_chunk * sound.chunk)
                next_chunk += 1
            while next_visual < len(visuals) and visuals[next_visual].t0 <= t:
                active.append(visuals[next_visual])
                next_visual += 1
            active = [v for v in active if v.t1 > t]
            writer.write_video(scene.render_i420(t, active), i)
            if progress is not None and (i + 1) % step == 0:
                progress((i + 1) / n_frames)
        while next_chunk < sound.chunks():
            writer.write_audio(sound.render_chunk(next_chunk), next_chunk * sound.chunk)
            next_chunk += 1
        labels = Labels(footage=out.name, duration=float(seconds), events=tuple(e.label() for e in timeline))
        side_tmp.write_text(json.dumps(_sidecar(labels, timeline, seed=seed, site=site, profile=profile, width=width,
                                                height=height, fps=fps, sample_rate=sample_rate), indent=1) + "\n")
        writer.close()
        os.replace(side_tmp, side)
    except (OSError, av.error.FFmpegError) as exc:  # type: ignore[attr-defined]
        writer.abort()
        side_tmp.unlink(missing_ok=True)
        raise RuntimeFailure(f"{out}: writing failed: {getattr(exc, 'strerror', None) or exc}") from None
    except BaseException:
        writer.abort()
        side_tmp.unlink(missing_ok=True)
        raise
    return labels
