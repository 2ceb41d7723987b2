"""The history page: missed, incoming and outgoing calls with time and duration, and call back (while connected)."""

from __future__ import annotations

import datetime

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QLabel, QListWidget, QListWidgetItem, QPushButton, QVBoxLayout, QWidget

from .call_view import clock
from .contacts import NOT_CONNECTED, lay_out_row
from .resources import icon

KIND = {"missed": ("#d93636", "Missed"), "incoming": ("#2e9d4f", "Incoming"), "outgoing": ("#3478d4", "Outgoing")}


def when(ts: float) -> str:
    t = datetime.datetime.fromtimestamp(ts)
    today = datetime.date.today()
    if t.date() == today:
        return t.strftime("Today %H:%M")
    if t.date() == today - datetime.timedelta(days=1):
        return t.strftime("Yesterday %H:%M")
    return t.strftime("%d %b %H:%M")


class HistoryRow(QWidget):
    def __init__(self, entry, on_call, connected: bool = True, parent=None):
        super().__init__(parent)
        color, label = KIND[entry.kind]
        video = " video" if "video" in entry.media else ""
        duration = clock(entry.duration) if entry.duration is not None else {
            "rejected": "declined", "busy": "busy", "no_answer": "no answer", "offline": "offline",
            "cancelled": "cancelled"}.get(entry.reason or "", "")
        self.title = QLabel(f"<b>{entry.peer_name}</b>")
        self.detail = QLabel(f"<span style='color:{color}'>{label}{video}</span> · {when(entry.started)}"
                             + (f" · {duration}" if duration else ""))
        self.back = QPushButton(icon("phone"), "Call back")
        self.back.setToolTip(f"Call {entry.peer_name} again" if connected else NOT_CONNECTED)
        self.back.setEnabled(connected)
        self.back.clicked.connect(lambda: on_call(entry.peer, "video" in entry.media))
        lay_out_row(self, self.title, self.detail, self.back)


class HistoryPage(QWidget):
    call = Signal(str, bool)

    def __init__(self, history, parent=None):
        super().__init__(parent)
        self.history = history
        self.list = QListWidget()
        self.list.setAccessibleName("Call history")
        self.empty = QLabel("No calls yet.")
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        layout = QVBoxLayout(self)
        layout.addWidget(self.list, 1)
        layout.addWidget(self.empty, 1)
        self.rows: list[HistoryRow] = []
        self.connected = False
        self.refresh()

    def set_connected(self, connected: bool) -> None:
        if connected != self.connected:
            self.connected = connected
            self.refresh()

    def refresh(self) -> None:
        self.list.clear()
        self.rows = []
        for entry in self.history.entries():
            if entry.ended is None:
                continue  # still going
            item = QListWidgetItem(self.list)
            row = HistoryRow(entry, lambda peer, video: self.call.emit(peer, video), self.connected)
            item.setSizeHint(row.sizeHint())
            self.list.setItemWidget(item, row)
            self.rows.append(row)
        self.list.setVisible(bool(self.rows))
        self.empty.setVisible(not self.rows)
