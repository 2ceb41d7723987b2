"""The contacts page: who is online with their status, audio and video call buttons, a filter for long lists."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .resources import icon

STATUS = {"online": ("#2e9d4f", "Online"), "in_call": ("#d9a400", "In a call"),
          "reconnecting": ("#8a8a8a", "Reconnecting…")}
FILTER_FROM = 8  # show the filter box once the list is this long


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
    call = Signal(str, bool)  # user_id, video

    def __init__(self, user, parent=None):
        super().__init__(parent)
        self.user_id = user.user_id
        color, text = STATUS.get(user.status, ("#8a8a8a", user.status))
        self.name = QLabel(user.display_name)
        self.name.setStyleSheet("font-weight: 600;")
        self.status = QLabel(f"<span style='color:{color}'>●</span> {text}")
        self.audio = QPushButton(icon("phone"), "")
        self.audio.setToolTip(f"Call {user.display_name}")
        self.audio.setAccessibleName(f"Call {user.display_name}")
        self.video = QPushButton(icon("video"), "")
        self.video.setToolTip(f"Video call {user.display_name}")
        self.video.setAccessibleName(f"Video call {user.display_name}")
        self.audio.clicked.connect(lambda: self.call.emit(self.user_id, False))
        self.video.clicked.connect(lambda: self.call.emit(self.user_id, True))
        busy = user.status != "online"
        for b in (self.audio, self.video):
            b.setEnabled(not busy)
        lay_out_row(self, self.name, self.status, self.audio, self.video)


class ContactsPage(QWidget):
    call = Signal(str, bool)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.filter = QLineEdit(placeholderText="Filter by name…")
        self.filter.setToolTip("Type part of a name to narrow the list")
        self.filter.setClearButtonEnabled(True)
        self.filter.textChanged.connect(self._apply_filter)
        self.filter.hide()
        self.list = QListWidget()
        self.list.setAccessibleName("People online")
        self.list.itemActivated.connect(lambda item: self.call.emit(item.data(Qt.ItemDataRole.UserRole), False))
        self.empty = QLabel()
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty.setWordWrap(True)
        self.empty.setStyleSheet("color: palette(mid); font-size: 15px; padding: 24px;")
        layout = QVBoxLayout(self)
        layout.addWidget(self.filter)
        layout.addWidget(self.list, 1)
        layout.addWidget(self.empty, 1)
        self.rows: dict[str, ContactRow] = {}
        self.set_users([], connected=False)

    def set_users(self, users: list, *, connected: bool = True) -> None:
        self.list.clear()
        self.rows = {}
        for user in users:
            item = QListWidgetItem(self.list)
            item.setData(Qt.ItemDataRole.UserRole, user.user_id)
            item.setData(Qt.ItemDataRole.DisplayRole + 100, user.display_name.lower())
            row = ContactRow(user)
            row.call.connect(self.call)
            item.setSizeHint(row.sizeHint())
            self.list.setItemWidget(item, row)
            self.rows[user.user_id] = row
        self.filter.setVisible(len(users) >= FILTER_FROM)
        self.list.setVisible(bool(users))
        self.empty.setVisible(not users)
        self.empty.setText("Nobody else is online yet.\nWhen a colleague opens Callbox on this network, "
                           "they appear here." if connected else "Connecting…")
        self._apply_filter(self.filter.text())

    def _apply_filter(self, text: str) -> None:
        needle = text.strip().lower()
        for i in range(self.list.count()):
            item = self.list.item(i)
            item.setHidden(bool(needle) and needle not in item.data(Qt.ItemDataRole.DisplayRole + 100))
