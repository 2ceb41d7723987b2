"""What the user sees of the LAN's servers: contacts while offline, a move, the server in use, quitting the host."""

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QDialogButtonBox, QMessageBox

from client.core import events as ev
from client.core.lan import Target
from client.ui.settings_dialog import SettingsDialog
from server import HubConfig, SignalingServer
from tests.support import FAST, running_server
from tests.ui.apps import make_app, online_pair, pixels, shot, until

LEFT = Qt.MouseButton.LeftButton


def darkest(label) -> int:
    """The darkest pixel of a label as painted: near 0 for black text, higher for grey."""
    return int(pixels(label.grab().toImage()).min())


def visible(window, kind):
    return [w for w in window.findChildren(kind) if w.isVisible()]


async def settings_line(qtbot, app) -> str:
    qtbot.mouseClick(app.window.settings_button, LEFT)
    [dialog] = await until(lambda: visible(app.window, SettingsDialog), 2, "the settings dialog")
    text = dialog.in_use.text()
    shot(dialog, f"settings_{app.settings.user_id}")
    qtbot.mouseClick(dialog.findChild(QDialogButtonBox).button(QDialogButtonBox.StandardButton.Cancel), LEFT)
    await until(lambda: not dialog.isVisible(), 2)
    return text


@pytest.fixture
def no_quit_on_close(qapp):
    """Like the app (main() sets this): closing the last window must not stop the test's event loop."""
    qapp.setQuitOnLastWindowClosed(False)
    yield
    qapp.setQuitOnLastWindowClosed(True)


def test_contacts_grey_out_with_their_last_status_while_the_server_is_away(qtbot, qloop, tmp_path):
    async def scenario():
        srv = SignalingServer("127.0.0.1", 0, config=HubConfig(**FAST), ping_timeout=0.1)
        await srv.start()
        port = srv.port
        alice, bob = await online_pair(tmp_path, srv.url)
        try:
            aw = alice.window
            row = aw.contacts.rows["bob"]
            assert "Online" in row.status.text() and row.audio.isEnabled() and darkest(row.name) < 40
            await srv.stop()
            await until(lambda: aw.banner.isVisible(), 5, "the reconnect banner")
            row = aw.contacts.rows["bob"]
            assert "Online (last known)" in row.status.text()
            assert darkest(row.name) > 80, "the name is not greyed"
            for button in (row.audio, row.video):
                assert not button.isEnabled()
                assert button.toolTip().startswith("Not connected to a server")
            qtbot.mouseClick(row.audio, LEFT)
            qtbot.mouseClick(row.video, LEFT)
            assert alice.engine.sessions == {} and aw.stack.currentWidget() is aw.tabs
            shot(aw, "contacts_not_connected")

            srv = SignalingServer("127.0.0.1", port, config=HubConfig(**FAST), ping_timeout=0.1)
            await srv.start()
            await until(lambda: "bob" in aw.contacts.rows and aw.contacts.rows["bob"].audio.isEnabled(), 10,
                        "Bob callable again")
            row = aw.contacts.rows["bob"]
            assert "last known" not in row.status.text() and "Online" in row.status.text()
            assert row.audio.toolTip() == "Call Bob" and darkest(row.name) < 40
            qtbot.mouseClick(row.audio, LEFT)
            await until(lambda: bob.window.incoming.isVisible(), 5, "Bob's phone to ring")
            qtbot.mouseClick(bob.window.incoming.reject, LEFT)
            await until(lambda: aw.stack.currentWidget() is aw.tabs, 5)
        finally:
            await alice.shutdown()
            await bob.shutdown()
            await srv.stop()

    qloop.run_until_complete(scenario())


def test_the_banner_says_where_a_call_moves_to(qtbot, qloop, tmp_path):
    """Both parties of a call move to another server, as app.lan moves them; the banner names it, the call goes on."""

    async def scenario():
        async with running_server() as first:
            second = SignalingServer("127.0.0.1", 0, config=HubConfig(**FAST), ping_timeout=0.1)
            await second.start()
            port = second.port
            await second.stop()  # not up yet: the move takes a while, long enough to read the banner
            url = f"ws://127.0.0.1:{port}"
            alice, bob = await online_pair(tmp_path, first.url)
            try:
                aw = alice.window
                qtbot.mouseClick(aw.contacts.rows["bob"].video, LEFT)
                await until(lambda: bob.window.incoming.isVisible(), 5)
                qtbot.mouseClick(bob.window.incoming.accept_video, LEFT)
                await until(lambda: aw.call_page.remote.frames > 5, 10, "video")
                name = "Callbox server on office-pc"
                for app, why in ((alice, "the server was lost"), (bob, "two servers were on the LAN")):  # as app.lan
                    app.lan.target = Target(url, "discovered", None, name)
                    app.bridge.on_event(ev.Moving(url, name, why))
                    app.engine.signaling.retarget(url)
                await until(lambda: aw.banner.isVisible() and bob.window.banner.isVisible(), 2, "the banners")
                call_goes_on = "\nYour call goes on: it does not need the server."
                assert aw.banner.text() == f"Moving to {name}… (the server was lost){call_goes_on}"
                assert bob.window.banner.text() == f"Moving to {name}… (two servers were on the LAN){call_goes_on}"
                assert url in aw.banner.toolTip()
                frames = aw.call_page.remote.frames
                shot(aw, "moving")
                second = SignalingServer("127.0.0.1", port, config=HubConfig(**FAST), ping_timeout=0.1)
                await second.start()
                await until(lambda: not aw.banner.isVisible() and not bob.window.banner.isVisible(), 10,
                            "both online on the new server")
                await until(lambda: second.hub.status("alice") == second.hub.status("bob") == "in_call", 5)
                assert aw.call_page.state == "active" and aw.call_page.remote.frames > frames
                assert f"{url} — a dedicated server\nFound on the LAN" in aw.connection.toolTip()
                # Later trouble on the new server is a reconnect again, not a move.
                await second.stop()
                await until(lambda: aw.banner.isVisible(), 5)
                assert aw.banner.text().startswith("Reconnecting to the server")
            finally:
                await alice.shutdown()
                await bob.shutdown()
                await second.stop()

    qloop.run_until_complete(scenario())


def test_the_host_says_who_hosts_and_asks_before_leaving_others(qtbot, qloop, tmp_path, no_quit_on_close):
    async def scenario():
        host = make_app(tmp_path, "host", name="Hostess")  # no server configured, no discovery: it hosts
        host.settings.host_port = 0
        await host.start()
        guest = None
        try:
            hw = host.window
            await until(lambda: host.engine.connection.value == "online", 5)
            url = host.lan.host_url()
            assert await settings_line(qtbot, host) == (
                f"{url} — hosted by this app\nStarted here, as no other server was on the LAN")
            hw.close()  # nobody else uses its server: it closes at once
            assert not hw.isVisible() and not visible(hw, QMessageBox)

            hw.show()
            guest = make_app(tmp_path, "guest", name="Guest", server=url)
            await guest.start()
            await until(lambda: "guest" in hw.contacts.rows and "hostess" in guest.window.contacts.rows, 5,
                        "the host and the guest to see each other")
            assert await settings_line(qtbot, guest) == f"{url} — hosted by Hostess's app\nThe address set in Settings"
            assert url in guest.window.connection.toolTip()

            hw.close()
            [box] = visible(hw, QMessageBox)
            assert box.text() == ("1 other person is connected through this computer, which hosts the LAN's "
                                  "Callbox server.")
            assert "others will move to another host" in box.informativeText()
            shot(box, "quit_host")
            qtbot.mouseClick(box.button(QMessageBox.StandardButton.Cancel), LEFT)
            await until(lambda: not box.isVisible(), 2)
            assert hw.isVisible()

            hw.close()
            [box] = await until(lambda: visible(hw, QMessageBox), 2, "the question again")
            [quit_anyway] = [b for b in box.buttons() if b.text() == "Quit anyway"]
            qtbot.mouseClick(quit_anyway, LEFT)
            await until(lambda: not hw.isVisible(), 2, "the window to close")
        finally:
            if guest is not None:
                await guest.shutdown()
            await host.shutdown()

    qloop.run_until_complete(scenario())


def test_reconnecting_after_settings_changes_does_not_repeat_a_click(qtbot, qloop, tmp_path):
    """Each reconnect attaches the window to a new engine; a click still calls once and an end is told once."""

    async def scenario():
        async with running_server() as srv:
            alice, bob = await online_pair(tmp_path, srv.url)
            try:
                aw = alice.window
                for n in (2, 3):  # attached once at start, then after each of these
                    engine = alice.engine
                    qtbot.mouseClick(aw.settings_button, LEFT)
                    [dialog] = await until(lambda: visible(aw, SettingsDialog), 2)
                    dialog.name.setText(f"Alice {n}")
                    qtbot.mouseClick(dialog.findChild(QDialogButtonBox).button(QDialogButtonBox.StandardButton.Save),
                                     LEFT)
                    await until(lambda engine=engine: alice.engine is not engine and "bob" in aw.contacts.rows
                                and aw.contacts.rows["bob"].audio.isEnabled(), 10, "reconnected")
                calls, infos = [], []
                engine, show_info = alice.engine, aw.show_info
                engine.call = lambda *a, call=engine.call, **k: calls.append(a) or call(*a, **k)
                aw.show_info = lambda text: infos.append(text) or show_info(text)
                qtbot.mouseClick(aw.contacts.rows["bob"].audio, LEFT)
                await until(lambda: bob.window.incoming.isVisible(), 5)
                assert bob.window.incoming.caller.text() == "Alice 3"
                qtbot.mouseClick(bob.window.incoming.reject, LEFT)
                await until(lambda: aw.stack.currentWidget() is aw.tabs, 5)
                assert len(calls) == 1 and len(bob.engine.finished) == 1
                assert infos == ["Bob declined the call."]
            finally:
                await alice.shutdown()
                await bob.shutdown()

    qloop.run_until_complete(scenario())
