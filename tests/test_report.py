"""`edgeav replay --report`: one self-contained HTML file that a real browser (Debian's chromium) renders offline."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import assert_one_line_error, run_edgeav

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium(page: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Open ``page`` from a file:// URL in headless chromium (fresh profile), console messages logged to stderr."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "Debian's chromium is needed for the report test (apt-get install chromium; .ci/run installs it)"
    profile = tmp / f"chromium-profile-{len(list(tmp.glob('chromium-profile-*')))}"
    return subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
                           *extra, page.resolve().as_uri()],
                          capture_output=True, text=True, timeout=60)


def console_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    # Chromium logs every console message (errors, uncaught exceptions, CSP refusals) as ":CONSOLE" lines.
    return [ln for ln in proc.stderr.splitlines() if ":CONSOLE" in ln]


@pytest.fixture(scope="module")
def replayed(tiny_bundle: Path, footage_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """normal.mp4 then anomalies.mp4 replayed into one index, with the events/alerts records and the report.

    The tiny (untrained) bundle's calibrated threshold raises no alert on the fixture footage, so a copy is
    calibrated for a high false-alarm rate and the cooldown is cut: several alerts (4 when written), each
    of which the report must show.
    """
    d = tmp_path_factory.mktemp("report")
    bundle = d / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    proc = run_edgeav("calibrate", "--models", bundle, "--false-alarms-per-hour", "1200", footage_dir / "normal.mp4")
    assert proc.returncode == 0, proc.stderr
    (d / "config.yaml").write_text("anomaly:\n  cooldown_s: 5\n")
    proc = run_edgeav(*_replay_args(d, d, footage_dir), "--out", d / "events.jsonl", timeout=300)
    assert proc.returncode == 0, proc.stderr
    return d


def _replay_args(d: Path, out: Path, footage_dir: Path) -> tuple[str | Path, ...]:
    """Replay with the fixture's bundle and config ``d``, writing the index and report into ``out``."""
    return ("replay", footage_dir / "normal.mp4", footage_dir / "anomalies.mp4", "--models", d / "bundle",
            "--config", d / "config.yaml", "--index", out / "index", "--report", out / "report.html", "--quiet")


def _alerts(d: Path) -> list[dict]:
    return [r for r in map(json.loads, (d / "events.jsonl").read_text().splitlines()) if r["type"] == "alert"]


def test_report_is_self_contained_with_one_entry_per_alert(replayed: Path) -> None:
    text = (replayed / "report.html").read_text()
    alerts = _alerts(replayed)
    assert alerts, "the fixture footage must raise alerts for this test to mean anything"
    entries = re.findall(r'<li class="alert" id="alert-\d+">', text)
    assert len(entries) == len(alerts)
    # Offline: every image is inline, nothing is fetched (no http(s) URL, no external stylesheet or script).
    srcs = re.findall(r'\ssrc="([^"]*)"', text)
    assert srcs and all(s.startswith(("data:image/jpeg;base64,", "data:image/png;base64,")) for s in srcs)
    assert not re.search(r"(src|href)=\"(https?:)?//|@import|url\(", text)
    # Each alert shows its frame and its spectrogram; with --index, its similar earlier moments.
    for a, block in zip(alerts, text.split('<li class="alert"')[1:], strict=True):
        assert f"score {a['score']:.3f}" in block
        assert 'alt="frame at' in block and 'alt="spectrogram' in block
        assert "Most similar earlier moments" in block
    # Every alert comes after normal.mp4 was indexed, so each has earlier moments to show (3, or fewer if merged).
    assert len(re.findall(r'<li class="moment">', text)) >= len(alerts)
    assert "<svg" in text and 'class="threshold"' in text


def test_browser_renders_the_report_without_console_messages(replayed: Path, tmp_path: Path) -> None:
    report = replayed / "report.html"
    proc = chromium(report, tmp_path, "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    assert len(re.findall(r'<li class="alert" id="alert-\d+">', dom)) == len(_alerts(replayed))
    assert dom.count('class="timeline"') == 2  # one timeline per replayed file
    assert console_lines(proc) == [], console_lines(proc)
    # The check sees what it must: the same report trying to fetch an image is refused, and that is logged.
    leaky = tmp_path / "leaky.html"
    leaky.write_text(report.read_text().replace("</main>", '<img src="https://example.invalid/x.png"></main>'))
    assert any("Refused to load" in ln or "example.invalid" in ln for ln in console_lines(chromium(leaky, tmp_path,
                                                                                                    "--dump-dom")))


def test_report_is_deterministic_and_atomic(replayed: Path, footage_dir: Path, tmp_path: Path) -> None:
    # Same footage, same bundle, same (fresh) index: byte-identical report (no clock, stable ordering).
    again = tmp_path / "again"
    again.mkdir()
    proc = run_edgeav(*_replay_args(replayed, again, footage_dir), timeout=300)
    assert proc.returncode == 0, proc.stderr
    first, second = (replayed / "report.html").read_text(), (again / "report.html").read_text()
    assert second.replace(str(again / "index"), str(replayed / "index")) == first
    # A run that fails (a corrupt file after a good one) leaves no report behind, complete-looking or not.
    broken = tmp_path / "broken.mp4"
    data = (footage_dir / "anomalies.mp4").read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    out = tmp_path / "failed.html"
    proc = run_edgeav("replay", footage_dir / "anomalies.mp4", broken, "--models", replayed / "bundle", "--report",
                      out, "--quiet", timeout=300)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert not out.exists() and not list(tmp_path.glob(".failed.html.*"))
    # A report that cannot be written is a one-line error before any footage is processed.
    proc = run_edgeav("replay", footage_dir / "anomalies.mp4", "--models", replayed / "bundle", "--report",
                      tmp_path / "no-such-dir" / "r.html", "--quiet", timeout=300)
    assert_one_line_error(proc, "no-such-dir")
