"""The rooms tab: the rooms you are in with their unread counts, joining one by name, and a room's page: its
members, its chat and the button into its call."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, QIcon, QPainter, QPixmap
from PySide6.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from shared import protocol as p

from .chat_view import ChatView
from .contacts import STATUS
from .resources import icon


def dot(color: str) -> QIcon:
    """A status dot, as the contacts list shows it."""
    pix = QPixmap(12, 12)
    pix.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pix)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setBrush(QColor(color))
    painter.setPen(Qt.PenStyle.NoPen)
    painter.drawEllipse(1, 1, 10, 10)
    painter.end()
    return QIcon(pix)


class RoomPane(QWidget):
    """One room: title, members with their status, the chat, and Join call / Leave room."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.room = ""
        self.title = QLabel(objectName="roomTitle")
        self.title.setStyleSheet("font-size: 18px; font-weight: 600;")
        self.with_video = QCheckBox("Video")
        self.with_video.setToolTip("Join the call with your camera on (up to 4 people send video)")
        self.join_call = QPushButton(icon("phone"), "Join call")
        self.join_call.setObjectName("joinCall")
        self.leave = QPushButton("Leave room")
        self.leave.setToolTip("Leave this room; its chat stays in your history")
        header = QHBoxLayout()
        header.addWidget(self.title)
        header.addStretch()
        header.addWidget(self.with_video)
        header.addWidget(self.join_call)
        header.addWidget(self.leave)
        self.members = QListWidget()
        self.members.setAccessibleName("Members")
        self.members.setFixedWidth(170)
        self.chat = ChatView(placeholder="Message the room…")
        body = QHBoxLayout()
        body.addWidget(self.chat, 1)
        body.addWidget(self.members)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(header)
        layout.addLayout(body, 1)

    def show_room(self, room, users: dict, me: str, in_this_call: bool, name_of) -> None:
        self.room = room.name
        self.title.setText(f"# {room.name}")
        self.members.clear()
        for uid in room.members:
            info = users.get(uid)
            name = "You" if uid == me else (info.display_name if info else name_of(uid))
            status = "in_call" if uid in room.call else (info.status if info else "online")
            color, text = STATUS.get(status, ("#8a8a8a", status))
            item = QListWidgetItem(dot(color), name)
            item.setToolTip(f"{name} ({uid}): {'in the room call' if uid in room.call else text}")
            item.setData(Qt.ItemDataRole.UserRole, uid)
            self.members.addItem(item)
        n = len(room.call)
        if in_this_call:
            self.join_call.setText("In the call")
            self.join_call.setEnabled(False)
        else:
            self.join_call.setEnabled(n < p.ROOM_CALL_PEOPLE)
            self.join_call.setText("Join call" + (f" · {n} in call" if n else ""))
        self.join_call.setToolTip(f"The room call is full ({p.ROOM_CALL_PEOPLE} people)" if n >= p.ROOM_CALL_PEOPLE
                                  else f"{n} of up to {p.ROOM_CALL_PEOPLE} people are in the call" if n
                                  else "Start a call with this room")


class RoomsPage(QWidget):
    join = Signal(str)  # room name
    leave = Signal(str)
    say = Signal(str, str)  # room, text
    join_call = Signal(str, bool)  # room, video
    opened = Signal(str)  # room shown: its lines are read

    def __init__(self, parent=None):
        super().__init__(parent)
        self.name = QLineEdit(placeholderText="Room name")
        self.name.setMaxLength(64)
        self.name.setAccessibleName("Room name")
        self.name.setToolTip("Join a room by its name; a new name makes a new room")
        self.name.returnPressed.connect(self.on_join)
        self.join_button = QPushButton("Join")
        self.join_button.setToolTip("Join or create the room")
        self.join_button.clicked.connect(self.on_join)
        self.problem = QLabel(objectName="roomProblem")
        self.problem.setStyleSheet("color: #d93636;")
        self.problem.setWordWrap(True)
        self.problem.hide()
        self.list = QListWidget()
        self.list.setAccessibleName("Your rooms")
        self.list.currentItemChanged.connect(lambda item, _old: self.on_select(item))
        side = QVBoxLayout()
        pick = QHBoxLayout()
        pick.addWidget(self.name, 1)
        pick.addWidget(self.join_button)
        side.addLayout(pick)
        side.addWidget(self.problem)
        side.addWidget(self.list, 1)
        left = QWidget()
        left.setLayout(side)
        left.setMaximumWidth(200)

        self.pane = RoomPane()
        self.pane.chat.send.connect(lambda text: self.say.emit(self.pane.room, text))
        self.pane.join_call.clicked.connect(
            lambda: self.join_call.emit(self.pane.room, self.pane.with_video.isChecked()))
        self.pane.leave.clicked.connect(lambda: self.leave.emit(self.pane.room))
        self.empty = QLabel("Rooms are places to talk with several people at once: a chat, and a call anyone in "
                            "the room can join.\n\nType a name on the left to join a room, or to start one.")
        self.empty.setWordWrap(True)
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty.setStyleSheet("color: palette(mid); font-size: 15px; padding: 24px;")
        self.right = QStackedWidget()
        self.right.addWidget(self.empty)
        self.right.addWidget(self.pane)
        layout = QHBoxLayout(self)
        layout.addWidget(left)
        layout.addWidget(self.right, 1)

    @property
    def current(self) -> str | None:
        item = self.list.currentItem()
        return item.data(Qt.ItemDataRole.UserRole) if item is not None else None

    def set_rooms(self, rooms: dict) -> None:
        """The rooms you are in (engine Rooms), with unread counts; keeps the selection."""
        current = self.current
        self.list.blockSignals(True)
        self.list.clear()
        for name in sorted(rooms):
            unread = rooms[name].unread if name != current or not self.isVisible() else 0
            item = QListWidgetItem(icon("rooms"), f"{name} ({unread})" if unread else name)
            item.setData(Qt.ItemDataRole.UserRole, name)
            if unread:
                font = item.font()
                font.setBold(True)
                item.setFont(font)
                item.setToolTip(f"{unread} unread message(s)")
            self.list.addItem(item)
            if name == current:
                self.list.setCurrentItem(item)
        self.list.blockSignals(False)
        if self.current is None:
            self.right.setCurrentWidget(self.empty)
            self.pane.room = ""

    def select(self, name: str) -> None:
        for i in range(self.list.count()):
            if self.list.item(i).data(Qt.ItemDataRole.UserRole) == name:
                self.list.setCurrentRow(i)
                return

    def on_select(self, item) -> None:
        if item is not None:
            self.right.setCurrentWidget(self.pane)
            self.opened.emit(item.data(Qt.ItemDataRole.UserRole))

    def on_join(self) -> None:
        name = self.name.text().strip()
        if not name:
            return
        try:
            p.CHANNEL("room", name)
        except ValueError as exc:
            self.show_problem(str(exc))
            return
        self.problem.hide()
        self.name.clear()
        self.join.emit(name)

    def show_problem(self, text: str) -> None:
        self.problem.setText(text)
        self.problem.show()
