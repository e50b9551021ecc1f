"""`edgeav export`: torch vs onnxruntime parity, int8 agreement, the bundle without torch.

One checkpoint of the real (randomly initialised) encoders is exported once through the CLI with
``--quantize int8``; the tests check the result independently of what the exporter reports.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from edgeav import media  # noqa: E402
from edgeav.bundle import MANIFEST_NAME, load_bundle  # noqa: E402
from edgeav.errors import RuntimeFailure  # noqa: E402
from edgeav.roughness import roughness  # noqa: E402
from tests.conftest import REPO, assert_one_line_error, run_edgeav  # noqa: E402


def make_clip(path: Path, seconds: int = 4) -> Path:
    """Real footage (H.264 + AAC) with changing picture and sound, through FFmpeg."""
    subprocess.run(["timeout", "60", "ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc2=size=320x180:rate=15", "-f", "lavfi", "-i",
                    "sine=f=300:beep_factor=4:sample_rate=16000", "-t", str(seconds), "-c:v", "libx264",
                    "-pix_fmt", "yuv420p", "-c:a", "aac", str(path)], check=True)
    return path


def make_checkpoint(path: Path, seed: int = 0) -> Path:
    """An ``edgeav.checkpoint/1`` file of freshly initialised default encoders."""
    from train.models import CHECKPOINT_FORMAT, build_encoders, merged_params

    torch.manual_seed(seed)
    params = merged_params()
    audio, video = build_encoders(params)
    torch.save({"format": CHECKPOINT_FORMAT, "params": params, "audio": audio.state_dict(),
                "video": video.state_dict(), "epoch": 0,
                "summary": {"epochs": 0, "seed": seed, "pairs": "temporal", "footage_seconds": 0.0}}, path)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("export")
    clip = make_clip(tmp / "clip.mp4")
    ckpt = make_checkpoint(tmp / "last.pt")
    out = tmp / "bundle"
    proc = run_edgeav("export", str(ckpt), "--out", str(out), "--quantize", "int8", "--parity-footage", str(clip),
                      timeout=300)
    return {"proc": proc, "out": out, "clip": clip, "ckpt": ckpt, "tmp": tmp}


def test_export_parity_on_real_windows(exported):
    proc, out = exported["proc"], exported["out"]
    assert proc.returncode == 0, proc.stderr
    assert "parity max abs diff" in proc.stdout
    m = json.loads((out / MANIFEST_NAME).read_text())
    assert m["embedding_size"] == 128
    assert m["preprocessing"]["audio_frontend"]["n_fft"] == 512
    for part in ("audio", "video"):
        par = m["export"]["parity"][part]
        assert par["real_windows"] > 0 and par["random_windows"] > 0
        assert par["max_abs_diff"] <= 1e-4
        model = onnx.load(str(out / f"{part}.onnx"))
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
        batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
        assert batch_dim.dim_param and not batch_dim.dim_value, "the batch axis must be dynamic"

    # Independently of the exporter's report: torch and the loaded bundle agree on real decoded windows.
    from train.models import load_checkpoint

    audio, video, _, _ = load_checkpoint(exported["ckpt"])
    b = load_bundle(out, threads=1, precision="fp32")
    w = media.footage_windows(exported["clip"], b.window_spec)
    assert len(w) >= 5
    with torch.no_grad():
        ta = audio(torch.from_numpy(w.audio)).numpy()
        tv = video(torch.from_numpy(w.frames)).numpy()
    assert np.abs(b.embed_audio(w.audio) - ta).max() <= 1e-4
    assert np.abs(b.embed_video(w.frames) - tv).max() <= 1e-4
    assert np.abs(b.embed_video(w.frames[3:4]) - tv[3:4]).max() <= 1e-4  # batch 1 too
    # Real windows differ from each other: parity on them is not parity on a constant.
    assert np.abs(ta[0] - ta[-1]).max() > 1e-3 and np.abs(tv[0] - tv[-1]).max() > 1e-3
    # The features the anomaly scorer may use come out of the same graphs, equal to torch's.
    feats = b.features(w.audio, w.frames)
    assert set(feats) == {"audio", "audio_pre", "audio_summary", "audio_patches", "video", "video_pre",
                          "video_summary", "joint", "av_disagreement", "video_speed", "video_velocity",
                          "audio_roughness"}
    cos = (feats["audio"] * feats["video"]).sum(1) / np.linalg.norm(feats["audio"], axis=1) \
        / np.linalg.norm(feats["video"], axis=1)
    np.testing.assert_allclose(feats["av_disagreement"][:, 0], 1.0 - cos, atol=1e-5)
    with torch.no_grad():
        for name, enc, x in (("audio", audio, w.audio), ("video", video, w.frames)):
            _, pre, summary, *patches = enc.all_outputs(torch.from_numpy(x))
            assert np.abs(feats[f"{name}_pre"] - pre.numpy()).max() <= 1e-4
            assert np.abs(feats[f"{name}_summary"] - summary.numpy()).max() <= 1e-4
            for p in patches:
                assert np.abs(feats[f"{name}_patches"] - p.numpy()).max() <= 1e-4
    assert feats["video_summary"].shape[1] == (64 // 8) * (112 // 8)  # one motion figure per 8x8-pixel cell
    assert feats["video_speed"].shape[1] == 64 // 4 == b.feature_dims["video_speed"]  # measured, per 4-row band
    # the same per band and direction: rightwards, then leftwards; either way (unheld), the speeds
    assert feats["video_velocity"].shape[1] == 2 * 64 // 4 == b.feature_dims["video_velocity"]
    velocity = b.measure("video_velocity", w.frames)
    np.testing.assert_array_equal(velocity[:, :16] + velocity[:, 16:], b.measure("video_speed", w.frames))
    assert velocity.any()  # the footage moves
    np.testing.assert_allclose(feats["audio_roughness"], roughness(w.audio, b.window_spec.sample_rate), atol=1e-5)
    assert b.feature_dims["audio_roughness"] == 3  # measured, per range of beat rates
    # Patches: 32 pooled bands x 3 pooled frames (60 ms), one every 40 ms of the 1 s window.
    assert feats["audio_patches"].shape[1:] == (24, 32 * 3) and b.feature_dims["audio_patches"] == 96


def test_video_normalisation_is_folded_and_changes_no_output_beyond_1e_5(exported):
    """The exporter folds the video model's uint8 normalisation and motion channels into its first convolution
    (export.fold: half the model's time): every output must stay within 1e-5 of the unfolded export on real
    decoded windows, and the folded graph must really be the smaller one."""
    from export.onnx_export import _export_one
    from train.models import load_checkpoint

    out = exported["out"]
    assert exported["proc"].returncode == 0, exported["proc"].stderr
    record = json.loads((out / MANIFEST_NAME).read_text())["models"]["video"]["input_normalisation"]
    assert record["folded"] and record["max_abs_diff"] <= 1e-5
    _, video, _, _ = load_checkpoint(exported["ckpt"])
    b = load_bundle(out, threads=1, precision="fp32")
    spec = b.window_spec
    plain_path = exported["tmp"] / "video_unfolded.onnx"
    _export_one(video, torch.zeros(2, spec.frames_per_window, spec.frame_height, spec.frame_width, 3,
                                   dtype=torch.uint8), plain_path, "frames")
    import onnxruntime as ort

    plain = ort.InferenceSession(str(plain_path), providers=["CPUExecutionProvider"])
    w = media.footage_windows(exported["clip"], spec)
    flat = np.stack([np.full(w.frames.shape[1:], v, np.uint8) for v in (0, 255)])  # black, white: the worst case
    names = ["embedding", "features", "summary"]
    for frames in (w.frames, flat):
        for got, want in zip(b.run_video(frames, names), plain.run(names, {"frames": frames}), strict=True):
            assert np.abs(got - want).max() <= 1e-5
            if frames is w.frames:  # windows that differ: not a constant compared
                assert np.abs(want[0] - want[-1]).max() > 1e-3
    first_conv = {m: next(n for n in onnx.load(str(p)).graph.node if n.op_type == "Conv")
                  for m, p in (("folded", out / "video.onnx"), ("plain", plain_path))}
    widths = {m: next(i.dims[1] for i in onnx.load(str(p)).graph.initializer if i.name == first_conv[m].input[1])
              for m, p in (("folded", out / "video.onnx"), ("plain", plain_path))}
    assert widths == {"folded": 3 * spec.frames_per_window, "plain": 6 * spec.frames_per_window}


@pytest.mark.parametrize("variant", [{}, {"motion_gain": 0.0}, {"frames": 1}])
def test_folding_is_exact_at_the_borders_and_without_motion_channels(variant):
    """export.fold in torch: the folded first convolution gives the encoder's, borders (zero padding) included, also
    for encoders without motion channels (no gain, or one frame per window)."""
    from export.fold import FoldedVideo, can_fold
    from train.models import VideoEncoder, merged_params

    overrides: dict = {"video": {"motion_gain": variant["motion_gain"]}} if "motion_gain" in variant else {}
    if "frames" in variant:
        overrides["window"] = {"frames_per_window": variant["frames"]}
    params = merged_params(overrides)
    torch.manual_seed(3)
    enc = VideoEncoder(params).eval()
    enc.set_normalisation(torch.tensor([0.3, 0.5, 0.6]), torch.tensor([0.2, 0.25, 0.3]))
    win = params["window"]
    assert can_fold(enc)
    folded = FoldedVideo(enc).eval()
    x = torch.randint(0, 256, (3, win["frames_per_window"], win["frame_height"], win["frame_width"], 3),
                      dtype=torch.uint8)
    x[0] = 255  # a flat picture: the borders are where a wrong constant would show
    with torch.no_grad():
        want = enc.cnn[0][0](enc.normalise(x))
        got = folded.first_conv(x)
        assert (want - got).abs().max() <= 1e-5 * want.abs().max()
        assert (want[:, :, 0] - got[:, :, 0]).abs().max() <= 1e-5 * want.abs().max()  # the top row: padded
        for want_out, got_out in zip(enc.all_outputs(x[1:]), folded(x[1:]), strict=True):  # textured pictures
            assert (want_out - got_out).abs().max() <= 1e-4


def test_int8_agrees_with_fp32(exported):
    out = exported["out"]
    assert exported["proc"].returncode == 0, exported["proc"].stderr
    assert "int8 cosine agreement" in exported["proc"].stdout and "speed-up" in exported["proc"].stdout
    m = json.loads((out / MANIFEST_NAME).read_text())
    q = m["export"]["quantization"]
    assert q["accepted"] and q["audio_cosine_mean"] >= 0.99 and q["video_cosine_mean"] >= 0.99
    assert {"audio.onnx", "video.onnx", "audio.int8.onnx", "video.int8.onnx"} <= set(m["files"])
    f32 = load_bundle(out, precision="fp32")
    i8 = load_bundle(out, precision="int8")
    w = media.footage_windows(exported["clip"], f32.window_spec)
    a, b = f32.embed(w.audio, w.frames), i8.embed(w.audio, w.frames)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.mean() >= 0.99
    assert not np.array_equal(a, b)  # really a different (quantised) model


def test_parity_failure_says_by_how_much(exported):
    """An ONNX model that is not the torch model (here: another seed's weights) fails parity, with the number."""
    import export.onnx_export as ox
    from train.models import build_encoders, merged_params

    torch.manual_seed(99)
    other_audio, _ = build_encoders(merged_params())
    b = load_bundle(exported["out"], threads=1, precision="fp32")
    ra, _ = ox.random_windows(b.window_spec, n=4)
    with pytest.raises(RuntimeFailure, match=r"export parity failed: audio model differs from torch by 0\.[0-9]+ "
                                             r"\(max abs, tolerance 0\.0001\); no bundle written"):
        ox._parity("audio", other_audio.eval(), b.embed_audio, {"random": ra})
    # and the same check passes for the model that was exported
    from train.models import load_checkpoint

    audio, _, _, _ = load_checkpoint(exported["ckpt"])
    assert ox._parity("audio", audio, b.embed_audio, {"random": ra})["max_abs_diff"] <= 1e-4


def test_existing_bundle_is_not_overwritten(exported):
    proc = run_edgeav("export", str(exported["ckpt"]), "--out", str(exported["out"]), timeout=120)
    assert_one_line_error(proc, str(exported["out"]), "already exists", "--force")


def _no_torch_env(tmp: Path) -> dict[str, str]:
    """PYTHONPATH with a `torch` package that cannot be imported, ahead of the real one."""
    shadow = tmp / "no_torch"
    (shadow / "torch").mkdir(parents=True, exist_ok=True)
    (shadow / "torch" / "__init__.py").write_text("raise ImportError('torch is not installed (test shadow)')\n")
    return {"PYTHONPATH": f"{shadow}:{REPO}"}


def test_bundle_loads_and_embeds_without_torch(exported):
    env = _no_torch_env(exported["tmp"])
    code = (
        "import sys, numpy as np\n"
        "from edgeav.bundle import load_bundle\n"
        "from edgeav import media\n"
        f"b = load_bundle({str(exported['out'])!r}, threads=1)\n"
        f"w = media.footage_windows({str(exported['clip'])!r}, b.window_spec)\n"
        "j = b.embed(w.audio, w.frames)\n"
        "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n"
        "np.save(sys.argv[1], j)\n"
    )
    dst = exported["tmp"] / "no_torch_joint.npy"
    proc = subprocess.run([sys.executable, "-c", code, str(dst)], capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, **env})
    assert proc.returncode == 0, proc.stderr
    b = load_bundle(exported["out"], threads=1)
    w = media.footage_windows(exported["clip"], b.window_spec)
    np.testing.assert_allclose(np.load(dst), b.embed(w.audio, w.frames), atol=1e-6)
    # `edgeav export` itself says what is missing, in one line.
    proc = run_edgeav("export", str(exported["ckpt"]), "--out", str(exported["tmp"] / "x"), env=env)
    assert_one_line_error(proc, "train extra")
