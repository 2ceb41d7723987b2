"""Which microphones, speakers and cameras there are, and a watcher thread that tells the event loop within about a
second when that changes: from the sound server's events where PulseAudio or PipeWire runs, else by rescanning
PortAudio while no stream is open; cameras by reading /dev/video* again."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from . import audio, pulse
from .camera import Camera, list_cameras

log = logging.getLogger("callbox.devices")

INTERVAL = 1.0  # seconds between looks when no event says anything changed
RESCAN_EVERY = 2.0  # seconds between PortAudio rescans, where no sound server tells what changed


@dataclass(frozen=True)
class Devices:
    microphones: tuple[audio.AudioDevice, ...] = ()
    speakers: tuple[audio.AudioDevice, ...] = ()
    cameras: tuple[Camera, ...] = ()
    problem: str | None = None  # why no sound device could be listed at all

    def find(self, kind: str, key: str) -> audio.AudioDevice | None:
        return next((d for d in (self.microphones if kind == "microphone" else self.speakers) if d.key == key), None)


def current() -> Devices:
    cameras = tuple(list_cameras())
    try:
        found = audio.list_audio_devices()
    except audio.DeviceMissing as exc:
        return Devices(cameras=cameras, problem=str(exc))
    return Devices(tuple(d for d in found if d.inputs), tuple(d for d in found if d.outputs), cameras)


class DeviceWatch:
    """Calls `on_change(devices)` on the event loop whenever the devices differ from the last look (a device came
    or went, or the system default changed). `latest` is the last look."""

    def __init__(self, on_change: Callable[[Devices], None], *, interval: float = INTERVAL):
        self.on_change = on_change
        self.interval = interval
        self.latest = current()
        self._loop = asyncio.get_running_loop()
        self._stop = threading.Event()
        self._changes = pulse.Changes()
        self._thread = threading.Thread(target=self._run, name="callbox-devices", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._changes.wait(self.interval)  # returns at once without a sound server
                if self._stop.is_set():
                    break
                if not self._changes.connected:
                    self._stop.wait(RESCAN_EVERY)
                    try:
                        audio.rescan()  # no sound server: PortAudio's own list is all there is
                    except audio.DeviceMissing:
                        pass
                now = current()
                if now != self.latest:
                    self.latest = now
                    self._loop.call_soon_threadsafe(self.on_change, now)
        except Exception:
            log.exception("the device watch stopped")
        finally:
            self._changes.release()

    async def stop(self) -> None:
        self._stop.set()
        self._changes.close()
        await asyncio.to_thread(self._thread.join, 5.0)
