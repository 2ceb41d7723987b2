"""The room call page: a grid of tiles (video, or the name for audio), each with a name and a mute mark, the
speaker's tile lit; your own preview; mute, camera and leave; the room's chat beside it."""

from __future__ import annotations

import asyncio
import math

from PySide6.QtCore import QTimer, Signal
from PySide6.QtWidgets import QFrame, QGridLayout, QHBoxLayout, QLabel, QSplitter, QVBoxLayout, QWidget

from client.core.tasks import Tasks

from .call_view import ShareButton, call_button, end_button
from .chat_view import ChatView
from .resources import icon
from .video import VideoView, show_preview

SPEAKING = 0.02  # a received level above this is someone speaking (a full-scale tone is 0.71)
LEFT_MESSAGES = {"left": "You left the room call.", "left_room": "You left the room, and its call."}
TILE = "QFrame#tile {{ border: 3px solid {}; border-radius: 6px; background: #111; }}"


class Tile(QFrame):
    """One participant: their video (or their name, for audio), name and mute mark."""

    def __init__(self, user: str, name: str, parent=None):
        super().__init__(parent)
        self.setObjectName("tile")
        self.user = user
        self.video = VideoView(name)
        self.video.setAccessibleName(f"{name}'s video")
        self.name = QLabel(name)
        self.name.setStyleSheet("color: white; font-weight: 600;")
        self.mute = QLabel(objectName="muted")
        self.mute.setPixmap(icon("mic-off", 16).pixmap(16, 16))
        self.mute.setToolTip(f"{name} is muted")
        self.mute.hide()
        bar = QHBoxLayout()
        bar.addWidget(self.name)
        bar.addStretch()
        bar.addWidget(self.mute)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.video, 1)
        layout.addLayout(bar)
        self.speaking = None
        self.set_state(speaking=False, muted=False)

    def set_state(self, *, speaking: bool, muted: bool) -> None:
        if speaking != self.speaking:
            self.speaking = speaking
            self.setStyleSheet(TILE.format("#2e9d4f" if speaking else "#333"))
        self.mute.setVisible(muted)


class RoomCallPage(QWidget):
    finished = Signal(str)  # a message for the user

    def __init__(self, engine, parent=None):
        super().__init__(parent)
        self.engine = engine
        self.room: str | None = None
        self.joined = False  # the server let us in (a join can be refused)
        self.tiles: dict[str, Tile] = {}
        self.tasks = Tasks()  # the local preview
        self._preview_task: asyncio.Task | None = None

        self.title = QLabel(objectName="roomCallTitle")
        self.title.setStyleSheet("font-size: 20px; font-weight: 600;")
        self.status = QLabel(objectName="roomCallStatus")
        self.notice = QLabel(objectName="roomCallNotice")
        self.notice.setStyleSheet("color: #b06000;")
        self.notice.setWordWrap(True)
        self.notice.hide()
        header = QHBoxLayout()
        header.addWidget(self.title)
        header.addWidget(self.status)
        header.addStretch()
        self.grid_host = QWidget()
        self.grid = QGridLayout(self.grid_host)
        self.grid.setSpacing(6)
        self.me = Tile("", "You")
        self.chat = ChatView(placeholder="Message the room…")
        self.chat.setMinimumWidth(180)
        self.chat.setMaximumWidth(320)
        self.sharer: str | None = None  # whose screen fills the stage
        self.share_view = VideoView("")
        self.share_view.setAccessibleName("Shared screen")
        self.share_label = QLabel(objectName="shareLabel")
        self.share_label.setStyleSheet("font-weight: 600;")
        self.stage = QWidget()
        stage = QVBoxLayout(self.stage)
        stage.setContentsMargins(0, 0, 0, 0)
        stage.addWidget(self.share_label)
        stage.addWidget(self.share_view, 1)
        self.stage.hide()
        left = QWidget()
        column = QVBoxLayout(left)
        column.setContentsMargins(0, 0, 0, 0)
        column.addWidget(self.stage, 3)
        column.addWidget(self.grid_host, 1)
        split = QSplitter()
        split.addWidget(left)
        split.addWidget(self.chat)
        split.setStretchFactor(0, 1)
        split.setStretchFactor(1, 0)

        self.mute = call_button("mic", "Mute the microphone (Ctrl+Shift+M)", "Ctrl+Shift+M", checkable=True)
        self.mute.toggled.connect(self.on_mute)
        self.cam = call_button("camera", "Turn the camera off (Ctrl+Shift+V)", "Ctrl+Shift+V", checkable=True)
        self.cam.toggled.connect(self.on_camera)
        self.share = ShareButton(lambda: self.engine, self._say)
        self.leave = end_button(self, "Leave", "Leave the call")
        self.leave.clicked.connect(self.on_leave)
        controls = QHBoxLayout()
        controls.addWidget(self.mute)
        controls.addWidget(self.cam)
        controls.addWidget(self.share)
        controls.addStretch()
        controls.addWidget(self.leave)

        layout = QVBoxLayout(self)
        layout.addLayout(header)
        layout.addWidget(self.notice)
        layout.addWidget(split, 1)
        layout.addLayout(controls)
        self.ticker = QTimer(self, interval=150)
        self.ticker.timeout.connect(self.on_tick)

    # ------------------------------------------------------------ driven by the main window

    def start(self, room: str) -> None:
        self.room = room
        self.title.setText(f"# {room}")
        self.status.setText("Joining…")
        self.joined = False
        self.notice.hide()
        self.mute.setChecked(self.engine.media.muted)
        self.cam.setChecked(not self.engine.media.camera_on)
        for tile in self.tiles.values():
            tile.deleteLater()
        self.tiles = {}
        self._lay_out()
        self.ticker.start()

    def on_room_call_changed(self, e) -> None:
        if e.room != self.room:
            return
        if e.state == "active":
            self.joined = True
            self.cam.setEnabled("video" in e.media)
            if e.notice:
                self.notice.setText(e.notice)
                self.notice.show()
            if "video" in e.media and self._preview_task is None:
                self._preview_task = self.tasks.spawn(self._run_preview(), "room call preview")
            self.me.video.clear("You" if "video" in e.media else "You (audio)")
            self.refresh()
        elif e.state == "left":
            joined, self.joined = self.joined, False
            self.stop()
            if not joined:  # refused: the room's call is full, or we are in another call
                self.finished.emit(f"You could not join the call in {e.room}: {e.reason}.")
            else:
                self.finished.emit(LEFT_MESSAGES.get(e.reason or "", f"The room call ended: {e.reason}."))

    def refresh(self) -> None:
        """Tiles for whoever is in the call now."""
        c = self.engine.room_call if self.engine is not None else None
        if c is None or c.room != self.room:
            return
        for user in list(self.tiles):
            if user not in c.peer_media:
                self.tiles.pop(user).deleteLater()
        if self.sharer is not None and self.sharer not in c.peer_media:  # the sharer left the call
            self.sharer = None
            self.stage.hide()
        for user in c.peer_media:
            if user not in self.tiles:
                name = self.engine.name_of(user)
                self.tiles[user] = Tile(user, name)
                if "video" not in c.peer_media[user]:
                    self.tiles[user].video.clear(f"{name}\n(audio)")
        n = len(c.peer_media) + 1
        self.status.setText(f"{n} in the call" if n > 1 else "Waiting for others to join…")
        self._lay_out()

    def on_room_video(self, room: str, peer: str, image) -> None:
        tile = self.tiles.get(peer)
        if room == self.room and tile is not None:
            tile.video.on_frame(image)

    def on_screen_shared(self, e) -> None:
        """A participant's share fills the stage above the grid, until it stops; ours sets the button."""
        c = self.engine.room_call if self.engine is not None else None
        if not e.call_id:
            self.share.on_own_share(e)
        elif c is not None and e.call_id == c.call_id and (e.active or e.peer == self.sharer):
            self.sharer = e.peer if e.active else None
            self.share_label.setText(f"{self.engine.name_of(e.peer)}'s screen" if e.active else "")
            self.share_view.clear("Waiting for the shared screen…")
            self.stage.setVisible(e.active)

    def on_remote_screen(self, call_id: str, peer: str, image) -> None:
        if peer == self.sharer and self.room is not None:
            self.share_view.on_frame(image)

    def stop(self) -> None:
        self.ticker.stop()
        if self._preview_task is not None:
            self._preview_task.cancel()
            self._preview_task = None
        self.room = None
        self.sharer = None
        self.stage.hide()
        if self.engine is not None and self.engine.media.sharing:
            self.engine.share_screen(False)  # a share belongs to its call

    # ------------------------------------------------------------ slots (callable from tests)

    def on_leave(self) -> None:
        if self.engine is not None:
            self.engine.leave_room_call()

    def on_mute(self, muted: bool) -> None:
        self.engine.set_muted(muted)
        self.mute.setIcon(icon("mic-off" if muted else "mic"))
        self.me.set_state(speaking=False, muted=muted)

    def _say(self, text: str) -> None:
        self.notice.setText(text)
        self.notice.show()

    def on_camera(self, off: bool) -> None:
        self.engine.set_camera(not off)
        self.cam.setIcon(icon("camera-off" if off else "camera"))

    def on_tick(self) -> None:
        c = self.engine.room_call if self.engine is not None else None
        if c is None:
            return
        levels = {u: c.level(u) for u in self.tiles}
        loudest = max(levels, key=levels.get, default=None)
        for user, tile in self.tiles.items():
            tile.set_state(speaking=user == loudest and levels[user] > SPEAKING, muted=c.muted(user))
        self.me.set_state(speaking=not self.engine.media.muted and self.engine.media.mic_level > SPEAKING,
                          muted=self.engine.media.muted)

    # ------------------------------------------------------------ layout and preview

    def _lay_out(self) -> None:
        """Everyone in a square-ish grid, you last: 2x2 for four, 3x3 up to nine."""
        for i in reversed(range(self.grid.count())):
            self.grid.takeAt(i)
        tiles = [*self.tiles.values(), self.me]
        cols = math.ceil(math.sqrt(len(tiles)))
        for i in range(3):  # every cell the same size, whatever it shows
            self.grid.setColumnStretch(i, int(i < cols))
            self.grid.setRowStretch(i, int(i < math.ceil(len(tiles) / cols)))
        for i, tile in enumerate(tiles):
            self.grid.addWidget(tile, i // cols, i % cols)

    async def _run_preview(self) -> None:
        await show_preview(self.engine.media, self.me.video)
