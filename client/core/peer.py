"""One RTCPeerConnection for one call: local tracks in, remote media out to the speaker, counters and a level."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from aiortc import RTCBundlePolicy, RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.sdp import candidate_from_sdp

from .media import LocalMedia
from .screen import SCREEN_PREFIX, prefer_vp8, share_encoder
from .tasks import Tasks
from .tracks import dominant_hz, read_counter

log = logging.getLogger("callbox.peer")

CLOSE_TIMEOUT = 5.0
LEVEL_TIME = 0.15  # seconds: the time constant of Received.level
SILENT_SAMPLE = 8  # a decoded block whose samples all stay within this (-72 dBFS) is digital silence: a muted sender


@dataclass
class Received:
    """What arrived from the other side in one call, across every peer connection it had."""

    audio_frames: int = 0
    video_frames: int = 0
    width: int = 0
    height: int = 0
    first_audio: float | None = None  # monotonic time of the first decoded remote audio frame
    last_media: float | None = None
    counters: list[int] = field(default_factory=list)  # pattern counters read (first and latest kept)
    recent: deque = field(default_factory=lambda: deque(maxlen=50))  # last second of remote audio blocks
    final_hz: float | None = None  # the analysis of `recent`, kept when its audio was dropped
    level: float = 0.0  # 0..1: RMS of the remote audio, smoothed over ~150 ms (a full-scale sine is 0.71)
    _power: float = field(default=0.0, repr=False)  # the smoothed mean square behind `level`
    silent_since: float | None = None  # monotonic time since when every block was digital silence
    screen_active: bool = False  # the peer says it shares its screen (screen_share)
    screen_frames: int = 0  # frames of its share decoded
    screen_size: tuple[int, int] = (0, 0)
    screen_rgb: tuple[float, float, float] | None = None  # the mean colour of the last share frame

    def hear(self, block: np.ndarray, seconds: float) -> None:
        """Fold one decoded int16 block lasting `seconds` into `level`: a mean square averaged exponentially
        with a LEVEL_TIME time constant, so `level` follows the last ~100-200 ms."""
        x = block.astype(np.float32) * (1 / 32768)
        power = float(np.dot(x, x)) / max(1, len(x))
        self._power += (power - self._power) * (1 - np.exp(-seconds / LEVEL_TIME))
        self.level = min(1.0, float(np.sqrt(self._power)))
        if len(block) and int(np.abs(block).max()) > SILENT_SAMPLE:
            self.silent_since = None
        elif self.silent_since is None:
            self.silent_since = time.monotonic()

    def quiet(self) -> None:
        """No more audio comes (the track ended): the level drops to silence."""
        self._power = self.level = 0.0

    def dominant_hz(self) -> float | None:
        if not self.recent:
            return self.final_hz
        return round(dominant_hz(np.concatenate(list(self.recent))), 1)

    def drop_audio(self) -> None:
        """At teardown: keep what the last second of audio says, not the decoded audio itself."""
        self.final_hz = self.dominant_hz()
        self.recent.clear()
        self.quiet()


def ice_config(servers: list[dict]) -> RTCConfiguration:
    """RTCConfiguration from settings; no ICE servers by default, which keeps LAN calls from waiting on STUN.
    Every m-line shares one transport from the start (max-bundle): with aiortc's "balanced" policy a second
    video m-line (the screen slot) keeps a transport that the answer's BUNDLE group then discards."""
    return RTCConfiguration(bundlePolicy=RTCBundlePolicy.MAX_BUNDLE, iceServers=[
        RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential")) for s in servers
    ])


class PeerSession:
    """The thin aiortc wrapper: one RTCPeerConnection, our tracks on it, its remote tracks consumed."""

    def __init__(self, call_id: str, media: LocalMedia, received: Received, *, kinds: tuple[str, ...],
                 ice_servers: list[dict], receiving: tuple[str, ...] = (), analyze_video: bool = False,
                 on_state: Callable[[str], None] = lambda s: None,
                 on_video: Callable[[object], None] | None = None,
                 on_screen: Callable[[object], None] | None = None):
        self.call_id = call_id
        self.media = media
        self.received = received
        self.kinds = kinds
        self.receiving = receiving  # kinds we only receive: an offer asks for them with a recvonly transceiver
        self.analyze_video = analyze_video
        self.on_video, self.on_screen = on_video, on_screen
        self.slot = media.share_slot()  # our screen transceiver's track: the share, while there is one
        self.pc = RTCPeerConnection(ice_config(ice_servers))
        self.tasks = Tasks()
        self.senders: dict[str, object] = {}
        self._speaker = None
        self._closed = False

        @self.pc.on("connectionstatechange")
        def _changed() -> None:
            on_state(self.pc.connectionState)

        @self.pc.on("track")
        def _track(track: MediaStreamTrack) -> None:
            consume = self._consume_audio if track.kind == "audio" else \
                self._consume_screen if track.id.startswith(SCREEN_PREFIX) else self._consume_video
            self.tasks.spawn(consume(track), f"call {call_id} {track.kind} in")

    def _add_local_tracks(self) -> None:
        for kind in self.kinds:
            track = self.media.subscribe_audio() if kind == "audio" else self.media.subscribe_video()
            self.senders[kind] = self.pc.addTrack(track)

    async def offer(self) -> str:
        self._add_local_tracks()
        for kind in self.receiving:
            if kind not in self.kinds:
                self.pc.addTransceiver(kind, direction="recvonly")
        # Last, and a transceiver of its own: addTrack would take over a recvonly video transceiver above.
        screen = self.pc.addTransceiver(self.slot, direction="sendrecv")
        prefer_vp8(screen)
        share_encoder(screen.sender)
        self.senders["screen"] = screen.sender
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp  # aiortc puts every candidate in the SDP

    async def answer(self, sdp: str) -> str:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        for transceiver in self.pc.getTransceivers():
            kind = transceiver.kind
            remote = transceiver.receiver.track
            if remote is not None and remote.id.startswith(SCREEN_PREFIX):  # the peer's screen slot: ours answers
                transceiver.sender.replaceTrack(self.slot)
                transceiver.direction = "sendrecv"
                if "VP8/90000" in sdp:  # an offer without VP8 keeps its own codec and aiortc's encoder for it
                    prefer_vp8(transceiver)
                    share_encoder(transceiver.sender)
                self.senders["screen"] = transceiver.sender
            elif kind in self.kinds and kind not in self.senders:
                track = self.media.subscribe_audio() if kind == "audio" else self.media.subscribe_video()
                transceiver.sender.replaceTrack(track)
                transceiver.direction = "sendrecv"
                self.senders[kind] = transceiver.sender
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.pc.localDescription.sdp

    async def accept_answer(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    async def add_candidate(self, candidate: str, sdp_mid: str | None, sdp_mline_index: int | None) -> None:
        """A trickled candidate from a peer that sends them (browsers). An empty one ends the list."""
        if not candidate:
            return
        cand = candidate_from_sdp(candidate.removeprefix("candidate:"))
        cand.sdpMid, cand.sdpMLineIndex = sdp_mid, sdp_mline_index
        await self.pc.addIceCandidate(cand)

    async def _consume_audio(self, track: MediaStreamTrack) -> None:
        self._speaker = self.media.acquire_speaker()
        r = self.received
        try:
            while True:
                frame = await track.recv()
                now = time.monotonic()
                r.audio_frames += 1
                r.last_media = now
                if r.first_audio is None:
                    r.first_audio = now
                samples = frame.to_ndarray()
                block = samples.reshape(-1, len(frame.layout.channels))[:, 0]
                r.recent.append(block)
                r.hear(block, frame.samples / (frame.sample_rate or 48_000))
                self.media.play(frame, source=self)
        except MediaStreamError:
            pass
        finally:
            r.quiet()

    async def _consume_video(self, track: MediaStreamTrack) -> None:
        r = self.received
        try:
            while True:
                frame = await track.recv()
                r.video_frames += 1
                r.last_media = time.monotonic()
                r.width, r.height = frame.width, frame.height
                if self.analyze_video:
                    # The luma plane of a decoded yuv420p frame is already gray; converting costs ~1 ms/frame.
                    plane = frame.to_ndarray()[:frame.height] if frame.format.name == "yuv420p" else \
                        frame.to_ndarray(format="gray")
                    count = read_counter(plane)
                    if len(r.counters) < 2:
                        r.counters.append(count)
                    else:
                        r.counters[1] = count
                if self.on_video is not None:
                    self.on_video(frame)
        except MediaStreamError:
            pass

    async def _consume_screen(self, track: MediaStreamTrack) -> None:
        r = self.received
        try:
            while True:
                frame = await track.recv()
                r.screen_frames += 1
                r.screen_size = (frame.width, frame.height)
                small = frame.reformat(width=32, height=18, format="rgb24").to_ndarray()
                r.screen_rgb = tuple(round(float(c), 1) for c in small.reshape(-1, 3).mean(axis=0))
                if self.on_screen is not None:
                    self.on_screen(frame)
        except MediaStreamError:
            pass

    async def stats(self) -> dict:
        """Round-trip time, loss and bitrate figures for a quality indicator."""
        out = {"rtt_ms": None, "packets_lost": 0, "packets_received": 0, "bytes_received": 0}
        with contextlib.suppress(Exception):
            for s in (await self.pc.getStats()).values():
                if s.type == "remote-inbound-rtp" and getattr(s, "roundTripTime", None) is not None:
                    out["rtt_ms"] = round(s.roundTripTime * 1000, 1)
                elif s.type == "inbound-rtp":
                    out["packets_lost"] += s.packetsLost or 0
                    out["packets_received"] += s.packetsReceived or 0
                    out["bytes_received"] += s.bytesReceived or 0
        return out

    async def close(self) -> None:
        """Close under a timeout, stop our tracks and consumers ourselves, and drop references."""
        if self._closed:
            return
        self._closed = True
        for sender in self.senders.values():
            if sender.track is not None:
                sender.track.stop()  # ends the relay proxy; the device closes with its last user
        self.slot.stop()  # sent or not (an older peer has no screen transceiver), its share subscription ends
        try:
            await asyncio.wait_for(self.pc.close(), CLOSE_TIMEOUT)
        except TimeoutError:
            log.warning("call %s: peer connection did not close within %.0f s", self.call_id, CLOSE_TIMEOUT)
        await self.tasks.close()
        self.media.release_source(self)
        if self._speaker is not None:
            self.media.release_speaker()
            self._speaker = None
        self.senders.clear()
        self.pc.remove_all_listeners()
