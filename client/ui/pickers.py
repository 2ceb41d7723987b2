"""Device pickers: a combo box of the microphones, speakers or cameras there are now, refilled as they come and go
without losing what is selected."""

from __future__ import annotations

from PySide6.QtWidgets import QComboBox

from client.core.devices import Devices
from client.core.devices import current as current_devices

KINDS = ("microphone", "speaker", "camera")


def items(devices: Devices, kind: str) -> list[tuple[str, str, bool]]:
    """(text, key, is the system default) for each device of `kind`."""
    if kind == "camera":
        return [(c.name, c.id, i == 0) for i, c in enumerate(devices.cameras)]
    found = devices.microphones if kind == "microphone" else devices.speakers
    return [(d.name, d.key, d.is_default_input or d.is_default_output) for d in found]


class DevicePicker(QComboBox):
    """`refill(devices, selected)` lists what there is and selects `selected` (a key; None keeps the selection).
    With `default_item` the first entry is "System default" (key ""); without it, a key that is not there selects
    the system's default device, and an empty list says why."""

    def __init__(self, kind: str, *, default_item: bool = False, parent=None):
        super().__init__(parent)
        assert kind in KINDS
        self.kind = kind
        self.default_item = default_item
        self.setAccessibleName(kind.capitalize())

    def refill(self, devices: Devices | None = None, selected: str | None = None) -> None:
        devices = devices or current_devices()
        if selected is None:
            selected = self.currentData()
        found = items(devices, self.kind)
        self.blockSignals(True)
        try:
            self.clear()
            if self.default_item:
                default = next((text for text, _key, is_default in found if is_default), "")
                self.addItem(f"System default ({default})" if default and self.kind != "camera" else "System default",
                             "")
            elif not found:
                why = devices.problem if self.kind != "camera" and devices.problem else "none found"
                self.addItem(f"— {why} —", None)
            for text, key, default in found:
                self.addItem(f"{text} (default)" if default and self.kind != "camera" else text, key)
            self.setEnabled(bool(found) or self.default_item)
            index = self.findData(selected)
            if index < 0 and not self.default_item:
                index = next((i for i, (_t, _k, default) in enumerate(found) if default), 0)
            self.setCurrentIndex(max(0, index))
        finally:
            self.blockSignals(False)
