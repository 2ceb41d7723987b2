"""Mouth-to-ear audio latency on loopback: clicks through the app's call path, against bare aiortc peers.

A click source (silence with a 5 ms burst every 300 ms, paced in real time like the app's tone) replaces the
caller's audio source mid-call with AudioTrack.replace_source; the callee's Received gets a `recent` deque that
also looks for click onsets in each decoded block as PeerSession._consume_audio appends it. So the path is the
app's: AudioTrack -> MediaRelay proxy -> RTCRtpSender -> loopback UDP -> jitter buffer and Opus decoder ->
_consume_audio. The baseline, in the same run and at the same time: two RTCPeerConnections connected directly in
this process, the same click source in an AudioTrack, a bare recv() loop.

One clock (time.monotonic, this process) for both ends. The mouth: a click's onset is spoken when the paced
source is due to produce its sample (pace start + sample index / 48 kHz), as a microphone would capture it, so a late
event loop at the sender counts. The ear: a decoded block starts playing when it arrives, so the onset is heard at
arrival + its offset in the block / 48 kHz. The onsets sit at every offset in the block, and the codec may move them.
Not counted: a microphone's 20 ms block, the speaker's ring buffer (target 60 ms) and the sound card's buffers.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections import deque

import numpy as np
from _common import DirectCall, ServerProcess, hang_up, ms, pct, ring, start_callbox, start_engines, until, verdict

from client.core.audio import BLOCK, RATE
from client.core.tracks import AudioTrack, Paced, ToneSource

TARGET = 0.100  # median, seconds (G.114: 150 ms one way is the edge of acceptable)
PERIOD = int(0.3 * RATE)  # samples between clicks
BURST = np.sin(2 * np.pi * 1000 * np.arange(int(0.005 * RATE)) / RATE)  # 5 ms of 1 kHz, full scale is 1
LEVEL = 0.5  # the burst's peak, of full scale
THRESHOLD = 0.2 * LEVEL * 32767  # an onset: the first decoded sample above this ...
QUIET = RATE // 10  # ... after at least 100 ms below it
SETTLE = 2.0  # seconds of call before the clicks start


class ClickSource:
    """An audio source (async next_block() -> int16[960], paced like ToneSource) of `count` clicks PERIOD apart,
    each at another offset in its block; `sent` holds the time each onset was due."""

    name = "clicks"
    level = 0.0

    def __init__(self, count: int):
        self.pace = Paced()
        self.onsets = [(i + 1) * PERIOD + i * 331 % BLOCK for i in range(count)]  # sample index of each onset
        self.sent: list[float] = []

    async def next_block(self) -> np.ndarray:
        await self.pace.tick()
        start = (self.pace.n - 1) * BLOCK
        block = np.zeros(BLOCK)
        for onset in self.onsets:
            lo, hi = max(onset, start), min(onset + len(BURST), start + BLOCK)
            if lo < hi:
                block[lo - start:hi - start] = BURST[lo - onset:hi - onset]
            if start <= onset < start + BLOCK:
                self.sent.append(self.pace.start + onset / RATE)
        return (block * LEVEL * 32767).astype(np.int16)

    def stop(self) -> None:
        pass


class Ear:
    """Click onsets in a stream of decoded blocks, each block with its arrival time."""

    def __init__(self) -> None:
        self.heard: list[float] = []
        self.quiet = QUIET  # samples since the last loud one

    def __call__(self, block: np.ndarray, arrived: float) -> None:
        loud = np.flatnonzero(np.abs(block.astype(np.int32)) > THRESHOLD)
        if not len(loud):
            self.quiet += len(block)
            return
        if self.quiet + loud[0] >= QUIET:
            self.heard.append(arrived + loud[0] / RATE)
        self.quiet = len(block) - 1 - loud[-1]


class Listening(deque):
    """Received.recent that also hands each block to an Ear, stamped with the arrival time the app just set."""

    def __init__(self, received, ear: Ear):
        super().__init__(maxlen=received.recent.maxlen)
        self.received, self.ear = received, ear

    def append(self, block) -> None:
        super().append(block)
        self.ear(block, self.received.last_media)


def latencies(sent: list[float], heard: list[float]) -> list[float]:
    """Each onset heard, less the latest click sent before it (clicks are further apart than any latency)."""
    out = []
    for t in heard:
        before = [s for s in sent if s <= t]
        if before and t - before[-1] < PERIOD / RATE:
            out.append(t - before[-1])
    return out


async def main(count: int) -> bool:
    seconds = SETTLE + count * PERIOD / RATE + 2
    app_mouth, direct_mouth = ClickSource(count), ClickSource(count)
    app_ear, direct_ear = Ear(), Ear()
    with ServerProcess(start_callbox) as srv:
        alice, bob = await start_engines(srv.url, ("alice", 440), ("bob", 660))
        direct = DirectCall((AudioTrack(ToneSource(440)), AudioTrack(ToneSource(660))), hear=(None, direct_ear))
        try:
            call_id, _, incoming = await ring(alice, bob)
            incoming.received.recent = Listening(incoming.received, app_ear)
            bob.accept(call_id)
            await direct.connect()
            await until(lambda: incoming.received.first_audio and direct.first[1], 15, "audio")
            await asyncio.sleep(SETTLE)
            alice.media._audio.replace_source(app_mouth)  # the device-switch path: one continuous track
            direct.tracks[0].replace_source(direct_mouth)
            await asyncio.sleep(seconds - SETTLE)
            await hang_up(alice, bob, call_id)
        finally:
            await direct.close()
            await asyncio.gather(alice.stop(), bob.stop())

    print(f"{count} clicks on each path, caller to callee, one every {PERIOD / RATE * 1000:.0f} ms, both at once")
    app, base = latencies(app_mouth.sent, app_ear.heard), latencies(direct_mouth.sent, direct_ear.heard)
    for label, sent, lat in (("engine", app_mouth.sent, app), ("direct", direct_mouth.sent, base)):
        print(f"  {label}: {len(lat)} of {len(sent)} clicks heard", end="")
        print(f"   median {ms(pct(lat, 50))}   p90 {ms(pct(lat, 90))}   min {ms(min(lat))}   max {ms(max(lat))}"
              if lat else "")
    if len(app) < 0.9 * count or len(base) < 0.9 * count:
        print("  FAIL: too few clicks heard to judge")
        return False
    median = pct(app, 50)
    ok = verdict("engine median, mouth -> decoded", ms(median), f"<= {TARGET * 1000:.0f} ms", median <= TARGET)
    print(f"  engine / direct median: {median / pct(base, 50):.2f}x")
    return ok

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clicks", type=int, default=30, help="clicks on each path (default 30)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    raise SystemExit(0 if asyncio.run(main(args.clicks)) else 1)
