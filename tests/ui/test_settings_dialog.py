"""The Settings dialog's list of servers: edited, checked, saved, kept from a profile with one address, used."""

import json
import socket

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QDialogButtonBox

from client.core.settings import Profile, Settings
from client.ui.settings_dialog import SettingsDialog
from server.discovery import FoundServer
from tests.support import running_server
from tests.ui.apps import make_app, shot, until

LEFT = Qt.MouseButton.LeftButton


def save_button(dialog: SettingsDialog):
    return dialog.findChild(QDialogButtonBox).button(QDialogButtonBox.StandardButton.Save)


def test_the_list_is_edited_in_the_app_saved_in_order_and_the_app_fails_over_along_it(qtbot, qloop, tmp_path):
    with socket.socket() as dead:  # bound, never listening: connecting there is refused
        dead.bind(("127.0.0.1", 0))
        dead_url = f"ws://127.0.0.1:{dead.getsockname()[1]}"

        async def scenario():
            async with running_server() as srv:
                app = make_app(tmp_path, "one", name="One", server=srv.url)
                await app.start()
                try:
                    await until(lambda: app.engine.connection.value == "online", 10, "online")
                    qtbot.mouseClick(app.window.settings_button, LEFT)
                    dialog = await until(lambda: app.window.findChild(SettingsDialog), 2, "the settings dialog")
                    await until(lambda: dialog.isVisible(), 2)
                    assert dialog.servers.toPlainText() == srv.url
                    dialog.servers.setPlainText(f"{dead_url}\nnot-a-url\n{srv.url}")
                    qtbot.mouseClick(save_button(dialog), LEFT)
                    assert dialog.isVisible() and dialog.error.text() == (
                        "'not-a-url' is not a server address; it starts with ws:// or wss://")
                    dialog.servers.setPlainText(f"{dead_url}\n\n{srv.url},\n")  # blank lines, a stray comma
                    shot(dialog, "settings_servers")
                    qtbot.mouseClick(save_button(dialog), LEFT)
                    await until(lambda: not dialog.isVisible(), 2, "the dialog to close")
                    assert Profile("one", root=tmp_path).load().servers == [dead_url, srv.url]
                    # The app reconnects with the new list: the first is dead, so it ends up on the second.
                    await until(lambda: app.engine is not None and app.engine.signaling.urls == [dead_url, srv.url]
                                and app.engine.connection.value == "online", 10, "online on the second address")
                    assert app.engine.signaling.url == srv.url
                    assert app.server_in_use().startswith(f"{srv.url} — ")
                finally:
                    await app.shutdown()

        qloop.run_until_complete(scenario())


def test_a_server_found_on_the_lan_is_added_to_the_list_once(qtbot):
    office = FoundServer(name="Office", host="10.0.0.2", port=8765, url="ws://10.0.0.2:8765")
    dialog = SettingsDialog(Settings(servers=["ws://a:8765"]), [office])
    qtbot.addWidget(dialog)
    assert dialog.layout().isRowVisible(dialog.found)
    for _ in range(2):
        dialog.found.activated.emit(1)
    assert dialog.found.currentIndex() == 0
    assert dialog.result_settings().servers == ["ws://a:8765", "ws://10.0.0.2:8765"]
    alone = SettingsDialog(Settings())
    qtbot.addWidget(alone)
    assert not alone.layout().isRowVisible(alone.found), "nothing found: no row for it"
    assert alone.result_settings().servers == []


def test_a_profile_saved_with_one_address_keeps_it_as_a_list_of_one(qtbot, tmp_path):
    for stored, servers in (("ws://old:8765", ["ws://old:8765"]), ("", [])):
        profile = Profile("old", root=tmp_path)
        profile.config_dir.mkdir(parents=True, exist_ok=True)
        profile.settings_path.write_text(json.dumps({"display_name": "Old", "server": stored}))
        s = profile.load()
        assert (s.display_name, s.servers) == ("Old", servers)
        dialog = SettingsDialog(s)
        qtbot.addWidget(dialog)
        assert dialog.servers.toPlainText() == "\n".join(servers)
        profile.save(dialog.result_settings())
        saved = json.loads(profile.settings_path.read_text())
        assert saved["servers"] == servers and "server" not in saved
