"""A real RTSP server on loopback for tests: GStreamer's RTSP server serving an MP4 (H.264 + AAC).

Debian has no live555 server and ``ffmpeg -rtsp_flags listen`` only receives (design.md section 7),
so this file is two things:

* run as a script by the SYSTEM interpreter (``/usr/bin/python3``, which has ``python3-gi``; the
  project's virtualenv does not), it serves ``rtsp://127.0.0.1:PORT/stream`` until killed and prints
  ``READY`` and, each time a client starts playing, ``PLAY <unix time of media position 0>`` (the
  sender's wall clock for the file's first instant, so a test knows when any moment of the file is
  "live");
* imported by tests, :class:`RtspServer` starts that script under ``timeout`` (a forgotten server
  can never outlive the test run), waits for READY, and can be killed and restarted on the same port.

Needs the Debian packages gstreamer1.0-rtsp, gir1.2-gst-rtsp-server-1.0, python3-gi and
gstreamer1.0-plugins-{base,good,bad} (see APT_PACKAGES in .ci/run).
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

SYSTEM_PYTHON = "/usr/bin/python3"
MOUNT = "/stream"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_available() -> str | None:
    """None when the server can run here, else why not (for ``pytest.skip``)."""
    if not os.path.exists(SYSTEM_PYTHON) or shutil.which("timeout") is None:
        return f"{SYSTEM_PYTHON} or timeout(1) missing"
    probe = subprocess.run(
        ["timeout", "20", SYSTEM_PYTHON, "-c",
         "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer"],
        capture_output=True, text=True)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return f"GStreamer RTSP server not usable (gir1.2-gst-rtsp-server-1.0, python3-gi): {last}"
    return None


class RtspServer:
    """Serve ``footage`` (MP4, H.264 video + optional AAC audio) at :attr:`url` while started."""

    def __init__(self, footage: str | os.PathLike[str], port: int | None = None, *, audio: bool = True,
                 max_seconds: int = 120) -> None:
        self.footage = Path(footage)
        self.port = port or free_port()
        self.audio = audio
        self.max_seconds = max_seconds
        self.proc: subprocess.Popen[str] | None = None
        self.plays: queue.Queue[float] = queue.Queue()
        self.log: list[str] = []

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}{MOUNT}"

    def start(self, ready_timeout: float = 20.0) -> RtspServer:
        cmd = ["timeout", "-s", "KILL", str(self.max_seconds), SYSTEM_PYTHON, "-u", __file__,
               str(self.footage), str(self.port), "1" if self.audio else "0"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        ready = threading.Event()
        threading.Thread(target=self._read, args=(self.proc, ready), daemon=True).start()
        if not ready.wait(ready_timeout):
            self.kill()
            raise RuntimeError("RTSP server did not start: " + " | ".join(self.log[-10:]))
        return self

    def _read(self, proc: subprocess.Popen[str], ready: threading.Event) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.strip()
            self.log.append(line)
            if line == "READY":
                ready.set()
            elif line.startswith("PLAY "):
                self.plays.put(float(line.split()[1]))

    def kill(self) -> None:
        """Kill the server at once (SIGKILL to its process group: no goodbye to the clients)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self) -> RtspServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


# ------------------------------------------------------------------------------------- the server itself

def _launch_line(footage: str, audio: bool) -> str:
    loc = footage.replace('"', '\\"')
    line = (f'( filesrc location="{loc}" ! qtdemux name=d '
            "d.video_0 ! queue ! h264parse config-interval=-1 ! rtph264pay name=pay0 pt=96 ")
    if audio:
        line += "d.audio_0 ! queue ! aacparse ! rtpmp4gpay name=pay1 pt=97 "
    return line + ")"


def _serve(footage: str, port: int, audio: bool) -> None:  # pragma: no cover - runs under /usr/bin/python3
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(_launch_line(footage, audio))
    factory.set_shared(False)  # every client gets the file from its start

    medias: list = []

    def report_play() -> bool:
        # Polled, not a state-change signal: "new-state" can fire before the pipeline has its clock.
        for media in list(medias):
            element = media.get_element()
            pipeline = element.get_parent() or element
            clock = pipeline.get_clock()
            _, state, _ = pipeline.get_state(0)
            if clock is None or state != Gst.State.PLAYING:
                continue
            # Running time 0 is media position 0 (no seek); the sinks render running time rt at wall
            # time  now - (running_now - rt): the same mapping the RTCP sender reports carry.
            running_now = (clock.get_time() - pipeline.get_base_time()) / 1e9
            print(f"PLAY {time.time() - running_now:.6f}", flush=True)
            medias.remove(media)
        return True

    def on_configure(_factory: GstRtspServer.RTSPMediaFactory, media: GstRtspServer.RTSPMedia) -> None:
        medias.append(media)

    factory.connect("media-configure", on_configure)
    GLib.timeout_add(20, report_play)
    server.get_mount_points().add_factory(MOUNT, factory)
    if server.attach(None) == 0:
        print(f"ERROR cannot listen on 127.0.0.1:{port}", flush=True)
        sys.exit(1)
    print("READY", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    _serve(sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1")
