"""Footage made at test time: ffmpeg lavfi clips and bad files, and a small audio-visual scene generator.

The scene has two recurring event kinds whose sound follows what is seen, so a model can only retrieve
the aligned partner of a window by learning the audio-visual correspondence:
- "car": a red block crossing the frame; its engine tone rises with its position (Doppler-like);
- "dog": a blue block bouncing at a random place and rate; a bark (noise burst) at each bounce's top.
Written with PyAV (libx264 + AAC), like a camera recording.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import av
import numpy as np


def ffmpeg(*args: str, timeout: float = 60) -> None:
    subprocess.run(["timeout", str(int(timeout)), "ffmpeg", "-v", "error", "-y", *args], check=True,
                   timeout=timeout + 5)


def lavfi_clip(path: Path, seconds: float = 4, size: str = "320x240", fps: int = 15, audio: bool = True,
               video: bool = True, tone_hz: int = 440, faststart: bool = False) -> Path:
    """A testsrc2 video with a sine tone (stereo 44.1 kHz AAC), as a plain camera file."""
    args: list[str] = []
    if video:
        args += ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fps}"]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency={tone_hz}:sample_rate=44100"]
    args += ["-t", str(seconds)]
    if video:
        args += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    if audio:
        args += ["-c:a", "aac", "-ac", "2"]
    if faststart:
        args += ["-movflags", "+faststart"]
    ffmpeg(*args, str(path))
    return path


def make_bad_footage(d: Path) -> dict[str, Path]:
    """One file per kind of bad footage, keyed by the words its error must contain."""
    d.mkdir(parents=True, exist_ok=True)
    good = lavfi_clip(d / "good_src.mp4", seconds=6)
    bad: dict[str, Path] = {}
    (d / "zero.mp4").write_bytes(b"")
    bad["empty"] = d / "zero.mp4"
    (d / "random.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 100_000, dtype=np.uint8).tobytes())
    bad["unreadable"] = d / "random.mp4"
    bad["no audio stream"] = lavfi_clip(d / "video_only.mp4", seconds=3, audio=False)
    bad["no video stream"] = lavfi_clip(d / "audio_only.mp4", seconds=3, video=False)
    data = good.read_bytes()
    (d / "cut.mp4").write_bytes(data[: len(data) // 2])  # moov index at the end: cut off
    bad["truncated"] = d / "cut.mp4"
    fs = lavfi_clip(d / "fs_src.mp4", seconds=6, faststart=True)
    data = fs.read_bytes()
    (d / "cut_faststart.mp4").write_bytes(data[: len(data) // 2])  # index kept, media cut
    bad["truncated "] = d / "cut_faststart.mp4"  # (key differs only to keep both cases)
    good.unlink()
    fs.unlink()
    return bad


def write_av(path: Path, frames: np.ndarray, audio: np.ndarray, fps: int, sample_rate: int) -> Path:
    """RGB frames ``[T, H, W, 3]`` + mono float audio -> H.264/AAC MP4."""
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=fps)
        vs.width, vs.height = frames.shape[2], frames.shape[1]
        vs.pix_fmt = "yuv420p"
        vs.options = {"preset": "ultrafast", "crf": "20"}
        a = c.add_stream("aac", rate=sample_rate)
        a.layout = "mono"
        for f in frames:
            for p in vs.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        block = 1024
        pcm = np.clip(audio, -1, 1).astype(np.float32)
        for i in range(0, len(pcm), block):
            chunk = pcm[i:i + block]
            af = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
            af.sample_rate = sample_rate
            af.pts = i
            for p in a.encode(af):
                c.mux(p)
        for p in a.encode():
            c.mux(p)
    return path


def scene(path: Path, seconds: float, seed: int, width: int = 224, height: int = 128, fps: int = 15,
          sample_rate: int = 16000) -> list[dict]:
    """Write a scene with recurring "car" and "dog" events; returns the events (kind, start, end)."""
    rng = np.random.default_rng(seed)
    n_frames = int(seconds * fps)
    t_frames = np.arange(n_frames) / fps
    n_samples = int(seconds * sample_rate)
    t_audio = np.arange(n_samples) / sample_rate
    texture = rng.integers(90, 140, (height // 8, width // 8, 3)).astype(np.float32)
    bg = np.kron(texture, np.ones((8, 8, 1), np.float32))[:height, :width]
    flicker = rng.normal(0, 3, n_frames)  # small global brightness flicker
    frames = np.empty((n_frames, height, width, 3), np.uint8)
    for i in range(n_frames):
        frames[i] = np.clip(bg + flicker[i], 0, 255)
    audio = rng.normal(0, 0.01, n_samples).astype(np.float32)

    events: list[dict] = []
    t = rng.uniform(0.5, 2.0)
    while t < seconds - 2.5:
        kind = "car" if rng.random() < 0.5 else "dog"
        dur = rng.uniform(2.0, 4.0)
        end = min(t + dur, seconds - 0.1)
        events.append({"kind": kind, "start": float(t), "end": float(end)})
        fi = np.nonzero((t_frames >= t) & (t_frames < end))[0]
        ai = np.nonzero((t_audio >= t) & (t_audio < end))[0]
        if kind == "car":
            direction = 1 if rng.random() < 0.5 else -1
            y0 = int(rng.integers(height // 4, height - height // 3))
            for i in fi:
                u = (t_frames[i] - t) / (end - t)
                x = u if direction > 0 else 1 - u
                x0 = int(x * (width - 40))
                frames[i, y0:y0 + 24, x0:x0 + 40] = (220, 40, 40)
            u = (t_audio[ai] - t) / (end - t)
            x = u if direction > 0 else 1 - u
            freq = 150.0 + 900.0 * x
            phase = 2 * np.pi * np.cumsum(freq) / sample_rate
            audio[ai] += 0.25 * (np.sin(phase) + 0.5 * np.sin(2 * phase))
        else:
            rate = rng.uniform(1.0, 2.5)
            x0 = int(rng.integers(0, width - 24))
            for i in fi:
                h = 0.5 + 0.5 * np.cos(2 * np.pi * rate * (t_frames[i] - t))
                y = int((height - 30) * (1 - h))
                frames[i, y:y + 24, x0:x0 + 24] = (40, 60, 220)
            tt = t_audio[ai] - t
            cyc = (tt * rate) % 1.0
            bark = (cyc < 0.12) | (cyc > 0.97)  # around the top of each bounce (cos peak)
            noise = rng.normal(0, 1, len(ai)).astype(np.float32)
            audio[ai] += 0.35 * bark * noise * np.sin(2 * np.pi * 600 * tt)
        t = end + rng.uniform(0.5, 2.5)
    write_av(path, frames, audio, fps, sample_rate)
    return events
