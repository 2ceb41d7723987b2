"""The call engine: drives the shared call state machine from signaling, one peer connection per call, repair."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from shared import protocol as p
from shared.calls import Call, Event, IllegalTransition, State, glare_winner
from shared.identity import dtls_payload, fingerprint, safety_code, verify
from shared.names import display_name

from . import events as ev
from .identity import Identity, Pins
from .media import LocalMedia
from .peer import PeerSession, Received
from .signaling import ConnState, SignalingClient
from .tasks import Tasks

log = logging.getLogger("callbox.engine")

ECHO_PEER = "(echo)"  # the peer of a sound and video check; no user id can look like it


@dataclass
class EngineConfig:
    server: str
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
    call: Call
    direction: str
    peer_name: str
    want: tuple[str, ...]  # what we send
    received: Received = field(default_factory=Received)
    pc: PeerSession | None = None
    attempts: int = 0  # peer connections built so far
    media_lost_at: float | None = None
    accepted_at: float | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    watch: asyncio.Task | None = None
    pc_failed: bool = False
    times: list[tuple[str, float]] = field(default_factory=list)  # (state, wall time)
    echo: object | None = None  # the local echo peer of a sound and video check; no server involved
    verified: bool | None = None  # the peer's SDP was signed by its pinned key (False: it has no key)
    safety_code: str | None = None  # the same six digits on both sides (shared.identity.safety_code)
    local_sdp: str | None = None


class Engine:
    """Everything a calling app does that is not a window. Listeners get events from client.core.events."""

    def __init__(self, config: EngineConfig, media: LocalMedia, *, identity: Identity | None = None,
                 pins: Pins | None = None):
        self.config = config
        self.media = media
        self.identity = identity
        self.pins = pins if pins is not None else Pins(None)
        self.key_warnings: dict[str, ev.KeyChanged] = {}  # user -> the latest mismatch, while it lasts
        media.on_problem = lambda kind, why: self._emit(ev.DeviceProblem(kind, why))
        self.sessions: dict[str, CallSession] = {}
        self.finished: list[CallSession] = []
        self._glare_losers: set[str] = set()
        self._listeners: list[Callable[[object], None]] = []
        self._tasks = Tasks()
        self._teardowns = Tasks()
        self.signaling = SignalingClient(
            config.server, config.user_id, config.display_name, token=config.token,
            on_message=self._on_message, on_state=self._on_conn_state, active_calls=self._active_calls,
            first_retry=config.first_retry, max_retry=config.max_retry, identity=identity,
        )

    # ------------------------------------------------------------ lifecycle and listeners

    def subscribe(self, listener: Callable[[object], None]) -> None:
        self._listeners.append(listener)

    def _emit(self, event: object) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("listener failed on %s", type(event).__name__)

    async def start(self) -> None:
        self.media.check_devices()
        self.signaling.start()

    async def stop(self) -> None:
        for s in list(self.sessions.values()):
            if s.call.live:
                self.hangup(s.call.call_id)
        await asyncio.sleep(0)  # let the hang-ups reach the outbox
        await self.signaling.stop()
        # Teardowns run to the end (a peer connection cancelled mid-close leaves ICE tasks behind);
        # everything else (negotiation, media watch) is cancelled.
        await asyncio.gather(self._teardowns.wait(), *(self._teardown(s) for s in list(self.sessions.values())),
                             return_exceptions=True)
        await self._tasks.close()
        self.media.close()

    @property
    def connection(self) -> ConnState:
        return self.signaling.state

    @property
    def users(self) -> list[p.UserInfo]:
        return sorted(self.signaling.users.values(), key=lambda u: u.display_name.lower())

    def _spawn(self, coro, name: str) -> asyncio.Task:
        return self._tasks.spawn(coro, name)

    # ------------------------------------------------------------ what the user does

    def call(self, peer: str, *, video: bool = False) -> str:
        media = ("audio", "video") if video else ("audio",)
        call_id = f"{int(time.time() * 1000):x}-{secrets.token_hex(4)}"
        s = CallSession(Call(call_id, self.config.user_id, peer, media), "outgoing",
                        self._name_of(peer), want=media)
        self._add(s)
        self.signaling.send(p.CallIncoming(to=peer, call_id=call_id, media=media))
        return call_id

    async def echo_test(self, *, video: bool = True) -> str:
        """A sound and video check: a call to a local echo peer that sends back, a second late, what it gets."""
        from .echo import EchoPeer

        media = ("audio", "video") if video else ("audio",)
        call_id = f"echo-{secrets.token_hex(4)}"
        s = CallSession(Call(call_id, self.config.user_id, ECHO_PEER, media), "outgoing", "Sound and video check",
                        want=media, echo=EchoPeer())
        self._add(s)
        self._apply(s, Event.ACCEPT)
        s.accepted_at = time.monotonic()
        async with s.lock:
            s.pc = self._new_pc(s)
            answer = await s.echo.answer(await s.pc.offer())
            await s.pc.accept_answer(answer)
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
        s.want, s.accepted_at = want, time.monotonic()
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

    def set_muted(self, muted: bool) -> None:
        self.media.set_muted(muted)

    def set_camera(self, on: bool) -> None:
        self.media.set_camera(on)

    async def stats(self, call_id: str) -> dict:
        s = self.sessions.get(call_id)
        return await s.pc.stats() if s is not None and s.pc is not None else {}

    # ------------------------------------------------------------ state

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
            self._teardowns.spawn(self._teardown(s), f"call {s.call.call_id} teardown")
        elif s.call.state is State.CONNECTING and s.watch is None:
            s.watch = self._spawn(self._watch(s), f"call {s.call.call_id} watch")
        return True

    def _changed(self, s: CallSession) -> None:
        c = s.call
        self._emit(ev.CallChanged(c.call_id, c.peer_of(self.config.user_id), s.direction, c.state.value,
                                  c.reason if c.state is State.ENDED else None, c.media, s.peer_name))

    def _name_of(self, user_id: str) -> str:
        info = self.signaling.users.get(user_id)
        return info.display_name if info else user_id

    def _active_calls(self) -> list[p.ActiveCall]:
        """Sent in hello, so a restarted server can restore the calls whose media still flows."""
        me = self.config.user_id
        return [p.ActiveCall(call_id=s.call.call_id, peer=s.call.peer_of(me), media=s.call.media)
                for s in self.sessions.values() if s.call.established and s.echo is None]

    async def _teardown(self, s: CallSession) -> None:
        if s.watch is not None and s.watch is not asyncio.current_task():
            s.watch.cancel()
        s.watch = None
        async with s.lock:  # after any negotiation in flight, so no peer connection is left behind
            if s.pc is not None:
                pc, s.pc = s.pc, None
                await pc.close()
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
            self._check_keys(msg.users)
            self._emit(ev.UsersChanged(tuple(self.users)))
        elif isinstance(msg, p.Presence):
            self._check_keys([msg])
            self._emit(ev.UsersChanged(tuple(self.users)))
        elif isinstance(msg, p.CallIncoming):
            self._incoming(msg)
        elif isinstance(msg, p.Relayed):
            s = self.sessions.get(msg.call_id)
            if s is None or msg.sender != s.call.peer_of(self.config.user_id):
                if msg.call_id not in self._glare_losers:
                    log.info("ignored %s for unknown call %s", msg.type, msg.call_id)
                return
            self._relayed(s, msg)
        elif isinstance(msg, p.Error):
            self._error(msg)
        elif isinstance(msg, p.ChannelMessage):
            self._emit(ev.ChannelText(msg.channel, msg.sender or "", msg.text, msg.ts or 0.0))
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
        name = display_name(msg.display_name, peer) if msg.display_name else self._name_of(peer)
        s = CallSession(Call(msg.call_id, peer, me, msg.media), "incoming", name, want=())
        if mine is not None:  # glare: we called each other at once; both keep the call whose id sorts first
            if glare_winner(mine.call.call_id, msg.call_id) == mine.call.call_id:
                self._glare_losers.add(msg.call_id)
                log.info("glare with %s: keeping our call %s", peer, mine.call.call_id)
                return
            log.info("glare with %s: taking their call %s", peer, msg.call_id)
            self._glare_losers.add(mine.call.call_id)
            self._apply(mine, Event.CANCEL, "glare")
            self.signaling.send(p.CallEnded(to=peer, call_id=mine.call.call_id, reason="glare"))
            self._add(s)
            self.accept(msg.call_id, video="video" in mine.want)
            return
        self._add(s)
        self._emit(ev.IncomingCall(msg.call_id, peer, s.peer_name, msg.media))
        if self.config.auto_answer:
            self.accept(msg.call_id)

    def _relayed(self, s: CallSession, msg: p.Relayed) -> None:
        if isinstance(msg, p.CallAccepted):
            if s.direction == "outgoing" and self._apply(s, Event.ACCEPT):
                s.accepted_at = time.monotonic()
                self._spawn(self._connect(s), f"call {s.call.call_id} offer")
        elif isinstance(msg, p.CallRejected):
            self._apply(s, Event.REJECT, msg.reason)
        elif isinstance(msg, p.CallEnded):
            event = Event.HANGUP if s.call.established else Event.CANCEL
            self._apply(s, event, msg.reason)
        elif isinstance(msg, p.WebrtcOffer):
            self._spawn(self._on_offer(s, msg), f"call {s.call.call_id} answer")
        elif isinstance(msg, p.WebrtcAnswer):
            self._spawn(self._on_answer(s, msg), f"call {s.call.call_id} accept answer")
        elif isinstance(msg, p.WebrtcIceCandidate):
            self._spawn(self._on_candidate(s, msg), f"call {s.call.call_id} candidate")

    def _error(self, msg: p.Error) -> None:
        s = self.sessions.get(msg.ref or "")
        if s is not None and s.call.state is State.RINGING and msg.code in (p.USER_OFFLINE, p.BUSY):
            self._apply(s, Event.REJECT, "offline" if msg.code == p.USER_OFFLINE else "busy")
        elif s is not None and msg.code == p.NOT_IN_CALL:
            log.info("server does not know call %s yet (it may have restarted); media goes on", msg.ref)
            return
        self._emit(ev.ServerError(msg.code, msg.message, msg.ref))

    # ------------------------------------------------------------ media negotiation

    def _new_pc(self, s: CallSession) -> PeerSession:
        s.attempts += 1
        s.pc_failed = False
        kinds = tuple(k for k in s.call.media if k in s.want) or ("audio",)

        def on_state(state: str) -> None:
            if state == "failed":
                s.pc_failed = True

        def on_video(frame) -> None:
            self._emit(ev.RemoteVideo(s.call.call_id, frame))

        return PeerSession(s.call.call_id, self.media, s.received, kinds=kinds,
                           ice_servers=self.config.ice_servers, analyze_video=self.config.analyze_video,
                           on_state=on_state, on_video=on_video)

    async def _connect(self, s: CallSession) -> None:
        """Caller: build a peer connection and offer (again, when repairing)."""
        async with s.lock:
            if not s.call.live:
                return
            old, s.pc = s.pc, self._new_pc(s)
            if old is not None:
                await old.close()
            sdp = s.local_sdp = await s.pc.offer()
            if s.call.live:
                self.signaling.send(p.WebrtcOffer(to=s.call.callee, call_id=s.call.call_id, sdp=sdp,
                                                  signature=self._sign(s, sdp)))

    async def _on_offer(self, s: CallSession, msg: p.WebrtcOffer) -> None:
        async with s.lock:
            if not s.call.established or not self._verify(s, msg):
                return
            old, s.pc = s.pc, self._new_pc(s)  # a repeated offer means the caller is repairing the call
            if old is not None:
                await old.close()
            answer = s.local_sdp = await s.pc.answer(msg.sdp)
            self._secured(s, msg.sdp)
            if s.call.live:
                self.signaling.send(p.WebrtcAnswer(to=s.call.caller, call_id=s.call.call_id, sdp=answer,
                                                   signature=self._sign(s, answer)))

    async def _on_answer(self, s: CallSession, msg: p.WebrtcAnswer) -> None:
        async with s.lock:
            if s.pc is not None and s.call.live and self._verify(s, msg):
                await s.pc.accept_answer(msg.sdp)
                self._secured(s, msg.sdp)

    # ------------------------------------------------------------ nobody in the middle

    def _sign(self, s: CallSession, sdp: str) -> str | None:
        """Our signature over the DTLS fingerprints we offer, so that the peer can tell them from a swapped set."""
        if self.identity is None:
            return None
        return self.identity.sign(dtls_payload(s.call.call_id, self.config.user_id, sdp))

    def _peer_key(self, s: CallSession) -> str | None:
        """The key the peer must have signed with: the one pinned for it, else the one the server shows."""
        peer = s.call.peer_of(self.config.user_id)
        info = self.signaling.users.get(peer)
        return self.pins.keys.get(peer) or (info.key if info is not None else None)

    def _verify(self, s: CallSession, msg: p.WebrtcOffer | p.WebrtcAnswer) -> bool:
        """Whether the peer's SDP may be used: signed by its key, or it has none (an older client: unverified).
        A bad or missing signature from a peer that has a key ends the call before any media flows."""
        key = self._peer_key(s)
        if key is None:
            s.verified = False
            return True
        peer = s.call.peer_of(self.config.user_id)
        if msg.signature is not None and verify(key, msg.signature, dtls_payload(s.call.call_id, peer, msg.sdp)):
            s.verified = True
            return True
        log.warning("call %s: %s's %s is not signed by its key: someone may be in the middle; ending the call",
                    s.call.call_id, peer, msg.type)
        if self._apply(s, Event.FAIL, "identity_mismatch"):
            self.signaling.send(p.CallEnded(to=peer, call_id=s.call.call_id, reason="identity_mismatch"))
        return False

    def _secured(self, s: CallSession, remote_sdp: str) -> None:
        key = self._peer_key(s)
        if self.identity is None or key is None or s.local_sdp is None:
            s.safety_code = None
        else:
            s.safety_code = safety_code(self.identity.key, s.local_sdp, key, remote_sdp)
        self._emit(ev.CallSecurity(s.call.call_id, bool(s.verified), s.safety_code))

    async def _on_candidate(self, s: CallSession, msg: p.WebrtcIceCandidate) -> None:
        async with s.lock:
            if s.pc is not None:
                try:
                    await s.pc.add_candidate(msg.candidate, msg.sdpMid, msg.sdpMLineIndex)
                except Exception as exc:  # a malformed candidate from the other side must not end the call
                    log.warning("call %s: ignored ICE candidate %r: %s", s.call.call_id, msg.candidate, exc)

    # ------------------------------------------------------------ media health

    async def _watch(self, s: CallSession) -> None:
        """Media up or down from what arrives; repair with a new peer connection when it stays down."""
        cfg = self.config
        with contextlib.suppress(asyncio.CancelledError):
            while s.call.live:
                await asyncio.sleep(0.1)
                now = time.monotonic()
                last = s.received.last_media
                flowing = last is not None and now - last < cfg.media_timeout
                if flowing:
                    s.media_lost_at = None
                    if s.call.state in (State.CONNECTING, State.RECONNECTING):
                        self._apply(s, Event.MEDIA_UP)
                    continue
                if s.media_lost_at is None:
                    s.media_lost_at = last if last is not None else (s.accepted_at or now)
                if s.call.state is State.ACTIVE and now - s.media_lost_at >= cfg.media_timeout:
                    self._apply(s, Event.MEDIA_DOWN)
                broken = s.pc_failed or now - s.media_lost_at >= cfg.repair_after
                if broken and s.echo is not None:
                    self._fail(s)  # nothing to repair with: the echo is in this process
                    return
                if broken and s.direction == "outgoing":
                    if s.attempts >= cfg.repair_attempts:
                        self._fail(s)
                        return
                    log.info("call %s: media down; repair attempt %d", s.call.call_id, s.attempts)
                    s.media_lost_at = now
                    await self._connect(s)
                elif broken and now - s.media_lost_at >= cfg.repair_after * (cfg.repair_attempts + 1):
                    self._fail(s)  # the callee gives up when the caller's repairs never brought media back
                    return

    def _fail(self, s: CallSession) -> None:
        if self._apply(s, Event.FAIL, "ice_failed") and s.echo is None:
            self.signaling.send(p.CallEnded(to=s.call.peer_of(self.config.user_id), call_id=s.call.call_id,
                                            reason="ice_failed"))
