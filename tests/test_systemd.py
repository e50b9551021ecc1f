"""The unit files: `systemd-analyze verify` clean, `systemd-analyze security --offline=true` at most 2.0.

`verify` checks that ExecStart's program exists, so the units are checked with their install path
(/opt/edgeav/venv/bin/edgeav, README) pointed at this checkout's installed entry point; nothing else
is changed. The template is checked as an instance, as systemd would load it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

UNITS = {"edgeav.service": "edgeav.service", "edgeav@.service": "edgeav@site1.service"}
INSTALL_PATH = "/opt/edgeav/venv/bin/edgeav"

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze (apt: systemd)")


def _entry_point() -> str:
    here = Path(sys.executable).parent / "edgeav"
    found = here if here.exists() else shutil.which("edgeav")
    assert found, "the edgeav entry point is not installed (pip install -e .)"
    return str(found)


@pytest.fixture(scope="module")
def units(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("units")
    out = {}
    for source, name in UNITS.items():
        text = (REPO / "systemd" / source).read_text()
        assert INSTALL_PATH in text
        (d / name).write_text(text.replace(INSTALL_PATH, _entry_point()))
        out[source] = d / name
    return out


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["timeout", "60", "systemd-analyze", *args], capture_output=True, text=True, timeout=70)


@pytest.mark.parametrize("source", list(UNITS))
def test_unit_verifies_clean(units, source):
    proc = analyze("verify", str(units[source]))
    assert proc.returncode == 0 and not proc.stderr.strip() and not proc.stdout.strip(), proc.stdout + proc.stderr


@pytest.mark.parametrize("source", list(UNITS))
def test_unit_is_sandboxed(units, source):
    text = units[source].read_text()
    for directive in ("Type=notify", "NoNewPrivileges=yes", "ProtectSystem=strict", "StateDirectory=edgeav",
                      "User=edgeav", "WatchdogSec=", "ExecReload=/bin/kill -HUP $MAINPID"):
        assert directive in text, directive
    proc = analyze("security", "--offline=true", "--no-pager", str(units[source]))
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", proc.stdout)
    assert match, proc.stdout[-2000:] + proc.stderr
    score = float(match.group(1))
    print(f"{source}: exposure {score}")
    assert score <= 2.0, proc.stdout


def test_exec_start_command_line_is_accepted(units):
    """The unit's command line parses: `edgeav run --config FILE` exists with that option."""
    proc = subprocess.run([_entry_point(), "run", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--config" in proc.stdout, proc.stderr
