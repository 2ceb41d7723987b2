"""A user id that looks like one in use is refused; display names reach others made safe to show."""

import pytest

from shared import protocol as p
from tests.server.test_identity import ALICE, MALLORY, keyed
from tests.support import Peer


@pytest.mark.parametrize("lookalike", ["\u0430lice", "ａｌｉｃｅ", "aIice", "Alice"])
async def test_an_id_like_a_bound_one_is_refused_even_with_its_owner_away(server, lookalike):
    alice = await keyed(server.url, "alice", ALICE)
    await alice.send({"type": "bye"})
    await alice.closed()
    mallory = await keyed(server.url, lookalike, MALLORY)
    assert mallory.welcome["code"] == p.LOOKALIKE_ID
    assert f"'{lookalike}' looks like 'alice'" in mallory.welcome["message"]
    await mallory.close()
    for fine in ("alison", "alice"):
        peer = await keyed(server.url, fine, ALICE)
        assert peer.welcome["type"] == "connection_established", fine
        await peer.close()


async def test_an_id_like_one_online_without_a_key_is_refused(server):
    carol = await Peer.connect(server.url, "user3")
    mallory = await Peer.connect(server.url, "user\u0663")
    assert mallory.welcome["code"] == p.LOOKALIKE_ID
    await carol.send({"type": "bye"})
    await carol.closed()
    later = await Peer.connect(server.url, "user\u0663")  # nobody uses user3 any more, and no key owns it
    assert later.welcome["type"] == "connection_established"
    for peer in (mallory, later):
        await peer.close()


async def test_display_names_reach_others_safe_to_show(server):
    bob = await Peer.connect(server.url, "bob")
    for user, raw, shown in (("m1", "Alice\u202e", "Alice"), ("m2", "\u200b\u200b", "m2"),
                             ("m3", "A\u0000\nB\x1b[2J", "AB[2J")):
        peer = await Peer.connect(server.url, user, display_name=raw)
        presence = await bob.expect("presence", user_id=user)
        assert presence["display_name"] == shown
        await peer.close()
    carol = await Peer.connect(server.url, "carol")
    assert all(u["display_name"] != "Alice\u202e" for u in carol.welcome["users"])
    for peer in (bob, carol):
        await peer.close()
