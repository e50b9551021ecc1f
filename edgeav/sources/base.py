"""What every live source shares: its state machine, reconnect backoff, and where captures go.

States (what the health report shows for each source):

* ``connecting``  - opening the device or stream;
* ``streaming``   - data is flowing;
* ``stalled``     - open, but nothing arrived for the stall timeout (it is about to be reopened);
* ``backing_off`` - waiting before the next attempt, after a failure or a stall;
* ``stopped``     - :meth:`stop` was called.

A source never gives up: an edge box must recover by itself from a camera reboot or an
unplugged microphone at 3 am without anyone restarting the daemon.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

log = logging.getLogger(__name__)

CONNECTING = "connecting"
STREAMING = "streaming"
STALLED = "stalled"
BACKING_OFF = "backing_off"
STOPPED = "stopped"
STATES = (CONNECTING, STREAMING, STALLED, BACKING_OFF, STOPPED)
REPEAT_LOG_S = 600.0  # a failure that keeps repeating is logged again at most this often


class CaptureSink(Protocol):
    """Receives captures on the common clock. Called from capture threads: must return at once."""

    def video(self, t: float, frame: Any) -> None: ...
    def audio(self, t0: float, samples: np.ndarray) -> None: ...
    def packet(self, packet: Any) -> None: ...


@dataclass
class Backoff:
    """Exponential backoff with a cap and jitter.

    The delay doubles from ``initial_s`` up to ``cap_s``; each delay is scaled by a random
    factor in ``[1 - jitter, 1]`` so many cameras that lost the same switch do not all knock at
    once, and a delay never exceeds the cap (the cap bounds how long a source stays down after
    its camera is back: with the default 2 s, frames flow again within about 2 s + connect time).
    """

    initial_s: float = 0.5
    factor: float = 2.0
    cap_s: float = 2.0
    jitter: float = 0.25
    rng: random.Random | None = None

    def __post_init__(self) -> None:
        if not (0 < self.initial_s <= self.cap_s) or self.factor < 1 or not 0 <= self.jitter < 1:
            raise ValueError(f"bad backoff: initial {self.initial_s}, cap {self.cap_s}, factor {self.factor}, "
                             f"jitter {self.jitter}")
        self._attempt = 0
        self._rng = self.rng or random.Random()

    def next_delay(self) -> float:
        base = min(self.cap_s, self.initial_s * self.factor ** self._attempt)
        self._attempt += 1
        return base * (1.0 - self.jitter * self._rng.random())

    def reset(self) -> None:
        self._attempt = 0


class SourceStatus:
    """A source's state and counters, written by its thread and read by the health report.

    Plain attribute writes are atomic in CPython; the lock only keeps the transition log and
    the state change together.
    """

    def __init__(self, name: str, kind: str, history: int = 50) -> None:
        self.name = name
        self.kind = kind
        self.state = CONNECTING
        self.state_since = time.time()
        self.transitions: deque[tuple[float, str, str]] = deque(maxlen=history)  # (unix time, state, why)
        self.reconnects = 0
        self.frames = 0
        self.audio_blocks = 0
        self.packets = 0
        self.frames_dropped = 0                   # decoded but not used (time would have gone backwards)
        self.last_data: float | None = None     # unix time of the newest capture
        self.last_error: str | None = None
        self.clock = "none"                       # how captures are put on the common clock
        self.latency_s: float | None = None       # arrival minus capture time of the newest capture
        self._lock = threading.Lock()
        self._logged: tuple[str, float] = ("", 0.0)  # (reason, when) of the last failure logged at WARNING
        self.transitions.append((self.state_since, CONNECTING, "start"))

    def set_state(self, state: str, why: str = "") -> None:
        assert state in STATES, state
        with self._lock:
            if state == self.state:
                return
            now = time.time()
            self.state, self.state_since = state, now
            self.transitions.append((now, state, why))
        log.log(self._level(state, why, now), "%s %s: %s%s", self.kind, self.name, state, f" ({why})" if why else "")

    def _level(self, state: str, why: str, now: float) -> int:
        """Log levels that keep a camera down for a week from filling the journal.

        A retry cycle (connecting -> backing_off -> connecting ...) logs its failure once at WARNING,
        then again only when the reason changes or every ``REPEAT_LOG_S``; the rest goes to DEBUG.
        """
        if state == CONNECTING:
            return logging.DEBUG if self.reconnects else logging.INFO
        if state in (STREAMING, STOPPED):
            self._logged = ("", 0.0)
            return logging.INFO
        reason = why.split("; retry in")[0]
        last_reason, last_t = self._logged
        if reason == last_reason and now - last_t < REPEAT_LOG_S:
            return logging.DEBUG
        self._logged = (reason, now)
        return logging.WARNING

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            transitions = [{"t": round(t, 3), "state": s, "why": w} for t, s, w in self.transitions]
        return {
            "kind": self.kind, "state": self.state, "state_since": round(self.state_since, 3),
            "reconnects": self.reconnects, "frames": self.frames, "frames_dropped": self.frames_dropped,
            "audio_blocks": self.audio_blocks,
            "packets": self.packets, "last_data": None if self.last_data is None else round(self.last_data, 3),
            "last_error": self.last_error, "clock": self.clock,
            "latency_ms": None if self.latency_s is None else round(self.latency_s * 1000, 1),
            "transitions": transitions,
        }


class SourceThread:
    """A capture loop in a daemon thread with a stop flag; subclasses implement :meth:`_run`."""

    def __init__(self, status: SourceStatus) -> None:
        self.status = status
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name=f"{self.status.kind}-{self.status.name}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        """True when the thread has ended."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    @property
    def alive(self) -> bool:
        """The capture thread is running (started and not ended)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _main(self) -> None:
        try:
            self._run()
        except Exception:  # a bug must not kill capture silently: log it; the camera's health shows it
            log.exception("%s %s: capture thread failed", self.status.kind, self.status.name)
            self.status.last_error = "internal error (see log)"
        self.status.set_state(STOPPED, "stopped")

    def _run(self) -> None:
        raise NotImplementedError

    def _back_off(self, backoff: Backoff, why: str) -> None:
        """Wait the next backoff delay (returns early when stopping)."""
        self.status.last_error = why
        delay = backoff.next_delay()
        self.status.set_state(BACKING_OFF, f"{why}; retry in {delay:.1f} s")
        self._stop.wait(delay)
        self.status.reconnects += 1
