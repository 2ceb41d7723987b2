"""The one bridge: engine and LAN events in, Qt signals out. Video frames become QImages here, newest frame only."""

from __future__ import annotations

from PySide6.QtCore import QObject, QTimer, Signal
from PySide6.QtGui import QImage

from client.core import events as ev


def to_qimage(frame) -> QImage:
    """An av.VideoFrame as a QImage that owns its pixels."""
    rgb = frame.to_ndarray(format="rgb24")
    h, w = rgb.shape[:2]
    return QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()


class EngineBridge(QObject):
    connectionChanged = Signal(str, str)  # state, reason
    usersChanged = Signal(list)  # [UserInfo]
    incomingCall = Signal(str, str, str, list)  # call_id, peer, display name, media
    callChanged = Signal(object)  # events.CallChanged
    deviceProblem = Signal(str, str)  # kind, message ("" when solved)
    devicesChanged = Signal(object)  # client.core.devices.Devices: a device came or went
    deviceMoved = Signal(str, str)  # kind, the sentence saying which device is used now
    serverError = Signal(str, str, str)  # code, message, ref
    remoteVideo = Signal(str, QImage)  # call_id, frame
    moving = Signal(str, str, str)  # url, name, why: the app is moving to another server
    keyChanged = Signal(object)  # events.KeyChanged
    callSecurity = Signal(str, bool, str)  # call_id, verified, safety code ("" when none)
    roomsChanged = Signal()  # the rooms you are in, or their unread counts
    roomChanged = Signal(str)  # room: its members or its call
    roomText = Signal(str, object)  # room, events.ChatLine
    directText = Signal(str, object)  # the other person, events.ChatLine
    chatStatus = Signal(str, str, str)  # the other person, line id, why it was not delivered
    roomCallChanged = Signal(object)  # events.RoomCallChanged
    roomVideo = Signal(str, str, QImage)  # room, peer, frame
    remoteScreen = Signal(str, str, QImage)  # call_id, peer, a frame of their screen share
    screenShared = Signal(object)  # events.ScreenShared

    def __init__(self, engine, parent=None):
        super().__init__(parent)
        self.engine = engine
        self._latest: dict[str, object] = {}
        self._flush = QTimer(self, singleShot=True, interval=0)
        self._flush.timeout.connect(self._emit_video)
        engine.subscribe(self.on_event)

    def on_event(self, e) -> None:
        if isinstance(e, (ev.RemoteVideo, ev.RoomVideo, ev.RemoteScreen)):
            # Frames can arrive faster than the screen paints; keep the newest and convert it once per turn.
            first = not self._latest
            key = e.call_id if isinstance(e, ev.RemoteVideo) else ("room", e.room, e.peer) if isinstance(
                e, ev.RoomVideo) else ("screen", e.call_id, e.peer)
            self._latest[key] = e.frame
            if first:
                self._flush.start()
        elif isinstance(e, ev.ConnectionChanged):
            self.connectionChanged.emit(e.state, e.reason)
        elif isinstance(e, ev.UsersChanged):
            self.usersChanged.emit(list(e.users))
        elif isinstance(e, ev.IncomingCall):
            self.incomingCall.emit(e.call_id, e.peer, e.display_name, list(e.media))
        elif isinstance(e, ev.CallChanged):
            self.callChanged.emit(e)
        elif isinstance(e, ev.DeviceProblem):
            self.deviceProblem.emit(e.kind, e.message or "")
        elif isinstance(e, ev.DevicesChanged):
            self.devicesChanged.emit(e.devices)
        elif isinstance(e, ev.DeviceMoved):
            self.deviceMoved.emit(e.kind, e.message)
        elif isinstance(e, ev.ServerError):
            self.serverError.emit(e.code, e.message, e.ref or "")
        elif isinstance(e, ev.Moving):
            self.moving.emit(e.url, e.name, e.why)
        elif isinstance(e, ev.KeyChanged):
            self.keyChanged.emit(e)
        elif isinstance(e, ev.CallSecurity):
            self.callSecurity.emit(e.call_id, e.verified, e.safety_code or "")
        elif isinstance(e, ev.RoomsChanged):
            self.roomsChanged.emit()
        elif isinstance(e, ev.RoomChanged):
            self.roomChanged.emit(e.room)
        elif isinstance(e, ev.RoomText):
            self.roomText.emit(e.room, e.line)
        elif isinstance(e, ev.DirectText):
            self.directText.emit(e.peer, e.line)
        elif isinstance(e, ev.ChatStatus):
            self.chatStatus.emit(e.peer, e.id, e.reason)
        elif isinstance(e, ev.RoomCallChanged):
            self.roomCallChanged.emit(e)
        elif isinstance(e, ev.ScreenShared):
            self.screenShared.emit(e)

    def _emit_video(self) -> None:
        latest, self._latest = self._latest, {}
        for key, frame in latest.items():
            if isinstance(key, str):
                self.remoteVideo.emit(key, to_qimage(frame))
            elif key[0] == "room":
                self.roomVideo.emit(key[1], key[2], to_qimage(frame))
            else:
                self.remoteScreen.emit(key[1], key[2], to_qimage(frame))
