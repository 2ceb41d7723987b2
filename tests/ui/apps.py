"""UI test helpers: start an App in a throwaway profile with tones and test patterns, wait, and take screenshots."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
from PySide6.QtGui import QImage

from client.core.media import LocalMedia
from client.core.settings import Profile
from client.core.tracks import read_counter
from client.ui.app import App
from tests.support import BUSY  # noqa: F401 (the UI tests take it from here, beside the other helpers)

SCREENS = Path(__file__).resolve().parents[2] / "test-output" / "screens"


def make_app(root: Path, profile: str, *, name: str = "", server: str = "", tone: float | None = 440,
             discover: bool = False, interfaces=None) -> App:
    """An app in a throwaway profile; with a tone it sends that and a test pattern, with tone=None real devices."""
    prof = Profile(profile, root=root)
    if name:
        s = prof.load()
        s.display_name, s.servers = name, [server] if server else []
        s.user_id = s.user_id or name.lower()
        prof.save(s)
    app = App(prof, discover=discover, interfaces=interfaces, host="127.0.0.1",
              media_factory=None if tone is None else lambda s: LocalMedia(tone_hz=tone, pattern=True, playback=False))
    app.window.ringtone = None  # the tests check the panel, not the sound card
    return app


async def online_pair(tmp_path, url, tone_a=440, tone_b=660) -> tuple[App, App]:
    """Alice and Bob on the server at url, each seeing the other."""
    alice = make_app(tmp_path, "alice", name="Alice", server=url, tone=tone_a)
    bob = make_app(tmp_path, "bob", name="Bob", server=url, tone=tone_b)
    await alice.start()
    await bob.start()
    await until(lambda: "bob" in alice.window.contacts.rows and "alice" in bob.window.contacts.rows, 10,
                "both to see each other")
    return alice, bob


async def share(qtbot, button, name: str) -> None:
    """Press a Share screen button and pick `name` (a screen's or a window's) in the menu it offers."""
    from PySide6.QtCore import Qt

    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    menu = await until(lambda: button.menu, 2, "the menu of screens and windows")
    offered = [a.text() for a in menu.actions() if not a.isSeparator()]
    [action] = [a for a in menu.actions() if a.text() == name] or [None]
    assert action is not None, f"{name!r} is not offered: {offered}"
    shot(menu, "share_menu")
    action.trigger()
    menu.hide()


async def until(check, timeout: float = 10.0, what: str = ""):
    try:
        async with asyncio.timeout(timeout):
            while not (result := check()):
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what or check}") from None
    return result


def shot(widget, name: str) -> Path:
    SCREENS.mkdir(parents=True, exist_ok=True)
    path = SCREENS / f"{name}.png"
    widget.grab().save(str(path))
    return path


def pixels(image: QImage) -> np.ndarray:
    """The image's RGB pixels, copied: the converted image's buffer is freed when this returns."""
    img = image.convertToFormat(QImage.Format.Format_RGB888)
    w, h = img.width(), img.height()
    return np.frombuffer(img.constBits(), dtype=np.uint8, count=img.bytesPerLine() * h).reshape(
        h, img.bytesPerLine())[:, :w * 3].reshape(h, w, 3).copy()


def counter(image: QImage) -> int:
    return read_counter(pixels(image))
