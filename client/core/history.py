"""Call history in SQLite: missed, incoming and outgoing calls with their time and duration."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    call_id TEXT PRIMARY KEY,
    peer TEXT NOT NULL,
    peer_name TEXT NOT NULL,
    direction TEXT NOT NULL,          -- outgoing, incoming
    media TEXT NOT NULL,              -- audio or audio,video
    started REAL NOT NULL,            -- wall time it began ringing
    answered REAL,                    -- wall time it was accepted, if it was
    ended REAL,
    reason TEXT,
    seen INTEGER NOT NULL DEFAULT 0   -- a missed call the user has looked at
);
"""


@dataclass(frozen=True)
class Entry:
    call_id: str
    peer: str
    peer_name: str
    direction: str
    media: tuple[str, ...]
    started: float
    answered: float | None
    ended: float | None
    reason: str | None
    seen: bool

    @property
    def missed(self) -> bool:
        return self.direction == "incoming" and self.answered is None and self.reason not in ("rejected",)

    @property
    def duration(self) -> float | None:
        return (self.ended - self.answered) if self.answered and self.ended else None

    @property
    def kind(self) -> str:
        if self.missed:
            return "missed"
        return self.direction


class History:
    def __init__(self, path: Path | str):
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path))
        self.db.executescript(SCHEMA)

    def started(self, call_id: str, peer: str, peer_name: str, direction: str, media: tuple[str, ...],
                when: float | None = None) -> None:
        self.db.execute("INSERT OR IGNORE INTO calls (call_id, peer, peer_name, direction, media, started) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (call_id, peer, peer_name, direction, ",".join(media), when or time.time()))
        self.db.commit()

    def answered(self, call_id: str, when: float | None = None) -> None:
        self.db.execute("UPDATE calls SET answered = ? WHERE call_id = ? AND answered IS NULL",
                        (when or time.time(), call_id))
        self.db.commit()

    def ended(self, call_id: str, reason: str | None, when: float | None = None) -> None:
        self.db.execute("UPDATE calls SET ended = ?, reason = ? WHERE call_id = ? AND ended IS NULL",
                        (when or time.time(), reason, call_id))
        self.db.commit()

    def entries(self, limit: int = 200) -> list[Entry]:
        rows = self.db.execute("SELECT call_id, peer, peer_name, direction, media, started, answered, ended, "
                               "reason, seen FROM calls ORDER BY started DESC LIMIT ?", (limit,)).fetchall()
        return [Entry(r[0], r[1], r[2], r[3], tuple(r[4].split(",")), r[5], r[6], r[7], r[8], bool(r[9]))
                for r in rows]

    def unseen_missed(self) -> int:
        return sum(1 for e in self.entries(1000) if e.missed and not e.seen and e.ended is not None)

    def mark_seen(self) -> None:
        self.db.execute("UPDATE calls SET seen = 1")
        self.db.commit()

    def close(self) -> None:
        self.db.close()


def recorder(history: History):
    """An engine listener that writes every call's start, answer and end into the history."""
    from . import events as ev
    from .engine import ECHO_PEER

    def on_event(e) -> None:
        if not isinstance(e, ev.CallChanged) or e.peer == ECHO_PEER:
            return  # a sound and video check is not a call anyone made
        if e.state == "ringing":
            history.started(e.call_id, e.peer, e.display_name, e.direction, e.media)
        elif e.state == "connecting":
            history.answered(e.call_id)
        elif e.state == "ended":
            history.ended(e.call_id, e.reason)

    return on_event
