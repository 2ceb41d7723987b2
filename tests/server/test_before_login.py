"""Nothing before login can sink the server: hello timeout, small frames, unread limit on every write, caps."""

import asyncio
import logging
import os
import re
import resource
import socket
import sys

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from server.transport import PRE_LOGIN_WRITE_LIMIT
from tests.support import MS, Peer, eventually, running_server


async def test_a_connection_that_never_says_hello_is_closed():
    async with running_server(hello_timeout=300 * MS) as srv:
        idle = await Peer.connect(srv.url, "idle", hello=False)
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert await idle.closed(timeout=2) == (1008, "no hello in time")
        assert 0.25 < loop.time() - start < 1.5
        assert idle.backlog[0]["code"] == "not_authenticated" and "no hello within 0.3 s" in idle.backlog[0]["message"]
        await eventually(lambda: srv.connections == 0)
        late = await Peer.connect(srv.url, "late", hello=False)  # the timeout is per connection, from its start
        await asyncio.sleep(100 * MS)
        assert (await late.hello())["type"] == "connection_established"
        await asyncio.sleep(400 * MS)
        assert srv.hub.status("late") == "online"  # logged in: the timeout no longer applies


async def test_a_hello_that_waits_its_turn_in_a_storm_of_logins_is_not_timed_out_for_the_wait(monkeypatch):
    """In a storm a hello may wait for its turn (server.turns): that wait is the server's, not the client's, and
    the connection's deadline for a hello does not count it."""
    async with running_server(hello_timeout=300 * MS) as srv:
        async def a_long_turn() -> float:
            await asyncio.sleep(600 * MS)
            return 0.6

        monkeypatch.setattr(srv._turns, "wait", a_long_turn)
        alice = await Peer.connect(srv.url, "alice", hello=False)
        assert (await alice.hello())["type"] == "connection_established"  # 600 ms after the hello: past 300 ms
        again = await Peer.connect(srv.url, "alice", hello=False)
        assert (await again.hello())["code"] == "name_taken"  # a hello that failed, after its long turn...
        again.user_id = "bob"
        assert (await again.hello())["type"] == "connection_established"  # ...leaves time for another
        assert srv.hub.status("alice") == srv.hub.status("bob") == "online"
        idle = await Peer.connect(srv.url, "idle", hello=False)  # one that never says hello is still closed
        assert await idle.closed(timeout=2) == (1008, "no hello in time")


async def test_an_unfinished_fragmented_message_before_hello_is_cut_at_8_kib(server):
    ws = await connect(server.url, ping_interval=None)
    sent = 0

    async def fragments():
        nonlocal sent
        for _ in range(20):  # 80 KiB if nothing stopped it
            sent += 4096
            yield "x" * 4096
            await asyncio.sleep(10 * MS)

    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(3):
            await ws.send(fragments())
            await ws.recv()
    await ws.wait_closed()
    assert ws.close_code == 1009
    assert sent <= 16 * 1024
    await eventually(lambda: server.connections == 0)


async def test_a_big_frame_before_hello_is_refused_but_after_hello_is_not(server):
    early = await Peer.connect(server.url, "early", hello=False)
    await early.send("x" * 20_000)
    assert (await early.closed())[0] == 1009
    alice, bob = await Peer.connect(server.url, "alice"), await Peer.connect(server.url, "bob")
    await alice.call(bob)
    await alice.send({"type": "webrtc_offer", "to": "bob", "call_id": "c1", "sdp": "v=0 " + "x" * 60_000})
    assert len((await bob.expect("webrtc_offer"))["sdp"]) == 60_004


async def _raw_websocket(port: int, rcvbuf: int = 4096) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket opened by hand on a socket with a small receive buffer, so what it leaves unread piles up
    at the server quickly."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    assert head.startswith(b"HTTP/1.1 101")
    return reader, writer


PING = bytes([0x89, 0x80 | 125, 0, 0, 0, 0]) + b"p" * 125  # a masked ping, mask 0, 125 bytes of payload


async def test_a_ping_flood_that_never_reads_is_dropped_at_the_unread_limit():
    """The library answers pings itself: the unread limit must hold there too, not only for our messages."""
    async with running_server(ping_interval=10, ping_timeout=10) as srv:
        alice, bob = await Peer.connect(srv.url, "alice"), await Peer.connect(srv.url, "bob")
        await alice.call(bob)
        reader, writer = await _raw_websocket(srv.port)
        writer.transport.pause_reading()  # never read a pong
        flooder = next(c for c in srv.hub.conns if c.remote_address[1] == writer.get_extra_info("sockname")[1])
        most = 0
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(ConnectionError):
            while loop.time() - start < 5:
                writer.write(PING * 200)
                await writer.drain()
                most = max(most, flooder.transport.get_write_buffer_size())
        assert most <= PRE_LOGIN_WRITE_LIMIT + 64 * 1024
        await eventually(lambda: flooder not in srv.hub.conns)
        assert loop.time() - start < 5
        await alice.send({"type": "webrtc_ice_candidate", "to": "bob", "call_id": "c1", "candidate": "x"})
        assert (await bob.expect("webrtc_ice_candidate"))["candidate"] == "x"


async def test_connections_waiting_to_log_in_are_capped_per_address_and_overall(caplog):
    caplog.set_level(logging.WARNING, "callbox.server")
    async with running_server(max_unauthenticated=8, max_unauthenticated_per_ip=5) as srv:
        first = [await Peer.connect(srv.url, f"a{i}", hello=False) for i in range(5)]
        for _ in range(20):
            with pytest.raises(InvalidStatus) as refused:
                await connect(srv.url, ping_interval=None)
            assert refused.value.response.status_code == 503
        assert b"connections from 127.0.0.1 are waiting to log in" in refused.value.response.body
        others = [Peer(await connect(srv.url, ping_interval=None, local_addr=("127.0.0.2", 0)), f"b{i}")
                  for i in range(3)]
        with pytest.raises(InvalidStatus) as refused:
            await connect(srv.url, ping_interval=None, local_addr=("127.0.0.3", 0))
        assert b"more than 8 connections are waiting to log in" in refused.value.response.body
        lines = [r for r in caplog.records if "refusing new connections" in r.getMessage()]
        assert 1 <= len(lines) <= 3  # one line a second, not one per refusal
        # Logging in frees a place.
        await first[0].hello()
        assert (await Peer.connect(srv.url, "c0")).welcome["type"] == "connection_established"
        for p in first[1:] + others:
            await p.close()


async def test_connections_not_yet_through_their_handshake_do_not_count_against_the_caps():
    """In a storm thousands are accepted before their requests are read. Only those let through count, in the
    order their requests come, so the caps refuse the surplus and not everyone."""
    async with running_server(max_unauthenticated=2, max_unauthenticated_per_ip=2) as srv:
        silent = [await asyncio.open_connection("127.0.0.1", srv.port) for _ in range(5)]  # no request yet
        await eventually(lambda: len(srv.admission.open) == 5)
        waiting = [await Peer.connect(srv.url, f"a{i}", hello=False) for i in range(2)]  # let through
        with pytest.raises(InvalidStatus) as refused:
            await connect(srv.url, ping_interval=None)  # a third waiting to log in is one too many
        assert refused.value.response.status_code == 503
        for peer in waiting:
            assert (await peer.hello())["type"] == "connection_established"
        for _, writer in silent:
            writer.close()


def _low_fd_limit(soft: int, hard: int):
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def _start_subprocess_server(*args: str, soft: int, hard: int):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "--port", "0", *args, stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL, preexec_fn=_low_fd_limit(soft, hard), cwd=os.getcwd())
    async with asyncio.timeout(10):
        while True:
            line = (await proc.stderr.readline()).decode()
            assert line, "server exited before it was ready"
            if m := re.search(r"listening on (ws://\S+)", line):
                break
    log: list[bytes] = []

    async def drain() -> None:  # a full pipe would stall the server's logging, and the server with it
        while chunk := await proc.stderr.read(65536):
            log.append(chunk)

    proc.log, proc.drain = log, asyncio.create_task(drain())
    return proc, m.group(1)


async def test_running_out_of_open_files_refuses_newcomers_with_a_line_a_second():
    proc, url = await _start_subprocess_server("--max-unauthenticated", "0", "--max-unauthenticated-per-ip", "0",
                                               soft=300, hard=300)
    port = int(url.rsplit(":", 1)[1])
    socks = []
    try:
        loop = asyncio.get_running_loop()
        for _ in range(400):  # each holds a connection that never logs in; the server can hold 136
            s = socket.socket()
            s.setblocking(False)
            await loop.sock_connect(s, ("127.0.0.1", port))
            socks.append(s)
        await asyncio.sleep(1.0)
        assert proc.returncode is None
        for s in socks:
            s.close()
        socks.clear()
        await asyncio.sleep(0.5)
        async with asyncio.timeout(5):
            async with connect(url) as ws:
                await ws.send('{"type":"hello","protocol":1,"user_id":"alice","display_name":"A"}')
                assert '"connection_established"' in await ws.recv()
    finally:
        for s in socks:
            s.close()
        proc.terminate()
        await proc.wait()
    await proc.drain
    log = b"".join(proc.log).decode()
    assert "Traceback" not in log and "out of system resource" not in log
    lines = log.count("refusing new connections")
    assert 1 <= lines <= 4, log[-2000:]


async def test_the_soft_open_file_limit_is_raised_at_start():
    proc, _ = await _start_subprocess_server(soft=256, hard=4096)
    try:
        limits = open(f"/proc/{proc.pid}/limits").read()
        assert re.search(r"Max open files\s+4096\s+4096", limits), limits
    finally:
        proc.terminate()
        await proc.wait()
        await proc.drain
