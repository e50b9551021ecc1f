"""Shared test helpers: run the real `edgeav` command line in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_edgeav(*args: str, timeout: float = 300, env: dict[str, str] | None = None,
               cwd: str | Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``edgeav ARGS...`` as a user would (a fresh interpreter), capturing text output."""
    full_env = dict(os.environ)
    full_env.setdefault("PYTHONPATH", str(REPO))
    if env:
        full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "edgeav.cli", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env=full_env, cwd=cwd,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str, code: int = 2) -> str:
    """The project's error contract: exit ``code``, one line on stderr, no traceback, naming ``needles``."""
    err = proc.stderr.strip()
    assert proc.returncode == code, f"exit {proc.returncode}, stderr: {proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in err.splitlines() if "error" in ln.lower()]
    assert len(lines) == 1, f"expected one error line, got: {err!r}"
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


@pytest.fixture
def edgeav_cli():
    return run_edgeav


@pytest.fixture(scope="session")
def footage_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Short synth footage shared by the pipeline tests (320x180, 15 fps, labelled sidecars):
    ``normal.mp4`` (street, 60 s) and ``anomalies.mp4`` (scripted events with anomalies, 40 s)."""
    from edgeav.synth import synthesize

    d = tmp_path_factory.mktemp("footage")
    synthesize(d / "normal.mp4", seconds=60, seed=11, profile="street", width=320, height=180)
    synthesize(d / "anomalies.mp4", seconds=40, seed=12, profile="street", width=320, height=180,
               events=[{"kind": "car", "start": 3.0}, {"kind": "explosion", "start": 14.0},
                       {"kind": "dog", "start": 22.0}, {"kind": "glass_break", "start": 31.0}])
    return d


@pytest.fixture(scope="session")
def tiny_bundle(footage_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete bundle (encoders, event head, anomaly memory) made by the real commands:
    ``train --epochs 0`` (untrained encoders: fast; the tests using it check plumbing, not accuracy),
    ``export``, ``fit-events`` and ``calibrate`` on ``footage_dir/normal.mp4``."""
    d = tmp_path_factory.mktemp("bundle")
    normal = footage_dir / "normal.mp4"
    steps = [
        ("train", str(normal), "--out", str(d / "run"), "--epochs", "0", "--no-progress",
         "--cache-dir", str(d / "cache")),
        ("export", str(d / "run"), "--out", str(d / "bundle")),
        ("fit-events", "--models", str(d / "bundle"), str(normal)),
        ("calibrate", "--models", str(d / "bundle"), str(normal)),
    ]
    for step in steps:
        proc = run_edgeav(*step, timeout=600)
        assert proc.returncode == 0, f"edgeav {step[0]} failed: {proc.stderr}"
    return d / "bundle"


@pytest.fixture(scope="session")
def toy_bundle(tmp_path_factory: pytest.TempPathFactory):
    """A tiny hand-built ONNX bundle (tests/test_bundle.py's ``make_toy_bundle``) for the live-capture tests,
    which check plumbing and timing, not what a model sees."""
    from edgeav.bundle import load_bundle
    from tests.test_bundle import make_toy_bundle

    d = tmp_path_factory.mktemp("toy") / "bundle"
    make_toy_bundle(d, seed=3)
    return load_bundle(d)
