"""One peer pair: the media link to one remote party (its peer connections, signed negotiation, media watch, repair).

A 1:1 call is the call state machine plus one Pair (client.core.engine); a room call will hold one Pair per other
member. The owner decides who offers (`offerer`), carries the pair's messages (`send`, `receive`) and hears what
happens to it through `report`: MediaUp, MediaDown, Failed and Secured. No Qt, no call states here.

Life of a pair: `start()` when the other side has agreed (the watch's clock starts), `offer()` on the offering
side, `receive()` for each offer, answer or candidate from the peer, `stop()` the moment its call ends (nothing
more is sent or reported), then `await close()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from shared import protocol as p
from shared.identity import dtls_payload, safety_code, verify

from .identity import Identity
from .media import LocalMedia
from .peer import PeerSession, Received
from .tasks import Tasks

log = logging.getLogger("callbox.pair")


@dataclass
class PairConfig:
    media_timeout: float = 3.0  # no media for this long: MediaDown
    repair_after: float = 8.0  # ... and after this long (or ICE failed), the offerer builds a new peer connection
    repair_attempts: int = 3  # peer connections built in all, before Failed("ice_failed")
    ice_servers: list[dict] = field(default_factory=list)
    analyze_video: bool = False


@dataclass(frozen=True)
class MediaUp:
    """Media arrives from the peer (first time, or again after MediaDown)."""


@dataclass(frozen=True)
class MediaDown:
    """Nothing arrived for media_timeout."""


@dataclass(frozen=True)
class Failed:
    reason: str  # ice_failed: no repair brought media back; identity_mismatch: the peer's SDP is not signed by it


@dataclass(frozen=True)
class Sharing:
    """The peer started (active) or stopped sharing its screen."""

    active: bool


@dataclass(frozen=True)
class Secured:
    """After each negotiation: whether the peer signed its DTLS fingerprints, and the safety code both sides see."""

    verified: bool
    safety_code: str | None


Report = MediaUp | MediaDown | Failed | Secured | Sharing


class Pair:
    def __init__(self, key: str, me: str, peer: str, *, offerer: bool, media: LocalMedia, config: PairConfig,
                 send: Callable[[p.Message], None], report: Callable[[Report], None],
                 identity: Identity | None = None, peer_key: Callable[[], str | None] = lambda: None,
                 kinds: tuple[str, ...] = ("audio",), receiving: tuple[str, ...] = (),
                 on_video: Callable[[object], None] | None = None,
                 on_screen: Callable[[object], None] | None = None,
                 local_answer: Callable[[str], Awaitable[str]] | None = None):
        """`key` names the pair on the wire (the call id) and in its signatures; `peer_key` gives the key the peer
        must sign with (None: it has none); `kinds` is what we send, settable until negotiation; `receiving` is
        what the peer sends beyond that, which an offer asks for too (a room call's members send different things).
        `local_answer` answers our offers in this process (the sound check's echo) instead of the peer through
        signaling: no signatures, and no repair."""
        self.key, self.me, self.peer, self.offerer = key, me, peer, offerer
        self.media, self.config = media, config
        self.send, self.report = send, report
        self.identity, self.peer_key = identity, peer_key
        self.kinds, self.receiving = kinds, receiving
        self.on_video, self.on_screen = on_video, on_screen
        self.local_answer = local_answer
        self.received = Received()  # across every peer connection the pair had
        self.pc: PeerSession | None = None
        self.attempts = 0  # peer connections built so far
        self.started_at: float | None = None  # monotonic time of start()
        self.verified: bool | None = None  # the peer's SDP was signed by its key (False: it has no key)
        self.safety_code: str | None = None
        self.local_sdp: str | None = None
        self.stopped = False
        self.media_up = False
        self._pc_failed = False
        self._lock = asyncio.Lock()  # one negotiation or teardown at a time
        self._tasks = Tasks()
        self._watch: asyncio.Task | None = None

    # ------------------------------------------------------------ driven by the owner

    def start(self) -> None:
        """The other side agreed: watch media from now on (repairing, on the offering side, when it stays down)."""
        if self._watch is None and not self.stopped:
            self.started_at = time.monotonic()
            self._watch = self._tasks.spawn(self._watch_media(), f"pair {self.key} watch")
            if self.media.sharing and self.local_answer is None:
                self.tell_sharing(True)

    def tell_sharing(self, active: bool) -> None:
        """Tell the peer that our screen share started or stopped (its frames come on the screen slot)."""
        if self.started_at is not None and not self.stopped and self.local_answer is None:
            self.send(p.ScreenShare(to=self.peer, call_id=self.key, active=active))

    def offer(self) -> None:
        self._tasks.spawn(self.connect(), f"pair {self.key} offer")

    def receive(self, msg: p.Relayed) -> None:
        """An offer, answer or ICE candidate from the peer, or word of its screen share."""
        if isinstance(msg, p.WebrtcOffer):
            self._tasks.spawn(self.on_offer(msg), f"pair {self.key} answer")
        elif isinstance(msg, p.WebrtcAnswer):
            self._tasks.spawn(self.on_answer(msg), f"pair {self.key} accept answer")
        elif isinstance(msg, p.WebrtcIceCandidate):
            self._tasks.spawn(self.on_candidate(msg), f"pair {self.key} candidate")
        elif isinstance(msg, p.ScreenShare):
            self.received.screen_active = msg.active
            self._report(Sharing(msg.active))

    def stop(self) -> None:
        """The pair's call ended: from now on nothing is negotiated, sent or reported."""
        self.stopped = True

    async def close(self) -> None:
        """Stop, let a negotiation in flight finish (a peer connection cancelled mid-setup leaves ICE tasks
        behind), close the peer connection under its timeout, and drop the decoded audio kept for analysis."""
        self.stop()
        if self._watch is not None and self._watch is not asyncio.current_task():
            self._watch.cancel()
        async with self._lock:
            if self.pc is not None:
                pc, self.pc = self.pc, None
                await pc.close()
        await self._tasks.close()
        self.received.drop_audio()

    async def stats(self) -> dict:
        return await self.pc.stats() if self.pc is not None else {}

    # ------------------------------------------------------------ negotiation

    def _new_pc(self) -> PeerSession:
        self.attempts += 1
        self._pc_failed = False

        def on_state(state: str) -> None:
            if state == "failed":
                self._pc_failed = True

        return PeerSession(self.key, self.media, self.received, kinds=self.kinds, receiving=self.receiving,
                           ice_servers=self.config.ice_servers, analyze_video=self.config.analyze_video,
                           on_state=on_state, on_video=self.on_video, on_screen=self.on_screen)

    async def connect(self) -> None:
        """Offering side: build a peer connection and offer (again, when repairing)."""
        async with self._lock:
            if self.stopped:
                return
            old, self.pc = self.pc, self._new_pc()
            if old is not None:
                await old.close()
            sdp = self.local_sdp = await self.pc.offer()
            if self.local_answer is not None:
                await self.pc.accept_answer(await self.local_answer(sdp))
            elif not self.stopped:
                self.send(p.WebrtcOffer(to=self.peer, call_id=self.key, sdp=sdp, signature=self._sign(sdp)))

    async def on_offer(self, msg: p.WebrtcOffer) -> None:
        async with self._lock:
            if self.stopped or not self._verify(msg):
                return
            old, self.pc = self.pc, self._new_pc()  # a repeated offer means the peer is repairing the pair
            if old is not None:
                await old.close()
            answer = self.local_sdp = await self.pc.answer(msg.sdp)
            self._secured(msg.sdp)
            if not self.stopped:
                self.send(p.WebrtcAnswer(to=self.peer, call_id=self.key, sdp=answer, signature=self._sign(answer)))

    async def on_answer(self, msg: p.WebrtcAnswer) -> None:
        async with self._lock:
            if self.pc is not None and not self.stopped and self._verify(msg):
                await self.pc.accept_answer(msg.sdp)
                self._secured(msg.sdp)

    async def on_candidate(self, msg: p.WebrtcIceCandidate) -> None:
        async with self._lock:
            if self.pc is not None:
                try:
                    await self.pc.add_candidate(msg.candidate, msg.sdpMid, msg.sdpMLineIndex)
                except Exception as exc:  # a malformed candidate from the other side must not end the call
                    log.warning("call %s: ignored ICE candidate %r: %s", self.key, msg.candidate, exc)

    # ------------------------------------------------------------ nobody in the middle

    def _sign(self, sdp: str) -> str | None:
        """Our signature over the DTLS fingerprints we offer, so that the peer can tell them from a swapped set."""
        if self.identity is None:
            return None
        return self.identity.sign(dtls_payload(self.key, self.me, sdp))

    def _verify(self, msg: p.WebrtcOffer | p.WebrtcAnswer) -> bool:
        """Whether the peer's SDP may be used: signed by its key, or it has none (an older client: unverified).
        A bad or missing signature from a peer that has a key fails the pair before any media flows."""
        key = self.peer_key()
        if key is None:
            self.verified = False
            return True
        if msg.signature is not None and verify(key, msg.signature, dtls_payload(self.key, self.peer, msg.sdp)):
            self.verified = True
            return True
        log.warning("call %s: %s's %s is not signed by its key: someone may be in the middle; ending the call",
                    self.key, self.peer, msg.type)
        self._report(Failed("identity_mismatch"))
        return False

    def _secured(self, remote_sdp: str) -> None:
        key = self.peer_key()
        if self.identity is None or key is None or self.local_sdp is None:
            self.safety_code = None
        else:
            self.safety_code = safety_code(self.identity.key, self.local_sdp, key, remote_sdp)
        self._report(Secured(bool(self.verified), self.safety_code))

    def _report(self, what: Report) -> None:
        if not self.stopped:
            self.report(what)

    # ------------------------------------------------------------ media health

    async def _watch_media(self) -> None:
        """Media up or down from what arrives; repair with a new peer connection when it stays down."""
        cfg = self.config
        lost_at: float | None = None
        with contextlib.suppress(asyncio.CancelledError):
            while not self.stopped:
                await asyncio.sleep(0.1)
                now = time.monotonic()
                last = self.received.last_media
                if last is not None and now - last < cfg.media_timeout:
                    lost_at = None
                    if not self.media_up:
                        self.media_up = True
                        self._report(MediaUp())
                    continue
                if lost_at is None:
                    lost_at = last if last is not None else (self.started_at or now)
                if self.media_up and now - lost_at >= cfg.media_timeout:
                    self.media_up = False
                    self._report(MediaDown())
                broken = self._pc_failed or now - lost_at >= cfg.repair_after
                if broken and self.local_answer is not None:
                    self._report(Failed("ice_failed"))  # nothing to repair with: the answering side is in this process
                    return
                if broken and self.offerer:
                    if self.attempts >= cfg.repair_attempts:
                        self._report(Failed("ice_failed"))
                        return
                    log.info("call %s: media down; repair attempt %d", self.key, self.attempts)
                    lost_at = now
                    await self.connect()
                elif broken and now - lost_at >= cfg.repair_after * (cfg.repair_attempts + 1):
                    self._report(Failed("ice_failed"))  # the answering side gives up when repairs never came
                    return
