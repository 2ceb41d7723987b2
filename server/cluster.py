"""One node of a cluster on a shared Redis: its heartbeat, the users' directory, and what goes between nodes.

The hub keeps the rules. It hands out Forward (a frame for a user on another node) and Announce (its users'
presence), and takes back remote_presence, node_lost and forwarded. What lives in Redis, all under `callbox:`:

  nodes          SET     the node ids of the cluster
  node:<id>      STRING  a node's heartbeat: set every HEARTBEAT seconds, expires after NODE_TTL
  users:<id>     HASH    user id -> that node's member record (presence, the resume token's hash, session start)
  inbox:<id>     STREAM  everything for that node, in the order it was written: frames for its users, channel
                         messages for its users' rooms, and the other nodes' presence changes (with each
                         user's rooms and room call, from which a node keeps its copy of every room)
  session:<user> HASH    a session as another node resumes it: its token, name, counts, rooms, and which node
                         holds it and in which stream
  replay:<node>:<tag>    STREAM  the messages to one session not yet confirmed by its client, entry id = number
  sessions:<id>  SET     the users whose session record that node wrote (so a dead node's can be cleared)
  bindings       HASH    user id -> the identity key that owns it, for every node (each keeps a copy in its own
                         --data-dir, brought up to date before each hello)

Exactly once across nodes: every message to a user is in its replay stream before it is written to the user's
socket (the sends of a turn of the loop wait for that turn's pipeline), and the count of what the client sent
is written with it. A node that takes over a session after its node died replays exactly what was not
confirmed, as the old node would have.

One stream per node, and not pub/sub:
- a node that loses Redis for a moment reads on from where it was, so a blip loses nothing;
- what one node writes to another arrives in the order it was written, a presence change and the call that
  follows it included.
What a node writes while Redis is unreachable waits in memory (at most HELD writes) and goes out when Redis is
back. The node then writes its users afresh and reads the others' again: a resync. It does the same after a Redis
restart that lost the data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable

import orjson

from shared import protocol as p

from .hub import Action, Announce, Bound, Forward, Hub, Keep, Member, RoomFrame

log = logging.getLogger("callbox.cluster")

PREFIX = "callbox:"
HEARTBEAT = 1.0  # seconds between a node's heartbeats
NODE_TTL = 3.0  # a node whose heartbeat is older than this is gone
INBOX_LEN = 10_000  # entries an inbox keeps, about (XADD MAXLEN ~)
HELD = 100_000  # writes held while Redis is unreachable; past it the oldest are dropped (and logged)
BLOCK_MS = 1000  # how long a read waits for new entries
READ_COUNT = 1000  # entries read at once
# Binds a user id to a key unless it is bound already ("" marks one released by callbox-server --forget).
BIND = """
local bound = redis.call('HGET', KEYS[1], ARGV[1])
if not bound or bound == '' then return redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 0
"""
# Removes a session record, and its replay stream, only if this node still holds it: one that moved on is not.
FORGET = """
if redis.call('HGET', KEYS[1], 'node') == ARGV[1] then
  local stream = redis.call('HGET', KEYS[1], 'replay')
  if stream and stream ~= '' then redis.call('DEL', stream) end
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class ClusterError(Exception):
    """The cluster cannot be joined as asked (a Redis URL that does not parse, redis-py missing)."""


def _connect(url: str, *, sync: bool = False, **options):
    """A redis-py client (asyncio, or with `sync` blocking) for this URL; ClusterError if either is wrong."""
    try:
        import redis
        import redis.asyncio
    except ImportError:
        raise ClusterError("--redis needs the redis package: pip install 'callbox[redis]'") from None
    try:
        return (redis.Redis if sync else redis.asyncio.Redis).from_url(url, **options)
    except ValueError as exc:
        raise ClusterError(f"'{url}' is not a Redis URL (redis://HOST:PORT/DB): {exc}") from None


def _client(url: str):
    return _connect(url, socket_connect_timeout=1.0, socket_timeout=BLOCK_MS / 1000 + 2.0)


def forget_in_cluster(url: str, user: str) -> bool:
    """Release a user id's binding for every node (callbox-server --forget USER --redis URL)."""
    client = _connect(url, sync=True, socket_connect_timeout=2.0, socket_timeout=2.0)
    try:  # "" rather than nothing: each node drops its own copy when it sees that
        released = bool(client.hget(PREFIX + "bindings", user))
        client.hset(PREFIX + "bindings", user, "")
        return released
    except _RedisError as exc:
        raise ClusterError(f"cannot reach Redis at {url}: {exc}") from None
    finally:
        client.close()


def encode_members(members: Iterable[Member]) -> bytes:
    return orjson.dumps([[m.info.user_id, m.info.display_name, m.info.status, m.info.key, m.token_hash, m.since,
                          m.rooms, m.room_call] for m in members])


def by_user(members: Iterable[Member]) -> dict[str, bytes]:
    """Member records as a node keeps them in its users hash: user id -> the record."""
    return {m.info.user_id: encode_members([m]) for m in members}


def decode_members(raw: bytes) -> list[Member]:
    return [Member(p.UserInfo(user_id=u, display_name=n, status=s, key=k), h, since, tuple(rooms),
                   (call[0], call[1], tuple(call[2])) if call else None)
            for u, n, s, k, h, since, rooms, call in orjson.loads(raw)]


class Cluster:
    """The Redis side of one node. `start()` returns at once: Redis may come later, and the node serves its own
    users meanwhile."""

    def __init__(self, url: str, hub: Hub, apply: Callable[[list[Action]], None], *, heartbeat: float = HEARTBEAT,
                 ttl: float = NODE_TTL):
        self.url = url
        self.hub = hub
        self.apply = apply  # hands the hub's answers to the transport
        self.node = hub.config.server_id
        self.address = ""  # where this node's clients connect, written in its heartbeat (for operators)
        self.heartbeat, self.ttl = heartbeat, ttl
        self.redis = _client(url)
        self.reader = _client(url)  # its own connection: a blocking read must not hold up the writes
        self._inbox = self.key("inbox", self.node)
        self._position = b"0-0"  # the last entry read from the inbox
        self._held: list[tuple] = []  # writes not yet made: (superseded by a resync?, command, *args)
        self._after: list[Callable[[], None]] = []  # the sends waiting for the writes before them
        self._dropped = 0  # writes dropped past HELD while Redis was unreachable
        self._writer: asyncio.Task | None = None
        self._streams: dict[str, str] = {}  # user -> the replay stream this node writes for its session
        self._tasks: list[asyncio.Task] = []
        self._stopping = asyncio.Event()  # the loops end on it: redis-py can swallow a cancellation
        self._nodes: dict[str, float | None] = {}  # other nodes seen -> since when gone (None: alive)
        self._up = False  # Redis answered the last heartbeat
        self._down_since: float | None = None
        self._settle_until = 0.0  # after a resync, nodes are not judged gone until everyone had a heartbeat
        self.resyncs = 0  # how many times this node wrote its users afresh (tests read it)

    def key(self, *parts: str) -> str:
        return PREFIX + ":".join(parts)

    async def start(self, address: str) -> None:
        self.address = address
        self._tasks = [asyncio.create_task(self._beat(), name="cluster-heartbeat"),
                       asyncio.create_task(self._read(), name="cluster-read")]
        for task in self._tasks:
            task.add_done_callback(_report)

    async def stop(self) -> None:
        """Leave the cluster: what is held goes out, then the heartbeat is removed, so the other nodes take this
        node's users as reconnecting at once rather than after NODE_TTL."""
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.wait(self._tasks, timeout=2.0)
        try:
            writer = self._start_writer()
            if writer is not None:
                await asyncio.wait_for(writer, 2.0)  # everything held goes out, and the sends waiting for it
            self._run_after()
            pipe = self.redis.pipeline(transaction=False)
            pipe.delete(self.key("node", self.node), self.key("users", self.node), self._inbox)
            pipe.srem(self.key("nodes"), self.node)
            await asyncio.wait_for(pipe.execute(), 2.0)
        except (OSError, TimeoutError, _RedisError) as exc:
            log.warning("left the cluster without telling Redis: %s", exc)
        await self.redis.aclose()
        await self.reader.aclose()

    # ------------------------------------------------------------ out: the hub's actions

    def send(self, action: Forward | Keep | RoomFrame | Announce | Bound) -> None:
        if isinstance(action, Bound):
            self._hold(False, "bind", self.key("bindings"), action.user, action.key)
            return
        if isinstance(action, RoomFrame):
            for node in self._alive():
                self._hold(False, "xadd", self.key("inbox", node), {b"c": action.channel, b"t": action.text})
            return
        if isinstance(action, Keep):
            stream = self._stream(action.user, action.tag)
            self._hold(False, "xadd", stream, {b"t": action.text}, f"{action.seq}-0")
            return
        if isinstance(action, Forward):
            self._hold(False, "xadd", self.key("inbox", action.node), {b"u": action.user, b"t": action.text})
            return
        here = by_user(m for m in action.users if m.info.status != "offline")
        gone = [m.info.user_id for m in action.users if m.info.status == "offline"]
        if here:
            self._hold(True, "hset", self.key("users", self.node), None, None, here)
        if gone:
            self._hold(True, "hdel", self.key("users", self.node), *gone)
        self._tell_nodes(encode_members(action.users))

    def _tell_nodes(self, members: bytes, nodes: Iterable[str] | None = None, *, full: bool = False) -> None:
        """Presence changes into the inboxes of the other nodes (all of those alive, unless named); `full`: these
        are all of this node's users, and any other the receiver has of it is gone."""
        fields = {b"n": self.node, b"m": members, **({b"s": b"1"} if full else {})}
        for node in nodes if nodes is not None else self._alive():
            self._hold(False, "xadd", self.key("inbox", node), fields)

    def _stream(self, user: str, tag: str) -> str:
        """The replay stream of this session here; one of an earlier session of the user goes."""
        stream = self.key("replay", self.node, tag)
        old = self._streams.get(user)
        if old != stream:
            if old is not None:
                self._hold(False, "delete", old)
            self._streams[user] = stream
        return stream

    def defer(self, send: Callable[[], None]) -> None:
        """Run `send` once everything held before it is in Redis (at once while Redis is unreachable: the node
        serves its users alone then, and exactly-once across nodes waits for Redis). In order, always."""
        if not self._up and self._writer is None:
            self._run_after()
            send()
            return
        self._after.append(send)
        self._start_writer()

    def _run_after(self) -> None:
        after, self._after = self._after, []
        for send in after:
            send()

    def _start_writer(self) -> asyncio.Task | None:
        """The one writer: started if there is something to write and Redis answers, else the running one."""
        if self._writer is None and self._up:
            self._writer = asyncio.get_running_loop().create_task(self._write())
        return self._writer

    def _alive(self) -> list[str]:
        return [n for n, gone in self._nodes.items() if gone is None]

    def _hold(self, superseded: bool, *op) -> None:
        """A write for Redis, in order; `superseded`: one that a resync makes afresh (this node's users hash)."""
        self._held.append((superseded, *op))
        if len(self._held) > HELD:
            if not self._dropped:
                log.warning("redis unreachable: dropping the oldest writes past %d", HELD)
            self._dropped += len(self._held) - HELD
            del self._held[: len(self._held) - HELD]
        self._start_writer()  # everything held by the end of this turn of the loop goes out in one pipeline

    async def _write(self) -> None:
        """Everything held, in order, in pipelines (kept for the next try if Redis does not take it), each
        followed by the sends that waited for it."""
        try:
            while (self._held or self._after or self.hub.dirty) and self._up:
                self._records()
                ops, self._held = self._held, []
                after, self._after = self._after, []
                try:
                    pipe = self.redis.pipeline(transaction=False)
                    for _presence, name, *args in ops:
                        if name == "xadd":
                            fields, *entry_id = args[1:]
                            pipe.xadd(args[0], fields, *entry_id, maxlen=self._maxlen(args[0]), approximate=True)
                        elif name == "forget":
                            pipe.eval(FORGET, 1, *args)
                        elif name == "bind":
                            pipe.eval(BIND, 1, *args)
                        else:
                            getattr(pipe, name)(*args)
                    for result in await pipe.execute(raise_on_error=False) if ops else ():
                        if isinstance(result, _ResponseError):
                            log.warning("redis refused a write: %s", result)
                except (OSError, TimeoutError, _RedisError) as exc:
                    self._held[:0] = ops
                    self._lost(exc)
                finally:
                    for send in after:
                        send()
        finally:
            self._writer = None
            if not self._up:
                self._run_after()  # deferred while this pipeline failed: they go now, after those before them

    def _maxlen(self, stream: str) -> int:
        return INBOX_LEN if stream.startswith(self.key("inbox")) else self.hub.config.queue_limit

    def _records(self) -> None:
        """The session records that changed, into what is held: written, or forgotten once gone from here."""
        for user, record in self.hub.take_dirty():
            key = self.key("session", user)
            if record is None:
                self._hold(False, "forget", key, self.node)
                self._hold(False, "srem", self.key("sessions", self.node), user)
                stream = self._streams.pop(user, None)
                if stream is not None:
                    self._hold(False, "delete", stream)
                continue
            stream = self._streams.get(user, "")
            record.update(node=self.node, replay=stream, channels=orjson.dumps(record["channels"]))
            self._hold(False, "hset", key, None, None, record)
            self._hold(False, "sadd", self.key("sessions", self.node), user)
            if stream:
                self._hold(False, "xtrim", stream, None, False, f"{record['confirmed'] + 1}-0")

    async def before_hello(self, raw: str | bytes) -> None:
        """Before a hello: the user id's binding to an identity key as the cluster has it; and if the hello
        resumes a session this node does not have, which another node kept in Redis, that session, taken over
        (Hub.adopt) with its replay stream, so that the hello resumes it here."""
        try:
            hello = orjson.loads(raw)
            user = hello["user_id"]
        except (ValueError, TypeError, KeyError):
            return  # not a hello: the hub answers it
        if hello.get("type") != "hello" or not isinstance(user, str) or not self._up:
            return
        token = hello.get("resume_token")
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.hget(self.key("bindings"), user)
            pipe.hgetall(self.key("session", user))
            bound, record = await pipe.execute()
            here = self.hub.bindings.key_of(user)
            if bound == b"":  # released (callbox-server --forget): here too
                self.hub.bindings.forget(user)
            elif bound is not None and here != bound.decode():  # bound on another node (first)
                self.hub.bindings.forget(user)
                self.hub.bindings.bind(user, bound.decode())
            elif bound is None and here is not None:  # bound here before Redis had it (or lost it)
                self._hold(False, "bind", self.key("bindings"), user, here)
            record = {k.decode(): v.decode() for k, v in record.items()}
            if not isinstance(token, str) or user in self.hub.sessions or record.get("token") != token:
                return
            stream = record.get("replay", "")
            entries = await self.redis.xrange(stream) if stream else []
        except (OSError, TimeoutError, _RedisError) as exc:
            self._lost(exc)
            return
        if user in self.hub.sessions:
            return  # it came here while Redis answered
        loaded = [(int(entry_id.split(b"-")[0]), fields[b"t"].decode()) for entry_id, fields in entries]
        self.hub.adopt(user, {"token": token, "name": record["name"], "key": record["key"],
                              "received": int(record["received"]), "sent": int(record["sent"]),
                              "channels": orjson.loads(record["channels"])}, loaded,
                       asyncio.get_running_loop().time())
        mine = self._stream(user, self.hub.sessions[user].tag)
        for seq, text in loaded:  # its replay stream is this node's now
            self._hold(False, "xadd", mine, {b"t": text}, f"{seq}-0")
        if stream and stream != mine:
            self._hold(False, "delete", stream)

    # ------------------------------------------------------------ heartbeat and resync

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _beat(self) -> None:
        while not self._stopping.is_set():
            try:
                pipe = self.redis.pipeline(transaction=False)
                pipe.set(self.key("node", self.node), self.address, px=int(self.ttl * 1000))
                pipe.sadd(self.key("nodes"), self.node)
                pipe.smembers(self.key("nodes"))
                _, added, members = await pipe.execute()
                if added or not self._up:  # the set had lost us (Redis restarted, or this node is new), or back
                    await self._resync()
                await self._check_nodes({m.decode() for m in members} - {self.node})
                if self._held or self._after:
                    self._start_writer()  # what waited for Redis to come back
            except (OSError, TimeoutError, _RedisError) as exc:
                self._lost(exc)
            except Exception:  # a bug, or a record in Redis that is not ours: the heartbeat must go on
                log.exception("the cluster's heartbeat failed")
            await self._pause(self.heartbeat)

    def _lost(self, exc: BaseException) -> None:
        now = asyncio.get_running_loop().time()
        if self._up or self._down_since is None:
            log.warning("redis at %s is unreachable (%s); serving this node's users alone until it is back",
                        self.url, str(exc) or type(exc).__name__)
            self._down_since = now
        self._up = False
        if now - self._down_since >= self.ttl:
            # The others count this node gone by now, and this node can no longer tell whether they are there.
            for node, gone in self._nodes.items():
                if gone is None:
                    self._nodes[node] = now
                    self.apply(self.hub.node_lost(node, now))

    async def _resync(self) -> None:
        """Write this node's users afresh, tell the others, and read theirs: after a start, a Redis restart or an
        outage."""
        now = asyncio.get_running_loop().time()
        if self._down_since is not None:
            log.info("redis at %s is back after %.1f s; resynchronising", self.url, now - self._down_since)
        self.resyncs += 1
        # What was held of this node's presence is older than what is written now; frames for users elsewhere
        # still go. Every session here is written again, with its replay stream (Redis may have lost them).
        self._held = [op for op in self._held if not op[0]]
        self._dropped = 0
        for user, s in self.hub.sessions.items():
            self._streams.pop(user, None)
            stream = self._stream(user, s.tag)
            self._hold(False, "delete", stream)
            for seq, text in s.replay.entries:
                self._hold(False, "xadd", stream, {b"t": text}, f"{seq}-0")
        self.hub.rewrite_records()
        members = self.hub.members()
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(self.key("users", self.node))
        if members:
            pipe.hset(self.key("users", self.node), mapping=by_user(members))
        await pipe.execute()
        self._nodes = {node: None for node in self._nodes}  # judged again from the heartbeats
        self._settle_until = now + self.ttl
        self._up, self._down_since = True, None
        await self._check_nodes(set(self._nodes), snapshot=True)

    async def _check_nodes(self, listed: set[str], *, snapshot: bool = False) -> None:
        """Which of the other nodes have a heartbeat. A new one (or one back, or all of them with `snapshot`) is
        read, and told this node's users; one whose heartbeat lapsed is gone."""
        names = sorted(listed | set(self._nodes))
        if not names:
            return
        alive = await self.redis.mget([self.key("node", n) for n in names])
        now = asyncio.get_running_loop().time()
        ours = None  # this node's users, encoded once for all the nodes to be told
        for node, beat in zip(names, alive, strict=True):
            known = node in self._nodes
            gone = self._nodes.get(node)
            if beat is not None:
                self._nodes[node] = None
                if snapshot or not known or gone is not None:
                    raw = await self.redis.hgetall(self.key("users", node))
                    self.apply(self.hub.remote_presence(node, [m for v in raw.values() for m in decode_members(v)],
                                                        now, full=True))
                    ours = ours or encode_members(self.hub.members())
                    self._tell_nodes(ours, [node], full=True)
            elif known and gone is None and now >= self._settle_until:
                self._nodes[node] = now
                log.info("node %s has no heartbeat: its users are reconnecting", node)
                self.apply(self.hub.node_lost(node, now))
            elif gone is not None and now - gone > self.hub.config.resume_grace + self.ttl:
                # Long gone: whoever notices first clears what it left, the sessions nobody took over included.
                del self._nodes[node]
                sessions = await self.redis.smembers(self.key("sessions", node))
                pipe = self.redis.pipeline(transaction=False)
                for user in sessions:
                    pipe.eval(FORGET, 1, self.key("session", user.decode()), node)
                pipe.srem(self.key("nodes"), node)
                pipe.delete(self.key("users", node), self.key("inbox", node), self.key("sessions", node))
                await pipe.execute()

    # ------------------------------------------------------------ in: what other nodes wrote

    async def _read(self) -> None:
        while not self._stopping.is_set():
            if not self._up:
                await self._pause(self.heartbeat / 4)
                continue
            try:
                got = await self.reader.xread({self._inbox: self._position}, count=READ_COUNT, block=BLOCK_MS)
            except (OSError, TimeoutError, _RedisError) as exc:
                self._lost(exc)
                await self._pause(self.heartbeat / 4)
                continue
            now = asyncio.get_running_loop().time()
            for _stream, entries in got:
                for entry_id, fields in entries:
                    self._position = entry_id
                    try:
                        if b"u" in fields:
                            self.apply(self.hub.forwarded(fields[b"u"].decode(), fields[b"t"].decode(), now))
                        elif b"c" in fields:
                            self.apply(self.hub.room_frame(fields[b"c"].decode(), fields[b"t"].decode(), now))
                        else:
                            node = fields[b"n"].decode()
                            if node not in self._nodes:
                                # A node first heard of here is met now, not at the next heartbeat: before a user
                                # here can call one there, that node must know ours, or it drops the call. (If
                                # Redis fails meanwhile, the heartbeat meets it, as before.)
                                with contextlib.suppress(OSError, TimeoutError, _RedisError):
                                    await self._check_nodes({node})
                                now = asyncio.get_running_loop().time()
                            self.apply(self.hub.remote_presence(node, decode_members(fields[b"m"]), now,
                                                                full=b"s" in fields))
                    except (KeyError, ValueError, TypeError, p.ProtocolError) as exc:
                        log.warning("skipped a malformed entry %s in %s: %s", entry_id, self._inbox, exc)
                    except Exception:  # a bug: the entry is skipped, the node reads on
                        log.exception("failed on entry %s in %s", entry_id, self._inbox)


def _report(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the cluster's %s stopped on a bug", task.get_name(), exc_info=task.exception())


try:
    from redis.exceptions import RedisError as _RedisError
    from redis.exceptions import ResponseError as _ResponseError
except ImportError:  # without the extra there is no cluster, and nothing raises them
    class _RedisError(Exception):
        pass

    class _ResponseError(_RedisError):
        pass
