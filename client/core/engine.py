"""The call engine: the user's commands, signaling in and out, glare, and each 1:1 call's state machine and Pair.

Rooms (their chat and their calls) are client.core.rooms's and direct chat client.core.chat's; the engine routes
their messages and commands."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from shared import protocol as p
from shared.calls import Call, Event, IllegalTransition, State, glare_winner
from shared.identity import fingerprint
from shared.names import display_name

from . import events as ev
from . import pair as pair_events
from .chat import DirectChat
from .devices import Devices, DeviceWatch
from .identity import Identity, Pins
from .media import LocalMedia
from .pair import Pair, PairConfig
from .peer import PeerSession, Received
from .rooms import Room, RoomCall, Rooms
from .screen import Target
from .signaling import ConnState, SignalingClient
from .tasks import Tasks

log = logging.getLogger("callbox.engine")

ECHO_PEER = "(echo)"  # the peer of a sound and video check; no user id can look like it
RECENT_FINISHED = 4  # ended calls kept in app mode (keep_finished=False): the last few, for a look at them
GLARE_LOSERS_KEPT = 32  # call ids lost to glare, whose late messages are ignored without a log line


@dataclass
class EngineConfig:
    server: str | list[str]  # an address, or several to fail over among in order (see SignalingClient)
    user_id: str
    display_name: str
    token: str | None = None
    ice_servers: list[dict] = field(default_factory=list)
    auto_answer: bool = False
    media_timeout: float = 3.0  # no media for this long: the call shows reconnecting
    repair_after: float = 8.0  # ... and after this long (or ICE failed), build a new peer connection
    repair_attempts: int = 3
    analyze_video: bool = False  # read the test pattern's counter from every remote frame
    first_retry: float = 0.5
    max_retry: float = 5.0


@dataclass
class CallSession:
    """A 1:1 call: the call state machine plus the one Pair that carries its media."""

    call: Call
    direction: str
    peer_name: str
    want: tuple[str, ...]  # what we send
    pair: Pair
    times: list[tuple[str, float]] = field(default_factory=list)  # (state, wall time)
    echo: object | None = None  # the local echo peer of a sound and video check; no server involved

    # What the pair knows, as a call's fields (the headless report, the tests and the benchmarks read them).
    @property
    def received(self) -> Received:
        return self.pair.received

    @property
    def pc(self) -> PeerSession | None:
        return self.pair.pc

    @property
    def attempts(self) -> int:  # peer connections built so far
        return self.pair.attempts

    @property
    def accepted_at(self) -> float | None:
        return self.pair.started_at

    @property
    def verified(self) -> bool | None:  # the peer's SDP was signed by its pinned key (False: it has no key)
        return self.pair.verified

    @property
    def safety_code(self) -> str | None:  # the same six digits on both sides (shared.identity.safety_code)
        return self.pair.safety_code


def sending(media: tuple[str, ...], want: tuple[str, ...]) -> tuple[str, ...]:
    """What goes into the peer connection: what the call has and we want to send, at least audio."""
    return tuple(k for k in media if k in want) or ("audio",)


class Engine:
    """Everything a calling app does that is not a window. Listeners get events from client.core.events.

    The engine keeps the listeners, the signaling dispatch, glare and the user's commands; each call's media is
    its Pair's (client.core.pair). `finished` keeps every ended call when asked (`keep_finished`, for the headless
    report and tests), else only the last few; none of them holds decoded audio."""

    def __init__(self, config: EngineConfig, media: LocalMedia, *, identity: Identity | None = None,
                 pins: Pins | None = None, keep_finished: bool = False):
        self.config = config
        self.media = media
        self.identity = identity
        self.pins = pins if pins is not None else Pins(None)
        self.key_warnings: dict[str, ev.KeyChanged] = {}  # user -> the latest mismatch, while it lasts
        media.on_problem = lambda kind, why: self._emit(ev.DeviceProblem(kind, why))
        self.sessions: dict[str, CallSession] = {}
        self.finished: list[CallSession] | deque[CallSession] = [] if keep_finished else deque(
            maxlen=RECENT_FINISHED)
        self._glare_losers: deque[str] = deque(maxlen=GLARE_LOSERS_KEPT)
        self._listeners = ev.Listeners()
        self._teardowns = Tasks()
        self.signaling = SignalingClient(
            config.server, config.user_id, config.display_name, token=config.token,
            on_message=self._on_message, on_state=self._on_conn_state, active_calls=self._active_calls,
            first_retry=config.first_retry, max_retry=config.max_retry, identity=identity,
        )
        self._rooms = Rooms(config.user_id, media, send=self.signaling.send, emit=self._emit, name_of=self.name_of,
                            pair_config=self._pair_config, identity=identity, peer_key=self._peer_key,
                            finished_kept=None if keep_finished else RECENT_FINISHED)
        self._direct = DirectChat(config.user_id, send=self.signaling.send, emit=self._emit, name_of=self.name_of)
        self._devices: DeviceWatch | None = None

    # ------------------------------------------------------------ lifecycle and listeners

    def subscribe(self, listener: Callable[[object], None]) -> None:
        self._listeners.subscribe(listener)

    def _emit(self, event: object) -> None:
        self._listeners.emit(event)

    async def start(self) -> None:
        self.media.check_devices()
        if self.media.tone_hz is None:  # real devices: follow them as they come and go
            self._devices = DeviceWatch(self._on_devices)
            self._devices.start()
        self.signaling.start()

    @property
    def devices(self) -> Devices | None:
        """The microphones, speakers and cameras at the last look (None: synthetic media, nothing watched)."""
        return self._devices.latest if self._devices is not None else None

    def _on_devices(self, devices: Devices) -> None:
        moves = self.media.follow(devices)
        self.media.check_devices(devices)
        self._emit(ev.DevicesChanged(devices))
        for kind, message in moves:
            self._emit(ev.DeviceMoved(kind, message))

    async def stop(self) -> None:
        for s in list(self.sessions.values()):
            if s.call.live:
                self.hangup(s.call.call_id)
        await self._rooms.close()  # leaves the room call: the server tells the others at once
        await asyncio.sleep(0)  # let the hang-ups reach the outbox
        await self.signaling.stop()
        if self._devices is not None:
            await self._devices.stop()
        # Teardowns run to the end (a peer connection cancelled mid-close leaves ICE tasks behind); each pair
        # cancels the rest of its work (negotiation, media watch) itself.
        await asyncio.gather(self._teardowns.wait(), *(self._teardown(s) for s in list(self.sessions.values())),
                             return_exceptions=True)
        self.media.close()

    @property
    def connection(self) -> ConnState:
        return self.signaling.state

    @property
    def users(self) -> list[p.UserInfo]:
        return sorted(self.signaling.users.values(), key=lambda u: u.display_name.lower())

    @property
    def rooms(self) -> dict[str, Room]:
        return self._rooms.rooms

    @property
    def room_call(self) -> RoomCall | None:
        return self._rooms.call

    @property
    def room_calls_finished(self) -> deque[RoomCall]:
        return self._rooms.finished

    @property
    def direct(self) -> dict[str, list[ev.ChatLine]]:
        return self._direct.lines

    # ------------------------------------------------------------ what the user does

    def call(self, peer: str, *, video: bool = False) -> str:
        media = ("audio", "video") if video else ("audio",)
        call_id = f"{int(time.time() * 1000):x}-{secrets.token_hex(4)}"
        s = self._session(Call(call_id, self.config.user_id, peer, media), "outgoing", self.name_of(peer), media)
        self._add(s)
        self.signaling.send(p.CallIncoming(to=peer, call_id=call_id, media=media))
        return call_id

    async def echo_test(self, *, video: bool = True) -> str:
        """A sound and video check: a call to a local echo peer that sends back, a second late, what it gets."""
        from .echo import EchoPeer

        media = ("audio", "video") if video else ("audio",)
        call_id = f"echo-{secrets.token_hex(4)}"
        s = self._session(Call(call_id, self.config.user_id, ECHO_PEER, media), "outgoing", "Sound and video check",
                          media, echo=EchoPeer())
        self._add(s)
        self._apply(s, Event.ACCEPT)
        await s.pair.connect()
        return call_id

    def accept(self, call_id: str, *, video: bool | None = None) -> bool:
        """Answer a ringing call; False if it is no longer ringing (the caller gave up a moment ago)."""
        s = self.sessions.get(call_id)
        if s is None or s.direction != "incoming":
            return False
        if video is None:
            video = "video" in s.call.media
        want = ("audio", "video") if video and "video" in s.call.media else ("audio",)
        if not self._apply(s, Event.ACCEPT):
            return False
        s.want = want
        s.pair.kinds = sending(s.call.media, want)
        self.signaling.send(p.CallAccepted(to=s.call.caller, call_id=call_id, media=s.want))
        return True

    def reject(self, call_id: str, reason: str = "rejected") -> None:
        s = self.sessions.get(call_id)
        if s is not None and s.direction == "incoming" and self._apply(s, Event.REJECT, reason):
            self.signaling.send(p.CallRejected(to=s.call.caller, call_id=call_id, reason=reason))

    def hangup(self, call_id: str) -> None:
        s = self.sessions.get(call_id)
        if s is None or not s.call.live:
            return
        peer = s.call.peer_of(self.config.user_id)
        if s.call.state is State.RINGING and s.direction == "incoming":
            self.reject(call_id)
            return
        if s.call.state is State.RINGING:
            self._apply(s, Event.CANCEL, "cancelled")
            self.signaling.send(p.CallEnded(to=peer, call_id=call_id, reason="cancelled"))
        else:
            self._apply(s, Event.HANGUP, "hangup")
            if s.echo is None:
                self.signaling.send(p.CallEnded(to=peer, call_id=call_id, reason="hangup"))

    # Rooms and chat. A bad room name or line raises ProtocolError (a ValueError) that names what is wrong.

    def join_room(self, name: str, *, known: list[ev.ChatLine] = ()) -> None:
        """Join a room; `known` are lines of it kept from before, so its history is not taken as new."""
        self._rooms.join(name, known=known)
        self.signaling.join(name)

    def leave_room(self, name: str) -> None:
        self._rooms.leave(name)
        self.signaling.leave(name)

    def say(self, room: str, text: str) -> None:
        self._rooms.say(room, text)

    def mark_read(self, room: str) -> None:
        self._rooms.mark_read(room)

    def chat(self, user_id: str, text: str) -> str:
        return self._direct.say(user_id, text)

    def join_room_call(self, room: str, *, video: bool = False) -> None:
        self._rooms.join_call(room, video=video)

    def leave_room_call(self) -> None:
        self._rooms.leave_call()

    def trust_key(self, user_id: str) -> None:
        """The user checked with this contact that its new key is theirs: pin it, and the warning goes."""
        info = self.signaling.users.get(user_id)
        if info is not None and info.key is not None and self.key_warnings.pop(user_id, None) is not None:
            self.pins.accept(user_id, info.key)
            self._emit(ev.UsersChanged(tuple(self.users)))

    def share_screen(self, on: bool, target: Target | None = None) -> str | None:
        """Share a screen or window (`target`, from client.core.screen.share_targets; None: the primary screen) in
        every call, now and later, or stop; why it cannot start, or None. A shared window that closes ends the
        share on both sides, and the event says why."""
        if not on:
            self._stop_sharing()
            return None
        self.media.stop_sharing()  # sharing another screen or window instead: the peers see the new one at once
        why = self.media.start_sharing(target, on_end=self._stop_sharing)
        if why is not None:
            self._emit(ev.ScreenShared("", self.config.user_id, False, why))
            return why
        for pair in self._pairs():
            pair.tell_sharing(True)
        self._emit(ev.ScreenShared("", self.config.user_id, True))
        return None

    def _stop_sharing(self, why: str | None = None) -> None:
        """The share stops: asked to, or by itself (`why`: the shared window closed)."""
        self.media.stop_sharing()
        for pair in self._pairs():
            pair.tell_sharing(False)
        self._emit(ev.ScreenShared("", self.config.user_id, False, why))

    def _pairs(self) -> list[Pair]:
        """Every live peer pair: each 1:1 call's, and the room call's."""
        pairs = [s.pair for s in self.sessions.values() if s.call.live and s.echo is None]
        return pairs + (list(self._rooms.call.pairs.values()) if self._rooms.call is not None else [])

    def set_muted(self, muted: bool) -> None:
        self.media.set_muted(muted)

    def set_camera(self, on: bool) -> None:
        self.media.set_camera(on)

    async def stats(self, call_id: str) -> dict:
        s = self.sessions.get(call_id)
        return await s.pair.stats() if s is not None else {}

    # ------------------------------------------------------------ state

    def _session(self, call: Call, direction: str, peer_name: str, want: tuple[str, ...], *,
                 echo=None) -> CallSession:
        """A call and its pair: we offer when we called; the pair reports back into this call."""
        cfg, peer, call_id = self.config, call.peer_of(self.config.user_id), call.call_id
        s: CallSession

        def on_video(frame) -> None:
            self._emit(ev.RemoteVideo(call_id, frame))

        def on_screen(frame) -> None:
            self._emit(ev.RemoteScreen(call_id, peer, frame))

        pair = Pair(call_id, cfg.user_id, peer, offerer=direction == "outgoing", media=self.media,
                    config=self._pair_config(), send=self.signaling.send,
                    report=lambda what: self._pair_report(s, what),
                    identity=self.identity, peer_key=lambda: self._peer_key(peer),
                    kinds=sending(call.media, want), on_video=on_video, on_screen=on_screen,
                    local_answer=echo.answer if echo is not None else None)
        s = CallSession(call, direction, peer_name, want, pair, echo=echo)
        return s

    def _pair_config(self) -> PairConfig:
        cfg = self.config
        return PairConfig(media_timeout=cfg.media_timeout, repair_after=cfg.repair_after,
                          repair_attempts=cfg.repair_attempts, ice_servers=cfg.ice_servers,
                          analyze_video=cfg.analyze_video)

    def _add(self, s: CallSession) -> None:
        s.call.history.append((State.RINGING, time.monotonic()))
        s.times.append((State.RINGING.value, time.time()))
        self.sessions[s.call.call_id] = s
        self._changed(s)

    def _apply(self, s: CallSession, event: Event, reason: str | None = None) -> bool:
        before = s.call.state
        try:
            s.call.apply(event, now=time.monotonic(), reason=reason)
        except IllegalTransition as exc:
            log.info("%s", exc)
            return False
        if s.call.state is not before:
            s.times.append((s.call.state.value, time.time()))
            self._changed(s)
        if s.call.state is State.ENDED:
            s.pair.stop()
            self._teardowns.spawn(self._teardown(s), f"call {s.call.call_id} teardown")
        elif s.call.state is State.CONNECTING:
            s.pair.start()
        return True

    def _pair_report(self, s: CallSession, what: pair_events.Report) -> None:
        """What the call's pair found: media up or down, a failure, who is at the other end."""
        if isinstance(what, pair_events.MediaUp):
            if s.call.state in (State.CONNECTING, State.RECONNECTING):
                self._apply(s, Event.MEDIA_UP)
        elif isinstance(what, pair_events.MediaDown):
            if s.call.state is State.ACTIVE:
                self._apply(s, Event.MEDIA_DOWN)
        elif isinstance(what, pair_events.Failed):
            if self._apply(s, Event.FAIL, what.reason) and s.echo is None:
                self.signaling.send(p.CallEnded(to=s.call.peer_of(self.config.user_id), call_id=s.call.call_id,
                                                reason=what.reason))
        elif isinstance(what, pair_events.Secured):
            self._emit(ev.CallSecurity(s.call.call_id, what.verified, what.safety_code))
        elif isinstance(what, pair_events.Sharing):
            self._emit(ev.ScreenShared(s.call.call_id, s.call.peer_of(self.config.user_id), what.active))

    def _changed(self, s: CallSession) -> None:
        c = s.call
        self._emit(ev.CallChanged(c.call_id, c.peer_of(self.config.user_id), s.direction, c.state.value,
                                  c.reason if c.state is State.ENDED else None, c.media, s.peer_name))

    def name_of(self, user_id: str) -> str:
        if user_id == self.config.user_id:
            return self.config.display_name
        info = self.signaling.users.get(user_id)
        return info.display_name if info else self._rooms.names.get(user_id, user_id)

    def _peer_key(self, peer: str) -> str | None:
        """The key a peer must sign its SDP with: the one pinned for it, else the one the server shows."""
        info = self.signaling.users.get(peer)
        return self.pins.keys.get(peer) or (info.key if info is not None else None)

    def _active_calls(self) -> list[p.ActiveCall]:
        """Sent in hello, so a restarted server can restore the calls whose media still flows."""
        me = self.config.user_id
        return [p.ActiveCall(call_id=s.call.call_id, peer=s.call.peer_of(me), media=s.call.media)
                for s in self.sessions.values() if s.call.established and s.echo is None]

    async def _teardown(self, s: CallSession) -> None:
        await s.pair.close()
        if s.echo is not None:
            await s.echo.close()
        if self.sessions.get(s.call.call_id) is s:
            del self.sessions[s.call.call_id]
            self.finished.append(s)

    # ------------------------------------------------------------ signaling in

    def _on_conn_state(self, state: ConnState, reason: str) -> None:
        self._emit(ev.ConnectionChanged(state.value, reason))

    def _on_message(self, msg: p.Message) -> None:
        if isinstance(msg, p.ConnectionEstablished):
            if not msg.resumed:
                for s in list(self.sessions.values()):
                    if s.call.state is State.RINGING:  # a fresh session: the server forgot ringing calls
                        self._apply(s, Event.DISCONNECT, "peer_disconnected")
            self._check_keys(list(self.signaling.users.values()))  # the welcome's list, or the frames after it
            self._emit(ev.UsersChanged(tuple(self.users)))
            self._rooms.on_session(msg.resumed)
        elif isinstance(msg, (p.Presence, p.PresenceBatch)):
            self._check_keys([msg] if isinstance(msg, p.Presence) else
                             [u for u in msg.users if u.user_id != self.config.user_id])
            self._emit(ev.UsersChanged(tuple(self.users)))
        elif isinstance(msg, p.CallIncoming):
            self._incoming(msg)
        elif isinstance(msg, p.Relayed) and self._rooms.on_relayed(msg):
            pass
        elif isinstance(msg, p.Relayed):
            s = self.sessions.get(msg.call_id)
            if s is None or msg.sender != s.call.peer_of(self.config.user_id):
                if msg.call_id not in self._glare_losers:
                    log.info("ignored %s for unknown call %s", msg.type, msg.call_id)
                return
            self._relayed(s, msg)
        elif isinstance(msg, p.Error):
            self._error(msg)
        elif isinstance(msg, p.Chat):
            self._direct.on_chat(msg)
        elif self._rooms.on_message(msg):
            pass
        elif isinstance(msg, p.Redirect):
            self._emit(ev.Redirected(msg.url, msg.server_id))

    def _check_keys(self, users) -> None:
        """Pin each contact's key the first time it is seen; warn when one shows up with another."""
        for u in users:
            if u.key is None or getattr(u, "status", "") == "offline":
                continue
            pinned = self.pins.check(u.user_id, u.key)
            if pinned is None:
                self.key_warnings.pop(u.user_id, None)
            elif u.user_id not in self.key_warnings or self.key_warnings[u.user_id].seen != fingerprint(u.key):
                warning = ev.KeyChanged(u.user_id, u.display_name, fingerprint(pinned), fingerprint(u.key))
                self.key_warnings[u.user_id] = warning
                log.warning("%s (%s) has another identity key than the one pinned: %s, pinned %s",
                            u.user_id, u.display_name, warning.seen, warning.pinned)
                self._emit(warning)

    def _incoming(self, msg: p.CallIncoming) -> None:
        me, peer = self.config.user_id, msg.sender
        mine = next((s for s in self.sessions.values()
                     if s.direction == "outgoing" and s.call.state is State.RINGING and s.call.callee == peer), None)
        name = display_name(msg.display_name, peer) if msg.display_name else self.name_of(peer)
        call = Call(msg.call_id, peer, me, msg.media)
        if mine is not None:  # glare: we called each other at once; both keep the call whose id sorts first
            if glare_winner(mine.call.call_id, msg.call_id) == mine.call.call_id:
                self._glare_losers.append(msg.call_id)
                log.info("glare with %s: keeping our call %s", peer, mine.call.call_id)
                return
            log.info("glare with %s: taking their call %s", peer, msg.call_id)
            self._glare_losers.append(mine.call.call_id)
            self._apply(mine, Event.CANCEL, "glare")
            self.signaling.send(p.CallEnded(to=peer, call_id=mine.call.call_id, reason="glare"))
            self._add(self._session(call, "incoming", name, ()))
            self.accept(msg.call_id, video="video" in mine.want)
            return
        self._add(self._session(call, "incoming", name, ()))
        self._emit(ev.IncomingCall(msg.call_id, peer, name, msg.media))
        if self.config.auto_answer:
            self.accept(msg.call_id)

    def _relayed(self, s: CallSession, msg: p.Relayed) -> None:
        if isinstance(msg, p.CallAccepted):
            if s.direction == "outgoing" and self._apply(s, Event.ACCEPT):
                s.pair.offer()
        elif isinstance(msg, p.CallRejected):
            self._apply(s, Event.REJECT, msg.reason)
        elif isinstance(msg, p.CallEnded):
            event = Event.HANGUP if s.call.established else Event.CANCEL
            self._apply(s, event, msg.reason)
        elif isinstance(msg, p.WebrtcOffer):
            if s.call.established:  # an offer before we accepted, or after the end, is not answered
                s.pair.receive(msg)
        elif isinstance(msg, (p.WebrtcAnswer, p.WebrtcIceCandidate, p.ScreenShare)):
            s.pair.receive(msg)

    def _error(self, msg: p.Error) -> None:
        if self._direct.on_error(msg) or self._rooms.on_error(msg):
            return
        s = self.sessions.get(msg.ref or "")
        if s is not None and s.call.state is State.RINGING and msg.code in (p.USER_OFFLINE, p.BUSY):
            self._apply(s, Event.REJECT, "offline" if msg.code == p.USER_OFFLINE else "busy")
        elif s is not None and msg.code == p.NOT_IN_CALL:
            log.info("server does not know call %s yet (it may have restarted); media goes on", msg.ref)
            return
        self._emit(ev.ServerError(msg.code, msg.message, msg.ref))
