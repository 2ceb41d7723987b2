"""The profile's key (made once, owner-only, the same for two processes starting at once) and pinned contact keys:
a contact whose key changed is reported, by the engine and in the headless report."""

from __future__ import annotations

import json
import os
import stat
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from client.core import events as ev
from client.core.identity import Identity, Pins
from shared.identity import fingerprint, hello_payload, verify
from tests.client.engines import start_engine


def test_the_key_is_made_once_owner_only_and_signs_what_verifies(tmp_path):
    path = tmp_path / "profile" / "identity.key"
    made = Identity.load(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = Identity.load(path)
    assert again.key == made.key and len(made.key) == 43
    proof = made.prove("n0nce", "alice")
    assert verify(made.key, proof, hello_payload("n0nce", "alice"))
    assert not verify(made.key, proof, hello_payload("other", "alice"))
    assert not verify(Identity.generate().key, proof, hello_payload("n0nce", "alice"))
    assert not verify("not a key", proof, b"x") and not verify(made.key, "not a signature", b"x")
    os.chmod(path, 0o644)
    Identity.load(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600, "a key readable by others is made owner-only"


def _load(path: str) -> str:
    return Identity.load(Path(path)).key


def test_processes_starting_at_once_on_one_profile_end_with_one_key(tmp_path):
    path = str(tmp_path / "identity.key")
    with ProcessPoolExecutor(4) as pool:
        keys = set(pool.map(_load, [path] * 8))
    assert len(keys) == 1


def test_pins_keep_the_first_key_and_name_a_changed_one(tmp_path):
    pins = Pins(tmp_path / "pins.json")
    a, b = Identity.generate().key, Identity.generate().key
    assert pins.check("alice", a) is None and pins.check("alice", a) is None
    assert pins.check("alice", b) == a
    assert Pins(tmp_path / "pins.json").keys == {"alice": a}, "pins are kept on disk"
    pins.accept("alice", b)
    assert pins.check("alice", b) is None


async def test_a_contact_with_another_key_than_pinned_is_warned_about(server, tmp_path):
    first, second = Identity.generate(), Identity.generate()
    pins = Pins(tmp_path / "pins.json")
    bob = await start_engine(server.url, "bob", pins=pins)
    alice = await start_engine(server.url, "alice", identity=first)
    await bob.until(lambda: "alice" in pins.keys)
    assert pins.keys["alice"] == first.key and not bob.engine.key_warnings
    await alice.engine.stop()
    server.hub.bindings.forget("alice")  # as another server would not know her: only bob's pin does
    alice = await start_engine(server.url, "alice", identity=second)
    warning = await bob.until(lambda: next((e for e in bob.events if isinstance(e, ev.KeyChanged)), None))
    assert (warning.user_id, warning.pinned, warning.seen) == ("alice", fingerprint(first.key),
                                                              fingerprint(second.key))
    assert bob.engine.key_warnings["alice"] == warning
    for p in (alice, bob):
        await p.engine.stop()


async def test_the_headless_report_names_a_changed_key(server, tmp_path):
    from tests.client.test_headless import headless

    home = {"XDG_CONFIG_HOME": str(tmp_path / "config"), "XDG_DATA_HOME": str(tmp_path / "data")}
    pins = tmp_path / "config" / "callbox" / "default" / "pins.json"
    pins.parent.mkdir(parents=True)
    stale = Identity.generate().key
    pins.write_text(json.dumps({"alice": stale}))
    alice = await start_engine(server.url, "alice", identity=Identity.generate())
    report = tmp_path / "bob.json"
    bob = await headless(server.url, "bob", "--duration", "0", report=report, env=home)
    await alice.until(lambda: "bob" in alice.engine.signaling.users)
    bob.terminate()
    await bob.wait()
    data = json.loads(report.read_text())
    assert [w["user_id"] for w in data["key_warnings"]] == ["alice"]
    assert data["key_warnings"][0]["pinned"] == fingerprint(stale)
    assert len(data["identity"]) == 19
    await alice.engine.stop()

