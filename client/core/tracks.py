"""Local media tracks for aiortc: microphone, tone or silence for audio; camera, test pattern or black for video."""

from __future__ import annotations

import asyncio
import fractions
import logging
import time

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack, VideoStreamTrack

from .audio import BLOCK, RATE

log = logging.getLogger("callbox.tracks")

AUDIO_TIME_BASE = fractions.Fraction(1, RATE)


# ---------------------------------------------------------------- audio sources: async next_block() -> int16[960]


class Paced:
    """Real-time pacing for synthetic sources: block n is due at start + n * 20 ms."""

    def __init__(self) -> None:
        self.n = 0
        self.start: float | None = None

    async def tick(self) -> None:
        now = time.monotonic()
        if self.start is None:
            self.start = now
        due = self.start + self.n * BLOCK / RATE
        self.n += 1
        if due > now:
            await asyncio.sleep(due - now)


class ToneSource:
    """A sine tone at `hz`, at a level a listener finds comfortable."""

    name = "tone"

    def __init__(self, hz: float, amplitude: float = 0.3):
        self.hz, self.amplitude = hz, amplitude
        self.pace = Paced()
        self.level = amplitude / np.sqrt(2)

    async def next_block(self) -> np.ndarray:
        await self.pace.tick()
        t = (np.arange(BLOCK) + (self.pace.n - 1) * BLOCK) / RATE
        return (np.sin(2 * np.pi * self.hz * t) * self.amplitude * 32767).astype(np.int16)

    def stop(self) -> None:
        pass


class SilenceSource:
    """Stands in for a missing microphone, so the call still carries an audio track."""

    name = "silence"
    level = 0.0

    def __init__(self) -> None:
        self.pace = Paced()

    async def next_block(self) -> np.ndarray:
        await self.pace.tick()
        return np.zeros(BLOCK, dtype=np.int16)

    def stop(self) -> None:
        pass


class MicrophoneSource:
    """Blocks from a running Microphone (audio.Microphone)."""

    def __init__(self, mic) -> None:
        self.mic = mic
        self.name = mic.name

    @property
    def level(self) -> float:
        return self.mic.level

    async def next_block(self) -> np.ndarray:
        return await self.mic.queue.get()

    def stop(self) -> None:
        self.mic.stop()


class AudioTrack(MediaStreamTrack):
    """The one local audio track. Its source can be swapped mid-call (device switch) and it can be muted;
    the receiver sees one continuous track with monotonic pts either way."""

    kind = "audio"

    def __init__(self, source) -> None:
        super().__init__()
        self.source = source
        self.muted = False
        self._pts = 0

    def replace_source(self, source) -> None:
        old, self.source = self.source, source
        old.stop()

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        block = await self.source.next_block()
        if self.muted:
            block = np.zeros_like(block)
        frame = av.AudioFrame.from_ndarray(block.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._pts
        frame.time_base = AUDIO_TIME_BASE
        self._pts += len(block)
        return frame

    def stop(self) -> None:
        super().stop()
        self.source.stop()


# ---------------------------------------------------------------- video

PATTERN_BITS = 16


class PatternSource:
    """A moving test pattern that stamps a frame counter into its pixels as big black and white blocks,
    so the counter survives VP8 compression and can be read back at the far end.

    It draws at the size it is given (`resize`), never scaled afterwards: the counter's cells are laid out
    for the frame's own size, which is how `read_counter` finds them again."""

    name = "test pattern"

    def __init__(self, width: int = 640, height: int = 480, fps: int = 30):
        self.fps = fps
        self.count = 0
        self.width = self.height = 0
        self.resize(width, height)

    def resize(self, width: int, height: int) -> None:
        """Draw the frames from now on at width x height (the counter goes on)."""
        if (width, height) == (self.width, self.height):
            return
        self.width, self.height = width, height
        y, x = np.mgrid[0:height, 0:width]
        self._bg = np.stack([(x * 255 // width), (y * 255 // height), np.full_like(x, 128)], axis=-1).astype(np.uint8)

    async def next_frame(self) -> av.VideoFrame:
        img = self._bg.copy()
        bar = (self.count * 4) % self.width
        img[:, bar:bar + 8] = 255  # a moving bar, so a person can see it is live
        stamp(img, self.count)
        self.count += 1
        return av.VideoFrame.from_ndarray(img, format="rgb24")

    def stop(self) -> None:
        pass


def _cells(width: int, height: int) -> tuple[int, int, int]:
    size = max(8, width // (PATTERN_BITS + 2))
    return size, size // 2, height - size - size // 2  # cell size, left edge, top edge


def stamp(img: np.ndarray, counter: int) -> None:
    h, w = img.shape[:2]
    size, x0, y0 = _cells(w, h)
    for bit in range(PATTERN_BITS):
        on = (counter >> bit) & 1
        img[y0:y0 + size, x0 + bit * size:x0 + (bit + 1) * size] = 255 if on else 0


def read_counter(img: np.ndarray) -> int:
    """The frame counter stamped by PatternSource, read back from an RGB (or gray) image."""
    h, w = img.shape[:2]
    size, x0, y0 = _cells(w, h)
    gray = img.mean(axis=2) if img.ndim == 3 else img
    value = 0
    for bit in range(PATTERN_BITS):
        cy, cx = y0 + size // 2, x0 + bit * size + size // 2
        if gray[cy - 2:cy + 3, cx - 2:cx + 3].mean() > 128:
            value |= 1 << bit
    return value


class BlackSource:
    """What the camera slot sends while the camera is off: small black frames, twice a second."""

    name = "camera off"
    own_clock = True  # frames come when they come: the track stamps them on arrival

    def __init__(self, width: int = 320, height: int = 240):
        self.frame = np.zeros((height, width, 3), dtype=np.uint8)

    def resize(self, width: int, height: int) -> None:
        pass  # black frames stay small whatever size the video goes out at

    async def next_frame(self) -> av.VideoFrame:
        await asyncio.sleep(0.5)
        return av.VideoFrame.from_ndarray(self.frame, format="rgb24")

    def stop(self) -> None:
        pass


class CameraSource:
    """Frames from a capture device, opened through aiortc's MediaPlayer (v4l2, dshow or avfoundation).

    A frame larger than the size it is given (`resize`) is scaled down to fit inside it, keeping the
    camera's aspect ratio; a smaller one goes out as it is."""

    own_clock = True

    def __init__(self, player, name: str, width: int = 640, height: int = 480):
        self.player = player
        self.name = name
        self.width, self.height = width, height

    def resize(self, width: int, height: int) -> None:
        self.width, self.height = width, height

    async def next_frame(self) -> av.VideoFrame:
        return fit(await self.player.video.recv(), self.width, self.height)

    def stop(self) -> None:
        if self.player.video is not None:
            self.player.video.stop()


def fit(frame: av.VideoFrame, width: int, height: int) -> av.VideoFrame:
    """`frame` scaled down to fit inside width x height with its aspect ratio (even sides), or as it is if it fits."""
    if frame.width <= width and frame.height <= height:
        return frame
    scale = min(width / frame.width, height / frame.height)
    w, h = max(2, int(frame.width * scale) & ~1), max(2, int(frame.height * scale) & ~1)
    return frame.reformat(width=w, height=h)


class VideoTrack(VideoStreamTrack):
    """The one local video track: swappable source (camera, pattern, black), timestamps on one clock, and the
    size its frames go out at (`set_size`), which every source from then on is given."""

    kind = "video"

    def __init__(self, source, size: tuple[int, int] = (640, 480), *, clock_from: float | None = None) -> None:
        super().__init__()
        if clock_from is not None:  # a clock that a track before this one ran on: its timestamps go on rising
            self._start = clock_from
        self.size = size
        self.source = source
        source.resize(*size)

    def set_size(self, width: int, height: int) -> None:
        self.size = (width, height)
        self.source.resize(width, height)

    def replace_source(self, source) -> None:
        source.resize(*self.size)
        old, self.source = self.source, source
        old.stop()

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        pace = not getattr(self.source, "own_clock", False)
        if pace:
            pts, time_base = await self.next_timestamp()
        frame = await self.source.next_frame()
        if not pace:
            pts, time_base = await self._stamp_now()
        if frame.format.name != "yuv420p":
            # Converted once here, not by each peer connection's encoder: they share this frame through the relay
            # and run in threads, and two of them converting the same frame at once crash PyAV.
            frame = frame.reformat(format="yuv420p")
        frame.pts, frame.time_base = pts, time_base
        return frame

    async def _stamp_now(self) -> tuple[int, fractions.Fraction]:
        """A timestamp for a frame that arrived on its own clock (a camera), on the track's 90 kHz clock."""
        if not hasattr(self, "_start"):
            self._start = time.time()
        self._timestamp = int((time.time() - self._start) * 90_000)
        return self._timestamp, fractions.Fraction(1, 90_000)

    def stop(self) -> None:
        super().stop()
        self.source.stop()


# ---------------------------------------------------------------- analysis of what arrived


def dominant_hz(samples: np.ndarray, rate: int = RATE) -> float:
    """The strongest frequency in a block of samples (Hann window, parabolic peak interpolation)."""
    x = samples.astype(np.float64)
    x -= x.mean()
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    k = int(np.argmax(spectrum[1:])) + 1
    if 1 <= k < len(spectrum) - 1:
        a, b, c = spectrum[k - 1], spectrum[k], spectrum[k + 1]
        denom = a - 2 * b + c
        k = k + (0.5 * (a - c) / denom if denom else 0.0)
    return k * rate / len(x)
