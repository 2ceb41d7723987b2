"""What the user sees of identity: a contact's key fingerprint on hover, and a warning when a contact's key changed."""

import json

from client.core.identity import Identity
from client.core.settings import Profile
from shared.identity import fingerprint
from tests.support import running_server
from tests.ui.apps import online_pair, shot, until


def test_a_contacts_fingerprint_on_hover_and_a_warning_when_their_key_changed(qtbot, qloop, tmp_path):
    stale = Identity.generate().key  # the key bob pinned for alice once, on another day
    pins = Profile("bob", root=tmp_path).pins_path
    pins.parent.mkdir(parents=True)
    pins.write_text(json.dumps({"alice": stale}))

    async def scenario():
        async with running_server() as srv:
            alice, bob = await online_pair(tmp_path, srv.url)
            try:
                row = bob.window.contacts.rows["alice"]
                mine = alice.engine.identity.fingerprint
                assert f"Key fingerprint: {mine}" in row.name.toolTip()
                assert f"Key fingerprint: {bob.engine.identity.fingerprint}" in \
                    alice.window.contacts.rows["bob"].name.toolTip()
                await until(lambda: "key changed" in bob.window.contacts.rows["alice"].status.text(), 5,
                            "the warning on alice's row")
                row = bob.window.contacts.rows["alice"]
                assert f"first {fingerprint(stale)}, now {mine}" in row.status.toolTip()
                assert bob.window.info.isVisible() and "Warning: Alice (alice) has a different identity key" in \
                    bob.window.info.text()
                assert "key changed" not in alice.window.contacts.rows["bob"].status.text()
                shot(bob.window, "key_changed")
                row.status.linkActivated.emit("trust")  # the user checked with Alice and trusts her new key
                await until(lambda: "key changed" not in bob.window.contacts.rows["alice"].status.text(), 2)
                assert bob.engine.pins.keys["alice"] == alice.engine.identity.key and not bob.engine.key_warnings
            finally:
                await alice.shutdown()
                await bob.shutdown()

    qloop.run_until_complete(scenario())
