"""Live capture sources: an RTSP camera (video and its own audio track) and a local microphone.

Every source runs in its own thread, stamps what it captures on one clock (Unix seconds) and
hands it to a :class:`~edgeav.sources.base.CaptureSink`; it reconnects by itself with
backoff and reports its state for the health report. :mod:`edgeav.live` wires sources
to the one pipeline (:mod:`edgeav.pipeline`).
"""

from edgeav.sources.base import Backoff, CaptureSink, SourceStatus

__all__ = ["Backoff", "CaptureSink", "SourceStatus"]
