"""The peer pair on its own: two Pairs in one process joined by a fake signaling link, real aiortc underneath."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import pytest

from client.core.identity import Identity
from client.core.media import LocalMedia
from client.core.pair import Failed, MediaDown, MediaUp, Pair, PairConfig, Secured
from shared import protocol as p

FAST = PairConfig(media_timeout=0.5, repair_after=1.0, repair_attempts=3)


def trickled(sdp: str) -> tuple[str, list[tuple[str, str, int]]]:
    """The SDP without its candidates, and those candidates (line, mid, m-line index), as a browser trickles them."""
    kept, candidates, mid, index = [], [], None, -1
    for line in sdp.splitlines():
        if line.startswith("m="):
            index += 1
        elif line.startswith("a=mid:"):
            mid = line.removeprefix("a=mid:")
        if line.startswith("a=candidate:"):
            candidates.append((line.removeprefix("a="), mid, index))
        elif line != "a=end-of-candidates":
            kept.append(line)
    return "\r\n".join(kept) + "\r\n", candidates


def swap_fingerprint(sdp: str) -> str:
    """What a man in the middle does to sit in the media path: put another DTLS fingerprint in the SDP."""
    return re.sub(r"(a=fingerprint:sha-256 )([0-9A-F]{2})", lambda m: m[1] + ("00" if m[2] != "00" else "11"), sdp)


class Side:
    """One end: a pair, its own media and key, and what the pair reported, kept as an owner would."""

    def __init__(self, me: str, peer: str, tone: float, *, offerer: bool, keys: dict[str, Identity],
                 send: Callable[[p.Message], None]):
        self.media = LocalMedia(tone_hz=tone, playback=False)
        self.reports: list = []
        self.sent: list[p.Message] = []  # as the pair sent them
        self.got: list[p.Message] = []  # as the link delivered them

        def report(what) -> None:
            self.reports.append(what)
            if isinstance(what, Failed):
                self.pair.stop()  # the owner ends what failed

        def out(msg: p.Message) -> None:
            self.sent.append(msg)
            send(msg)

        self.pair = Pair("0123456789a-cafe0001", me, peer, offerer=offerer, media=self.media, config=FAST,
                         send=out, report=report, identity=keys[me], peer_key=lambda: keys[peer].key)

    def count(self, kind: type) -> int:
        return sum(isinstance(r, kind) for r in self.reports)

    async def close(self) -> None:
        await self.pair.close()
        self.media.close()


class Link:
    """The fake signaling between two sides: delivers each message a turn later, as the server would route it.
    `trickle` takes the candidates out of offers and answers and sends them after, one message each, as a browser
    does; `tamper` edits an SDP."""

    def __init__(self, *, trickle: bool = False, tamper: Callable[[p.Message], str | None] = lambda msg: None):
        self.trickle, self.tamper = trickle, tamper
        keys = {"alice": Identity.generate(), "bob": Identity.generate()}
        self.alice = Side("alice", "bob", 440, offerer=True, keys=keys, send=lambda m: self._carry("alice", m))
        self.bob = Side("bob", "alice", 660, offerer=False, keys=keys, send=lambda m: self._carry("bob", m))

    def _carry(self, sender: str, msg: p.Message) -> None:
        to = self.bob if sender == "alice" else self.alice
        later: list[p.Message] = []
        if (sdp := self.tamper(msg)) is not None:
            msg = type(msg)(to=msg.to, call_id=msg.call_id, sdp=sdp, signature=msg.signature)
        if self.trickle and isinstance(msg, (p.WebrtcOffer, p.WebrtcAnswer)):
            sdp, candidates = trickled(msg.sdp)
            msg = type(msg)(to=msg.to, call_id=msg.call_id, sdp=sdp, signature=msg.signature)
            later = [p.WebrtcIceCandidate(to=msg.to, call_id=msg.call_id, candidate=c, sdpMid=mid, sdpMLineIndex=i)
                     for c, mid, i in candidates]
            later.append(p.WebrtcIceCandidate(to=msg.to, call_id=msg.call_id, candidate=""))  # end of candidates
        for m in (msg, *later):
            to.got.append(m)
            asyncio.get_running_loop().call_soon(to.pair.receive, m.routed(sender))

    def start(self) -> None:
        """Both sides agreed (a call accepted, a room joined): both watch, the offerer offers."""
        self.bob.pair.start()
        self.alice.pair.start()
        self.alice.pair.offer()

    async def close(self) -> None:
        await asyncio.gather(self.alice.close(), self.bob.close())


async def until(check: Callable[[], object], timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


async def test_offer_answer_and_trickled_candidates_bring_media_up_both_ways():
    link = Link(trickle=True)
    alice, bob = link.alice, link.bob
    try:
        link.start()
        await until(lambda: alice.count(MediaUp) and bob.count(MediaUp), 10)
        assert [type(m) for m in alice.sent] == [p.WebrtcOffer]
        assert [type(m) for m in bob.sent] == [p.WebrtcAnswer]
        for side in (alice, bob):  # ICE came up on trickled candidates only: the SDPs had none
            sdp, *candidates = side.got
            assert "a=candidate:" not in sdp.sdp and len(candidates) >= 2 and candidates[-1].candidate == ""
        await asyncio.sleep(1.2)  # a second of audio for the analysis window
        assert abs(alice.pair.received.dominant_hz() - 660) <= 5
        assert abs(bob.pair.received.dominant_hz() - 440) <= 5
        [a], [b] = ([r for r in side.reports if isinstance(r, Secured)] for side in (alice, bob))
        assert a.verified and b.verified and a.safety_code == b.safety_code is not None
        assert alice.pair.attempts == bob.pair.attempts == 1
        assert not alice.count(Failed) and not bob.count(Failed)
    finally:
        await link.close()
    assert alice.pair.pc is None and not alice.pair.received.recent  # closed, and no decoded audio kept
    assert abs(alice.pair.received.dominant_hz() - 660) <= 5  # what it said is kept
    assert alice.media.open_devices == bob.media.open_devices == 0


async def test_the_offering_side_repairs_when_the_remote_transports_stop():
    link = Link()
    alice, bob = link.alice, link.bob
    try:
        link.start()
        await until(lambda: alice.count(MediaUp) and bob.count(MediaUp), 10)
        for t in bob.pair.pc.pc.getTransceivers():  # the network path under bob's peer connection breaks
            await t.receiver.transport.transport.stop()
        await until(lambda: alice.count(MediaDown), 5)
        await until(lambda: alice.count(MediaUp) == 2 and bob.count(MediaUp) == 2, 15)
        assert alice.pair.attempts == 2 and bob.pair.attempts == 2  # one new peer connection each, same key
        assert [type(m) for m in alice.sent] == [p.WebrtcOffer, p.WebrtcOffer]
        assert not alice.count(Failed) and not bob.count(Failed)
        frames = alice.pair.received.audio_frames
        await asyncio.sleep(0.3)
        assert alice.pair.received.audio_frames > frames + 10
    finally:
        await link.close()


@pytest.mark.parametrize("which", [p.WebrtcOffer, p.WebrtcAnswer])
async def test_a_swapped_fingerprint_fails_closed(which):
    link = Link(tamper=lambda msg: swap_fingerprint(msg.sdp) if isinstance(msg, which) else None)
    victim = link.bob if which is p.WebrtcOffer else link.alice
    try:
        link.start()
        await until(lambda: victim.count(Failed), 10)
        assert [r.reason for r in victim.reports if isinstance(r, Failed)] == ["identity_mismatch"]
        assert not victim.count(Secured)
        if which is p.WebrtcOffer:
            assert victim.pair.pc is None and victim.sent == []  # never answered: no peer connection was made
        await asyncio.sleep(1)
        assert victim.pair.received.audio_frames == 0 and not victim.count(MediaUp)
    finally:
        await link.close()
