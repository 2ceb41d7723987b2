"""A conversation on screen: its lines (yours on the right, senders' names, times, who joined or left) and a box
to type in, used by rooms, direct chats and the call pages; and the window a direct chat opens in."""

from __future__ import annotations

import dataclasses
import html
import time

from PySide6.QtCore import Signal
from PySide6.QtGui import QTextCursor
from PySide6.QtWidgets import (
    QDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from shared.protocol import MAX_TEXT

SHOWN = 200  # lines on screen; the profile's database keeps them all


def when(ts: float) -> str:
    """A line's time: the hour for today, the date too for older lines."""
    t = time.localtime(ts)
    same_day = time.localtime()[:3] == t[:3]
    return time.strftime("%H:%M" if same_day else "%d %b %H:%M", t)


def line_html(line) -> str:
    text = html.escape(line.text).replace("\n", "<br>")
    stamp = f"<span style='color:#888; font-size:11px'>{when(line.ts)}</span>"
    if line.kind != "text":
        return f"<p align='center' style='color:#888'><i>{text}</i> · {stamp}</p>"
    if line.mine:
        failed = (" <span style='color:#d93636; font-weight:600'>⚠ not delivered</span>"
                  if line.delivered is False else "")
        return f"<p align='right'>{stamp}{failed}<br><span style='background:#2e6fd9; color:white'>&nbsp;{text}" \
               "&nbsp;</span></p>"
    return f"<p align='left'><b>{html.escape(line.name)}</b> {stamp}<br>{text}</p>"


class ChatView(QWidget):
    """Lines of one conversation (`conversation`, a chatlog key) and a box to type in; `send` carries the text."""

    send = Signal(str)

    def __init__(self, conversation: str = "", placeholder: str = "Type a message…", parent=None):
        super().__init__(parent)
        self.conversation = conversation
        self.lines: list = []
        self.log = QTextBrowser()
        self.log.setOpenLinks(False)
        self.log.setAccessibleName("Messages")
        self.entry = QLineEdit(placeholderText=placeholder)
        self.entry.setMaxLength(MAX_TEXT)
        self.entry.setAccessibleName("Message")
        self.entry.returnPressed.connect(self.on_send)
        self.button = QPushButton("Send")
        self.button.setToolTip("Send (Enter)")
        self.button.clicked.connect(self.on_send)
        self.problem = QLabel(objectName="chatProblem")
        self.problem.setStyleSheet("color: #d93636;")
        self.problem.setWordWrap(True)
        self.problem.hide()
        row = QHBoxLayout()
        row.addWidget(self.entry, 1)
        row.addWidget(self.button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.log, 1)
        layout.addWidget(self.problem)
        layout.addLayout(row)

    def show_conversation(self, conversation: str, lines: list) -> None:
        self.conversation = conversation
        self.lines = list(lines)[-SHOWN:]
        self.problem.hide()
        self._render()

    def add_line(self, line) -> None:
        self.lines.append(line)
        del self.lines[:-SHOWN]
        self._render()

    def mark_not_delivered(self, line_id: str) -> None:
        self.lines = [dataclasses.replace(x, delivered=False) if x.id == line_id and x.mine else x for x in self.lines]
        self._render()

    def show_problem(self, text: str) -> None:
        self.problem.setText(text)
        self.problem.setVisible(bool(text))

    def on_send(self) -> None:
        text = self.entry.text().strip()
        if text:
            self.problem.hide()
            self.send.emit(text)

    def sent(self) -> None:
        """The line went out: clear the box for the next one."""
        self.entry.clear()

    def _render(self) -> None:
        self.log.setHtml("".join(line_html(x) for x in self.lines))
        self.log.moveCursor(QTextCursor.MoveOperation.End)
        self.log.ensureCursorVisible()


class ChatWindow(QDialog):
    """A direct conversation in a window of its own, opened from a contact's row."""

    def __init__(self, peer: str, name: str, parent=None):
        super().__init__(parent)
        self.peer = peer
        self.setWindowTitle(f"Chat with {name}")
        self.chat = ChatView(placeholder=f"Message {name}…")
        layout = QVBoxLayout(self)
        layout.addWidget(self.chat)
        self.resize(420, 480)
