"""Cameras: finding them on Linux, Windows and macOS, and opening one at its own size and frame rate."""

from __future__ import annotations

import glob
import logging
import os
import re
import sys
from dataclasses import dataclass

import av

from .audio import DeviceMissing

log = logging.getLogger("callbox.camera")


@dataclass(frozen=True)
class Camera:
    id: str  # what to open: /dev/video0, "video=Name" (dshow) or an index (avfoundation)
    name: str
    format: str  # the FFmpeg input format: v4l2, dshow or avfoundation


def list_cameras() -> list[Camera]:
    if sys.platform.startswith("linux"):
        return _linux()
    if sys.platform == "win32":
        return [Camera(f"video={n}", n, "dshow") for n in _ffmpeg_devices("dshow", "dummy")]
    if sys.platform == "darwin":
        return [Camera(str(i), n, "avfoundation") for i, n in enumerate(_ffmpeg_devices("avfoundation", ""))]
    return []


def _linux() -> list[Camera]:
    cams = []
    for path in sorted(glob.glob("/dev/video*"), key=lambda p: int(re.sub(r"\D", "", p) or 0)):
        node = os.path.basename(path)
        try:
            with open(f"/sys/class/video4linux/{node}/name") as f:
                name = f.read().strip()
            with open(f"/sys/class/video4linux/{node}/index") as f:
                if f.read().strip() != "0":
                    continue  # metadata nodes of the same camera
        except OSError:
            name = node
        cams.append(Camera(path, name, "v4l2"))
    return cams


def _ffmpeg_devices(fmt: str, target: str) -> list[str]:
    """Ask FFmpeg to list capture devices (dshow/avfoundation print them to the log); parse the names."""
    names: list[str] = []
    with av.logging.Capture() as logs:
        try:
            av.open(target, format=fmt, options={"list_devices": "true"})
        except Exception:
            pass  # listing always "fails" after printing
    video = True
    for _level, _name, text in logs:
        if "audio devices" in text.lower():
            video = False
        m = re.search(r'"([^"]+)"', text)
        if m and video and "Alternative name" not in text:
            names.append(m.group(1))
    return names


def open_camera(camera: Camera):
    """A MediaPlayer capturing from the camera at its default size and rate, or DeviceMissing saying why."""
    from aiortc.contrib.media import MediaPlayer

    try:
        return MediaPlayer(camera.id, format=camera.format)
    except (av.FFmpegError, OSError) as exc:
        raise DeviceMissing(f"camera '{camera.name}' could not be opened: {exc}") from None
