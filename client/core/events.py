"""What the engine and the LAN tell their listeners: the events (one frozen dataclass each), and the fan-out."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from shared.protocol import UserInfo


class Listeners:
    """Who hears a source's events (the engine's, the LAN's): each in turn, one failing listener logged, not
    stopping the others."""

    def __init__(self) -> None:
        self._listeners: list[Callable[[object], None]] = []

    def subscribe(self, listener: Callable[[object], None]) -> None:
        self._listeners.append(listener)

    def emit(self, event: object) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                logging.getLogger("callbox.events").exception("listener failed on %s", type(event).__name__)


@dataclass(frozen=True)
class ConnectionChanged:
    state: str  # connecting, online, reconnecting, offline
    reason: str


@dataclass(frozen=True)
class UsersChanged:
    users: tuple[UserInfo, ...]  # everyone else on the server, with status


@dataclass(frozen=True)
class IncomingCall:
    call_id: str
    peer: str
    display_name: str
    media: tuple[str, ...]


@dataclass(frozen=True)
class CallChanged:
    call_id: str
    peer: str
    direction: str  # outgoing or incoming
    state: str  # ringing, connecting, active, reconnecting, ended
    reason: str | None  # why it ended
    media: tuple[str, ...]
    display_name: str = ""  # the other party's name


@dataclass(frozen=True)
class DeviceProblem:
    kind: str  # microphone, speaker, camera
    message: str | None  # None when the problem went away


@dataclass(frozen=True)
class DevicesChanged:
    """A microphone, speaker or camera came or went, or the system default changed."""

    devices: object  # client.core.devices.Devices


@dataclass(frozen=True)
class DeviceMoved:
    """An open device was swapped for another (unplugged, replugged, or the default moved), as a sentence."""

    kind: str  # microphone, speaker, camera
    message: str


@dataclass(frozen=True)
class ServerError:
    code: str
    message: str
    ref: str | None


@dataclass(frozen=True)
class Redirected:
    """The server is handing over to another one (client.core.lan decides whether to follow)."""

    url: str
    server_id: str | None


@dataclass(frozen=True)
class Moving:
    """This app is moving to another server: the one it had was lost, or another won on the LAN."""

    url: str
    name: str  # the server's advertised name, e.g. "Callbox (Alice)"
    why: str


@dataclass(frozen=True)
class Hosting:
    """This app hosts the LAN's server (url set), or stopped hosting it (url None, reason says why)."""

    url: str | None
    reason: str = ""


@dataclass(frozen=True)
class KeyChanged:
    """A contact's identity key is not the one pinned for them: another device, a reinstall, or an impostor."""

    user_id: str
    display_name: str
    pinned: str  # the fingerprint first seen
    seen: str  # the fingerprint now


@dataclass(frozen=True)
class CallSecurity:
    """What is known of who is at the other end of a call's media, after each (re)negotiation."""

    call_id: str
    verified: bool  # the peer signed its DTLS fingerprints with its pinned key
    safety_code: str | None  # six digits, the same on both sides; None when the peer has no key


@dataclass(frozen=True)
class ChatLine:
    """One line of a room's chat or of a direct conversation."""

    sender: str  # user id; "" for a line the app writes (someone joined or left)
    name: str  # the sender's display name, or the subject's for a system line
    text: str
    ts: float  # wall clock, seconds
    kind: str = "text"  # text, joined, left, gap
    mine: bool = False
    id: str | None = None
    delivered: bool | None = None  # direct lines only: False once the server said it was not delivered


@dataclass(frozen=True)
class RoomsChanged:
    """The rooms this user is in, or their unread counts, changed."""

    rooms: tuple[str, ...]


@dataclass(frozen=True)
class RoomChanged:
    """A room's members or the people in its call changed."""

    room: str


@dataclass(frozen=True)
class RoomText:
    room: str
    line: ChatLine


@dataclass(frozen=True)
class DirectText:
    peer: str  # the other person of the conversation
    line: ChatLine


@dataclass(frozen=True)
class ChatStatus:
    """A direct line was not delivered (the recipient has no session)."""

    peer: str
    id: str
    delivered: bool
    reason: str


@dataclass(frozen=True)
class RoomCallChanged:
    room: str
    state: str  # joining, active, left
    media: tuple[str, ...]  # what we send in it, as the server granted
    notice: str | None = None  # e.g. why we joined with audio only
    reason: str | None = None  # why we left, or were refused


@dataclass(frozen=True)
class RoomVideo:
    room: str
    peer: str
    frame: object  # av.VideoFrame


@dataclass(frozen=True)
class ScreenShared:
    """Someone in a call (1:1 or a room's) started or stopped sharing their screen; or we did (peer is us)."""

    call_id: str
    peer: str
    active: bool
    problem: str | None = None  # when our own share could not start, or ended by itself: why


@dataclass(frozen=True)
class RemoteScreen:
    call_id: str
    peer: str
    frame: object  # av.VideoFrame


@dataclass(frozen=True)
class RemoteVideo:
    call_id: str
    frame: object  # av.VideoFrame


Event = (ConnectionChanged | UsersChanged | IncomingCall | CallChanged | DeviceProblem | ServerError | Redirected
         | Moving | Hosting | KeyChanged | CallSecurity | RemoteVideo | RoomsChanged | RoomChanged | RoomText
         | DirectText | ChatStatus | RoomCallChanged | RoomVideo | ScreenShared | RemoteScreen)
