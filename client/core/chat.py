"""Direct chat: the lines of each one-to-one conversation, sent and received, and which were not delivered."""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable

from shared import protocol as p

from . import events as ev

LINES_KEPT = 500  # per conversation, in memory (the app keeps them all in its ChatLog)
PENDING_KEPT = 200  # ids of sent lines whose failure could still be reported


class DirectChat:
    def __init__(self, me: str, *, send: Callable[[p.Message], None], emit: Callable[[object], None],
                 name_of: Callable[[str], str]):
        self.me = me
        self.send, self.emit, self.name_of = send, emit, name_of
        self.lines: dict[str, list[ev.ChatLine]] = {}  # the other person -> the conversation
        self._pending: OrderedDict[str, str] = OrderedDict()  # line id -> recipient

    def say(self, peer: str, text: str) -> str:
        """Send a line to `peer`; returns its id. Raises ProtocolError naming what is wrong with the text."""
        p.text(p.MAX_TEXT)("text", text)
        if peer == self.me:
            raise ValueError("you cannot chat with yourself")
        line_id = f"{int(time.time() * 1000):x}-{secrets.token_hex(3)}"
        self.send(p.Chat(to=peer, id=line_id, text=text))
        self._pending[line_id] = peer
        while len(self._pending) > PENDING_KEPT:
            self._pending.popitem(last=False)
        self._add(peer, ev.ChatLine(self.me, self.name_of(self.me), text, time.time(), mine=True, id=line_id))
        return line_id

    def on_chat(self, msg: p.Chat) -> None:
        peer = msg.sender or ""
        self._add(peer, ev.ChatLine(peer, self.name_of(peer), msg.text, msg.ts or time.time(), id=msg.id))

    def on_error(self, msg: p.Error) -> bool:
        """A line the server could not deliver (its recipient has no session); False if the error is not that."""
        peer = self._pending.pop(msg.ref or "", None)
        if peer is None:
            return False
        lines = self.lines.get(peer, [])
        for i, line in enumerate(lines):
            if line.id == msg.ref and line.mine:
                lines[i] = dataclasses.replace(line, delivered=False)
        self.emit(ev.ChatStatus(peer, msg.ref, False, msg.message))
        return True

    def _add(self, peer: str, line: ev.ChatLine) -> None:
        lines = self.lines.setdefault(peer, [])
        lines.append(line)
        del lines[:-LINES_KEPT]
        self.emit(ev.DirectText(peer, line))
