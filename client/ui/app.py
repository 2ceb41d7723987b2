"""The desktop app's lifetime: window first, then first run, server choice and the engine; settings; clean exit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import time

from PySide6.QtWidgets import QApplication, QDialog

from client.core.chatlog import ChatLog, room_key
from client.core.engine import Engine, EngineConfig
from client.core.events import RoomsChanged
from client.core.history import History, recorder
from client.core.identity import Identity, Pins
from client.core.lan import Lan
from client.core.media import LocalMedia
from client.core.ringtone import Ringtone
from client.core.rooms import HISTORY_CHECKED
from client.core.settings import Profile, Settings, default_name, make_user_id
from client.core.signaling import ConnState
from client.core.tasks import Tasks

from .bridge import EngineBridge
from .main_window import MainWindow
from .resources import asset
from .settings_dialog import SettingsDialog

log = logging.getLogger("callbox.app")

CHOSEN = {"configured": "The address set in Settings", "discovered": "Found on the LAN",
          "hosted": "Started here, as no other server was on the LAN"}


class App:
    def __init__(self, profile: Profile, *, discover: bool = True, interfaces=None, host: str = "0.0.0.0",
                 media_factory=None):
        self.profile = profile
        self.settings: Settings = profile.load()
        self.history = History(profile.history_path)
        self.chatlog = ChatLog(self.history.db)  # the same database file
        self.discover, self.interfaces, self.host = discover, interfaces, host
        self.media_factory = media_factory or self._real_media
        self.window = MainWindow(self.history, self.chatlog, profile.name)
        self.window.ringtone = Ringtone(asset("ringtone.wav"))
        self.window.named.connect(self.on_named)
        self.window.open_settings.connect(self.on_settings)
        self.window.sound_check.connect(self.on_sound_check)
        self.window.ask_before_quit = self.quit_question
        self.engine: Engine | None = None
        self.bridge: EngineBridge | None = None
        self.lan: Lan | None = None
        self.quit = asyncio.Event()
        self._named = asyncio.Event()
        self.shown_at: float | None = None
        self.tasks = Tasks()  # what a click starts and nobody awaits: the sound check, a reconnect

    def _real_media(self, s: Settings) -> LocalMedia:
        return LocalMedia(microphone=s.microphone or None, speaker=s.speaker or None, camera=s.camera or None,
                          echo_cancellation=s.echo_cancellation)

    async def start(self) -> None:
        state = self.profile.load_window_state()
        if "geometry" in state:
            self.window.restoreGeometry(bytes.fromhex(state["geometry"]))
        self.window.show()
        await asyncio.sleep(0)  # one turn of the loop: the window paints before anything slow starts
        self.shown_at = time.monotonic()
        log.info("window shown %.0f ms after start", (self.shown_at - START) * 1000)
        if not self.settings.display_name:
            self.window.ask_name(default_name())
            await self._named.wait()
        if not self.settings.user_id:
            self.settings.user_id = make_user_id(self.settings.display_name)
            self.profile.save(self.settings)
        await self.connect()

    def on_named(self, name: str) -> None:
        self.settings.display_name = name
        self.profile.save(self.settings)
        self._named.set()

    async def connect(self) -> None:
        s = self.settings
        self.window.set_connection("connecting", "looking for a Callbox server on the network…"
                                   if not s.servers else "")
        pins = Pins(self.profile.pins_path)
        self.lan = Lan(configured=s.servers, user_id=s.user_id, display_name=s.display_name, port=s.host_port,
                       host=self.host, discover=self.discover, interfaces=self.interfaces,
                       data_dir=self.profile.data_dir, pins=pins.keys)
        urls = await self.lan.choose()
        engine = Engine(EngineConfig(server=urls, user_id=s.user_id, display_name=s.display_name,
                                     token=s.token or None, ice_servers=s.ice_servers), self.media_factory(s),
                        identity=Identity.load(self.profile.identity_path), pins=pins)
        engine.subscribe(recorder(self.history))
        engine.subscribe(self._keep_rooms)
        for name in s.rooms:  # rejoined; the lines we have already are not shown or counted again
            try:
                engine.join_room(name, known=self.chatlog.lines(room_key(name), HISTORY_CHECKED))
            except ValueError as exc:
                log.warning("room %r from the settings is skipped: %s", name, exc)
        self.bridge = EngineBridge(engine, self.window)
        self.lan.subscribe(self.bridge.on_event)
        self.engine = engine
        self.window.attach(engine, self.bridge, self.server_in_use)
        self.lan.attach(engine)
        await engine.start()

    def _keep_rooms(self, e) -> None:
        """Joined rooms live in the profile, so they are rejoined after a restart."""
        if isinstance(e, RoomsChanged) and list(e.rooms) != self.settings.rooms:
            self.settings.rooms = list(e.rooms)
            self.profile.save(self.settings)

    async def disconnect(self) -> None:
        if self.engine is not None:
            await self.engine.stop()
            self.engine = None
        if self.bridge is not None:
            self.bridge.deleteLater()
            self.bridge = None
        if self.lan is not None:
            await self.lan.stop()
            self.lan = None

    def on_sound_check(self) -> None:
        if self.engine is not None and self.window.call_page.call_id is None:
            self.tasks.spawn(self._sound_check(), "sound check")

    async def _sound_check(self) -> None:
        page = self.window.call_page
        page.start("", "Sound and video check", "echo", ["audio", "video"])
        self.window.stack.setCurrentWidget(page)
        page.call_id = await self.engine.echo_test(video=True)
        page.status.setText("Say something: you hear it back a second later")

    def server_in_use(self) -> str:
        """The server in use and who hosts it, then how it was chosen, e.g. "ws://… — hosted by Bob's app" and
        "Found on the LAN" on two lines; empty before one is chosen."""
        if self.lan is None or self.lan.target is None:
            return ""
        url = (self.lan.host_url() if self.lan.hosting  # else the address connected to, of several configured
               else self.engine.signaling.url if self.engine is not None else self.lan.target.url)
        return f"{url} — {self._host()}\n{CHOSEN[self.lan.target.how]}"

    def _host(self) -> str:
        sig = self.engine.signaling if self.engine is not None else None
        info = sig.server_info if sig is not None else None
        if self.lan.hosting or (info is not None and info.host_user == self.settings.user_id):
            return "hosted by this app"
        if info is None or sig.state is not ConnState.ONLINE:
            return "not connected"
        if info.kind == "dedicated" or not info.host_user:
            return "a dedicated server"
        host = sig.users.get(info.host_user)
        return f"hosted by {host.display_name if host else info.host_user}'s app"

    def quit_question(self) -> str | None:
        """What to confirm before quitting: that others use the server this app hosts; None when nobody does."""
        if self.lan is None or not self.lan.hosting:
            return None
        own = int(self.engine is not None and self.engine.connection is ConnState.ONLINE)
        others = self.lan.server.connections - own
        if others <= 0:
            return None
        people = "1 other person is" if others == 1 else f"{others} other people are"
        return f"{people} connected through this computer, which hosts the LAN's Callbox server."

    def on_settings(self) -> None:
        dialog = SettingsDialog(self.settings, self.lan.found if self.lan else [], self.server_in_use(), self.window,
                                devices=self.engine.devices if self.engine else None)
        bridge = self.bridge  # a reconnect may replace it while the dialog is open
        if bridge is not None:
            bridge.devicesChanged.connect(dialog.refill_devices)
        dialog.finished.connect(lambda result: self._settings_closed(dialog, result, bridge))
        dialog.open()

    def _settings_closed(self, dialog: SettingsDialog, result: int, bridge: EngineBridge | None) -> None:
        if bridge is not None:
            with contextlib.suppress(RuntimeError):  # that bridge was deleted by a reconnect
                bridge.devicesChanged.disconnect(dialog.refill_devices)
        if result != QDialog.DialogCode.Accepted:
            return
        new = dialog.result_settings()
        reconnect = (new.servers, new.token, new.display_name, new.ice_servers) != (
            self.settings.servers, self.settings.token, self.settings.display_name, self.settings.ice_servers)
        self.settings = new
        self.profile.save(new)
        if self.engine is not None:
            media = self.engine.media
            if media.processor is not None:
                media.processor.enabled = new.echo_cancellation  # takes effect on the next block
            media.switch_microphone(new.microphone or None)
            media.switch_speaker(new.speaker or None)
            if new.camera:
                media.switch_camera(new.camera)
        if reconnect and not any(s.call.live for s in (self.engine.sessions.values() if self.engine else [])):
            self.tasks.spawn(self._reconnect(), "reconnect after settings")

    async def _reconnect(self) -> None:
        await self.disconnect()
        await self.connect()

    async def shutdown(self) -> None:
        self.profile.save_window_state({"geometry": bytes(self.window.saveGeometry()).hex()})
        # A reconnect still under way would start its engine after disconnect() stopped it, and leave it
        # running: let it finish first (it takes at most the LAN's look-around), then cancel what is left.
        try:
            await asyncio.wait_for(self.tasks.wait(), 10)
        except TimeoutError:
            log.warning("background work did not finish in 10 s; cancelling it")
        await self.tasks.close()
        try:
            await asyncio.wait_for(self.disconnect(), 15)  # quitting must not hang on a stuck connection
        except TimeoutError:
            log.warning("disconnecting took over 15 s; quitting anyway")
        if self.window.ringtone is not None:
            self.window.ringtone.stop()
        self.history.close()


def has_screen() -> bool:
    if os.environ.get("QT_QPA_PLATFORM") or sys.platform in ("win32", "darwin"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


async def _serve_only() -> int:
    """No screen: keep the LAN's embedded server running so others can call through it."""
    from server.cli import open_bindings, run
    from server.transport import SignalingServer

    print("callbox: no screen found (DISPLAY is not set), so no window can open. Serving the LAN instead: "
          "a Callbox server, advertised so that every app on the network uses it; stop it with Ctrl+C. Use "
          "`callbox --headless` to call from a terminal.", file=sys.stderr)
    await run(SignalingServer("0.0.0.0", 8765, bindings=open_bindings(None)),
              advertise=f"Callbox server on {socket.gethostname()}")
    return 0


def main(profile_name: str = "default") -> int:
    import qasync

    if not has_screen():
        return asyncio.run(_serve_only())
    profile = Profile(profile_name)
    qapp = QApplication.instance() or QApplication(sys.argv[:1])
    qapp.setApplicationName("Callbox")
    qapp.setQuitOnLastWindowClosed(False)

    async def run() -> int:
        app = App(profile)
        qapp.lastWindowClosed.connect(app.quit.set)
        await app.start()
        await app.quit.wait()
        await app.shutdown()
        return 0

    with asyncio.Runner(loop_factory=lambda: qasync.QEventLoop(qapp)) as runner:
        return runner.run(run())


START = time.monotonic()
