"""Screen sharing on Wayland: the xdg-desktop-portal ScreenCast session over D-Bus (dbus-fast), and its PipeWire
stream read through GStreamer's pipewiresrc in a gst-launch-1.0 process, as raw frames.

The portal shows its own dialog, in which the user picks a screen or a window and consents; then it hands over a
PipeWire node and a file descriptor for it. gst-launch reads the node and writes BGRx frames of a fixed size to
its stdout, which PortalSource turns into frames for the share track, like ScreenSource does for X11.

Built to the portal's documented interface but NOT tested on this project's machines, which have no Wayland
session, portal or PipeWire; `portal_problem()` says what is missing on a machine where it cannot run."""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import shutil
import subprocess
from collections import deque
from collections.abc import Callable

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError

log = logging.getLogger("callbox.portal")

PORTAL = "org.freedesktop.portal.Desktop"
PORTAL_PATH = "/org/freedesktop/portal/desktop"
SCREENCAST = "org.freedesktop.portal.ScreenCast"
MONITOR, WINDOW = 1, 2  # SelectSources "types"
CURSOR_EMBEDDED = 2  # SelectSources "cursor_mode"


@functools.cache
def portal_problem() -> str | None:
    """Why a Wayland share cannot work here (a missing package, named), or None when it can be tried."""
    try:
        import dbus_fast  # noqa: F401
    except ImportError:
        return "screen sharing on Wayland needs the Python package dbus-fast"
    gst = shutil.which("gst-launch-1.0")
    inspect = shutil.which("gst-inspect-1.0")
    if gst is None or inspect is None:
        return "screen sharing on Wayland needs GStreamer (Debian: gstreamer1.0-tools gstreamer1.0-pipewire)"
    try:
        found = subprocess.run([inspect, "pipewiresrc"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        found = False
    if not found:
        return "screen sharing on Wayland needs GStreamer's PipeWire source (Debian: gstreamer1.0-pipewire)"
    return None


class PortalCancelled(Exception):
    """The user closed the portal's dialog, or the portal refused."""


class _Session:
    """One ScreenCast session: the D-Bus calls, each answered by a Request's Response signal."""

    def __init__(self, bus):
        self.bus = bus
        self.sender = bus.unique_name[1:].replace(".", "_")
        self._waiting: dict[str, asyncio.Future] = {}
        bus.add_message_handler(self._on_message)

    def _on_message(self, msg) -> None:
        future = self._waiting.pop(msg.path or "", None) if msg.member == "Response" else None
        if future is not None and not future.done():
            future.set_result(msg.body)

    async def call(self, member: str, signature: str, *body):
        from dbus_fast import Message, MessageType

        reply = await self.bus.call(Message(destination=PORTAL, path=PORTAL_PATH, interface=SCREENCAST,
                                            member=member, signature=signature, body=list(body)))
        if reply.message_type == MessageType.ERROR:
            raise PortalCancelled(f"the desktop portal refused {member}: {reply.error_name} {reply.body}")
        return reply

    async def request(self, member: str, signature: str, *body, options: dict) -> dict:
        """Call a method whose answer comes as the Response signal of a Request object; its results."""
        from dbus_fast import Message, Variant

        token = f"callbox{secrets.token_hex(6)}"
        path = f"/org/freedesktop/portal/desktop/request/{self.sender}/{token}"
        future = self._waiting[path] = asyncio.get_running_loop().create_future()
        await self.bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                    interface="org.freedesktop.DBus", member="AddMatch", signature="s",
                                    body=[f"type='signal',interface='org.freedesktop.portal.Request',path='{path}'"]))
        await self.call(member, signature, *body, {**options, "handle_token": Variant("s", token)})
        code, results = await future  # no timeout: the user may take their time in the dialog
        if code != 0:
            raise PortalCancelled("you cancelled the screen share" if code == 1 else "the desktop portal refused")
        return results


async def open_stream() -> tuple[int, int, int, int, object]:
    """Ask the portal for a screen or window: (PipeWire fd, node id, width, height, bus) once the user agreed."""
    from dbus_fast import BusType, Variant
    from dbus_fast.aio import MessageBus

    bus = await MessageBus(bus_type=BusType.SESSION, negotiate_unix_fd=True).connect()
    try:
        s = _Session(bus)
        created = await s.request("CreateSession", "a{sv}", options={
            "session_handle_token": Variant("s", f"callbox{secrets.token_hex(6)}")})
        session = created["session_handle"].value
        await s.request("SelectSources", "oa{sv}", session, options={
            "types": Variant("u", MONITOR | WINDOW), "multiple": Variant("b", False),
            "cursor_mode": Variant("u", CURSOR_EMBEDDED)})
        started = await s.request("Start", "osa{sv}", session, "", options={})
        node, props = started["streams"].value[0]
        width, height = props["size"].value if "size" in props else (1920, 1080)
        reply = await s.call("OpenPipeWireRemote", "oa{sv}", session, {})
        fd = reply.unix_fds[reply.body[0]] if reply.unix_fds else reply.body[0]
        return fd, node, width, height, bus
    except BaseException:
        bus.disconnect()
        raise


class PortalSource:
    """A share from the portal (the user picks what in its dialog): frames out of `next_frame()`, like
    ScreenSource; `on_end(why)` when it ends by itself (cancelled, or stopped from the desktop's own control)."""

    own_clock = True

    def __init__(self, *, fps: float, size: Callable[[int, int], tuple[int, int]],
                 on_end: Callable[[str], None] = lambda why: None):
        self.fps, self.size, self.on_end = fps, size, on_end
        self.name = "screen"
        self._frames: deque[av.VideoFrame] = deque(maxlen=2)
        self._ready = asyncio.Event()
        self._stopped = False
        self._proc: asyncio.subprocess.Process | None = None
        self._task = asyncio.get_running_loop().create_task(self._run())

    def resize(self, width: int, height: int) -> None:
        pass

    async def next_frame(self) -> av.VideoFrame:
        while not self._frames:
            if self._stopped:
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        return self._frames.popleft()

    def stop(self) -> None:
        self._stopped = True
        self._ready.set()
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
        self._task.cancel()

    async def _run(self) -> None:
        why = "the screen share stopped"
        bus = None
        try:
            fd, node, width, height, bus = await open_stream()
            w, h = self.size(width, height)
            self._proc = await asyncio.create_subprocess_exec(
                "gst-launch-1.0", "-q", "pipewiresrc", f"fd={fd}", f"path={node}", "do-timestamp=true", "!",
                "videorate", "!", "videoconvert", "!", "videoscale", "!",
                f"video/x-raw,format=BGRx,width={w},height={h},framerate={int(self.fps)}/1", "!", "fdsink", "fd=1",
                pass_fds=(fd,), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
            size = w * h * 4
            while not self._stopped:
                raw = await self._proc.stdout.readexactly(size)
                frame = await asyncio.to_thread(_frame, raw, w, h)
                self._frames.append(frame)
                self._ready.set()
        except asyncio.IncompleteReadError:
            why = "the screen share was stopped from the desktop"
        except PortalCancelled as exc:
            why = str(exc)
        except asyncio.CancelledError:
            return
        except Exception as exc:  # no session bus, no portal, GStreamer failed
            why = f"the desktop portal could not share the screen: {exc}"
        finally:
            if bus is not None:
                bus.disconnect()
            if self._proc is not None and self._proc.returncode is None:
                self._proc.kill()
        if not self._stopped:
            self._stopped = True
            self._ready.set()
            log.info("portal share ended: %s", why)
            self.on_end(why)


def _frame(raw: bytes, width: int, height: int) -> av.VideoFrame:
    pixels = np.frombuffer(raw, np.uint8).reshape(height, width, 4)
    return av.VideoFrame.from_ndarray(pixels, format="bgra").reformat(format="yuv420p")
