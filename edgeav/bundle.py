"""The self-describing model bundle: manifest, hashes, and the loader the runtime uses.

A bundle is a directory::

    manifest.json          schema "edgeav.bundle/1": preprocessing, embedding size, training summary,
                           the sha256 of every file below, optional "events" and "anomaly" sections
    audio.onnx             raw mono float32 samples [B, S] -> L2-normalised embedding [B, D]
    video.onnx             uint8 RGB frames [B, F, H, W, 3] -> L2-normalised embedding [B, D]
    audio.int8.onnx ...    optional int8 variants (``edgeav export --quantize int8``)
    events-<hash>.npz      optional event head (``edgeav fit-events``)
    anomaly-<hash>.npz     optional normal memory (``edgeav calibrate``)

Why it is strict: the edge box runs whatever sits in the directory, so :func:`load_bundle` checks
every file against its sha256, the bundle id against the hashes, and every part against the others
(input shapes against the window spec, head and memory sizes against the embedding size). Any
problem is a one-line :class:`~edgeav.errors.UserError` naming the file (exit 2).

Files that ``fit-events``/``calibrate`` add carry their content hash in their name and the manifest
is replaced atomically after them, so a crash half-way leaves the previous, still valid, bundle.

This module never imports torch.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeav import __version__
from edgeav.errors import UserError, read_json_file
from edgeav.motion import (
    HELD_FEATURES,
    SPEED_FEATURE,
    VELOCITY_FEATURE,
    SpeedHold,
    band_speeds,
    band_velocities,
    speed_bands,
)
from edgeav.preprocess import WindowSpec, pitch_shifted
from edgeav.roughness import ROUGHNESS_FEATURE, roughness, roughness_dims

if TYPE_CHECKING:  # imported lazily at run time: the heads need numpy only, but keep import cost low
    from edgeav.calibrate import AnomalyMemory
    from edgeav.heads import EventHead

SCHEMA = "edgeav.bundle/1"
MANIFEST_NAME = "manifest.json"
AUDIO_INPUT = "audio"
VIDEO_INPUT = "frames"
EMBEDDING_OUTPUT = "embedding"
# What an exported encoder gives: its embedding, the pre-projection features under it, and a summary of
# what its front end saw (log-mel statistics / motion grid); the audio model also gives its log-mel cut into
# short patches ``[B, P, D]`` (a bag of instances per window). The anomaly scorer may use any of them
# (edgeav.calibrate); bundles exported before 0.2 have the embedding only, before 0.3 no patches.
MODEL_OUTPUTS = (EMBEDDING_OUTPUT, "features", "summary", "patches")
_FEATURE_SUFFIX = {EMBEDDING_OUTPUT: "", "features": "_pre", "summary": "_summary", "patches": "_patches"}
MODALITIES = ("audio", "video")
PRECISIONS = ("fp32", "int8")
# The joint embedding the event head and the anomaly memory see; see :func:`joint_embedding`.
JOINT = "concat(audio, video)"

# Where `--models` points when the user gives none (a bundle shipped inside the package).
DEFAULT_BUNDLE_DIR = Path(__file__).resolve().parent / "data" / "bundle"


# ---------------------------------------------------------------------------------------------- helpers


def joint_embedding(audio_emb: np.ndarray, video_emb: np.ndarray) -> np.ndarray:
    """The one joint embedding of a window: ``[audio | video]``, each part L2-normalised, float32 ``[B, 2D]``.

    Fitting (``fit-events``, ``calibrate``) and the runtime both call this, so a head always sees
    the features it was fitted on. The encoders already L2-normalise; normalising again costs nothing
    and keeps the two halves on the same scale even for an int8 model whose norms drift slightly.
    Concatenation (not a sum) keeps what each modality saw separately: a silent passer-by and a car
    heard but not seen stay distinguishable.
    """
    a = _l2(np.asarray(audio_emb, dtype=np.float32))
    v = _l2(np.asarray(video_emb, dtype=np.float32))
    if a.shape != v.shape:
        raise ValueError(f"audio and video embeddings differ in shape: {a.shape} vs {v.shape}")
    return np.concatenate([a, v], axis=1)


def feature_name(modality: str, output: str) -> str:
    """A window feature's name: ``audio``/``video`` (embeddings), ``audio_pre``, ``video_summary``..."""
    return modality + _FEATURE_SUFFIX[output]


def av_disagreement(audio_emb: np.ndarray, video_emb: np.ndarray) -> np.ndarray:
    """``[B, 1]``: one minus the cosine between a window's audio and video embeddings. The encoders were
    trained to make sound and picture of one moment agree, so a sound its picture does not explain (design.md
    section 3) scores high."""
    a = _l2(np.asarray(audio_emb, dtype=np.float32))
    v = _l2(np.asarray(video_emb, dtype=np.float32))
    return (1.0 - (a * v).sum(axis=1, keepdims=True)).astype(np.float32)


# Window features computed from the two embeddings rather than read from a model output.
DERIVED_FEATURES = {"joint": joint_embedding, "av_disagreement": av_disagreement}
# Window features measured on a window's own frames or samples rather than by a model, so every bundle gives them
# whatever its models (no retraining): the speed of what moves per row band (edgeav.motion; held over consecutive
# windows of a stream; unsigned or, as velocities, rightwards and leftwards apart) and how rough the sound is
# (edgeav.roughness). By the modality whose input they measure.
SIGNAL_FEATURES = {SPEED_FEATURE: "video", VELOCITY_FEATURE: "video", ROUGHNESS_FEATURE: "audio"}


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# The manifest sections that change what the bundle does; hashed into the id with the files, so a hand
# edit of, say, the hop or a threshold is caught. Times and export measurements are left out: the same
# content exported twice gets the same id.
ID_SECTIONS = ("schema", "preprocessing", "embedding_size", "models", "events", "anomaly")


def bundle_id_for(manifest: dict[str, Any], files: dict[str, dict[str, Any]]) -> str:
    """A bundle id derived from its file hashes and behaviour sections: identical content, identical id."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}\0{files[name]['sha256']}\n".encode())
    behaviour = {k: manifest.get(k) for k in ID_SECTIONS}
    h.update(json.dumps(behaviour, sort_keys=True, separators=(",", ":")).encode())
    return "b-" + h.hexdigest()[:16]


def utc_now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def referenced_files(manifest: dict[str, Any]) -> list[str]:
    """Every bundle file a manifest's sections point at (models, int8 models, head, memory)."""
    names: list[str] = []
    for section in (manifest.get("models") or {}).values():
        if isinstance(section, dict):
            names.extend(str(v) for k, v in section.items() if k in ("fp32", "int8") and v)
    if isinstance(manifest.get("events"), dict) and manifest["events"].get("head"):
        names.append(str(manifest["events"]["head"]))
    if isinstance(manifest.get("anomaly"), dict) and manifest["anomaly"].get("memory"):
        names.append(str(manifest["anomaly"]["memory"]))
    return sorted(set(names))


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the daemon's own user must read the bundle
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def write_manifest(bundle_dir: str | Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Hash every referenced file, derive the bundle id, and replace ``manifest.json`` atomically.

    Returns the manifest as written. Files no longer referenced are left for :func:`prune_unreferenced`.
    """
    d = Path(bundle_dir)
    out = dict(manifest)
    out["schema"] = SCHEMA
    files: dict[str, dict[str, Any]] = {}
    for name in referenced_files(out):
        p = d / name
        if not p.is_file():
            raise UserError(f"{p}: bundle file referenced by the manifest does not exist")
        files[name] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    out["files"] = files
    out["bundle_id"] = bundle_id_for(out, files)
    out.setdefault("created", utc_now_iso())
    out["updated"] = utc_now_iso()
    out.setdefault("edgeav_version", __version__)
    _atomic_write_bytes(d / MANIFEST_NAME, (json.dumps(out, indent=1, sort_keys=False) + "\n").encode())
    return out


def prune_unreferenced(bundle_dir: str | Path, manifest: dict[str, Any], prefixes: Iterable[str]) -> None:
    """Delete files named ``<prefix>-*.npz`` that the manifest no longer references (old heads, memories)."""
    d = Path(bundle_dir)
    keep = set(referenced_files(manifest))
    for prefix in prefixes:
        for p in d.glob(f"{prefix}-*.npz"):
            if p.name not in keep:
                p.unlink(missing_ok=True)


def add_content_named_file(bundle_dir: str | Path, prefix: str, writer: Any) -> str:
    """Write a new bundle file through ``writer(path)`` and name it ``<prefix>-<sha256[:12]>.npz``.

    The content hash in the name means a new head never overwrites the file the current manifest
    points at: until the manifest is replaced, the bundle stays valid.
    """
    d = Path(bundle_dir)
    fd, tmp = tempfile.mkstemp(prefix=f".{prefix}.", suffix=".npz", dir=d)
    os.close(fd)
    try:
        writer(Path(tmp))
        os.chmod(tmp, 0o644)
        name = f"{prefix}-{sha256_file(tmp)[:12]}.npz"
        os.replace(tmp, d / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return name


def replace_part(bundle_dir: str | Path, manifest: dict[str, Any], key: str, writer: Any,
                 section: dict[str, Any], file_field: str) -> dict[str, Any]:
    """Add a fitted part (event head, anomaly memory) to a bundle in the crash-safe order.

    The part is written under a content-hashed name, the manifest's ``key`` section becomes ``section``
    with ``file_field`` naming that file, the manifest is replaced atomically, and only then is the
    part it replaced deleted. Returns the manifest as written.
    """
    name = add_content_named_file(bundle_dir, key, writer)
    updated = dict(manifest)
    updated[key] = {file_field: name, **section}
    written = write_manifest(bundle_dir, updated)
    prune_unreferenced(bundle_dir, written, [key])
    return written


# ---------------------------------------------------------------------------------------------- reading


def _need(cond: bool, where: str, message: str) -> None:
    if not cond:
        raise UserError(f"{where}: {message}")


def read_manifest(bundle_dir: str | Path) -> dict[str, Any]:
    """Parse ``manifest.json`` and check its schema and required fields (not the files: see :func:`verify_files`)."""
    d = Path(bundle_dir)
    if not d.exists():
        raise UserError(f"{d}: model bundle directory does not exist")
    if not d.is_dir():
        raise UserError(f"{d}: a model bundle is a directory (with manifest.json), not a file")
    p = d / MANIFEST_NAME
    data = read_json_file(p, "bundle manifest")
    _need(isinstance(data, dict), str(p), "bundle manifest must be a JSON object")
    schema = data.get("schema")
    _need(schema == SCHEMA, f"{p}: schema", f"{schema!r} is not supported (expected {SCHEMA!r})")
    emb = data.get("embedding_size")
    _need(isinstance(emb, int) and emb > 0, f"{p}: embedding_size", f"{emb!r} is not a positive integer")
    pre = data.get("preprocessing")
    _need(isinstance(pre, dict), f"{p}: preprocessing", "missing or not an object")
    window_spec_from_manifest(data, where=str(p))
    models = data.get("models")
    _need(isinstance(models, dict) and all(isinstance(models.get(m), dict) and models[m].get("fp32")
                                           for m in ("audio", "video")),
          f"{p}: models", "needs audio.fp32 and video.fp32 model files")
    files = data.get("files")
    _need(isinstance(files, dict) and all(isinstance(v, dict) and isinstance(v.get("sha256"), str)
                                          for v in files.values()),
          f"{p}: files", "missing, or an entry without sha256")
    return data


def window_spec_from_manifest(manifest: dict[str, Any], where: str = MANIFEST_NAME) -> WindowSpec:
    pre = manifest.get("preprocessing") or {}
    fields = ("window_s", "hop_s", "frames_per_window", "frame_width", "frame_height", "sample_rate")
    missing = [f for f in fields if f not in pre]
    if missing:
        raise UserError(f"{where}: preprocessing: missing {', '.join(missing)}")
    if pre.get("channel_order", "RGB") != "RGB":
        raise UserError(f"{where}: preprocessing.channel_order: {pre['channel_order']!r} is not supported (RGB)")
    try:
        return WindowSpec(**{f: pre[f] for f in fields})
    except (TypeError, ValueError) as exc:
        raise UserError(f"{where}: preprocessing: {exc}") from None


def verify_files(bundle_dir: str | Path, manifest: dict[str, Any]) -> None:
    """Every referenced file exists, is listed, and matches its sha256; the bundle id matches the hashes."""
    d = Path(bundle_dir)
    files: dict[str, dict[str, Any]] = manifest["files"]
    for name in referenced_files(manifest):
        if name not in files:
            raise UserError(f"{d / name}: used by the manifest but has no sha256 in its files list")
    for name, entry in sorted(files.items()):
        p = d / name
        if "/" in name or name.startswith("."):
            raise UserError(f"{d / MANIFEST_NAME}: files: {name!r} is not a plain file name")
        if not p.is_file():
            raise UserError(f"{p}: bundle file is missing (listed in {MANIFEST_NAME})")
        digest = sha256_file(p)
        if digest != entry["sha256"]:
            raise UserError(
                f"{p}: sha256 {digest[:12]}… does not match the manifest's {entry['sha256'][:12]}… "
                f"(the file was changed, or {MANIFEST_NAME} belongs to another bundle)")
    expected = bundle_id_for(manifest, files)
    if manifest.get("bundle_id") != expected:
        raise UserError(f"{d / MANIFEST_NAME}: bundle_id {manifest.get('bundle_id')!r} does not match its files and "
                        f"settings ({expected}): the manifest was edited by hand")


# ---------------------------------------------------------------------------------------------- the bundle


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # Bounded threads: one box runs several cameras; each session must not grab every core.
    opts.intra_op_num_threads = max(1, int(threads))
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: onnxruntime cannot load this model: {first}") from None


@dataclass
class Bundle:
    """A loaded, verified bundle: ONNX sessions, window spec, and the optional event head and anomaly memory."""

    path: Path
    manifest: dict[str, Any]
    precision: str
    window_spec: WindowSpec
    embedding_size: int
    audio_session: Any
    video_session: Any
    event_head: EventHead | None = None
    anomaly: AnomalyMemory | None = None

    @property
    def bundle_id(self) -> str:
        return str(self.manifest["bundle_id"])

    def close(self) -> None:
        """Drop the ONNX sessions and the memory their arenas hold (a few hundred MB after embedding an hour of
        footage): for a caller that has its features and needs only the manifest from here on."""
        self.audio_session = self.video_session = None

    @property
    def joint_size(self) -> int:
        return 2 * self.embedding_size

    @property
    def features_available(self) -> tuple[str, ...]:
        """Every window feature this bundle's models give (see :func:`feature_name`), and the derived ones."""
        names = [feature_name(m, o) for m in MODALITIES for o in MODEL_OUTPUTS
                 if o in self._outputs(m)]
        return (*names, *DERIVED_FEATURES, *SIGNAL_FEATURES)

    @property
    def feature_dims(self) -> dict[str, int]:
        """The width of every feature the bundle gives (from the models' output shapes; a patch's width for
        the bag features)."""
        bands = speed_bands(self.window_spec.frame_height)
        dims = {"joint": self.joint_size, "av_disagreement": 1, SPEED_FEATURE: bands, VELOCITY_FEATURE: 2 * bands,
                ROUGHNESS_FEATURE: roughness_dims()}
        for m in MODALITIES:
            for o in self._session(m).get_outputs():
                if o.name in MODEL_OUTPUTS and len(o.shape) in (2, 3) and isinstance(o.shape[-1], int):
                    dims[feature_name(m, o.name)] = int(o.shape[-1])
        return dims

    def _session(self, modality: str) -> Any:
        return self.audio_session if modality == "audio" else self.video_session

    def _outputs(self, modality: str) -> tuple[str, ...]:
        have = {o.name for o in self._session(modality).get_outputs()}
        return tuple(o for o in MODEL_OUTPUTS if o in have)

    def outputs_for(self, modality: str, names: Sequence[str]) -> list[str]:
        """The model outputs of ``modality`` that the window features ``names`` need (the embedding always)."""
        return [o for o in MODEL_OUTPUTS if o == EMBEDDING_OUTPUT or feature_name(modality, o) in names]

    def run(self, modality: str, x: np.ndarray, outputs: Sequence[str]) -> list[np.ndarray]:
        """:meth:`run_audio` or :meth:`run_video`."""
        return self.run_audio(x, outputs) if modality == "audio" else self.run_video(x, outputs)

    def run_audio(self, audio: np.ndarray, outputs: Sequence[str] = (EMBEDDING_OUTPUT,)) -> list[np.ndarray]:
        """Mono float32 windows ``[B, S]`` (S = samples per window) -> the named model outputs."""
        a = np.ascontiguousarray(audio, dtype=np.float32)
        s = self.window_spec.samples_per_window
        if a.ndim != 2 or a.shape[1] != s:
            raise ValueError(f"audio windows must be [B, {s}] float32, got shape {a.shape}")
        return list(self.audio_session.run(list(outputs), {AUDIO_INPUT: a}))

    def run_video(self, frames: np.ndarray, outputs: Sequence[str] = (EMBEDDING_OUTPUT,)) -> list[np.ndarray]:
        """uint8 RGB windows ``[B, F, H, W, 3]`` -> the named model outputs."""
        ws = self.window_spec
        want = (ws.frames_per_window, ws.frame_height, ws.frame_width, 3)
        if frames.ndim != 5 or tuple(frames.shape[1:]) != want or frames.dtype != np.uint8:
            raise ValueError(f"video windows must be uint8 [B, {', '.join(map(str, want))}], "
                             f"got {frames.dtype} {frames.shape}")
        return list(self.video_session.run(list(outputs), {VIDEO_INPUT: np.ascontiguousarray(frames)}))

    def pitch_variants(self, track: np.ndarray, t_starts: np.ndarray, factors: Sequence[float],
                       names: Sequence[str], batch: int = 64, bag_stride: int = 1) -> dict[str, np.ndarray]:
        """The audio features ``names`` (those of them the audio model gives) of the windows starting at
        ``t_starts`` (seconds) in the mono ``track``, pitch-shifted by each of ``factors``
        (:func:`edgeav.preprocess.pitch_shifted`): ``[len(factors), len(t_starts), ...]`` by name. One model pass
        per factor gives them all.

        ``bag_stride``: a bag feature's copy (``[B, P, D]``) keeps every ``bag_stride``-th instance of each window,
        a different one per factor (``[A, B, P // bag_stride, D]``), for a memory that samples its instances anyway
        (:func:`edgeav.calibrate.thinned_copy`)."""
        from edgeav.calibrate import thinned_copy  # calibrate only: replay's start-up does not import it

        ws = self.window_spec
        outs = [o for o in self.outputs_for("audio", names) if feature_name("audio", o) in names]
        starts = np.round(np.asarray(t_starts) * ws.sample_rate).astype(np.int64)
        got: dict[str, list[np.ndarray]] = {o: [] for o in outs}
        for factor in factors:
            x = pitch_shifted(track, starts, ws.samples_per_window, factor)
            runs = [self.run("audio", x[j:j + batch], outs) for j in range(0, len(x), batch)]
            for k, o in enumerate(outs):
                got[o].append(thinned_copy(np.concatenate([r[k] for r in runs]), len(got[o]), bag_stride))
        return {feature_name("audio", o): np.stack(v) for o, v in got.items() if v}

    def embed_audio(self, audio: np.ndarray) -> np.ndarray:
        """Mono float32 windows ``[B, S]`` -> embeddings ``[B, D]``."""
        return self.run_audio(audio)[0]

    def embed_video(self, frames: np.ndarray) -> np.ndarray:
        """uint8 RGB windows ``[B, F, H, W, 3]`` -> embeddings ``[B, D]``."""
        return self.run_video(frames)[0]

    def measure(self, name: str, x: np.ndarray) -> np.ndarray:
        """The signal feature ``name`` (:data:`SIGNAL_FEATURES`) of a batch of its modality's windows, as the
        models take them; the speeds and velocities unheld."""
        if name == SPEED_FEATURE:
            return band_speeds(x)
        if name == VELOCITY_FEATURE:
            return band_velocities(x)
        if name == ROUGHNESS_FEATURE:
            return roughness(x, self.window_spec.sample_rate)
        raise ValueError(f"{name!r} is not a signal feature ({', '.join(SIGNAL_FEATURES)})")

    def embed(self, audio: np.ndarray, frames: np.ndarray, batch: int = 64) -> np.ndarray:
        """Joint embeddings ``[B, 2D]`` (see :func:`joint_embedding`), in batches of at most ``batch``."""
        return self.features(audio, frames, ("joint",), batch=batch)["joint"]

    def features(self, audio: np.ndarray, frames: np.ndarray, names: Sequence[str] | None = None,
                 batch: int = 64, t_starts: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Named window features (default: every one available) of windows that have both modalities.

        ``video_speed`` and ``video_velocity`` are held over consecutive windows (:class:`edgeav.motion.SpeedHold`):
        give one stream's windows in time order, with their ``t_starts`` (default: one after the other on the hop
        grid)."""
        want = tuple(self.features_available if names is None else names)
        unknown = [n for n in want if n not in self.features_available]
        if unknown:
            raise UserError(f"{self.path}: bundle gives no {', '.join(unknown)} feature (it gives "
                            f"{', '.join(self.features_available)}; re-export it with this version for more)")
        parts: dict[str, list[np.ndarray]] = {n: [] for n in want}
        for i in range(0, len(audio), batch):
            got: dict[str, np.ndarray] = {}
            for m, x in (("audio", audio), ("video", frames)):
                outs = self.outputs_for(m, want)
                got.update(zip((feature_name(m, o) for o in outs), self.run(m, x[i:i + batch], outs), strict=True))
            for n in want:
                if n in SIGNAL_FEATURES:
                    parts[n].append(self.measure(n, (audio if SIGNAL_FEATURES[n] == "audio" else frames)[i:i + batch]))
                else:
                    parts[n].append(DERIVED_FEATURES[n](got["audio"], got["video"]) if n in DERIVED_FEATURES
                                    else got[n])
        if not len(audio):
            return {n: np.zeros((0, self.feature_dims.get(n, 0)), np.float32) for n in want}
        out = {n: np.concatenate(v).astype(np.float32, copy=False) for n, v in parts.items()}
        hop = self.window_spec.hop_s
        for name in HELD_FEATURES:
            if name in out:
                t = np.arange(len(out[name])) * hop if t_starts is None else t_starts
                out[name] = SpeedHold(hop).apply(t, out[name])
        return out


def _check_session_shapes(bundle_dir: Path, name: str, session: Any, input_name: str, want: tuple[int, ...],
                          want_type: str, emb: int) -> None:
    inputs = {i.name: i for i in session.get_inputs()}
    where = f"{bundle_dir / name}"
    if input_name not in inputs:
        raise UserError(f"{where}: model has no input {input_name!r} (has {', '.join(inputs)})")
    inp = inputs[input_name]
    if inp.type != want_type:
        raise UserError(f"{where}: input {input_name!r} is {inp.type}, expected {want_type}")
    shape = list(inp.shape)
    fits = len(shape) == len(want) + 1 and all(
        not isinstance(got, int) or got == w for got, w in zip(shape[1:], want, strict=True))
    if not fits:
        raise UserError(f"{where}: input shape {shape} does not fit the manifest's preprocessing "
                        f"[batch, {', '.join(map(str, want))}]")
    if isinstance(shape[0], int) and shape[0] != -1:
        raise UserError(f"{where}: the batch axis is fixed at {shape[0]}; bundles need a dynamic batch axis")
    outputs = {o.name: o for o in session.get_outputs()}
    if EMBEDDING_OUTPUT not in outputs:
        raise UserError(f"{where}: model has no output {EMBEDDING_OUTPUT!r}")
    out_shape = list(outputs[EMBEDDING_OUTPUT].shape)
    if len(out_shape) != 2 or (isinstance(out_shape[1], int) and out_shape[1] != emb):
        raise UserError(f"{where}: embedding shape {out_shape} does not match the manifest's embedding_size {emb}")


def resolve_bundle_dir(models: str | Path | None) -> Path:
    """``--models`` or, when absent, the bundle shipped inside the package."""
    if models:
        return Path(models)
    if (DEFAULT_BUNDLE_DIR / MANIFEST_NAME).is_file():
        return DEFAULT_BUNDLE_DIR
    raise UserError("no --models BUNDLE_DIR given and no default bundle is installed in the package "
                    f"({DEFAULT_BUNDLE_DIR})")


def writable_bundle_dir(models: str | Path | None, command: str) -> Path:
    """The bundle ``fit-events``/``calibrate`` will modify: given explicitly, and writable.

    The default bundle inside the package is shared by every camera on the box (and read-only
    when installed system-wide), so it is never modified in place: the user copies it first.
    """
    if not models:
        raise UserError(f"{command} writes into a bundle: give --models BUNDLE_DIR (to start from the default, "
                        f"copy it first: cp -r {DEFAULT_BUNDLE_DIR} BUNDLE_DIR)")
    d = Path(models)
    read_manifest(d)  # exists, is a bundle
    if not os.access(d, os.W_OK):
        raise UserError(f"{d}: bundle directory is not writable by this user; {command} stores its result there")
    return d


def load_bundle(path: str | Path | None = None, *, threads: int = 1, precision: str | None = None,
                with_heads: bool = True) -> Bundle:
    """Load and verify a bundle (the package's default when ``path`` is None).

    ``precision``: ``"fp32"``, ``"int8"`` or None for the manifest's ``models.preferred`` (the int8
    models when ``export --quantize int8`` accepted them). ``threads`` bounds onnxruntime's threads
    per session. ``with_heads=False`` skips the event head and anomaly memory (used while refitting them).
    """
    d = resolve_bundle_dir(path)
    manifest = read_manifest(d)
    verify_files(d, manifest)
    ws = window_spec_from_manifest(manifest, where=str(d / MANIFEST_NAME))
    emb = int(manifest["embedding_size"])
    models = manifest["models"]
    prec = precision or str(models.get("preferred", "fp32"))
    if prec not in PRECISIONS:
        raise UserError(f"{d / MANIFEST_NAME}: models.preferred: {prec!r} is not one of {', '.join(PRECISIONS)}")
    if not (models["audio"].get(prec) and models["video"].get(prec)):
        raise UserError(f"{d}: bundle has no {prec} models (export it with --quantize int8 for int8)")
    audio_file, video_file = str(models["audio"][prec]), str(models["video"][prec])
    audio = _session(d / audio_file, threads)
    video = _session(d / video_file, threads)
    _check_session_shapes(d, audio_file, audio, AUDIO_INPUT, (ws.samples_per_window,), "tensor(float)", emb)
    _check_session_shapes(d, video_file, video, VIDEO_INPUT,
                          (ws.frames_per_window, ws.frame_height, ws.frame_width, 3), "tensor(uint8)", emb)
    bundle = Bundle(path=d, manifest=manifest, precision=prec, window_spec=ws, embedding_size=emb,
                    audio_session=audio, video_session=video)
    if with_heads:
        if isinstance(manifest.get("events"), dict):
            from edgeav.heads import EventHead

            bundle.event_head = EventHead.from_bundle(d, manifest["events"], joint_size=bundle.joint_size)
        if isinstance(manifest.get("anomaly"), dict):
            from edgeav.calibrate import AnomalyMemory

            bundle.anomaly = AnomalyMemory.from_bundle(d, manifest["anomaly"], dims=bundle.feature_dims)
    return bundle


@dataclass
class EmbeddedFootage:
    """Windows of one or more footage files, embedded, with their sidecar labels where there are sidecars."""

    files: list[Path]
    t_starts: np.ndarray  # [N] seconds from each file's start
    file_index: np.ndarray  # [N] which of ``files`` the window comes from
    features: dict[str, np.ndarray]  # every feature the bundle gives (see Bundle.features), [N, ...] each
    labels: list[str]  # [N] segment label (``background`` where a file has no sidecar)
    anomalous: np.ndarray  # [N] bool: the sidecar marks the window anomalous
    # The audio features (``audio*``) of the same windows pitch-shifted, ``[A, N, ...]`` each, one row of A per
    # factor given to embed_footage (empty without): what calibrate adds to the normal memory.
    variants: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def joint(self) -> np.ndarray:
        """``[N, 2D]`` joint embeddings (see :func:`joint_embedding`)."""
        return self.features["joint"]


def embed_footage(bundle: Bundle, items: Iterable[str | Path], require_labels: bool,
                  batch: int = 64, pitch_factors: Sequence[float] = (),
                  variant_features: Sequence[str] | None = None, bag_stride: int = 1) -> EmbeddedFootage:
    """Expand FOOTAGE arguments (files, directories), decode each into the bundle's windows and embed them.

    Sidecars are read (and, with ``require_labels``, demanded) before anything is decoded, so a
    missing or bad sidecar fails fast with a one-line error naming it. ``pitch_factors``: also embed every
    window's audio pitch-shifted by each factor (:func:`edgeav.preprocess.pitch_shifted`; ``variants``), for
    the audio features among ``variant_features`` (default: all of them), bag features' copies thinned by
    ``bag_stride`` (see :meth:`Bundle.pitch_variants`).
    """
    from edgeav import media  # PyAV decoding; loading a bundle alone does not need it
    from edgeav.labels import BACKGROUND, Labels, load_labels, sidecar_path

    files = media.find_footage([str(i) for i in items])
    if not files:
        raise UserError(f"no footage files in {', '.join(map(str, items))}")
    sidecars: list[Labels | None] = []
    for f in files:
        sc = sidecar_path(f)
        if sc.is_file():
            sidecars.append(load_labels(sc))
        elif require_labels:
            raise UserError(f"{sc}: labels sidecar not found for footage {f}")
        else:
            sidecars.append(None)
    ws = bundle.window_spec
    t_all, idx, feats, labels, anomalous = [], [], [], [], []
    audio_names = [n for n in bundle.features_available if n.startswith("audio")
                   and (variant_features is None or n in variant_features)]
    variants: dict[str, list[np.ndarray]] = {}  # by feature, per file: [factors, windows, ...]
    for i, (f, lab) in enumerate(zip(files, sidecars, strict=True)):
        info = media.probe(f)
        w = media.footage_windows(f, ws, info=info)
        t_all.append(w.t_starts)
        idx.append(np.full(len(w), i, dtype=np.int64))
        feats.append(bundle.features(w.audio, w.frames, batch=batch, t_starts=w.t_starts))
        t_starts = w.t_starts
        del w  # this file's decoded frames and audio go before its pitch-shifted copies and the next file's
        if pitch_factors and audio_names:
            track = media.decode_audio(f, ws.sample_rate, info.audio_path)
            for name, v in bundle.pitch_variants(track, t_starts, pitch_factors, audio_names, batch,
                                                         bag_stride).items():
                variants.setdefault(name, []).append(v)
            del track
        for t in t_starts:
            t0, t1 = float(t), float(t) + ws.window_s
            labels.append(lab.segment_label(t0, t1) if lab else BACKGROUND)
            anomalous.append(bool(lab and lab.segment_is_anomaly(t0, t1)))
    # One feature at a time, each file's pieces freed as they are joined: the pieces and the joined arrays of
    # every feature never coexist (with pitch-shifted copies they are several times the footage's features).
    joined = {n: _join([f.pop(n) for f in feats], axis=0) for n in list(feats[0])}
    return EmbeddedFootage(files=files, t_starts=np.concatenate(t_all), file_index=np.concatenate(idx),
                           features=joined, labels=labels, anomalous=np.array(anomalous, dtype=bool),
                           variants={name: _join(variants.pop(name), axis=1) for name in list(variants)})


def _join(pieces: list[np.ndarray], axis: int) -> np.ndarray:
    """``np.concatenate(pieces, axis)``, emptying ``pieces`` (the caller's list) so they can be freed."""
    out = np.concatenate(pieces, axis=axis)
    pieces.clear()
    return out
