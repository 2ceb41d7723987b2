"""SignalingClient against a real server on loopback: connect, resume, outbox, restart, bad input, errors, faults."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import socket
from typing import Any

import pytest
from websockets.asyncio.server import serve

from client.core import signaling
from client.core.signaling import ConnState, OutboxFull, SignalingClient, backoff
from server import HubConfig, SignalingServer
from shared import protocol as p
from tests.faultproxy import FaultProxy
from tests.support import FAST, MS, Peer, eventually, running_server

CONNECTING, ONLINE, RECONNECTING, OFFLINE = ConnState.CONNECTING, ConnState.ONLINE, ConnState.RECONNECTING, \
    ConnState.OFFLINE

# Client timings for tests: quick retries, and a keepalive that notices a stalled path in well under a second.
QUICK = dict(first_retry=50 * MS, max_retry=200 * MS, ping_interval=500 * MS)


class Probe:
    """Records every on_state and on_message call of one client, with the loop time of each state change."""

    def __init__(self, *, buggy: bool = False):
        self.states: list[tuple[ConnState, str, float]] = []
        self.messages: list[p.Message] = []
        self.buggy = buggy  # both handlers raise after recording, as an app with a bug would

    def on_state(self, state: ConnState, why: str) -> None:
        self.states.append((state, why, asyncio.get_running_loop().time()))
        if self.buggy:
            raise RuntimeError(f"a bug in the app's state handler for {state}")

    def on_message(self, msg: p.Message) -> None:
        self.messages.append(msg)
        if self.buggy:
            raise RuntimeError(f"a bug in the app's message handler for {msg.type}")

    def kinds(self) -> list[ConnState]:
        return [s for s, _, _ in self.states]

    def of(self, cls: type) -> list:
        return [m for m in self.messages if isinstance(m, cls)]


def make_client(url: str, user: str, probe: Probe, **options: Any) -> SignalingClient:
    return SignalingClient(url, user, user.title(), on_message=probe.on_message, on_state=probe.on_state,
                           **{**QUICK, **options})


class Inbox:
    """Keeps reading a raw Peer's socket (the server pings every 100 ms; an unread socket stops its pongs)."""

    def __init__(self, peer: Peer):
        self.peer = peer
        self.messages: list[dict] = list(peer.backlog)
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            async for raw in self.peer.ws:  # ends when the connection does
                self.messages.append(json.loads(raw))

    def texts(self, channel: str, sender: str) -> list[str]:
        return [m["text"] for m in self.messages
                if m["type"] == "channel_message" and m["channel"] == channel and m["from"] == sender]

    def statuses(self, user: str) -> list[str]:
        return [m["status"] for m in self.messages if m["type"] == "presence" and m["user_id"] == user]

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.peer.close(), 1)


async def joined_peer(url: str, user: str, channel: str) -> Inbox:
    peer = await Peer.connect(url, user)
    await peer.send({"type": "join", "channel": channel})
    await peer.expect("joined", channel=channel)
    return Inbox(peer)


def chat(text: str, channel: str = "room") -> p.ChannelMessage:
    return p.ChannelMessage(channel=channel, text=text)


async def online(client: SignalingClient, timeout: float = 3.0) -> None:
    await eventually(lambda: client.state is ONLINE, timeout)


# ---------------------------------------------------------------- 1. connect


async def test_connects_goes_online_fills_users_and_says_bye_on_stop():
    async with running_server(resume_grace=5) as srv:
        bob = Inbox(await Peer.connect(srv.url, "bob", display_name="Bob"))
        probe = Probe()
        client = make_client(srv.url, "alice", probe)
        try:
            client.start()
            await online(client)
            assert probe.kinds() == [CONNECTING, ONLINE]
            assert [why for _, why, _ in probe.states] == ["", ""]
            assert client.users == {"bob": p.UserInfo(user_id="bob", display_name="Bob", status="online")}
            [welcome] = probe.of(p.ConnectionEstablished)
            assert probe.messages[0] is welcome
            assert welcome.user_id == "alice" and welcome.resumed is False
            assert welcome.resume_token == client.resume_token
            assert client.server_info == welcome.server and client.server_info.resume_grace == pytest.approx(5)
            assert client.connects == 1 and srv.hub.status("alice") == "online"
            await eventually(lambda: bob.statuses("alice") == ["online"])

            # presence keeps the snapshot current
            carol = await Peer.connect(srv.url, "carol", display_name="Carol")
            await eventually(lambda: "carol" in client.users)
            assert client.users["carol"] == p.UserInfo(user_id="carol", display_name="Carol", status="online")
            await carol.send({"type": "bye"})
            await eventually(lambda: "carol" not in client.users)
        finally:
            await client.stop()
        assert client.state is OFFLINE and probe.kinds() == [CONNECTING, ONLINE, OFFLINE]
        # bye: the server ends the session at once instead of holding it for the 5 s resume grace
        await eventually(lambda: srv.hub.status("alice") == "offline", timeout=1)
        await eventually(lambda: bob.statuses("alice") == ["online", "offline"])
        await bob.close()


async def inline_wait_for(aw, timeout):
    """asyncio.wait_for as Python 3.12+ runs it: the awaitable runs in the caller's task, not in a new one."""
    async with asyncio.timeout(timeout):
        return await aw


@pytest.mark.parametrize("wait_for", ["python_3_11", "python_3_12"])
async def test_stop_sends_what_was_queued_before_the_bye(wait_for, monkeypatch):
    if wait_for == "python_3_12":
        monkeypatch.setattr(asyncio, "wait_for", inline_wait_for)
    async with running_server(resume_grace=5) as srv:
        bob = await joined_peer(srv.url, "bob", "room")
        probe = Probe()
        client = make_client(srv.url, "alice", probe)
        try:
            client.start()
            client.join("room")
            await online(client)
            await eventually(lambda: "alice" in srv.hub.channels["room"])
            for i in range(100):
                client.send(chat(f"last words {i}"))
        finally:
            await client.stop()  # at once, before the writer has run
        await eventually(lambda: "offline" in bob.statuses("alice"))
        assert bob.texts("room", "alice") == [f"last words {i}" for i in range(100)]
        assert srv.hub.status("alice") == "offline"
        await bob.close()


# ---------------------------------------------------------------- 2. reconnect and resume


@pytest.mark.parametrize("how", ["client_drop", "proxy_cut"])
async def test_reconnects_at_once_and_resumes_after_a_tcp_cut(how, monkeypatch):
    # Worst-case jitter, so the first retry takes the longest delay backoff(0) can give.
    monkeypatch.setattr(signaling.random, "uniform", lambda a, b: b)
    loop = asyncio.get_running_loop()
    async with running_server(resume_grace=5) as srv, FaultProxy(srv.port) as proxy:
        carol = Inbox(await Peer.connect(srv.url, "carol"))
        probe = Probe()
        client = make_client(proxy.url, "alice", probe, first_retry=0.5, max_retry=5.0)  # the defaults
        try:
            client.start()
            await online(client)
            token = client.resume_token
            for n in range(2):  # a second cut: the retry delay starts over after a good session
                attempts, onlines = proxy.accepted, probe.kinds().count(ONLINE)
                dropped = loop.time()
                if how == "client_drop":
                    client.drop_connection()
                else:
                    assert proxy.cut() == 1
                await eventually(lambda a=attempts: proxy.accepted > a, timeout=2)
                assert proxy.accept_times[attempts] - dropped <= 0.5 + 50 * MS, f"cut {n}: first retry too late"
                await eventually(lambda o=onlines: probe.kinds().count(ONLINE) > o, timeout=2)
                assert probe.states[-1][2] - dropped <= 0.5 + 200 * MS
            assert proxy.accepted == 3
            assert probe.kinds() == [CONNECTING, ONLINE, RECONNECTING, ONLINE, RECONNECTING, ONLINE]
            assert [why for s, why, _ in probe.states if s is RECONNECTING] == ["the connection was lost"] * 2
            assert [why for s, why, _ in probe.states if s is ONLINE] == ["", "resumed", "resumed"]
            welcomes = probe.of(p.ConnectionEstablished)
            assert [w.resumed for w in welcomes] == [False, True, True]
            assert {w.resume_token for w in welcomes} == {token} and client.resume_token == token
            assert client.connects == 3 and srv.hub.status("alice") == "online"
            assert srv.hub.sessions["alice"].resume_token == token
            # others saw alice reconnecting at most, never offline
            await eventually(lambda: carol.statuses("alice")[-1:] == ["online"])
            assert "offline" not in carol.statuses("alice")
            assert set(carol.statuses("alice")) <= {"online", "reconnecting"}
        finally:
            await client.stop()
            await carol.close()


# ---------------------------------------------------------------- 3. backoff


def test_backoff_starts_small_grows_to_a_cap_with_jitter():
    samples = {n: [backoff(n) for _ in range(300)] for n in range(10)}
    assert all(0 < d <= 0.5 for d in samples[0])
    for n, delays in samples.items():
        ceiling = min(5.0, 0.5 * 2**n)
        assert all(ceiling / 2 <= d <= ceiling for d in delays), n  # at most half the delay is jitter
    for n in range(3):  # grows: each attempt waits at least as long as any earlier one, up to the cap
        assert min(samples[n + 1]) >= max(samples[n])
    means = [sum(d) / len(d) for d in samples.values()]
    assert means[0] < means[1] < means[2] < means[3] < means[4]
    assert max(max(d) for d in samples.values()) <= 5.0
    assert len(set(samples[0])) > 250 and len(set(samples[9])) > 250  # jittered, also at the cap
    # The client's own settings.
    assert all(backoff(n, first=0.05, cap=0.2) <= 0.2 for n in range(50))
    assert all(backoff(0, first=0.05, cap=0.2) <= 0.05 for _ in range(50))
    # A server down for hours: attempt numbers grow without bound, the delay stays capped (and never raises).
    for attempt in (64, 1023, 1024, 5000, 10**6):
        assert 2.5 <= backoff(attempt) <= 5.0


# ---------------------------------------------------------------- 4. outbox


@pytest.mark.parametrize("how", ["proxy_cut", "proxy_stall", "server_restart"])
async def test_outbox_holds_messages_while_disconnected_and_flushes_them_in_order_once(how):
    config = dict(resume_grace=5)
    async with running_server(**config) as srv, FaultProxy(srv.port) as proxy:
        bob = await joined_peer(srv.url, "bob", "room")
        probe = Probe()
        # a 200 ms keepalive, so a stalled path is noticed quickly
        client = make_client(proxy.url, "alice", probe, ping_interval=200 * MS)
        new_server = None
        try:
            client.start()
            client.join("room")
            client.send(chat("before"))
            await eventually(lambda: bob.texts("room", "alice") == ["before"])

            if how == "proxy_cut":
                proxy.refusing = True
                proxy.cut()
            elif how == "proxy_stall":
                proxy.stall()
            else:
                proxy.refusing = True
                await srv.stop()
            await eventually(lambda: client.state is RECONNECTING, timeout=3)
            for i in range(40):
                client.send(chat(f"m{i}"))
            assert client.pending == 40  # queued, not written to a dead socket

            attempts = proxy.accepted
            if how == "proxy_cut":
                await eventually(lambda: proxy.accepted >= attempts + 2, timeout=2)  # refused retries keep it
                assert client.pending == 40 and client.state is RECONNECTING
                proxy.refusing = False
            elif how == "proxy_stall":
                await asyncio.sleep(300 * MS)  # a new connection is stuck in its handshake meanwhile
                assert client.pending == 40
                proxy.unstall()
            else:
                await bob.close()
                new_server = SignalingServer("127.0.0.1", proxy.target_port, config=HubConfig(**{**FAST, **config}),
                                             ping_timeout=100 * MS)
                await new_server.start()
                bob = await joined_peer(new_server.url, "bob", "room")  # bob is back first
                proxy.refusing = False

            await online(client, timeout=5)
            expected = [f"m{i}" for i in range(40)]
            if how != "server_restart":
                expected.insert(0, "before")  # the same bob, the same session
            await eventually(lambda: len(bob.texts("room", "alice")) >= len(expected), timeout=3)
            await asyncio.sleep(200 * MS)  # room for a duplicate to show up
            assert bob.texts("room", "alice") == expected
            assert client.pending == 0
            welcome = probe.of(p.ConnectionEstablished)[-1]
            assert welcome.resumed is (how != "server_restart")
            assert not probe.of(p.Error)
        finally:
            await client.stop()
            await bob.close()
            if new_server is not None:
                await new_server.stop()


async def test_outbox_limit_refuses_with_a_clear_error_and_keeps_what_it_holds():
    async with running_server(resume_grace=5) as srv, FaultProxy(srv.port) as proxy:
        bob = await joined_peer(srv.url, "bob", "room")
        probe = Probe()
        client = make_client(proxy.url, "alice", probe, outbox_limit=5)
        try:
            client.start()
            client.join("room")
            await online(client)
            await eventually(lambda: "alice" in srv.hub.channels["room"])
            proxy.refusing = True
            proxy.cut()
            await eventually(lambda: client.state is RECONNECTING)
            for i in range(5):
                client.send(chat(f"m{i}"))
            with pytest.raises(OutboxFull, match=r"^5 messages are waiting for the connection; the limit is 5$"):
                client.send(chat("one too many"))
            assert client.pending == 5
            proxy.refusing = False
            await online(client)
            await eventually(lambda: len(bob.texts("room", "alice")) >= 5)
            await asyncio.sleep(100 * MS)
            assert bob.texts("room", "alice") == [f"m{i}" for i in range(5)]
            client.send(chat("room again"))  # drained: accepted again
            await eventually(lambda: bob.texts("room", "alice")[-1:] == ["room again"])
        finally:
            await client.stop()
            await bob.close()


# ---------------------------------------------------------------- 5. server restart


async def test_server_restart_fresh_login_rejoins_channels_and_restores_calls_from_hello():
    config = HubConfig(**{**FAST, "resume_grace": 3})
    first = SignalingServer("127.0.0.1", 0, config=config, ping_timeout=100 * MS)
    await first.start()
    port = first.port
    second: SignalingServer | None = None
    calls: dict[str, list[p.ActiveCall]] = {"alice": [], "bob": []}
    probes = {u: Probe() for u in calls}
    clients = {u: make_client(first.url, u, probes[u], active_calls=lambda u=u: list(calls[u])) for u in calls}
    alice, bob = clients["alice"], clients["bob"]
    try:
        for c in clients.values():
            c.start()
        alice.join("team")
        alice.join("lobby")
        bob.join("team")
        await eventually(lambda: first.hub.channels == {"team": {"alice", "bob"}, "lobby": {"alice"}})
        assert first.hub.calls == {}  # nothing claimed yet
        # The app's view from here on: alice and bob are in call c1 (its media flows peer to peer).
        calls["alice"] = [p.ActiveCall(call_id="c1", peer="bob", media=("audio", "video"))]
        calls["bob"] = [p.ActiveCall(call_id="c1", peer="alice", media=("audio", "video"))]
        old_tokens = {u: c.resume_token for u, c in clients.items()}

        await first.stop()
        await eventually(lambda: alice.state is RECONNECTING and bob.state is RECONNECTING)
        alice.send(chat("while the server was away", channel="team"))
        await asyncio.sleep(300 * MS)  # a few refused retries
        second = SignalingServer("127.0.0.1", port, config=config, ping_timeout=100 * MS)
        await second.start()

        await eventually(lambda: alice.connects == bob.connects == 2, timeout=3)
        for u, c in clients.items():
            welcome = probes[u].of(p.ConnectionEstablished)[-1]
            assert welcome.resumed is False and c.resume_token == welcome.resume_token != old_tokens[u]
            assert probes[u].states[-1][:2] == (ONLINE, "")
        await eventually(lambda: second.hub.channels == {"team": {"alice", "bob"}, "lobby": {"alice"}})
        await eventually(lambda: second.hub.status("alice") == second.hub.status("bob") == "in_call")
        call = second.hub.calls["c1"]
        assert {call.caller, call.callee} == {"alice", "bob"} and call.media == ("audio", "video")
        await eventually(lambda: alice.users.get("bob") is not None and alice.users["bob"].status == "in_call")
        # The message queued during the outage went out after the rejoin: the new server took it as a member's.
        await eventually(lambda: [m.text for m in probes["alice"].of(p.ChannelMessage)] ==
                         ["while the server was away"])
        assert not probes["alice"].of(p.Error) and not probes["bob"].of(p.Error)
    finally:
        for c in clients.values():
            await c.stop()
        await first.stop()
        if second is not None:
            await second.stop()


# ---------------------------------------------------------------- 6. bad input from the server


GARBAGE: list[str | bytes] = [
    "{not json",
    "[1, 2, 3]",
    '"a string"',
    "{}",
    '{"type": 42}',
    '{"type": "no_such_type", "x": 1}',
    '{"type": "presence", "user_id": 5, "display_name": "Five", "status": "online"}',
    '{"type": "presence", "user_id": "eve", "display_name": "Eve", "status": "dancing"}',
    '{"type": "joined", "channel": "x", "members": "everyone"}',
    '{"type": "connection_established", "user_id": "alice", "resume_token": 7, "users": [], "server": {}}',
    "[" * 100_000,  # too deep to parse
    b"\x00\xffbinary frame",
]


async def test_bad_messages_from_the_server_are_logged_and_ignored(caplog):
    caplog.set_level(logging.WARNING, logger="callbox.signaling")
    connections = 0

    async def fake(ws):
        nonlocal connections
        connections += 1
        hello = json.loads(await ws.recv())
        await ws.send(p.ConnectionEstablished(
            user_id=hello["user_id"], resume_token="fake-token", users=(),
            server=p.ServerInfo(version="fake", ping_interval=10, resume_grace=30)).encode())
        for junk in GARBAGE:
            await ws.send(junk)
        await ws.send(p.Presence(user_id="bob", display_name="Bob", status="online").encode())
        await ws.wait_closed()

    async with serve(fake, "127.0.0.1", 0) as fake_server:
        port = fake_server.sockets[0].getsockname()[1]
        probe = Probe()
        client = make_client(f"ws://127.0.0.1:{port}", "alice", probe)
        try:
            client.start()
            await eventually(lambda: probe.of(p.Presence))
            await asyncio.sleep(200 * MS)  # anything that would break it has had its chance
            assert client.state is ONLINE and probe.kinds() == [CONNECTING, ONLINE]
            assert connections == 1 and client.connects == 1
            assert [m.type for m in probe.messages] == ["connection_established", "presence"]
            assert client.users == {"bob": p.UserInfo(user_id="bob", display_name="Bob", status="online")}
            ignored = [r for r in caplog.records if "ignored a bad message" in r.getMessage()]
            assert len(ignored) == len(GARBAGE)
            assert all(r.levelno == logging.WARNING for r in ignored)
            assert client.resume_token == "fake-token"
        finally:
            await client.stop()


async def test_handlers_that_raise_do_not_kill_the_client(caplog):
    async with running_server(resume_grace=5) as srv:
        probe = Probe(buggy=True)
        client = make_client(srv.url, "alice", probe)
        try:
            client.start()
            await online(client)
            bob = await Peer.connect(srv.url, "bob")
            await eventually(lambda: "bob" in client.users)  # still reading after the handlers raised
            client.drop_connection()
            await eventually(lambda: client.connects == 2)  # and still reconnecting
            await online(client)
            # Bob's arrival came in a presence_batch (the user list after each welcome is read before online).
            assert [m.type for m in probe.messages if m.type != "presence_batch"] == ["connection_established"] * 2
            assert any(isinstance(m, p.PresenceBatch) and "bob" in [u.user_id for u in m.users]
                       for m in probe.messages)
            assert probe.kinds() == [CONNECTING, ONLINE, RECONNECTING, ONLINE]
            failures = sum("handler failed" in r.getMessage() for r in caplog.records)
            assert failures == len(probe.messages) + len(probe.states)  # each one logged
            await bob.close()
        finally:
            await client.stop()
        assert client.state is OFFLINE


# ---------------------------------------------------------------- 7. fatal refusals


@pytest.mark.parametrize("case, words", [
    ("wrong_token", "token is wrong"),
    ("missing_token", "needs a token"),
    ("name_taken", "'alice' is already online"),
])
async def test_fatal_refusal_goes_offline_with_the_reason_and_does_not_retry(case, words):
    async with running_server(token="s3cret") as srv, FaultProxy(srv.port) as proxy:
        holder = await Peer.connect(srv.url, "alice", token="s3cret") if case == "name_taken" else None
        token = {"wrong_token": "nope", "missing_token": None, "name_taken": "s3cret"}[case]
        probe = Probe()
        client = make_client(proxy.url, "alice", probe, token=token)
        try:
            client.start()
            await eventually(lambda: probe.kinds()[-1:] == [OFFLINE], timeout=2)  # OFFLINE is also where it starts
            assert probe.kinds() == [CONNECTING, OFFLINE] and client.state is OFFLINE
            assert words in client.reason and probe.states[-1][1] == client.reason
            await asyncio.sleep(500 * MS)  # ten first_retry periods: a retry loop would have shown by now
            assert proxy.accepted == 1 and client.connects == 0
            assert probe.kinds() == [CONNECTING, OFFLINE]
            if holder is not None:
                assert srv.hub.status("alice") == "online"  # the one already online keeps its name
        finally:
            await client.stop()
            if holder is not None:
                await holder.close()


# ---------------------------------------------------------------- 8. connection errors in words


@contextlib.asynccontextmanager
async def unreachable(kind: str):
    """Yield (url, attempts) for a place that is no Callbox server; attempts() counts connections it saw."""
    seen = 0

    def count() -> int:
        return seen

    if kind in ("closed_port", "closed_port_two_addresses"):
        with socket.socket() as sock:  # bound, never listening: connecting is refused
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            if kind == "closed_port":
                yield f"ws://127.0.0.1:{port}", None
                return
            # A name with two addresses, as "localhost" often has (::1 and 127.0.0.1): asyncio folds the two
            # refusals into one "Multiple exceptions" OSError.
            loop = asyncio.get_running_loop()
            real = loop.getaddrinfo

            async def two_addresses(host, port_, *args, **kwargs):
                if host != "twohomes.test":
                    return await real(host, port_, *args, **kwargs)
                return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (a, port_))
                        for a in ("127.0.0.1", "127.0.0.2")]

            loop.getaddrinfo = two_addresses
            try:
                yield f"ws://twohomes.test:{port}", None
            finally:
                del loop.getaddrinfo
        return
    if kind == "unresolvable":
        # Resolution is faked, so the test sends no DNS query off this machine.
        loop = asyncio.get_running_loop()
        real = loop.getaddrinfo

        async def no_such_name(host, port_, *args, **kwargs):
            if host != "callbox-test.invalid":
                return await real(host, port_, *args, **kwargs)
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

        loop.getaddrinfo = no_such_name
        try:
            yield "ws://callbox-test.invalid:8765", None
        finally:
            del loop.getaddrinfo
        return

    async def plain_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal seen
        seen += 1
        with contextlib.suppress(Exception):
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
            if kind == "plain_http":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 13\r\n\r\n<h1>hello</h1>")
            else:
                writer.write(b"SSH-2.0-OpenSSH_9.2\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(plain_http, "127.0.0.1", 0)
    try:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}", count
    finally:
        server.close()


@pytest.mark.parametrize("kind, words", [
    ("closed_port", "refused"),
    ("closed_port_two_addresses", "refused"),
    ("unresolvable", "not found"),
    ("plain_http", "did not answer as a Callbox server (server rejected WebSocket connection: HTTP 200)"),
    ("not_http", "did not answer as a Callbox server"),
])
async def test_connection_errors_read_as_sentences_and_the_client_keeps_trying(kind, words, caplog):
    caplog.set_level(logging.INFO, logger="callbox.signaling")
    retries = lambda: sum("retry" in r.getMessage() for r in caplog.records)
    async with unreachable(kind) as (url, attempts):
        probe = Probe()
        client = make_client(url, "alice", probe)
        try:
            client.start()
            await eventually(lambda: client.state is RECONNECTING)
            assert words in client.reason, client.reason
            assert "Errno" not in client.reason and "Multiple exceptions" not in client.reason
            await eventually(lambda: retries() >= 3, timeout=3)
            if attempts is not None:
                await eventually(lambda: attempts() >= 3)
            assert client.state is RECONNECTING and client.connects == 0
            assert probe.kinds() == [CONNECTING, RECONNECTING]  # one state change; the same reason each retry
        finally:
            await client.stop()
        assert client.state is OFFLINE
        settled = retries()
        await asyncio.sleep(300 * MS)
        assert retries() == settled  # stopped means stopped


async def test_a_server_that_took_the_connection_gets_the_upgrade_deadline_to_answer_not_the_connect_one(
        monkeypatch):
    """TCP up means the server is alive: in a reconnect storm its answer to the opening handshake can take longer
    than a dead address is given, and the client waits for it rather than give up and come back to ask again."""
    monkeypatch.setattr(signaling, "CONNECT_TIMEOUT", 0.3)
    monkeypatch.setattr(signaling, "UPGRADE_TIMEOUT", 3.0)
    delay = 1.0

    async def slow(connection, request) -> None:
        await asyncio.sleep(delay)

    loop = asyncio.get_running_loop()
    async with serve(lambda ws: ws.wait_closed(), "127.0.0.1", 0, process_request=slow) as server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        ws = await signaling.open_connection(url)  # answered after 1 s: past CONNECT_TIMEOUT, within the upgrade's
        await ws.close()
        delay, began = 60.0, loop.time()
        with pytest.raises(TimeoutError):
            await signaling.open_connection(url)
        assert loop.time() - began >= 3.0  # the upgrade's deadline, not the connect's


# ---------------------------------------------------------------- 9. random faults


def wrote_at(sent_at: float, state: ConnState, states: list[tuple[ConnState, str, float]]) -> float:
    """When a message went onto a socket: at once if online, else when the client was next online."""
    if state is ONLINE:
        return sent_at
    return next((t for s, _, t in states if s is ONLINE and t >= sent_at), float("inf"))


async def test_random_delays_stalls_and_cuts_keep_order_and_never_lose_a_queued_message():
    """20 seeded faults. Afterwards every message arrived exactly once and in order: those queued while offline,
    and those on the wire when the connection was cut (resent after the resume)."""
    faults = random.Random(1)
    pacing = random.Random(2)
    kinds = ["delay", "stall", "cut", "stall_cut"] * 5
    faults.shuffle(kinds)
    loop = asyncio.get_running_loop()
    # The server's own keepalive is slower than the longest stall, so a stall alone never kills a connection at
    # the server; the client's 250 ms keepalive does notice the longer stalls and reconnects.
    async with running_server(resume_grace=5, ping_interval=1, ping_timeout=1) as srv, \
            FaultProxy(srv.port) as proxy:
        bob = await joined_peer(srv.url, "bob", "room")
        probe = Probe()
        client = make_client(proxy.url, "alice", probe, ping_interval=250 * MS)
        sent: list[tuple[int, float, ConnState]] = []
        at_risk_windows: list[tuple[float, float]] = []
        done = asyncio.Event()

        async def sender() -> None:
            for seq in range(2000):  # bounded; ends when the faults are over
                if done.is_set():
                    return
                sent.append((seq, loop.time(), client.state))
                client.send(chat(str(seq)))
                await asyncio.sleep(pacing.uniform(5 * MS, 30 * MS))

        try:
            client.start()
            client.join("room")
            await online(client)
            await eventually(lambda: "alice" in srv.hub.channels["room"])
            sending = asyncio.create_task(sender())
            started = loop.time()
            async with asyncio.timeout(15):
                for kind in kinds:
                    if kind == "delay":
                        proxy.delay = faults.uniform(10 * MS, 80 * MS)
                        await asyncio.sleep(faults.uniform(100 * MS, 300 * MS))
                        proxy.delay = 0
                    elif kind == "stall":
                        proxy.stall()
                        await asyncio.sleep(faults.uniform(50 * MS, 600 * MS))
                        proxy.unstall()
                    elif kind == "cut":
                        proxy.delay = faults.choice([0, faults.uniform(10 * MS, 50 * MS)])
                        await asyncio.sleep(faults.uniform(0, 100 * MS))
                        at_risk_windows.append((loop.time() - proxy.delay, loop.time()))
                        proxy.cut()
                        proxy.delay = 0
                        proxy.refusing = faults.random() < 0.5
                        await asyncio.sleep(faults.uniform(0, 300 * MS))
                        proxy.refusing = False
                    else:
                        stalled = loop.time()
                        proxy.stall()
                        await asyncio.sleep(faults.uniform(50 * MS, 400 * MS))
                        at_risk_windows.append((stalled, loop.time()))
                        proxy.cut()
                        proxy.unstall()
                    await online(client, timeout=5)  # it always comes back
                    await asyncio.sleep(faults.uniform(50 * MS, 200 * MS))
                done.set()
                await sending
                client.send(chat("last"))
                await eventually(lambda: bob.texts("room", "alice")[-1:] == ["last"], timeout=5)
            elapsed = loop.time() - started
            await asyncio.sleep(200 * MS)

            got = [int(t) for t in bob.texts("room", "alice")[:-1]]
            assert got == [seq for seq, _, _ in sent], "lost, reordered or duplicated"
            # Messages that went onto the socket shortly before a cut (the proxy held them, or the client had not
            # yet seen the reset) were lost with the connection and resent: 50 ms either side of each window.
            at_risk = {seq for seq, t, state in sent
                       if any(a - 50 * MS <= wrote_at(t, state, probe.states) <= b + 50 * MS
                              for a, b in at_risk_windows)}
            queued = {seq for seq, _, state in sent if state is not ONLINE}
            assert len(queued) >= 10, "the faults never made the client queue anything"
            assert len(at_risk) >= 10, "the faults never caught a message on the wire"
            print(f"\nchaos: {len(sent)} sent, {len(queued)} queued while offline, {len(at_risk)} on the wire at "
                  f"a cut, all delivered once; {client.connects} sessions, {proxy.cuts} cuts, {elapsed:.1f} s")
            # every reconnect resumed the session; others never saw alice offline
            assert client.connects >= 11  # 10 cuts, plus the stalls the keepalive gave up on
            assert all(w.resumed for w in probe.of(p.ConnectionEstablished)[1:])
            assert "offline" not in bob.statuses("alice") and srv.hub.status("alice") == "online"
            assert client.state is ONLINE and client.pending == 0
        finally:
            done.set()
            await client.stop()
            await bob.close()


@contextlib.asynccontextmanager
async def alice_through_a_proxy():
    """Bob on the server directly, alice through a fault proxy, both in channel "room"."""
    async with running_server(resume_grace=5) as srv, FaultProxy(srv.port) as proxy:
        bob = await joined_peer(srv.url, "bob", "room")
        probe = Probe()
        client = make_client(proxy.url, "alice", probe)
        try:
            client.start()
            client.join("room")
            await online(client)
            await eventually(lambda: "alice" in srv.hub.channels["room"])
            yield srv, proxy, bob, probe, client
        finally:
            await client.stop()
            await bob.close()


async def test_message_on_the_wire_at_a_cut_is_resent_once():
    """The server says how many messages it received (connection_established.received); the client resends
    exactly those it sent after that, so a frame lost with the connection arrives once, in order."""
    async with alice_through_a_proxy() as (srv, proxy, bob, probe, client):
        proxy.stall()
        client.send(chat("on the wire"))
        await eventually(lambda: client.pending == 0)  # the socket took it; the stalled path holds it
        proxy.cut()
        proxy.unstall()
        await eventually(lambda: client.connects == 2)
        client.send(chat("after"))
        await eventually(lambda: "after" in bob.texts("room", "alice"))
        assert bob.texts("room", "alice") == ["on the wire", "after"]


async def test_a_message_the_server_wrote_into_a_dead_socket_is_replayed_once():
    """The other direction: the client says in hello how many messages it got; the server replays the rest."""
    async with alice_through_a_proxy() as (srv, proxy, bob, probe, client):
        proxy.stall()  # the server's frames to alice now die in the proxy
        await bob.peer.send({"type": "channel_message", "channel": "room", "text": "into the void"})
        await eventually(lambda: srv.hub.sessions["alice"].replay.sent >= 2)  # joined, then the chat line
        proxy.cut()
        proxy.unstall()
        await eventually(lambda: client.connects == 2)
        await bob.peer.send({"type": "channel_message", "channel": "room", "text": "next"})
        await eventually(lambda: any(m.text == "next" for m in probe.of(p.ChannelMessage)))
        assert [m.text for m in probe.of(p.ChannelMessage)] == ["into the void", "next"]
        assert probe.of(p.ConnectionEstablished)[1].resumed


async def test_acks_keep_both_replay_logs_small_while_connected_and_an_older_server_is_left_alone(monkeypatch):
    """A connected client acks what it got (ACK_EVERY messages, or ACK_AFTER seconds after one): the server's
    replay log of it empties, and the server's own ack trims the client's kept frames."""
    monkeypatch.setattr(signaling, "ACK_AFTER", 0.2)
    async with running_server(rate=0) as srv:
        probe = Probe()
        client = make_client(srv.url, "alice", probe)
        client.start()
        bob = await Peer.connect(srv.url, "bob")
        await eventually(lambda: client.state is ONLINE)
        for i in range(250):
            await bob.send({"type": "chat", "to": "alice", "id": f"m{i}", "text": f"line {i}"})
            client.send(p.Chat(to="bob", id=f"r{i}", text="back"))
        await eventually(lambda: len(probe.of(p.Chat)) == 250)
        log = srv.hub.sessions["alice"].replay
        await eventually(lambda: not log.entries, timeout=3)  # every chat line acked: nothing kept for alice
        assert log.sent == 250 and srv.hub.replay.used == srv.hub.sessions["bob"].replay.bytes
        await eventually(lambda: not client._unconfirmed, timeout=3)  # and the server acked her 250
        assert srv.hub.sessions["alice"].received == 250  # her acks are not counted as frames
        await client.stop()
        await bob.ws.close()

    # A server that predates ack refuses it with unknown_type once; the client stops sending it there.
    after: list[str] = []

    async def older_server(ws):
        hello = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "connection_established", "user_id": hello["user_id"], "resume_token": "t",
                                  "users": [], "server": {"version": "0.0.1", "ping_interval": 10,
                                                          "resume_grace": 30}, "resumed": False, "received": 0}))
        chat = {"type": "chat", "id": "x", "text": "hi", "from": "bob", "ts": 1.0}
        await ws.send(json.dumps(chat))
        assert json.loads(await asyncio.wait_for(ws.recv(), 3))["type"] == "ack"
        await ws.send(json.dumps({"type": "error", "code": "unknown_type", "ref": "ack",
                                  "message": "unknown message type 'ack'"}))
        await ws.send(json.dumps(chat))
        with contextlib.suppress(TimeoutError):
            while True:  # past ACK_AFTER: an ack would come now
                after.append(json.loads(await asyncio.wait_for(ws.recv(), 1.0))["type"])

    async with serve(older_server, "127.0.0.1", 0) as server:
        probe = Probe()
        client = make_client(f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}", "alice", probe)
        client.start()
        await eventually(lambda: len(probe.of(p.Chat)) == 2, timeout=3)
        client.send(p.Chat(to="bob", id="y", text="still fine"))
        await asyncio.sleep(1.5)
        assert after == ["chat"] and not client._acks
        assert not probe.of(p.Error)  # the refusal is not the app's business
        await client.stop()


async def test_the_real_client_logs_in_among_5000_users_with_64_character_names():
    """The user list comes after the welcome in presence_batch frames of at most 64 KiB, so it fits the client's
    256 KiB frame limit however many there are (in one frame it would be about 600 KiB here)."""
    async with running_server(resume_grace=600) as srv:
        hub = srv.hub
        name = "Ünïcødé-" + "n" * 55  # 64 characters, some of them two bytes in UTF-8
        now = asyncio.get_running_loop().time()  # the transport's clock
        for i in range(5000):  # 5,000 sessions, put straight into the hub: reconnecting ones, with their names
            conn = ("stand-in", i)
            hub.open(conn, now)
            hub.receive(conn, json.dumps({"type": "hello", "protocol": 1, "user_id": f"user{i:04d}",
                                          "display_name": f"{name}{i % 10}", "presence_batch": True}), now)
            hub.connection_lost(conn, now)
        probe = Probe()
        client = make_client(srv.url, "alice", probe)
        client.start()
        try:
            await eventually(lambda: client.state is ONLINE, timeout=10)
            assert len(client.users) == 5000  # whole the moment it says it is online
            assert {u.display_name for u in client.users.values()} == {f"{name}{d}" for d in range(10)}
            assert all(u.status == "reconnecting" for u in client.users.values())
            [welcome] = probe.of(p.ConnectionEstablished)
            assert welcome.users == () and welcome.users_follow >= 10  # 5,000 × ~120 bytes, in ≤ 64 KiB frames
        finally:
            await client.stop()
