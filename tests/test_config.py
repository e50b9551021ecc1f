"""The typed config and `edgeav config check`, through the real command line.

Every malformed config must give the project's error contract: exit 2, ONE line on
stderr naming the file, the field path, the bad value and what is allowed, no traceback.
"""

from __future__ import annotations

import logging
import re
import typing
from pathlib import Path

import pytest
import yaml
from conftest import REPO, assert_one_line_error, run_edgeav
from pydantic import BaseModel, ValidationError

from edgeav.config import Config, _model_in, apply_logging, load_config, parse_config
from edgeav.errors import UserError

EXAMPLE = REPO / "configs" / "edgeav.example.yaml"

CAMERA = '{name: gate, video: {url: "rtsp://10.0.0.5/stream1"}}'

# (id, config text, needles the one error line must contain besides the file name)
MALFORMED = [
    ("unknown-key", 'cameras: [{name: gate, vidoe: {url: "rtsp://h/s"}}]',
     ["cameras[0].vidoe", "unknown key", "allowed keys are name, video, audio, av_offset_ms"]),
    ("unknown-section", "camera: []", ["camera:", "unknown key", "did you mean 'cameras'"]),
    ("wrong-type", 'mqtt: {port: "1883"}', ["mqtt.port", '"1883"', "whole number"]),
    ("wrong-type-bool", "mqtt: {discovery: 1}", ["mqtt.discovery", "1", "true or false"]),
    ("negative-duration", "anomaly: {cooldown_s: -5}", ["anomaly.cooldown_s", "-5", "must not be negative"]),
    ("escalation-below-1", "anomaly: {escalation: 0.5}", ["anomaly.escalation", "0.5"]),
    ("camera-without-video", "cameras: [{name: gate, audio: {source: none}}]",
     ["cameras[0].video", "missing", "required"]),
    ("camera-with-empty-video", "cameras: [{name: gate, video: {}}]",
     ["cameras[0].video", "exactly one of url", "neither"]),
    ("duplicate-camera-names", f"cameras: [{CAMERA}, {{name: yard, video: {{url: 'rtsp://h/2'}}}}, {CAMERA}]",
     ["cameras[2].name", '"gate"', "unique", "cameras[0]"]),
    ("url-without-scheme", "cameras: [{name: gate, video: {url: 10.0.0.5/stream1}}]",
     ["cameras[0].video.url", "10.0.0.5/stream1", "no scheme", "rtsp, rtsps, http, https"]),
    ("url-bad-scheme", "cameras: [{name: gate, video: {url: 'ftp://10.0.0.5/x'}}]",
     ["cameras[0].video.url", "ftp://10.0.0.5/x", "rtsp, rtsps, http, https"]),
    ("port-0", "mqtt: {port: 0}", ["mqtt.port", ": 0:", "between 1 and 65535"]),
    ("port-70000", "mqtt: {port: 70000}", ["mqtt.port", "70000", "between 1 and 65535"]),
    ("mqtt-host-with-scheme", "mqtt: {host: 'mqtt://broker.lan'}", ["mqtt.host", "mqtt://broker.lan", "host name"]),
    ("qos-3", "mqtt: {qos: 3}", ["mqtt.qos", "3", "between 0 and 2"]),
    ("threshold-above-1", "events: {start_threshold: 1.5}", ["events.start_threshold", "1.5", "between 0 and 1"]),
    ("end-above-start", "events: {start_threshold: 0.5, end_threshold: 0.7}",
     ["events.end_threshold", "0.7", "<= start_threshold"]),
    ("unknown-audio-source", f"cameras: [{CAMERA[:-1]}, audio: {{source: speaker}}}}]",
     ["cameras[0].audio.source", '"speaker"', "camera, microphone or none"]),
    ("device-without-microphone", f"cameras: [{CAMERA}, {{name: yard, video: {{url: 'rtsp://h/2'}}, "
                                  "audio: {source: camera, device: pulse}}]",
     ["cameras[1].audio.device", '"pulse"', "source: microphone"]),
    ("bad-camera-name", "cameras: [{name: 'gate/1', video: {url: 'rtsp://h/s'}}]",
     ["cameras[0].name", '"gate/1"', "letters, digits"]),
    ("list-where-mapping-belongs", "mqtt: [broker1, broker2]", ["mqtt", '["broker1", "broker2"]', "mapping"]),
    ("top-level-list", "- node\n- cameras\n", ["top level", "a list", "mapping"]),
    ("yaml-syntax-error", "mqtt:\n  host: a\n port: 1\n", [":3:2:", "YAML syntax error"]),
    ("duplicate-key", "mqtt: {host: a}\nmqtt: {host: b}\n", [":2:1:", "duplicate key 'mqtt'"]),
    ("empty-file", "", ["empty"]),
    ("only-comments", "# nothing here\n", ["empty"]),
]


@pytest.mark.parametrize(("text", "needles"), [(t, n) for _, t, n in MALFORMED], ids=[i for i, _, _ in MALFORMED])
def test_malformed_config_gives_one_line_error(tmp_path: Path, text: str, needles: list[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    proc = run_edgeav("config", "check", path, timeout=60)
    line = assert_one_line_error(proc, str(path), *needles)
    assert proc.stdout == "", "no partial effective config may be printed on an error"
    assert line.startswith("edgeav: error: ")


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_unreadable_password_file(tmp_path: Path, kind: str) -> None:
    # The tests may run as root, where chmod 000 does not stop reading: a path that cannot be read
    # as a file by anyone (absent, or a directory) exercises the same load-time check.
    secret = tmp_path / "mqtt.pass"
    if kind == "directory":
        secret.mkdir()
    path = tmp_path / "edgeav.yaml"
    path.write_text(f"mqtt: {{username: edge, password_file: {secret}}}\n")
    proc = run_edgeav("config", "check", path, timeout=60)
    reason = "no such file" if kind == "missing" else "is a directory"
    assert_one_line_error(proc, str(path), "mqtt.password_file", str(secret), reason)


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert_one_line_error(run_edgeav("config", "check", path, timeout=60), str(path), "no such file")


def test_credentials_in_a_bad_url_are_not_echoed(tmp_path: Path) -> None:
    path = tmp_path / "edgeav.yaml"
    path.write_text("cameras: [{name: gate, video: {url: 'admin:hunter2@10.0.0.5/stream1'}}]\n")
    proc = run_edgeav("config", "check", path, timeout=60)
    assert_one_line_error(proc, "cameras[0].video.url", "no scheme", "10.0.0.5/stream1")
    assert "hunter2" not in proc.stderr


def test_effective_config_masks_secrets_fills_defaults_and_round_trips(tmp_path: Path) -> None:
    secret = tmp_path / "mqtt.pass"
    secret.write_text("hunter2\n")
    secret.chmod(0o600)
    footage = tmp_path / "footage" / "yard.mp4"
    footage.parent.mkdir()
    footage.write_bytes(b"")  # only its presence is checked at load time
    path = tmp_path / "edgeav.yaml"
    path.write_text(
        "node: {name: box1}\n"
        "cameras:\n"
        "  - {name: gate, video: {url: 'rtsp://user:pass@10.0.0.5/stream1?channel=1&password=pass'}}\n"
        "  - {name: yard, video: {file: footage/yard.mp4}, audio: {source: none}}\n"
        "mqtt: {username: edge, password_file: mqtt.pass, tls: {}}\n"
        "storage: {state_dir: state, retention: {max_bytes: 2GB}}\n"
    )
    proc = run_edgeav("config", "check", path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for leak in ("user:pass", "pass@", "password=pass", "hunter2"):
        assert leak not in out + proc.stderr
    assert "rtsp://***@10.0.0.5/stream1" in out
    effective = yaml.safe_load(out)
    assert effective["cameras"][0]["video"]["url"].startswith("rtsp://***@10.0.0.5/stream1?channel=1&password=")
    # defaults, including derived ones, are filled in
    assert effective["events"] == {"start_threshold": 0.6, "end_threshold": 0.4, "start_windows": 1, "end_windows": 2}
    assert effective["anomaly"]["cooldown_s"] == 3
    assert effective["anomaly"]["escalation"] == 1.5
    assert effective["mqtt"]["port"] == 8883  # tls set and no port: the TLS port
    assert effective["mqtt"]["keepalive"] == 60 and effective["mqtt"]["qos"] == 1
    assert effective["mqtt"]["client_id"] == "edgeav-box1"
    assert effective["cameras"][0]["audio"]["source"] == "camera"
    assert effective["logging"]["level"] == "info"
    # relative paths are taken relative to the config file, and sizes are bytes
    assert effective["cameras"][1]["video"]["file"] == str(footage)
    assert effective["storage"]["clips_dir"] == str(tmp_path / "state" / "clips")
    assert effective["storage"]["retention"]["max_bytes"] == 2_000_000_000
    assert effective["mqtt"]["password_file"] == str(secret)
    # the effective config is itself a valid config with the same effect (masked URL aside)
    again = tmp_path / "effective.yaml"
    again.write_text(out)
    proc2 = run_edgeav("config", "check", again, timeout=60)
    assert proc2.returncode == 0, proc2.stderr
    assert yaml.safe_load(proc2.stdout) == effective


def test_example_config_is_valid() -> None:
    proc = run_edgeav("config", "check", EXAMPLE, timeout=60)
    assert proc.returncode == 0, proc.stderr
    effective = yaml.safe_load(proc.stdout)
    assert [c["name"] for c in effective["cameras"]] == ["gate", "yard"]
    assert "user:pass" not in proc.stdout


# ----------------------------------------------------------------- the example documents the whole schema


def _schema_paths(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Every field of the config models as a dotted path; list items collapse (cameras.video.url)."""
    paths: set[str] = set()
    for name, field in model.model_fields.items():
        path = prefix + name
        paths.add(path)
        sub = _model_in(field.annotation)
        if sub is not None:
            paths |= _schema_paths(sub, path + ".")
    return paths


def _data_paths(data: typing.Any, prefix: str = "") -> set[str]:
    paths: set[str] = set()
    if isinstance(data, list):
        for item in data:
            paths |= _data_paths(item, prefix)
    elif isinstance(data, dict):
        for key, value in data.items():
            path = prefix + str(key)
            paths.add(path)
            paths |= _data_paths(value, path + ".")
    return paths


# An optional key shown commented out: "# key: value" at the key's own indentation.
_COMMENTED_KEY = re.compile(r"^(?P<indent>\s*)# (?P<more>\s*)(?P<key>[a-z_]+:(?:\s.*)?)$")


def _uncommented(text: str) -> str:
    return "\n".join(
        (m.group("indent") + m.group("more") + m.group("key")) if (m := _COMMENTED_KEY.match(line)) else line
        for line in text.splitlines()
    )


def test_example_documents_every_field() -> None:
    text = EXAMPLE.read_text()
    documented = _data_paths(yaml.safe_load(_uncommented(text)))  # plain SafeLoader: alternatives may repeat a key
    schema = _schema_paths(Config)
    assert schema - documented == set(), "fields missing from configs/edgeav.example.yaml"
    assert documented - schema == set(), "keys in the example that the config does not have"
    # every key line says what it is for: a trailing comment, or a comment line right above it
    lines = _uncommented(text).splitlines()
    for number, line in enumerate(lines):
        if re.match(r"^\s*(- )?[a-z_]+:", line) and "#" not in line:
            above = lines[number - 1].strip() if number else ""
            assert above.startswith("#"), f"example line {number + 1} has no comment: {line!r}"


# ----------------------------------------------------------------- the Python API other modules use


def test_api_returns_frozen_models_and_user_errors(tmp_path: Path) -> None:
    config = parse_config({"cameras": [{"name": "gate", "video": {"url": "rtsp://h/s"}}]}, "inline")
    assert config.camera("gate").audio.source == "camera"
    assert config.mqtt is None and config.metrics.port == 9108 and config.metrics.host == "127.0.0.1"
    with pytest.raises(ValidationError):
        config.events.start_threshold = 0.1  # type: ignore[misc]
    with pytest.raises(UserError, match=r"^inline: mqtt\.port: 0: must be between 1 and 65535$"):
        parse_config({"mqtt": {"port": 0}}, "inline")
    path = tmp_path / "edgeav.yaml"
    path.write_text("logging: {level: DEBUG}\nmqtt: {}\n")
    loaded = load_config(path)
    assert loaded.logging.level == "debug" and loaded.mqtt is not None and loaded.mqtt.port == 1883
    root = logging.getLogger()
    saved = root.level, list(root.handlers)
    try:
        apply_logging(loaded)
        assert root.level == logging.DEBUG
        apply_logging(loaded, cli_level="warning")  # `edgeav --log-level` wins over the file
        assert root.level == logging.WARNING
    finally:
        for handler in root.handlers[:]:
            if handler not in saved[1]:
                root.removeHandler(handler)
        root.setLevel(saved[0])
