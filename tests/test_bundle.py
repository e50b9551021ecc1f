"""The bundle loader refuses what it must, and embeds through real onnxruntime sessions.

Torch-free: the encoders here are tiny ONNX graphs built with onnx.helper (a linear map and an L2
normalisation), so the expected embedding is computable in numpy and the checks are exact.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeav.bundle import (
    MANIFEST_NAME,
    add_content_named_file,
    joint_embedding,
    load_bundle,
    read_manifest,
    write_manifest,
)
from edgeav.calibrate import AnomalyMemory
from edgeav.errors import UserError
from edgeav.heads import EventHead
from edgeav.preprocess import WindowSpec
from tests.conftest import assert_one_line_error, run_edgeav

# A small window spec keeps the toy weight matrices small; the loader must take it from the manifest.
SPEC = WindowSpec(window_s=0.25, hop_s=0.125, frames_per_window=2, frame_width=16, frame_height=8, sample_rate=16000)
D = 8


def _linear_l2_model(path: Path, input_name: str, elem: int, in_shape: list, weight: np.ndarray) -> None:
    """input [batch, *in_shape] -> flatten -> @ weight -> L2-normalise -> 'embedding' [batch, D]."""
    k = int(np.prod(in_shape))
    nodes = [
        helper.make_node("Cast", [input_name], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["xf", "flat_shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "W"], ["y"]),
        helper.make_node("ReduceL2", ["y", "axes"], ["norm"], keepdims=1),
        helper.make_node("Div", ["y", "norm"], ["embedding"]),
    ]
    inits = [numpy_helper.from_array(weight.astype(np.float32), "W"),
             numpy_helper.from_array(np.array([-1, k], dtype=np.int64), "flat_shape"),
             numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")]
    inp = helper.make_tensor_value_info(input_name, elem, ["batch", *in_shape])
    out = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", weight.shape[1]])
    graph = helper.make_graph(nodes, "toy", [inp], [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def make_toy_bundle(d: Path, seed: int, emb: int = D) -> tuple[np.ndarray, np.ndarray]:
    """A bundle whose encoders are linear maps; returns their weights (audio, video)."""
    d.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    wa = rng.standard_normal((SPEC.samples_per_window, emb)).astype(np.float32)
    v_shape = [SPEC.frames_per_window, SPEC.frame_height, SPEC.frame_width, 3]
    wv = rng.standard_normal((int(np.prod(v_shape)), emb)).astype(np.float32) / 255.0
    _linear_l2_model(d / "audio.onnx", "audio", TensorProto.FLOAT, [SPEC.samples_per_window], wa)
    _linear_l2_model(d / "video.onnx", "frames", TensorProto.UINT8, v_shape, wv)
    pre = {"sample_rate": SPEC.sample_rate, "window_s": SPEC.window_s, "hop_s": SPEC.hop_s,
           "frames_per_window": SPEC.frames_per_window, "frame_width": SPEC.frame_width,
           "frame_height": SPEC.frame_height, "channel_order": "RGB"}
    write_manifest(d, {"preprocessing": pre, "embedding_size": emb,
                       "models": {"audio": {"fp32": "audio.onnx"}, "video": {"fp32": "video.onnx"},
                                  "preferred": "fp32"},
                       "training": {"toy": True, "seed": seed}})
    return wa, wv


def _np_embed(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    y = x.reshape(len(x), -1).astype(np.float32) @ w
    return y / np.linalg.norm(y, axis=1, keepdims=True)


@pytest.fixture
def toy(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    d = tmp_path / "bundle"
    wa, wv = make_toy_bundle(d, seed=1)
    return d, wa, wv


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short real MP4 (H.264 + AAC) so the CLI gets as far as loading the bundle."""
    p = tmp_path_factory.mktemp("clip") / "clip.mp4"
    subprocess.run(["timeout", "60", "ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc=size=160x90:rate=10", "-f", "lavfi", "-i", "sine=f=440:sample_rate=16000", "-t", "3",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(p)], check=True)
    return p


def test_loads_and_embeds_like_numpy(toy):
    d, wa, wv = toy
    b = load_bundle(d, threads=1)
    assert b.window_spec == SPEC
    assert b.embedding_size == D and b.precision == "fp32"
    rng = np.random.default_rng(0)
    audio = rng.standard_normal((5, SPEC.samples_per_window)).astype(np.float32)
    frames = rng.integers(0, 256, (5, 2, 8, 16, 3), dtype=np.uint8)
    ea, ev = b.embed_audio(audio), b.embed_video(frames)
    assert ea.shape == (5, D) and ev.shape == (5, D)
    np.testing.assert_allclose(ea, _np_embed(audio, wa), atol=1e-5)
    np.testing.assert_allclose(ev, _np_embed(frames, wv), atol=1e-5)
    # batch 1 gives the same embedding as the same window inside a batch (dynamic batch axis)
    np.testing.assert_allclose(b.embed_audio(audio[2:3])[0], ea[2], atol=1e-6)
    joint = b.embed(audio, frames, batch=2)
    np.testing.assert_allclose(joint, joint_embedding(ea, ev), atol=1e-6)
    assert joint.shape == (5, 2 * D)
    with pytest.raises(ValueError, match="audio windows must be"):
        b.embed_audio(audio[:, :100])


def test_manifest_describes_itself(toy):
    d, _, _ = toy
    m = json.loads((d / MANIFEST_NAME).read_text())
    assert m["schema"] == "edgeav.bundle/1"
    assert set(m["files"]) == {"audio.onnx", "video.onnx"}
    for name, entry in m["files"].items():
        assert len(entry["sha256"]) == 64 and entry["bytes"] == (d / name).stat().st_size
    assert m["created"].endswith("Z") and m["edgeav_version"]
    # Same content elsewhere -> same id; any changed file -> a different id.
    copy = d.parent / "copy"
    shutil.copytree(d, copy)
    assert write_manifest(copy, read_manifest(copy))["bundle_id"] == m["bundle_id"]
    other = d.parent / "other"
    make_toy_bundle(other, seed=2)
    assert read_manifest(other)["bundle_id"] != m["bundle_id"]


def _refused(d: Path, clip: Path, *needles: str) -> None:
    proc = run_edgeav("fit-events", "--models", str(d), str(clip), timeout=120)
    assert_one_line_error(proc, *needles)


def test_changed_byte_is_refused(toy, clip):
    d, _, _ = toy
    data = bytearray((d / "video.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (d / "video.onnx").write_bytes(bytes(data))
    _refused(d, clip, "video.onnx", "sha256", "does not match")


def test_missing_file_is_refused(toy, clip):
    d, _, _ = toy
    (d / "audio.onnx").unlink()
    _refused(d, clip, "audio.onnx", "missing")


def test_manifest_from_another_bundle_is_refused(toy, clip):
    d, _, _ = toy
    other = d.parent / "other"
    make_toy_bundle(other, seed=7)
    shutil.copy(other / MANIFEST_NAME, d / MANIFEST_NAME)
    _refused(d, clip, "audio.onnx", "another bundle")


def test_bad_manifests_are_refused(toy, clip):
    d, _, _ = toy
    m = json.loads((d / MANIFEST_NAME).read_text())
    (d / MANIFEST_NAME).write_text(json.dumps({**m, "bundle_id": "b-0000000000000000"}))
    _refused(d, clip, MANIFEST_NAME, "bundle_id")
    # a hand edit of a setting (the hop) with the files untouched is caught too
    (d / MANIFEST_NAME).write_text(json.dumps({**m, "preprocessing": {**m["preprocessing"], "hop_s": 0.25}}))
    _refused(d, clip, MANIFEST_NAME, "edited by hand")
    (d / MANIFEST_NAME).write_text(json.dumps({**m, "schema": "edgeav.bundle/99"}))
    _refused(d, clip, "schema", "edgeav.bundle/99")
    (d / MANIFEST_NAME).write_text("{not json")
    _refused(d, clip, MANIFEST_NAME, "not valid JSON")
    (d / MANIFEST_NAME).unlink()
    _refused(d, clip, MANIFEST_NAME, "not found")
    _refused(d.parent / "nowhere", clip, "nowhere", "does not exist")


def test_parts_that_do_not_fit_are_refused(toy, tmp_path):
    d, _, _ = toy
    # Encoders whose input does not match the manifest's window (another window length).
    m = read_manifest(d)
    m["preprocessing"]["window_s"] = 0.5
    write_manifest(d, m)
    with pytest.raises(UserError, match=r"audio\.onnx: input shape .* does not fit"):
        load_bundle(d)
    m["preprocessing"]["window_s"] = SPEC.window_s
    write_manifest(d, m)
    # An event head fitted on another bundle's (16-d) embeddings is refused by name.
    rng = np.random.default_rng(0)
    head = EventHead(["background", "car"], rng.standard_normal((2 * 16, 2)).astype(np.float32),
                     np.zeros(2, np.float32), np.zeros(32, np.float32), np.ones(32, np.float32),
                     np.full(2, 0.5, np.float32))
    name = add_content_named_file(d, "events", head.save)
    write_manifest(d, {**m, "events": {"head": name, "class_names": head.class_names}})
    with pytest.raises(UserError, match=rf"{name}: event head takes 32 features but the bundle's encoders give 16"):
        load_bundle(d)
    # A memory holding the wrong size of features, likewise.
    mem = AnomalyMemory.single("joint", rng.standard_normal((10, 5)), k=2, threshold=1.0)
    mname = add_content_named_file(d, "anomaly", mem.save)
    write_manifest(d, {**m, "anomaly": {"memory": mname, "threshold": 1.0}})
    with pytest.raises(UserError, match=rf"{mname}: memory holds 5-d joint features"):
        load_bundle(d)


def test_heads_load_without_pickle_and_round_trip(toy):
    d, _, _ = toy
    m = read_manifest(d)
    rng = np.random.default_rng(3)
    head = EventHead(["background", "car", "dog"], rng.standard_normal((2 * D, 3)).astype(np.float32),
                     rng.standard_normal(3).astype(np.float32), np.zeros(2 * D, np.float32),
                     np.ones(2 * D, np.float32), np.array([0.5, 0.6, 0.7], np.float32))
    mem = AnomalyMemory.single("joint", rng.standard_normal((20, 2 * D)), k=3, threshold=0.8)
    hname = add_content_named_file(d, "events", head.save)
    mname = add_content_named_file(d, "anomaly", mem.save)
    write_manifest(d, {**m, "events": {"head": hname, "class_names": head.class_names},
                       "anomaly": {"memory": mname, "threshold": 0.8}})
    b = load_bundle(d)
    assert b.event_head is not None and b.anomaly is not None
    x = rng.standard_normal((4, 2 * D)).astype(np.float32)
    np.testing.assert_allclose(b.event_head.predict_proba(x), head.predict_proba(x), atol=1e-6)
    assert b.event_head.class_names == ["background", "car", "dog"]
    np.testing.assert_allclose(b.anomaly.score({"joint": x}), mem.score({"joint": x}), atol=1e-6)
    # The stored files hold no pickled objects: numpy refuses pickles when allow_pickle=False.
    for name in (hname, mname):
        with np.load(d / name, allow_pickle=False) as z:
            assert all(z[k].dtype != object for k in z.files)


def test_commands_name_what_is_missing(toy, clip):
    d, _, _ = toy
    before = (d / MANIFEST_NAME).read_bytes()
    proc = run_edgeav("fit-events", "--models", str(d), str(clip), timeout=120)
    assert_one_line_error(proc, "clip.labels.json", "sidecar not found")
    proc = run_edgeav("calibrate", str(clip), timeout=120)
    assert_one_line_error(proc, "--models", "copy it first")
    proc = run_edgeav("calibrate", "--models", str(d), str(clip), "--false-alarms-per-hour", "0", timeout=120)
    assert_one_line_error(proc, "--false-alarms-per-hour", "must be > 0")
    proc = run_edgeav("calibrate", "--models", str(d), str(clip), "--pitch-semitones", "13", timeout=120)
    assert_one_line_error(proc, "--pitch-semitones", "13")
    assert (d / MANIFEST_NAME).read_bytes() == before  # refused commands leave the bundle as it was
    assert sorted(p.name for p in d.iterdir()) == ["audio.onnx", MANIFEST_NAME, "video.onnx"]


def test_default_bundle_ships_verified_and_complete():
    """`--models` defaults to the packaged bundle: it must verify and carry a head, a memory and its metrics."""
    b = load_bundle(None, threads=1)
    assert b.event_head is not None and b.anomaly is not None
    metrics = b.manifest["metrics"]
    assert {"held_out", "untrained_floor"} <= set(metrics)
    assert b.manifest["recipe"].startswith("python -m export.default_bundle")
    rng = np.random.default_rng(0)
    ws = b.window_spec
    feats = b.features(rng.standard_normal((2, ws.samples_per_window)).astype(np.float32) * 0.1,
                       rng.integers(0, 256, (2, ws.frames_per_window, ws.frame_height, ws.frame_width, 3), np.uint8))
    assert b.event_head.predict_proba(feats["joint"]).shape == (2, len(b.event_head.class_names))
    assert np.isfinite(b.anomaly.score(feats)).all() and b.anomaly.score(feats).shape == (2,)
