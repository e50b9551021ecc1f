"""The durable outbox: alerts and events on disk until the broker has acknowledged them.

Every alert and event is committed to an SQLite database (WAL mode, ``synchronous=FULL``)
in the state directory BEFORE anything tries to publish it, and its row is deleted only
when the broker's PUBACK for it arrives (:meth:`Outbox.ack`). A broker outage, a daemon
crash, SIGKILL or a power cut therefore loses nothing: the next run with the same state
directory publishes what is left, oldest first. The price is possible duplicates (a row
published, acknowledged, then the process killed before the delete commits): consumers
de-duplicate by the record's ``id`` (plus ``phase`` for events), the QoS-1 contract.

A row can be *held*: written (so it survives a crash) but not yet publishable, because
an evidence clip is still being recorded for it. :meth:`release` replaces its payload and
makes it publishable; rows still held when the outbox is reopened are released as they
are (the clip's packets died with the process, the alert must not).

One connection guarded by a lock: the pipeline threads put rows, paho's network thread
acknowledges them, the publisher thread reads them.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edgeav.errors import UserError

OUTBOX_NAME = "outbox.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    msg_id  TEXT    NOT NULL,
    topic   TEXT    NOT NULL,
    payload BLOB    NOT NULL,
    qos     INTEGER NOT NULL,
    retain  INTEGER NOT NULL DEFAULT 0,
    held    INTEGER NOT NULL DEFAULT 0,
    created REAL    NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_ready ON outbox (held, seq);
"""


@dataclass(frozen=True)
class OutboxRow:
    """One queued message."""

    seq: int
    msg_id: str
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Outbox:
    """A crash-safe FIFO of MQTT messages in ``<state_dir>/outbox.sqlite3``."""

    def __init__(self, state_dir: str | Path) -> None:
        self.path = Path(state_dir) / OUTBOX_NAME
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), timeout=10.0, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed alert survives a power cut, not only a process crash. Alerts are rare.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            # Held rows of a previous run: their clip recorder is gone; publish them without a clip.
            self._db.execute("UPDATE outbox SET held = 0 WHERE held = 1")
        except sqlite3.DatabaseError as exc:
            raise UserError(f"{self.path}: cannot open the MQTT outbox ({exc}); "
                            "check storage.state_dir and its permissions") from None
        except OSError as exc:
            raise UserError(f"{self.path.parent}: cannot create the state directory ({exc.strerror})") from None
        self._lock = threading.Lock()
        self._closed = False

    # ----------------------------------------------------------------------------------- writing
    def put(self, msg_id: str, topic: str, payload: bytes, qos: int, retain: bool = False,
            held: bool = False) -> int:
        """Commit one message (durably) and return its sequence number."""
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO outbox (msg_id, topic, payload, qos, retain, held, created) VALUES (?,?,?,?,?,?,?)",
                (msg_id, topic, payload, qos, int(retain), int(held), time.time()))
            return int(cur.lastrowid or 0)

    def release(self, seq: int, payload: bytes | None = None) -> None:
        """Make a held row publishable, optionally with a new payload (the alert with its clip)."""
        with self._lock:
            if payload is None:
                self._db.execute("UPDATE outbox SET held = 0 WHERE seq = ?", (seq,))
            else:
                self._db.execute("UPDATE outbox SET held = 0, payload = ? WHERE seq = ?", (payload, seq))

    def ack(self, seq: int) -> None:
        """The broker acknowledged ``seq``: forget it."""
        with self._lock:
            if not self._closed:
                self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))

    # ----------------------------------------------------------------------------------- reading
    def pending(self, limit: int, exclude: set[int] | frozenset[int] = frozenset()) -> list[OutboxRow]:
        """Up to ``limit`` publishable rows, oldest first, skipping ``exclude`` (already in flight)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, msg_id, topic, payload, qos, retain FROM outbox WHERE held = 0 ORDER BY seq LIMIT ?",
                (limit + len(exclude),)).fetchall()
        out = [OutboxRow(int(s), m, t, bytes(p), int(q), bool(r)) for s, m, t, p, q, r in rows if s not in exclude]
        return out[:limit]

    def depth(self) -> int:
        """Messages still waiting for a PUBACK (held ones included)."""
        with self._lock:
            if self._closed:
                return 0
            return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def ids(self) -> list[str]:
        """The record ids queued, oldest first (tests and `replay` use it to say what is left)."""
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT msg_id FROM outbox ORDER BY seq")]

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()
