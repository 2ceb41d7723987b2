"""Settings: every option declared once, stored per profile as JSON; the profile's folders for data and history."""

from __future__ import annotations

import dataclasses
import getpass
import json
import logging
import os
import re
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("callbox.settings")


@dataclass
class Settings:
    display_name: str = ""  # empty until the first run asks for it
    user_id: str = ""  # made once per profile from the name plus a random suffix, then kept
    servers: list[str] = field(default_factory=list)  # ws:// or wss://, tried in order; none: the LAN's, or host
    token: str = ""
    microphone: str = ""  # device names; empty: the system default
    speaker: str = ""
    camera: str = ""
    ice_servers: list[dict] = field(default_factory=list)  # [{"urls": "stun:host:3478"}, ...]; none on a LAN
    echo_cancellation: bool = True
    host_port: int = 8765  # the port the embedded server tries first
    rooms: list[str] = field(default_factory=list)  # rooms joined, rejoined at start

    @classmethod
    def fields(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]


def default_name() -> str:
    try:
        name = getpass.getuser()
    except Exception:
        name = ""
    return name.replace(".", " ").replace("_", " ").title() or "Me"


def make_user_id(display_name: str) -> str:
    base = re.sub(r"[^\w.@+-]", "", display_name.lower().replace(" ", ".")) or "user"
    return f"{base[:40]}-{secrets.token_hex(2)}"


def _base(kind: str) -> Path:
    home = Path.home()
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA" if kind == "config" else "LOCALAPPDATA", home)) / "Callbox"
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / "Callbox"
    env = "XDG_CONFIG_HOME" if kind == "config" else "XDG_DATA_HOME"
    default = home / (".config" if kind == "config" else ".local/share")
    return Path(os.environ.get(env) or default) / "callbox"


class Profile:
    """One identity: its settings, window state, key and pinned keys files, and its data folder (call history,
    and the bindings of the server it hosts)."""

    def __init__(self, name: str = "default", *, root: Path | None = None):
        if not re.fullmatch(r"[\w.-]{1,64}", name):
            raise ValueError(f"profile name '{name}' may hold only letters, digits, '.', '_' and '-'")
        self.name = name
        self.config_dir = (root / "config" if root else _base("config")) / name
        self.data_dir = (root / "data" if root else _base("data")) / name

    @property
    def settings_path(self) -> Path:
        return self.config_dir / "settings.json"

    @property
    def window_state_path(self) -> Path:
        return self.config_dir / "window.json"

    @property
    def identity_path(self) -> Path:
        return self.config_dir / "identity.key"

    @property
    def pins_path(self) -> Path:
        return self.config_dir / "pins.json"

    @property
    def history_path(self) -> Path:
        return self.data_dir / "history.sqlite3"

    def load(self) -> Settings:
        s = Settings()
        try:
            data = json.loads(self.settings_path.read_text())
        except FileNotFoundError:
            return s
        except (OSError, ValueError) as exc:
            log.warning("settings file %s is unreadable (%s); starting from defaults", self.settings_path, exc)
            return s
        if "servers" not in data and isinstance(data.get("server"), str):  # saved when there was one address
            data["servers"] = [data["server"]] if data["server"] else []
        for key in Settings.fields():
            if key in data and isinstance(data[key], type(getattr(s, key))):
                setattr(s, key, data[key])
        return s

    def save(self, settings: Settings) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.settings_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(settings), indent=2))
        tmp.replace(self.settings_path)  # never a half-written file

    def load_window_state(self) -> dict:
        try:
            return json.loads(self.window_state_path.read_text())
        except (OSError, ValueError):
            return {}

    def save_window_state(self, state: dict) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.window_state_path.write_text(json.dumps(state))
