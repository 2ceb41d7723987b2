"""Screen capture for sharing: whether this desktop can be captured, what can be shared (each screen, each
window), the capture thread, and the slot each peer connection sends a share through.

X11 is captured with mss (XShm) in a thread of its own, at SHARE_FPS, scaled so the longest side is at most
SHARE_MAX_SIDE, converted to yuv420p there, and handed to the event loop like the camera's frames. A window is
the part of the screen it covers, followed as it moves (python-xlib reads its place); when it closes, the share
ends. Wayland offers capture only through the xdg-desktop-portal ScreenCast interface: client.core.portal.
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
from collections.abc import Callable
from dataclasses import dataclass

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

log = logging.getLogger("callbox.screen")

SHARE_FPS = 10  # text stays sharp and the encoder keeps up: VP8 at 1080p costs ~22 ms a frame here
SHARE_MAX_SIDE = 1920
SCREEN_PREFIX = "screen-"  # a share's track id starts with this (docs/protocol.md §3.3)
QUEUE = 2  # frames waiting for the loop; the oldest goes first
# aiortc's VP8 encoder keeps every video between 250 kbit/s and 1.5 Mbit/s, starting at 500 kbit/s (its
# codecs.vpx MIN/MAX/DEFAULT_BITRATE), whatever the receiver's estimate (REMB) allows. A share's text needs more:
# its sender gets an encoder of its own that starts at 1.5 Mbit/s and follows the estimate up to 4 Mbit/s.
SHARE_BITRATE = (500_000, 1_500_000, 4_000_000)  # lowest, first, highest; bits per second


def wayland() -> bool:
    return sys.platform.startswith("linux") and (os.environ.get("XDG_SESSION_TYPE") == "wayland" or (
        bool(os.environ.get("WAYLAND_DISPLAY")) and not os.environ.get("DISPLAY")))


def share_problem() -> str | None:
    """Why this desktop's screen cannot be shared, or None when it can."""
    if wayland():
        from .portal import portal_problem

        return portal_problem()
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        return "there is no display to share (DISPLAY is not set)"
    try:
        import mss  # noqa: F401
    except ImportError as exc:
        return f"the screen capture module is missing (Python package mss): {exc}"
    return None


def capture(target: Target | None, on_end: Callable[[str], None]):
    """The source of a share: the X11 screen or window `target` (None: the primary screen), or on Wayland what
    the user picks in the portal's dialog."""
    if wayland():
        from .portal import PortalSource

        return PortalSource(fps=SHARE_FPS, size=scaled, on_end=on_end)
    return ScreenSource(target, on_end=on_end)


@dataclass(frozen=True)
class Target:
    """Something that can be shared: a screen (mss's monitor number) or an X11 window (its id)."""

    kind: str  # "screen" or "window"
    id: int
    name: str  # what a person reads: "Screen 1 (1920x1080)" or the window's title
    width: int
    height: int


def share_targets() -> list[Target]:
    """Each screen, then each window with a title (not this app's own), that can be shared now; [] where none
    can be (see share_problem) or where the portal's own dialog offers them (Wayland)."""
    if wayland() or share_problem() is not None:
        return []
    import mss

    try:
        with mss.MSS() as grabber:
            monitors = grabber.monitors[1:] or grabber.monitors[:1]
    except Exception as exc:  # the display went away
        log.warning("screens could not be listed: %s", exc)
        return []
    screens = [Target("screen", i, f"Screen {i} ({m['width']}x{m['height']})", m["width"], m["height"])
               for i, m in enumerate(monitors, 1)]
    return screens + _windows()


def _windows() -> list[Target]:
    try:
        from Xlib import X, display, error
    except ImportError:
        return []  # python-xlib missing: screens only
    try:
        d = display.Display()
    except Exception:  # no X server (a portal session), or one that refuses us
        return []
    try:
        root = d.screen().root
        listed = root.get_full_property(d.intern_atom("_NET_CLIENT_LIST"), X.AnyPropertyType)
        # A window manager lists its clients; without one (Xvfb), the top-level windows are the root's children.
        windows = [d.create_resource_object("window", w) for w in listed.value] if listed else \
            root.query_tree().children
        found = []
        for w in windows:
            try:
                if w.get_attributes().map_state != X.IsViewable:
                    continue
                pid = w.get_full_property(d.intern_atom("_NET_WM_PID"), X.AnyPropertyType)
                if pid and pid.value[0] == os.getpid():
                    continue  # our own window: sharing it would show the share inside itself
                name = _title(d, w)
                g = w.get_geometry()
                if name and g.width > 1 and g.height > 1:
                    found.append(Target("window", w.id, name, g.width, g.height))
            except error.XError:
                continue  # it closed while we looked
        return found
    finally:
        d.close()


def _title(d, w) -> str:
    prop = w.get_full_property(d.intern_atom("_NET_WM_NAME"), d.intern_atom("UTF8_STRING"))
    if prop and prop.value:
        value = prop.value
        return (value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)).strip()
    name = w.get_wm_name()
    return (name.decode("latin-1") if isinstance(name, bytes) else name or "").strip()


class _WindowPlace:
    """Where an X11 window is on the screen now, asked each frame; None once it has closed or been hidden."""

    def __init__(self, window_id: int):
        from Xlib import display

        self._d = display.Display()
        self._w = self._d.create_resource_object("window", window_id)
        self._root = self._d.screen().root

    def region(self, screen: dict) -> dict | None:
        from Xlib import X, error

        try:
            if self._w.get_attributes().map_state != X.IsViewable:
                return None
            g = self._w.get_geometry()
            at = self._root.translate_coords(self._w, 0, 0)
        except error.XError:
            return None  # BadWindow: it was closed
        left, top = max(at.x, screen["left"]), max(at.y, screen["top"])
        right = min(at.x + g.width, screen["left"] + screen["width"])
        bottom = min(at.y + g.height, screen["top"] + screen["height"])
        if right - left < 2 or bottom - top < 2:
            return None  # moved entirely off the screen
        return {"left": left, "top": top, "width": right - left, "height": bottom - top}

    def close(self) -> None:
        self._d.close()


def scaled(width: int, height: int, longest: int = SHARE_MAX_SIDE) -> tuple[int, int]:
    """A capture's size with its longest side at most `longest`, both sides even (yuv420p needs them so)."""
    scale = min(1.0, longest / max(width, height))
    return max(2, int(width * scale) & ~1), max(2, int(height * scale) & ~1)


class ScreenSource:
    """A screen or window (`target`; None: the primary screen), captured in a thread at `fps`; frames come out of
    `next_frame()` on the loop. When the capture ends by itself (the window closed, the display went away),
    `on_end(why)` is called on the loop."""

    own_clock = True  # frames arrive when captured: the track stamps them as they come

    def __init__(self, target: Target | None = None, *, fps: float = SHARE_FPS, max_side: int = SHARE_MAX_SIDE,
                 on_end: Callable[[str], None] = lambda why: None):
        self.target, self.fps, self.max_side, self.on_end = target, fps, max_side, on_end
        self.name = target.name if target is not None else "screen"
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

        why = "the screen can no longer be captured"
        place = None
        try:
            with mss.MSS() as grabber:
                screens = grabber.monitors[1:] or grabber.monitors[:1]
                target = self.target
                screen = screens[target.id - 1] if target is not None and target.kind == "screen" and \
                    target.id <= len(screens) else screens[0]
                if target is not None and target.kind == "window":
                    place, screen = _WindowPlace(target.id), grabber.monitors[0]  # a window may span screens
                period = 1 / self.fps
                next_at = time.monotonic()
                while not self._stopped.is_set():
                    region = place.region(screen) if place is not None else screen
                    if region is None:
                        why = f"the shared window ({self.name}) was closed"
                        break
                    shot = grabber.grab(region)
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
            if place is not None:
                place.close()
            ended_by_itself = not self._stopped.is_set()
            self._stopped.set()
            with contextlib.suppress(RuntimeError):  # the loop may be gone already
                self._loop.call_soon_threadsafe(self._ready.set)
                if ended_by_itself:
                    log.info("screen share ended: %s", why)
                    self._loop.call_soon_threadsafe(self.on_end, why)


def prefer_vp8(transceiver) -> None:
    """Negotiate only VP8 (and its retransmissions) on the screen transceiver, so that share_encoder fits."""
    from aiortc import RTCRtpSender

    codecs = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType in ("video/VP8", "video/rtx")]
    transceiver.setCodecPreferences(codecs)


def share_encoder(sender) -> None:
    """Give the screen's sender (its transceiver negotiates VP8 only: prefer_vp8) an encoder with the share's
    bitrate range. aiortc creates a sender's encoder at its first frame unless it has one; this is that one."""
    from aiortc.codecs.vpx import Vp8Encoder

    class ShareEncoder(Vp8Encoder):
        @property
        def target_bitrate(self) -> int:
            return self._Vp8Encoder__target_bitrate

        @target_bitrate.setter
        def target_bitrate(self, bitrate: int) -> None:
            self._Vp8Encoder__target_bitrate = max(SHARE_BITRATE[0], min(bitrate, SHARE_BITRATE[2]))

    encoder = ShareEncoder()
    encoder.target_bitrate = SHARE_BITRATE[1]
    if hasattr(sender, "_RTCRtpSender__encoder"):  # the attribute aiortc keeps it in (1.9 to 1.14 at least)
        sender._RTCRtpSender__encoder = encoder


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
