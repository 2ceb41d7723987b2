"""The main window: connection banner, contacts, rooms and history tabs, the incoming-call panel, the call and
room call pages, chat windows, quitting."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMainWindow,
    QMessageBox,
    QPushButton,
    QStackedWidget,
    QSystemTrayIcon,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from client.core.chatlog import room_key, user_key

from .call_view import CallPage
from .chat_view import ChatView, ChatWindow
from .contacts import ContactsPage, key_changed_text
from .grid_view import RoomCallPage
from .history_view import HistoryPage
from .resources import app_icon, icon
from .rooms_view import RoomsPage

CONNECTION_TEXT = {"connecting": "Connecting…", "online": "Online", "reconnecting": "Reconnecting…",
                   "offline": "Offline"}


class IncomingPanel(QFrame):
    """Who is calling, with accept (audio or video) and decline."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("incoming")
        self.setStyleSheet("QFrame#incoming { background: palette(highlight); border-radius: 8px; }"
                           "QFrame#incoming QLabel { color: palette(highlighted-text); }")
        self.call_id: str | None = None
        self.caller = QLabel(objectName="caller")
        self.caller.setStyleSheet("font-size: 18px; font-weight: 600;")
        self.what = QLabel()
        self.accept_audio = QPushButton(icon("phone"), "Accept")
        self.accept_audio.setToolTip("Answer with audio only (Ctrl+Shift+A)")
        self.accept_audio.setShortcut(QKeySequence("Ctrl+Shift+A"))
        self.accept_video = QPushButton(icon("video"), "Accept with video")
        self.accept_video.setToolTip("Answer with your camera on")
        self.reject = QPushButton(icon("hangup"), "Decline")
        self.reject.setToolTip("Decline the call (Ctrl+Shift+D)")
        self.reject.setShortcut(QKeySequence("Ctrl+Shift+D"))
        self.reject.setStyleSheet("background: #d93636; color: white;")
        col = QVBoxLayout()
        col.addWidget(self.caller)
        col.addWidget(self.what)
        row = QHBoxLayout(self)
        row.addLayout(col, 1)
        row.addWidget(self.accept_audio)
        row.addWidget(self.accept_video)
        row.addWidget(self.reject)
        self.hide()

    def ring(self, call_id: str, name: str, media: list[str]) -> None:
        self.call_id = call_id
        self.caller.setText(name)
        self.what.setText("is calling you" + (" with video" if "video" in media else ""))
        self.accept_video.setVisible("video" in media)
        self.show()
        self.accept_audio.setFocus()


class WelcomePage(QWidget):
    """First run asks one thing: the name others will see."""

    done = Signal(str)

    def __init__(self, name: str, parent=None):
        super().__init__(parent)
        title = QLabel("Welcome to Callbox")
        title.setStyleSheet("font-size: 22px; font-weight: 600;")
        ask = QLabel("What name should others see when you call them?")
        self.name = QLineEdit(name)
        self.name.setAccessibleName("Your name")
        self.name.setToolTip("Shown to the people you call; you can change it later in Settings")
        self.name.returnPressed.connect(self.on_continue)
        self.go = QPushButton("Continue")
        self.go.setDefault(True)
        self.go.clicked.connect(self.on_continue)
        layout = QVBoxLayout(self)
        layout.addStretch()
        for w in (title, ask, self.name, self.go):
            layout.addWidget(w, 0, Qt.AlignmentFlag.AlignHCenter)
        self.name.setMinimumWidth(280)
        layout.addStretch()

    def on_continue(self) -> None:
        if self.name.text().strip():
            self.done.emit(self.name.text().strip())


class MainWindow(QMainWindow):
    named = Signal(str)  # first run finished
    open_settings = Signal()
    sound_check = Signal()

    def __init__(self, history, chatlog, profile_name: str = "default", parent=None):
        super().__init__(parent)
        self.setWindowTitle("Callbox" if profile_name == "default" else f"Callbox — {profile_name}")
        self.setWindowIcon(app_icon())
        self.history = history
        self.chatlog = chatlog  # client.core.chatlog.ChatLog: every line shown here is kept there first
        self.engine = None
        self.describe_server: Callable[[], str] = lambda: ""  # the server in use and who hosts it; from the app
        self.ask_before_quit: Callable[[], str | None] = lambda: None  # a reason to confirm quitting, or None
        self.connection_state = ("connecting", "")
        self.moving: tuple[str, str] | None = None  # (where to, why) from a Moving event, until online again
        self._quitting = False
        self.ringing: dict[str, tuple[str, list]] = {}
        self.ringtone = None  # set by the app; anything with start() and stop()

        self.banner = QLabel(objectName="banner")
        self.banner.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.banner.setStyleSheet("background: #d9a400; color: black; padding: 6px; font-weight: 600;")
        self.banner.hide()
        self.info = QLabel(objectName="info")
        self.info.setWordWrap(True)
        self.info.setStyleSheet("background: palette(alternate-base); padding: 6px;")
        self.info.hide()
        self._info_timer = QTimer(self, singleShot=True, interval=8000)
        self._info_timer.timeout.connect(self.info.hide)
        self.incoming = IncomingPanel()
        self.incoming.accept_audio.clicked.connect(lambda: self.on_accept(video=False))
        self.incoming.accept_video.clicked.connect(lambda: self.on_accept(video=True))
        self.incoming.reject.clicked.connect(self.on_reject)

        self.contacts = ContactsPage()
        self.contacts.call.connect(self.on_call)
        self.contacts.trust.connect(self.on_trust)
        self.contacts.message.connect(self.on_message_contact)
        self.rooms_page = RoomsPage()
        self.rooms_page.join.connect(self.on_join_room)
        self.rooms_page.leave.connect(self.on_leave_room)
        self.rooms_page.opened.connect(self.on_room_opened)
        self.rooms_page.say.connect(self.on_say)
        self.rooms_page.join_call.connect(self.on_join_room_call)
        self.history_page = HistoryPage(history)
        self.history_page.call.connect(self.on_call)
        self.tabs = QTabWidget()
        self.tabs.addTab(self.contacts, icon("phone"), "Contacts")
        self.tabs.addTab(self.rooms_page, icon("rooms"), "Rooms")
        self.tabs.addTab(self.history_page, icon("history"), "History")
        self.tabs.currentChanged.connect(self.on_tab)
        self.call_page = CallPage(None)
        self.call_page.finished.connect(self.on_call_finished)
        self.call_page.chat.send.connect(lambda text: self.on_chat(self.call_page.peer, text, self.call_page.chat))
        self.call_page.chat_button.toggled.connect(lambda on: on and self._read_direct(self.call_page.peer))
        self.room_call_page = RoomCallPage(None)
        self.room_call_page.finished.connect(lambda message: self.on_call_finished("", message))
        self.room_call_page.chat.send.connect(lambda text: self.on_say(self.room_call_page.room, text,
                                                                       self.room_call_page.chat))
        self.chat_windows: dict[str, ChatWindow] = {}  # user id -> its direct chat window
        self.welcome = WelcomePage("")
        self.welcome.done.connect(self.named)
        self.stack = QStackedWidget()
        for w in (self.welcome, self.tabs, self.call_page, self.room_call_page):
            self.stack.addWidget(w)
        self.stack.setCurrentWidget(self.tabs)

        self.connection = QLabel(objectName="connection")
        self.devices = QLabel(objectName="devices")
        self.devices.setWordWrap(True)
        self.devices.setStyleSheet("color: #b06000;")
        self.devices.hide()
        self.check_button = QPushButton(icon("check"), "Sound && video check")
        self.check_button.setToolTip("Call an echo that sends back what it hears and sees")
        self.check_button.clicked.connect(self.sound_check)
        self.settings_button = QPushButton(icon("settings"), "Settings")
        self.settings_button.setToolTip("Server, name, devices and echo cancellation (Ctrl+,)")
        self.settings_button.setShortcut(QKeySequence("Ctrl+,"))
        self.settings_button.clicked.connect(self.open_settings)
        bottom = QHBoxLayout()
        bottom.addWidget(self.connection)
        bottom.addStretch()
        bottom.addWidget(self.check_button)
        bottom.addWidget(self.settings_button)

        central = QWidget()
        layout = QVBoxLayout(central)
        layout.setContentsMargins(8, 8, 8, 8)
        layout.addWidget(self.banner)
        layout.addWidget(self.info)
        layout.addWidget(self.incoming)
        layout.addWidget(self.stack, 1)
        layout.addWidget(self.devices)
        layout.addLayout(bottom)
        self.setCentralWidget(central)
        self.resize(720, 560)
        self.set_connection("connecting", "")

        self.tray = None
        if QSystemTrayIcon.isSystemTrayAvailable():
            self.tray = QSystemTrayIcon(app_icon(), self)
            self.tray.setToolTip("Callbox")
            self.tray.activated.connect(lambda _reason: self.bring_forward())
            self.tray.show()
        self.refresh_history()

    # ------------------------------------------------------------ wiring

    def ask_name(self, default: str) -> None:
        self.welcome.name.setText(default)
        self.stack.setCurrentWidget(self.welcome)
        self.welcome.name.setFocus()
        self.welcome.name.selectAll()

    def attach(self, engine, bridge, describe_server: Callable[[], str]) -> None:
        """Show this engine, through its bridge (a new one each time); the widgets' own wiring is done once."""
        self.engine = engine
        self.describe_server = describe_server
        self.call_page.engine = engine
        self.room_call_page.engine = engine
        self.stack.setCurrentWidget(self.tabs)
        bridge.connectionChanged.connect(self.set_connection)
        bridge.usersChanged.connect(self.on_users)
        bridge.incomingCall.connect(self.on_incoming)
        bridge.callChanged.connect(self.on_call_changed)
        bridge.remoteVideo.connect(self.call_page.on_remote_frame)
        bridge.deviceProblem.connect(self.on_device_problem)
        bridge.devicesChanged.connect(self.call_page.on_devices)
        bridge.deviceMoved.connect(lambda _kind, message: self.show_info(message))
        bridge.serverError.connect(self.on_server_error)
        bridge.moving.connect(self.on_moving)
        bridge.keyChanged.connect(self.on_key_changed)
        bridge.callSecurity.connect(self.call_page.on_security)
        bridge.roomsChanged.connect(self.on_rooms_changed)
        bridge.roomChanged.connect(self.on_room_changed)
        bridge.roomText.connect(self.on_room_text)
        bridge.directText.connect(self.on_direct_text)
        bridge.chatStatus.connect(self.on_chat_status)
        bridge.roomCallChanged.connect(self.on_room_call_changed)
        bridge.roomVideo.connect(self.room_call_page.on_room_video)
        for page in (self.call_page, self.room_call_page):
            bridge.remoteScreen.connect(page.on_remote_screen)
            bridge.screenShared.connect(page.on_screen_shared)
        self._show_connection()
        self.on_rooms_changed()

    # ------------------------------------------------------------ what the user sees

    def set_connection(self, state: str, reason: str) -> None:
        self.connection_state = (state, reason)
        online = state == "online"
        if online:
            self.moving = None
        self.contacts.set_connected(online)
        self.history_page.set_connected(online)
        self._show_connection()

    def on_key_changed(self, warning) -> None:
        self.contacts.key_warnings[warning.user_id] = warning
        self.contacts.set_users(self.contacts.users)
        self.show_info(f"Warning: {key_changed_text(warning)}")

    def on_trust(self, user_id: str) -> None:
        self.contacts.key_warnings.pop(user_id, None)
        if self.engine is not None:
            self.engine.trust_key(user_id)
        self.contacts.set_users(self.contacts.users)

    def on_moving(self, url: str, name: str, why: str) -> None:
        self.moving = (name or url, why)
        self._show_connection()

    def _show_connection(self) -> None:
        state, reason = self.connection_state
        text = CONNECTION_TEXT.get(state, state)
        color = {"online": "#2e9d4f", "offline": "#d93636"}.get(state, "#d9a400")
        self.connection.setText(f"<span style='color:{color}'>●</span> {text}")
        where = f"Server: {self.describe_server() or 'none chosen yet'}"
        self.connection.setToolTip(where + (f"\n{reason}" if reason else ""))
        if state == "online" or (state == "connecting" and not reason):
            self.banner.hide()
            return
        if self.moving is not None and state != "offline":
            to, why = self.moving
            text = f"Moving to {to}… ({why})"
        else:
            verb = "Reconnecting to the server" if state == "reconnecting" else "Not connected"
            text = f"{verb}: {reason}" if reason else f"{verb}…"
        if self.call_page.call_id is not None:
            text += "\nYour call goes on: it does not need the server."
        self.banner.setText(text)
        self.banner.setToolTip(where + (f"\n{reason}" if reason else ""))
        self.banner.show()

    def show_info(self, text: str) -> None:
        self.info.setText(text)
        self.info.show()
        self._info_timer.start()

    def on_device_problem(self, kind: str, message: str) -> None:
        problems = dict(getattr(self.engine.media, "problems", {})) if self.engine else {}
        if not problems:
            self.devices.hide()
            return
        by_message: dict[str, list[str]] = {}
        for kind, why in sorted(problems.items()):
            by_message.setdefault(why, []).append(kind)
        self.devices.setText("\n".join(f"{' and '.join(kinds).capitalize()}: {why}"
                                       for why, kinds in by_message.items()))
        self.devices.show()

    def on_server_error(self, code: str, message: str, ref: str) -> None:
        if code not in ("user_offline", "busy", "not_in_call"):
            self.show_info(f"The server said: {message}")

    def refresh_history(self) -> None:
        self.history_page.refresh()
        missed = self.history.unseen_missed()
        i = self.tabs.indexOf(self.history_page)
        self.tabs.setTabText(i, f"History ({missed})" if missed else "History")
        self.tabs.setTabToolTip(i, f"{missed} missed call(s)" if missed else "Your recent calls")

    def bring_forward(self) -> None:
        self.showNormal()
        self.raise_()
        self.activateWindow()

    # ------------------------------------------------------------ slots

    def on_call(self, user_id: str, video: bool) -> None:
        if self.engine is None or self.call_page.call_id is not None or self.room_call_page.room is not None:
            return
        name = self.engine.name_of(user_id)
        call_id = self.engine.call(user_id, video=video)
        self.call_page.start(call_id, name, "outgoing", ["audio", "video"] if video else ["audio"], peer=user_id)
        self._show_direct(self.call_page.chat, user_id)
        self.stack.setCurrentWidget(self.call_page)

    def on_incoming(self, call_id: str, peer: str, name: str, media: list) -> None:
        self.ringing[call_id] = (name, media, peer)
        self.incoming.ring(call_id, name, media)
        if self.ringtone is not None:
            self.ringtone.start()
        if self.isMinimized() or not self.isActiveWindow():
            QApplication.alert(self)
            if self.tray is not None:
                self.tray.showMessage("Incoming call", f"{name} is calling you", app_icon(), 15000)

    def on_accept(self, video: bool) -> None:
        call_id = self.incoming.call_id
        if call_id is None or self.engine is None:
            return
        name, media, peer = self.ringing.pop(call_id, ("", ["audio"], None))
        self._stop_ringing()
        self.incoming.hide()
        self.incoming.call_id = None
        if not self.engine.accept(call_id, video=video):
            self.show_info(f"{name} hung up before you answered.")
            return
        self.call_page.start(call_id, name, "incoming", media if video else ["audio"], peer=peer)
        self._show_direct(self.call_page.chat, peer)
        self.stack.setCurrentWidget(self.call_page)
        self.bring_forward()

    def on_reject(self) -> None:
        call_id = self.incoming.call_id
        if call_id is not None and self.engine is not None:
            self.engine.reject(call_id)
        self._stop_ringing()
        self.incoming.hide()

    def on_call_changed(self, e) -> None:
        self.call_page.on_call_changed(e)
        if e.state == "ended":
            self.ringing.pop(e.call_id, None)
            if self.incoming.call_id == e.call_id:
                self._stop_ringing()
                self.incoming.hide()
                self.incoming.call_id = None
                if e.reason not in ("rejected",):
                    self.show_info(f"Missed call from {e.display_name or e.peer}.")
            self.refresh_history()

    def _stop_ringing(self) -> None:
        if self.ringtone is not None:
            self.ringtone.stop()

    def on_call_finished(self, call_id: str, message: str) -> None:
        self.stack.setCurrentWidget(self.tabs)
        self.show_info(message)

    def closeEvent(self, event) -> None:
        question = None if self._quitting else self.ask_before_quit()
        if question is None:
            event.accept()
            return
        event.ignore()
        box = QMessageBox(QMessageBox.Icon.Warning, "Quit Callbox?", question, parent=self)
        box.setInformativeText("If you quit, the others will move to another host automatically; "
                               "that can take a few seconds.")
        box.addButton("Quit anyway", QMessageBox.ButtonRole.DestructiveRole).clicked.connect(self.on_quit_anyway)
        box.setDefaultButton(box.addButton(QMessageBox.StandardButton.Cancel))
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.open()

    def on_quit_anyway(self) -> None:
        self._quitting = True
        self.close()

    def on_tab(self, index: int) -> None:
        if self.tabs.widget(index) is self.history_page:
            self.history.mark_seen()
            self.refresh_history()
        elif self.tabs.widget(index) is self.rooms_page and self.rooms_page.current:
            self.on_room_opened(self.rooms_page.current)

    # ------------------------------------------------------------ rooms

    def on_join_room(self, name: str) -> None:
        if self.engine is None:
            return
        try:
            self.engine.join_room(name)
        except ValueError as exc:
            self.rooms_page.show_problem(str(exc))
            return
        self.on_rooms_changed()
        self.rooms_page.select(name)

    def on_leave_room(self, name: str) -> None:
        if self.engine is not None and name:
            self.engine.leave_room(name)

    def on_rooms_changed(self) -> None:
        if self.engine is None:
            return
        rooms = self.engine.rooms
        self.rooms_page.set_rooms(rooms)
        unread = sum(r.unread for r in rooms.values())
        i = self.tabs.indexOf(self.rooms_page)
        self.tabs.setTabText(i, f"Rooms ({unread})" if unread else "Rooms")
        self.tabs.setTabToolTip(i, f"{unread} unread message(s) in your rooms" if unread else "Rooms you are in")
        if self.rooms_page.pane.room in rooms:
            self.on_room_changed(self.rooms_page.pane.room)

    def on_room_opened(self, name: str) -> None:
        """A room's page is shown: its members, its chat from the profile's history, its lines read."""
        if self.engine is None or name not in self.engine.rooms:
            return
        self.rooms_page.pane.room = name
        self.rooms_page.pane.chat.show_conversation(room_key(name), self.chatlog.lines(room_key(name)))
        self.on_room_changed(name)
        if self.engine.rooms[name].unread:
            self.engine.mark_read(name)

    def on_users(self, users: list) -> None:
        """Someone's status or name changed: the contacts, and the room shown, whose members show it too."""
        self.contacts.set_users(users)
        if self.rooms_page.pane.room:
            self.on_room_changed(self.rooms_page.pane.room)

    def on_room_changed(self, name: str) -> None:
        room = self.engine.rooms.get(name) if self.engine is not None else None
        if room is None:
            return
        if self.rooms_page.pane.room == name:
            c = self.engine.room_call
            in_call = c is not None and c.room == name
            users = {u.user_id: u for u in self.engine.users}
            self.rooms_page.pane.show_room(room, users, self.engine.config.user_id, in_call, self.engine.name_of)
        if self.room_call_page.room == name:
            self.room_call_page.refresh()

    def on_say(self, room: str, text: str, view: ChatView | None = None) -> None:
        view = view or self.rooms_page.pane.chat
        try:
            self.engine.say(room, text)
        except (ValueError, KeyError) as exc:
            view.show_problem(str(exc).strip("'\""))
            return
        view.sent()

    def on_room_text(self, room: str, line) -> None:
        if not self.chatlog.add(room_key(room), line):
            return  # the room's history, sent again: shown already
        for view in self._views(room_key(room)):
            view.add_line(line)
        if self._showing(room_key(room)) and self.engine is not None and room in self.engine.rooms:
            self.engine.mark_read(room)

    def on_join_room_call(self, room: str, video: bool) -> None:
        if self.engine is None:
            return
        if self.call_page.call_id is not None:
            self.show_info("Hang up your call first: you can be in one call at a time.")
            return
        self.engine.join_room_call(room, video=video)
        page = self.room_call_page
        page.start(room)
        page.chat.show_conversation(room_key(room), self.chatlog.lines(room_key(room)))
        self.stack.setCurrentWidget(page)

    def on_room_call_changed(self, e) -> None:
        self.room_call_page.on_room_call_changed(e)
        self.on_room_changed(e.room)

    # ------------------------------------------------------------ direct chat

    def on_message_contact(self, user_id: str) -> None:
        """Open (or bring forward) the chat window with one person."""
        if self.engine is None:
            return
        window = self.chat_windows.get(user_id)
        if window is None:
            window = self.chat_windows[user_id] = ChatWindow(user_id, self.engine.name_of(user_id), self)
            window.chat.send.connect(lambda text, w=window: self.on_chat(w.peer, text, w.chat))
            self._show_direct(window.chat, user_id)
        window.show()
        window.raise_()
        window.activateWindow()
        self._read_direct(user_id)

    def _show_direct(self, view: ChatView, user_id: str | None) -> None:
        if user_id is not None:
            view.show_conversation(user_key(user_id), self.chatlog.lines(user_key(user_id)))

    def _read_direct(self, user_id: str | None) -> None:
        if self.contacts.unread.pop(user_id, None):
            self.contacts.set_users(self.contacts.users)

    def on_chat(self, user_id: str | None, text: str, view: ChatView) -> None:
        if self.engine is None or user_id is None:
            return
        try:
            self.engine.chat(user_id, text)
        except ValueError as exc:
            view.show_problem(str(exc))
            return
        view.sent()

    def on_direct_text(self, peer: str, line) -> None:
        key = user_key(peer)
        if not self.chatlog.add(key, line):
            return
        for view in self._views(key):
            view.add_line(line)
        if not line.mine and self.call_page.peer == peer and self.stack.currentWidget() is self.call_page:
            self.call_page.chat_button.setChecked(True)  # they write during our call: show it beside the video
        if line.mine or self._showing(key):
            return
        self.contacts.unread[peer] = self.contacts.unread.get(peer, 0) + 1
        self.contacts.set_users(self.contacts.users)
        self.show_info(f"{line.name}: {line.text}")
        if self.tray is not None and (self.isMinimized() or not self.isActiveWindow()):
            self.tray.showMessage(f"Message from {line.name}", line.text, app_icon(), 10000)

    def on_chat_status(self, peer: str, line_id: str, reason: str) -> None:
        self.chatlog.not_delivered(user_key(peer), line_id)
        for view in self._views(user_key(peer)):
            view.mark_not_delivered(line_id)
            view.show_problem(f"Not delivered: {reason}")

    def _views(self, conversation: str) -> list[ChatView]:
        views = [self.rooms_page.pane.chat, self.room_call_page.chat, self.call_page.chat,
                 *(w.chat for w in self.chat_windows.values())]
        return [v for v in views if v.conversation == conversation]

    def _showing(self, conversation: str) -> bool:
        """Whether someone can see this conversation now (so its new lines are read)."""
        return any(v.isVisible() for v in self._views(conversation))
