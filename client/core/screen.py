"""Screen capture for sharing: whether this desktop can be captured, the capture thread, and the slot each peer
connection sends a share through.

X11 is captured with mss (XShm) in a thread of its own, at SHARE_FPS, scaled so the longest side is at most
SHARE_MAX_SIDE, converted to yuv420p there, and handed to the event loop like the camera's frames. Wayland
offers capture only through the xdg-desktop-portal ScreenCast interface (a PipeWire stream after the user's
consent), which this build does not speak yet: `share_problem()` says so rather than sending a black screen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
import time
import uuid
from collections import deque

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

log = logging.getLogger("callbox.screen")

SHARE_FPS = 10  # text stays sharp and the encoder keeps up: VP8 at 1080p costs ~22 ms a frame here
SHARE_MAX_SIDE = 1920
SCREEN_PREFIX = "screen-"  # a share's track id starts with this (docs/protocol.md §3.3)
QUEUE = 2  # frames waiting for the loop; the oldest goes first


def share_problem() -> str | None:
    """Why this desktop's screen cannot be shared, or None when it can."""
    if sys.platform.startswith("linux"):
        if os.environ.get("XDG_SESSION_TYPE") == "wayland" or (
                os.environ.get("WAYLAND_DISPLAY") and not os.environ.get("DISPLAY")):
            return ("screen sharing on Wayland goes through the desktop portal, which this version does not "
                    "support yet; log in to an X11 session (\"GNOME on Xorg\") to share your screen")
        if not os.environ.get("DISPLAY"):
            return "there is no display to share (DISPLAY is not set)"
    try:
        import mss  # noqa: F401
    except ImportError as exc:
        return f"the screen capture module is missing (Python package mss): {exc}"
    return None


def scaled(width: int, height: int, longest: int = SHARE_MAX_SIDE) -> tuple[int, int]:
    """A capture's size with its longest side at most `longest`, both sides even (yuv420p needs them so)."""
    scale = min(1.0, longest / max(width, height))
    return max(2, int(width * scale) & ~1), max(2, int(height * scale) & ~1)


class ScreenSource:
    """The primary screen, captured in a thread at `fps`; frames come out of `next_frame()` on the loop."""

    own_clock = True  # frames arrive when captured: the track stamps them as they come

    def __init__(self, fps: float = SHARE_FPS, max_side: int = SHARE_MAX_SIDE):
        self.fps, self.max_side = fps, max_side
        self.name = "screen"
        self._loop = asyncio.get_running_loop()
        self._frames: deque[av.VideoFrame] = deque(maxlen=QUEUE)
        self._ready = asyncio.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="screen capture", daemon=True)
        self._thread.start()

    def resize(self, width: int, height: int) -> None:
        pass  # a share keeps its own size (up to max_side), whatever size the camera goes out at

    async def next_frame(self) -> av.VideoFrame:
        while not self._frames:
            if self._stopped.is_set():
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        return self._frames.popleft()

    def stop(self) -> None:
        self._stopped.set()
        self._loop.call_soon_threadsafe(self._ready.set)

    def _hand_over(self, frame: av.VideoFrame) -> None:
        self._frames.append(frame)
        self._ready.set()

    def _run(self) -> None:
        import mss

        try:
            with mss.MSS() as grabber:
                monitor = grabber.monitors[1] if len(grabber.monitors) > 1 else grabber.monitors[0]
                period = 1 / self.fps
                next_at = time.monotonic()
                while not self._stopped.is_set():
                    shot = grabber.grab(monitor)
                    pixels = np.frombuffer(shot.bgra, np.uint8).reshape(shot.height, shot.width, 4)
                    frame = av.VideoFrame.from_ndarray(pixels, format="bgra")
                    w, h = scaled(shot.width, shot.height, self.max_side)
                    frame = frame.reformat(width=w, height=h, format="yuv420p")
                    self._loop.call_soon_threadsafe(self._hand_over, frame)
                    next_at += period
                    self._stopped.wait(max(0.0, next_at - time.monotonic()))
                    next_at = max(next_at, time.monotonic() - period)  # late: do not race to catch up
        except Exception as exc:  # the display went away, or capture is refused
            log.warning("screen capture stopped: %s", exc)
        finally:
            self._stopped.set()
            with contextlib.suppress(RuntimeError):  # the loop may be gone already
                self._loop.call_soon_threadsafe(self._ready.set)


class ShareSlot(MediaStreamTrack):
    """What one peer connection's screen transceiver sends: nothing while no screen is shared, else the shared
    screen's frames. It lives as long as its peer connection, so a share can start and stop any number of times
    without renegotiating; its id starts with SCREEN_PREFIX, which tells the other side what it carries."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self._id = f"{SCREEN_PREFIX}{uuid.uuid4()}"
        self._source: MediaStreamTrack | None = None
        self._changed = asyncio.Event()

    @property
    def id(self) -> str:
        return self._id

    @property
    def active(self) -> bool:
        return self._source is not None

    def attach(self, track: MediaStreamTrack | None) -> None:
        """Send this track's frames from now on (a subscription to the shared screen), or nothing (None)."""
        old, self._source = self._source, track
        if old is not None and old is not track:
            old.stop()
        self._changed.set()

    async def recv(self) -> av.VideoFrame:
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            source = self._source
            self._changed.clear()
            if source is None:
                await self._changed.wait()
                continue
            frame = asyncio.ensure_future(source.recv())
            changed = asyncio.ensure_future(self._changed.wait())
            await asyncio.wait((frame, changed), return_when=asyncio.FIRST_COMPLETED)
            changed.cancel()
            if not frame.done():
                frame.cancel()  # the share stopped or moved while we waited: look again
                continue
            try:
                return frame.result()
            except MediaStreamError:
                if self._source is source:
                    self._source = None  # the share ended under us; wait for the next
                continue

    def stop(self) -> None:
        super().stop()
        self.attach(None)
