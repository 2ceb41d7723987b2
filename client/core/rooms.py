"""Rooms: the rooms this user is in (members, chat, unread) and the room call it is in, one Pair per other member.

A room is a channel on the server (docs/protocol.md §3). Its call is a full mesh: the newcomer offers to everyone
already in it (the participants listed in `room_call_joined`) and answers nobody; those already in answer. Each
pair of participants has its own Pair (client.core.pair), so repair works per pair as in a 1:1 call.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from shared import protocol as p
from shared.names import display_name

from . import events as ev
from . import pair as pair_events
from .media import LocalMedia, video_size_for
from .pair import Pair, PairConfig
from .peer import Received
from .tasks import Tasks

log = logging.getLogger("callbox.rooms")

MUTED_AFTER = 1.0  # seconds of digital silence (what a muted sender sends) after which a participant shows muted
HISTORY_KEPT = 500  # chat lines a room keeps in memory (the app keeps them all in its ChatLog)
HISTORY_CHECKED = 100  # the latest lines a line of the server's room history is checked against


@dataclass
class Room:
    name: str
    members: list[str] = field(default_factory=list)  # user ids, sorted
    call_id: str | None = None  # the room's call, when anyone is in it
    call: dict[str, tuple[str, ...]] = field(default_factory=dict)  # who is in the call -> what they send
    lines: list[ev.ChatLine] = field(default_factory=list)
    unread: int = 0


@dataclass
class PeerRecord:
    """What arrived from one participant, over every pair we had with them (a rejoin or a repair makes a new one):
    the latest pair's Received and totals over the earlier ones, so someone who keeps rejoining costs no more."""

    received: Received
    peer_connections: int
    end_reason: str | None = None
    pairs: int = 1
    earlier_audio_frames: int = 0
    earlier_video_frames: int = 0
    earlier_hz: float | None = None

    def then(self, received: Received, peer_connections: int, end_reason: str | None) -> PeerRecord:
        """This record with a newer pair's folded in."""
        return PeerRecord(received, self.peer_connections + peer_connections, end_reason, self.pairs + 1,
                          self.earlier_audio_frames + self.received.audio_frames,
                          self.earlier_video_frames + self.received.video_frames,
                          self.received.dominant_hz() or self.earlier_hz)


class RoomCall:
    """The room call this user is in: what the server granted, and one Pair per other participant."""

    def __init__(self, room: str, want: tuple[str, ...]):
        self.room = room
        self.want = want  # what we asked to send
        self.media: tuple[str, ...] = want  # what the server granted
        self.call_id: str | None = None  # set by room_call_joined
        self.notice: str | None = None
        self.state = "joining"  # joining, active, left
        self.pairs: dict[str, Pair] = {}
        self.peer_media: dict[str, tuple[str, ...]] = {}  # what each other participant sends
        self.ended: dict[str, PeerRecord] = {}  # the pairs that ended, per participant
        self.joined_at: float | None = None  # wall clock
        self.left_at: float | None = None
        self.reason: str | None = None  # why we left (or were refused): left, left_room, or the server's words
        self.stale: set[str] = set()  # pairs without media when a fresh session began: offered anew on rejoin

    def level(self, user: str) -> float:
        pair = self.pairs.get(user)
        return pair.received.level if pair is not None else 0.0

    def muted(self, user: str) -> bool:
        """Whether a participant sends no audio: they joined without it, or have sent digital silence for a
        second (a muted sender sends zeros; a live microphone never does)."""
        if "audio" not in self.peer_media.get(user, ("audio",)):
            return True
        pair = self.pairs.get(user)
        since = pair.received.silent_since if pair is not None else None
        return since is not None and time.monotonic() - since >= MUTED_AFTER

    def record(self, user: str) -> PeerRecord | None:
        """Every pair this call had with a participant, the live one too."""
        ended, live = self.ended.get(user), self.pairs.get(user)
        if live is None:
            return ended
        if ended is None:
            return PeerRecord(live.received, live.attempts)
        return ended.then(live.received, live.attempts, None)


class Rooms:
    """The rooms state of one engine. The engine feeds it server messages and user commands; it sends through
    `send` and tells listeners through `emit`."""

    def __init__(self, me: str, media: LocalMedia, *, send: Callable[[p.Message], None],
                 emit: Callable[[object], None], name_of: Callable[[str], str], pair_config: Callable[[], PairConfig],
                 identity=None, peer_key: Callable[[str], str | None] = lambda user: None,
                 finished_kept: int | None = None):
        self.me = me
        self.media = media
        self.send, self.emit, self.name_of = send, emit, name_of
        self.names: dict[str, str] = {}  # display names that channel_member told, for name_of before presence
        self.pair_config, self.identity, self.peer_key = pair_config, identity, peer_key
        self.rooms: dict[str, Room] = {}
        self.call: RoomCall | None = None
        self.finished: deque[RoomCall] = deque(maxlen=finished_kept)  # room calls left (all, for headless)
        self._closing = Tasks()

    # ------------------------------------------------------------ commands

    def join(self, name: str, *, known=()) -> Room:
        p.CHANNEL("room", name)  # a ProtocolError naming what is wrong with the name
        room = self.rooms.get(name)
        if room is None:
            room = self.rooms[name] = Room(name, lines=list(known)[-HISTORY_KEPT:])
            self._rooms_changed()
        return room

    def leave(self, name: str) -> None:
        if self.call is not None and self.call.room == name:
            self._end_call("left_room")
        if self.rooms.pop(name, None) is not None:
            self._rooms_changed()

    def say(self, name: str, text: str) -> None:
        if name not in self.rooms:
            raise KeyError(f"you are not in room '{name}'")
        p.text(p.MAX_TEXT)("text", text)
        self.send(p.ChannelMessage(channel=name, text=text))

    def mark_read(self, name: str) -> None:
        room = self.rooms.get(name)
        if room is not None and room.unread:
            room.unread = 0
            self._rooms_changed()

    def join_call(self, name: str, *, video: bool) -> None:
        if name not in self.rooms:
            raise KeyError(f"join room '{name}' before its call")
        if self.call is not None and self.call.room == name:
            return
        if self.call is not None:
            self._end_call("left")
        self.call = RoomCall(name, ("audio", "video") if video else ("audio",))
        self.send(p.RoomCallJoin(channel=name, media=self.call.want))
        self._call_changed()

    def leave_call(self) -> None:
        if self.call is not None:
            self.send(p.RoomCallLeave(channel=self.call.room))
            self._end_call("left")

    async def close(self) -> None:
        if self.call is not None:
            self._end_call("left")
        await self._closing.wait()

    # ------------------------------------------------------------ from the server

    def on_session(self, resumed: bool) -> None:
        """A session began. A fresh one (a server restart, or back too late to resume) has forgotten our rooms'
        call: join it again under its id, keeping the pairs whose media still flows (the signaling client has
        rejoined the rooms themselves, ahead of this)."""
        c = self.call
        if not resumed and c is not None:
            c.stale = {user for user, pair in c.pairs.items() if not pair.media_up}
            self.send(p.RoomCallJoin(channel=c.room, media=c.want, call_id=c.call_id))

    def on_message(self, msg: p.Message) -> bool:
        """Handle a rooms message; False if it is not one."""
        if isinstance(msg, p.Joined):
            self._joined(msg)
        elif isinstance(msg, p.ChannelMember):
            self._member(msg)
        elif isinstance(msg, p.ChannelMessage):
            self._message(msg)
        elif isinstance(msg, p.ChannelGap):
            self._line(msg.channel, ev.ChatLine("", "", f"{msg.missed} messages missed", time.time(), kind="gap"))
        elif isinstance(msg, p.RoomCallJoined):
            self._call_joined(msg)
        elif isinstance(msg, p.RoomCallMember):
            self._call_member(msg)
        elif isinstance(msg, p.Left):
            pass  # our own leave, already applied
        else:
            return False
        return True

    def on_relayed(self, msg: p.Relayed) -> bool:
        """A webrtc_* message for our room call; False if it is not for it."""
        c = self.call
        if c is None or c.call_id is None or msg.call_id != c.call_id or msg.sender is None:
            return False
        pair = c.pairs.get(msg.sender)
        if pair is None and isinstance(msg, p.WebrtcOffer) and msg.sender in c.peer_media:
            pair = self._pair(msg.sender, offerer=False)
        if pair is not None:
            pair.receive(msg)
        return True

    def on_error(self, msg: p.Error) -> bool:
        """An error about joining our room's call (room full, busy, not a member): the join is refused."""
        c = self.call
        if c is None or c.state != "joining" or msg.ref not in (c.room, "room_call_join"):
            return False
        self._end_call("this server has no group calls: it is older than this app" if msg.ref == "room_call_join"
                       else msg.message)
        return True

    # ------------------------------------------------------------ rooms

    def _joined(self, msg: p.Joined) -> None:
        room = self.rooms.get(msg.channel) or self.join(msg.channel)
        room.members = [u.user_id for u in msg.members]
        room.call_id = msg.call.call_id if msg.call is not None else None
        room.call = {x.user_id: x.media for x in msg.call.participants} if msg.call is not None else {}
        self.emit(ev.RoomChanged(room.name))

    def _member(self, msg: p.ChannelMember) -> None:
        room = self.rooms.get(msg.channel)
        if room is None:
            return
        if msg.event == "joined" and msg.user_id not in room.members:
            room.members = sorted([*room.members, msg.user_id])
        elif msg.event == "left":
            room.members = [u for u in room.members if u != msg.user_id]
        # The server names who it is (its presence may come a tick later); an older server does not.
        if msg.display_name:
            self.names[msg.user_id] = display_name(msg.display_name, msg.user_id)
        name = self.name_of(msg.user_id)
        self._line(room.name, ev.ChatLine("", name, f"{name} {msg.event} the room", time.time(), kind=msg.event),
                   unread=False)
        self.emit(ev.RoomChanged(room.name))

    def _message(self, msg: p.ChannelMessage) -> None:
        room = self.rooms.get(msg.channel)
        line = ev.ChatLine(msg.sender or "", self.name_of(msg.sender or ""), msg.text, msg.ts or time.time(),
                           mine=msg.sender == self.me)
        if room is not None and any(x.sender == line.sender and x.ts == line.ts and x.text == line.text
                                    for x in room.lines[-HISTORY_CHECKED:]):
            return  # the room's history, sent again after a rejoin: we have it
        self._line(msg.channel, line)

    def _line(self, name: str, line: ev.ChatLine, *, unread: bool = True) -> None:
        room = self.rooms.get(name)
        if room is None:
            return
        room.lines.append(line)
        del room.lines[:-HISTORY_KEPT]
        self.emit(ev.RoomText(name, line))
        if unread and not line.mine:
            room.unread += 1
            self._rooms_changed()

    def _rooms_changed(self) -> None:
        self.emit(ev.RoomsChanged(tuple(sorted(self.rooms))))

    # ------------------------------------------------------------ the room call

    def _call_joined(self, msg: p.RoomCallJoined) -> None:
        c = self.call
        if c is None or c.room != msg.channel:
            # Not ours (we left meanwhile): leave again, so the server does not keep us in.
            self.send(p.RoomCallLeave(channel=msg.channel))
            return
        if c.call_id is not None and c.call_id != msg.call_id:
            for user in list(c.pairs):  # another call than the one we had: nothing of the old one carries over
                self._end_pair(user, "call_restarted")
        c.call_id, c.media, c.notice = msg.call_id, msg.media, msg.notice
        if c.state == "joining":
            c.state, c.joined_at = "active", time.time()
        c.peer_media = {x.user_id: x.media for x in msg.participants}
        for user in c.stale & set(c.pairs):  # back in a fresh session: a pair whose media still flows is kept,
            self._end_pair(user, "left")  # and those not listed yet are on their way back too
        c.stale = set()  # (a second reply to a join sent twice, queued and again at login, changes nothing)
        for user in c.peer_media:
            if user not in c.pairs:  # we are the newcomer: we offer
                self._pair(user, offerer=True).offer()
        self._fit_video()
        self._call_changed()

    def _call_member(self, msg: p.RoomCallMember) -> None:
        room = self.rooms.get(msg.channel)
        if room is not None:
            room.call_id = msg.call_id
            if msg.event == "joined":
                room.call[msg.user_id] = msg.media or ("audio",)
            else:
                room.call.pop(msg.user_id, None)
            if not room.call:
                room.call_id = None
        c = self.call
        if c is not None and c.room == msg.channel and c.call_id == msg.call_id:
            if msg.user_id == self.me:
                if msg.event == "left" and c.state == "active":
                    self._end_call(msg.reason or "left")  # the server took us out (we left the room)
            elif msg.event == "joined":
                c.peer_media[msg.user_id] = msg.media or ("audio",)
                kept = c.pairs.get(msg.user_id)
                if kept is not None and not kept.media_up:
                    self._end_pair(msg.user_id, "left")
                if msg.user_id not in c.pairs:  # they are the newcomer: they offer, we answer
                    self._pair(msg.user_id, offerer=False)
                self._fit_video()
            else:
                c.peer_media.pop(msg.user_id, None)
                self._end_pair(msg.user_id, msg.reason or "left")
                self._fit_video()
        if room is not None:
            self.emit(ev.RoomChanged(room.name))

    def _pair(self, user: str, *, offerer: bool) -> Pair:
        c = self.call
        assert c is not None and c.call_id is not None
        room = c.room

        def on_video(frame) -> None:
            self.emit(ev.RoomVideo(room, user, frame))

        def on_screen(frame) -> None:
            self.emit(ev.RemoteScreen(c.call_id, user, frame))

        pair = Pair(c.call_id, self.me, user, offerer=offerer, media=self.media, config=self.pair_config(),
                    send=self.send, report=lambda what: self._pair_report(user, pair, what),
                    identity=self.identity, peer_key=lambda: self.peer_key(user), kinds=c.media,
                    receiving=c.peer_media.get(user, ("audio",)), on_video=on_video, on_screen=on_screen)
        c.pairs[user] = pair
        pair.start()
        return pair

    def _pair_report(self, user: str, pair: Pair, what: pair_events.Report) -> None:
        c = self.call
        if c is None or c.pairs.get(user) is not pair:
            return
        if isinstance(what, pair_events.Failed):
            log.warning("room %s: no media with %s (%s)", c.room, user, what.reason)
            self._end_pair(user, what.reason)
        if isinstance(what, (pair_events.MediaUp, pair_events.MediaDown, pair_events.Failed)):
            self.emit(ev.RoomChanged(c.room))
        if isinstance(what, pair_events.Sharing):
            self.emit(ev.ScreenShared(c.call_id, user, what.active))

    def _end_pair(self, user: str, reason: str | None) -> None:
        c = self.call
        pair = c.pairs.pop(user, None) if c is not None else None
        if pair is None:
            return
        pair.stop()
        kept = c.ended.get(user)
        c.ended[user] = (kept.then(pair.received, pair.attempts, reason) if kept is not None
                         else PeerRecord(pair.received, pair.attempts, reason))
        self._closing.spawn(pair.close(), f"room {c.room} pair with {user} close")

    def _end_call(self, reason: str) -> None:
        c, self.call = self.call, None
        if c is None:
            return
        for user in list(c.pairs):
            self.call = c  # _end_pair works on the current call
            self._end_pair(user, None)  # we left: a normal end for every pair
        self.call = None
        c.state, c.left_at, c.reason = "left", time.time(), reason
        self.finished.append(c)
        self.media.set_video_size(*video_size_for(1))
        self.emit(ev.RoomCallChanged(c.room, "left", c.media, c.notice, reason))

    def _fit_video(self) -> None:
        """aiortc encodes once per peer connection: send smaller frames to more peers."""
        c = self.call
        if c is not None and "video" in c.media:
            self.media.set_video_size(*video_size_for(max(1, len(c.peer_media))))

    def _call_changed(self) -> None:
        c = self.call
        if c is not None:
            self.emit(ev.RoomCallChanged(c.room, c.state, c.media, c.notice, None))
