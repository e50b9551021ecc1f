"""``edgeav export RUN_DIR_OR_CHECKPOINT --out BUNDLE_DIR [--quantize int8]``: encoders -> ONNX bundle.

What an export guarantees (issue #6):

- ``audio.onnx`` takes raw mono float32 samples ``[B, S]`` (log-mel front end inside), ``video.onnx``
  takes uint8 RGB frames ``[B, F, H, W, 3]`` (normalisation inside); opset 18, dynamic batch axis.
- Parity: torch and onnxruntime agree within 1e-4 (max absolute difference of the embeddings) on
  random windows and on real windows decoded from footage, at batch 1 and at a larger batch;
  otherwise the export fails and says by how much. Nothing is written to BUNDLE_DIR then: the bundle
  is assembled in a temporary directory beside it and renamed into place only when complete.
- ``--quantize int8``: int8 models are added when their embeddings agree with fp32 (mean cosine
  >= 0.99); the agreement and the measured speed-up are printed and stored in the manifest.

Importing this module does not import torch (the CLI imports it to register the command).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from edgeav.errors import RuntimeFailure, UserError

log = logging.getLogger("edgeav.export")

OPSET = 18
PARITY_TOL = 1e-4
REAL_WINDOWS = 12
PREFER_INT8_SPEEDUP = 1.2


# ---------------------------------------------------------------------------------------------- windows


def random_windows(spec: Any, n: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random audio (noise, a tone, silence, a clipped burst) and random frames of the window's shape."""
    rng = np.random.default_rng(seed)
    s = spec.samples_per_window
    t = np.arange(s, dtype=np.float32) / spec.sample_rate
    audio = (0.1 * rng.standard_normal((n, s))).astype(np.float32)
    audio[1 % n] = 0.5 * np.sin(2 * np.pi * 440.0 * t)
    audio[2 % n] = 0.0
    audio[3 % n] = np.clip(3.0 * rng.standard_normal(s), -1, 1)
    frames = rng.integers(0, 256, (n, spec.frames_per_window, spec.frame_height, spec.frame_width, 3), dtype=np.uint8)
    frames[2 % n] = 0
    return audio, frames


def real_windows(spec: Any, footage: list[Path], n: int = REAL_WINDOWS) -> tuple[np.ndarray, np.ndarray, str]:
    """Up to ``n`` windows spread over the given footage, decoded by the runtime's own decoder."""
    from edgeav import media

    audio, frames = [], []
    per_file = max(1, n // max(len(footage), 1))
    for f in footage:
        w = media.footage_windows(f, spec)
        if len(w) == 0:
            continue
        pick = np.unique(np.linspace(0, len(w) - 1, min(per_file, len(w))).round().astype(int))
        audio.append(w.audio[pick])
        frames.append(w.frames[pick])
    if not audio:
        raise UserError(f"parity footage {', '.join(map(str, footage))}: no whole window could be decoded")
    return np.concatenate(audio)[:n], np.concatenate(frames)[:n], ", ".join(str(f) for f in footage)


def _parity_footage(given: list[str], summary: dict[str, Any], tmp: Path, spec: Any) -> list[Path]:
    """Footage for the real-window parity check: given, else the training footage, else a short synth clip."""
    from edgeav import media

    if given:
        return media.find_footage(given)
    listed = summary.get("files") or summary.get("footage") or []
    if isinstance(listed, (list, tuple)):
        existing = [Path(p) for p in listed if isinstance(p, str) and Path(p).is_file()]
        if existing:
            return existing[:2]
    try:
        from edgeav.synth import synthesize
    except ImportError:
        raise UserError("no footage for the parity check on real windows: pass --parity-footage FILE") from None
    clip = tmp / "parity.mp4"
    synthesize(clip, seconds=6.0, seed=1234, profile="street", sample_rate=spec.sample_rate)
    return [clip]


# ---------------------------------------------------------------------------------------------- export


def _export_one(module: Any, example: Any, path: Path, input_name: str) -> None:
    """One encoder as ONNX with the outputs the runtime reads (:data:`edgeav.bundle.MODEL_OUTPUTS`)."""
    import torch

    from edgeav.bundle import MODEL_OUTPUTS

    class AllOutputs(torch.nn.Module):
        def __init__(self, encoder: Any) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, x: Any) -> Any:
            return self.encoder.all_outputs(x)

    with torch.no_grad():  # the audio model gives one output more than the video model (its patches)
        names = list(MODEL_OUTPUTS[:len(module.all_outputs(example))])
    batch = torch.export.Dim("batch", min=1, max=1024)
    captured = io.StringIO()
    # The exporter narrates its steps on stdout and logs about things that are fine here; keep our output clean.
    with warnings.catch_warnings(), contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured), \
            _quiet_loggers("torch.onnx", "torch.export", "onnxscript", "onnx_ir"):
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(AllOutputs(module).eval(), (example,), str(path), input_names=[input_name],
                              output_names=names,
                              opset_version=OPSET, dynamic_shapes=({0: batch},), dynamo=True, external_data=False,
                              verbose=False)
        except Exception as exc:
            log.debug("exporter output:\n%s", captured.getvalue())
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise RuntimeFailure(f"ONNX export of {path.name} failed: {first}") from exc
    log.debug("exporter output:\n%s", captured.getvalue())


def _export_video(video: Any, example: Any, path: Path, windows: dict[str, np.ndarray]) -> dict[str, Any]:
    """The video encoder as ONNX, its input normalisation folded into the first convolution (export.fold: half
    the model's time in onnxruntime) when the folded model's every output agrees with the unfolded torch
    model's within FOLD_TOL on ``windows``; otherwise the unfolded model. Returns the manifest's record."""
    from edgeav.bundle import VIDEO_INPUT
    from export.fold import FOLD_TOL, FoldedVideo, can_fold

    if not can_fold(video):
        _export_one(video, example, path, VIDEO_INPUT)
        return {"folded": False, "why": "the first layer's layout is not one export.fold knows"}
    _export_one(FoldedVideo(video).eval(), example, path, VIDEO_INPUT)
    diff = _all_outputs_difference(video, path, windows)
    if diff <= FOLD_TOL:
        return {"folded": True, "max_abs_diff": diff, "tolerance": FOLD_TOL}
    log.warning("video model: folding the input normalisation changes an output by %.3g (> %g): exported "
                "unfolded", diff, FOLD_TOL)
    _export_one(video, example, path, VIDEO_INPUT)
    return {"folded": False, "why": f"outputs differed by {diff:.3g} folded (tolerance {FOLD_TOL:g})"}


def _all_outputs_difference(module: Any, path: Path, windows: dict[str, np.ndarray]) -> float:
    """Largest absolute difference between the torch module's ``all_outputs`` and the ONNX model at ``path``, over
    every output and window set (each at batch 1 and whole)."""
    import onnxruntime as ort
    import torch

    from edgeav.bundle import VIDEO_INPUT

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    worst = 0.0
    for x in windows.values():
        for batch in (x[:1], x):
            with torch.no_grad():
                ref = module.all_outputs(torch.from_numpy(np.ascontiguousarray(batch)))
            got = session.run(None, {VIDEO_INPUT: np.ascontiguousarray(batch)})
            for r, g in zip(ref, got, strict=True):
                worst = max(worst, float(np.abs(r.numpy() - g).max()))
    return worst if np.isfinite(worst) else float("inf")


@contextlib.contextmanager
def _quiet_loggers(*names: str) -> Any:
    saved = {n: logging.getLogger(n).level for n in names}
    try:
        for n in names:
            logging.getLogger(n).setLevel(logging.ERROR)
        yield
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)


def _torch_embed(module: Any, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return module(torch.from_numpy(np.ascontiguousarray(x))).numpy()


def _parity(name: str, module: Any, session_run: Any, windows: dict[str, np.ndarray]) -> dict[str, Any]:
    """Max abs difference torch vs onnxruntime per window set, at batch 1 (first window) and full batch."""
    out: dict[str, Any] = {}
    worst = 0.0
    for kind, x in windows.items():
        ref = _torch_embed(module, x)
        full = session_run(x)
        one = session_run(x[:1])
        diff = max(float(np.abs(ref - full).max()), float(np.abs(ref[:1] - one).max()))
        out[f"{kind}_max_abs_diff"] = diff
        out[f"{kind}_windows"] = len(x)
        worst = max(worst, diff)
    out["max_abs_diff"] = worst
    if not np.isfinite(worst) or worst > PARITY_TOL:
        raise RuntimeFailure(f"export parity failed: {name} model differs from torch by {worst:.3g} "
                             f"(max abs, tolerance {PARITY_TOL:g}); no bundle written")
    return out


def _finalise(tmp: Path, out: Path, force: bool) -> None:
    """Move the finished bundle into place; an existing bundle is replaced only with ``force``."""
    if out.exists():
        if not force:
            raise UserError(f"{out}: already exists; pass --force to replace it")
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
    else:
        os.replace(tmp, out)


def export_encoders(audio: Any, video: Any, params: dict[str, Any], summary: dict[str, Any], out: str | Path, *,
                    quantize: str | None = None, parity_footage: list[str] | None = None, force: bool = False,
                    source: str | None = None) -> dict[str, Any]:
    """Export two torch encoders into the bundle ``out``; returns the manifest as written.

    Raises RuntimeFailure when parity fails (no bundle written) or when int8 is refused (the fp32
    bundle is written and complete; the message says so).
    """
    import onnxruntime
    import torch

    from edgeav import __version__
    from edgeav.bundle import AUDIO_INPUT, MANIFEST_NAME, VIDEO_INPUT, load_bundle, utc_now_iso, write_manifest
    from export.quantize import MIN_AGREEMENT, cosine_agreement, quantize_model
    from train.models import window_spec

    out = Path(out)
    if out.exists() and not force and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: already exists; pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    spec = window_spec(params)
    audio.eval()
    video.eval()
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        bundle_tmp = work / "bundle"
        bundle_tmp.mkdir()
        a_ex = torch.zeros(2, spec.samples_per_window, dtype=torch.float32)
        v_ex = torch.zeros(2, spec.frames_per_window, spec.frame_height, spec.frame_width, 3, dtype=torch.uint8)
        ra, rf = random_windows(spec)
        pa, pf, pdesc = real_windows(spec, _parity_footage(parity_footage or [], summary, work, spec))
        t0 = time.perf_counter()
        _export_one(audio, a_ex, bundle_tmp / "audio.onnx", AUDIO_INPUT)
        # Flat pictures too (a covered lens, a black night): where rounding differences grow most.
        flat = np.stack([np.full(rf.shape[1:], v, np.uint8) for v in (0, 128, 255)])
        fold = _export_video(video, v_ex, bundle_tmp / "video.onnx", {"random": rf, "real": pf, "flat": flat})
        export_s = time.perf_counter() - t0
        emb = int(_torch_embed(audio, a_ex.numpy()).shape[1])
        manifest: dict[str, Any] = {
            "schema": "edgeav.bundle/1",
            "created": utc_now_iso(),
            "edgeav_version": __version__,
            "preprocessing": {
                "sample_rate": spec.sample_rate, "window_s": spec.window_s, "hop_s": spec.hop_s,
                "frames_per_window": spec.frames_per_window, "frame_width": spec.frame_width,
                "frame_height": spec.frame_height, "channel_order": "RGB",
                "frame_times": "centres of frames_per_window equal slices of the window",
                "audio_input": "mono float32 in [-1, 1], samples_per_window samples",
                "video_input": "uint8 [B, F, H, W, 3] from edgeav.preprocess.FrameResizer",
                "audio_frontend": audio.frontend_params() if hasattr(audio, "frontend_params") else {},
            },
            "embedding_size": emb,
            "joint_embedding": "concat(l2norm(audio), l2norm(video)); edgeav.bundle.joint_embedding",
            "models": {
                "audio": {"fp32": "audio.onnx", "input": AUDIO_INPUT, "output": "embedding", "opset": OPSET,
                          "parameters": int(sum(p.numel() for p in audio.parameters()))},
                "video": {"fp32": "video.onnx", "input": VIDEO_INPUT, "output": "embedding", "opset": OPSET,
                          "parameters": int(sum(p.numel() for p in video.parameters())),
                          "input_normalisation": fold},
                "preferred": "fp32",
            },
            "architecture": params,
            "training": summary,
            "export": {"source": source, "torch_version": torch.__version__,
                       "onnxruntime_version": onnxruntime.__version__, "export_seconds": round(export_s, 2)},
        }
        write_manifest(bundle_tmp, manifest)
        bundle = load_bundle(bundle_tmp, threads=1, precision="fp32", with_heads=False)
        parity = {
            "tolerance": PARITY_TOL,
            "audio": _parity("audio", audio, bundle.embed_audio, {"random": ra, "real": pa}),
            "video": _parity("video", video, bundle.embed_video, {"random": rf, "real": pf}),
            "real_footage": pdesc,
        }
        manifest["export"]["parity"] = parity
        refused: str | None = None
        if quantize == "int8":
            from export.bench import time_per_window

            for m in ("audio", "video"):
                quantize_model(bundle_tmp / f"{m}.onnx", bundle_tmp / f"{m}.int8.onnx")
                manifest["models"][m]["int8"] = f"{m}.int8.onnx"
            write_manifest(bundle_tmp, manifest)
            q = load_bundle(bundle_tmp, threads=1, precision="int8", with_heads=False)
            all_a, all_f = np.concatenate([ra, pa]), np.concatenate([rf, pf])
            a_mean, a_min = cosine_agreement(bundle.embed_audio(all_a), q.embed_audio(all_a))
            v_mean, v_min = cosine_agreement(bundle.embed_video(all_f), q.embed_video(all_f))
            t32, t8 = time_per_window(bundle, repeats=60), time_per_window(q, repeats=60)
            speedup = round(t32["total_ms"] / max(t8["total_ms"], 1e-9), 3)
            qrep: dict[str, Any] = {"method": "onnxruntime quantize_dynamic, 8-bit (uint8) per-channel weights",
                    "audio_cosine_mean": round(a_mean, 5), "audio_cosine_min": round(a_min, 5),
                    "video_cosine_mean": round(v_mean, 5), "video_cosine_min": round(v_min, 5),
                    "min_agreement": MIN_AGREEMENT,
                    "fp32_ms_per_window": t32["total_ms"], "int8_ms_per_window": t8["total_ms"],
                    "speedup": speedup}
            agreement = min(a_mean, v_mean)
            if agreement < MIN_AGREEMENT:
                refused = (f"int8 quantisation refused: cosine agreement with fp32 is {agreement:.4f} "
                           f"(audio {a_mean:.4f}, video {v_mean:.4f}) < {MIN_AGREEMENT}; "
                           f"the fp32 bundle at {out} is complete")
                qrep["accepted"] = False
                for m in ("audio", "video"):
                    del manifest["models"][m]["int8"]
                    (bundle_tmp / f"{m}.int8.onnx").unlink()
            else:
                qrep["accepted"] = True
                # The runtime switches to int8 only for a clear gain: a few percent is within timing noise
                # and not worth the (small) loss of fidelity; int8 stays available either way.
                manifest["models"]["preferred"] = "int8" if speedup >= PREFER_INT8_SPEEDUP else "fp32"
            manifest["export"]["quantization"] = qrep
        written = write_manifest(bundle_tmp, manifest)
        assert (bundle_tmp / MANIFEST_NAME).is_file()
        os.chmod(bundle_tmp, 0o755)  # mkdtemp makes 0700; the daemon's own user must read the bundle
        _finalise(bundle_tmp, out, force)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if refused:
        raise RuntimeFailure(refused)
    return written


def export_checkpoint(checkpoint: str | Path, out: str | Path, **kwargs: Any) -> dict[str, Any]:
    from train.models import load_checkpoint

    try:
        audio, video, params, summary = load_checkpoint(checkpoint)
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        # e.g. a checkpoint from an older architecture: its weights do not fit today's encoders
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{checkpoint}: checkpoint does not fit this version's encoders ({first})") from None
    return export_encoders(audio, video, params, summary, out, source=str(checkpoint), **kwargs)


def export_untrained(out: str | Path, quantize: str | None = None, seed: int = 0,
                     parity_footage: list[str] | None = None) -> dict[str, Any]:
    """Export freshly initialised default encoders (benchmarks, tests, the untrained floor)."""
    import torch

    from train.models import build_encoders, merged_params

    torch.manual_seed(seed)
    params = merged_params()
    audio, video = build_encoders(params)
    summary = {"untrained": True, "seed": seed, "epochs": 0}
    return export_encoders(audio, video, params, summary, out, quantize=quantize, parity_footage=parity_footage,
                           source="untrained (random init)")


# ---------------------------------------------------------------------------------------------- command


def run(args: argparse.Namespace) -> int:
    from edgeav.cli import require_train_extra

    src, out = Path(args.checkpoint), Path(args.out)
    # Argument mistakes first: they need no torch and should not wait for it to import.
    if not src.exists():
        raise UserError(f"{src}: no such run directory or checkpoint")
    if out.exists() and not args.force and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: already exists; pass --force to replace it")
    require_train_extra("export")
    m = export_checkpoint(src, args.out, quantize=args.quantize, parity_footage=args.parity_footage,
                          force=args.force)
    par = m["export"]["parity"]
    print(f"export: {args.out} bundle {m['bundle_id']}: embedding {m['embedding_size']}, opset {OPSET}, parity max abs "
          f"diff audio {par['audio']['max_abs_diff']:.2e}, video {par['video']['max_abs_diff']:.2e} "
          f"(tolerance {PARITY_TOL:g}; random and real windows from {par['real_footage']})")
    q = m["export"].get("quantization")
    if q:
        why = "" if m["models"]["preferred"] == "int8" else (
            f" (int8 is not {PREFER_INT8_SPEEDUP:g}x faster on this machine; it stays in the bundle)")
        print(f"export: int8 cosine agreement audio {q['audio_cosine_mean']:.4f} (min {q['audio_cosine_min']:.4f}), "
              f"video {q['video_cosine_mean']:.4f} (min {q['video_cosine_min']:.4f}); {q['fp32_ms_per_window']:.2f} ms "
              f"-> {q['int8_ms_per_window']:.2f} ms per window (speed-up x{q['speedup']:.2f}); runtime uses "
              f"{m['models']['preferred']}{why}")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("export", help="export a checkpoint to an ONNX model bundle (needs the train extra)",
                              description="Export trained encoders to a self-describing ONNX bundle, checking "
                                          "torch/onnxruntime parity on random and real windows.")
    p.add_argument("checkpoint", metavar="RUN_DIR_OR_CHECKPOINT",
                   help="a run directory (its best.pt, else last.pt) or a checkpoint file")
    p.add_argument("--out", required=True, metavar="BUNDLE_DIR", help="bundle directory to write")
    p.add_argument("--quantize", choices=["int8"], default=None,
                   help="also write int8 models (refused below 0.99 cosine agreement with fp32)")
    p.add_argument("--parity-footage", action="append", default=None, metavar="FOOTAGE",
                   help="footage for the real-window parity check (default: the training footage, else a "
                        "short synth clip)")
    p.add_argument("--force", action="store_true", help="replace BUNDLE_DIR if it exists")
    p.set_defaults(func=run)
