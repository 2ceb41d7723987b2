"""This profile's identity: its long-term Ed25519 key (made on first run, owner-only), and the contacts' pinned keys."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.identity import b64, fingerprint, hello_payload

log = logging.getLogger("callbox.identity")


class Identity:
    """The key a profile proves itself with. `key` is the public half as text (base64url of the raw 32 bytes)."""

    def __init__(self, private: Ed25519PrivateKey):
        self._private = private
        raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.key = b64(raw)

    @classmethod
    def generate(cls) -> Identity:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: Path) -> Identity:
        """The key in `path`, made there first if there is none (0600, created atomically: two processes
        starting at once on one profile end with the same key)."""
        try:
            return cls._read(path)
        except FileNotFoundError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        made = Ed25519PrivateKey.generate()
        pem = made.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        try:
            os.link(tmp, path)  # fails if another process made one meanwhile: then that one is the key
            log.info("made a new identity key in %s", path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        return cls._read(path)

    @classmethod
    def _read(cls, path: Path) -> Identity:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} holds a key that is not Ed25519")
        if os.name == "posix" and path.stat().st_mode & 0o077:
            path.chmod(0o600)
            log.warning("%s was readable by others; made it owner-only", path)
        return cls(key)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key)

    def sign(self, payload: bytes) -> str:
        return b64(self._private.sign(payload))

    def prove(self, nonce: str, user_id: str) -> str:
        """The proof a hello carries: a signature over the server's nonce and the user id."""
        return self.sign(hello_payload(nonce, user_id))


class Pins:
    """Contacts' keys as first seen (trust on first use, like SSH's known_hosts), kept in a JSON file.

    `check(user, key)` pins an unknown user's key and returns None, or returns the pinned key when `key`
    differs from it: the person, or someone claiming their id, now has another key.
    """

    def __init__(self, path: Path | None):
        self.path = path
        self.keys: dict[str, str] = {}
        if path is not None:
            try:
                data = json.loads(path.read_text())
                self.keys = {str(u): str(k) for u, k in data.items()} if isinstance(data, dict) else {}
            except FileNotFoundError:
                pass  # nobody pinned yet
            except (OSError, ValueError) as exc:
                log.warning("pinned keys in %s are unreadable (%s); starting afresh", path, exc)

    def check(self, user: str, key: str) -> str | None:
        pinned = self.keys.get(user)
        if pinned is None:
            self.keys[user] = key
            self._save()
            return None
        return pinned if pinned != key else None

    def accept(self, user: str, key: str) -> None:
        """The user confirmed the new key: pin it."""
        self.keys[user] = key
        self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")  # two apps on one profile: no clash
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self.keys, indent=1, sort_keys=True))
            tmp.replace(self.path)
        except OSError as exc:  # a full disk must not stop a call; the pins hold in memory meanwhile
            log.warning("cannot save pinned keys to %s: %s", self.path, exc)
