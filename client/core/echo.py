"""The echo peer for the sound and video check: a local peer connection that sends back what it receives, late."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from .peer import ice_config

ECHO_DELAY = 1.0  # seconds: long enough to hear yourself as someone else would, not as feedback


class DelayedTrack(MediaStreamTrack):
    """Replays a received track `delay` seconds later, frames and timestamps unchanged."""

    def __init__(self, source: MediaStreamTrack, delay: float):
        super().__init__()
        self.kind = source.kind
        self.source = source
        self.delay = delay
        self.frames: collections.deque = collections.deque()
        self.arrived = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await self.source.recv()
                self.frames.append((time.monotonic() + self.delay, frame))
                self.arrived.set()

    async def recv(self):
        if self.readyState != "live":
            raise MediaStreamError
        while not self.frames:
            if self._reader.done():
                raise MediaStreamError
            self.arrived.clear()
            await self.arrived.wait()
        due, frame = self.frames.popleft()
        wait = due - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        return frame

    def stop(self) -> None:
        super().stop()
        self._reader.cancel()


class EchoPeer:
    def __init__(self, delay: float = ECHO_DELAY):
        self.delay = delay
        self.pc = RTCPeerConnection(ice_config([]))
        self.tracks: list[DelayedTrack] = []

    async def answer(self, offer_sdp: str) -> str:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        for t in self.pc.getTransceivers():
            echo = DelayedTrack(t.receiver.track, self.delay)
            self.tracks.append(echo)
            t.sender.replaceTrack(echo)
            t.direction = "sendrecv"
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.pc.localDescription.sdp

    async def close(self) -> None:
        for t in self.tracks:
            t.stop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.pc.close(), 5)
