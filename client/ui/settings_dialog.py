"""The settings dialog: name, servers (and the one in use) and token, devices, ICE servers and echo cancellation."""

from __future__ import annotations

import dataclasses

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
)

from client.core.settings import Settings
from client.core.signaling import addresses

from .pickers import DevicePicker


class SettingsDialog(QDialog):
    def __init__(self, settings: Settings, found_servers: list = (), in_use: str = "", parent=None, devices=None):
        super().__init__(parent)
        self.setWindowTitle("Callbox settings")
        self.setMinimumWidth(480)
        self.original = settings
        form = QFormLayout(self)
        self.name = QLineEdit(settings.display_name)
        self.name.setToolTip("The name others see")
        self.servers = QPlainTextEdit("\n".join(settings.servers))
        self.servers.setPlaceholderText("automatic: find one on the LAN, or host one; or one address per line, "
                                        "e.g. ws://callbox.example.org:8765")
        self.servers.setToolTip("ws:// or wss:// addresses of Callbox servers, one per line: it stays on the one "
                                "that works and tries the next when it fails (the nodes of one cluster); empty "
                                "finds one on the LAN or hosts one")
        self.servers.setFixedHeight(60)
        self.found = QComboBox()
        self.found.setToolTip("Callbox servers advertised on the LAN now")
        self.found.addItem("Add a server found on the LAN…")
        for s in found_servers:
            self.found.addItem(s.url)
        self.found.activated.connect(self._add_found)
        self.in_use = QLabel(in_use or "none yet")
        self.in_use.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.in_use.setToolTip("The server this app uses now, who hosts it and how it was chosen")
        self.token = QLineEdit(settings.token, echoMode=QLineEdit.EchoMode.Password)
        self.token.setToolTip("The server's shared secret, if it has one")
        self.mic = self._picker("microphone", settings.microphone, devices)
        self.speaker = self._picker("speaker", settings.speaker, devices)
        self.camera = self._picker("camera", settings.camera, devices)
        self.ice = QPlainTextEdit("\n".join(s["urls"] if isinstance(s["urls"], str) else " ".join(s["urls"])
                                            for s in settings.ice_servers))
        self.ice.setPlaceholderText("none (best on a LAN); one per line, e.g. stun:stun.example.org:3478")
        self.ice.setToolTip("STUN/TURN servers for calls across networks; leave empty on a LAN")
        self.ice.setFixedHeight(60)
        self.aec = QCheckBox("Cancel echo and suppress noise")
        self.aec.setChecked(settings.echo_cancellation)
        self.aec.setToolTip("Keeps the other side from hearing themselves when you use speakers, not a headset")
        self.error = QLabel()
        self.error.setStyleSheet("color: #d93636;")
        self.error.hide()
        for label, widget in (("Your name", self.name), ("Servers", self.servers), ("", self.found),
                              ("In use", self.in_use), ("Token", self.token), ("Microphone", self.mic),
                              ("Speaker", self.speaker), ("Camera", self.camera), ("ICE servers", self.ice),
                              ("", self.aec), ("", self.error)):
            form.addRow(label, widget)
        form.setRowVisible(self.found, bool(found_servers))
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.on_save)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    def _picker(self, kind: str, current: str, devices) -> DevicePicker:
        box = DevicePicker(kind, default_item=True)
        box.refill(devices, current)
        box.setToolTip(f"The {kind} calls use; the list follows devices as they are plugged in and out")
        return box

    def _add_found(self, index: int) -> None:
        url = self.found.itemText(index)
        if index > 0 and url not in addresses(self.servers.toPlainText()):
            self.servers.appendPlainText(url)
        self.found.setCurrentIndex(0)

    def refill_devices(self, devices) -> None:
        """Devices came or went: the lists follow, each keeping what is selected."""
        for box in (self.mic, self.speaker, self.camera):
            box.refill(devices)

    def result_settings(self) -> Settings:
        ice = [{"urls": line.strip()} for line in self.ice.toPlainText().splitlines() if line.strip()]
        return dataclasses.replace(
            self.original, display_name=self.name.text().strip() or self.original.display_name,
            servers=addresses(self.servers.toPlainText()), token=self.token.text(),
            microphone=self.mic.currentData() or "", speaker=self.speaker.currentData() or "",
            camera=self.camera.currentData() or "", ice_servers=ice, echo_cancellation=self.aec.isChecked())

    def on_save(self) -> None:
        s = self.result_settings()
        bad = [x["urls"] for x in s.ice_servers if not x["urls"].startswith(("stun:", "turn:", "turns:"))]
        server = next((u for u in s.servers if not u.startswith(("ws://", "wss://"))), None)
        if server is not None:
            self.error.setText(f"'{server}' is not a server address; it starts with ws:// or wss://")
        elif bad:
            self.error.setText(f"'{bad[0]}' is not a STUN or TURN address (stun:, turn: or turns:)")
        else:
            self.accept()
            return
        self.error.show()
