"""`edgeav run`: the real daemon on a real RTSP camera (GStreamer), a real mosquitto and a notify socket.

The camera serves footage that alternates blue and red; the bundle's anomaly memory is "blue", so
every red second raises an alert at a known rhythm (tests/alert_footage.py). Everything the daemon
says reaches the test the way it reaches systemd and a control room: datagrams on ``NOTIFY_SOCKET``,
MQTT messages, clip files, the metrics endpoint, exit codes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import av
import jsonschema
import pytest
import yaml
from alert_footage import make_alert_bundle, write_alert_footage
from conftest import REPO
from mqtt_broker import Broker, Subscriber, free_port, wait_until
from rtsp_server import RtspServer, server_available

from edgeav.records import load_schema

pytestmark = pytest.mark.skipif(server_available() is not None, reason=str(server_available()))

BASE = "edgeav/box1"


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("daemon")
    footage = d / "gate.mp4"
    write_alert_footage(footage, seconds=40.0)
    return {"footage": footage, "bundle": make_alert_bundle(d / "bundle")}


class NotifyListener:
    """The systemd side of sd_notify: a datagram socket; every message kept with its arrival time."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="edgeav-notify-")
        self.path = os.path.join(self.dir, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._run = True
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while self._run:
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, OSError):
                continue
            for line in data.decode().splitlines():
                self.messages.append((time.monotonic(), line))

    def lines(self, prefix: str, since: float = 0.0) -> list[str]:
        return [m for t, m in list(self.messages) if m.startswith(prefix) and t >= since]

    def close(self) -> None:
        self._run = False
        self._thread.join(timeout=2)
        self.sock.close()
        os.unlink(self.path)
        os.rmdir(self.dir)


def write_config(path: Path, bundle: Path, rtsp_url: str, mqtt_port: int, state: Path,
                 metrics_port: int | None = None, cameras: tuple[str, ...] = ("gate",)) -> Path:
    cfg = {
        "node": {"name": "box1"}, "models": {"bundle": str(bundle)},
        "cameras": [{"name": name, "video": {"url": rtsp_url}, "audio": {"source": "camera"}} for name in cameras],
        "anomaly": {"min_duration_s": 0.3, "cooldown_s": 0},
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port, "keepalive": 5},
        "storage": {"state_dir": str(state), "clip_pre_s": 2, "clip_post_s": 2},
        "metrics": {"listen": f"127.0.0.1:{metrics_port}" if metrics_port else None},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def start_daemon(cfg: Path, log: Path, notify: NotifyListener | None = None) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(REPO), WATCHDOG_USEC="1000000")
    if notify is not None:
        env["NOTIFY_SOCKET"] = notify.path
    with open(log, "ab") as f:
        return subprocess.Popen(["timeout", "-s", "KILL", "170", sys.executable, "-m", "edgeav.cli", "run",
                                 "--config", str(cfg), "--progress-timeout", "1", "--stats-interval", "2"],
                                stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def kill9(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the daemon (and the `timeout` guarding it): its own process group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def signal_daemon(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Signal the daemon itself, not the `timeout` guarding it (timeout forwards only the first HUP)."""
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    assert len(children) == 1, children
    os.kill(int(children[0]), sig)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        kill9(proc)


def alerts_on(sub: Subscriber) -> list[dict]:
    out = []
    for payload in sub.on(f"{BASE}/gate/alerts"):
        rec = json.loads(payload)
        jsonschema.validate(rec, load_schema("alert"))
        out.append(rec)
    return out


def test_daemon_notify_alerts_clips_metrics_and_sigterm(scene, tmp_path):
    notify = NotifyListener()
    metrics_port = free_port()
    with Broker() as broker, RtspServer(scene["footage"], max_seconds=150) as camera:
        sub = Subscriber(broker.port, [f"{BASE}/#"])
        # Two cameras (two sessions on the same server): one pipeline each.
        cfg = write_config(tmp_path / "edgeav.yaml", scene["bundle"], camera.url, broker.port, tmp_path / "state",
                           metrics_port, cameras=("gate", "yard"))
        log = tmp_path / "daemon.log"
        proc = start_daemon(cfg, log, notify)
        try:
            wait_until(lambda: notify.lines("READY=1"), 30, "READY=1")
            # READY once the camera streams (its STATUS travels in the same datagram).
            msgs = [m for _t, m in notify.messages]
            assert msgs[msgs.index("READY=1") + 1].startswith("STATUS=2/2 cameras streaming"), msgs[:10]
            wait_until(lambda: b"online" in sub.on(f"{BASE}/status"), 10, "online")
            # The second alert: the first comes too soon after the stream starts to have 2 s before it.
            wait_until(lambda: len(alerts_on(sub)) >= 2, 30, "alerts with their clips")
            alert = alerts_on(sub)[1]
            # The evidence clip: in the alert, on disk, the hash matches, PyAV opens it with video and audio.
            clip = alert["clip"]
            data = Path(clip["path"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == clip["sha256"]
            with av.open(clip["path"]) as c:
                assert sorted(s.type for s in c.streams) == ["audio", "video"]
                frames = [f.to_ndarray(format="rgb24").reshape(-1, 3).mean(0) for f in c.decode(video=0)]
            assert len(frames) >= 40  # 2 s before to 2 s after, 10 fps
            red = [rgb for rgb in frames if rgb[0] > 150 and rgb[2] < 100]
            assert len(red) >= 8, "the clip shows what raised the alert (a red second)"
            # State (retained) and stats, valid against their schemas.
            wait_until(lambda: sub.on(f"{BASE}/stats"), 10, "stats")
            jsonschema.validate(json.loads(sub.on(f"{BASE}/stats")[-1]), load_schema("stats"))
            state = json.loads(sub.on(f"{BASE}/gate/state")[-1])
            jsonschema.validate(state, load_schema("state"))
            # Prometheus endpoint.
            text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
            assert "edgeav_up 1" in text
            assert 'edgeav_camera_alerts_total{camera="gate"}' in text
            assert 'edgeav_camera_windows_total{camera="yard"}' in text
            wait_until(lambda: sub.on(f"{BASE}/yard/alerts"), 10, "the second camera's alert")
            assert "edgeav_outbox_depth " in text and "edgeav_mqtt_connected 1" in text
            assert 'edgeav_source_streaming{camera="gate",source="video"} 1' in text
            assert 'edgeav_camera_embed_seconds_total{camera="gate"}' in text
            for line in text.splitlines():  # the exposition format: comments, or `name{labels} number`
                assert line.startswith("# ") or re.fullmatch(r'[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})? \S+', line), line
            assert len(notify.lines("READY=1")) == 1
            # SIGHUP with a broken config: one clear log line, the running config kept.
            good = cfg.read_text()
            cfg.write_text(good.replace("cooldown_s: 0", "cooldown_s: -5"))
            signal_daemon(proc, signal.SIGHUP)
            wait_until(lambda: "keeping the running config" in log.read_text(), 10, "the refused reload")
            assert "anomaly.cooldown_s" in log.read_text() and proc.poll() is None
            # SIGHUP with a changed one: applied (the camera restarts with the new anomaly policy).
            cfg.write_text(good.replace("cooldown_s: 0", "cooldown_s: 1"))
            signal_daemon(proc, signal.SIGHUP)
            wait_until(lambda: "applied" in log.read_text(), 15, "the reload")
            # the daemon logs "applied" and then notifies READY: the datagram may come a moment after the line
            wait_until(lambda: len(notify.lines("READY=1")) == 3, 5, "READY=1 after the applied reload")
            assert notify.lines("RELOADING=1") and len(notify.lines("READY=1")) == 3
            n_windows = len(sub.on(f"{BASE}/gate/state"))
            wait_until(lambda: len(sub.on(f"{BASE}/gate/state")) > n_windows + 1, 15, "windows after the reload")
            # The watchdog is fed while the camera streams...
            t_cut = time.monotonic()
            assert notify.lines("WATCHDOG=1", since=t_cut - 2)
            assert any("2/2 progressing" in s for s in notify.lines("STATUS="))
            # ...and withheld while nothing moves: the camera freezes (SIGSTOP: the connection stays open, no
            # data, no error yet). Windows still due are emitted within the 1 s deadline, then nothing moves:
            # after the 1 s progress timeout the pings stop, until the source's stall detection at 5 s.
            assert camera.proc is not None
            os.killpg(camera.proc.pid, signal.SIGSTOP)
            t_freeze = time.monotonic()
            time.sleep(4.6)
            quiet = notify.lines("WATCHDOG=1", since=t_freeze + 2.9)
            pings = [round(t - t_freeze, 2) for t, m in list(notify.messages) if m == "WATCHDOG=1" and t > t_freeze]
            assert not quiet, f"watchdog fed while the pipeline made no progress: pings at {pings} s"

            assert notify.lines("STATUS=", since=t_freeze + 2.9)
            camera.kill()
            # SIGTERM: exit 0 within 10 s, offline published.
            t0 = time.monotonic()
            signal_daemon(proc, signal.SIGTERM)
            code = proc.wait(timeout=10)
            took = time.monotonic() - t0
            assert code == 0, log.read_text()[-3000:]
            assert took < 10
            wait_until(lambda: sub.on(f"{BASE}/status")[-1:] == [b"offline"], 5, "offline")
            assert notify.lines("STOPPING=1")
            assert "Traceback" not in log.read_text()
        finally:
            stop(proc)
            sub.close()
            notify.close()


def queued_alert_ids(state: Path) -> set[str]:
    db = state / "outbox.sqlite3"
    if not db.exists():
        return set()
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return {r[0] for r in con.execute("SELECT msg_id FROM outbox WHERE topic LIKE '%/alerts'")}
    except sqlite3.OperationalError:  # the daemon is creating it right now
        return set()


def test_daemon_killed_mid_burst_delivers_every_alert_after_restart(scene, tmp_path):
    """The broker is away; alerts pile up; the daemon is SIGKILLed; restarted with a broker: all arrive."""
    port = free_port()
    state = tmp_path / "state"
    with RtspServer(scene["footage"], max_seconds=150) as camera:
        cfg = write_config(tmp_path / "edgeav.yaml", scene["bundle"], camera.url, port, state)
        log = tmp_path / "daemon.log"
        proc = start_daemon(cfg, log)
        try:
            wait_until(lambda: len(queued_alert_ids(state)) >= 2, 40, "two alerts raised")
            kill9(proc)
        finally:
            stop(proc)
        raised = queued_alert_ids(state)
        with Broker(port=port):
            sub = Subscriber(port, [f"{BASE}/#"])
            proc = start_daemon(cfg, log)
            try:
                wait_until(lambda: raised <= {a["id"] for a in alerts_on(sub)}, 30, "every alert raised before")
                # The node is online again, and a kill -9 now is reported by the broker's last will.
                wait_until(lambda: sub.on(f"{BASE}/status")[-1:] == [b"online"], 10, "online")
                kill9(proc)
                wait_until(lambda: sub.on(f"{BASE}/status")[-1:] == [b"offline"], 10, "the last will")
            finally:
                stop(proc)
                sub.close()


def test_daemon_with_wrong_password_keeps_running_and_stops_cleanly(scene, tmp_path):
    """Wrong credentials: one log line naming the refusal (never the password), retries, alerts kept, exit 0."""
    wrong = "wrong-Secret-42"
    with Broker(users={"edge": "the-right-one"}) as broker, RtspServer(scene["footage"], max_seconds=150) as camera:
        state = tmp_path / "state"
        cfg = write_config(tmp_path / "edgeav.yaml", scene["bundle"], camera.url, broker.port, state)
        secret = tmp_path / "mqtt.pass"
        secret.write_text(wrong + "\n")
        secret.chmod(0o600)
        data = yaml.safe_load(cfg.read_text())
        data["mqtt"].update(username="edge", password_file=str(secret))
        cfg.write_text(yaml.safe_dump(data))
        log = tmp_path / "daemon.log"
        proc = start_daemon(cfg, log)
        try:
            wait_until(lambda: queued_alert_ids(state), 30, "an alert queued while the broker refuses us")
            text = log.read_text()
            refusals = [ln for ln in text.splitlines() if "refused the connection" in ln]
            assert len(refusals) == 1 and "Not authorized" in refusals[0], refusals
            assert proc.poll() is None
            t0 = time.monotonic()
            signal_daemon(proc, signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
            assert time.monotonic() - t0 < 10
            text = log.read_text()
            assert wrong not in text and "Traceback" not in text
            assert "stay queued" in text  # and the next start delivers them (see the SIGKILL test)
        finally:
            stop(proc)
