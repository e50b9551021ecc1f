"""A real-time virtual microphone for tests: a PulseAudio user daemon with a null sink and a virtual source.

The container has no sound card (design.md section 7). ``module-null-sink`` renders in real time
and ``module-virtual-source`` on its monitor is a microphone: whatever is played into the sink is
captured back through sounddevice's ``pulse`` device. The daemon runs under ``timeout`` with its own
runtime directory, so it never outlives the test run and never touches a user's session.

Clients find it through the environment (:meth:`VirtualMic.env`): ``PULSE_SERVER`` (the daemon's
socket) and ``PULSE_SOURCE``/``PULSE_SINK`` (record from the virtual source by name, so when the
source is unloaded the recording really fails instead of being moved to another source).

Run as a script, ``python tests/virtual_mic.py click AT_UNIX`` plays a short click into the sink so
that it is rendered at ``AT_UNIX`` (PortAudio's DAC time, checked against the clock) and prints
``CLICK <unix time it was scheduled at> <how: dac|late> written=<unix time of the callback>``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SINK = "edgeav_test_sink"
SOURCE = "edgeav_test_mic"


def mic_available() -> str | None:
    """None when a virtual microphone can run here, else why not (for ``pytest.skip``)."""
    for tool in ("pulseaudio", "pactl", "timeout"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (pulseaudio, pulseaudio-utils; see .ci/run)"
    return None


class VirtualMic:
    """Start with :meth:`start`; :meth:`unplug` / :meth:`plug` make the microphone vanish and return."""

    def __init__(self, max_seconds: int = 300) -> None:
        self.max_seconds = max_seconds
        self.dir = Path(tempfile.mkdtemp(prefix="edgeav-pulse-"))
        self.socket = self.dir / "native"
        self.proc: subprocess.Popen[bytes] | None = None
        self.modules: list[int] = []

    def env(self) -> dict[str, str]:
        return {"PULSE_SERVER": f"unix:{self.socket}", "PULSE_SOURCE": SOURCE, "PULSE_SINK": SINK,
                "PULSE_RUNTIME_PATH": str(self.dir), "PULSE_STATE_PATH": str(self.dir),
                "HOME": os.environ.get("HOME", str(self.dir))}

    def apply_env(self) -> None:
        """Point this process's PulseAudio clients (sounddevice through ALSA) at the virtual microphone."""
        os.environ.update(self.env())

    def _pactl(self, *args: str) -> str:
        out = subprocess.run(["timeout", "20", "pactl", *args], capture_output=True, text=True,
                             env={**os.environ, **self.env()})
        if out.returncode != 0:
            raise RuntimeError(f"pactl {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout.strip()

    def start(self) -> VirtualMic:
        log = open(self.dir / "pulse.log", "wb")  # noqa: SIM115 - kept open for the daemon's lifetime
        self.proc = subprocess.Popen(
            ["timeout", "-s", "KILL", str(self.max_seconds), "pulseaudio", "-n", "--daemonize=no",
             "--exit-idle-time=-1", "--disable-shm=yes", "--realtime=yes", "--high-priority=yes",
             "-L", f"module-native-protocol-unix socket={self.socket} auth-anonymous=1"],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env()}, start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("pulseaudio exited: " + (self.dir / "pulse.log").read_text()[-500:])
            try:
                self._pactl("info")
                break
            except RuntimeError:
                time.sleep(0.1)
        else:
            self.stop()
            raise RuntimeError("pulseaudio did not start")
        self.plug()
        return self

    def plug(self) -> None:
        """Load the null sink and the virtual source on its monitor (the microphone appears)."""
        self.modules.append(int(self._pactl("load-module", "module-null-sink", f"sink_name={SINK}", "rate=48000")))
        self.modules.append(int(self._pactl("load-module", "module-virtual-source", f"source_name={SOURCE}",
                                            f"master={SINK}.monitor")))
        self._pactl("set-default-source", SOURCE)
        self._pactl("set-default-sink", SINK)

    def unplug(self) -> None:
        """Unload both modules (the microphone vanishes, as an unplugged USB microphone does).

        Unloading only the virtual source is not enough: PulseAudio (14 and later) moves its
        recording streams to another source, the sink's monitor, and the audio keeps flowing.
        With no source left, the recording stream is killed, as with real hardware.
        """
        while self.modules:
            self._pactl("unload-module", str(self.modules.pop()))

    def click_at(self, at_unix: float, timeout: float = 30) -> subprocess.Popen[str]:
        """Start a helper that plays a click rendered at ``at_unix``; read its ``CLICK`` line when done."""
        return subprocess.Popen(["timeout", str(int(timeout)), sys.executable, __file__, "click", repr(at_unix)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, **self.env()})

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> VirtualMic:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _click(at_unix: float, rate: int = 48000) -> None:
    """Play a 5 ms full-scale 2 kHz burst so that it is rendered at ``at_unix``.

    The output stream starts 1.5 s ahead so it is in its steady state; in the callback whose
    buffer covers ``at_unix`` (by PortAudio's DAC time, mapped to Unix time with the callback's
    own clock reading), the burst is placed at the matching sample. A DAC time that is not within
    0..0.5 s ahead of now is not believed: the burst is then written as soon as ``at_unix`` passes.
    """
    import numpy as np
    import sounddevice as sd

    burst = (0.9 * np.sin(2 * np.pi * 2000 * np.arange(int(0.005 * rate)) / rate)).astype(np.float32)
    done: list[tuple[float, str]] = []

    def callback(out: np.ndarray, frames: int, ti: object, status: object) -> None:
        out[:] = 0
        if done:
            return
        now = time.time()
        dac = ti.outputBufferDacTime + (now - ti.currentTime)  # type: ignore[attr-defined]
        if 0.0 <= dac - now <= 0.5:
            i = round((at_unix - dac) * rate)
            if 0 <= i < frames:
                n = min(len(burst), frames - i)
                out[i:i + n, 0] = burst[:n]
                done.append((dac + i / rate, f"dac written={now:.6f}"))
                return
            if i >= frames:
                return
        if now >= at_unix:
            out[: min(len(burst), frames), 0] = burst[:frames]
            done.append((now, f"late written={now:.6f}"))

    wait = at_unix - 1.5 - time.time()
    if wait > 0:
        time.sleep(wait)
    with sd.OutputStream(device="pulse", samplerate=rate, channels=1, dtype="float32", blocksize=480,
                         latency="low", callback=callback):
        while not done and time.time() < at_unix + 3:
            time.sleep(0.01)
        time.sleep(0.3)
    if done:
        print(f"CLICK {done[0][0]:.6f} {done[0][1]}", flush=True)
    else:
        print("NOCLICK", flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "click":
        _click(float(sys.argv[2]))
    else:
        sys.exit("usage: virtual_mic.py click AT_UNIX")
