"""Bad input over real sockets: each case gets an error naming what was wrong, and nobody else loses anything."""

import asyncio
import json

import pytest

from shared.protocol import MAX_MESSAGE_BYTES
from tests.support import Peer, eventually, running_server


@pytest.fixture
async def bystanders(server):
    """Alice and Bob in an active call, with an ICE candidate on its way; each bad-input test checks it survives."""
    alice = await Peer.connect(server.url, "alice")
    bob = await Peer.connect(server.url, "bob")
    await alice.call(bob)
    return server, alice, bob


async def assert_untouched(server, alice, bob):
    await alice.send({"type": "webrtc_ice_candidate", "to": "bob", "call_id": "c1", "candidate": "still here",
                      "sdpMid": "0", "sdpMLineIndex": 0})
    assert (await bob.expect("webrtc_ice_candidate"))["candidate"] == "still here"
    assert server.hub.status("alice") == server.hub.status("bob") == "in_call"
    server.hub.check_invariants()


BAD = [
    ("{not json", "bad_message", "invalid JSON"),
    ("[1, 2]", "bad_message", "must be a JSON object, not a list"),
    ('"hello"', "bad_message", "not a string"),
    ("{}", "bad_message", "field 'type' is missing"),
    ('{"type": 7}', "bad_message", "field 'type' must be a string"),
    ('{"type": "dance"}', "unknown_type", "unknown message type 'dance'"),
    ('{"type": "presence", "user_id": "x", "display_name": "x", "status": "online"}', "unknown_type", "presence"),
    ('{"type": "call_incoming", "to": "bob", "media": ["audio"]}', "bad_message", "field 'call_id' is missing"),
    ('{"type": "call_incoming", "to": "bob", "call_id": 5}', "bad_message", "field 'call_id' must be a string"),
    ('{"type": "call_incoming", "to": "bob", "call_id": "c9", "media": ["smell"]}', "bad_message", "field 'media'"),
    ('{"type": "webrtc_ice_candidate", "to": "bob", "call_id": "c1", "candidate": "x", "sdpMLineIndex": "0"}',
     "bad_message", "field 'sdpMLineIndex' must be an integer"),
    ('{"type": "call_accepted", "call_id": "c1"}', "bad_message", "field 'to' is missing"),
    ('{"type": "join", "channel": "' + "c" * 65 + '"}', "bad_message", "field 'channel' is 65 characters long"),
    ('{"type": "channel_message", "channel": "x", "text": "' + "t" * 4001 + '"}', "bad_message",
     "field 'text' is 4001 characters long; the limit is 4000"),
    ('{"type": "channel_message", "channel": "lobby", "text": "hi"}', "bad_message", "join channel 'lobby'"),
    ('{"type": "hello", "protocol": 1, "user_id": "alice", "display_name": "A"}', "bad_message", "already received"),
    ('{"type": "call_incoming", "to": "alice", "call_id": "c9", "media": ["audio"]}', "bad_message",
     "cannot call yourself"),
]


@pytest.mark.parametrize("raw,code,words", BAD, ids=[b[2][:30] for b in BAD])
async def test_bad_message_gets_a_named_error_and_connection_stays(bystanders, raw, code, words):
    server, alice, bob = bystanders
    await alice.send(raw)
    err = await alice.expect("error")
    assert err["code"] == code
    assert words in err["message"]
    await assert_untouched(server, alice, bob)


async def test_binary_frame(bystanders):
    server, alice, bob = bystanders
    await alice.send(b'{"type": "bye"}')
    err = await alice.expect("error")
    assert err["code"] == "bad_message" and "binary frames" in err["message"]
    await assert_untouched(server, alice, bob)


async def test_message_before_hello_closes_after_the_error(bystanders):
    server, alice, bob = bystanders
    early = await Peer.connect(server.url, "carol", hello=False)
    await early.send({"type": "join", "channel": "team"})
    err = await early.expect("error")
    assert err["code"] == "not_authenticated" and "join" in err["message"]
    assert (await early.closed())[0] == 1008
    await assert_untouched(server, alice, bob)


async def test_garbage_before_hello_closes_after_the_error(server):
    early = await Peer.connect(server.url, "carol", hello=False)
    await early.send("nope")
    assert (await early.expect("error"))["code"] == "bad_message"
    assert (await early.closed())[0] == 1008


async def test_oversized_message_closes_with_1009(bystanders):
    server, alice, bob = bystanders
    await alice.send(json.dumps({"type": "channel_message", "channel": "x", "text": "y" * MAX_MESSAGE_BYTES}))
    err = await alice.expect("error")
    assert err["code"] == "bad_message" and "the limit is 65536" in err["message"]
    assert (await alice.closed())[0] == 1009
    # alice is now reconnecting, her call still held for her; bob's session is intact
    await eventually(lambda: server.hub.status("alice") == "reconnecting")
    assert server.hub.status("bob") == "in_call"


async def test_flood_gets_rate_limited_then_closed():
    async with running_server(rate=20, burst=20, flood_limit=50) as srv:
        bob = await Peer.connect(srv.url, "bob")
        flooder = await Peer.connect(srv.url, "mallory")
        for i in range(200):
            await flooder.send({"type": "join", "channel": f"ch{i % 3}"})
        err = await flooder.expect("error", timeout=5)
        assert err["code"] == "rate_limited"
        assert (await flooder.closed(timeout=5))[0] == 1008
        assert srv.hub.status("bob") == "online"
        await bob.send({"type": "join", "channel": "ok"})
        assert (await bob.expect("joined"))["channel"] == "ok"


async def test_rate_limit_zero_means_no_limit():
    """`--rate-limit 0` used to refuse every message after hello; it means no limit."""
    from server.cli import build_parser, make_server

    cli = make_server(build_parser().parse_args(["--rate-limit", "0", "--port", "0"]))
    async with running_server(rate=cli.hub.config.rate, burst=cli.hub.config.burst) as srv:
        peer = await Peer.connect(srv.url, "alice")
        for i in range(300):
            await peer.send({"type": "join", "channel": f"ch{i % 3}"})
        for _ in range(300):
            await peer.expect("joined")
        assert await peer.silent("error")


async def test_oversized_user_id_and_display_name(server):
    peer = await Peer.connect(server.url, "u" * 65)
    assert peer.welcome["code"] == "bad_message" and "field 'user_id' is 65 characters long" in peer.welcome["message"]
    peer = await Peer.connect(server.url, "zed", display_name="Z" * 101)
    assert "field 'display_name' is 101 characters long; the limit is 100" in peer.welcome["message"]


async def test_bad_user_id_characters(server):
    peer = await Peer.connect(server.url, "bob smith")
    assert peer.welcome["code"] == "bad_message" and "user_id" in peer.welcome["message"]


async def test_wrong_protocol_version(server):
    peer = await Peer.connect(server.url, "zed", protocol=2000)
    assert peer.welcome["code"] == "unsupported_protocol"
    assert (await peer.closed())[0] == 1002


async def test_many_bad_clients_at_once_leave_a_call_alone(bystanders):
    server, alice, bob = bystanders

    async def misbehave(i):
        p = await Peer.connect(server.url, f"bad{i}", hello=False)
        await p.send(["{", "[]", '{"type":"x"}', "x" * 70000][i % 4])
        p.cut()

    await asyncio.gather(*(misbehave(i) for i in range(30)))  # under the 32 waiting to log in from one address
    await assert_untouched(server, alice, bob)
