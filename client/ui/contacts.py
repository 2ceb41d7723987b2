"""The contacts page: people and their status (greyed, last known, while offline), message and call buttons
(with unread counts), a filter."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import (
    QApplication,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from shared.identity import fingerprint

from .resources import icon

STATUS = {"online": ("#2e9d4f", "Online"), "in_call": ("#d9a400", "In a call"),
          "reconnecting": ("#8a8a8a", "Reconnecting…")}
FILTER_FROM = 8  # show the filter box once the list is this long
NOT_CONNECTED = "Not connected to a server right now.\nYou can call again as soon as Callbox is back online."


def greyed() -> str:
    """Text colour for what may be out of date: between the list's text and its background, still readable."""
    palette = QApplication.palette()
    text, base = palette.color(QPalette.ColorRole.Text), palette.color(QPalette.ColorRole.Base)
    mix = lambda a, b: round(a * 0.55 + b * 0.45)
    return QColor(mix(text.red(), base.red()), mix(text.green(), base.green()), mix(text.blue(), base.blue())).name()


def lay_out_row(row: QWidget, title: QLabel, detail: QLabel, *buttons: QWidget) -> None:
    """A list row: a title over a detail line on the left, buttons on the right."""
    line = QHBoxLayout(row)
    line.setContentsMargins(8, 4, 8, 4)
    text = QVBoxLayout()
    text.setSpacing(0)
    text.addWidget(title)
    text.addWidget(detail)
    line.addLayout(text, 1)
    for button in buttons:
        line.addWidget(button)


class ContactRow(QWidget):
    """One person: name, status and call buttons; while not connected, greyed with the last known status."""

    call = Signal(str, bool)  # user_id, video
    trust = Signal(str)  # user_id: the user accepts this contact's new key
    message = Signal(str)  # user_id: open the chat with them

    def __init__(self, user, connected: bool = True, key_warning=None, unread: int = 0, parent=None):
        super().__init__(parent)
        self.user_id = user.user_id
        color, text = STATUS.get(user.status, ("#8a8a8a", user.status))
        self.name = QLabel(user.display_name)
        key = f"Key fingerprint: {fingerprint(user.key)}" if user.key else "No identity key: an older client"
        self.name.setToolTip(f"{user.display_name} ({user.user_id})\n{key}")
        self.status = QLabel()
        self.audio = QPushButton(icon("phone"), "")
        self.audio.setAccessibleName(f"Call {user.display_name}")
        self.video = QPushButton(icon("video"), "")
        self.video.setAccessibleName(f"Video call {user.display_name}")
        self.chat = QPushButton(icon("chat"), str(unread) if unread else "")
        self.chat.setAccessibleName(f"Message {user.display_name}")
        self.chat.setToolTip(f"{unread} new message(s) from {user.display_name}" if unread
                             else f"Message {user.display_name}")
        if unread:
            self.chat.setStyleSheet("font-weight: 600; color: #2e6fd9;")
        self.chat.clicked.connect(lambda: self.message.emit(self.user_id))
        self.audio.clicked.connect(lambda: self.call.emit(self.user_id, False))
        self.video.clicked.connect(lambda: self.call.emit(self.user_id, True))
        if connected:
            self.name.setStyleSheet("font-weight: 600;")
            self.status.setText(f"<span style='color:{color}'>●</span> {text}")
            self.audio.setToolTip(f"Call {user.display_name}")
            self.video.setToolTip(f"Video call {user.display_name}")
        else:
            grey = greyed()
            self.name.setStyleSheet(f"font-weight: 600; color: {grey};")
            self.status.setText(f"<span style='color:{grey}'>○ {text.rstrip('…')} (last known)</span>")
            self.status.setToolTip("Callbox is not connected to a server, so this may have changed")
            for b in (self.audio, self.video, self.chat):
                b.setToolTip(NOT_CONNECTED)
        for b in (self.audio, self.video):
            b.setEnabled(connected and user.status == "online")
        self.chat.setEnabled(connected)
        if key_warning is not None:
            self.status.setText(self.status.text() + " <span style='color:#d93636'>⚠ key changed</span> "
                                "<a href='trust'>trust the new key</a>")
            self.status.setToolTip(key_changed_text(key_warning))
            self.status.linkActivated.connect(lambda _link: self.trust.emit(self.user_id))
        lay_out_row(self, self.name, self.status, self.chat, self.audio, self.video)


def key_changed_text(w) -> str:
    """What a changed key means, for a person: an events.KeyChanged."""
    return (f"{w.display_name} ({w.user_id}) has a different identity key than when you first saw them:\n"
            f"first {w.pinned}, now {w.seen}.\nA new computer or a reinstall does this; so would someone "
            "else using their name. Ask them before you trust it.")


class ContactsPage(QWidget):
    call = Signal(str, bool)
    trust = Signal(str)
    message = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.filter = QLineEdit(placeholderText="Filter by name…")
        self.filter.setToolTip("Type part of a name to narrow the list")
        self.filter.setClearButtonEnabled(True)
        self.filter.textChanged.connect(self._apply_filter)
        self.filter.hide()
        self.list = QListWidget()
        self.list.setAccessibleName("People online")
        self.list.itemActivated.connect(self.on_activated)
        self.empty = QLabel()
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty.setWordWrap(True)
        self.empty.setStyleSheet("color: palette(mid); font-size: 15px; padding: 24px;")
        layout = QVBoxLayout(self)
        layout.addWidget(self.filter)
        layout.addWidget(self.list, 1)
        layout.addWidget(self.empty, 1)
        self.rows: dict[str, ContactRow] = {}
        self.users: list = []
        self.connected = False
        self.key_warnings: dict = {}  # user_id -> events.KeyChanged, from the engine
        self.unread: dict[str, int] = {}  # user_id -> direct lines not yet read
        self.set_users([])

    def set_connected(self, connected: bool) -> None:
        """Online, rows are live; otherwise they show the last known status, greyed, and calls wait."""
        if connected != self.connected:
            self.connected = connected
            self.set_users(self.users)

    def set_users(self, users: list) -> None:
        self.users = list(users)
        self.list.clear()
        self.rows = {}
        for user in users:
            item = QListWidgetItem(self.list)
            item.setData(Qt.ItemDataRole.UserRole, user.user_id)
            item.setData(Qt.ItemDataRole.DisplayRole + 100, user.display_name.lower())
            row = ContactRow(user, self.connected, self.key_warnings.get(user.user_id),
                             self.unread.get(user.user_id, 0))
            row.call.connect(self.call)
            row.trust.connect(self.trust)
            row.message.connect(self.message)
            item.setSizeHint(row.sizeHint())
            self.list.setItemWidget(item, row)
            self.rows[user.user_id] = row
        self.filter.setVisible(len(users) >= FILTER_FROM)
        self.list.setVisible(bool(users))
        self.empty.setVisible(not users)
        self.empty.setText("Nobody else is online yet.\nWhen a colleague opens Callbox on this network, "
                           "they appear here." if self.connected else "Connecting…")
        self._apply_filter(self.filter.text())

    def on_activated(self, item: QListWidgetItem) -> None:
        row = self.rows.get(item.data(Qt.ItemDataRole.UserRole))
        if row is not None and row.audio.isEnabled():
            self.call.emit(row.user_id, False)

    def _apply_filter(self, text: str) -> None:
        needle = text.strip().lower()
        for i in range(self.list.count()):
            item = self.list.item(i)
            item.setHidden(bool(needle) and needle not in item.data(Qt.ItemDataRole.DisplayRole + 100))
