"""`edgeav replay FOOTAGE --config FILE` with an mqtt section: the daemon's payloads via the durable outbox."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from alert_footage import make_alert_bundle, write_alert_footage
from conftest import run_edgeav
from mqtt_broker import Broker, Subscriber, free_port, wait_until

from edgeav.records import load_schema


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("replay_mqtt")
    footage = d / "gate.mp4"
    reds = write_alert_footage(footage, seconds=9.0)
    assert len(reds) == 3
    return {"dir": d, "footage": footage, "bundle": make_alert_bundle(d / "bundle")}


def write_config(path: Path, bundle: Path, port: int, state: Path) -> Path:
    path.write_text(yaml.safe_dump({
        "node": {"name": "box1"}, "models": {"bundle": str(bundle)},
        "anomaly": {"min_duration_s": 0.3, "cooldown_s": 0},
        "mqtt": {"host": "127.0.0.1", "port": port, "keepalive": 10},
        "storage": {"state_dir": str(state)}}))
    return path


def test_replay_publishes_every_alert_valid_against_the_schema(scene, tmp_path):
    with Broker() as broker:
        sub = Subscriber(broker.port, ["edgeav/box1/#"])
        cfg = write_config(tmp_path / "c.yaml", scene["bundle"], broker.port, tmp_path / "state")
        out = tmp_path / "events.jsonl"
        proc = run_edgeav("replay", scene["footage"], "--models", scene["bundle"], "--config", cfg, "--out", out,
                          "--quiet", timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "every event and alert was delivered" in proc.stderr
        written = [json.loads(line) for line in out.read_text().splitlines()]
        alerts = [r for r in written if r["type"] == "alert"]
        assert len(alerts) == 3
        wait_until(lambda: len(sub.on("edgeav/box1/gate/alerts")) >= 3, 10, "the alerts")
        got = [json.loads(p) for p in sub.on("edgeav/box1/gate/alerts")]
        for rec in got:
            jsonschema.validate(rec, load_schema("alert"))
        assert got == alerts  # the same payloads as the JSON lines, byte for byte in content
        # A helper run never speaks for the node's availability (that is the daemon's).
        assert sub.on("edgeav/box1/status") == []
        sub.close()


def test_replay_without_broker_says_what_remains_and_next_run_delivers_it(scene, tmp_path):
    port = free_port()
    state = tmp_path / "state"
    cfg = write_config(tmp_path / "c.yaml", scene["bundle"], port, state)
    proc = run_edgeav("replay", scene["footage"], "--models", scene["bundle"], "--config", cfg, "--quiet",
                      "--drain-timeout", "1", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "3 message(s) remain queued" in proc.stderr and "outbox.sqlite3" in proc.stderr, proc.stderr
    with Broker(port=port):
        sub = Subscriber(port, ["edgeav/box1/+/alerts"])
        proc = run_edgeav("replay", scene["footage"], "--models", scene["bundle"], "--config", cfg, "--quiet",
                          "--camera", "other", timeout=120)
        assert proc.returncode == 0 and "every event and alert was delivered" in proc.stderr, proc.stderr
        wait_until(lambda: len(sub.messages) >= 6, 10, "the queued and the new alerts")
        assert len(sub.on("edgeav/box1/gate/alerts")) == 3  # queued by the first run, delivered by the second
        assert len(sub.on("edgeav/box1/other/alerts")) == 3
        sub.close()
