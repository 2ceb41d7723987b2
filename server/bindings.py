"""Who owns which user id: the first identity key that proves it (trust on first use), kept across restarts."""

from __future__ import annotations

import logging
import os
import sqlite3
import sys
import time
from pathlib import Path

from shared.names import skeleton

log = logging.getLogger("callbox.bindings")

FILE_NAME = "bindings.sqlite3"


class Bindings:
    """In memory: for tests, and for a server given no data directory."""

    def __init__(self) -> None:
        self._keys: dict[str, str] = {}
        self._by_skeleton: dict[str, str] = {}

    def key_of(self, user_id: str) -> str | None:
        return self._keys.get(user_id)

    def bound_like(self, user_id: str) -> str | None:
        """Another bound user id that looks like this one (the same skeleton), if any."""
        like = self._by_skeleton.get(skeleton(user_id))
        return like if like != user_id else None

    def bind(self, user_id: str, key: str) -> None:
        if self._keys.setdefault(user_id, key) == key:
            self._by_skeleton.setdefault(skeleton(user_id), user_id)

    def forget(self, user_id: str) -> bool:
        if self._keys.pop(user_id, None) is None:
            return False
        if self._by_skeleton.get(skeleton(user_id)) == user_id:
            del self._by_skeleton[skeleton(user_id)]
        return True

    def close(self) -> None:
        pass


class SqliteBindings(Bindings):
    """In DIR/bindings.sqlite3 (owner-only). Each call is one small query: `callbox-server --forget USER` run
    beside a running server takes effect at its next hello."""

    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / FILE_NAME
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=5)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS bindings (user_id TEXT PRIMARY KEY, key TEXT NOT NULL, "
                         "bound REAL NOT NULL, skeleton TEXT NOT NULL DEFAULT '')")
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(bindings)")}
        if "skeleton" not in columns:  # a file from before look-alike checks
            self._db.execute("ALTER TABLE bindings ADD COLUMN skeleton TEXT NOT NULL DEFAULT ''")
        for (user_id,) in self._db.execute("SELECT user_id FROM bindings WHERE skeleton = ''").fetchall():
            self._db.execute("UPDATE bindings SET skeleton = ? WHERE user_id = ?", (skeleton(user_id), user_id))
        self._db.execute("CREATE INDEX IF NOT EXISTS by_skeleton ON bindings (skeleton)")

    def key_of(self, user_id: str) -> str | None:
        row = self._db.execute("SELECT key FROM bindings WHERE user_id = ?", (user_id,)).fetchone()
        return row[0] if row else None

    def bound_like(self, user_id: str) -> str | None:
        row = self._db.execute("SELECT user_id FROM bindings WHERE skeleton = ? AND user_id != ? LIMIT 1",
                               (skeleton(user_id), user_id)).fetchone()
        return row[0] if row else None

    def bind(self, user_id: str, key: str) -> None:
        self._db.execute("INSERT OR IGNORE INTO bindings VALUES (?, ?, ?, ?)",
                         (user_id, key, time.time(), skeleton(user_id)))

    def forget(self, user_id: str) -> bool:
        return self._db.execute("DELETE FROM bindings WHERE user_id = ?", (user_id,)).rowcount > 0

    def close(self) -> None:
        self._db.close()


def default_data_dir() -> Path:
    """Where callbox-server keeps its bindings unless told (--data-dir)."""
    home = Path.home()
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA", home)) / "Callbox" / "server"
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / "Callbox" / "server"
    return Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share") / "callbox-server"
