"""The signaling hub: sessions, presence, channels and calls as pure state; frames and times in, actions out."""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import hmac
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field

from shared import __version__
from shared import protocol as p
from shared.calls import Call, Event, IllegalTransition, State
from shared.identity import hello_payload, verify
from shared.names import display_name, skeleton

from .bindings import Bindings
from .ratelimit import LoginBackoff, TokenBucket
from .replay import ReplayBudget, ReplayLog

log = logging.getLogger("callbox.hub")

Conn = Hashable  # whatever the transport uses to name a connection

# Close codes the hub asks for.
CLOSE_NORMAL = 1000
CLOSE_PROTOCOL = 1002
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_REPLACED = 4000  # a resumed connection took this one's place
CLAIM_TTL = 60.0  # seconds a restored-call claim (hello.calls) waits for the other party
RING_SLACK = 5.0  # in a cluster, seconds the callee's node lets a call ring past the caller node's ring timeout
HISTORY_LINES = 50  # a channel's latest messages, sent to each new member after `joined`
HISTORY_BYTES = 32 * 1024  # ... and at most this much of them
PRESENCE_BATCH_BYTES = 64 * 1024  # a presence_batch frame is cut before it grows past this
TICK_CONNECTIONS, MAX_TICK = 250, 1.0  # ticks are spaced out as the connections grow (Hub._tick)


# ---- what the hub asks the transport to do, in order ----


@dataclass(frozen=True)
class Send:
    conn: Conn
    text: str


@dataclass(frozen=True)
class Broadcast:
    conns: tuple[Conn, ...]
    text: str


@dataclass(frozen=True)
class Close:
    conn: Conn
    code: int
    reason: str


@dataclass(frozen=True)
class Forward:
    """A frame for a user on another node of the cluster, exactly as that user is to get it."""

    node: str
    user: str
    text: str


@dataclass(frozen=True)
class Keep:
    """A message recorded for a user's replay (in a cluster: kept in Redis too, so another node can resume it);
    `tag` names the session (the hash of its resume token)."""

    user: str
    tag: str
    seq: int
    text: str


@dataclass(frozen=True)
class Bound:
    """A user id is now bound to this identity key (in a cluster: for every node, in Redis)."""

    user: str
    key: str


@dataclass(frozen=True)
class RoomFrame:
    """A frame for the members of a channel on the other nodes of the cluster (they keep it in its history)."""

    channel: str
    text: str


@dataclass(frozen=True)
class Announce:
    """This node's users whose presence changed (in a cluster: the other nodes are told)."""

    users: tuple[Member, ...]


Action = Send | Broadcast | Close | Forward | Keep | RoomFrame | Announce | Bound


@dataclass
class HubConfig:
    token: str | None = None
    resume_grace: float = 30.0
    ring_timeout: float = 45.0
    ping_interval: float = 10.0
    # Presence changes are gathered this long and then sent, each user once, in one presence_batch frame per
    # connection (0: each change at once, as a presence frame of its own).
    presence_tick: float = 0.05
    queue_limit: int = 1000  # messages kept per user for replay on resume (and so held while it reconnects)
    replay_bytes: int = 1 << 20  # ... and their size at most, per user
    replay_total: int = 256 << 20  # ... and over all users together
    rate: float = 100.0  # messages per second a connection may send, sustained (0: no limit)
    burst: float = 200.0  # ... and in one burst
    flood_limit: int = 200  # messages refused in one flood before the connection is closed
    channels_per_user: int = 50
    # Before login (a successful hello): how long a connection may take, and how many may wait at once.
    hello_timeout: float = 10.0  # seconds (0: no limit)
    max_unauthenticated: int = 256  # connections not logged in, over the whole server (0: no limit)
    max_unauthenticated_per_ip: int = 32  # ... and from one address (0: no limit)
    version: str = __version__
    # What this server is, for choosing among several on a LAN (sent in ServerInfo and the mDNS TXT record).
    server_id: str = field(default_factory=lambda: secrets.token_hex(6))
    kind: str = "dedicated"  # or "embedded": hosted inside a user's app
    started: float = field(default_factory=lambda: round(time.time(), 3))
    host_user: str | None = None  # the user whose app hosts an embedded server
    cluster: bool = False  # one node of several (server.cluster): users elsewhere are reached through the broker


@dataclass
class _ConnState:
    bucket: TokenBucket
    addr: str | None = None  # the peer's address, for throttling failed logins
    user: str | None = None
    closing: bool = False
    congested: bool = False  # the transport says much is left unread: channel messages are held back
    refused: int = 0  # messages refused by the rate limit in the current flood
    last_refused: float = 0.0
    nonce: str = ""  # what a hello proof on this connection signs (sent in the handshake's Callbox-Nonce)


@dataclass
class Session:
    user_id: str
    display_name: str
    resume_token: str
    conn: Conn | None
    replay: ReplayLog  # what was sent to it, kept for its resume
    deadline: float | None = None  # when a reconnecting session goes offline
    gaps: dict[str, int] = field(default_factory=dict)  # channel -> messages it was not sent (channel_gap)
    channels: set[str] = field(default_factory=set)
    status: str = "online"  # the status last announced
    received: int = 0  # frames received from the client since hello, reported when it resumes
    key: str | None = None  # the identity key it proved, if any
    batch: bool = False  # it takes presence in presence_batch frames
    since: float = 0.0  # when the session began (wall clock): in a cluster, the newest session of a user wins
    tag: str = ""  # the hash of its resume token, which names it to the other nodes of a cluster

    def __post_init__(self) -> None:
        self.tag = token_hash(self.resume_token)


@dataclass(frozen=True)
class Member:
    """A user as the nodes of a cluster tell each other of it: its presence, the hash of its resume token (which
    lets another node know the session's own client when it comes back there), and when its session began."""

    info: p.UserInfo
    token_hash: str
    since: float
    rooms: tuple[str, ...] = ()  # the channels it is in
    room_call: tuple[str, str, tuple[str, ...]] | None = None  # the room call it is in: channel, call id, media

    def newer(self, node: str, than: Member | Session, than_node: str) -> bool:
        """Whether this session, on `node`, is newer than `than` on `than_node` (the node ids break a tie)."""
        return (self.since, node) > (than.since, than_node)


@dataclass
class RemoteUser:
    """A user on another node of the cluster."""

    node: str
    member: Member
    deadline: float | None = None  # its node is gone: when it goes offline here unless it is back somewhere

    @property
    def status(self) -> str:
        return self.member.info.status


@dataclass
class RoomCall:
    """A room's call: who is in it, in the order they joined, and what each sends."""

    call_id: str
    channel: str
    media: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def participants(self, *, besides: str | None = None) -> tuple[p.Participant, ...]:
        return tuple(p.Participant(user_id=u, media=m) for u, m in self.media.items() if u != besides)

    @property
    def video(self) -> int:
        return sum("video" in m for m in self.media.values())


@dataclass
class _Claim:
    """One side of a call that a restarted server is asked to restore (hello.calls)."""

    user: str
    peer: str
    media: tuple[str, ...]
    deadline: float


class Hub:
    def __init__(self, config: HubConfig | None = None, *, wall: Callable[[], float] = time.time,
                 bindings: Bindings | None = None):
        self.config = config or HubConfig()
        self.wall = wall
        self.bindings = bindings if bindings is not None else Bindings()
        self.conns: dict[Conn, _ConnState] = {}
        self.sessions: dict[str, Session] = {}
        self.calls: dict[str, Call] = {}
        self.call_deadlines: dict[str, float] = {}
        self.channels: dict[str, set[str]] = {}
        self.history: dict[str, deque[str]] = {}  # channel -> its latest channel_message frames, while it exists
        self.claims: dict[str, _Claim] = {}
        self.in_call: dict[str, Call] = {}  # user -> its established call
        self.room_calls: dict[str, RoomCall] = {}  # channel -> its call, while anyone is in it
        self.room_call_ids: dict[str, RoomCall] = {}  # call id -> the same room calls
        self.in_room_call: dict[str, RoomCall] = {}  # user -> the room call it is in
        # Every deadline set, as (when, kind, key), soonest first; one that has moved or gone since is dropped
        # when it comes to the top (_current), so next_deadline() is cheap enough to ask after every frame.
        self._deadlines: list[tuple[float, str, str]] = []
        self.redirect: p.Redirect | None = None  # set when this server hands over to another one
        self._skeletons: dict[str, str] = {}  # the skeleton of each id with a session -> that id (shared.names)
        self.backoff = LoginBackoff()  # failed logins per address
        self.replay = ReplayBudget(self.config.replay_total)  # what every session's replay log holds together
        self._out: list[Action] = []
        self._presence: dict[str, p.UserInfo] = {}  # changes not yet sent: user -> its latest, in first-change order
        self._presence_at: float | None = None  # when they go out
        self._ticked_at = -math.inf  # when the last tick sent changes
        self._now = 0.0  # the time of the event being handled
        # Every user as the clients were last told it (its UserInfo, encoded), kept up to date by each tick: a
        # welcome's list is built from it once a tick, not from every session at every login.
        self._roster: dict[str, str] = {}
        self._snapshot: list[str] | None = None  # the roster as presence_batch frames, until the next tick
        self.remote: dict[str, RemoteUser] = {}  # in a cluster: the users on other nodes
        self._members: dict[str, Member] = {}  # ... and this node's changes not yet announced to them
        self._shadows: dict[str, tuple[str, Member]] = {}  # older sessions elsewhere of users here: node, member
        self._clock = 0.0  # the latest session start heard of (see _tick_clock)
        self._dirty: set[str] = set()  # users whose session record changed since server.cluster last took them

    # ---------------------------------------------------------------- events in

    def open(self, conn: Conn, now: float, addr: str | None = None, nonce: str = "") -> list[Action]:
        self.conns[conn] = _ConnState(TokenBucket(self.config.rate, self.config.burst, now), addr,
                                      nonce=nonce or secrets.token_urlsafe(18))
        return []

    def receive(self, conn: Conn, raw: str | bytes, now: float) -> list[Action]:
        self._now = now
        cs = self.conns.get(conn)
        if cs is None or cs.closing:
            return []
        self._out = []
        s = self.sessions[cs.user] if cs.user is not None else None
        if s is not None:
            s.received += 1  # every frame after hello counts, whatever becomes of it (an ack is taken back)
            if self.config.cluster:
                self._dirty.add(s.user_id)
        if self._rate_limited(conn, cs, now):
            return self._take()
        if _too_big(raw):
            size = len(raw.encode() if isinstance(raw, str) else raw)
            self._error(conn, p.BAD_MESSAGE, f"message is {size} bytes; the limit is {p.MAX_MESSAGE_BYTES}")
            self._close(conn, CLOSE_TOO_BIG, "message too big")
            return self._take()
        try:
            msg = p.decode(raw, allowed=p.CLIENT_TYPES)
        except p.ProtocolError as exc:
            self._error(conn, exc.code, str(exc), exc.ref)
            if cs.user is None:
                self._close(conn, CLOSE_POLICY, "the first message must be a valid hello")
            return self._take()
        if s is not None and isinstance(msg, p.Ack):
            s.received -= 1
            s.replay.confirm(msg.received)  # what it has need not be kept for its resume
            self._out.append(Send(conn, p.Ack(received=s.received).encode()))  # and what we have of its
            return self._take()
        if cs.user is None:
            if isinstance(msg, p.Hello):
                self._hello(conn, msg, now)
            else:
                self._error(conn, p.NOT_AUTHENTICATED, f"send hello before '{msg.type}'", msg.type)
                self._close(conn, CLOSE_POLICY, "not authenticated")
            return self._take()
        self._dispatch(cs.user, conn, msg, now)
        return self._take()

    def hello_due(self, conn: Conn, now: float) -> list[Action]:
        """The hello timeout of this connection has passed: close it unless it logged in."""
        cs = self.conns.get(conn)
        if cs is None or cs.closing or cs.user is not None:
            return []
        self._out = []
        self._error(conn, p.NOT_AUTHENTICATED, f"no hello within {self.config.hello_timeout:g} s")
        self._close(conn, CLOSE_POLICY, "no hello in time")
        return self._take()

    def congested(self, conn: Conn) -> None:
        """Much is left unread on this connection: hold back channel messages for it (they become a gap)."""
        cs = self.conns.get(conn)
        if cs is not None:
            cs.congested = True

    def drained(self, conn: Conn, now: float) -> list[Action]:
        """The connection's unread backlog is small again: tell its user what it missed in its channels."""
        cs = self.conns.get(conn)
        self._out = []
        if cs is None or not cs.congested:
            return []
        cs.congested = False
        s = self.sessions.get(cs.user) if cs.user is not None else None
        if s is not None and s.conn == conn:
            self._flush_gaps(s)
        return self._take()

    def connection_lost(self, conn: Conn, now: float) -> list[Action]:
        """The transport lost this connection, however it went (a close frame, a dead peer, a socket error). Not
        to be confused with _close, which asks the transport to close one."""
        self._now = now
        cs = self.conns.pop(conn, None)
        self._out = []
        if cs is None or cs.user is None:
            return []
        s = self.sessions.get(cs.user)
        if s is None or s.conn != conn:
            return []  # already replaced by a resumed connection, or already gone
        s.conn = None
        if self.config.resume_grace <= 0:
            self._drop_session(s, now)
        else:
            s.deadline = now + self.config.resume_grace
            self._due(s.deadline, "session", s.user_id)
            self._refresh(s)
        return self._take()

    def expire(self, now: float) -> list[Action]:
        """Apply every deadline that has passed: ring timeouts, resume grace, stale call claims, the presence
        tick, and the grace of users whose node is gone. Only what is due is looked at (a heap)."""
        self._now = now
        self._out = []
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            at, kind, key = heapq.heappop(heap)
            if not self._current(at, kind, key):
                continue
            if kind == "ring":
                call = self.calls[key]
                call.apply(Event.TIMEOUT, now=now, reason="no_answer")
                for user in call.parties():
                    self._to_user(user, p.CallEnded(call_id=key, sender=call.peer_of(user), reason="no_answer"))
                self._forget_call(call)
            elif kind == "session":
                self._drop_session(self.sessions[key], now)
            elif kind == "claim":
                del self.claims[key]
            elif kind == "remote":
                self._remote_gone(key)
            else:
                self._flush_presence()
        return self._take()

    def hand_over(self, url: str, server_id: str | None = None) -> list[Action]:
        """Another server won on the LAN: tell every session, and every new one from now on, to go there."""
        self._out = []
        self.redirect = p.Redirect(url=url, server_id=server_id)
        for user in list(self.sessions):
            self._to_user(user, self.redirect)
        return self._take()

    def next_deadline(self) -> float | None:
        """When expire() next has something to do (None: nothing is due ever); the transport asks after every
        event it hands in, and sets its timer when the answer changes."""
        heap = self._deadlines
        while heap and not self._current(*heap[0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def _due(self, at: float, kind: str, key: str) -> None:
        heapq.heappush(self._deadlines, (at, kind, key))

    def _current(self, at: float, kind: str, key: str) -> bool:
        if kind == "ring":
            call = self.calls.get(key)
            return self.call_deadlines.get(key) == at and call is not None and call.state is State.RINGING
        if kind == "session":
            s = self.sessions.get(key)
            return s is not None and s.conn is None and s.deadline == at
        if kind == "presence":
            return self._presence_at == at
        if kind == "remote":
            r = self.remote.get(key)
            return r is not None and r.deadline == at
        claim = self.claims.get(key)
        return claim is not None and claim.deadline == at

    # ---------------------------------------------------------------- queries

    def status(self, user_id: str) -> str:
        s = self.sessions.get(user_id)
        if s is None:
            r = self.remote.get(user_id)
            return "offline" if r is None else r.status
        return self._derive_status(s)

    def call_of(self, user_id: str) -> Call | None:
        """The established call this user is in, if any (kept in a dict: a welcome asks it for every user)."""
        return self.in_call.get(user_id)

    def check_invariants(self) -> None:
        """Raise AssertionError if the state is inconsistent. Used by the property tests."""
        for uid, s in self.sessions.items():
            assert s.user_id == uid
            if s.conn is None:
                assert s.deadline is not None, f"ghost user {uid}: no connection and no deadline"
            else:
                assert self.conns[s.conn].user == uid, f"session {uid} points at a connection of someone else"
            for ch in s.channels:
                assert uid in self.channels[ch]
        for conn, cs in self.conns.items():
            if cs.user is not None and not cs.closing:
                assert self.sessions[cs.user].conn == conn
        established: dict[str, str] = {}
        for call_id, c in self.calls.items():
            assert c.live, f"ended call {call_id} kept"
            assert c.caller != c.callee
            assert any(u in self.sessions for u in c.parties()), f"call {call_id} kept with no party here"
            for u in c.parties():
                assert u in self.sessions or u in self.remote, f"ghost call {call_id}: {u} is gone"
                if c.established and u in self.sessions:
                    assert u not in established, f"{u} is in two established calls"
                    established[u] = call_id
            assert (call_id in self.call_deadlines) == (c.state is State.RINGING)
        assert not self.remote.keys() & self.sessions.keys(), "a user both here and on another node"
        assert self._told() == {u.user_id: u.encode() for u in self._everyone()}, "the roster is out of step"
        assert self._shadows.keys() <= self.sessions.keys(), "a shadow of a user not here"
        assert {u: c.call_id for u, c in self.in_call.items()} == established, "in_call out of step with calls"
        assert self.replay.used == sum(s.replay.bytes for s in self.sessions.values()), "replay bytes miscounted"
        for ch, members in self.channels.items():
            assert members, f"empty channel {ch} kept"
            for u in members:
                if u in self.sessions:
                    assert ch in self.sessions[u].channels
                else:
                    assert ch in self.remote[u].member.rooms, f"{u} is in {ch} here but not on its node"
        for u, r in self.remote.items():
            for ch in r.member.rooms:
                assert u in self.channels.get(ch, ()), f"{u} is in {ch} on its node but not here"
        in_room = {}
        for ch, rc in self.room_calls.items():
            assert rc.media, f"empty room call {rc.call_id} kept"
            assert rc.channel == ch and self.room_call_ids[rc.call_id] is rc
            assert len(rc.media) <= p.ROOM_CALL_PEOPLE and rc.video <= p.ROOM_CALL_VIDEO
            for u in rc.media:
                assert u in self.channels[ch], f"{u} is in the call of {ch} but not in {ch}"
                assert u not in established, f"{u} is in a room call and a 1:1 call"
                if u in self.sessions:
                    in_room[u] = rc
                else:
                    assert self.remote[u].member.room_call == (ch, rc.call_id, rc.media[u]), \
                        f"{u} is in the call of {ch} here but not on its node"
        assert in_room == self.in_room_call, "in_room_call out of step with room calls"
        assert len(self.room_call_ids) == len(self.room_calls)

    # ---------------------------------------------------------------- session

    def _hello(self, conn: Conn, msg: p.Hello, now: float) -> None:
        cfg = self.config
        if msg.protocol != p.PROTOCOL_VERSION:
            self._error(conn, p.UNSUPPORTED_PROTOCOL,
                        f"protocol {msg.protocol} is not supported; this server speaks {p.PROTOCOL_VERSION}", "hello")
            self._close(conn, CLOSE_PROTOCOL, "unsupported protocol")
            return
        addr = self.conns[conn].addr
        if cfg.token is not None and (wait := self.backoff.blocked(addr, now)):
            self._error(conn, p.AUTH_FAILED, f"too many failed logins from your address; try again in {wait:.1f} s",
                        "hello")
            self._close(conn, CLOSE_POLICY, "authentication throttled")
            return
        if cfg.token is not None and not hmac.compare_digest((msg.token or "").encode(), cfg.token.encode()):
            why = "the token is wrong" if msg.token else "this server needs a token"
            self.backoff.failed(addr, now)
            self._error(conn, p.AUTH_FAILED, why, "hello")
            self._close(conn, CLOSE_POLICY, "authentication failed")
            return
        proven = self._proven_key(conn, msg)
        if proven is False:
            return
        bound = self.bindings.key_of(msg.user_id)
        if bound is None and (like := self._looks_like(msg.user_id)) is not None:
            self._error(conn, p.LOOKALIKE_ID, f"'{msg.user_id}' looks like '{like}', which someone else uses here; "
                        "choose a user id that does not", "hello")
            return
        if bound is not None and proven != bound:
            self._error(conn, p.KEY_MISMATCH, f"'{msg.user_id}' belongs to another identity key on this server; "
                        "choose another user id, or ask its operator to release this one "
                        f"(callbox-server --forget {msg.user_id})", "hello")
            return
        away = self.remote.get(msg.user_id)
        if away is not None and away.status != "reconnecting" and not _owns(away.member, msg, proven):
            self._error(conn, p.NAME_TAKEN, f"'{msg.user_id}' is already online; choose another user id", "hello")
            return
        old = self.sessions.get(msg.user_id)
        owner = (  # the resume token proves this is the session's own client
            old is not None
            and msg.resume_token is not None
            and hmac.compare_digest(old.resume_token.encode(), msg.resume_token.encode())
        )
        # What the client got of this session; without a count, whatever was sent while it was connected.
        got = (msg.received if msg.received is not None else old.replay.sent - old.replay.missed) if owner else 0
        resuming = owner and old.replay.can_resume(got)
        if old is not None and not resuming:
            # Its key proves the owner too: one back from a restart replaces a connection not yet seen dead.
            if old.conn is not None and not owner and not (bound is not None and proven == bound):
                self._error(conn, p.NAME_TAKEN, f"'{msg.user_id}' is already online; choose another user id", "hello")
                return
            if old.conn is not None:  # its own client, back too late to resume: the old connection gives way
                self._close(old.conn, CLOSE_REPLACED, "replaced by a newer connection")
            # A stale session gives way to a fresh login (its calls end: a message for them would be missing).
            self._drop_session(old, now)
        if proven and bound is None:
            self.bindings.bind(msg.user_id, proven)
            if cfg.cluster:
                self._out.append(Bound(msg.user_id, proven))
            log.info("user id %s is now bound to key %s", msg.user_id, proven)
        cs = self.conns[conn]
        cs.user = msg.user_id
        name = display_name(msg.display_name, msg.user_id)  # no bidi overrides, control or invisible-only names
        moved = False
        if resuming:
            s = old
            if s.conn is not None:
                replaced = s.conn
                self.conns[replaced].user = None
                self._close(replaced, CLOSE_REPLACED, "replaced by a newer connection")
            s.conn, s.deadline = conn, None
            s.replay.reconnected()
            s.batch = bool(msg.presence_batch)
            if name != s.display_name:
                s.display_name = name
                s.status = ""  # announce the new name with the status
        else:
            s = Session(msg.user_id, name, secrets.token_urlsafe(24), conn,
                        ReplayLog(self.replay, cfg.queue_limit, cfg.replay_bytes), key=proven or None,
                        batch=bool(msg.presence_batch), since=self._tick_clock())
            self.sessions[s.user_id] = s
            self._skeletons[skeleton(s.user_id)] = s.user_id
            away = self.remote.pop(s.user_id, None)  # it was on another node: the newest session wins
            moved = away is not None
            if moved:
                self._reconcile(s.user_id, away.member, None)  # a fresh session is in no room
            s.status = ""
        listed = self._user_list() if s.batch else []
        self._out.append(Send(conn, p.ConnectionEstablished(
            user_id=s.user_id,
            resume_token=s.resume_token,
            # A client that takes batches gets the list in them, from a snapshot shared by every login until the
            # next presence tick (whose batch then brings it up to date); an older one, in this frame.
            users=() if s.batch else tuple(u for u in self._everyone() if u.user_id != s.user_id),
            users_follow=len(listed) if s.batch else None,
            server=p.ServerInfo(version=cfg.version, ping_interval=cfg.ping_interval,
                                resume_grace=cfg.resume_grace, queue_limit=cfg.queue_limit,
                                server_id=cfg.server_id, kind=cfg.kind, started=cfg.started,
                                host_user=cfg.host_user),
            resumed=resuming,
            received=s.received,
        ).encode()))
        self._out.extend(Send(conn, text) for text in listed)
        for text in s.replay.since(got):
            self._out.append(Send(conn, text))  # in order: what it missed, then what comes next
        self._flush_gaps(s)
        if self.redirect is not None and not resuming:
            self._to_user(s.user_id, self.redirect)  # a resumed session had it already, or has it in the replay
        if cfg.cluster:
            self._dirty.add(s.user_id)
        self._restore_calls(s, msg.calls, now)
        if moved:  # what it had here as a user of another node, and did not claim again, is over
            for call in [c for c in self.calls.values() if c.involves(s.user_id) and self.in_call.get(s.user_id)
                         is not c]:
                self._end_call(call, s.user_id)
        self._refresh(s)

    def _looks_like(self, user_id: str) -> str | None:
        """A user id in use here, bound to a key or in a session, that looks like `user_id` but is not it."""
        if (like := self.bindings.bound_like(user_id)) is not None:
            return like
        like = self._skeletons.get(skeleton(user_id))
        return like if like != user_id else None

    def _proven_key(self, conn: Conn, msg: p.Hello) -> str | None | bool:
        """The key this hello proves (None: it claims none), or False once refused (an error is queued)."""
        if msg.key is None:
            return None
        nonce = self.conns[conn].nonce
        if msg.proof is None:
            self._error(conn, p.PROOF_REQUIRED, "sign this connection's nonce (in ref) with your key", nonce)
            return False
        if not verify(msg.key, msg.proof, hello_payload(nonce, msg.user_id)):
            self._error(conn, p.BAD_PROOF, "the proof does not verify: sign this connection's nonce and your "
                        "user id with the key you send", "hello")
            self._close(conn, CLOSE_POLICY, "bad proof")
            return False
        return msg.key

    def _drop_session(self, s: Session, now: float) -> None:
        """The user is gone for good: end its calls, leave its channels, announce it offline."""
        self._unseat(s)
        self._skeletons.pop(skeleton(s.user_id), None)
        for call in [c for c in self.calls.values() if c.involves(s.user_id)]:
            self._end_call(call, s.user_id)
        for ch in list(s.channels):
            self._leave_channel(s, ch, "peer_disconnected")
        self._announce(s, "offline")
        log.info("user %s is offline", s.user_id)
        shadow = self._shadows.pop(s.user_id, None)
        if shadow is not None:  # the older session on another node had not yielded yet: it is the one now
            self.remote[s.user_id] = RemoteUser(*shadow)
            self._skeletons[skeleton(s.user_id)] = s.user_id
            self._queue_presence(shadow[1].info)
            self._reconcile(s.user_id, None, shadow[1])

    def _unseat(self, s: Session) -> None:
        """What ends a session here, however it goes on (offline, or on another node): out of the sessions, its
        replay log, its connection and its call claims; in a cluster, its record is to be forgotten."""
        del self.sessions[s.user_id]
        s.replay.clear()
        if s.conn is not None:
            self.conns[s.conn].user = None
        for call_id in [k for k, c in self.claims.items() if c.user == s.user_id]:
            del self.claims[call_id]
        if self.config.cluster:
            self._dirty.add(s.user_id)

    def _restore_calls(self, s: Session, claimed: Iterable[p.ActiveCall], now: float) -> None:
        """A client back after a server restart says which calls it is in; restore those both sides claim."""
        for ac in claimed:
            if ac.peer == s.user_id or self._moved_call(s.user_id, ac, now):
                continue
            other = self.claims.get(ac.call_id)
            if other is not None and other.user == ac.peer and other.peer == s.user_id:
                del self.claims[ac.call_id]
                if ac.peer in self.sessions and self.call_of(ac.peer) is None and self.call_of(s.user_id) is None:
                    call = Call(ac.call_id, caller=ac.peer, callee=s.user_id, media=ac.media)
                    call.apply(Event.ACCEPT, now=now)
                    self.calls[call.call_id] = call
                    self.in_call[ac.peer] = self.in_call[s.user_id] = call
                    self._refresh(self.sessions[ac.peer])
            else:
                # The other party may come back later than a resume grace would allow (its backoff, its own
                # restart); the claim waits for it while the claimer stays online, up to CLAIM_TTL.
                ttl = max(2 * self.config.resume_grace, CLAIM_TTL)
                self.claims[ac.call_id] = _Claim(s.user_id, ac.peer, ac.media, now + ttl)
                self._due(now + ttl, "claim", ac.call_id)

    def _moved_call(self, user: str, ac: p.ActiveCall, now: float) -> bool:
        """Whether a claimed call is settled without waiting for the other party: it is known here already (the
        user moved here from another node of a cluster, and the call goes on if it is this one), or the peer is
        in a call on another node, whose side of it checks everything the user sends there."""
        call = self.calls.get(ac.call_id)
        if call is not None:
            if call.established and call.involves(user) and call.peer_of(user) == ac.peer and not self._busy(user):
                self.in_call[user] = call
            return True
        peer = self.remote.get(ac.peer)
        if peer is None or peer.status != "in_call":
            return False
        if not self._busy(user):
            call = Call(ac.call_id, caller=ac.peer, callee=user, media=ac.media)
            call.apply(Event.ACCEPT, now=now)
            self.calls[call.call_id] = self.in_call[user] = call
        return True

    def _busy(self, user: str) -> bool:
        return user in self.in_call or user in self.in_room_call

    # ---------------------------------------------------------------- other nodes of a cluster (server.cluster)

    def rewrite_records(self) -> None:
        """Every session record is to be written again (server.cluster, after Redis lost them)."""
        self._dirty.update(self.sessions)

    @property
    def dirty(self) -> bool:
        return bool(self._dirty)

    def take_dirty(self) -> list[tuple[str, dict | None]]:
        """The session records that changed since last asked: user -> what another node needs to resume it
        (server.cluster), or None when the session is no longer here."""
        dirty, self._dirty = self._dirty, set()
        out = []
        for user in dirty:
            s = self.sessions.get(user)
            out.append((user, None if s is None else {
                "token": s.resume_token, "name": s.display_name, "key": s.key or "", "since": s.since,
                "received": s.received, "sent": s.replay.sent,
                "confirmed": s.replay.entries[0][0] - 1 if s.replay.entries else s.replay.sent,
                "channels": sorted(s.channels),
            }))
        return out

    def adopt(self, user: str, record: dict, entries: list[tuple[int, str]], now: float) -> None:
        """Take over a session another node of the cluster kept in Redis (its record and what its replay log
        held), as a reconnecting session here: the hello that follows resumes it as on the node it came from,
        with exactly what its client did not get."""
        if user in self.sessions:
            return
        cfg = self.config
        s = Session(user, record["name"], record["token"], None,
                    ReplayLog(self.replay, cfg.queue_limit, cfg.replay_bytes), key=record["key"] or None,
                    since=self._tick_clock(), received=record["received"])  # a newer incarnation of it
        s.replay.restore(entries, max(record["sent"], entries[-1][0] if entries else 0))  # the stream is newer
        self._dirty.add(user)
        s.deadline = now + max(cfg.resume_grace, 1.0)
        self._due(s.deadline, "session", user)
        self.sessions[user] = s
        self._skeletons[skeleton(user)] = user
        self.remote.pop(user, None)
        s.status = ""
        for ch in record["channels"]:  # the rooms it was in, with their members on this node
            self.channels.setdefault(ch, set()).add(user)
            s.channels.add(ch)
        for rc in self.room_calls.values():  # the room call it was in, as its node said
            if user in rc.media:
                self.in_room_call[user] = rc
        log.info("took over the session of %s from another node (%d messages to replay)", user, len(entries))

    def members(self) -> list[Member]:
        """This node's users as a cluster's other nodes know them (server.cluster, when it resynchronises)."""
        return [self._member(s, self._info(s)) for s in self.sessions.values()]

    def remote_presence(self, node: str, members: Iterable[Member], now: float, *, full: bool = False) -> list[Action]:
        """Users on another node changed, as its broker messages say (with `full`: these are all of its users,
        and any other is gone from it). The newest session wins: a user that comes online on one node has left
        whichever it was on before, and what that one says of it is stale."""
        self._now = now
        self._out = []
        members = list(members)
        if full:
            listed = {m.info.user_id for m in members}
            for uid in [u for u, r in self.remote.items() if r.node == node and u not in listed]:
                self._remote_gone(uid)
        for m in members:
            uid, status = m.info.user_id, m.info.status
            self._clock = max(self._clock, m.since)
            s = self.sessions.get(uid)
            if s is not None:
                if status == "offline":
                    if self._shadows.get(uid, (None,))[0] == node:
                        del self._shadows[uid]
                    continue
                if not m.newer(node, s, self.config.server_id):
                    # The session here is the newer one: that node yields when it hears of it. Until then it is
                    # kept aside, for if the one here ends first.
                    self._shadows[uid] = (node, m)
                    continue
                before = self._member(s, self._info(s))
                self._moved_away(s, node)
            else:
                before = self.remote[uid].member if uid in self.remote else None
            r = self.remote.get(uid)
            if r is not None and r.node != node and (status == "offline" or not m.newer(node, r.member, r.node)):
                continue
            if status == "offline":
                if r is not None:
                    self._remote_gone(uid)
                continue
            if r is None:
                self._skeletons[skeleton(uid)] = uid
            self.remote[uid] = RemoteUser(node, m)
            self._queue_presence(m.info)
            self._reconcile(uid, before, m)
            if status == "online":  # in no call on its node: a copy of one here is stale (it moved without it)
                for call in [c for c in self.calls.values() if c.established and c.involves(uid)]:
                    self._end_call(call, uid)
        return self._take()

    def node_lost(self, node: str, now: float) -> list[Action]:
        """A node stopped answering (its heartbeat lapsed): its users are reconnecting, and offline after the
        resume grace unless they come back on a node."""
        self._now = now
        self._out = []
        self._shadows = {u: shadow for u, shadow in self._shadows.items() if shadow[0] != node}
        for uid, r in list(self.remote.items()):
            if r.node != node or r.deadline is not None:
                continue
            if self.config.resume_grace <= 0:
                self._remote_gone(uid)
                continue
            info = p.UserInfo(user_id=uid, display_name=r.member.info.display_name, status="reconnecting",
                              key=r.member.info.key)
            r.member = dataclasses.replace(r.member, info=info)
            r.deadline = now + self.config.resume_grace
            self._due(r.deadline, "remote", uid)
            self._queue_presence(info)
        return self._take()

    def forwarded(self, user: str, text: str, now: float) -> list[Action]:
        """A frame from another node for a user here. A call's messages move this node's side of the call in
        step with the sender's; one that does not fit the call is dropped."""
        self._now = now
        self._out = []
        s = self.sessions.get(user)
        if s is None:
            return []  # gone since: the sender's node hears it with the presence that follows
        try:
            msg = p.decode(text)
        except p.ProtocolError as exc:
            log.warning("a frame from another node for %s does not decode: %s", user, exc)
            return []
        if not isinstance(msg, p.Relayed) or self._relayed_in(user, msg, now):
            self._deliver(s, text)
        return self._take()

    def room_frame(self, channel: str, text: str, now: float) -> list[Action]:
        """A channel message from a member on another node: to the members here, and into the history."""
        self._now = now
        self._out = []
        members = self.channels.get(channel)
        if members:
            self._deliver_all(members, text, channel)
            self._keep(channel, text)
        return self._take()

    def _relayed_in(self, user: str, msg: p.Relayed, now: float) -> bool:
        sender = msg.sender
        rc = self.room_call_ids.get(msg.call_id)
        if rc is not None:  # a room call's offer, answer or candidate
            return sender in rc.media and user in rc.media
        if isinstance(msg, p.CallIncoming):
            if msg.call_id in self.calls or msg.call_id in self.room_call_ids or sender not in self.remote:
                return False
            if self._engaged(user, besides=sender):
                self._to_user(sender, p.CallRejected(call_id=msg.call_id, sender=user, reason="busy"))
                return False
            call = Call(msg.call_id, caller=sender, callee=user, media=msg.media)
            call.history.append((State.RINGING, now))
            self.calls[call.call_id] = call
            # The ring timeout is the caller's node's; this one ends the call only if that node never does (it
            # died, or a partition hides it).
            self.call_deadlines[call.call_id] = at = now + self.config.ring_timeout + RING_SLACK
            self._due(at, "ring", call.call_id)
            return True
        call = self.calls.get(msg.call_id)
        if call is None or not call.involves(user) or call.peer_of(user) != sender:
            log.debug("dropped %s for %s from %s: no such call here", msg.type, user, sender)
            return False
        try:
            if isinstance(msg, p.CallAccepted):
                if self._busy(user):
                    self._to_user(sender, p.CallEnded(call_id=call.call_id, sender=user, reason="busy"))
                    self._forget_call(call)
                    return False
                self._established(call, now)
            elif isinstance(msg, p.CallRejected):
                call.apply(Event.REJECT, now=now, reason=msg.reason)
            elif isinstance(msg, p.CallEnded):
                cancel = call.state is State.RINGING and sender == call.caller
                call.apply(Event.CANCEL if cancel else Event.HANGUP, now=now, reason=msg.reason)
        except IllegalTransition as exc:
            log.debug("dropped %s for %s from %s: %s", msg.type, user, sender, exc)
            return False
        if not call.live:
            self._forget_call(call)
        return True

    def _end_call(self, call: Call, gone: str) -> None:
        """`gone` left the call without hanging up (offline, or moved away from it): the other party is told."""
        call.apply(Event.DISCONNECT, now=self._now, reason="peer_disconnected")
        self._to_user(call.peer_of(gone), p.CallEnded(call_id=call.call_id, sender=gone, reason="peer_disconnected"))
        self._forget_call(call)

    def _reconcile(self, uid: str, before: Member | None, after: Member | None) -> None:
        """A user on another node joined or left rooms, or a room's call (as its node's word says): its members
        here are told, as they would be of a user on this node."""
        was, now = set(before.rooms) if before else set(), set(after.rooms) if after else set()
        name = (after or before).info.display_name
        old_call, new_call = before.room_call if before else None, after.room_call if after else None
        if old_call is not None and old_call != new_call:
            rc = self.room_call_ids.get(old_call[1])
            if rc is not None and uid in rc.media:
                self._leave_room_call(uid, rc, "left")
        for ch in sorted(was - now):
            members = self.channels.get(ch)
            if members is None or uid not in members:
                continue
            members.discard(uid)
            if members:
                self._to_users(members, p.ChannelMember(channel=ch, user_id=uid, event="left", display_name=name))
            else:
                del self.channels[ch]
                self.history.pop(ch, None)
        for ch in sorted(now - was):
            members = self.channels.setdefault(ch, set())
            if uid not in members:
                self._to_users(members, p.ChannelMember(channel=ch, user_id=uid, event="joined", display_name=name))
                members.add(uid)
        if new_call is not None and new_call != old_call:
            channel, call_id, media = new_call
            rc = self.room_calls.get(channel)
            if rc is None and call_id not in self.room_call_ids and call_id not in self.calls:
                rc = self.room_calls[channel] = self.room_call_ids[call_id] = RoomCall(call_id, channel)
            if rc is None or rc.call_id != call_id or channel not in now:
                # Two nodes began a call in this room at once: each keeps its own (see the README).
                log.warning("%s is in call %s of room %s, which this node knows as %s", uid, call_id, channel,
                            rc.call_id if rc else "no call")
                return
            rc.media[uid] = media
            self._to_users(self.channels[channel], p.RoomCallMember(channel=channel, call_id=call_id, user_id=uid,
                                                                    event="joined", media=media))

    def _remote_gone(self, uid: str) -> None:
        """A user on another node is offline: end its calls with users here, and it leaves its rooms."""
        before = self.remote.pop(uid).member
        info = before.info
        self._reconcile(uid, before, None)
        self._skeletons.pop(skeleton(uid), None)
        for call in [c for c in self.calls.values() if c.involves(uid)]:
            self._end_call(call, uid)
        self._queue_presence(p.UserInfo(user_id=uid, display_name=info.display_name, status="offline", key=info.key))

    def _moved_away(self, s: Session, node: str) -> None:
        """The user has logged in on another node: its session here ends without a word to anyone, since it
        goes on there. Its established calls with users here go on, as calls with a user on that node, which
        restores them from hello.calls (if it does not, its presence there says so: see remote_presence). A call
        still ringing ends."""
        log.info("user %s moved to node %s", s.user_id, node)
        self._unseat(s)
        self._shadows.pop(s.user_id, None)
        # The other nodes are told it is gone from here (each read the move before this, in its inbox; without
        # it one that had taken the newer session for gone would keep this one).
        self._members[s.user_id] = self._member(s, p.UserInfo(user_id=s.user_id, display_name=s.display_name,
                                                              status="offline", key=s.key))
        if s.conn is not None:
            self._close(s.conn, CLOSE_REPLACED, "replaced by a newer connection on another node")
        self.in_call.pop(s.user_id, None)
        self.in_room_call.pop(s.user_id, None)  # it stays in its rooms and room call, now from that node
        for call in [c for c in self.calls.values() if c.involves(s.user_id)]:
            if call.peer_of(s.user_id) not in self.sessions:
                self._forget_call(call)  # neither party is here any more
            elif not call.established:
                self._end_call(call, s.user_id)

    # ---------------------------------------------------------------- dispatch

    def _dispatch(self, user: str, conn: Conn, msg: p.Message, now: float) -> None:
        if isinstance(msg, p.Relayed):
            self._relay(user, conn, msg, now)
        elif isinstance(msg, p.Join):
            self._join(user, conn, msg)
        elif isinstance(msg, p.Leave):
            s = self.sessions[user]
            if msg.channel not in s.channels:
                self._error(conn, p.BAD_MESSAGE, f"you are not in channel '{msg.channel}'", msg.channel)
            else:
                self._leave_channel(s, msg.channel)
                self._send(conn, p.Left(channel=msg.channel))
        elif isinstance(msg, p.ChannelMessage):
            members = self.channels.get(msg.channel, ())
            if user not in members:
                self._error(conn, p.BAD_MESSAGE, f"join channel '{msg.channel}' before sending to it", msg.channel)
                return
            out = p.ChannelMessage(channel=msg.channel, text=msg.text, sender=user, ts=round(self.wall(), 3))
            self._to_users(members, out, gap=msg.channel)
            self._keep(msg.channel, out.encode())
            if self.config.cluster and len(members) > sum(u in self.sessions for u in members):
                self._flush_members()
                self._out.append(RoomFrame(msg.channel, out.encode()))
        elif isinstance(msg, p.Chat):
            self._chat(user, conn, msg)
        elif isinstance(msg, p.RoomCallJoin):
            self._room_call_join(user, conn, msg)
        elif isinstance(msg, p.RoomCallLeave):
            rc = self.in_room_call.get(user)
            if rc is None or rc.channel != msg.channel:
                self._error(conn, p.BAD_MESSAGE, f"you are not in the call of room '{msg.channel}'", msg.channel)
            else:
                self._leave_room_call(user, rc, "left")
        elif isinstance(msg, p.Hello):
            self._error(conn, p.BAD_MESSAGE, "hello was already received on this connection", "hello")
        elif isinstance(msg, p.Bye):
            self._drop_session(self.sessions[user], now)
            self._close(conn, CLOSE_NORMAL, "bye")

    def _join(self, user: str, conn: Conn, msg: p.Join) -> None:
        s = self.sessions[user]
        new = msg.channel not in s.channels
        if new:
            if len(s.channels) >= self.config.channels_per_user:
                self._error(conn, p.BAD_MESSAGE,
                            f"you are in {len(s.channels)} channels already; the limit is "
                            f"{self.config.channels_per_user}", msg.channel)
                return
            members = self.channels.setdefault(msg.channel, set())
            self._to_users(members, p.ChannelMember(channel=msg.channel, user_id=user, event="joined",
                                                    display_name=s.display_name))
            members.add(user)
            s.channels.add(msg.channel)
            self._share(s)
        members = self.channels[msg.channel]
        rc = self.room_calls.get(msg.channel)
        call = p.RoomCallInfo(call_id=rc.call_id, participants=rc.participants()) if rc is not None else None
        self._send(conn, p.Joined(channel=msg.channel, call=call,
                                  members=tuple(self._info_of(u) for u in sorted(members))))
        if new:
            for text in self.history.get(msg.channel, ()):
                self._record(s, text)  # numbered and kept like any message to this user
                self._out.append(Send(conn, text))

    def _keep(self, channel: str, text: str) -> None:
        """Keep a channel's latest messages for those who join it later (HISTORY_LINES, HISTORY_BYTES)."""
        kept = self.history.setdefault(channel, deque())
        kept.append(text)
        while len(kept) > HISTORY_LINES or (len(kept) > 1 and sum(map(len, kept)) > HISTORY_BYTES):
            kept.popleft()

    def _leave_channel(self, s: Session, channel: str, why: str = "left_room") -> None:
        rc = self.in_room_call.get(s.user_id)
        if rc is not None and rc.channel == channel:
            self._leave_room_call(s.user_id, rc, why)
        s.channels.discard(channel)
        self._share(s)
        members = self.channels.get(channel)
        if members is None:
            return
        members.discard(s.user_id)
        if members:
            self._to_users(members, p.ChannelMember(channel=channel, user_id=s.user_id, event="left",
                                                    display_name=s.display_name))
        else:
            del self.channels[channel]
            self.history.pop(channel, None)

    # ---------------------------------------------------------------- direct chat and room calls

    def _chat(self, user: str, conn: Conn, msg: p.Chat) -> None:
        if msg.to is None:
            self._error(conn, p.BAD_MESSAGE, "field 'to' is missing", msg.id)
        elif msg.to == user:
            self._error(conn, p.BAD_MESSAGE, "you cannot chat with yourself", msg.id)
        elif not self._reachable(msg.to):
            self._error(conn, p.USER_OFFLINE, f"'{msg.to}' is not online; your message was not delivered", msg.id)
        else:
            self._to_user(msg.to, p.Chat(id=msg.id, text=msg.text, sender=user, ts=round(self.wall(), 3)))

    def _room_call_join(self, user: str, conn: Conn, msg: p.RoomCallJoin) -> None:
        channel = msg.channel
        if channel not in self.sessions[user].channels:
            self._error(conn, p.BAD_MESSAGE, f"join room '{channel}' before its call", channel)
            return
        if self.call_of(user) is not None:
            self._error(conn, p.BUSY, "you are in a call; hang up before joining a room's call", channel)
            return
        rc = self.room_calls.get(channel)
        mine = self.in_room_call.get(user)
        if mine is not None and mine is not rc:
            self._leave_room_call(user, mine, "left")  # one room call at a time: joining another leaves this one
        if rc is not None and user in rc.media:  # already in: the same answer again
            self._send(conn, p.RoomCallJoined(channel=channel, call_id=rc.call_id, media=rc.media[user],
                                              participants=rc.participants(besides=user)))
            return
        if rc is not None and len(rc.media) >= p.ROOM_CALL_PEOPLE:
            self._error(conn, p.ROOM_FULL, f"the call in room '{channel}' has {len(rc.media)} people, the most "
                        "a call can have", channel)
            return
        if rc is None:
            wanted = msg.call_id
            taken = wanted is None or wanted in self.calls or wanted in self.room_call_ids
            rc = RoomCall(f"room-{secrets.token_hex(6)}" if taken else wanted, channel)
            self.room_calls[channel] = self.room_call_ids[rc.call_id] = rc
        media, notice = msg.media, None
        if "video" in media and rc.video >= p.ROOM_CALL_VIDEO:
            media = tuple(k for k in media if k != "video") or ("audio",)
            notice = (f"video is limited to {p.ROOM_CALL_VIDEO} people in a call, and {rc.video} send it; you "
                      "joined with audio only")
        others = rc.participants()
        rc.media[user] = media
        self.in_room_call[user] = rc
        self._send(conn, p.RoomCallJoined(channel=channel, call_id=rc.call_id, media=media, participants=others,
                                          notice=notice))
        self._to_users(self.channels[channel], p.RoomCallMember(channel=channel, call_id=rc.call_id,
                                                                user_id=user, event="joined", media=media))
        self._refresh(self.sessions[user])
        self._share(self.sessions[user])

    def _leave_room_call(self, user: str, rc: RoomCall, reason: str) -> None:
        del rc.media[user]
        self.in_room_call.pop(user, None)
        members = [u for u in self.channels.get(rc.channel, ()) if u in self.sessions]  # a session ending is gone
        self._to_users(members, p.RoomCallMember(
            channel=rc.channel, call_id=rc.call_id, user_id=user, event="left", reason=reason))
        if not rc.media:
            del self.room_calls[rc.channel]
            del self.room_call_ids[rc.call_id]
        s = self.sessions.get(user)
        if s is not None:
            self._refresh(s)
            self._share(s)

    # ---------------------------------------------------------------- calls

    def _relay(self, user: str, conn: Conn, msg: p.Relayed, now: float) -> None:
        if msg.to is None:
            self._error(conn, p.BAD_MESSAGE, "field 'to' is missing", msg.type)
            return
        if isinstance(msg, p.CallIncoming):
            self._call_incoming(user, conn, msg, now)
            return
        rc = self.room_call_ids.get(msg.call_id)
        if rc is not None:
            if not isinstance(msg, (p.WebrtcOffer, p.WebrtcAnswer, p.WebrtcIceCandidate, p.ScreenShare)):
                self._error(conn, p.INVALID_STATE, f"'{msg.type}' has no place in a room's call; send "
                            "room_call_leave to leave it", msg.call_id)
            elif user not in rc.media or msg.to not in rc.media or msg.to == user:
                self._error(conn, p.NOT_IN_CALL, f"you are not in call '{msg.call_id}' with '{msg.to}'", msg.call_id)
            else:
                self._to_user(msg.to, msg.routed(user))
            return
        call = self.calls.get(msg.call_id)
        if call is None or not call.involves(user) or call.peer_of(user) != msg.to:
            self._error(conn, p.NOT_IN_CALL, f"you are not in call '{msg.call_id}' with '{msg.to}'", msg.call_id)
            return
        try:
            if isinstance(msg, p.CallAccepted):
                self._accept(user, conn, call, now)
            elif isinstance(msg, p.CallRejected):
                if user != call.callee:
                    raise _Refused(p.INVALID_STATE, "only the callee can reject; the caller ends it with call_ended")
                call.apply(Event.REJECT, now=now, reason=msg.reason)
            elif isinstance(msg, p.CallEnded):
                cancel = call.state is State.RINGING and user == call.caller
                call.apply(Event.CANCEL if cancel else Event.HANGUP, now=now, reason=msg.reason)
        except IllegalTransition as exc:
            self._error(conn, p.INVALID_STATE, str(exc), call.call_id)
            return
        except _Refused as exc:
            self._error(conn, exc.code, str(exc), call.call_id)
            return
        self._to_user(msg.to, msg.routed(user))
        if not call.live:
            self._forget_call(call)

    def _accept(self, user: str, conn: Conn, call: Call, now: float) -> None:
        if user != call.callee:
            raise _Refused(p.INVALID_STATE, "only the callee can accept a call")
        for party in call.parties():
            other = self.call_of(party)
            if other is not None and other is not call:
                raise _Refused(p.BUSY, f"'{party}' is already in call '{other.call_id}'")
            if party in self.in_room_call:
                raise _Refused(p.BUSY, f"'{party}' is in the call of room '{self.in_room_call[party].channel}'")
        self._established(call, now)

    def _established(self, call: Call, now: float) -> None:
        """The call is accepted: its parties here are in it."""
        call.apply(Event.ACCEPT, now=now)
        self.call_deadlines.pop(call.call_id, None)
        for party in call.parties():
            if party in self.sessions:  # one on another node is its node's to count
                self.in_call[party] = call
                self._refresh(self.sessions[party])

    def _call_incoming(self, user: str, conn: Conn, msg: p.CallIncoming, now: float) -> None:
        callee = msg.to
        if callee == user:
            self._error(conn, p.BAD_MESSAGE, "you cannot call yourself", msg.call_id)
            return
        if msg.call_id in self.calls or msg.call_id in self.room_call_ids:
            self._error(conn, p.BAD_MESSAGE, f"call_id '{msg.call_id}' is already in use", msg.call_id)
            return
        if not self._reachable(callee):
            self._error(conn, p.USER_OFFLINE, f"'{callee}' is not online", msg.call_id)
            return
        if any(c.caller == user and c.callee == callee for c in self.calls.values()):
            self._error(conn, p.BUSY, f"you are already calling '{callee}'", msg.call_id)
            return
        if self._engaged(user, besides=callee):
            self._error(conn, p.BUSY, "you are already in a call; hang up first", msg.call_id)
            return
        if self._engaged(callee, besides=user):
            self._send(conn, p.CallRejected(call_id=msg.call_id, sender=callee, reason="busy"))
            return
        call = Call(msg.call_id, caller=user, callee=callee, media=msg.media)
        call.history.append((State.RINGING, now))
        self.calls[call.call_id] = call
        self.call_deadlines[call.call_id] = now + self.config.ring_timeout
        self._due(now + self.config.ring_timeout, "ring", call.call_id)
        caller = self.sessions[user]
        self._to_user(callee, p.CallIncoming(call_id=msg.call_id, media=msg.media, sender=user,
                                             display_name=caller.display_name))

    def _reachable(self, user: str) -> bool:
        """Has a session, here or on another node (where its node decides whether it is busy)."""
        return user in self.sessions or user in self.remote

    def _engaged(self, user: str, *, besides: str) -> bool:
        """In a room's call or an established call, or ringing with someone other than `besides` (glare with them
        is allowed)."""
        return user in self.in_room_call or any(
            c.involves(user) and (c.established or c.peer_of(user) != besides) for c in self.calls.values()
        )

    def _forget_call(self, call: Call) -> None:
        self.calls.pop(call.call_id, None)
        self.call_deadlines.pop(call.call_id, None)
        for party in call.parties():
            if self.in_call.get(party) is call:
                del self.in_call[party]
            s = self.sessions.get(party)
            if s is not None:
                self._refresh(s)

    # ---------------------------------------------------------------- presence

    def _derive_status(self, s: Session) -> str:
        if s.conn is None:
            return "reconnecting"
        in_call = self.call_of(s.user_id) is not None or s.user_id in self.in_room_call
        return "in_call" if in_call else "online"

    def _refresh(self, s: Session) -> None:
        status = self._derive_status(s)
        if status != s.status:
            s.status = status
            self._announce(s, status)

    def _announce(self, s: Session, status: str) -> None:
        """Tell everyone else, at the next presence tick, together with every other change in it (in a
        cluster, the other nodes too)."""
        info = p.UserInfo(user_id=s.user_id, display_name=s.display_name, status=status, key=s.key)
        if self.config.cluster:
            self._members[s.user_id] = self._member(s, info)
        self._queue_presence(info)

    def _tick_clock(self) -> float:
        """A session's start: the wall clock, but later than every session start this node has heard of, so that
        a session begun after hearing of another is the newer one whatever the clocks of the nodes say."""
        self._clock = max(self.wall(), self._clock + 1e-6)
        return self._clock

    def _member(self, s: Session, info: p.UserInfo) -> Member:
        rc = self.in_room_call.get(s.user_id)
        return Member(info, s.tag, s.since, tuple(sorted(s.channels)),
                      (rc.channel, rc.call_id, rc.media[s.user_id]) if rc is not None else None)

    def _share(self, s: Session) -> None:
        """The other nodes of a cluster are told the user's rooms and room call, with its presence."""
        if self.config.cluster and s.user_id in self.sessions:
            self._members[s.user_id] = self._member(s, self._info(s))
            self._tick()

    def _flush_members(self) -> None:
        """Before a frame to another node: that node first hears of every change here, its sender's included."""
        if self._members:
            self._out.append(Announce(tuple(self._members.values())))
            self._members = {}

    def _queue_presence(self, info: p.UserInfo) -> None:
        self._presence[info.user_id] = info
        self._tick()

    def _tick(self) -> None:
        """What changed goes out at the next presence tick: at once, but no sooner after the last tick than
        presence_tick for every TICK_CONNECTIONS connections (at least presence_tick, at most MAX_TICK), since a
        tick costs a frame to each. So a change in a quiet spell goes out on the next pass of the loop (after the
        rest of the event that made it: an accept's two parties share a frame), and a storm's in few ticks."""
        if self._presence_at is None and self.config.presence_tick > 0:
            gap = self.config.presence_tick * max(1.0, len(self.conns) / TICK_CONNECTIONS)
            gap = min(gap, max(MAX_TICK, self.config.presence_tick))
            self._presence_at = max(self._now, self._ticked_at + gap)
            self._due(self._presence_at, "presence", "")

    def _flush_presence(self) -> None:
        """The tick's changes go out: to a client that asked, in presence_batch frames (one, unless it would pass
        PRESENCE_BATCH_BYTES); to an older one, a presence frame per change but its own."""
        changes, self._presence, self._presence_at = self._presence, {}, None
        self._flush_members()
        if not changes:
            return
        self._snapshot = None  # the next login's user list is built afresh
        self._ticked_at = self._now
        entries = _tell(self._roster, changes)
        batch, single = [], []
        for o in self.sessions.values():
            if o.conn is not None:
                (batch if o.batch else single).append(o)
        for info in changes.values():  # older clients: one frame each, to all but its subject
            conns = tuple(o.conn for o in single if o.user_id != info.user_id)
            if conns:
                self._out.append(Broadcast(conns, p.Presence(user_id=info.user_id, display_name=info.display_name,
                                                             status=info.status, key=info.key).encode()))
        # The same frames for all (built once, whatever the storm): a client skips its own entry, and a change
        # alone in its tick is not sent to its subject.
        alone = next(iter(changes)) if len(changes) == 1 else None
        conns = tuple(o.conn for o in batch if o.user_id != alone)
        if conns:
            for text in p.presence_batches(entries, PRESENCE_BATCH_BYTES):
                self._out.append(Broadcast(conns, text))

    def _user_list(self) -> list[str]:
        """Every user as presence_batch frames (the receiver skips itself), from the roster and this tick's changes,
        built at most once a tick. In a storm of logins each gets the same frames, and the tick's batch then
        brings each up to date with what changed since."""
        if self._snapshot is None:
            self._snapshot = p.presence_batches(self._told().values(), PRESENCE_BATCH_BYTES)
        return self._snapshot

    def _told(self) -> dict[str, str]:
        """The roster with this tick's changes, which every client is about to be told: each user, encoded."""
        if not self._presence:
            return self._roster
        told = dict(self._roster)
        _tell(told, self._presence)
        return told

    def _everyone(self) -> list[p.UserInfo]:
        """Every user with a session, here or on another node."""
        return [*(self._info(o) for o in self.sessions.values()), *(r.member.info for r in self.remote.values())]

    def _info_of(self, user: str) -> p.UserInfo:
        s = self.sessions.get(user)
        return self._info(s) if s is not None else self.remote[user].member.info

    def _info(self, s: Session) -> p.UserInfo:
        return p.UserInfo(user_id=s.user_id, display_name=s.display_name, status=self._derive_status(s), key=s.key)

    # ---------------------------------------------------------------- output

    def _record(self, s: Session, text: str) -> None:
        """Number and keep a message for a user, for its replay on resume (server.replay). If the log overflows
        while the user is away, the session can no longer resume, and ends."""
        kept = s.replay.record(text, connected=s.conn is not None)
        if self.config.cluster:
            self._out.append(Keep(s.user_id, s.tag, s.replay.sent, text))
        if not kept:
            r = s.replay
            log.warning("more for %s than its replay log holds (%d messages, %d bytes) while it is away; "
                        "ending its session", s.user_id, r.missed, r.missed_bytes)
            s.deadline = float("-inf")  # the next expire() takes it offline
            self._due(s.deadline, "session", s.user_id)

    def _shed(self, s: Session) -> bool:
        """Whether a channel message for this user is held back (counted as a gap, not sent nor kept): its
        connection has much left unread, or it is away and half its replay buffer is used. So call
        signaling, never held back, always has room."""
        if s.conn is not None:
            return self.conns[s.conn].congested
        cfg = self.config
        return s.replay.missed >= cfg.queue_limit // 2 or s.replay.missed_bytes >= cfg.replay_bytes // 2

    def _flush_gaps(self, s: Session) -> None:
        gaps, s.gaps = s.gaps, {}
        for channel, missed in gaps.items():
            if channel in s.channels:
                self._to_user(s.user_id, p.ChannelGap(channel=channel, missed=missed))

    def _to_user(self, user: str, msg: p.Message) -> None:
        """Deliver to a user now, or keep it until the user is back; one on another node, through the broker."""
        s = self.sessions.get(user)
        if s is None:
            r = self.remote.get(user)
            if r is not None:
                self._flush_members()
                self._out.append(Forward(r.node, user, msg.encode()))
            return
        self._deliver(s, msg.encode())

    def _deliver(self, s: Session, text: str) -> None:
        self._record(s, text)
        if s.conn is not None:
            self._out.append(Send(s.conn, text))

    def _to_users(self, users: Iterable[str], msg: p.Message, *, gap: str | None = None) -> None:
        """The same message to several users; with `gap` (a channel), held back from those who cannot take
        it now, who are later told how many they missed there."""
        self._deliver_all(users, msg.encode(), gap)

    def _deliver_all(self, users: Iterable[str], text: str, gap: str | None = None) -> None:
        conns = []
        for u in users:
            s = self.sessions.get(u)
            if s is None:
                continue  # on another node, which delivers it there
            if gap is not None and self._shed(s):
                s.gaps[gap] = s.gaps.get(gap, 0) + 1
                continue
            self._record(s, text)
            if s.conn is not None:
                conns.append(s.conn)
        if conns:
            self._out.append(Broadcast(tuple(conns), text))

    def _send(self, conn: Conn, msg: p.Message) -> None:
        """A reply on one connection: numbered like any message when it belongs to a session."""
        cs = self.conns.get(conn)
        s = self.sessions.get(cs.user) if cs is not None and cs.user is not None else None
        if s is not None and s.conn == conn:
            self._to_user(s.user_id, msg)
        else:
            self._out.append(Send(conn, msg.encode()))

    def _error(self, conn: Conn, code: str, message: str, ref: str | None = None) -> None:
        self._send(conn, p.Error(code=code, message=message, ref=ref))

    def _close(self, conn: Conn, code: int, reason: str) -> None:
        cs = self.conns.get(conn)
        if cs is not None:
            cs.closing = True
        self._out.append(Close(conn, code, reason))

    def _take(self) -> list[Action]:
        if (self._presence or self._members) and self.config.presence_tick <= 0:
            self._flush_presence()
        out, self._out = self._out, []
        return out

    def _rate_limited(self, conn: Conn, cs: _ConnState, now: float) -> bool:
        cfg = self.config
        if cs.bucket.take(now):
            if cs.refused and now - cs.last_refused > 5.0:
                cs.refused = 0  # the flood is over
            return False
        cs.refused += 1
        cs.last_refused = now
        if cs.refused == 1:
            self._error(conn, p.RATE_LIMITED, f"more than {cfg.rate:g} messages a second; this message was dropped")
        elif cs.refused > cfg.flood_limit:
            self._close(conn, CLOSE_POLICY, "rate limit exceeded")
        return True


class _Refused(Exception):
    """A call message the hub refuses, with the wire error code to answer it with."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def _tell(roster: dict[str, str], changes: dict[str, p.UserInfo]) -> list[str]:
    """Tell a roster these changes (an offline user leaves it); their encoded entries, in order."""
    entries = []
    for uid, info in changes.items():
        entries.append(text := info.encode())
        if info.status == "offline":
            roster.pop(uid, None)
        else:
            roster[uid] = text
    return entries


def _owns(m: Member, hello: p.Hello, proven: str | None) -> bool:
    """Whether a hello comes from the client of a session on another node: its resume token, or its key."""
    if hello.resume_token is not None and hmac.compare_digest(token_hash(hello.resume_token), m.token_hash):
        return True
    return bool(proven) and proven == m.info.key


def token_hash(resume_token: str) -> str:
    """What other nodes of a cluster know of a session's resume token: enough to check one, not to use it."""
    return hashlib.sha256(resume_token.encode()).hexdigest()[:32]


def _too_big(raw: str | bytes) -> bool:
    if isinstance(raw, str):
        return len(raw) * 4 > p.MAX_MESSAGE_BYTES and len(raw.encode()) > p.MAX_MESSAGE_BYTES
    return len(raw) > p.MAX_MESSAGE_BYTES
