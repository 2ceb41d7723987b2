"""Rooms in the app, driven by real clicks: joining by name, chat between two apps, a room call with the grid,
direct chat from a contact and during a call, and rooms rejoined after a restart."""

import asyncio

from PySide6.QtCore import Qt
from PySide6.QtTest import QTest

from tests.support import Peer, running_server
from tests.ui.apps import BUSY, counter, make_app, online_pair, share, shot, until

LEFT = Qt.MouseButton.LeftButton
CTRL_SHIFT = Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier


def type_and_send(qtbot, chat, text: str) -> None:
    chat.entry.setFocus()
    QTest.keyClicks(chat.entry, text)
    qtbot.mouseClick(chat.button, LEFT)


async def press(qtbot, window, key) -> None:
    """Ctrl+Shift+key in a window, once it is the active one (shortcuts go to the active window)."""
    window.activateWindow()
    await until(window.isActiveWindow, 2, "the window to be active")
    qtbot.keyClick(window, key, CTRL_SHIFT)


def texts(view) -> list[tuple[str, str]]:
    return [(x.sender, x.text) for x in view.lines if x.kind == "text"]


async def join_by_click(qtbot, window, room: str) -> None:
    window.tabs.setCurrentWidget(window.rooms_page)
    page = window.rooms_page
    QTest.keyClicks(page.name, room)
    qtbot.mouseClick(page.join_button, LEFT)
    await until(lambda: page.current == room and page.pane.room == room, 5, f"room {room} shown")


def test_rooms_chat_and_a_room_call_with_the_grid(qtbot, qloop, tmp_path):
    async def scenario():
        async with running_server(**BUSY) as srv:  # a lost session and its recovery are tested elsewhere
            alice, bob = await online_pair(tmp_path, srv.url)
            carol = make_app(tmp_path, "carol", name="Carol", server=srv.url, tone=880)
            await carol.start()
            try:
                aw, bw, cw = alice.window, bob.window, carol.window
                aw.tabs.setCurrentWidget(aw.rooms_page)
                shot(aw, "rooms_empty")
                for w in (aw, bw, cw):
                    await join_by_click(qtbot, w, "team")
                await until(lambda: aw.rooms_page.pane.members.count() == 3, 5, "three members listed")
                assert {aw.rooms_page.pane.members.item(i).text() for i in range(3)} == {"You", "Bob", "Carol"}

                # Chat: Bob's line reaches Alice, named and on the left; hers is on the right for her.
                bw.tabs.setCurrentWidget(bw.contacts)  # Bob looks elsewhere: Alice's reply is unread for him
                bw.rooms_page.pane.chat.entry.setText("")
                type_and_send(qtbot, bw.rooms_page.pane.chat, "hello team")
                await until(lambda: ("bob", "hello team") in texts(aw.rooms_page.pane.chat), 5, "Bob's line")
                type_and_send(qtbot, aw.rooms_page.pane.chat, "hi Bob")
                await until(lambda: bw.tabs.tabText(1) == "Rooms (1)", 5, "Bob's unread badge")
                assert aw.rooms_page.pane.chat.entry.text() == ""
                html = aw.rooms_page.pane.chat.log.toHtml()
                assert "Bob" in html and "hello team" in html and "hi Bob" in html
                [mine] = [x for x in aw.rooms_page.pane.chat.lines if x.text == "hi Bob"]
                assert mine.mine and mine.sender == "alice"
                bw.tabs.setCurrentWidget(bw.rooms_page)
                await until(lambda: bw.tabs.tabText(1) == "Rooms", 3, "read once Bob looks")
                assert [(x.sender, x.text) for x in bob.chatlog.lines("room:team") if x.kind == "text"] == [
                    ("bob", "hello team"), ("alice", "hi Bob")]
                shot(aw, "room_chat")

                # The room call: Alice and Bob with video see each other's counters advance on their tiles.
                aw.rooms_page.pane.with_video.setChecked(True)
                qtbot.mouseClick(aw.rooms_page.pane.join_call, LEFT)
                await until(lambda: aw.stack.currentWidget() is aw.room_call_page, 3, "Alice's grid")
                await until(lambda: bw.rooms_page.pane.join_call.text() == "Join call · 1 in call", 5, "count")
                bw.rooms_page.pane.with_video.setChecked(True)
                qtbot.mouseClick(bw.rooms_page.pane.join_call, LEFT)
                for w, other in ((aw, "bob"), (bw, "alice")):
                    page = w.room_call_page
                    await until(lambda page=page, other=other: other in page.tiles and
                                page.tiles[other].video.frames > 10, 20, "the other's video")
                    view = page.tiles[other].video
                    first = counter(view.image)
                    await until(lambda view=view, first=first: counter(view.image) > first + 3, 5, "counter")
                # Carol joins with audio: a third tile, with her name in place of video.
                qtbot.mouseClick(cw.rooms_page.pane.join_call, LEFT)
                for w, others in ((aw, ("bob", "carol")), (bw, ("alice", "carol")), (cw, ("alice", "bob"))):
                    page = w.room_call_page
                    await until(lambda page=page, others=others: set(page.tiles) == set(others), 10, "three tiles")
                    assert page.grid.count() == 3
                    await until(lambda page=page: page.status.text() == "3 in the call", 5, "the count")
                await until(lambda: cw.room_call_page.tiles["bob"].video.frames > 10, 20, "Bob's video at Carol's")
                assert aw.room_call_page.tiles["carol"].video.image is None
                assert aw.room_call_page.tiles["carol"].video.placeholder == "Carol\n(audio)"
                assert aw.room_call_page.tiles["bob"].name.text() == "Bob"
                # Carol mutes: her tile shows it, and the one lit is Bob's, the only one still heard.
                await press(qtbot, cw, Qt.Key.Key_M)  # the 1:1 call's shortcuts work here too
                await until(lambda: cw.room_call_page.mute.isChecked() and carol.engine.media.muted, 2, "Ctrl+Shift+M")
                await until(lambda: aw.room_call_page.tiles["carol"].mute.isVisibleTo(aw.room_call_page), 20,
                            "Carol's mute mark")  # a second of silence, behind the audio the busy thread has queued
                tiles = aw.room_call_page.tiles
                await until(lambda: tiles["bob"].speaking and not tiles["carol"].speaking, 3, "Bob's tile lit")
                await asyncio.sleep(0.5)
                shot(aw, "room_grid")
                qtbot.mouseClick(cw.room_call_page.leave, LEFT)
                await until(lambda: set(aw.room_call_page.tiles) == {"bob"}, 10, "Carol's tile gone")
                assert cw.stack.currentWidget() is cw.tabs and cw.info.text() == "You left the room call."
                qtbot.mouseClick(bw.room_call_page.leave, LEFT)
                await press(qtbot, aw, Qt.Key.Key_E)
                for w in (aw, bw):
                    await until(lambda w=w: w.stack.currentWidget() is w.tabs, 5, "back to the tabs")
                await until(lambda: cw.rooms_page.pane.join_call.text() == "Join call", 5, "nobody in the call")
            finally:
                for app in (alice, bob, carol):
                    await app.shutdown()

    qloop.run_until_complete(scenario())


def test_direct_chat_from_a_contact_and_in_a_call_and_not_delivered(qtbot, qloop, tmp_path):
    async def scenario():
        async with running_server() as srv:
            alice, bob = await online_pair(tmp_path, srv.url)
            try:
                aw, bw = alice.window, bob.window
                qtbot.mouseClick(aw.contacts.rows["bob"].chat, LEFT)
                window = aw.chat_windows["bob"]
                assert window.isVisible() and window.windowTitle() == "Chat with Bob"
                type_and_send(qtbot, window.chat, "are you there?")
                await until(lambda: bw.contacts.rows["alice"].chat.text() == "1", 5, "Bob's unread count")
                assert bw.info.text() == "Alice: are you there?"
                qtbot.mouseClick(bw.contacts.rows["alice"].chat, LEFT)
                assert texts(bw.chat_windows["alice"].chat) == [("alice", "are you there?")]
                assert bw.contacts.rows["alice"].chat.text() == ""

                # During a call: Bob writes, and Alice's call page shows the chat beside the video.
                qtbot.mouseClick(aw.contacts.rows["bob"].audio, LEFT)
                await until(lambda: bw.incoming.isVisible(), 5)
                qtbot.mouseClick(bw.incoming.accept_audio, LEFT)
                await until(lambda: aw.call_page.state == "active", 10, "the call")
                assert texts(aw.call_page.chat) == [("alice", "are you there?")]
                qtbot.mouseClick(bw.call_page.chat_button, LEFT)
                type_and_send(qtbot, bw.call_page.chat, "yes, in the call")
                await until(lambda: ("bob", "yes, in the call") in texts(aw.call_page.chat), 5, "in-call line")
                assert aw.call_page.chat.isVisible()
                shot(aw, "call_chat")
                qtbot.mouseClick(aw.call_page.hang, LEFT)
                await until(lambda: aw.stack.currentWidget() is aw.tabs, 5)

                # Bob quits: Alice's next line is marked not delivered, and kept so.
                await bob.shutdown()
                await until(lambda: "bob" not in aw.contacts.rows or aw.contacts.rows["bob"].status.text(), 5)
                type_and_send(qtbot, window.chat, "bye?")
                await until(lambda: any(x.text == "bye?" and x.delivered is False for x in window.chat.lines), 5,
                            "not delivered")
                assert "not delivered" in window.chat.log.toPlainText()
                assert window.chat.problem.isVisibleTo(window) and "Not delivered" in window.chat.problem.text()
                assert [x.delivered for x in alice.chatlog.lines("user:bob") if x.text == "bye?"] == [False]
            finally:
                await alice.shutdown()
                if bob.engine is not None:
                    await bob.shutdown()

    qloop.run_until_complete(scenario())


def test_rooms_are_rejoined_after_a_restart_with_their_chat_kept_once(qtbot, qloop, tmp_path):
    async def scenario():
        async with running_server() as srv:
            alice, bob = await online_pair(tmp_path, srv.url)
            try:
                for w in (alice.window, bob.window):
                    await join_by_click(qtbot, w, "team")
                type_and_send(qtbot, bob.window.rooms_page.pane.chat, "before the restart")
                await until(lambda: ("bob", "before the restart") in texts(alice.window.rooms_page.pane.chat), 5)
                await alice.shutdown()
                alice = make_app(tmp_path, "alice", name="Alice", server=srv.url)
                assert alice.settings.rooms == ["team"]
                await alice.start()
                aw = alice.window
                aw.tabs.setCurrentWidget(aw.rooms_page)
                await until(lambda: aw.rooms_page.current is None and aw.rooms_page.list.count() == 1, 5)
                aw.rooms_page.select("team")
                await until(lambda: aw.rooms_page.pane.members.count() == 2, 5, "rejoined: both members")
                await asyncio.sleep(0.5)  # the server's history of the room has come again by now
                assert texts(aw.rooms_page.pane.chat) == [("bob", "before the restart")]
                assert aw.tabs.tabText(1) == "Rooms"
                type_and_send(qtbot, bob.window.rooms_page.pane.chat, "after")
                await until(lambda: ("bob", "after") in texts(aw.rooms_page.pane.chat), 5, "a new line")
                # Leaving takes it out of the profile.
                qtbot.mouseClick(aw.rooms_page.pane.leave, LEFT)
                await until(lambda: aw.rooms_page.list.count() == 0, 5)
                assert alice.profile.load().rooms == []
            finally:
                await alice.shutdown()
                await bob.shutdown()

    qloop.run_until_complete(scenario())


def test_the_fifth_with_video_is_told_why_it_sends_audio_and_a_full_call_says_so(qtbot, qloop, tmp_path):
    async def scenario():
        async with running_server(**BUSY) as srv:
            fillers = [await Peer.connect(srv.url, f"u{i}") for i in range(8)]
            readers = [asyncio.create_task(f.drain()) for f in fillers]
            eve = make_app(tmp_path, "eve", name="Eve", server=srv.url)
            try:
                for f in fillers[:4]:
                    await f.send({"type": "join", "channel": "team"})
                    await f.send({"type": "room_call_join", "channel": "team", "media": ["audio", "video"]})
                await eve.start()
                w = eve.window
                await join_by_click(qtbot, w, "team")
                await until(lambda: w.rooms_page.pane.join_call.text() == "Join call · 4 in call", 5, "four in call")
                w.rooms_page.pane.with_video.setChecked(True)
                qtbot.mouseClick(w.rooms_page.pane.join_call, LEFT)
                page = w.room_call_page
                await until(lambda: page.notice.isVisibleTo(page), 5, "the notice")
                assert "video is limited to 4 people" in page.notice.text() and not page.cam.isEnabled()
                assert eve.engine.room_call.media == ("audio",)
                shot(w, "room_audio_only")
                qtbot.mouseClick(page.leave, LEFT)
                await until(lambda: w.stack.currentWidget() is w.tabs, 5)
                await until(lambda: "eve" not in eve.engine.rooms["team"].call, 5, "the server to see Eve leave")
                for f in fillers[4:]:
                    await f.send({"type": "join", "channel": "team"})
                    await f.send({"type": "room_call_join", "channel": "team", "media": ["audio"]})
                button = w.rooms_page.pane.join_call
                await until(lambda: not button.isEnabled(), 5, "a full call")
                assert button.text() == "Join call · 8 in call" and "full" in button.toolTip()
                w.on_join_room_call("team", False)  # as if clicked a moment before the 8th got in
                await until(lambda: w.stack.currentWidget() is w.tabs, 5)
                assert w.info.text() == ("You could not join the call in team: the call in room 'team' has 8 people, "
                                         "the most a call can have.")
            finally:
                await eve.shutdown()
                for r in readers:
                    r.cancel()
                for f in fillers:
                    await f.close()

    qloop.run_until_complete(scenario())


def test_a_share_in_a_room_call_fills_the_stage_above_the_grid(qtbot, qloop, tmp_path, shared_display):
    async def scenario():
        async with running_server(**BUSY) as srv:
            alice, bob = await online_pair(tmp_path, srv.url)
            try:
                aw, bw = alice.window, bob.window
                for w in (aw, bw):
                    await join_by_click(qtbot, w, "team")
                for w in (aw, bw):
                    await until(lambda w=w: w.rooms_page.pane.members.count() == 2, 5, "both in the room")
                    qtbot.mouseClick(w.rooms_page.pane.join_call, LEFT)
                await until(lambda: "alice" in bw.room_call_page.tiles, 10, "Alice's tile at Bob's")
                await share(qtbot, aw.room_call_page.share, "Screen 1 (1280x720)")
                page = bw.room_call_page
                await until(lambda: page.stage.isVisibleTo(page) and page.share_view.frames > 5, 10, "the stage")
                assert page.share_label.text() == "Alice's screen" and page.share_view.image.width() == 1280
                assert aw.room_call_page.share.isChecked() and page.grid.count() == 2
                shot(bw, "room_share")
                qtbot.mouseClick(aw.room_call_page.share, LEFT)
                await until(lambda: not page.stage.isVisibleTo(page), 5, "the stage taken down")
                assert not alice.engine.media.sharing
            finally:
                await alice.shutdown()
                await bob.shutdown()

    qloop.run_until_complete(scenario())
