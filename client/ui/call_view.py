"""The call page: ringing and in-call views, remote video with a local preview, controls, meter and quality."""

from __future__ import annotations

import asyncio
import time

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QIcon, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QMenu,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from client.core.devices import current as current_devices
from client.core.screen import share_targets
from client.core.tasks import Tasks

from .chat_view import ChatView
from .pickers import DevicePicker
from .resources import icon
from .video import VideoView, show_preview

END_MESSAGES = {
    "busy": "{name} is busy in another call.",
    "no_answer": "{name} did not answer.",
    "rejected": "{name} declined the call.",
    "offline": "{name} is not online.",
    "cancelled": "The call was cancelled.",
    "hangup": "Call ended.",
    "peer_disconnected": "{name} lost the connection; the call ended.",
    "ice_failed": "The media connection to {name} could not be repaired; the call ended.",
    "glare": "You and {name} called each other; one call went through.",
    "identity_mismatch": "The call to {name} was stopped before it connected: it was not signed by the key you "
                         "know for {name}, so someone may be in the middle. If {name} has a new computer, check "
                         "with them and trust their new key on their contact row.",
}


def end_message(reason: str | None, name: str) -> str:
    return END_MESSAGES.get(reason or "", "Call ended ({reason}).").format(name=name, reason=reason)


def call_button(icon_name: str, tip: str, shortcut: str, checkable: bool = False) -> QPushButton:
    """A call control: an icon, its tip naming the shortcut, the shortcut itself."""
    b = QPushButton(icon(icon_name), "")
    b.setToolTip(tip)
    b.setAccessibleName(tip.split(" (")[0])
    b.setCheckable(checkable)
    b.setShortcut(QKeySequence(shortcut))
    b.setMinimumHeight(36)
    return b


def end_button(page: QWidget, text: str, tip: str) -> QPushButton:
    """The red button that ends a call (or leaves a room call), on Ctrl+Shift+E. The shortcut belongs to the
    page, not the button: a label change (Cancel, Hang up) would drop a button's own."""
    b = call_button("hangup", f"{tip} (Ctrl+Shift+E)", "")
    b.setObjectName("endCall")
    b.setText(text)
    b.setStyleSheet("QPushButton#endCall { background: #d93636; color: white; border-radius: 6px;"
                    "padding: 6px 16px; } QPushButton#endCall:focus { border: 2px solid #ffd54a; }")
    QShortcut(QKeySequence("Ctrl+Shift+E"), page, b.animateClick)
    return b


class ShareButton(QPushButton):
    """Share screen (Ctrl+Shift+S): checked while sharing. Pressed with more than one screen or any window open,
    it offers each in a menu; with one screen it shares it at once. `say(text)` tells the page's user why a
    share did not start or has ended."""

    def __init__(self, engine_of, say):
        super().__init__(icon("screen"), "")
        self.setCheckable(True)
        self.setShortcut(QKeySequence("Ctrl+Shift+S"))
        self.setAccessibleName("Share your screen or a window")
        self.setMinimumHeight(36)
        self.engine_of, self.say = engine_of, say
        self.menu: QMenu | None = None  # the choice on offer, while it is open
        self.sharing = False  # as the engine last told
        self.show_own(False)
        self.toggled.connect(self._toggled)

    def _toggled(self, on: bool) -> None:
        engine = self.engine_of()
        if not on:
            engine.share_screen(False)
            return
        targets = share_targets()
        if len(targets) <= 1:
            self.share(targets[0] if targets else None)
            return
        menu = self.menu = QMenu(self)
        for t in targets:
            if t.kind == "window" and not any(a.isSeparator() for a in menu.actions()):
                menu.addSection("Windows")
            action = menu.addAction(icon("screen") if t.kind == "screen" else QIcon(), t.name)
            action.triggered.connect(lambda _c=False, t=t: self.share(t))
        menu.aboutToHide.connect(lambda: QTimer.singleShot(0, self._menu_closed))
        menu.popup(self.mapToGlobal(self.rect().bottomLeft()))

    def share(self, target) -> None:
        self.menu = None
        self.engine_of().share_screen(True, target)  # its event sets the button, and says why if it failed

    def _menu_closed(self) -> None:
        if self.menu is not None:  # closed with nothing chosen
            self.menu = None
            self.show_own(False)

    def show_own(self, active: bool, problem: str | None = None) -> None:
        """Our share started, stopped, could not start or ended by itself: the button says so."""
        self.blockSignals(True)
        self.setChecked(active)
        self.blockSignals(False)
        self.setToolTip("Stop sharing (Ctrl+Shift+S)" if active else
                        f"Not sharing: {problem}" if problem else "Share your screen or a window (Ctrl+Shift+S)")

    def on_own_share(self, e) -> None:
        """An events.ScreenShared of ours."""
        if e.problem:
            self.say(f"Screen sharing stopped: {e.problem}" if self.sharing else
                     f"Cannot share your screen: {e.problem}")
        self.sharing = e.active
        self.show_own(e.active, e.problem)


def clock(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60:02d}:{rest % 60:02d}"


class CallPage(QWidget):
    finished = Signal(str, str)  # call_id, message for the user

    def __init__(self, engine, parent=None):
        super().__init__(parent)
        self.engine = engine
        self.call_id: str | None = None
        self.peer: str | None = None  # the other party's user id (None for the sound check)
        self.peer_name = ""
        self.state = ""
        self.active_since: float | None = None
        self._preview_task: asyncio.Task | None = None
        self.tasks = Tasks()  # the quality figures and the local preview
        self._bytes = (0, time.monotonic())

        self.name = QLabel(objectName="callName")
        self.name.setStyleSheet("font-size: 20px; font-weight: 600;")
        self.status = QLabel(objectName="callStatus")
        self.quality = QLabel(objectName="callQuality")
        self.quality.setToolTip("Call quality appears once media flows")
        self.security = QLabel(objectName="callSecurity")
        self.notice = QLabel(objectName="callNotice")  # why a share did not start or has ended
        self.notice.setStyleSheet("color: #b06000;")
        self.notice.setWordWrap(True)
        self.notice.hide()
        header = QHBoxLayout()
        header.addWidget(self.name)
        header.addWidget(self.status)
        header.addStretch()
        header.addWidget(self.security)
        header.addWidget(self.quality)

        self.remote = VideoView("Waiting for video…")
        self.remote.setAccessibleName("Remote video")
        self.preview = VideoView("", self.remote)
        self.preview.setAccessibleName("Your camera")
        self.corner = VideoView("", self.remote)  # their camera, while their screen fills the view
        self.corner.setAccessibleName("Their camera")
        self.corner.hide()
        self.share_label = QLabel(self.remote, objectName="shareLabel")
        self.share_label.setStyleSheet("background: rgba(0,0,0,150); color: white; padding: 4px 8px;"
                                       "border-radius: 4px;")
        self.share_label.hide()
        self.their_share = False  # the other side's screen fills the view
        self.preview.hide()
        self.overlay = QLabel("Reconnecting…", self.remote)
        self.overlay.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.overlay.setStyleSheet("background: rgba(0,0,0,150); color: white; font-size: 18px; padding: 12px;"
                                   "border-radius: 8px;")
        self.overlay.hide()

        self.mute = call_button("mic", "Mute the microphone (Ctrl+Shift+M)", "Ctrl+Shift+M", checkable=True)
        self.mute.toggled.connect(self.on_mute)
        self.cam = call_button("camera", "Turn the camera off (Ctrl+Shift+V)", "Ctrl+Shift+V", checkable=True)
        self.cam.toggled.connect(self.on_camera)
        self.hang = end_button(self, "Hang up", "Hang up")
        self.hang.clicked.connect(self.on_hangup)
        self.level = QProgressBar(maximum=100, textVisible=False)
        self.level.setFixedWidth(90)
        self.level.setToolTip("Microphone level")
        self.level.setAccessibleName("Microphone level")

        self.share = ShareButton(lambda: self.engine, self._say)
        self.chat_button = call_button("chat", "Show the chat with the other person (Ctrl+Shift+C)", "Ctrl+Shift+C",
                                        checkable=True)
        self.chat = ChatView()
        self.chat.setMinimumWidth(220)
        self.chat.hide()
        self.chat_button.toggled.connect(self.chat.setVisible)
        controls = QHBoxLayout()
        controls.addWidget(self.mute)
        controls.addWidget(self.level)
        controls.addWidget(self.cam)
        controls.addWidget(self.share)
        controls.addWidget(self.chat_button)
        controls.addStretch()
        controls.addWidget(self.hang)

        self.mic_pick = self._picker("microphone", self.on_pick_microphone)
        self.spk_pick = self._picker("speaker", self.on_pick_speaker)
        self.cam_pick = self._picker("camera", self.on_pick_camera)
        devices = QHBoxLayout()
        for label, box in (("Mic", self.mic_pick), ("Speaker", self.spk_pick), ("Camera", self.cam_pick)):
            text = QLabel(label)
            text.setBuddy(box)
            devices.addWidget(text)
            devices.addWidget(box, 1)

        layout = QVBoxLayout(self)
        layout.addLayout(header)
        layout.addWidget(self.notice)
        middle = QHBoxLayout()
        middle.addWidget(self.remote, 1)
        middle.addWidget(self.chat)
        layout.addLayout(middle, 1)
        layout.addLayout(controls)
        layout.addLayout(devices)

        self.ticker = QTimer(self, interval=100)
        self.ticker.timeout.connect(self.on_tick)
        self.stats_timer = QTimer(self, interval=1000)
        self.stats_timer.timeout.connect(self.on_stats_timer)

    # ------------------------------------------------------------ building blocks

    def _picker(self, kind: str, slot) -> DevicePicker:
        box = DevicePicker(kind)
        box.setToolTip(f"{kind.capitalize()} to use; switching takes effect at once, mid-call. The list follows "
                       "devices as they are plugged in and out.")
        box.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        box.activated.connect(lambda _i, b=box: slot(b.currentData()))
        return box

    def fill_devices(self, devices=None) -> None:
        """List the devices there are (`devices`, a look just taken, else one now), each picker on the one in use."""
        devices = devices or self.engine.devices or current_devices()
        for box in (self.mic_pick, self.spk_pick, self.cam_pick):
            box.refill(devices, self.engine.media.in_use(box.kind) or "")

    def on_devices(self, devices) -> None:
        if self.call_id is not None:
            self.fill_devices(devices)

    # ------------------------------------------------------------ driven by the main window

    def start(self, call_id: str, peer_name: str, direction: str, media: list[str], peer: str | None = None) -> None:
        self.call_id, self.peer_name, self.state, self.peer = call_id, peer_name, "ringing", peer
        self.active_since = None
        self.name.setText(peer_name)
        self.status.setText(f"Calling {peer_name}…" if direction == "outgoing" else "Connecting…")
        self.hang.setText("Cancel" if direction == "outgoing" else "Hang up")
        self.remote.clear("Waiting for video…" if "video" in media else "Audio call")
        self.quality.setText("")
        self.security.setText("")
        self.security.setToolTip("")
        self.mute.setChecked(self.engine.media.muted)
        self.cam.setEnabled("video" in media)
        self.cam.setChecked(not self.engine.media.camera_on)
        self.overlay.hide()
        self.chat_button.setVisible(peer is not None)
        self.chat_button.setChecked(False)
        self.share.setVisible(peer is not None)
        self.notice.hide()
        self.share.sharing = self.engine.media.sharing
        self.share.show_own(self.share.sharing)
        self._show_share(False)
        self.fill_devices()
        self.ticker.start()
        self.stats_timer.start()
        if "video" in media:
            self._start_preview()

    def on_security(self, call_id: str, verified: bool, code: str) -> None:
        """Who is at the other end of the media: the safety code to read out, or why there is none."""
        if call_id != self.call_id:
            return
        if verified and code:
            self.security.setText(f"Verified · safety code {code}")
            self.security.setToolTip(f"{self.peer_name}'s app signed this call with the key you know for them.\n"
                                     "Read the code to each other: the same digits on both sides mean nobody sits "
                                     "between you.")
        else:
            self.security.setText("Not verified")
            self.security.setToolTip(f"{self.peer_name}'s app has no identity key (an older version), so this call "
                                     "cannot be checked for someone in the middle.")

    def on_call_changed(self, e) -> None:
        if e.call_id != self.call_id:
            return
        self.state = e.state
        if e.state == "connecting":
            self.status.setText("Connecting…")
            self.hang.setText("Hang up")
        elif e.state == "active":
            if self.active_since is None:
                self.active_since = time.monotonic()
            self.overlay.hide()
            self.on_tick()
        elif e.state == "reconnecting":
            self.overlay.show()
            self._place_overlays()
        elif e.state == "ended":
            self.stop()
            self.finished.emit(e.call_id, end_message(e.reason, self.peer_name))

    def on_remote_frame(self, call_id: str, image) -> None:
        if call_id == self.call_id:
            (self.corner if self.their_share else self.remote).on_frame(image)

    def on_remote_screen(self, call_id: str, peer: str, image) -> None:
        if call_id == self.call_id and self.their_share:
            self.remote.on_frame(image)

    def on_screen_shared(self, e) -> None:
        """Someone started or stopped sharing: the other side (their screen fills the view), or we (the button)."""
        if e.call_id == self.call_id and e.call_id:
            self._show_share(e.active)
        elif not e.call_id:
            self.share.on_own_share(e)

    def _show_share(self, on: bool) -> None:
        self.their_share = on
        self.corner.setVisible(on)
        self.share_label.setVisible(on)
        self.share_label.setText(f"{self.peer_name}'s screen")
        self.share_label.adjustSize()
        self.remote.clear("Waiting for the shared screen…" if on else None)
        self.corner.clear()
        self._place_overlays()

    def stop(self) -> None:
        self.ticker.stop()
        self.stats_timer.stop()
        if self._preview_task is not None:
            self._preview_task.cancel()
            self._preview_task = None
        self.preview.hide()
        self.overlay.hide()
        self._show_share(False)
        self.call_id = None
        if self.engine is not None and self.engine.media.sharing:
            self.engine.share_screen(False)  # a share belongs to its call

    # ------------------------------------------------------------ slots (callable from tests)

    def _say(self, text: str) -> None:
        self.notice.setText(text)
        self.notice.show()

    def on_hangup(self) -> None:
        if self.call_id is not None:
            self.engine.hangup(self.call_id)

    def on_mute(self, muted: bool) -> None:
        self.engine.set_muted(muted)
        self.mute.setIcon(icon("mic-off" if muted else "mic"))
        self.mute.setToolTip(("Unmute" if muted else "Mute") + " the microphone (Ctrl+Shift+M)")

    def on_camera(self, off: bool) -> None:
        self.engine.set_camera(not off)
        self.cam.setIcon(icon("camera-off" if off else "camera"))
        self.cam.setToolTip(("Turn the camera on" if off else "Turn the camera off") + " (Ctrl+Shift+V)")

    def on_pick_microphone(self, name) -> None:
        if name is not None:
            self.engine.media.switch_microphone(name)

    def on_pick_speaker(self, name) -> None:
        if name is not None:
            self.engine.media.switch_speaker(name)

    def on_pick_camera(self, cam_id) -> None:
        if cam_id is not None:
            self.engine.media.switch_camera(cam_id)

    def on_tick(self) -> None:
        self.level.setValue(min(100, int(self.engine.media.mic_level * 300)))
        if self.active_since is not None and self.state in ("active", "reconnecting"):
            self.status.setText(clock(time.monotonic() - self.active_since))

    def on_stats_timer(self) -> None:
        if self.call_id is not None and self.state in ("active", "reconnecting"):
            self.tasks.spawn(self._update_quality(self.call_id), "call quality")

    async def _update_quality(self, call_id: str) -> None:
        s = await self.engine.stats(call_id)
        if not s or call_id != self.call_id:
            return
        now = time.monotonic()
        prev_bytes, prev_t = self._bytes
        kbps = max(0, s["bytes_received"] - prev_bytes) * 8 / 1000 / max(now - prev_t, 0.001)
        self._bytes = (s["bytes_received"], now)
        total = s["packets_received"] + s["packets_lost"]
        loss = 100 * s["packets_lost"] / total if total else 0.0
        rtt = s["rtt_ms"]
        grade = "Good" if loss < 2 and (rtt or 0) < 150 else "Fair" if loss < 8 and (rtt or 0) < 400 else "Poor"
        self.quality.setText(f"● {grade}")
        color = {"Good": "#2e9d4f", "Fair": "#d9a400", "Poor": "#d93636"}[grade]
        self.quality.setStyleSheet(f"color: {color}; font-weight: 600;")
        self.quality.setToolTip(f"Round trip: {'—' if rtt is None else f'{rtt:.0f} ms'}\n"
                                f"Packet loss: {loss:.1f}%\nReceiving: {kbps:.0f} kbit/s")

    # ------------------------------------------------------------ local preview

    def _start_preview(self) -> None:
        self.preview.show()
        self._place_overlays()
        self._preview_task = self.tasks.spawn(self._run_preview(), "camera preview")

    async def _run_preview(self) -> None:
        await show_preview(self.engine.media, self.preview)

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._place_overlays()

    def _place_overlays(self) -> None:
        w, h = self.remote.width(), self.remote.height()
        pw = max(120, w // 4)
        self.preview.setGeometry(w - pw - 12, h - pw * 3 // 4 - 12, pw, pw * 3 // 4)
        self.corner.setGeometry(w - pw - 12, 12, pw, pw * 3 // 4)
        self.share_label.move(12, 12)
        self.overlay.adjustSize()
        self.overlay.move((w - self.overlay.width()) // 2, (h - self.overlay.height()) // 2)
