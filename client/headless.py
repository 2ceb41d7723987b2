"""`callbox --headless`: place or answer real calls from the command line, and report what arrived as JSON."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import signal
import sys
import time

from .core import events as ev
from .core.engine import CallSession, Engine, EngineConfig
from .core.identity import Identity, Pins
from .core.lan import Lan
from .core.media import LocalMedia
from .core.peer import Received
from .core.rooms import PeerRecord, RoomCall
from .core.settings import Profile

log = logging.getLogger("callbox.headless")

NORMAL_ENDS = {"hangup"}
WAIT_FOR_PEER = 15.0  # seconds --call waits for the callee to come online


def add_arguments(ap) -> None:
    g = ap.add_argument_group("headless mode")
    g.add_argument("--headless", action="store_true", help="run without a window")
    g.add_argument("--server", help="ws:// or wss:// address of the signaling server, or several separated by "
                                    "commas, tried in order (nodes of one cluster); default: find one on the "
                                    "LAN, or host one, and follow the LAN's server as the app does")
    g.add_argument("--user", help="your user id")
    g.add_argument("--display-name", help="the name others see (default: the user id)")
    g.add_argument("--token", help="the server's shared secret, if it has one")
    g.add_argument("--call", metavar="USER", help="call this user once it is online")
    g.add_argument("--video", action="store_true", help="video too (a test pattern when there is no camera)")
    g.add_argument("--auto-answer", action="store_true", help="accept incoming calls")
    g.add_argument("--tone", type=float, metavar="HZ", help="send a sine tone instead of the microphone")
    g.add_argument("--duration", type=float, metavar="SECONDS",
                   help="hang up this long after the call is active (with --room: leave this long after joining)")
    g.add_argument("--room", metavar="NAME", help="join this room and its call")
    g.add_argument("--say", metavar="TEXT", help="with --room: send this chat line once joined")
    g.add_argument("--share-screen", action="store_true",
                   help="share the screen of the X display this runs on, from the start of each call")
    g.add_argument("--share-window", metavar="TITLE",
                   help="share the X11 window with this title instead, from the start of each call")
    g.add_argument("--report", metavar="FILE.json", help="write what happened as JSON on exit")
    g.add_argument("--stay", action="store_true",
                   help="keep running when calls end (answering more with --auto-answer), until SIGINT or SIGTERM")
    g.add_argument("--events", action="store_true", help="print one JSON object per line on stdout as things happen")
    g.add_argument("--host-port", type=int, default=8765, metavar="PORT",
                   help="the port to host the embedded server on, when hosting (default 8765, else a free one)")


class EventPrinter:
    """--events: one JSON object a line on stdout, each with "event" and "time" (wall clock, seconds)."""

    def __init__(self, engine: Engine, lan: Lan, out=None):
        self.engine, self.lan = engine, lan
        self.out = out or sys.stdout
        self.online = False
        self.seen: dict[str, str] = {}  # user -> the status last printed

    def print(self, event: str, **fields) -> None:
        self.out.write(json.dumps({"event": event, "time": round(time.time(), 3), **fields}) + "\n")
        self.out.flush()

    def on_event(self, e) -> None:
        if isinstance(e, ev.ConnectionChanged):
            if e.state == "online":
                t = self.lan.target
                self.online, self.seen = True, {}
                self.print("connected", server=self.engine.signaling.url, hosted=t.how == "hosted", how=t.how,
                           server_id=t.server_id)
                self._presence(self.engine.users)
            elif self.online:
                self.online = False
                self.print("disconnected", reason=e.reason)
        elif isinstance(e, ev.UsersChanged) and self.online:
            self._presence(e.users)
        elif isinstance(e, ev.CallChanged):
            self.print("call", call_id=e.call_id, peer=e.peer, state=e.state, reason=e.reason)
        elif isinstance(e, ev.RoomCallChanged):
            self.print("room_call", room=e.room, state=e.state, media=list(e.media), notice=e.notice, reason=e.reason)
        elif isinstance(e, ev.RoomChanged):
            room = self.engine.rooms.get(e.room)
            if room is not None:
                self.print("room", room=e.room, members=room.members, call=sorted(room.call))
        elif isinstance(e, ev.RoomText):
            self.print("room_text", room=e.room, sender=e.line.sender, text=e.line.text, kind=e.line.kind)
        elif isinstance(e, ev.KeyChanged):
            self.print("key_changed", user_id=e.user_id, pinned=e.pinned, seen=e.seen)
        elif isinstance(e, ev.Hosting):
            if e.url is not None:
                self.print("hosting", server=e.url)
            else:
                self.print("hosting_stopped", reason=e.reason)

    async def report_media(self, every: float = 1.0) -> None:
        """While a call is established, what has arrived of it so far, every `every` seconds."""
        while True:
            await asyncio.sleep(every)
            for s in list(self.engine.sessions.values()):
                if s.call.established:
                    self.print("media", call_id=s.call.call_id, audio_frames=s.received.audio_frames,
                               video_frames=s.received.video_frames)
            rc = self.engine.room_call
            if rc is not None and rc.call_id is not None:
                for user, pair in list(rc.pairs.items()):
                    self.print("media", call_id=rc.call_id, peer=user, audio_frames=pair.received.audio_frames,
                               video_frames=pair.received.video_frames)

    def _presence(self, users) -> None:
        now = {u.user_id: u.status for u in users}
        for user, status in now.items():
            if self.seen.get(user) != status:
                self.print("presence", user_id=user, status=status)
        for user in self.seen.keys() - now.keys():
            self.print("presence", user_id=user, status="offline")
        self.seen = now


def media_report(r: Received) -> dict:
    """What arrived of one peer: its audio's frames and tone, its video's frames, size and pattern counters, and
    its screen share's frames, size and the last frame's mean colour."""
    return {
        "audio": {"frames": r.audio_frames, "dominant_hz": r.dominant_hz()},
        "video": {"frames": r.video_frames, "width": r.width, "height": r.height,
                  "counter_first": r.counters[0] if r.counters else None,
                  "counter_last": r.counters[-1] if r.counters else None},
        "screen": {"frames": r.screen_frames, "width": r.screen_size[0], "height": r.screen_size[1],
                   "mean_rgb": list(r.screen_rgb) if r.screen_rgb else None, "active": r.screen_active},
    }


def call_report(s: CallSession) -> dict:
    r = s.received
    accepted = s.accepted_at
    return {
        "call_id": s.call.call_id,
        "peer": s.call.callee if s.direction == "outgoing" else s.call.caller,
        "direction": s.direction,
        "media": list(s.call.media),
        "states": [{"state": st, "time": round(t, 3)} for st, t in s.times],
        "setup_ms": round((r.first_audio - accepted) * 1000, 1) if r.first_audio and accepted else None,
        **media_report(r),
        "peer_connections": s.attempts,
        "verified": bool(s.verified),  # the peer signed its media fingerprints with its pinned key
        "safety_code": s.safety_code,
        "end_reason": s.call.reason if not s.call.live else None,
    }


def peer_report(r: PeerRecord) -> dict:
    """One participant of a room call, over every pair we had with them: the latest pair's media, frames
    counted over all of them."""
    out = media_report(r.received)
    out["audio"]["frames"] += r.earlier_audio_frames
    out["video"]["frames"] += r.earlier_video_frames
    if out["audio"]["dominant_hz"] is None:
        out["audio"]["dominant_hz"] = r.earlier_hz
    return {**out, "peer_connections": r.peer_connections, "end_reason": r.end_reason}


def room_report(c: RoomCall, engine: Engine) -> dict:
    room = engine.rooms.get(c.room)
    lines = room.lines if room is not None else []
    users = sorted(set(c.ended) | set(c.pairs))
    return {
        "room": c.room, "call_id": c.call_id, "media": list(c.media), "notice": c.notice,
        "joined_at": c.joined_at, "left_at": c.left_at, "end_reason": c.reason,
        "peers": {u: peer_report(c.record(u)) for u in users},
        "messages": [{"from": x.sender, "text": x.text, "time": x.ts} for x in lines if x.kind == "text"],
    }


async def run(args) -> int:
    # A tone run is a test of the path: it leaves the sound card alone and sends a pattern, not the camera.
    synthetic = args.tone is not None
    media = LocalMedia(tone_hz=args.tone, pattern=args.video and synthetic, playback=not synthetic)
    name = args.display_name or args.user
    profile = Profile(args.profile)
    pins = Pins(profile.pins_path)
    lan = Lan(configured=args.server or "", user_id=args.user, display_name=name, port=args.host_port,
              data_dir=profile.data_dir, pins=pins.keys)
    printer = None
    if args.events:
        printer = EventPrinter(None, lan)
        lan.subscribe(printer.on_event)
    urls = await lan.choose()
    engine = Engine(EngineConfig(server=urls, user_id=args.user, display_name=name,
                                 token=args.token, auto_answer=args.auto_answer, analyze_video=args.video), media,
                    identity=Identity.load(profile.identity_path), pins=pins, keep_finished=True)
    lan.attach(engine)  # first: it learns which server it is on before the printer reports it
    if printer is not None:
        printer.engine = engine
        engine.subscribe(printer.on_event)
    done = asyncio.Event()
    mine: set[str] = set()  # calls this process made or answered; calls it let ring do not count
    ended_for_good = asyncio.Event()

    def on_event(e) -> None:
        if isinstance(e, ev.CallChanged):
            log.info("call %s with %s: %s%s", e.call_id, e.peer, e.state, f" ({e.reason})" if e.reason else "")
            if e.direction == "outgoing" or e.state == "connecting":
                mine.add(e.call_id)
            if e.state == "active" and args.duration is not None:
                asyncio.get_running_loop().call_later(args.duration, engine.hangup, e.call_id)
            if e.state == "ended" and e.call_id in mine and not args.stay and not any(
                    s.call.live for s in engine.sessions.values() if s.call.call_id in mine - {e.call_id}):
                done.set()
        elif isinstance(e, ev.RoomCallChanged):
            log.info("room %s call: %s%s%s", e.room, e.state, f" ({e.reason})" if e.reason else "",
                     f"; {e.notice}" if e.notice else "")
            if e.state == "active" and args.duration is not None and not room_timer:
                room_timer.append(asyncio.get_running_loop().call_later(args.duration, engine.leave_room_call))
            if e.state == "left" and not args.stay:
                done.set()
        elif isinstance(e, ev.ConnectionChanged):
            log.info("signaling %s%s", e.state, f": {e.reason}" if e.reason else "")
            if e.state == "offline" and e.reason != "stopped":
                ended_for_good.set()
                done.set()
        elif isinstance(e, ev.DeviceProblem) and e.message:
            log.warning("%s: %s", e.kind, e.message)
        elif isinstance(e, ev.ServerError):
            log.warning("server: %s (%s)", e.message, e.code)

    room_timer: list[asyncio.TimerHandle] = []
    engine.subscribe(on_event)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    await engine.start()
    if (args.share_screen or args.share_window) and (why := _share(engine, args.share_window)) is not None:
        log.error("cannot share: %s", why)
        await engine.stop()
        await lan.stop()
        return 1
    reporter = asyncio.get_running_loop().create_task(printer.report_media()) if printer is not None else None
    try:
        if args.call:
            if not await _wait_for(engine, args.call):
                log.error("%s did not come online within %.0f s", args.call, WAIT_FOR_PEER)
                return 1
            engine.call(args.call, video=args.video)
        if args.room:
            engine.join_room(args.room)
            if args.say:
                engine.say(args.room, args.say)
            engine.join_room_call(args.room, video=args.video)
        await done.wait()
    finally:
        if reporter is not None:
            reporter.cancel()
        await engine.stop()
        await lan.stop()
        await asyncio.sleep(0)
        calls = [call_report(s) for s in engine.finished]
        rooms = [room_report(c, engine) for c in engine.room_calls_finished]
        if args.report:
            with open(args.report, "w") as f:
                json.dump({"user": args.user, "identity": engine.identity.fingerprint,
                           "connects": engine.signaling.connects, "devices": media.problems,
                           "key_warnings": [dataclasses.asdict(w) for w in engine.key_warnings.values()],
                           "calls": calls, "rooms": rooms}, f, indent=2)
    if ended_for_good.is_set():
        return 1
    if args.room:
        return 0 if rooms and all(r["joined_at"] is not None for r in rooms) else 1
    judged = [c for c in calls if c["call_id"] in mine]
    ok = bool(judged) and all(c["end_reason"] in NORMAL_ENDS and any(st["state"] == "active" for st in c["states"])
                              for c in judged)
    if not judged and not (args.call or args.auto_answer):
        ok = True  # stayed online until told to stop; nothing was asked of it
    return 0 if ok else 1


def _share(engine: Engine, window: str | None) -> str | None:
    """Share the primary screen, or the window titled `window`; why it cannot be, or None."""
    target = None
    if window:
        from .core.screen import share_problem, share_targets

        found = [t for t in share_targets() if t.kind == "window" and t.name == window]
        if not found:
            return share_problem() or f"no window is titled {window!r}"
        target = found[0]
    return engine.share_screen(True, target)


async def _wait_for(engine: Engine, user: str) -> bool:
    deadline = time.monotonic() + WAIT_FOR_PEER
    while time.monotonic() < deadline:
        if user in engine.signaling.users and engine.connection.value == "online":
            return True
        await asyncio.sleep(0.05)
    return False
