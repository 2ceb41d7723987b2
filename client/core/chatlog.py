"""Chat history in SQLite: every room and direct line, in the profile's history database beside the calls.

A conversation is named "room:NAME" or "user:ID". A line the server sends again (a room's history after a rejoin)
is the same row: `add` returns False for it, so nobody shows it twice."""

from __future__ import annotations

import sqlite3

from .events import ChatLine

SCHEMA = """
CREATE TABLE IF NOT EXISTS chat (
    n INTEGER PRIMARY KEY,            -- the order lines arrived in
    conversation TEXT NOT NULL,       -- room:NAME or user:ID
    sender TEXT NOT NULL,             -- user id; '' for a line the app writes (joined, left, missed)
    name TEXT NOT NULL,
    text TEXT NOT NULL,
    ts REAL NOT NULL,                 -- wall clock: the server's for a received line
    kind TEXT NOT NULL,               -- text, joined, left, gap
    mine INTEGER NOT NULL,
    line_id TEXT,                     -- a direct line's id
    delivered INTEGER,                -- a direct line of ours: 0 once the server said it was not delivered
    UNIQUE (conversation, sender, ts, text, kind)
);
CREATE INDEX IF NOT EXISTS chat_by_conversation ON chat (conversation, n);
"""


def room_key(room: str) -> str:
    return f"room:{room}"


def user_key(user_id: str) -> str:
    return f"user:{user_id}"


class ChatLog:
    def __init__(self, db: sqlite3.Connection):
        self.db = db
        self.db.executescript(SCHEMA)

    def add(self, conversation: str, line: ChatLine) -> bool:
        """Keep a line; False if the conversation has it already."""
        cur = self.db.execute(
            "INSERT OR IGNORE INTO chat (conversation, sender, name, text, ts, kind, mine, line_id, delivered) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (conversation, line.sender, line.name, line.text, line.ts, line.kind, int(line.mine), line.id,
             None if line.delivered is None else int(line.delivered)))
        self.db.commit()
        return cur.rowcount == 1

    def not_delivered(self, conversation: str, line_id: str) -> None:
        self.db.execute("UPDATE chat SET delivered = 0 WHERE conversation = ? AND line_id = ? AND mine = 1",
                        (conversation, line_id))
        self.db.commit()

    def lines(self, conversation: str, limit: int = 200) -> list[ChatLine]:
        """The latest lines of a conversation, oldest first."""
        rows = self.db.execute(
            "SELECT sender, name, text, ts, kind, mine, line_id, delivered FROM chat WHERE conversation = ? "
            "ORDER BY n DESC LIMIT ?", (conversation, limit)).fetchall()
        return [ChatLine(r[0], r[1], r[2], r[3], kind=r[4], mine=bool(r[5]), id=r[6],
                         delivered=None if r[7] is None else bool(r[7])) for r in reversed(rows)]
