"""Footage files: find them, probe them, decode their frames and audio, cut them into windows.

Used by training (``train.data``) and by the offline runtime commands (replay, fit-events, calibrate), so
both read footage the same way. No torch here.

Footage is any container FFmpeg reads with one video and one audio stream, or a video file with a WAV of
the same stem beside it (``cam1.mp4`` + ``cam1.wav``). Times are seconds on the footage's own timeline:
0 is the container's start time, so they agree with the labels sidecar.

Bad footage raises :class:`~edgeav.errors.UserError` naming the file and the reason (empty, unreadable,
no video stream, no audio stream, truncated), so the CLI prints one line and exits 2.
"""

from __future__ import annotations

import glob
import heapq
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import av.error
import numpy as np

from edgeav.errors import UserError
from edgeav.preprocess import AUDIO_SAMPLE_RATE, FrameResizer, WindowSpec
from edgeav.windows import WindowAssembler  # the runtime's own window cutting: one code path

# Container extensions a directory argument contributes (case-insensitive). WAVs are audio companions.
FOOTAGE_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mts", ".flv", ".mpg",
                                ".mpeg", ".3gp"})
# Decoded video may end this much before the duration the container declares before we call it truncated.
TRUNCATION_TOLERANCE_S = 1.0
TRUNCATION_TOLERANCE_FRAC = 0.05


@dataclass(frozen=True)
class MediaInfo:
    """What :func:`probe` learns from the headers (nothing decoded)."""

    path: Path
    audio_path: Path          # == path, or the WAV companion
    duration: float           # declared, seconds (video stream's, else container's)
    width: int
    height: int
    fps: float
    sample_rate: int          # the audio's own rate (before resampling to 16 kHz)
    channels: int
    video_codec: str
    audio_codec: str

    @property
    def has_audio(self) -> bool:
        return self.sample_rate > 0

    @property
    def has_video(self) -> bool:
        return self.width > 0

    @property
    def separate_audio(self) -> bool:
        return self.audio_path != self.path


@dataclass
class FootageWindows:
    """A file cut into windows: ``t_starts [N]``, ``frames uint8 [N, F, H, W, 3]``, ``audio float32 [N, S]``.

    A modality left out of :func:`footage_windows`'s ``modalities`` has an empty array (0 rows), never filler.
    """

    t_starts: np.ndarray
    frames: np.ndarray
    audio: np.ndarray
    duration: float           # decoded seconds covered by both modalities

    def __len__(self) -> int:
        return len(self.t_starts)


# ------------------------------------------------------------------------------------------------ finding


def find_footage(items: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Expand FOOTAGE arguments: files as given, directories to their footage files, globs to matches.

    Order is kept (directories and globs sorted), duplicates dropped. A name that matches nothing is a
    :class:`UserError`; a directory with no footage contributes nothing (the caller decides whether an
    empty dataset is an error).
    """
    out: list[Path] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            out.append(p)

    for item in items:
        s = os.fspath(item)
        p = Path(s)
        if p.is_dir():
            for child in sorted(p.iterdir()):
                if child.is_file() and child.suffix.lower() in FOOTAGE_EXTENSIONS:
                    add(child)
        elif p.is_file():
            add(p)
        elif glob.has_magic(s):
            for m in sorted(glob.glob(s)):
                mp = Path(m)
                if mp.is_file() and mp.suffix.lower() in FOOTAGE_EXTENSIONS:
                    add(mp)
                elif mp.is_dir():
                    add_all = find_footage([mp])
                    for c in add_all:
                        add(c)
        else:
            raise UserError(f"{s}: no such file or directory")
    return out


# ------------------------------------------------------------------------------------------------ probing


def _open(path: Path) -> av.container.InputContainer:
    """av.open with the project's reasons for failure."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    if size == 0:
        raise UserError(f"{path}: empty file (0 bytes)")
    try:
        return av.open(str(path), mode="r")
    except av.error.InvalidDataError:
        if _looks_like_mp4(path):
            raise UserError(f"{path}: truncated or not finished writing: an MP4 without its index "
                            f"(moov box missing)") from None
        raise UserError(f"{path}: unreadable: not a media file FFmpeg can read (invalid data)") from None
    except av.error.FFmpegError as exc:
        raise UserError(f"{path}: unreadable: {exc.strerror or exc}") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _looks_like_mp4(path: Path) -> bool:
    """An ISO media file starts with an ``ftyp`` box; if FFmpeg then cannot open it, its end is missing."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(12)
    except OSError:
        return False
    return head[4:8] == b"ftyp"


def _origin(container: av.container.InputContainer) -> float:
    """The container's start time in seconds: 0 on the footage timeline."""
    st = container.start_time
    return float(st) / av.time_base if st is not None else 0.0


def wav_companion(path: Path) -> Path | None:
    """``stem.wav`` (or ``.WAV``) beside ``path``, if there is one."""
    for suffix in (".wav", ".WAV"):
        cand = path.with_suffix(suffix)
        if cand.is_file() and cand != path:
            return cand
    return None


def probe(path: str | os.PathLike[str], require_audio: bool = True, require_video: bool = True) -> MediaInfo:
    """Read the headers: streams, duration, size, fps, sample rate. Raises :class:`UserError` for bad footage.

    ``require_audio=False`` accepts video-only footage (replay's degraded mode: windows flagged as having
    no audio); its ``sample_rate`` is then 0 and :attr:`MediaInfo.has_audio` is False.
    ``require_video=False`` likewise accepts audio-only footage (a search query by sound): ``width`` is then
    0 and :attr:`MediaInfo.has_video` is False. A file with neither stream is always an error.
    """
    p = Path(path)
    with _open(p) as c:
        if not c.streams.video and (require_video or not c.streams.audio):
            kind = "an audio-only file" if c.streams.audio else "no streams"
            raise UserError(f"{p}: no video stream ({kind})")
        if not c.streams.video:
            return _probe_audio_only(p, c)
        vs = c.streams.video[0]
        fps = float(vs.average_rate or vs.guessed_rate or vs.base_rate or 0)
        duration = _stream_duration(vs, c)
        width, height = int(vs.codec_context.width), int(vs.codec_context.height)
        vcodec = vs.codec_context.name
        audio_path = p
        if c.streams.audio:
            a = c.streams.audio[0]
            sr, ch, acodec = int(a.codec_context.sample_rate), int(a.codec_context.channels), a.codec_context.name
        else:
            wav = wav_companion(p)
            if wav is None and not require_audio:
                return MediaInfo(path=p, audio_path=p, duration=duration, width=width, height=height, fps=fps,
                                 sample_rate=0, channels=0, video_codec=vcodec, audio_codec="")
            if wav is None:
                raise UserError(f"{p}: no audio stream (and no {p.stem}.wav beside it)")
            with _open(wav) as w:
                if not w.streams.audio:
                    raise UserError(f"{wav}: no audio stream in the WAV companion of {p.name}")
                a = w.streams.audio[0]
                sr, ch, acodec = (int(a.codec_context.sample_rate), int(a.codec_context.channels),
                                  a.codec_context.name)
            audio_path = wav
    if width <= 0 or height <= 0:
        raise UserError(f"{p}: unreadable: video stream has no frame size")
    return MediaInfo(path=p, audio_path=audio_path, duration=duration, width=width, height=height, fps=fps,
                     sample_rate=sr, channels=ch, video_codec=vcodec, audio_codec=acodec)


def _stream_duration(stream: Any, c: av.container.InputContainer) -> float:
    """The stream's declared duration in seconds, else the container's, else NaN."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if c.duration is not None:
        return float(c.duration) / av.time_base
    return float("nan")


def _probe_audio_only(p: Path, c: av.container.InputContainer) -> MediaInfo:
    a = c.streams.audio[0]
    duration = _stream_duration(a, c)
    return MediaInfo(path=p, audio_path=p, duration=duration, width=0, height=0, fps=0.0,
                     sample_rate=int(a.codec_context.sample_rate), channels=int(a.codec_context.channels),
                     video_codec="", audio_codec=a.codec_context.name)


# ------------------------------------------------------------------------------------------------ decoding


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's or systemd's CPU set)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def video_thread_type(cores: int | None = None) -> str:
    """FFmpeg's threading for decoding a file's video on a box with ``cores`` usable cores (default: ours).

    Frame threading decodes several frames at once but pays for it in CPU: on the 2-core box, 60 s of
    720p25 H.264 took 0.71 to 0.77 s of CPU with frame threads against 0.53 to 0.58 s in one thread, and was
    no faster by the clock (0.63 against 0.58 s on idle cores). On two cores the pipeline's other core is
    busy anyway (onnxruntime embeds while the decoder decodes), so there the decoder gets one thread
    ("SLICE": slice threads only for a stream cut into slices, which cost nothing extra); with more cores
    frame threading has cores to spare. Decoded pictures are the same bytes either way (H.264 decoding
    is exact).
    """
    return "SLICE" if (cores if cores is not None else usable_cores()) <= 2 else "AUTO"


def iter_video_frames(path: str | os.PathLike[str], thread_type: str | None = None,
                      start_near: float | None = None) -> Iterator[tuple[float, av.VideoFrame]]:
    """Decoded video frames in presentation order as ``(t seconds, av.VideoFrame)``.

    The frame is yielded as it left the decoder so callers convert only the frames they need
    (with :class:`edgeav.preprocess.FrameResizer`). ``thread_type``: FFmpeg's decoder threading
    (``"NONE"``, ``"SLICE"``, ``"FRAME"``, ``"AUTO"``); default :func:`video_thread_type`.
    ``start_near``: seek first to the keyframe at or before this time (footage seconds) and decode from
    there (:mod:`edgeav.splitdecode` decodes a file's second half so); the caller checks where it landed.
    """
    p = Path(path)
    with _open(p) as c:
        if not c.streams.video:
            raise UserError(f"{p}: no video stream")
        vs = c.streams.video[0]
        vs.thread_type = thread_type or video_thread_type()
        origin = _origin(c)
        # pts * num / den: the same float as float(pts * Fraction(num, den)) (both the correctly rounded
        # quotient), without building two Fractions per frame.
        if vs.time_base is None:
            raise UserError(f"{p}: unreadable: the video stream has no time base")
        num, den = vs.time_base.numerator, vs.time_base.denominator
        last_t = -float("inf")
        try:
            if start_near is not None:
                c.seek(int((start_near + origin) * den / num), stream=vs, backward=True, any_frame=False)
            for frame in c.decode(vs):
                pts = frame.pts
                if pts is None:
                    continue
                t = pts * num / den - origin
                if t <= last_t:  # a repeated or out-of-order timestamp: keep time strictly increasing
                    continue
                last_t = t
                yield t, frame
        except av.error.FFmpegError as exc:
            raise UserError(f"{p}: corrupt or truncated video after {max(last_t, 0):.2f} s "
                            f"({exc.strerror or exc})") from None


def iter_yuv_frames(path: str | os.PathLike[str]) -> Iterator[tuple[float, np.ndarray]]:
    """Decoded video frames as ``(t seconds, yuv420p ndarray (h*3//2, w))``: feed ``prepare_frame_i420``."""
    for t, frame in iter_video_frames(path):
        yield t, frame.to_ndarray(format="yuv420p")


def iter_audio_blocks(path: str | os.PathLike[str], sample_rate: int = AUDIO_SAMPLE_RATE,
                      audio_path: str | os.PathLike[str] | None = None) -> Iterator[tuple[float, np.ndarray]]:
    """Audio resampled to mono float32 at ``sample_rate``, as ``(t of first sample, samples)`` blocks.

    ``audio_path`` is the file holding the audio (the footage itself, or its WAV companion; see
    :func:`probe`); times are on the footage's timeline either way (a WAV starts at 0).
    """
    p = Path(audio_path) if audio_path is not None else Path(path)
    with _open(p) as c:
        if not c.streams.audio:
            raise UserError(f"{p}: no audio stream")
        s = c.streams.audio[0]
        origin = _origin(c)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        resampling = False  # set once the resampler has been fed: it may hold samples back from then on
        t_next: float | None = None
        try:
            for frame in c.decode(s):
                if t_next is None:
                    tb = frame.time_base or s.time_base
                    t_next = float(frame.pts * tb) - origin if frame.pts is not None and tb is not None else 0.0
                if not resampling and _is_mono_float(frame, sample_rate):
                    # Already what the models take (a 16 kHz mono camera track): the resampler would only
                    # copy it (same samples, same blocks: tested), at about 40 us a block.
                    block = frame.to_ndarray().reshape(-1)
                    yield t_next, block
                    t_next += len(block) / sample_rate
                    continue
                resampling = True
                for out in resampler.resample(frame):
                    block = out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
                    yield t_next, block
                    t_next += len(block) / sample_rate
            for out in resampler.resample(None):
                block = out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
                yield (t_next or 0.0), block
                t_next = (t_next or 0.0) + len(block) / sample_rate
        except av.error.FFmpegError as exc:
            raise UserError(f"{p}: corrupt or truncated audio after {t_next or 0:.2f} s "
                            f"({exc.strerror or exc})") from None


def _is_mono_float(frame: av.AudioFrame, sample_rate: int) -> bool:
    """A decoded audio frame that is mono float32 at ``sample_rate`` already (planar or not: one channel)."""
    return (frame.sample_rate == sample_rate and frame.format.name in ("flt", "fltp")
            and frame.layout.nb_channels == 1)


def decode_audio(path: str | os.PathLike[str], sample_rate: int = AUDIO_SAMPLE_RATE,
                 audio_path: str | os.PathLike[str] | None = None) -> np.ndarray:
    """The whole audio track, mono float32 at ``sample_rate``, sample 0 at footage time 0.

    Audio that starts late is preceded by silence; audio before time 0 (encoder priming) is dropped.
    """
    blocks: list[np.ndarray] = []
    start: float | None = None
    for t, block in iter_audio_blocks(path, sample_rate, audio_path):
        if start is None:
            start = t
        blocks.append(block)
    audio = np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)
    offset = round((start or 0.0) * sample_rate)
    if offset > 0:
        audio = np.concatenate([np.zeros(offset, dtype=np.float32), audio])
    elif offset < 0:
        audio = audio[-offset:]
    return np.ascontiguousarray(audio, dtype=np.float32)


# ------------------------------------------------------------------------------------------------ windows


def iter_av(path: str | os.PathLike[str], sample_rate: int = AUDIO_SAMPLE_RATE, info: MediaInfo | None = None,
            av_offset_s: float = 0.0, clock: Callable[[float], None] | None = None,
            modalities: tuple[str, ...] = ("video", "audio"),
            video: Iterator[tuple[float, Any]] | None = None) -> Iterator[tuple[str, float, Any]]:
    """A file's video frames and audio blocks merged in time order, on the file's own clock.

    Yields ``("video", t, av.VideoFrame)`` and ``("audio", t0, float32 samples)``. Video-only footage
    (``info.has_audio`` false) yields frames only, audio-only footage blocks only; a stream not in
    ``modalities`` is not decoded at all. ``av_offset_s`` is the per-source correction from the
    config: audio captured ``av_offset_s`` late is moved earlier by that much. ``clock(seconds)`` is told
    the time spent decoding (the floor of replay). ``video``: the file's ``(t, frame)`` stream when the
    caller decodes it another way (:mod:`edgeav.splitdecode`); default :func:`iter_video_frames`.
    """
    info = info or probe(path, require_audio=False)
    use_video = info.has_video and "video" in modalities
    use_audio = info.has_audio and "audio" in modalities

    def timed(it: Iterator[tuple[float, Any]], kind: str, shift: float) -> Iterator[tuple[float, str, Any]]:
        while True:
            t0 = time.perf_counter()
            try:
                t, item = next(it)
            except StopIteration:
                return
            finally:
                if clock is not None:
                    clock(time.perf_counter() - t0)
            yield t - shift, kind, item

    video = timed(video if video is not None else iter_video_frames(path), "video", 0.0) if use_video else iter(())
    audio = timed(iter_audio_blocks(path, sample_rate, info.audio_path), "audio", av_offset_s) if use_audio \
        else iter(())
    for t, kind, item in heapq.merge(video, audio, key=lambda x: x[0]):
        yield kind, t, item


def check_decoded_length(info: MediaInfo, video_end: float | None, audio_end: float | None) -> None:
    """Refuse footage whose video or audio decodes to well short of the duration its header declares.

    ``None`` for a stream that was not decoded.
    """
    if not np.isfinite(info.duration):
        return
    tol = max(TRUNCATION_TOLERANCE_S, TRUNCATION_TOLERANCE_FRAC * info.duration)
    for what, end in (("video", video_end), ("audio", audio_end)):
        if end is not None and end < info.duration - tol:
            raise UserError(f"{info.path}: truncated: its {what} decodes to {end:.1f} s of the "
                            f"{info.duration:.1f} s its header declares")


def footage_windows(path: str | os.PathLike[str], spec: WindowSpec | None = None,
                    info: MediaInfo | None = None, check_truncation: bool = True,
                    modalities: tuple[str, ...] = ("video", "audio")) -> FootageWindows:
    """Decode a footage file into all its whole windows (every modality in ``modalities`` covered).

    By default both modalities, as training needs. A query by one modality (``edgeav search --mode
    video``) passes just that one: the other stream is neither required nor decoded, and its array in the
    result is empty. Raises :class:`UserError` for bad footage (a stream it needs missing, or a file whose
    decodable video or audio ends well before the duration its header declares: truncated).
    """
    spec = spec or WindowSpec()
    p = Path(path)
    use_video, use_audio = "video" in modalities, "audio" in modalities
    info = info or probe(p, require_audio=use_audio, require_video=use_video)
    if use_video and not info.has_video:
        raise UserError(f"{p}: no video stream (an audio-only file)")
    if use_audio and not info.has_audio:
        raise UserError(f"{p}: no audio stream (and no {p.stem}.wav beside it)")
    asm = WindowAssembler(spec, FrameResizer(spec.frame_width, spec.frame_height), has_video=use_video,
                          has_audio=use_audio)
    windows = []
    for kind, t, item in iter_av(p, spec.sample_rate, info, modalities=modalities):
        windows += asm.add_video_frame(t, item) if kind == "video" else asm.add_audio(t, item)
    if use_audio and not np.isfinite(asm.audio_end):
        raise UserError(f"{info.audio_path}: unreadable: no audio could be decoded")
    if use_video and not np.isfinite(asm.video_end):
        raise UserError(f"{p}: unreadable: no video frame could be decoded")
    if check_truncation:
        check_decoded_length(info, asm.video_end if use_video else None, asm.audio_end if use_audio else None)
    windows += asm.finish()
    duration = min(asm.video_end if use_video else np.inf, asm.audio_end if use_audio else np.inf)
    # Whole windows that every wanted modality covers.
    keep = [w for w in windows if not (set(w.missing) & set(modalities)) and w.t_end <= duration + 1e-6]
    n, f, s = len(keep), spec.frames_per_window, spec.samples_per_window
    t_starts = np.array([w.t_start for w in keep], dtype=np.float64)
    frames = (np.stack([w.frames for w in keep]) if n and use_video
              else np.zeros((0, f, spec.frame_height, spec.frame_width, 3), np.uint8))
    win_audio = np.stack([w.audio for w in keep]) if n and use_audio else np.zeros((0, s), np.float32)
    return FootageWindows(t_starts=t_starts, frames=frames, audio=win_audio, duration=duration)
