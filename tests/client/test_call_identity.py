"""Nobody in the middle: each offer and answer carries its sender's signature over the DTLS fingerprints, a call
whose fingerprints were swapped on the way fails closed before any media flows, and both sides show one code."""

from __future__ import annotations

import asyncio
import re

import pytest

from tests.client.engines import connected_call, engines, start_engine


def swap_fingerprints(raw: str) -> str:
    """What a man in the middle does to sit in the media path: put its own DTLS fingerprint in the SDP."""
    return re.sub(r"(a=fingerprint:sha-256 )([0-9A-F:]+)", lambda m: m[1] + m[2][::-1].replace(":", "")[:2]
                  + m[2][2:], raw) if '"webrtc_' in raw else raw


async def test_a_call_is_verified_with_the_same_safety_code_on_both_sides(server):
    async with engines(server.url, ("alice", 440), ("bob", 660)) as (alice, bob):
        call_id = await connected_call(alice, bob)
        a, b = alice.session(call_id), bob.session(call_id)
        await alice.until(lambda: a.safety_code and b.safety_code)
        assert a.verified and b.verified
        assert re.fullmatch(r"\d{3} \d{3}", a.safety_code) and a.safety_code == b.safety_code
        alice.engine.hangup(call_id)
        await bob.state(call_id, "ended")


@pytest.mark.parametrize("attack", ["swap", "strip"])
async def test_a_server_that_tampers_with_the_sdp_cannot_get_a_call_connected(server, attack):
    receive = server.hub.receive

    def mitm(conn, raw, now):
        if isinstance(raw, str) and '"webrtc_' in raw:
            raw = swap_fingerprints(raw) if attack == "swap" else re.sub(r',"signature":"[^"]+"', "", raw)
        return receive(conn, raw, now)

    async with engines(server.url, ("alice", 440), ("bob", 660)) as (alice, bob):
        server.hub.receive = mitm
        call_id = alice.engine.call("bob")
        await bob.until(lambda: call_id in bob.engine.sessions)
        bob.engine.accept(call_id)
        await bob.state(call_id, "ended")
        await alice.state(call_id, "ended")
        assert bob.ended(call_id).reason == alice.ended(call_id).reason == "identity_mismatch"
        await asyncio.sleep(1)
        assert alice.session(call_id).received.audio_frames == bob.session(call_id).received.audio_frames == 0
        assert "active" not in alice.states(call_id) + bob.states(call_id)


async def test_a_peer_without_a_key_still_calls_unverified(server):
    alice = await start_engine(server.url, "alice")
    bob = await start_engine(server.url, "bob", keyless=True)  # an older client: no key, no signatures
    await alice.until(lambda: "bob" in alice.engine.signaling.users)
    assert alice.engine.signaling.users["bob"].key is None
    try:
        call_id = await connected_call(alice, bob)
        await alice.until(lambda: alice.session(call_id).verified is not None)
        assert alice.session(call_id).verified is False and alice.session(call_id).safety_code is None
        alice.engine.hangup(call_id)
        await bob.state(call_id, "ended")
    finally:
        for p in (alice, bob):
            await p.engine.stop()
