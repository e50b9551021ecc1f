"""Cut one thread's blocking PyAV (FFmpeg) call short: how an RTSP camera stops promptly.

Why this exists: a read blocked on a stalled camera returns only when PyAV's read timeout (the stall
watchdog, seconds) expires, and an open blocked on a camera that accepts but never answers only at
the open timeout (10 s), which alone is the daemon's whole SIGTERM budget. Closing the container from
the stopping thread is not a way out: it frees the FFmpeg context under the thread still reading it
(a use-after-free, a SIGSEGV of the whole daemon).

FFmpeg's own way out is the interrupt callback: while it waits for the network it asks the callback
every ~100 ms and, when told to, aborts the call with AVERROR_EXIT through its normal error path, in
the thread that owns the container (which then closes it itself). PyAV installs that callback when
``av.open`` gets a ``timeout`` and does not expose it; its callback decides by comparing
``time.monotonic()`` (looked up in ``av.container.core``'s globals on each call) with the timeout's
start. So we give that module a clock that is the real one except for a thread asked to stop: for it,
each reading jumps far ahead, past any timeout. Only that thread's calls are cut short; every other
camera keeps its own timing. If a PyAV release reads its clock some other way, :func:`interrupt`
says so (returns False) and the call ends at its own timeout, as before.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)

# Each reading of an interrupted thread's clock is this much later than the last: past any timeout, and
# still increasing (PyAV treats a clock that goes back as an error of its own).
_JUMP_S = 1e6


class _InterruptingClock:
    """Stands in for the ``time`` module inside ``av.container.core``."""

    def __init__(self, real: ModuleType) -> None:
        self._real = real
        # thread -> readings so far; only the owning thread updates its entry once it exists. Keyed by the
        # Thread object, not its ident: an ident is reused by a later thread, the object never is.
        self.jumps: weakref.WeakKeyDictionary[threading.Thread, int] = weakref.WeakKeyDictionary()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def monotonic(self) -> float:
        now: float = self._real.monotonic()
        if not self.jumps:
            return now
        me = threading.current_thread()
        n = self.jumps.get(me)
        if n is None:
            return now
        self.jumps[me] = n + 1
        return now + _JUMP_S * (n + 1)


_clock: _InterruptingClock | None = None
_install_lock = threading.Lock()


def _install() -> _InterruptingClock | None:
    global _clock
    with _install_lock:
        if _clock is None:
            import av.container.core as core

            current = getattr(core, "time", None)
            if isinstance(current, _InterruptingClock):
                _clock = current
            elif current is time:  # the PyAV this is written for (>= 14: its interrupt callback reads time)
                _clock = _InterruptingClock(time)
                core.time = _clock  # type: ignore[attr-defined]
            else:
                log.debug("this PyAV's interrupt callback does not read time.monotonic: stops wait for timeouts")
        return _clock


def interrupt(thread: threading.Thread) -> bool:
    """Make ``thread``'s blocking PyAV open or read give up now, and every later one until :func:`release`.

    Returns False when this PyAV cannot be interrupted this way (the call then ends at its own timeout).
    """
    clock = _install()
    if clock is None:
        return False
    clock.jumps.setdefault(thread, 0)
    return True


def release() -> None:
    """Called by an interrupted thread when it is done with PyAV: its clock is the real one again."""
    if _clock is not None:
        _clock.jumps.pop(threading.current_thread(), None)
