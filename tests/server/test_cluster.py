"""Two real nodes on a real redis-server: presence, calls, chat and busy across nodes; a node that stops or dies;
Redis restarted under them."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import time

import pytest

from server import HubConfig, SignalingServer
from server.hub import RoomCall
from tests.components import redis_server
from tests.support import FAST, MS, Peer, eventually

BEAT, TTL = 0.1, 0.4  # the nodes' heartbeat here, much quicker than an installed node's 1 s and 3 s


@pytest.fixture
def redis():
    with redis_server() as r:
        yield r


@contextlib.asynccontextmanager
async def node(redis_url: str, **config):
    server = SignalingServer("127.0.0.1", 0, config=HubConfig(**{**FAST, **config}), ping_timeout=100 * MS,
                             redis=redis_url)
    server.cluster.heartbeat, server.cluster.ttl = BEAT, TTL
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def two_nodes(redis_url: str, **config):
    async with node(redis_url, **config) as a, node(redis_url, **config) as b:
        await eventually(lambda: a.cluster.node in b.cluster._nodes and b.cluster.node in a.cluster._nodes, 5.0)
        yield a, b


async def online(peer: Peer, user: str, status: str = "online", timeout: float = 3.0) -> None:
    """Wait until what `peer` was told (welcome, presence and presence_batch, kept in peer.seen) gives `user`
    this status."""
    seen = peer.__dict__.setdefault("seen", {u["user_id"]: u["status"] for u in (peer.welcome or {}).get("users", ())})
    async with asyncio.timeout(timeout):
        while seen.get(user) != status:
            msg = await peer.expect("presence", "presence_batch", timeout=timeout)
            for u in msg["users"] if msg["type"] == "presence_batch" else [msg]:
                seen[u["user_id"]] = u["status"]


async def test_presence_and_a_call_across_nodes(redis):
    async with two_nodes(redis.url) as (a, b):
        alice = await Peer.connect(a.url, "alice")
        bob = await Peer.connect(b.url, "bob")
        await online(bob, "alice")
        await online(alice, "bob")
        carol = await Peer.connect(b.url, "carol")
        assert {u["user_id"] for u in carol.welcome["users"]} == {"alice", "bob"}  # the list spans both nodes

        await alice.call(bob, "x1")
        await bob.send({"type": "webrtc_offer", "to": "alice", "call_id": "x1", "sdp": "v=0 offer"})
        offer = await alice.expect("webrtc_offer")
        assert offer["from"] == "bob" and offer["sdp"] == "v=0 offer"
        await alice.send({"type": "webrtc_ice_candidate", "to": "bob", "call_id": "x1", "candidate": "cand 1"})
        assert (await bob.expect("webrtc_ice_candidate"))["candidate"] == "cand 1"
        await online(carol, "alice", "in_call")
        await online(carol, "bob", "in_call")

        await alice.send({"type": "chat", "to": "carol", "id": "m1", "text": "hello across"})
        got = await carol.expect("chat")
        assert (got["from"], got["text"]) == ("alice", "hello across")

        await bob.send({"type": "call_ended", "to": "alice", "call_id": "x1", "reason": "hangup"})
        assert (await alice.expect("call_ended"))["reason"] == "hangup"
        await online(carol, "alice", "online")
        for hub in (a.hub, b.hub):
            await eventually(lambda hub=hub: not hub.calls)
            hub.check_invariants()


async def test_a_node_that_hears_of_another_before_its_heartbeat_meets_it_tells_it_its_users(redis):
    """Node a's heartbeat has not met node b yet, but b's presence reached a's inbox: a's users can see b's and
    call them. So a tells b its users as it hears of it; else b, not knowing the caller, dropped the call."""
    import redis as redis_py

    async with node(redis.url) as a:
        await eventually(lambda: a.cluster.resyncs == 1, 5.0)
        a.cluster.heartbeat, a.cluster.ttl = 30.0, 60.0  # from its next beat on, a looks for other nodes no more
        r = redis_py.Redis.from_url(redis.url)
        try:
            await eventually(lambda: r.pttl(a.cluster.key("node", a.cluster.node)) > 10_000, 5.0)
        finally:
            r.close()
        async with node(redis.url) as b:
            await eventually(lambda: a.cluster.node in b.cluster._nodes, 5.0)  # b met a; a, with no heartbeat
            alice = await Peer.connect(a.url, "alice")
            bob = await Peer.connect(b.url, "bob")
            await online(alice, "bob")
            await alice.call(bob, "x1")
            await online(bob, "alice", "in_call")  # and what changes on a from then on reaches b
            assert b.cluster.node in a.cluster._nodes and a.cluster.resyncs == 1  # met from the inbox


async def test_busy_ring_timeout_and_offline_across_nodes(redis):
    async with two_nodes(redis.url) as (a, b):
        alice, dave = await Peer.connect(a.url, "alice"), await Peer.connect(a.url, "dave")
        bob = await Peer.connect(b.url, "bob")
        await online(alice, "bob")
        await online(dave, "bob")
        await alice.call(bob, "x1")
        # bob is in a call (on his node): dave is told he is busy, as he would be on one node
        await dave.send({"type": "call_incoming", "to": "bob", "call_id": "x2"})
        rejected = await dave.expect("call_rejected")
        assert (rejected["from"], rejected["reason"]) == ("bob", "busy")
        assert await bob.silent("call_incoming")
        # calling the caller's peer from the other side: alice is busy too, told by her own node
        carol = await Peer.connect(b.url, "carol")
        await online(carol, "alice", "in_call")
        await carol.send({"type": "call_incoming", "to": "alice", "call_id": "x3"})
        assert (await carol.expect("call_rejected"))["reason"] == "busy"

        # an unanswered call across nodes times out on the caller's node, and both are told
        await online(dave, "carol")
        await dave.send({"type": "call_incoming", "to": "carol", "call_id": "x4"})
        await carol.expect("call_incoming", call_id="x4")
        assert (await dave.expect("call_ended", call_id="x4", timeout=3.0))["reason"] == "no_answer"
        assert (await carol.expect("call_ended", call_id="x4", timeout=3.0))["reason"] == "no_answer"

        # bob says bye: alice's call ends, and her node shows him offline
        await bob.send({"type": "bye"})
        ended = await alice.expect("call_ended", call_id="x1", timeout=3.0)
        assert ended["reason"] == "peer_disconnected"
        await online(alice, "bob", "offline")
        await eventually(lambda: "bob" not in a.hub.remote and not a.hub.calls)
        a.hub.check_invariants()


async def test_a_stopped_nodes_users_reconnect_and_resume_elsewhere(redis):
    """A node that stops: its users show as reconnecting on the other node, come back there with their resume
    token, and their call goes on as a call with a user on the same node."""
    async with node(redis.url) as b:
        async with node(redis.url) as a:
            await eventually(lambda: a.cluster.node in b.cluster._nodes, 5.0)
            alice = await Peer.connect(a.url, "alice")
            bob = await Peer.connect(b.url, "bob")
            await online(alice, "bob")
            await alice.call(bob, "x1")
            token = alice.welcome["resume_token"]
        await online(bob, "alice", "reconnecting")
        back = await Peer.connect(b.url, "alice", resume_token=token,
                                  calls=[{"call_id": "x1", "peer": "bob", "media": ["audio"]}])
        assert back.welcome["type"] == "connection_established"
        await online(bob, "alice", "in_call")
        assert await bob.silent("call_ended")
        await back.send({"type": "webrtc_offer", "to": "bob", "call_id": "x1", "sdp": "v=0 again"})
        assert (await bob.expect("webrtc_offer"))["sdp"] == "v=0 again"
        b.hub.check_invariants()


async def test_a_room_and_its_call_across_nodes(redis):
    async with two_nodes(redis.url) as (a, b):
        alice, carol = await Peer.connect(a.url, "alice"), await Peer.connect(a.url, "carol")
        bob = await Peer.connect(b.url, "bob")
        await online(alice, "bob")
        await online(bob, "alice")
        await alice.send({"type": "join", "channel": "lobby"})
        await alice.expect("joined")
        await eventually(lambda: "alice" in b.hub.channels.get("lobby", ()))
        await bob.send({"type": "join", "channel": "lobby"})
        joined = await bob.expect("joined")
        assert [m["user_id"] for m in joined["members"]] == ["alice", "bob"]  # the member on the other node too
        assert (await alice.expect("channel_member"))["user_id"] == "bob"

        await alice.send({"type": "channel_message", "channel": "lobby", "text": "hello room"})
        got = await bob.expect("channel_message")
        assert (got["from"], got["text"]) == ("alice", "hello room")
        await carol.send({"type": "join", "channel": "lobby"})  # history kept on each node, the other's too
        assert [m["text"] for m in [await carol.expect("channel_message")]] == ["hello room"]

        await alice.send({"type": "room_call_join", "channel": "lobby", "media": ["audio"]})
        call_id = (await alice.expect("room_call_joined"))["call_id"]
        await eventually(lambda: "alice" in b.hub.room_calls.get("lobby", RoomCall("", "")).media)
        await bob.send({"type": "room_call_join", "channel": "lobby", "media": ["audio"]})
        there = await bob.expect("room_call_joined")
        assert there["call_id"] == call_id and [x["user_id"] for x in there["participants"]] == ["alice"]
        member = await alice.expect("room_call_member", user_id="bob")
        assert member["event"] == "joined" and member["call_id"] == call_id
        await bob.send({"type": "webrtc_offer", "to": "alice", "call_id": call_id, "sdp": "v=0 room"})
        assert (await alice.expect("webrtc_offer"))["from"] == "bob"
        await online(carol, "bob", "in_call")

        await bob.send({"type": "leave", "channel": "lobby"})
        left = await alice.expect("channel_member", event="left")
        assert left["user_id"] == "bob"
        await eventually(lambda: set(a.hub.room_calls["lobby"].media) == {"alice"})
        for hub in (a.hub, b.hub):
            hub.check_invariants()
        assert a.hub.channels["lobby"] == b.hub.channels["lobby"] == {"alice", "carol"}


async def test_a_user_ids_key_binds_it_on_every_node_and_forget_releases_it_everywhere(redis, tmp_path):
    from tests.server.test_identity import ALICE, MALLORY, keyed

    async with two_nodes(redis.url) as (a, b):
        alice = await keyed(a.url, "alice", ALICE)
        await alice.send({"type": "bye"})
        await alice.closed()
        await eventually(lambda: "alice" not in b.hub.remote)
        impostor = await keyed(b.url, "alice", MALLORY)  # the other node, where alice never was
        assert impostor.welcome["code"] == "key_mismatch"
        assert (await keyed(b.url, "alice", ALICE)).welcome["type"] == "connection_established"
    # Fresh nodes know nothing of alice but what Redis has: her key, until the operator releases the id.
    async with two_nodes(redis.url) as (a, b):
        assert (await keyed(b.url, "alice", MALLORY)).welcome["code"] == "key_mismatch"
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "server", "--forget", "alice", "--redis",
                                                redis.url, "--data-dir", str(tmp_path), stdout=asyncio.subprocess.PIPE)
    assert await proc.wait() == 0
    async with two_nodes(redis.url) as (a, b):
        assert (await keyed(b.url, "alice", MALLORY)).welcome["type"] == "connection_established"


async def test_a_user_id_online_on_another_node_is_taken(redis):
    async with two_nodes(redis.url) as (a, b):
        await Peer.connect(a.url, "alice")
        await eventually(lambda: "alice" in b.hub.remote)
        other = await Peer.connect(b.url, "alice")
        assert other.welcome["code"] == "name_taken"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def node_process(redis_url: str, port: int, data_dir):
    """callbox-server --redis as its own process, which a test can SIGKILL; it listens when this returns."""
    proc = subprocess.Popen([sys.executable, "-m", "server", "--port", str(port), "--redis", redis_url,
                             "--ping-interval", "1", "--resume-grace", "10", "--data-dir", str(data_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(500):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.1):
                break
            if proc.poll() is not None:
                raise RuntimeError(f"the node exited: {proc.stderr.read()[-800:]}")
            time.sleep(0.02)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)


async def test_a_node_killed_mid_call_resumes_elsewhere_exactly(redis, tmp_path):
    """SIGKILL the node one party of a call is on, while messages wait there for her: she resumes on the other
    node with her resume token (resumed, not a fresh login) and gets exactly what she had not got, from Redis;
    the call goes on there, her peer is never told it ended, and sees her in_call again."""
    port = _free_port()
    async with node(redis.url, resume_grace=10.0) as b:
        with node_process(redis.url, port, tmp_path) as proc:
            probe = await Peer.connect(f"ws://127.0.0.1:{port}", "probe")
            await eventually(lambda: "probe" in b.hub.remote, 5.0)
            alice = await Peer.connect(f"ws://127.0.0.1:{port}", "alice")
            bob = await Peer.connect(b.url, "bob")
            await online(alice, "bob")
            await alice.call(bob, "x1")
            await online(bob, "alice", "in_call")
            await alice.send({"type": "chat", "to": "bob", "id": "a1", "text": "and this one"})
            await bob.expect("chat")
            # after her last frame: the node's record of what it sent her is older than this
            await bob.send({"type": "chat", "to": "alice", "id": "m1", "text": "got this one"})
            await alice.expect("chat")
            alice.cut()  # her connection drops; the node keeps what comes for her
            await online(bob, "alice", "reconnecting")
            for n in (2, 3):
                await bob.send({"type": "chat", "to": "alice", "id": f"m{n}", "text": f"kept {n}"})
            await eventually(lambda: _kept(redis.url, "kept 3"), 3.0)
            token = alice.welcome["resume_token"]
            proc.send_signal(signal.SIGKILL)
            proc.wait(5)
        back = await Peer.connect(b.url, "alice", resume_token=token, received=alice.got,
                                  calls=[{"call_id": "x1", "peer": "bob", "media": ["audio"]}])
        assert back.welcome["resumed"] is True and back.welcome["received"] == 2  # her call_incoming and her chat
        assert [(await back.expect("chat"))["text"] for _ in range(2)] == ["kept 2", "kept 3"]
        assert await back.silent("chat")  # exactly once: nothing she had already
        await online(bob, "alice", "in_call")
        await back.send({"type": "webrtc_offer", "to": "bob", "call_id": "x1", "sdp": "v=0 after the kill"})
        assert (await bob.expect("webrtc_offer"))["sdp"] == "v=0 after the kill"
        # the dead node's other user goes reconnecting once its heartbeat lapses (3 s for an installed node)
        await online(bob, "probe", "reconnecting", timeout=8.0)
        assert await bob.silent("call_ended", wait=0.5)
        assert b.hub.status("alice") == "in_call"
        del probe
        b.hub.check_invariants()


def _kept(redis_url: str, text: str) -> bool:
    """Whether some replay stream in Redis holds a message with this text."""
    import redis

    r = redis.Redis.from_url(redis_url)
    try:
        return any(text.encode() in fields[b"t"] for key in r.scan_iter("callbox:replay:*")
                   for _id, fields in r.xrange(key))
    finally:
        r.close()


async def test_redis_restarted_under_the_nodes(redis):
    """Redis goes away for longer than a heartbeat's lifetime and comes back empty: each node serves its own
    users meanwhile (a call there works), sees the other node's users reconnecting, and after the resync both see
    everyone again and can call across once more."""
    async with two_nodes(redis.url, resume_grace=10.0) as (a, b):
        alice, dave = await Peer.connect(a.url, "alice"), await Peer.connect(a.url, "dave")
        erin = await Peer.connect(a.url, "erin")
        bob = await Peer.connect(b.url, "bob")
        await online(bob, "alice")
        await online(bob, "erin")
        await online(alice, "bob")
        resyncs = a.cluster.resyncs, b.cluster.resyncs
        redis.stop()
        await online(bob, "alice", "reconnecting", timeout=5.0)
        await alice.call(dave, "local")  # one node alone still does everything among its own users
        await erin.send({"type": "bye"})  # gone while Redis was: the other node hears it at the resync
        redis.start()
        await eventually(lambda: a.cluster.resyncs > resyncs[0] and b.cluster.resyncs > resyncs[1], 5.0)
        await online(bob, "alice", "in_call", timeout=5.0)
        await online(bob, "dave", "in_call", timeout=5.0)
        await online(alice, "bob", timeout=5.0)
        await online(bob, "erin", "offline", timeout=5.0)
        assert "erin" not in b.hub.remote
        carol = await Peer.connect(b.url, "carol")
        await online(dave, "carol")
        await dave.send({"type": "call_ended", "to": "alice", "call_id": "local", "reason": "hangup"})
        await online(carol, "dave", "online")
        await dave.call(carol, "across")
        for hub in (a.hub, b.hub):
            hub.check_invariants()
