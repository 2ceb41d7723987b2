"""Who owns a user id: hello proves a key against the connection's nonce, the first key binds the id (trust on first
use), and no other key takes it: not while its owner is offline, not during the owner's resume grace."""

from __future__ import annotations

import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from client.core.identity import Identity
from server import Hub, HubConfig
from server.bindings import SqliteBindings
from server.hub import Send
from shared import protocol as p
from tests.support import FAST, Peer, running_server

ALICE, MALLORY = Identity.generate(), Identity.generate()


def nonce_of(peer: Peer) -> str:
    return peer.ws.response.headers[p.NONCE_HEADER]


async def keyed(url: str, user: str, identity: Identity | None, **fields) -> Peer:
    """A raw client that says hello with `identity`'s key and proof (or none)."""
    peer = await Peer.connect(url, user, hello=False)
    if identity is not None:
        fields = {"key": identity.key, "proof": identity.prove(nonce_of(peer), user), **fields}
    await peer.hello(**fields)
    return peer


async def test_the_first_key_binds_the_id_and_no_other_key_takes_it_while_offline(server):
    alice = await keyed(server.url, "alice", ALICE)
    assert alice.welcome["type"] == "connection_established"
    await alice.send({"type": "bye"})
    await alice.closed()
    for impostor in (MALLORY, None):
        mallory = await keyed(server.url, "alice", impostor)
        assert (mallory.welcome["type"], mallory.welcome["code"]) == ("error", p.KEY_MISMATCH)
        assert "callbox-server --forget alice" in mallory.welcome["message"]
        await mallory.close()
    again = await keyed(server.url, "alice", ALICE)
    assert again.welcome["type"] == "connection_established"
    await again.close()


async def test_nobody_takes_the_id_during_the_owners_grace_and_the_owner_resumes_with_its_call():
    async with running_server(resume_grace=5) as srv:
        alice = await keyed(srv.url, "alice", ALICE)
        bob = await Peer.connect(srv.url, "bob")
        await alice.call(bob)
        token = alice.welcome["resume_token"]
        alice.cut()  # a silent drop: alice is reconnecting, her call with bob stays
        await bob.expect("presence", user_id="alice", status="reconnecting")
        for impostor in (MALLORY, None):
            mallory = await keyed(srv.url, "alice", impostor)
            assert mallory.welcome["code"] == p.KEY_MISMATCH
            await mallory.close()
        assert await bob.silent("call_ended", 0.3), "bob's call must not end"
        back = await keyed(srv.url, "alice", ALICE, resume_token=token, received=0)
        assert back.welcome["type"] == "connection_established" and back.welcome["resumed"] is True
        assert srv.hub.status("alice") == "in_call"
        for peer in (back, bob):
            await peer.close()


async def test_the_proven_owner_replaces_a_connection_the_server_has_not_yet_seen_die():
    async with running_server(ping_interval=10, resume_grace=5) as srv:
        old = await keyed(srv.url, "alice", ALICE)
        old.freeze()  # half-open: the server still holds it (a keyless hello would get name_taken)
        held = srv.hub.sessions["alice"].conn
        keyless = await Peer.connect(srv.url, "alice")
        assert keyless.welcome["code"] == p.KEY_MISMATCH
        new = await keyed(srv.url, "alice", ALICE)  # the app restarted: no resume token, same key
        assert new.welcome["type"] == "connection_established"
        assert srv.hub.sessions["alice"].conn is not held
        assert held not in srv.hub.conns or srv.hub.conns[held].closing
        old.cut()
        for peer in (keyless, new):
            await peer.close()


async def test_the_key_and_the_ids_of_others_show_in_the_users_list(server):
    alice = await keyed(server.url, "alice", ALICE)
    bob = await Peer.connect(server.url, "bob")
    assert bob.welcome["users"] == [{"user_id": "alice", "display_name": "Alice", "status": "online",
                                     "key": ALICE.key}]
    await alice.close()
    await bob.close()


async def test_a_hello_with_a_key_but_no_proof_gets_the_nonce_to_sign(server):
    peer = await Peer.connect(server.url, "alice", hello=False)
    reply = await peer.hello(key=ALICE.key)
    assert reply["code"] == p.PROOF_REQUIRED and reply["ref"] == nonce_of(peer)
    reply = await peer.hello(key=ALICE.key, proof=ALICE.prove(reply["ref"], "alice"))
    assert reply["type"] == "connection_established"
    await peer.close()


async def test_a_recorded_hello_does_not_log_in_on_another_connection(server):
    first = await Peer.connect(server.url, "alice", hello=False)
    recorded = {"key": ALICE.key, "proof": ALICE.prove(nonce_of(first), "alice")}
    await first.close()
    replay = await Peer.connect(server.url, "alice", hello=False)
    reply = await replay.hello(**recorded)
    assert reply["code"] == p.BAD_PROOF
    assert (await replay.closed())[0] == 1008


async def test_bindings_outlive_a_restart_and_the_operator_can_release_one(tmp_path):
    async with running_server(bindings=SqliteBindings(tmp_path)) as srv:
        alice = await keyed(srv.url, "alice", ALICE)
        await alice.close()
    async with running_server(bindings=SqliteBindings(tmp_path)) as srv:
        mallory = await keyed(srv.url, "alice", MALLORY)
        assert mallory.welcome["code"] == p.KEY_MISMATCH
        await mallory.close()
        forget = subprocess.run([sys.executable, "-m", "server", "--data-dir", str(tmp_path), "--forget", "alice"],
                                capture_output=True, text=True, timeout=30)
        assert forget.returncode == 0 and "'alice' is released" in forget.stdout, forget
        mallory = await keyed(srv.url, "alice", MALLORY)  # the running server reads the change at once
        assert mallory.welcome["type"] == "connection_established"
        await mallory.close()
    again = subprocess.run([sys.executable, "-m", "server", "--data-dir", str(tmp_path), "--forget", "nobody"],
                           capture_output=True, text=True, timeout=30)
    assert again.returncode == 1 and "is not bound" in again.stdout


KEYS = [Identity.generate() for _ in range(3)]


@settings(max_examples=200, deadline=None)
@given(signer=st.integers(0, 2), claimed=st.integers(0, 2), bound=st.one_of(st.none(), st.integers(0, 2)),
       nonce=st.sampled_from(["this", "stale", "other"]), signed_user=st.sampled_from(["alice", "bob"]))
def test_only_a_fresh_proof_by_the_bound_key_logs_in(signer, claimed, bound, nonce, signed_user):
    """A wrong key, a stale or foreign nonce, or a proof for another id never logs in as alice."""
    hub = Hub(HubConfig(**FAST))
    if bound is not None:
        hub.bindings.bind("alice", KEYS[bound].key)
    hub.open("conn", 0.0, nonce="this")
    proof = KEYS[signer].prove(nonce, signed_user)
    hello = p.Hello(protocol=1, user_id="alice", display_name="A", key=KEYS[claimed].key, proof=proof).encode()
    replies = [p.decode(a.text) for a in hub.receive("conn", hello, 0.0) if isinstance(a, Send)]
    logged_in = any(isinstance(r, p.ConnectionEstablished) for r in replies)
    valid = signer == claimed and nonce == "this" and signed_user == "alice"
    assert logged_in == (valid and (bound is None or bound == claimed)), replies
    if logged_in:
        assert hub.bindings.key_of("alice") == KEYS[claimed].key


def test_a_bindings_file_from_before_look_alike_checks_is_brought_up_to_date(tmp_path):
    import sqlite3

    old = sqlite3.connect(tmp_path / "bindings.sqlite3")
    old.execute("CREATE TABLE bindings (user_id TEXT PRIMARY KEY, key TEXT NOT NULL, bound REAL NOT NULL)")
    old.execute("INSERT INTO bindings VALUES ('alice', ?, 0)", (ALICE.key,))
    old.commit()
    old.close()
    bindings = SqliteBindings(tmp_path)
    assert bindings.key_of("alice") == ALICE.key and bindings.bound_like("\u0430lice") == "alice"
    bindings.close()
