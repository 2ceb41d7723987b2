"""The wire protocol: every message type, its fields and limits, and JSON encode/decode naming bad fields."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar

import orjson

PROTOCOL_VERSION = 1

# Stated limits. A frame larger than MAX_MESSAGE_BYTES is refused whole; the string limits are per field.
MAX_MESSAGE_BYTES = 64 * 1024
MAX_USER_ID = 64
MAX_DISPLAY_NAME = 100
MAX_CHANNEL = 64
MAX_TEXT = 4000
MAX_CALL_ID = 64
MAX_REASON = 64
MAX_TOKEN = 256
MAX_SDP = 60 * 1024
MAX_CANDIDATE = 1024
MAX_SERVER_ID = 64
MAX_URL = 2048
MAX_CHAT_ID = 64
ROOM_CALL_PEOPLE = 8  # people in one room call (a full mesh: each sends to every other)
ROOM_CALL_VIDEO = 4  # ... of whom this many may send video; later ones join with audio only

# HTTP headers of the transport (docs/protocol.md section 1).
SERVER_ID_HEADER = "Callbox-Server-Id"  # in the answer to GET /health: which server this is
NONCE_HEADER = "Callbox-Nonce"  # in the WebSocket handshake's response: what this connection's hello proof signs

USER_STATUSES = ("online", "in_call", "reconnecting", "offline")
MEDIA_KINDS = ("audio", "video")

# Error codes the server sends.
BAD_MESSAGE = "bad_message"
UNKNOWN_TYPE = "unknown_type"
NOT_AUTHENTICATED = "not_authenticated"
AUTH_FAILED = "auth_failed"
NAME_TAKEN = "name_taken"
USER_OFFLINE = "user_offline"
NOT_IN_CALL = "not_in_call"
BUSY = "busy"
RATE_LIMITED = "rate_limited"
INVALID_STATE = "invalid_state"
UNSUPPORTED_PROTOCOL = "unsupported_protocol"
PROOF_REQUIRED = "proof_required"  # hello has a key but no proof: `ref` is the nonce to sign
BAD_PROOF = "bad_proof"
KEY_MISMATCH = "key_mismatch"  # the user id belongs to another key on this server
LOOKALIKE_ID = "lookalike_id"  # the user id looks like one that someone else uses on this server
ROOM_FULL = "room_full"  # the room's call has ROOM_CALL_PEOPLE people already

_IDENT = re.compile(r"[\w.@+\-]+")
_B64URL = re.compile(r"[A-Za-z0-9_-]+")


class ProtocolError(ValueError):
    """A message that cannot be decoded. `code` is a wire error code; `field` names the part at fault."""

    def __init__(self, message: str, *, code: str = BAD_MESSAGE, field: str | None = None, ref: str | None = None):
        super().__init__(message)
        self.code = code
        self.field = field
        self.ref = ref


# ---- field checkers: each takes (name, value) and returns the value or raises ProtocolError naming the field ----

Checker = Callable[[str, Any], Any]


def _fail(name: str, what: str) -> ProtocolError:
    return ProtocolError(f"field '{name}' {what}", field=name)


def text(max_len: int, *, min_len: int = 1) -> Checker:
    def check(name: str, value: Any) -> str:
        if not isinstance(value, str):
            raise _fail(name, f"must be a string, not {_json_kind(value)}")
        if len(value) < min_len:
            raise _fail(name, "must not be empty")
        if len(value) > max_len:
            raise _fail(name, f"is {len(value)} characters long; the limit is {max_len}")
        return value

    return check


def ident(max_len: int) -> Checker:
    base = text(max_len)

    def check(name: str, value: Any) -> str:
        base(name, value)
        if not _IDENT.fullmatch(value):
            raise _fail(name, "may hold only letters, digits and . _ - + @")
        return value

    return check


def integer(lo: int, hi: int) -> Checker:
    def check(name: str, value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _fail(name, f"must be an integer, not {_json_kind(value)}")
        if not lo <= value <= hi:
            raise _fail(name, f"must be between {lo} and {hi}")
        return value

    return check


def number(name: str, value: Any) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise _fail(name, f"must be a number, not {_json_kind(value)}")
    return float(value)


def boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(name, f"must be true or false, not {_json_kind(value)}")
    return value


def one_of(*choices: str) -> Checker:
    def check(name: str, value: Any) -> str:
        if value not in choices:
            raise _fail(name, f"must be one of {', '.join(choices)}")
        return value

    return check


def media(name: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise _fail(name, 'must be a list such as ["audio"] or ["audio","video"]')
    if any(v not in MEDIA_KINDS for v in value) or len(set(value)) != len(value):
        raise _fail(name, 'may hold only "audio" and "video", each once')
    return tuple(value)


def nullable(check: Checker) -> Checker:
    def wrapped(name: str, value: Any) -> Any:
        return None if value is None else check(name, value)

    return wrapped


def list_of(item: type[Message], max_items: int = 100_000) -> Checker:
    def check(name: str, value: Any) -> tuple:
        if not isinstance(value, list):
            raise _fail(name, f"must be a list, not {_json_kind(value)}")
        if len(value) > max_items:
            raise _fail(name, f"has {len(value)} items; the limit is {max_items}")
        return tuple(item.from_dict(v, where=f"{name}[{i}]") for i, v in enumerate(value))

    return check


def obj(item: type[Message]) -> Checker:
    return lambda name, value: item.from_dict(value, where=name)


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def spec(check: Checker, *, key: str | None = None, default: Any = MISSING) -> Any:
    """Declare a message field: its checker, its JSON key when it differs, and its default if optional."""
    meta = {"check": check, "key": key}
    if default is MISSING:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


# ---- message classes ----

REGISTRY: dict[str, type[Message]] = {}


@dataclass(frozen=True, kw_only=True)
class Message:
    """Base of all messages (and of the objects nested in them). `type` is the JSON discriminator."""

    type: ClassVar[str] = ""

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if cls.type and cls.type in REGISTRY:
            raise TypeError(f"message type {cls.type} declared twice")
        if cls.type:
            REGISTRY[cls.type] = cls

    @classmethod
    def _fields(cls) -> tuple[tuple[str, str, Checker, Any], ...]:
        """(attribute, JSON key, checker, default) per field, worked out once per class: the relay's hot path."""
        spec = cls.__dict__.get("_spec")
        if spec is None:
            spec = tuple((f.name, f.metadata.get("key") or f.name, f.metadata["check"], f.default)
                         for f in fields(cls))
            cls._spec = spec
        return spec

    @classmethod
    def from_dict(cls, data: Any, *, where: str | None = None) -> Message:
        if not isinstance(data, dict):
            raise ProtocolError(f"{where or 'message'} must be a JSON object, not {_json_kind(data)}", field=where)
        values = {}
        for name, key, check, default in cls._fields():
            if key in data:
                values[name] = check(f"{where}.{key}" if where else key, data[key])
            elif default is MISSING:
                label = f"{where}.{key}" if where else key
                raise ProtocolError(f"field '{label}' is missing", field=label, ref=cls.type or None)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type} if self.type else {}
        for name, key, _check, default in self._fields():
            value = getattr(self, name)
            if value is None or value == ():
                if default == value:
                    continue  # optional fields that are unset stay off the wire
            elif isinstance(value, tuple):
                value = [v.to_dict() if isinstance(v, Message) else v for v in value]
            elif isinstance(value, Message):
                value = value.to_dict()
            out[key] = value
        return out

    def encode(self) -> str:
        return _encode(self.to_dict())


def _encode(data: dict) -> str:
    return orjson.dumps(data).decode()  # compact, UTF-8; about 10x the standard library's speed


_decode = orjson.loads  # strict JSON: no NaN or Infinity, integers within 64 bits, nesting within 1024


USER_ID = ident(MAX_USER_ID)
CALL_ID = ident(MAX_CALL_ID)
CHANNEL = ident(MAX_CHANNEL)
DISPLAY_NAME = text(MAX_DISPLAY_NAME)
REASON = text(MAX_REASON)
SERVER_ID = ident(MAX_SERVER_ID)
SERVER_KINDS = ("dedicated", "embedded")


def b64url(length: int) -> Checker:
    """Exactly `length` characters of unpadded base64url: an identity key (43) or a signature (86)."""

    def check(name: str, value: Any) -> str:
        if not isinstance(value, str):
            raise _fail(name, f"must be a string, not {_json_kind(value)}")
        if len(value) != length or not _B64URL.fullmatch(value):
            raise _fail(name, f"must be {length} characters of unpadded base64url")
        return value

    return check


def server_url(name: str, value: Any) -> str:
    text(MAX_URL)(name, value)
    if not value.startswith(("ws://", "wss://")):
        raise _fail(name, "must start with ws:// or wss://")
    return value


KEY = b64url(43)  # an Ed25519 public key: 32 bytes
SIGNATURE = b64url(86)  # an Ed25519 signature: 64 bytes


# -- nested objects --


@dataclass(frozen=True, kw_only=True)
class UserInfo(Message):
    user_id: str = spec(USER_ID)
    display_name: str = spec(DISPLAY_NAME)
    status: str = spec(one_of(*USER_STATUSES))
    key: str | None = spec(nullable(KEY), default=None)  # the identity key it proved in hello, if any


@dataclass(frozen=True, kw_only=True)
class ServerInfo(Message):
    version: str = spec(text(64))
    ping_interval: float = spec(number)
    resume_grace: float = spec(number)
    max_message_bytes: int = spec(integer(1, 1 << 30), default=MAX_MESSAGE_BYTES)
    queue_limit: int = spec(integer(0, 1 << 30), default=0)
    # Which server this is, for choosing among several on a LAN (the same facts as its mDNS TXT record).
    server_id: str | None = spec(nullable(SERVER_ID), default=None)  # new at every start
    kind: str | None = spec(nullable(one_of(*SERVER_KINDS)), default=None)
    started: float | None = spec(nullable(number), default=None)  # wall clock, seconds
    host_user: str | None = spec(nullable(USER_ID), default=None)  # whose app hosts an embedded server


@dataclass(frozen=True, kw_only=True)
class ActiveCall(Message):
    """A call the client says it is still in, sent in `hello` so a restarted server can restore it."""

    call_id: str = spec(CALL_ID)
    peer: str = spec(USER_ID)
    media: tuple[str, ...] = spec(media, default=("audio",))


@dataclass(frozen=True, kw_only=True)
class Participant(Message):
    """Someone in a room's call, and what they send in it."""

    user_id: str = spec(USER_ID)
    media: tuple[str, ...] = spec(media, default=("audio",))


@dataclass(frozen=True, kw_only=True)
class RoomCallInfo(Message):
    """A room's call as a newcomer to the room sees it (in `joined`)."""

    call_id: str = spec(CALL_ID)
    participants: tuple[Participant, ...] = spec(list_of(Participant, ROOM_CALL_PEOPLE))


# -- session --


@dataclass(frozen=True, kw_only=True)
class Hello(Message):
    type: ClassVar[str] = "hello"
    protocol: int = spec(integer(0, 2**31))
    user_id: str = spec(USER_ID)
    display_name: str = spec(DISPLAY_NAME)
    token: str | None = spec(nullable(text(MAX_TOKEN, min_len=0)), default=None)
    resume_token: str | None = spec(nullable(text(MAX_TOKEN)), default=None)
    calls: tuple[ActiveCall, ...] = spec(list_of(ActiveCall, 4), default=())
    # When resuming: how many messages (other than presence and connection_established) the client received
    # in this session; the server replays those it sent after that.
    received: int | None = spec(nullable(integer(0, 2**53)), default=None)
    # The client's identity key, and its signature over the connection's nonce and user_id (see shared.identity).
    key: str | None = spec(nullable(KEY), default=None)
    proof: str | None = spec(nullable(SIGNATURE), default=None)
    # The client takes presence changes in presence_batch frames (§3, presence_batch); older servers ignore it.
    presence_batch: bool | None = spec(nullable(boolean), default=None)


@dataclass(frozen=True, kw_only=True)
class ConnectionEstablished(Message):
    type: ClassVar[str] = "connection_established"
    user_id: str = spec(USER_ID)
    resume_token: str = spec(text(MAX_TOKEN))
    users: tuple[UserInfo, ...] = spec(list_of(UserInfo))
    server: ServerInfo = spec(obj(ServerInfo))
    resumed: bool = spec(boolean, default=False)
    # How many messages the server has received from this session since hello; a resuming client resends
    # what it sent after that (frames that were on the wire when the connection broke).
    received: int = spec(integer(0, 2**53), default=0)
    # To a client that asked for presence_batch: `users` is empty, and the user list follows at once in this
    # many presence_batch frames, before any other message (§2.1).
    users_follow: int | None = spec(nullable(integer(0, 2**31)), default=None)


@dataclass(frozen=True, kw_only=True)
class Presence(Message):
    type: ClassVar[str] = "presence"
    user_id: str = spec(USER_ID)
    display_name: str = spec(DISPLAY_NAME)
    status: str = spec(one_of(*USER_STATUSES))
    key: str | None = spec(nullable(KEY), default=None)


@dataclass(frozen=True, kw_only=True)
class PresenceBatch(Message):
    """Server to client, to one that asked for it in hello: the presence changes of one tick, each user once, in
    the order they first changed; like presence, neither numbered nor counted."""

    type: ClassVar[str] = "presence_batch"
    users: tuple[UserInfo, ...] = spec(list_of(UserInfo))


def presence_batches(entries: Iterable[str], limit: int) -> list[str]:
    """presence_batch frames carrying these encoded UserInfo entries, in order, each at most `limit` bytes of
    UTF-8 (an entry longer than that alone in its frame): the frames PresenceBatch would encode, built by joining
    strings, so a server can keep its users encoded and list thousands of them without building a message for each."""
    head, tail = '{"type":"presence_batch","users":[', "]}"
    frames: list[str] = []
    chunk: list[str] = []
    size = room = limit - len(head) - len(tail)
    for entry in entries:
        n = (len(entry) if entry.isascii() else len(entry.encode())) + 1
        if chunk and n > size:
            frames.append(head + ",".join(chunk) + tail)
            chunk, size = [], room
        chunk.append(entry)
        size -= n
    if chunk:
        frames.append(head + ",".join(chunk) + tail)
    return frames


@dataclass(frozen=True, kw_only=True)
class Ack(Message):
    """Either way, never numbered nor counted (§2.3): I have the first `received` numbered messages of this
    session from you, so you need not keep them for a resume."""

    type: ClassVar[str] = "ack"
    received: int = spec(integer(0, 2**53))


@dataclass(frozen=True, kw_only=True)
class Bye(Message):
    """Client to server: I am leaving on purpose; skip the resume grace."""

    type: ClassVar[str] = "bye"


@dataclass(frozen=True, kw_only=True)
class Error(Message):
    type: ClassVar[str] = "error"
    code: str = spec(text(64))
    message: str = spec(text(1000))
    ref: str | None = spec(nullable(text(MAX_SDP, min_len=0)), default=None)


@dataclass(frozen=True, kw_only=True)
class Redirect(Message):
    """Server to client: this server is handing over (another one won on the LAN); go to `url` now."""

    type: ClassVar[str] = "redirect"
    url: str = spec(server_url)
    server_id: str | None = spec(nullable(SERVER_ID), default=None)


# -- calls: relayed between two users; the sender writes `to`, the receiver reads `from` --


@dataclass(frozen=True, kw_only=True)
class Relayed(Message):
    call_id: str = spec(CALL_ID)
    to: str | None = spec(nullable(USER_ID), default=None)
    sender: str | None = spec(nullable(USER_ID), key="from", default=None)

    def routed(self, sender: str) -> Relayed:
        """The same message as the server delivers it: `from` set to the real sender, `to` dropped."""
        routed = object.__new__(type(self))  # what dataclasses.replace does, without re-running the checks
        routed.__dict__.update(self.__dict__, to=None, sender=sender)
        return routed


@dataclass(frozen=True, kw_only=True)
class CallIncoming(Relayed):
    type: ClassVar[str] = "call_incoming"
    media: tuple[str, ...] = spec(media, default=("audio",))
    display_name: str | None = spec(nullable(DISPLAY_NAME), default=None)


@dataclass(frozen=True, kw_only=True)
class CallAccepted(Relayed):
    type: ClassVar[str] = "call_accepted"
    media: tuple[str, ...] | None = spec(nullable(media), default=None)


@dataclass(frozen=True, kw_only=True)
class CallRejected(Relayed):
    type: ClassVar[str] = "call_rejected"
    reason: str = spec(REASON, default="rejected")


@dataclass(frozen=True, kw_only=True)
class CallEnded(Relayed):
    type: ClassVar[str] = "call_ended"
    reason: str = spec(REASON, default="hangup")


@dataclass(frozen=True, kw_only=True)
class WebrtcOffer(Relayed):
    type: ClassVar[str] = "webrtc_offer"
    sdp: str = spec(text(MAX_SDP))
    # The sender's identity key's signature over the call, the sender and the SDP's DTLS fingerprints.
    signature: str | None = spec(nullable(SIGNATURE), default=None)


@dataclass(frozen=True, kw_only=True)
class WebrtcAnswer(Relayed):
    type: ClassVar[str] = "webrtc_answer"
    sdp: str = spec(text(MAX_SDP))
    signature: str | None = spec(nullable(SIGNATURE), default=None)


@dataclass(frozen=True, kw_only=True)
class WebrtcIceCandidate(Relayed):
    type: ClassVar[str] = "webrtc_ice_candidate"
    candidate: str = spec(text(MAX_CANDIDATE, min_len=0))  # "" marks the end of candidates
    sdpMid: str | None = spec(nullable(text(64, min_len=0)), default=None)
    sdpMLineIndex: int | None = spec(nullable(integer(0, 1000)), default=None)


@dataclass(frozen=True, kw_only=True)
class ScreenShare(Relayed):
    """The sender started (active) or stopped sharing its screen in this call: its frames come on the peer
    connection's screen transceiver, whose track id starts with "screen-" (docs/protocol.md §3.3)."""

    type: ClassVar[str] = "screen_share"
    active: bool = spec(boolean)


# -- channels --


@dataclass(frozen=True, kw_only=True)
class Join(Message):
    type: ClassVar[str] = "join"
    channel: str = spec(CHANNEL)


@dataclass(frozen=True, kw_only=True)
class Joined(Message):
    type: ClassVar[str] = "joined"
    channel: str = spec(CHANNEL)
    members: tuple[UserInfo, ...] = spec(list_of(UserInfo))
    call: RoomCallInfo | None = spec(nullable(obj(RoomCallInfo)), default=None)  # the room's call, if it has one


@dataclass(frozen=True, kw_only=True)
class Leave(Message):
    type: ClassVar[str] = "leave"
    channel: str = spec(CHANNEL)


@dataclass(frozen=True, kw_only=True)
class Left(Message):
    type: ClassVar[str] = "left"
    channel: str = spec(CHANNEL)


@dataclass(frozen=True, kw_only=True)
class ChannelMember(Message):
    """Server to the other members of a channel: someone joined or left it."""

    type: ClassVar[str] = "channel_member"
    channel: str = spec(CHANNEL)
    user_id: str = spec(USER_ID)
    event: str = spec(one_of("joined", "left"))
    # Who it is, so the members can name a newcomer before its presence reaches them (it comes at the next tick).
    display_name: str | None = spec(nullable(DISPLAY_NAME), default=None)


@dataclass(frozen=True, kw_only=True)
class ChannelMessage(Message):
    type: ClassVar[str] = "channel_message"
    channel: str = spec(CHANNEL)
    text: str = spec(text(MAX_TEXT))
    sender: str | None = spec(nullable(USER_ID), key="from", default=None)
    ts: float | None = spec(nullable(number), default=None)


@dataclass(frozen=True, kw_only=True)
class ChannelGap(Message):
    """Server to a member: `missed` messages of the channel were not sent to you (you were not reading, or
    were away too long); they are not replayed."""

    type: ClassVar[str] = "channel_gap"
    channel: str = spec(CHANNEL)
    missed: int = spec(integer(1, 2**53))


# -- direct chat --


@dataclass(frozen=True, kw_only=True)
class Chat(Message):
    """A line of text to one person, relayed like the call messages: the sender writes `to`, the receiver reads
    `from` and `ts`; `id` (the sender's) names it in a `user_offline` error when it could not be delivered."""

    type: ClassVar[str] = "chat"
    id: str = spec(ident(MAX_CHAT_ID))
    text: str = spec(text(MAX_TEXT))
    to: str | None = spec(nullable(USER_ID), default=None)
    sender: str | None = spec(nullable(USER_ID), key="from", default=None)
    ts: float | None = spec(nullable(number), default=None)


# -- room calls: a full mesh among the members of a channel who joined its call --


@dataclass(frozen=True, kw_only=True)
class RoomCallJoin(Message):
    type: ClassVar[str] = "room_call_join"
    channel: str = spec(CHANNEL)
    media: tuple[str, ...] = spec(media, default=("audio",))
    # The call it was in when the server restarted: a room with no call yet starts its call under this id.
    call_id: str | None = spec(nullable(CALL_ID), default=None)


@dataclass(frozen=True, kw_only=True)
class RoomCallJoined(Message):
    """Server to the joiner: you are in; offer to each of `participants` (everyone else in the call)."""

    type: ClassVar[str] = "room_call_joined"
    channel: str = spec(CHANNEL)
    call_id: str = spec(CALL_ID)
    media: tuple[str, ...] = spec(media)  # what you may send: less than asked when video is full
    participants: tuple[Participant, ...] = spec(list_of(Participant, ROOM_CALL_PEOPLE))
    notice: str | None = spec(nullable(text(200)), default=None)  # why you got less than you asked for


@dataclass(frozen=True, kw_only=True)
class RoomCallMember(Message):
    """Server to every member of the channel, the subject too: someone joined or left the room's call."""

    type: ClassVar[str] = "room_call_member"
    channel: str = spec(CHANNEL)
    call_id: str = spec(CALL_ID)
    user_id: str = spec(USER_ID)
    event: str = spec(one_of("joined", "left"))
    media: tuple[str, ...] | None = spec(nullable(media), default=None)  # joined: what they send
    reason: str | None = spec(nullable(REASON), default=None)  # left: left, left_room, peer_disconnected


@dataclass(frozen=True, kw_only=True)
class RoomCallLeave(Message):
    type: ClassVar[str] = "room_call_leave"
    channel: str = spec(CHANNEL)


# Messages a client may send; the server refuses any other type with `unknown_type`.
CLIENT_TYPES = frozenset(
    t.type
    for t in (
        Hello, Ack, Bye, CallIncoming, CallAccepted, CallRejected, CallEnded,
        WebrtcOffer, WebrtcAnswer, WebrtcIceCandidate, Join, Leave, ChannelMessage, Chat, RoomCallJoin,
        RoomCallLeave, ScreenShare,
    )
)


def decode(raw: str | bytes, *, allowed: frozenset[str] | None = None) -> Message:
    """Decode one text frame into a typed message, or raise ProtocolError that names what was wrong."""
    if isinstance(raw, (bytes, bytearray, memoryview)):
        raise ProtocolError("binary frames are not supported; send JSON in a text frame")
    try:
        data = _decode(raw)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"a message must be a JSON object, not {_json_kind(data)}")
    kind = data.get("type")
    if kind is None:
        raise ProtocolError("field 'type' is missing", field="type")
    if not isinstance(kind, str):
        raise ProtocolError(f"field 'type' must be a string, not {_json_kind(kind)}", field="type")
    cls = REGISTRY.get(kind)
    if cls is None or (allowed is not None and kind not in allowed):
        raise ProtocolError(f"unknown message type '{kind[:64]}'", code=UNKNOWN_TYPE, field="type", ref=kind[:64])
    try:
        return cls.from_dict(data)
    except ProtocolError as exc:
        exc.ref = kind
        raise
