"""Test helpers for the call engine: in-process engines with synthetic media, and waiting on what they report."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from client.core import events as ev
from client.core.engine import Engine, EngineConfig
from client.core.identity import Identity, Pins
from client.core.media import LocalMedia


@dataclass
class Probe:
    """An engine plus everything it emitted."""

    engine: Engine
    events: list = field(default_factory=list)

    @property
    def user(self) -> str:
        return self.engine.config.user_id

    def states(self, call_id: str) -> list[str]:
        return [e.state for e in self.events if isinstance(e, ev.CallChanged) and e.call_id == call_id]

    def ended(self, call_id: str) -> ev.CallChanged | None:
        return next((e for e in self.events if isinstance(e, ev.CallChanged) and e.call_id == call_id
                     and e.state == "ended"), None)

    def incoming(self) -> list[ev.IncomingCall]:
        return [e for e in self.events if isinstance(e, ev.IncomingCall)]

    def session(self, call_id: str):
        return self.engine.sessions.get(call_id) or next(
            (s for s in self.engine.finished if s.call.call_id == call_id), None)

    async def until(self, check, timeout: float = 10.0, what: str = "condition"):
        async with asyncio.timeout(timeout):
            while not (result := check()):
                await asyncio.sleep(0.02)
        return result

    async def state(self, call_id: str, state: str, timeout: float = 10.0) -> None:
        await self.until(lambda: state in self.states(call_id), timeout)


async def start_engine(url: str, user: str, *, tone: float = 440, video: bool = False,
                       identity: Identity | None = None, keyless: bool = False, pins: Pins | None = None,
                       keep_finished: bool = True, **config) -> Probe:
    """An engine with synthetic media and an identity key of its own (a new one unless given; none if keyless,
    as an older client has). It keeps every finished call for the test to look at, unless keep_finished=False
    (as the app runs it)."""
    media = LocalMedia(tone_hz=tone, pattern=video, playback=False)
    engine = Engine(EngineConfig(server=url, user_id=user, display_name=user.title(), first_retry=0.1,
                                 max_retry=0.5, analyze_video=video, **config), media,
                    identity=None if keyless else identity or Identity.generate(), pins=pins,
                    keep_finished=keep_finished)
    probe = Probe(engine)
    engine.subscribe(probe.events.append)
    await engine.start()
    await probe.until(lambda: engine.connection.value == "online", 5)
    return probe


@contextlib.asynccontextmanager
async def engines(url: str, *specs: tuple[str, float], video: bool = False, **config):
    probes = [await start_engine(url, user, tone=tone, video=video, **config) for user, tone in specs]
    try:
        names = {p.user for p in probes}
        for p in probes:
            await p.until(lambda p=p: names - {p.user} <= set(p.engine.signaling.users), 5)
        yield probes
    finally:
        await asyncio.gather(*(p.engine.stop() for p in probes), return_exceptions=True)


async def connected_call(caller: Probe, callee: Probe, *, video: bool = False) -> str:
    """The caller rings, the callee accepts, and both see the call active; returns its call_id."""
    call_id = caller.engine.call(callee.user, video=video)
    await callee.until(lambda: call_id in callee.engine.sessions)
    callee.engine.accept(call_id, video=video)
    await caller.state(call_id, "active")
    await callee.state(call_id, "active")
    return call_id
