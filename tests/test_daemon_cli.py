"""`edgeav run` refuses what it cannot run with one line and exit 2, before any camera starts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from alert_footage import make_alert_bundle, write_alert_footage
from conftest import assert_one_line_error, run_edgeav


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("daemon_cli")
    footage = d / "f.mp4"
    write_alert_footage(footage, seconds=3.0)
    return {"dir": d, "bundle": make_alert_bundle(d / "bundle"), "footage": footage}


def config(path: Path, **sections: object) -> Path:
    path.write_text(yaml.safe_dump({"node": {"name": "box1"}, "metrics": {"listen": None}, **sections}))
    return path


def test_missing_config(tmp_path):
    assert_one_line_error(run_edgeav("run", "--config", tmp_path / "nope.yaml", timeout=60), "nope.yaml",
                          "no such file")


def test_config_without_cameras(parts, tmp_path):
    cfg = config(tmp_path / "c.yaml", models={"bundle": str(parts["bundle"])})
    assert_one_line_error(run_edgeav("run", "--config", cfg, timeout=60), "cameras", "nothing to run")


def test_bad_bundle(parts, tmp_path):
    cfg = config(tmp_path / "c.yaml", models={"bundle": str(tmp_path / "missing-bundle")},
                 cameras=[{"name": "gate", "video": {"url": "rtsp://127.0.0.1:1/x"}}])
    assert_one_line_error(run_edgeav("run", "--config", cfg, timeout=60), "missing-bundle")


def test_footage_file_is_for_replay(parts, tmp_path):
    cfg = config(tmp_path / "c.yaml", models={"bundle": str(parts["bundle"])},
                 storage={"state_dir": str(tmp_path / "state")},
                 cameras=[{"name": "gate", "video": {"file": str(parts["footage"])}}])
    assert_one_line_error(run_edgeav("run", "--config", cfg, timeout=60), "gate", "video.url", "replay")
