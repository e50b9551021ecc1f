"""DDP: two CPU processes (torchrun, gloo) on the same global batches give the loss of one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, run_edgeav
from footage_helpers import lavfi_clip

pytest.importorskip("torch")

# Augmentation on: it is seeded per window, so it must not depend on which process draws the window.
CONFIG = "optim: {batch_size: 8, warmup_steps: 2}\ndata: {stats_windows: 64}\ntrain: {threads: 1}\n"


def _steps(run: Path) -> list[float]:
    rows = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["event"] == "step"]


def test_two_gloo_processes_match_one(tmp_path: Path) -> None:
    clip = lavfi_clip(tmp_path / "cam.mp4", seconds=14, size="320x240")
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(CONFIG)
    cache = tmp_path / "cache"
    common = ["--config", str(cfg), "--epochs", "2", "--seed", "5", "--cache-dir", str(cache), "--no-progress"]

    one = run_edgeav("train", str(clip), "--out", str(tmp_path / "one"), *common, timeout=300)
    assert one.returncode == 0, one.stderr

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    two = subprocess.run(
        ["timeout", "300", sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "edgeav.cli", "train", str(clip), "--out", str(tmp_path / "two"), *common],
        capture_output=True, text=True, timeout=330, env=env, cwd=tmp_path,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count('"epochs": 2') == 1  # one summary, from rank 0

    a, b = np.array(_steps(tmp_path / "one")), np.array(_steps(tmp_path / "two"))
    assert len(a) == len(b) >= 4
    # Step 1: the same global batch through the same weights gives the same loss (the negatives of the whole
    # batch reach each process, and the projection heads' BatchNorm uses global-batch statistics).
    assert b[0] == pytest.approx(a[0], rel=1e-5)
    # Step 2 runs on weights after one update, so it also checks the gradients DDP applied. Later steps
    # drift apart slowly: parameters whose true gradient is zero (e.g. biases before a BatchNorm) get
    # float-noise gradients that Adam turns into full-size steps, differently in the two runs.
    assert b[1] == pytest.approx(a[1], rel=1e-3)
    assert a[1] != pytest.approx(a[0], rel=1e-3)  # the update did change the model: the check is not trivial
