"""The attacks of issue 10 against a `callbox-server` subprocess on loopback, each bounded in count and time:
the server's RSS before, at its peak and after each one, and whether a call between two users survives.

    python bench/attacks.py                  # this checkout's server
    python bench/attacks.py --server-dir DIR # another checkout's (e.g. `git worktree add /tmp/base 882f3f0`)

About a minute. Figures go into the README's Security section."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import socket
import sys
import time

import psutil
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

HOST = "127.0.0.1"
MIB = 1 << 20


class Server:
    def __init__(self, proc: asyncio.subprocess.Process, url: str):
        self.proc, self.url = proc, url
        self.port = int(url.rsplit(":", 1)[1])
        self.ps = psutil.Process(proc.pid)
        self.lines = 0
        self.tracebacks = 0
        self._drain = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while line := await self.proc.stderr.readline():
            self.lines += 1
            self.tracebacks += line.startswith(b"Traceback")

    def rss(self) -> float:
        return self.ps.memory_info().rss / MIB

    async def stop(self) -> None:
        self.proc.terminate()
        await self.proc.wait()
        await self._drain


async def start(server_dir: str, *args: str, nofile: int | None = None) -> Server:
    def limit() -> None:
        if nofile:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "server", "--port", "0", *args,
                                                cwd=server_dir, stderr=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.DEVNULL, preexec_fn=limit)
    while True:
        line = (await proc.stderr.readline()).decode()
        if not line:
            raise SystemExit("the server did not start")
        if m := re.search(r"listening on (ws://\S+)", line):
            return Server(proc, m.group(1))


async def watch_peak(server: Server, stop: asyncio.Event) -> float:
    peak = 0.0
    while not stop.is_set():
        peak = max(peak, server.rss())
        await asyncio.sleep(0.05)
    return max(peak, server.rss())


async def measured(name: str, server: Server, attack) -> dict:
    before = server.rss()
    stop = asyncio.Event()
    peak_task = asyncio.create_task(watch_peak(server, stop))
    t0 = time.monotonic()
    try:
        detail = await attack(server)
    finally:
        stop.set()
    peak = await peak_task
    row = {"attack": name, "rss_before": round(before, 1), "rss_peak": round(peak, 1),
           "rss_after": round(server.rss(), 1), "seconds": round(time.monotonic() - t0, 1), **detail}
    print(json.dumps(row), flush=True)
    return row


HELLO = {"type": "hello", "protocol": 1, "display_name": "X"}


async def login(url: str, user: str, **fields) -> object:
    ws = await connect(url, ping_interval=None, max_size=None)
    await ws.send(json.dumps({**HELLO, "user_id": user, **fields}))
    reply = json.loads(await ws.recv())
    assert reply["type"] == "connection_established", reply
    return ws


async def raw_ws(port: int, rcvbuf: int | None = None):
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (HOST, port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    return reader, writer, head.split(b" ", 2)[1].decode()


def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    head += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big") if n < 65536 else \
        bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload  # mask 0: the payload goes as is


async def idle_connections(server: Server) -> dict:
    """2,000 connections that never send hello, held 12 s."""
    got, refused, conns = 0, 0, []
    for _ in range(2000):
        try:
            conns.append(await raw_ws(server.port))
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            refused += 1
            continue
        if conns[-1][2] == "101":
            got += 1
        else:
            refused += 1
    await asyncio.sleep(12)
    still = 0
    for reader, writer, status in conns:
        if status == "101":
            try:
                await asyncio.wait_for(reader.read(), 0.05)  # returns at EOF: the server closed it
            except TimeoutError:
                still += 1
        writer.transport.abort()
    return {"opened": got, "refused": refused, "still_open_after_12s": still}


async def fragments(server: Server) -> dict:
    """100 connections, each sending an unfinished message of 14 x 64 KiB fragments, held 3 s."""
    conns, cut = [], 0
    chunk = frame(0x1, b"x" * 65536, fin=False)
    cont = frame(0x0, b"x" * 65536, fin=False)
    for _ in range(100):
        try:
            reader, writer, status = await raw_ws(server.port)
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            cut += 1
            continue
        conns.append(writer)
        if status != "101":
            cut += 1
            continue
        try:
            writer.write(chunk + cont * 13)
            await writer.drain()
        except OSError:
            cut += 1
    await asyncio.sleep(3)
    for w in conns:
        w.transport.abort()
    return {"connections": len(conns), "cut_or_refused": cut}


async def ping_flood(server: Server) -> dict:
    """One connection floods pings for up to 10 s and never reads a pong."""
    reader, writer, _ = await raw_ws(server.port, rcvbuf=4096)
    writer.transport.pause_reading()
    ping = frame(0x9, b"p" * 125) * 500
    t0 = time.monotonic()
    dropped = None
    while time.monotonic() - t0 < 10:
        try:
            writer.write(ping)
            await writer.drain()
        except OSError:
            dropped = round(time.monotonic() - t0, 2)
            break
    writer.transport.abort()
    return {"dropped_after_s": dropped}


async def replay(server: Server) -> dict:
    """4 callers each send 1,000 offers of 61,440 characters to a callee that reads them."""
    async def pair(i: int) -> None:
        a, b = await login(server.url, f"a{i}"), await login(server.url, f"b{i}")
        await a.send(json.dumps({"type": "call_incoming", "to": f"b{i}", "call_id": f"c{i}", "media": ["audio"]}))
        reader = asyncio.create_task(read_forever(b))
        await asyncio.sleep(0.2)
        await b.send(json.dumps({"type": "call_accepted", "to": f"a{i}", "call_id": f"c{i}"}))
        offer = json.dumps({"type": "webrtc_offer", "to": f"b{i}", "call_id": f"c{i}", "sdp": "x" * 61_440})
        for _ in range(1000):
            await a.send(offer)
            await asyncio.sleep(0.011)  # under the default rate limit (100/s)
        await asyncio.sleep(1)
        reader.cancel()
        holders.append((a, b))

    holders: list = []
    await asyncio.gather(*(pair(i) for i in range(4)))
    rss_connected = server.rss()
    for a, b in holders:
        await a.close()
        await b.close()
    return {"rss_while_connected": round(rss_connected, 1)}


async def read_forever(ws) -> None:
    while True:
        await ws.recv()


async def channel_flood(server: Server) -> dict:
    """Alice and bob in a call; bob and 10 senders in a channel; the senders flood it while bob stops reading
    for 3 s. Does bob keep his session and his call?"""
    alice = await login(server.url, "alice")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (HOST, server.port))
    bob = await connect(server.url, sock=sock, ping_interval=None, max_size=None)
    await bob.send(json.dumps({**HELLO, "user_id": "bob"}))
    await bob.recv()
    await alice.send(json.dumps({"type": "call_incoming", "to": "bob", "call_id": "c", "media": ["audio"]}))
    await asyncio.sleep(0.2)
    await bob.send(json.dumps({"type": "call_accepted", "to": "alice", "call_id": "c"}))
    await bob.send(json.dumps({"type": "join", "channel": "f"}))
    senders = [await login(server.url, f"s{i}") for i in range(10)]
    for s in senders:
        await s.send(json.dumps({"type": "join", "channel": "f"}))
    readers = [asyncio.create_task(read_forever(s)) for s in senders + [alice]]
    await asyncio.sleep(0.3)
    bob.transport.pause_reading()

    async def flood(s) -> None:
        msg = json.dumps({"type": "channel_message", "channel": "f", "text": "f" * 4000})
        end = time.monotonic() + 3
        while time.monotonic() < end:
            await s.send(msg)
            await asyncio.sleep(0.01)

    await asyncio.gather(*(flood(s) for s in senders))
    bob.transport.resume_reading()
    kinds: dict[str, int] = {}
    ended = False
    try:
        while True:
            m = json.loads(await asyncio.wait_for(bob.recv(), 1.5))
            kinds[m["type"]] = kinds.get(m["type"], 0) + 1
            ended |= m["type"] == "call_ended"
    except Exception:
        pass
    bob_alive = bob.state.name == "OPEN"
    for t in readers:
        t.cancel()
    for ws in senders + [alice, bob]:
        await ws.close()
    return {"bob_connection_kept": bob_alive, "call_ended": ended, "gap_markers": kinds.get("channel_gap", 0),
            "channel_messages_got": kinds.get("channel_message", 0)}


async def guesses(server: Server) -> dict:
    """Wrong tokens from one client for 3 s."""
    t0 = time.monotonic()
    tried = checked = 0
    while time.monotonic() - t0 < 3:
        try:
            async with connect(server.url, ping_interval=None) as ws:
                await ws.send(json.dumps({**HELLO, "user_id": "mallory", "token": "guess"}))
                reply = json.loads(await ws.recv())
        except (InvalidStatus, OSError):
            continue
        tried += 1
        checked += "too many" not in reply.get("message", "")
    took = time.monotonic() - t0
    return {"attempts_per_s": round(tried / took), "tokens_checked_per_s": round(checked / took, 1)}


async def origin(server: Server) -> dict:
    try:
        async with connect(server.url, origin="http://evil.example", ping_interval=None):
            return {"evil_origin": "accepted"}
    except InvalidStatus as exc:
        return {"evil_origin": f"refused {exc.response.status_code}"}


async def fd_exhaustion(server: Server) -> dict:
    """1,500 connections against a server whose open-file limit is 1024; then can a user log in?"""
    socks = []
    for _ in range(1500):
        s = socket.socket()
        s.setblocking(False)
        try:
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(s, (HOST, server.port)), 1)
            socks.append(s)
        except (OSError, TimeoutError):
            s.close()
    await asyncio.sleep(5)
    for s in socks:
        s.close()
    await asyncio.sleep(1.5)
    try:
        ws = await asyncio.wait_for(login(server.url, "after"), 5)
        await ws.close()
        served = True
    except Exception:
        served = False
    return {"log_lines": server.lines, "tracebacks": server.tracebacks, "serves_again": served}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server-dir", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ap.add_argument("--only", nargs="*")
    args = ap.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    plan = [("idle connections", idle_connections, (), None), ("fragments before hello", fragments, (), None),
            ("ping flood, never reading", ping_flood, (), None), ("replay buffers", replay, (), None),
            ("channel flood, stalled reader", channel_flood, (), None),
            ("token guessing", guesses, ("--token", "s3cret"), None), ("Origin", origin, (), None),
            ("open files at 1024", fd_exhaustion, (), 1024)]
    for name, attack, extra, nofile in plan:
        if args.only and attack.__name__ not in args.only:
            continue
        server = await start(args.server_dir, *extra, nofile=nofile)
        try:
            await asyncio.sleep(0.5)
            await measured(name, server, attack)
        finally:
            await server.stop()


if __name__ == "__main__":
    asyncio.run(main())
