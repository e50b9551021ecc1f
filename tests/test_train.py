"""`edgeav train` as a user runs it: checkpoints, resume, cache, bad footage, config errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import assert_one_line_error, run_edgeav
from footage_helpers import lavfi_clip, make_bad_footage

torch = pytest.importorskip("torch")

TINY = "optim: {batch_size: 8, warmup_steps: 2}\ndata: {stats_windows: 64}\n"


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 20 s: 39 windows, 33 for training (4 batches of 8), 5 held out (t >= 17 s).
    return lavfi_clip(tmp_path_factory.mktemp("clip") / "cam.mp4", seconds=20, size="320x240")


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_bad_footage(tmp_path_factory.mktemp("bad"))


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    p = tmp_path / "tiny.yaml"
    p.write_text(TINY)
    return p


def _train(*args: object, cache: Path, timeout: float = 240):
    return run_edgeav("train", *map(str, args), "--cache-dir", str(cache), "--no-progress", timeout=timeout)


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


def test_untrained_checkpoint_resume_and_cache(clip: Path, cfg: Path, tmp_path: Path) -> None:
    from train.models import load_checkpoint

    cache, run = tmp_path / "cache", tmp_path / "run"
    proc = _train(clip, "--out", run, "--config", cfg, "--epochs", "1", "--seed", "3", cache=cache)
    assert proc.returncode == 0, proc.stderr
    # The budget is printed, and within the limits.
    for name in ("audio", "video"):
        line = next(ln for ln in proc.stderr.splitlines() if f"{name} encoder:" in ln)
        params = int(line.split(":")[2].split("parameters")[0].replace(",", ""))
        gmacs = float(line.split(",")[-1].split("GMACs")[0])
        assert 0 < params <= 2_000_000 and 0 < gmacs <= 0.2, line
    assert "0 from the cache" in proc.stderr
    assert (run / "checkpoints" / "epoch_000.pt").is_file() and (run / "checkpoints" / "epoch_001.pt").is_file()

    # epoch 0 = untrained encoders with normalisation measured on the footage (not the placeholder values).
    audio, video, params, summary = load_checkpoint(run / "checkpoints" / "epoch_000.pt")
    assert not torch.allclose(video.mean, torch.full((3,), 0.5))
    assert float(audio.mel_std.min()) > 0 and not torch.allclose(audio.mel_mean, torch.zeros_like(audio.mel_mean))
    assert params["window"]["window_s"] == 1.0 and params["embed_dim"] == 128
    assert summary["windows"] == 39 and summary["footage_seconds"] == pytest.approx(20, abs=0.1)
    assert summary["seed"] == 3 and summary["epochs"] == 0
    assert audio.frontend_params()["n_mels"] == 64

    # A run directory is not overwritten by accident ...
    again = _train(clip, "--out", run, "--config", cfg, "--epochs", "1", cache=cache)
    assert_one_line_error(again, str(run), "--resume")
    # ... and --resume continues it, decoding nothing (the cache is keyed by content and parameters).
    proc = _train(clip, "--out", run, "--config", cfg, "--epochs", "2", "--seed", "3", "--resume", cache=cache)
    assert proc.returncode == 0, proc.stderr
    assert "1 from the cache" in proc.stderr and "resuming" in proc.stderr
    epochs = [r["epoch"] for r in _log(run) if r["event"] == "epoch"]
    assert epochs == [1, 2]
    steps = [r for r in _log(run) if r["event"] == "step"]
    assert len(steps) == 8 and all(r["loss"] > 0 for r in steps)
    _, _, _, summary = load_checkpoint(run / "last.pt")
    assert summary["epochs"] == 2 and summary["metrics"]["val_n"] == 5
    assert "val_r1_a2v" in summary["metrics"] and "untrained" in summary["metrics"]
    assert (run / "best.pt").is_file()
    # Changing preprocessing makes a new cache entry, not a stale hit.
    other = tmp_path / "other.yaml"
    other.write_text(TINY + "window: {frames_per_window: 2}\n")
    proc = _train(clip, "--out", tmp_path / "run2", "--config", other, "--epochs", "0", cache=cache)
    assert proc.returncode == 0 and "0 from the cache" in proc.stderr, proc.stderr
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 2


@pytest.mark.parametrize("reason", ["empty", "unreadable", "no audio stream", "no video stream", "truncated",
                                    "truncated "])
def test_each_bad_file_stops_the_dataset_with_its_reason(bad: dict[str, Path], clip: Path, tmp_path: Path,
                                                         reason: str) -> None:
    from edgeav.errors import UserError
    from edgeav.preprocess import WindowSpec
    from train.data import build_dataset, probe_footage

    with pytest.raises(UserError) as exc:
        infos, skipped = probe_footage([bad[reason], clip], skip_bad=False)
        build_dataset(infos, WindowSpec(), tmp_path / "cache", 0.15, skip_bad=False, bad=skipped)
    msg = str(exc.value)
    assert str(bad[reason]) in msg and reason.strip() in msg and "--skip-bad" in msg
    # With skip_bad the same file is set aside with the same reason and the good clip remains.
    infos, skipped = probe_footage([bad[reason], clip], skip_bad=True)
    ds, skipped = build_dataset(infos, WindowSpec(), tmp_path / "cache", 0.15, skip_bad=True, bad=skipped)
    assert [b.path for b in skipped] == [bad[reason]] and reason.strip() in skipped[0].reason
    assert [f.path for f in ds.files] == [clip]


@pytest.mark.parametrize("reason", ["no audio stream", "truncated "])
def test_bad_footage_stops_training_before_it_starts(bad: dict[str, Path], clip: Path, tmp_path: Path,
                                                     reason: str) -> None:
    """Found by its headers ("no audio stream") or only by decoding (media cut off behind a good index)."""
    run = tmp_path / "run"
    proc = _train(bad[reason], clip, "--out", run, "--epochs", "1", cache=tmp_path / "cache")
    assert_one_line_error(proc, str(bad[reason]), reason.strip(), "--skip-bad")
    assert not (run / "last.pt").exists()
    assert not (tmp_path / "cache").exists()  # nothing was decoded before the bad file was found


def test_skip_bad_trains_on_the_rest_and_says_so(bad: dict[str, Path], clip: Path, cfg: Path,
                                                 tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = _train(clip, *bad.values(), "--out", run, "--config", cfg, "--epochs", "0", "--skip-bad",
                  cache=tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr
    assert f"skipped {len(bad)} bad file(s) of {len(bad) + 1}" in proc.stderr
    for path in bad.values():
        assert str(path) in proc.stderr
    assert (run / "last.pt").is_file()


def test_empty_dataset_is_one_line_error(bad: dict[str, Path], tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _train(empty, "--out", tmp_path / "run", cache=tmp_path / "cache")
    assert_one_line_error(proc, "empty dataset")
    proc = _train(*bad.values(), "--out", tmp_path / "run", "--skip-bad", cache=tmp_path / "cache")
    assert_one_line_error(proc, "empty dataset", f"{len(bad)} skipped")
    assert not (tmp_path / "run" / "last.pt").exists()


def test_config_errors_name_file_field_and_value(clip: Path, tmp_path: Path) -> None:
    bad_key = tmp_path / "k.yaml"
    bad_key.write_text("optim: {batch_sise: 8}\n")
    assert_one_line_error(_train(clip, "--out", tmp_path / "r", "--config", bad_key, cache=tmp_path / "c"),
                          str(bad_key), "optim.batch_sise")
    bad_val = tmp_path / "v.yaml"
    bad_val.write_text("optim: {lr: -1}\n")
    assert_one_line_error(_train(clip, "--out", tmp_path / "r", "--config", bad_val, cache=tmp_path / "c"),
                          str(bad_val), "optim.lr", "-1")
    assert_one_line_error(_train(clip, "--out", tmp_path / "none", "--resume", cache=tmp_path / "c"),
                          "--resume", "no run to resume")
    if not torch.cuda.is_available():
        assert_one_line_error(_train(clip, "--out", tmp_path / "r", "--device", "cuda", cache=tmp_path / "c"),
                              "--device cuda", "no CUDA device")
    over = tmp_path / "big.yaml"
    over.write_text("model: {video: {channels: [256, 512, 512, 512]}}\n")
    assert_one_line_error(_train(clip, "--out", tmp_path / "r", "--config", over, cache=tmp_path / "c"),
                          "model.video", "over the budget")


def test_unwritten_pair_strategies_and_losses_say_not_available(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeav.errors import UserError
    from train import objective

    monkeypatch.setitem(objective.PAIRS, "later", ("train.not_written_yet", "LaterPairs"))
    monkeypatch.setitem(objective.LOSSES, "later", ("train.losses.infonce", "not_there"))
    with pytest.raises(UserError, match="not available yet"):
        objective.resolve_pairs("later")
    with pytest.raises(UserError, match="not available yet"):
        objective.resolve_loss("later")
    assert objective.resolve_loss("infonce") is not None
