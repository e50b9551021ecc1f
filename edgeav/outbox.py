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

The outbox is bounded (``mqtt.outbox_max_messages``): a broker gone for days must not fill the
disk, because then the box dies and everything is lost. When a put would pass the cap the
oldest EVENT is dropped first (events are less precious than alerts); only an outbox holding
nothing but alerts loses its oldest alert. Held rows go last, the message being put never.
Every drop is counted by kind (:meth:`Outbox.drops`, reported by the stats topic and the
metrics endpoint as ``outbox_event``/``outbox_alert``) and logged as a rate-limited WARNING.

One connection guarded by a lock: the pipeline threads put rows, paho's network thread
acknowledges them, the publisher thread reads them.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgeav.errors import UserError

log = logging.getLogger(__name__)

OUTBOX_NAME = "outbox.sqlite3"
# A row's kind is stored as its priority: the lowest is dropped first when the outbox is full.
PRIORITY = {"event": 0, "alert": 1}
KINDS = tuple(PRIORITY)
DEFAULT_MAX_MESSAGES = 100_000  # weeks of events at a few a minute; 54 MB of alerts with clips (measured)
MIN_MAX_MESSAGES = 100
# The drop warning is logged on the first drop of each kind, then once every this many of that kind.
WARN_EVERY = 100

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    msg_id  TEXT    NOT NULL,
    topic   TEXT    NOT NULL,
    payload BLOB    NOT NULL,
    qos     INTEGER NOT NULL,
    retain  INTEGER NOT NULL DEFAULT 0,
    held    INTEGER NOT NULL DEFAULT 0,
    created REAL    NOT NULL,
    priority INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS outbox_ready ON outbox (held, seq);
"""
# After the migration (the column must exist first): the drop order, so a full outbox finds its victim
# without scanning 100 000 rows.
_VICTIM_INDEX = "CREATE INDEX IF NOT EXISTS outbox_victim ON outbox (held, priority, seq)"
# Not held first, then events before alerts, then oldest first.
_VICTIMS = "SELECT seq, priority FROM outbox ORDER BY held, priority, seq LIMIT ?"


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

    def __init__(self, state_dir: str | Path, max_messages: int = DEFAULT_MAX_MESSAGES) -> None:
        if max_messages < 1:
            raise ValueError(f"max_messages must be at least 1, not {max_messages}")
        self.path = Path(state_dir) / OUTBOX_NAME
        self.max_messages = max_messages
        self._dropped = dict.fromkeys(KINDS, 0)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), timeout=10.0, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed alert survives a power cut, not only a process crash. Alerts are rare.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._migrate()
            self._db.execute(_VICTIM_INDEX)
            # Held rows of a previous run: their clip recorder is gone; publish them without a clip.
            self._db.execute("UPDATE outbox SET held = 0 WHERE held = 1")
            # put() checks the cap against this count instead of a COUNT(*) per message; it is re-read from
            # the file whenever it says the cap is reached (another process, `edgeav replay`, may share it).
            self._count = self._count_rows()
        except sqlite3.DatabaseError as exc:
            raise UserError(f"{self.path}: cannot open the MQTT outbox ({exc}); "
                            "check storage.state_dir and its permissions") from None
        except OSError as exc:
            raise UserError(f"{self.path.parent}: cannot create the state directory ({exc.strerror})") from None
        self._lock = threading.Lock()
        self._closed = False
        if self._count > max_messages:  # the cap was lowered since this file was written
            with self._lock:
                self._write(lambda: self._trim(0))

    def _count_rows(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def _migrate(self) -> None:
        """Add the ``priority`` column to an outbox written before the cap existed, keeping its rows."""
        if "priority" in {r[1] for r in self._db.execute("PRAGMA table_info(outbox)")}:
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            # Checked again under the write lock: a second process may have migrated it meanwhile.
            if "priority" not in {r[1] for r in self._db.execute("PRAGMA table_info(outbox)")}:
                self._db.execute("ALTER TABLE outbox ADD COLUMN priority INTEGER NOT NULL DEFAULT 1")
                # The old rows' kind is in their topic (<prefix>/<node>/<camera>/events); the rest stay alerts.
                self._db.execute("UPDATE outbox SET priority = ? WHERE topic LIKE '%/events'", (PRIORITY["event"],))
                log.info("mqtt outbox %s: upgraded to the bounded schema; its %d queued message(s) are kept",
                         self.path, self._count_rows())
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _write(self, body: Callable[[], int]) -> int:
        """Run ``body`` in one write transaction (one fsync for the drops and the insert together)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            out = body()
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            self._count = self._count_rows()
            raise
        return out

    def _trim(self, room: int) -> int:
        """Inside a write transaction: drop rows until ``room`` more fit under the cap; returns how many."""
        if self._count + room <= self.max_messages:
            return 0
        self._count = self._count_rows()  # exact under the write lock, whatever other processes did
        excess = self._count + room - self.max_messages
        if excess <= 0:
            return 0
        victims = self._db.execute(_VICTIMS, (excess,)).fetchall()
        self._db.execute("DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox ORDER BY held, priority, seq "
                         "LIMIT ?)", (excess,))
        self._count -= len(victims)
        by_kind = dict.fromkeys(KINDS, 0)
        for _seq, priority in victims:
            by_kind["event" if priority == PRIORITY["event"] else "alert"] += 1
        for kind, n in by_kind.items():
            if n:
                before = self._dropped[kind]
                self._dropped[kind] = before + n
                if before == 0 or self._dropped[kind] // WARN_EVERY > before // WARN_EVERY:
                    self._warn_dropped(kind)
        return len(victims)

    def _warn_dropped(self, kind: str) -> None:
        oldest = self._db.execute("SELECT MIN(created) FROM outbox").fetchone()[0]
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(oldest)) if oldest is not None else "-"
        why = ("the outbox held only alerts" if kind == "alert" else "events are dropped before alerts")
        log.warning("mqtt outbox full: the broker has not acknowledged messages for so long that %s reached its cap "
                    "of %d (mqtt.outbox_max_messages; oldest queued from %s); dropping the oldest %s (%s): "
                    "%d event(s) and %d alert(s) dropped so far", self.path, self.max_messages, since, kind, why,
                    self._dropped["event"], self._dropped["alert"])

    # ----------------------------------------------------------------------------------- writing
    def put(self, msg_id: str, topic: str, payload: bytes, qos: int, retain: bool = False,
            held: bool = False, kind: str = "alert") -> int:
        """Commit one message (durably) and return its sequence number.

        ``kind`` (``event`` or ``alert``) decides what goes first when the outbox is full: the
        oldest event, then (only if nothing but alerts is left) the oldest alert; never this one.
        """
        if kind not in PRIORITY:
            raise ValueError(f"outbox kind {kind!r}: allowed: {', '.join(KINDS)}")

        def body() -> int:
            self._trim(1)
            cur = self._db.execute(
                "INSERT INTO outbox (msg_id, topic, payload, qos, retain, held, created, priority) "
                "VALUES (?,?,?,?,?,?,?,?)",
                (msg_id, topic, payload, qos, int(retain), int(held), time.time(), PRIORITY[kind]))
            self._count += 1
            return int(cur.lastrowid or 0)

        with self._lock:
            return self._write(body)

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
                # 0 rows when it was dropped while in flight (the outbox was full): nothing to uncount.
                self._count -= self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,)).rowcount

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

    def drops(self) -> dict[str, int]:
        """Messages dropped by this process because the outbox was full, by kind (``event``, ``alert``)."""
        with self._lock:
            return dict(self._dropped)

    def ids(self) -> list[str]:
        """The record ids queued, oldest first (tests and `replay` use it to say what is left)."""
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT msg_id FROM outbox ORDER BY seq")]

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()
