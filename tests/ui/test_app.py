"""The desktop app driven as a person would: real clicks on real windows, a real server, real aiortc calls."""

import asyncio

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QDialogButtonBox

from client.ui.settings_dialog import SettingsDialog
from tests.support import running_server
from tests.ui.apps import BUSY, counter, make_app, online_pair, pixels, share, shot, until


def test_video_call_from_click_to_history(qtbot, qloop, tmp_path):
    async def scenario():
        async with running_server() as srv:
            alice, bob = await online_pair(tmp_path, srv.url)
            try:
                aw, bw = alice.window, bob.window
                assert "Callbox" in aw.windowTitle()
                shot(aw, "contacts")
                qtbot.mouseClick(aw.contacts.rows["bob"].video, Qt.MouseButton.LeftButton)
                await until(lambda: bw.incoming.isVisible(), 5, "Bob's incoming panel")
                assert bw.incoming.caller.text() == "Alice"
                assert "video" in bw.incoming.what.text()
                assert aw.call_page.status.text() == "Calling Bob…"
                shot(bw, "incoming")
                qtbot.mouseClick(bw.incoming.accept_video, Qt.MouseButton.LeftButton)
                for w in (aw, bw):
                    await until(lambda w=w: w.call_page.remote.frames > 10, 10, "remote video")
                for w in (aw, bw):
                    view = w.call_page.remote
                    img = pixels(view.image)
                    assert img.std() > 20, "remote video is blank"
                    first = counter(view.image)
                    await until(lambda view=view, first=first: counter(view.image) > first + 5, 5, "counter")
                    assert w.stack.currentWidget() is w.call_page and w.call_page.name.text() in ("Alice", "Bob")
                await until(lambda: ":" in aw.call_page.status.text(), 3, "the call timer")
                codes = [w.call_page.security.text() for w in (aw, bw)]
                assert codes[0].startswith("Verified · safety code ") and codes[0] == codes[1], codes
                await asyncio.sleep(1.1)
                shot(aw, "in_call")
                qtbot.mouseClick(aw.call_page.hang, Qt.MouseButton.LeftButton)
                for w in (aw, bw):
                    await until(lambda w=w: w.stack.currentWidget() is w.tabs, 5, "back to contacts")
                assert aw.info.text() == "Call ended."
                for app, kind in ((alice, "outgoing"), (bob, "incoming")):
                    [entry] = app.history.entries()
                    assert entry.kind == kind and "video" in entry.media and entry.duration >= 1.0
                    app.window.tabs.setCurrentWidget(app.window.history_page)
                    row = app.window.history_page.rows[0]
                    assert kind.title() in row.detail.text() and "00:0" in row.detail.text()
                shot(bw, "history")
            finally:
                await alice.shutdown()
                await bob.shutdown()

    qloop.run_until_complete(scenario())


def test_reject_busy_no_answer_and_missed(qtbot, qloop, tmp_path):
    async def scenario():
        async with running_server(ring_timeout=1.0) as srv:
            alice, bob = await online_pair(tmp_path, srv.url)
            carol = make_app(tmp_path, "carol", name="Carol", server=srv.url, tone=880)
            await carol.start()
            try:
                aw, bw, cw = alice.window, bob.window, carol.window
                await until(lambda: "bob" in cw.contacts.rows, 5)
                # Bob declines: Alice reads that he declined.
                qtbot.mouseClick(aw.contacts.rows["bob"].audio, Qt.MouseButton.LeftButton)
                await until(lambda: bw.incoming.isVisible(), 5)
                qtbot.mouseClick(bw.incoming.reject, Qt.MouseButton.LeftButton)
                await until(lambda: aw.stack.currentWidget() is aw.tabs, 5)
                assert aw.info.text() == "Bob declined the call."
                # Nobody answers: Alice reads so, Bob gets a missed call with a badge.
                qtbot.mouseClick(aw.contacts.rows["bob"].audio, Qt.MouseButton.LeftButton)
                await until(lambda: aw.info.text() == "Bob did not answer.", 5)
                history_tab = bw.tabs.indexOf(bw.history_page)
                await until(lambda: bw.tabs.tabText(history_tab) == "History (1)", 3, "the missed-call badge")
                assert bw.info.text() == "Missed call from Alice."
                assert bob.history.entries()[0].kind == "missed"
                # Busy: Alice and Bob in a call, Carol calls Bob.
                qtbot.mouseClick(aw.contacts.rows["bob"].audio, Qt.MouseButton.LeftButton)
                await until(lambda: bw.incoming.isVisible(), 5)
                qtbot.mouseClick(bw.incoming.accept_audio, Qt.MouseButton.LeftButton)
                await until(lambda: aw.call_page.state == "active", 10)
                await until(lambda: cw.contacts.rows.get("bob") and not cw.contacts.rows["bob"].audio.isEnabled(), 5,
                            "Carol to see Bob in a call")
                assert "In a call" in cw.contacts.rows["bob"].status.text()
                carol.engine.call("bob")  # the button is disabled for a busy contact; the engine still refuses
                await until(lambda: carol.history.entries() and carol.history.entries()[0].reason == "busy", 5)
                qtbot.mouseClick(aw.call_page.hang, Qt.MouseButton.LeftButton)
                await until(lambda: bw.stack.currentWidget() is bw.tabs, 5)
                kinds = [e.kind for e in alice.history.entries()]
                assert kinds == ["outgoing", "outgoing", "outgoing"]
                assert [e.reason for e in alice.history.entries()] == ["hangup", "no_answer", "rejected"]
                bw.tabs.setCurrentWidget(bw.history_page)
                assert bw.tabs.tabText(history_tab) == "History"  # looking at it clears the badge
                assert len(bw.history_page.rows) == 3
                assert "Missed" in bw.history_page.rows[1].detail.text()
            finally:
                for app in (alice, bob, carol):
                    await app.shutdown()

    qloop.run_until_complete(scenario())


def test_reconnect_banner_while_a_call_stays_up(qtbot, qloop, tmp_path):
    from tests.support import BUSY, new_server

    async def scenario():
        srv = new_server(**BUSY)  # two windows, a video call and the server on one loop: 100 ms pings cut them off
        await srv.start()
        port = srv.port
        alice, bob = await online_pair(tmp_path, srv.url)
        try:
            aw, bw = alice.window, bob.window
            qtbot.mouseClick(aw.contacts.rows["bob"].video, Qt.MouseButton.LeftButton)
            await until(lambda: bw.incoming.isVisible(), 5)
            qtbot.mouseClick(bw.incoming.accept_video, Qt.MouseButton.LeftButton)
            await until(lambda: aw.call_page.remote.frames > 5, 10)
            assert not aw.banner.isVisible()
            await srv.stop()
            await until(lambda: aw.banner.isVisible(), 5, "the reconnect banner")
            assert aw.banner.text().startswith("Reconnecting to the server")
            assert str(port) in aw.banner.toolTip()
            frames = aw.call_page.remote.frames
            await asyncio.sleep(1.0)
            assert aw.call_page.remote.frames > frames + 10, "video stopped while the server was away"
            shot(aw, "reconnecting")
            srv = new_server(port, **BUSY)
            await srv.start()
            await until(lambda: not aw.banner.isVisible() and not bw.banner.isVisible(), 10, "the banner to go")
            assert aw.call_page.state == "active" and aw.stack.currentWidget() is aw.call_page
            await until(lambda: srv.hub.status("alice") == "in_call", 5)
        finally:
            await alice.shutdown()
            await bob.shutdown()
            await srv.stop()

    qloop.run_until_complete(scenario())


def test_settings_persist_and_profiles_stay_apart(qtbot, qloop, tmp_path):
    async def scenario():
        async with running_server() as srv:
            one = make_app(tmp_path, "one", name="One", server=srv.url)
            await one.start()
            qtbot.mouseClick(one.window.settings_button, Qt.MouseButton.LeftButton)
            dialog = one.window.findChild(SettingsDialog)
            await until(lambda: dialog.isVisible(), 2)
            shot(dialog, "settings")
            save = dialog.findChild(QDialogButtonBox).button(QDialogButtonBox.StandardButton.Save)
            dialog.name.setText("Number One")
            dialog.ice.setPlainText("stun:127.0.0.1:3478")
            qtbot.mouseClick(dialog.aec, Qt.MouseButton.LeftButton)
            dialog.servers.setPlainText("not-a-url")
            qtbot.mouseClick(save, Qt.MouseButton.LeftButton)
            assert dialog.isVisible() and "not a server address" in dialog.error.text()
            dialog.servers.setPlainText(srv.url)
            qtbot.mouseClick(save, Qt.MouseButton.LeftButton)
            await until(lambda: not dialog.isVisible(), 2)
            await until(lambda: one.engine is not None and one.engine.config.display_name == "Number One", 5)
            await one.shutdown()
            again = make_app(tmp_path, "one")
            s = again.settings
            assert (s.display_name, s.ice_servers, s.echo_cancellation) == (
                "Number One", [{"urls": "stun:127.0.0.1:3478"}], False)
            other = make_app(tmp_path, "two")
            assert other.settings.display_name == "" and other.profile.history_path != again.profile.history_path
            again.history.close()
            other.history.close()

    qloop.run_until_complete(scenario())


def test_sound_and_video_check(qtbot, qloop, tmp_path):
    async def scenario():
        async with running_server() as srv:
            app = make_app(tmp_path, "solo", name="Solo", server=srv.url, tone=523)
            await app.start()
            try:
                w = app.window
                await until(lambda: app.engine.connection.value == "online", 5)
                assert "Nobody else is online" in w.contacts.empty.text()
                qtbot.mouseClick(w.check_button, Qt.MouseButton.LeftButton)
                await until(lambda: w.call_page.remote.frames > 10, 10, "the echo of our own video")
                assert w.call_page.name.text() == "Sound and video check"
                assert abs(app.engine.sessions[w.call_page.call_id].received.dominant_hz() - 523) <= 5
                shot(w, "sound_check")
                qtbot.mouseClick(w.call_page.hang, Qt.MouseButton.LeftButton)
                await until(lambda: w.stack.currentWidget() is w.tabs, 5)
                assert app.history.entries() == []  # a check is not a call in the history
            finally:
                await app.shutdown()

    qloop.run_until_complete(scenario())


def test_no_portaudio_still_calls_and_says_what_to_do(qtbot, qloop, tmp_path, monkeypatch):
    from client.core import audio, camera

    def missing():
        raise audio.DeviceMissing("PortAudio is not installed (libportaudio2.so: cannot open shared object file); "
                                  "on Debian: apt-get install libportaudio2")

    monkeypatch.setattr(audio, "sounddevice", missing)
    monkeypatch.setattr(camera, "list_cameras", lambda: [])

    async def scenario():
        async with running_server() as srv:
            alice, bob = await online_pair(tmp_path, srv.url, tone_a=None)
            try:
                aw, bw = alice.window, bob.window
                await until(lambda: aw.devices.isVisible(), 3, "the device warning")
                assert "Microphone and speaker: PortAudio is not installed" in aw.devices.text()
                assert "apt-get install libportaudio2" in aw.devices.text()
                assert "Camera: no camera was found" in aw.devices.text()
                qtbot.mouseClick(aw.contacts.rows["bob"].audio, Qt.MouseButton.LeftButton)
                await until(lambda: bw.incoming.isVisible(), 5)
                qtbot.mouseClick(bw.incoming.accept_audio, Qt.MouseButton.LeftButton)
                await until(lambda: aw.call_page.state == "active" and bw.call_page.state == "active", 10)
                shot(aw, "no_devices")
                qtbot.mouseClick(aw.call_page.hang, Qt.MouseButton.LeftButton)
                await until(lambda: bw.stack.currentWidget() is bw.tabs, 5)
            finally:
                await alice.shutdown()
                await bob.shutdown()

    qloop.run_until_complete(scenario())


def test_first_app_hosts_and_the_second_finds_it_on_the_lan(qtbot, qloop, tmp_path):
    """No server configured: the first app hosts one and advertises it; the next finds it by zeroconf."""
    from tests.components import require_multicast

    require_multicast()
    loopback = ["127.0.0.1"]  # the tests' LAN is this machine's loopback

    async def scenario():
        first = make_app(tmp_path, "host", name="Hostess", discover=True, interfaces=loopback, tone=440)
        first.settings.host_port = 0
        await first.start()
        second = None
        try:
            assert first.lan.target.how == "hosted" and first.lan.server is not None
            assert "hosted by this app" in first.window.connection.toolTip()
            second = make_app(tmp_path, "guest", name="Guest", discover=True, interfaces=loopback, tone=660)
            await second.start()
            assert second.lan.target.how == "discovered"
            assert second.lan.target.url.endswith(f":{first.lan.server.port}")
            await until(lambda: "hostess" in second.window.contacts.rows, 10, "the guest to see the host")
            assert "hosted by Hostess's app\nFound on the LAN" in second.window.connection.toolTip()
            qtbot.mouseClick(second.window.contacts.rows["hostess"].audio, Qt.MouseButton.LeftButton)
            await until(lambda: first.window.incoming.isVisible(), 5)
            assert first.window.incoming.caller.text() == "Guest"
            qtbot.mouseClick(first.window.incoming.accept_audio, Qt.MouseButton.LeftButton)
            await until(lambda: second.window.call_page.state == "active", 10)
            qtbot.mouseClick(second.window.call_page.hang, Qt.MouseButton.LeftButton)
            await until(lambda: first.window.stack.currentWidget() is first.window.tabs, 5)
        finally:
            if second is not None:
                await second.shutdown()
            await first.shutdown()

    qloop.run_until_complete(scenario())


CTRL_SHIFT = Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier


def test_keyboard_accept_mute_and_hang_up(qtbot, qloop, tmp_path):
    async def scenario():
        async with running_server() as srv:
            alice, bob = await online_pair(tmp_path, srv.url)
            try:
                aw, bw = alice.window, bob.window
                qtbot.mouseClick(aw.contacts.rows["bob"].audio, Qt.MouseButton.LeftButton)
                await until(lambda: bw.incoming.isVisible(), 5)
                bw.activateWindow()
                await until(lambda: bw.isActiveWindow(), 2, "Bob's window to take focus")
                qtbot.keyClick(bw, Qt.Key.Key_A, CTRL_SHIFT)
                await until(lambda: bw.call_page.state == "active", 10, "Ctrl+Shift+A to accept")
                qtbot.keyClick(bw, Qt.Key.Key_M, CTRL_SHIFT)
                # A button's shortcut clicks it as a person would see it: pressed, then released 100 ms later.
                await until(lambda: bob.engine.media.muted and bw.call_page.mute.isChecked(), 2, "Ctrl+Shift+M")
                assert "Unmute" in bw.call_page.mute.toolTip()
                qtbot.keyClick(bw, Qt.Key.Key_E, CTRL_SHIFT)
                await until(lambda: aw.stack.currentWidget() is aw.tabs, 5, "Ctrl+Shift+E to hang up")
                for w in (aw, bw):
                    for button in w.findChildren(type(w.settings_button)):
                        if button.isVisible():
                            assert button.toolTip(), f"{button.text()!r} has no tooltip"
                            assert button.focusPolicy() != Qt.FocusPolicy.NoFocus
            finally:
                await alice.shutdown()
                await bob.shutdown()

    qloop.run_until_complete(scenario())


def test_connection_problems_read_as_sentences(qtbot, qloop, tmp_path):
    async def scenario():
        async with running_server(token="s3cret") as srv:
            app = make_app(tmp_path, "tok", name="Tok", server=srv.url)
            await app.start()
            try:
                await until(lambda: app.window.banner.isVisible(), 5)
                assert app.window.banner.text() == "Not connected: this server needs a token"
                assert srv.url in app.window.banner.toolTip()
            finally:
                await app.shutdown()
        refused = make_app(tmp_path, "ref", name="Ref", server="ws://127.0.0.1:9")
        await refused.start()
        try:
            await until(lambda: "refused" in refused.window.banner.text(), 5)
            assert refused.window.banner.text().startswith("Reconnecting to the server: the server refused")
            shot(refused.window, "refused")
        finally:
            await refused.shutdown()

    qloop.run_until_complete(scenario())


def test_screen_share_from_the_call_page_fills_the_others_view_and_stops(qtbot, qloop, tmp_path, shared_display):
    async def scenario():
        async with running_server(**BUSY) as srv:
            alice, bob = await online_pair(tmp_path, srv.url)
            try:
                aw, bw = alice.window, bob.window
                qtbot.mouseClick(aw.contacts.rows["bob"].video, Qt.MouseButton.LeftButton)
                await until(lambda: bw.incoming.isVisible(), 5)
                qtbot.mouseClick(bw.incoming.accept_video, Qt.MouseButton.LeftButton)
                await until(lambda: bw.call_page.remote.frames > 10, 10, "Bob sees Alice's camera")
                await share(qtbot, aw.call_page.share, "Screen 1 (1280x720)")
                page = bw.call_page
                await until(lambda: page.share_label.isVisibleTo(page), 5, "the share's label")
                assert page.share_label.text() == "Alice's screen"
                await until(lambda: page.remote.image is not None and page.remote.image.width() == 1280, 10,
                            "Alice's screen, large")
                rgb = pixels(page.remote.image).reshape(-1, 3).mean(axis=0)
                assert all(abs(a - b) <= 12 for a, b in zip(rgb, (51, 102, 204), strict=True)), rgb
                await until(lambda: page.corner.frames > 5, 5, "her camera in the corner")
                assert aw.call_page.share.isChecked()
                shot(bw, "screen_share_received")
                shot(aw, "screen_share_sending")
                qtbot.mouseClick(aw.call_page.share, Qt.MouseButton.LeftButton)  # stop
                await until(lambda: not page.share_label.isVisibleTo(page), 5, "the share taken down")
                frames = page.remote.frames
                await until(lambda: page.remote.frames > frames + 5 and page.remote.image.width() == 640, 5,
                            "her camera back in the view")
                assert not alice.engine.media.sharing

                # A window instead: it fills Bob's view at its own size; closing it ends the share on both sides.
                with shared_display.window("Notes", "#cc3322", 200, 100, 480, 320) as notes:
                    await share(qtbot, aw.call_page.share, "Notes")
                    await until(lambda: page.remote.image is not None and page.remote.image.width() == 480, 10,
                                "Alice's window, large")
                    rgb = pixels(page.remote.image).reshape(-1, 3).mean(axis=0)
                    assert all(abs(a - b) <= 12 for a, b in zip(rgb, (204, 51, 34), strict=True)), rgb
                    shot(bw, "window_share_received")
                    notes.close()
                    await until(lambda: not page.share_label.isVisibleTo(page), 5, "the window's share taken down")
                    assert not aw.call_page.share.isChecked() and not alice.engine.media.sharing
                    notice = aw.call_page.notice
                    assert notice.isVisibleTo(aw.call_page)
                    assert notice.text() == "Screen sharing stopped: the shared window (Notes) was closed"
                    shot(aw, "window_share_closed")
            finally:
                await alice.shutdown()
                await bob.shutdown()

    qloop.run_until_complete(scenario())
