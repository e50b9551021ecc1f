"""A real mosquitto on a free loopback port, started and stopped by the test (design.md section 7).

:class:`Broker` writes its own config file (``listener PORT 127.0.0.1``, ``allow_anonymous``,
``persistence false``), optionally with a password file and/or TLS, and can be stopped and
started again on the same port (broker outages). :class:`Subscriber` collects messages with
bounded waits. Every wait here has a deadline; every process started is stopped.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(cond: Callable[[], Any], timeout: float, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Broker:
    """One mosquitto process; ``stop()``/``start()`` again keep the port and config."""

    def __init__(self, *, users: dict[str, str] | None = None,
                 tls: dict[str, Path] | None = None, persistence: bool = False, port: int | None = None) -> None:
        # Its own folder outside pytest's private (0700) tmp dirs: mosquitto started as root drops to the
        # `mosquitto` user, which must reach its password, certificate and persistence files.
        self.dir = Path(tempfile.mkdtemp(prefix="edgeav-mosquitto-"))
        self.dir.chmod(0o755)
        self._readable_by_mosquitto(self.dir)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        # persistence: subscribers' sessions (and their queued QoS-1 messages) survive a broker restart.
        lines = [f"listener {self.port} 127.0.0.1", f"persistence {'true' if persistence else 'false'}",
                 "log_dest stderr", "log_type error", "log_type warning"]
        if persistence:
            lines.append(f"persistence_location {self.dir}/")
        if users:
            pw = self.dir / "passwd"
            pw.write_text("".join(f"{u}:{p}\n" for u, p in users.items()))
            pw.chmod(0o600)
            subprocess.run(["timeout", "20", "mosquitto_passwd", "-U", str(pw)], check=True, capture_output=True)
            self._readable_by_mosquitto(pw)
            lines += ["allow_anonymous false", f"password_file {pw}"]
        else:
            lines += ["allow_anonymous true"]
        if tls:
            for key in ("cafile", "certfile", "keyfile"):
                copy = self.dir / f"{key}.pem"
                shutil.copyfile(tls[key], copy)
                self._readable_by_mosquitto(copy)
                lines.append(f"{key} {copy}")
            if tls.get("require_certificate"):
                lines.append("require_certificate true")
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.log = self.dir / "mosquitto.log"

    @staticmethod
    def _readable_by_mosquitto(path: Path) -> None:
        # Started as root, mosquitto drops to the `mosquitto` user: its files must be readable by it.
        if os.geteuid() == 0 and shutil.which("mosquitto"):
            try:
                shutil.chown(path, user="mosquitto")
            except (LookupError, PermissionError):
                path.chmod(0o644)

    def start(self, timeout: float = 10.0) -> Broker:
        assert self.proc is None or self.proc.poll() is not None
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(["timeout", "600", "mosquitto", "-c", str(self.conf)],
                                         stdout=logf, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("mosquitto did not start listening")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class Subscriber:
    """A paho client that records every message on ``topics`` (with its retain flag)."""

    def __init__(self, port: int, topics: list[str], *, username: str | None = None, password: str | None = None,
                 tls_ca: Path | None = None, client_id: str = "", persistent: bool = False) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        # persistent: a durable session (clean_session false) that the broker keeps while we are away.
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=not persistent)
        c.reconnect_delay_set(1, 1)
        if username:
            c.username_pw_set(username, password)
        if tls_ca:
            c.tls_set(ca_certs=str(tls_ca))
        c.on_connect = lambda cl, u, f, rc, p: cl.subscribe([(t, 1) for t in topics])
        c.on_subscribe = lambda *a: self._subscribed.set()
        c.on_message = self._on_message
        self.client = c
        c.connect("127.0.0.1", port, keepalive=30)
        c.loop_start()
        if not self._subscribed.wait(10):
            self.close()
            raise AssertionError("subscriber could not subscribe")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def on(self, topic: str) -> list[bytes]:
        with self._lock:
            return [p for t, p, _r in self.messages if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def make_test_ca(d: Path, host: str = "127.0.0.1") -> dict[str, Path]:
    """A CA, a server certificate for ``host`` and a client certificate, made with the openssl command."""
    d.mkdir(parents=True, exist_ok=True)

    def ssl_cmd(*args: str) -> None:
        subprocess.run(["timeout", "30", "openssl", *args], check=True, capture_output=True, cwd=d)

    ssl_cmd("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=edgeav test CA",
            "-keyout", "ca.key", "-out", "ca.pem")
    (d / "san.ext").write_text(f"subjectAltName=IP:{host},DNS:localhost\n")
    for name, cn in (("server", host), ("client", "edgeav-client")):
        ssl_cmd("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", f"{name}.key",
                "-out", f"{name}.csr")
        extra = ["-extfile", "san.ext"] if name == "server" else []
        ssl_cmd("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-out", f"{name}.pem", *extra)
    return {"cafile": d / "ca.pem", "certfile": d / "server.pem", "keyfile": d / "server.key",
            "client_cert": d / "client.pem", "client_key": d / "client.key"}
