"""One log format for the whole program, with credentials redacted.

Every record passes through :class:`RedactingFilter`, so a camera URL such as
``rtsp://user:pass@10.0.0.5/stream1`` is written as ``rtsp://***@10.0.0.5/stream1``
wherever it is logged. :func:`redact` does the same for text printed directly.
"""

from __future__ import annotations

import logging
import re
import sys
import time

# scheme://user:password@host or scheme://user@host: keep scheme and host, hide the userinfo.
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<userinfo>[^/@\s]+)@")

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def redact(text: str) -> str:
    """Hide the user-info part of every URL in ``text``."""
    return _USERINFO.sub(lambda m: f"{m.group('scheme')}***@", text)


class RedactingFilter(logging.Filter):
    """Formats the record's message once and redacts URLs in it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


class _UTCFormatter(logging.Formatter):
    converter = time.gmtime

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        t = time.gmtime(record.created)
        return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z"


def setup_logging(level: str = "info", stream=None) -> None:
    """Configure the root logger once: UTC ISO-8601 times, redaction, level by name."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_edgeav", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._edgeav = True  # type: ignore[attr-defined]
    handler.setFormatter(_UTCFormatter(LOG_FORMAT))
    handler.addFilter(RedactingFilter())
    root.addHandler(handler)
    root.setLevel(level.upper())
