"""The hub with no sockets: deliveries, timers and cleanup, plus property tests over random message sequences."""

import json
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.hub import TICK_CONNECTIONS, Broadcast, Close, Hub, HubConfig, Send


def deliver(a, inbox: dict[str, list[dict]], closed: dict[str, int]) -> bool:
    """Do with a Send, Broadcast or Close what the transport would: each message into its connection's inbox, a
    close into `closed` (connection -> code). False for any other action."""
    if isinstance(a, Send):
        inbox[a.conn].append(json.loads(a.text))
    elif isinstance(a, Broadcast):
        for c in a.conns:
            inbox[c].append(json.loads(a.text))
    elif isinstance(a, Close):
        closed[a.conn] = a.code
    else:
        return False
    return True


class Wire:
    """Runs a hub and collects what each connection would have received."""

    def __init__(self, **config):
        self.hub = Hub(HubConfig(**{"resume_grace": 5, "ring_timeout": 10, "presence_tick": 0, **config}),
                       wall=lambda: 1000.0)
        self.now = 0.0
        self.inbox: dict[str, list[dict]] = {}
        self.closed: dict[str, int] = {}

    def run(self, actions):
        for a in actions:
            deliver(a, self.inbox, self.closed)

    def open(self, conn):
        self.inbox[conn] = []
        self.run(self.hub.open(conn, self.now))

    def send(self, conn, **msg):
        self.run(self.hub.receive(conn, json.dumps(msg), self.now))

    def login(self, user, conn=None):
        conn = conn or user
        self.open(conn)
        self.send(conn, type="hello", protocol=1, user_id=user, display_name=user.title())
        return self.take(conn)[0]

    def drop(self, conn):
        self.run(self.hub.connection_lost(conn, self.now))

    def advance(self, dt):
        self.now += dt
        self.run(self.hub.expire(self.now))

    def take(self, conn, type_=None):
        got = [m for m in self.inbox[conn] if type_ in (None, m["type"])]
        self.inbox[conn] = [m for m in self.inbox[conn] if m not in got]
        return got


def test_welcome_lists_others_with_status():
    w = Wire()
    w.login("alice")
    welcome = w.login("bob")
    assert welcome["users"] == [{"user_id": "alice", "display_name": "Alice", "status": "online"}]
    assert w.take("alice", "presence") == [{"type": "presence", "user_id": "bob", "display_name": "Bob",
                                            "status": "online"}]


def test_ring_timeout_uses_the_clock_it_is_given():
    w = Wire(ring_timeout=10)
    w.login("alice"), w.login("bob")
    w.send("alice", type="call_incoming", to="bob", call_id="c1", media=["audio"])
    assert w.hub.next_deadline() == 10
    w.advance(9.9)
    assert "c1" in w.hub.calls
    w.advance(0.2)
    assert w.take("alice", "call_ended") == [{"type": "call_ended", "call_id": "c1", "from": "bob",
                                              "reason": "no_answer"}]
    assert w.take("bob", "call_ended")[0]["from"] == "alice"
    assert w.hub.calls == {} and w.hub.next_deadline() is None


def test_a_single_server_keeps_no_cluster_records():
    w = Wire()
    w.login("ann")
    w.send("ann", type="bye")
    assert not w.hub.dirty and not w.hub.take_dirty()  # only a node of a cluster writes session records


def test_grace_then_offline_ends_calls():
    w = Wire(resume_grace=5)
    w.login("alice"), w.login("bob")
    w.send("alice", type="call_incoming", to="bob", call_id="c1", media=["audio"])
    w.send("bob", type="call_accepted", to="alice", call_id="c1")
    w.take("alice")
    w.drop("bob")
    assert w.take("alice") == [{"type": "presence", "user_id": "bob", "display_name": "Bob",
                                "status": "reconnecting"}]
    w.advance(4.9)
    assert w.hub.status("bob") == "reconnecting"
    w.advance(0.2)
    got = w.take("alice")
    assert {"type": "call_ended", "call_id": "c1", "from": "bob", "reason": "peer_disconnected"} in got
    assert {"type": "presence", "user_id": "bob", "display_name": "Bob", "status": "offline"} in got
    assert w.hub.status("alice") == "online"


def _in_call(w):
    w.login("alice"), w.login("bob")
    w.send("alice", type="call_incoming", to="bob", call_id="c1", media=["audio"])
    w.send("bob", type="call_accepted", to="alice", call_id="c1")


def _candidate(w, text="x"):
    w.send("alice", type="webrtc_ice_candidate", to="bob", call_id="c1", candidate=text)


def test_queue_overflow_ends_the_session():
    w = Wire(resume_grace=60, queue_limit=3)
    _in_call(w)
    w.drop("bob")
    for i in range(4):
        _candidate(w, f"m{i}")
    w.advance(0)
    assert w.hub.status("bob") == "offline"
    assert w.hub.replay.used == sum(s.replay.bytes for s in w.hub.sessions.values())


def test_replay_bytes_overflow_ends_the_session_and_frees_its_buffer():
    w = Wire(resume_grace=60, replay_bytes=10_000)
    _in_call(w)
    w.drop("bob")
    for _ in range(3):
        _candidate(w, "c" * 1000)
    assert w.hub.status("bob") == "reconnecting"
    for _ in range(8):
        _candidate(w, "c" * 1000)  # more than 10,000 bytes missed
    assert w.hub.sessions["bob"].replay.bytes == 0
    w.advance(0)
    assert w.hub.status("bob") == "offline"
    assert any(m["reason"] == "peer_disconnected" for m in w.take("alice", "call_ended"))


def test_replay_buffer_of_a_connected_user_keeps_the_newest_within_its_bytes():
    w = Wire(replay_bytes=10_000)
    _in_call(w)
    for i in range(100):
        _candidate(w, f"{i:04d}" + "c" * 996)
    bob = w.hub.sessions["bob"]
    assert bob.replay.bytes <= 10_000 and len(bob.replay.entries) >= 8
    assert json.loads(bob.replay.entries[-1][1])["candidate"].startswith("0099")
    assert len(w.take("bob", "webrtc_ice_candidate")) == 100  # nothing lost on a live connection


def test_server_wide_replay_total_is_kept():
    w = Wire(replay_bytes=100_000, replay_total=30_000)
    for u in ("alice", "bob", "carol", "dave"):
        w.login(u)
        w.send(u, type="join", channel="room")
    for _ in range(50):
        w.send("alice", type="channel_message", channel="room", text="t" * 1000)
    assert w.hub.replay.used <= 30_000 + 1200
    w.hub.check_invariants()


def test_channel_flood_while_away_becomes_a_gap_and_the_session_and_call_survive():
    w = Wire(resume_grace=60, queue_limit=10)
    _in_call(w)
    token = w.hub.sessions["bob"].resume_token
    w.send("alice", type="join", channel="room"), w.send("bob", type="join", channel="room")
    got = len(w.take("bob")) - 1  # all but the presence count
    w.drop("bob")
    for i in range(50):
        w.send("alice", type="channel_message", channel="room", text=f"m{i}")
    _candidate(w, "after the flood")
    w.advance(0)
    assert w.hub.status("bob") == "reconnecting" and "c1" in w.hub.calls
    w.open("bob2")
    w.send("bob2", type="hello", protocol=1, user_id="bob", display_name="Bob", resume_token=token, received=got)
    welcome, *rest = w.take("bob2")
    assert welcome["resumed"] is True
    assert [m["text"] for m in rest if m["type"] == "channel_message"] == [f"m{i}" for i in range(5)]
    assert [m["candidate"] for m in rest if m["type"] == "webrtc_ice_candidate"] == ["after the flood"]
    assert rest[-1] == {"type": "channel_gap", "channel": "room", "missed": 45}
    w.hub.check_invariants()


def test_a_congested_reader_gets_a_gap_marker_once_drained_and_call_messages_throughout():
    w = Wire()
    _in_call(w)
    w.send("alice", type="join", channel="room"), w.send("bob", type="join", channel="room")
    w.take("bob")
    w.hub.congested("bob")
    w.send("alice", type="channel_message", channel="room", text="lost")
    _candidate(w, "kept")
    assert [m["type"] for m in w.take("bob")] == ["webrtc_ice_candidate"]
    w.run(w.hub.drained("bob", w.now))
    w.send("alice", type="channel_message", channel="room", text="back")
    assert [(m["type"], m.get("missed"), m.get("text")) for m in w.take("bob")] == [
        ("channel_gap", 1, None), ("channel_message", None, "back")]


def test_overflowed_session_cannot_resume():
    w = Wire(resume_grace=60, queue_limit=1)
    _in_call(w)
    token = w.hub.sessions["bob"].resume_token
    w.drop("bob")
    _candidate(w, "m1")
    _candidate(w, "m2")  # overflows before any timer runs
    w.open("bob2")
    w.send("bob2", type="hello", protocol=1, user_id="bob", display_name="Bob", resume_token=token)
    assert w.take("bob2")[0]["resumed"] is False


def test_one_ringing_call_per_direction():
    w = Wire()
    w.login("alice"), w.login("bob")
    w.send("alice", type="call_incoming", to="bob", call_id="c1", media=["audio"])
    w.send("alice", type="call_incoming", to="bob", call_id="c2", media=["audio"])
    assert w.take("alice", "error")[0]["code"] == "busy" and list(w.hub.calls) == ["c1"]


def test_restarted_server_restores_a_call_both_sides_claim():
    w = Wire()
    w.open("a")
    w.send("a", type="hello", protocol=1, user_id="alice", display_name="Alice",
           calls=[{"call_id": "c1", "peer": "bob", "media": ["audio"]}])
    assert w.hub.calls == {}
    w.open("b")
    w.send("b", type="hello", protocol=1, user_id="bob", display_name="Bob",
           calls=[{"call_id": "c1", "peer": "alice", "media": ["audio"]}])
    assert w.hub.status("alice") == w.hub.status("bob") == "in_call"
    assert {"type": "presence", "user_id": "bob", "display_name": "Bob", "status": "in_call"} in w.take("a")
    w.hub.check_invariants()


def test_glare_calls_cannot_both_be_accepted():
    w = Wire()
    w.login("alice"), w.login("bob")
    w.send("alice", type="call_incoming", to="bob", call_id="a1", media=["audio"])
    w.send("bob", type="call_incoming", to="alice", call_id="b1", media=["audio"])
    w.send("bob", type="call_accepted", to="alice", call_id="a1")
    w.take("alice")
    w.send("alice", type="call_accepted", to="bob", call_id="b1")
    err = w.take("alice", "error")
    assert err[0]["code"] == "busy" and err[0]["ref"] == "b1"
    w.hub.check_invariants()


def test_a_one_sided_claim_expires():
    w = Wire(resume_grace=5)
    w.open("a")
    w.send("a", type="hello", protocol=1, user_id="alice", display_name="Alice",
           calls=[{"call_id": "c1", "peer": "bob"}])
    w.advance(59)
    assert "c1" in w.hub.claims  # the other party may take a while to come back after a restart
    w.advance(2)
    assert w.hub.claims == {} and w.hub.next_deadline() is None


def test_a_late_second_claim_still_restores_the_call():
    w = Wire(resume_grace=0.5)
    w.open("a")
    w.send("a", type="hello", protocol=1, user_id="alice", display_name="Alice",
           calls=[{"call_id": "c1", "peer": "bob"}])
    w.advance(5)  # bob's reconnect backoff was longer than the resume grace
    w.open("b")
    w.send("b", type="hello", protocol=1, user_id="bob", display_name="Bob",
           calls=[{"call_id": "c1", "peer": "alice"}])
    assert w.hub.status("alice") == w.hub.status("bob") == "in_call"


# ---- properties: random traffic from several users never raises and never breaks the invariants ----

USERS = ["u0", "u1", "u2"]
CALL_IDS = ["c0", "c1"]


def messages():
    user = st.sampled_from(USERS)
    call_id = st.sampled_from(CALL_IDS)
    return st.one_of(
        st.builds(lambda u, tok: {"type": "hello", "protocol": 1, "user_id": u, "display_name": u, **tok},
                  user, st.sampled_from([{}, {"resume_token": "wrong"}, {"calls": [{"call_id": "c9", "peer": "u1"}]}])),
        st.builds(lambda to, c, m: {"type": "call_incoming", "to": to, "call_id": c, "media": m},
                  user, call_id, st.sampled_from([["audio"], ["audio", "video"]])),
        st.builds(lambda t, to, c: {"type": t, "to": to, "call_id": c},
                  st.sampled_from(["call_accepted", "call_rejected", "call_ended"]), user, call_id),
        st.builds(lambda to, c: {"type": "webrtc_offer", "to": to, "call_id": c, "sdp": "v=0"}, user, call_id),
        st.builds(lambda t, ch: {"type": t, "channel": ch}, st.sampled_from(["join", "leave"]),
                  st.sampled_from(["a", "b"])),
        st.builds(lambda ch: {"type": "channel_message", "channel": ch, "text": "hi"}, st.sampled_from(["a", "b"])),
        st.builds(lambda ch, m, c: {"type": "room_call_join", "channel": ch, "media": m, **c},
                  st.sampled_from(["a", "b"]), st.sampled_from([["audio"], ["audio", "video"]]),
                  st.sampled_from([{}, {"call_id": "c1"}, {"call_id": "r1"}])),
        st.builds(lambda ch: {"type": "room_call_leave", "channel": ch}, st.sampled_from(["a", "b"])),
        st.builds(lambda to, c: {"type": "webrtc_answer", "to": to, "call_id": c, "sdp": "v=0"}, user,
                  st.sampled_from(["r1", "c1"])),
        st.builds(lambda to: {"type": "chat", "to": to, "id": "m1", "text": "hi"}, user),
        st.just({"type": "bye"}),
        st.sampled_from(["{", "[]", '{"type":"nope"}', '{"type":"call_accepted"}']),
    )


def steps():
    user = st.sampled_from(USERS)
    return st.one_of(
        st.tuples(st.just("login"), user, st.booleans()),
        st.tuples(st.just("send"), user, messages()),
        st.tuples(st.just("call"), user, user, st.sampled_from(CALL_IDS)),
        st.tuples(st.just("answer"), st.integers(0, 3),
                  st.sampled_from(["call_accepted", "call_rejected", "call_ended", "webrtc_answer"]), st.booleans()),
        st.tuples(st.just("drop"), user),
        st.tuples(st.just("tick"), st.floats(0, 4)),
    )


@settings(max_examples=1000, deadline=None)
@given(st.lists(steps(), min_size=10, max_size=80))
@pytest.mark.parametrize("tick", [0, 0.05])
def test_random_traffic_keeps_invariants_and_everyones_view_of_presence(tick, program):
    """Half the users take presence in batches (presence_tick > 0); after the traffic and a last tick, each
    connected user's view (its welcome, then every presence and presence_batch frame in order) is the truth."""
    program = [("login", u, False) for u in USERS] + program
    w = Wire(resume_grace=3, ring_timeout=5, queue_limit=5, rate=1000, burst=1000, presence_tick=tick)
    conn_of: dict[str, str] = {}  # the newest connection opened as each user
    for n, (op, *args) in enumerate(program):
        if op == "login":
            user, resume = args
            s = w.hub.sessions.get(user)
            w.open(f"k{n}")
            token = {"resume_token": s.resume_token} if s and resume else {}
            w.send(f"k{n}", type="hello", protocol=1, user_id=user, display_name=user,
                   presence_batch=USERS.index(user) % 2 == 0, **token)
            if w.hub.conns[f"k{n}"].user == user:
                conn_of[user] = f"k{n}"
            else:  # name_taken: this client gives up
                w.drop(f"k{n}")
        elif op == "send" and args[0] in conn_of:
            msg = args[1]
            w.run(w.hub.receive(conn_of[args[0]], msg if isinstance(msg, str) else json.dumps(msg), w.now))
        elif op == "call" and args[0] in conn_of:
            w.send(conn_of[args[0]], type="call_incoming", to=args[1], call_id=args[2], media=["audio"])
            if args[1] in conn_of:  # half the time they call each other at once (glare)
                w.send(conn_of[args[1]], type="call_incoming", to=args[0], call_id=f"g{n}", media=["audio"])
        elif op == "answer" and w.hub.calls:
            index, kind, by_callee = args
            call = w.hub.calls[sorted(w.hub.calls)[index % len(w.hub.calls)]]
            user = call.callee if by_callee else call.caller
            if user in conn_of:
                w.send(conn_of[user], type=kind, to=call.peer_of(user), call_id=call.call_id, sdp="v=0")
        elif op == "drop" and args[0] in conn_of:
            w.drop(conn_of.pop(args[0]))
        elif op == "tick":
            w.advance(args[0])
        for conn in list(w.closed):  # the transport drops a connection the hub closed
            w.drop(conn)
            del w.closed[conn]
            conn_of = {u: c for u, c in conn_of.items() if c != conn}
        w.hub.check_invariants()
    w.advance(0.06)
    while w.hub._presence:  # changes still waiting for their tick (a grace that ended in the last advance)
        w.advance(0.06)
    for user, conn in conn_of.items():
        if w.hub.sessions.get(user) is None or w.hub.sessions[user].conn != conn:
            continue
        view: dict[str, str] = {}
        for m in w.inbox[conn]:
            changes = m["users"] if m["type"] in ("connection_established", "presence_batch") else [m] if m[
                "type"] == "presence" else []
            for u in changes:
                if u["user_id"] != user:
                    view[u["user_id"]] = u["status"]
        truth = {u: w.hub.status(u) for u in USERS if u != user}
        assert {u: view.get(u, "offline") for u in truth} == truth, f"{user}'s view of presence"


def test_resume_replays_what_the_client_did_not_get_and_refuses_a_gap():
    w = Wire(queue_limit=3)
    w.login("alice")
    token = w.login("bob")["resume_token"]
    w.send("alice", type="join", channel="room"), w.send("bob", type="join", channel="room")
    for i in range(3):
        w.send("alice", type="channel_message", channel="room", text=f"m{i}")
    bob_got = w.hub.sessions["bob"].replay.sent - 2  # the last two never reached bob: a dead socket ate them
    w.drop("bob")
    w.open("bob2")
    w.send("bob2", type="hello", protocol=1, user_id="bob", display_name="Bob", resume_token=token,
           received=bob_got)
    welcome, *rest = w.take("bob2")
    assert welcome["resumed"] is True
    assert [m["text"] for m in rest if m["type"] == "channel_message"] == ["m1", "m2"]
    # Asking for more than is kept (queue_limit 3) cannot resume: that would skip a message.
    w.drop("bob2")
    w.open("bob3")
    w.send("bob3", type="hello", protocol=1, user_id="bob", display_name="Bob",
           resume_token=w.hub.sessions["bob"].resume_token, received=0)
    assert w.take("bob3")[0]["resumed"] is False


def test_own_client_back_too_late_to_resume_gets_a_fresh_session_not_name_taken():
    w = Wire(queue_limit=2)
    w.login("alice")
    token = w.login("bob")["resume_token"]
    w.send("alice", type="join", channel="room"), w.send("bob", type="join", channel="room")
    for i in range(4):  # written into bob's (dead, not yet noticed) socket
        w.send("alice", type="channel_message", channel="room", text=f"m{i}")
    w.open("bob2")
    w.send("bob2", type="hello", protocol=1, user_id="bob", display_name="Bob", resume_token=token, received=1)
    welcome = w.take("bob2")[0]
    assert welcome["type"] == "connection_established" and welcome["resumed"] is False
    assert w.closed["bob"] == 4000
    assert w.hub.sessions["bob"].conn == "bob2" and w.hub.sessions["bob"].resume_token != token


def test_an_ack_trims_the_replay_log_of_a_connected_user_and_resume_stays_exact():
    w = Wire(rate=0)
    _in_call(w)
    for i in range(1000):
        _candidate(w, f"cand{i}")
    bob = w.hub.sessions["bob"]
    assert (len(bob.replay.entries), bob.replay.sent) == (1000, 1001)  # the call and 1000 candidates: the newest
    # 1000 (queue_limit) are kept, though bob is connected, until he says he has them
    w.take("bob")
    received = bob.received
    w.send("bob", type="ack", received=bob.replay.sent - 2)  # two are still on the wire
    assert w.take("bob") == [{"type": "ack", "received": received}]  # and what the server has of bob's
    assert bob.received == received  # an ack is not counted (nor numbered: bob's log did not grow)
    assert [seq for seq, _ in bob.replay.entries] == [1000, 1001] and bob.replay.sent == 1001
    assert w.hub.replay.used == bob.replay.bytes + w.hub.sessions["alice"].replay.bytes
    # The connection dies with the last two unread: the resume replays exactly those.
    w.drop("bob")
    w.open("bob2")
    w.send("bob2", type="hello", protocol=1, user_id="bob", display_name="Bob", resume_token=bob.resume_token,
           received=999)
    welcome, *rest = w.take("bob2")
    assert welcome["resumed"] is True and [m["candidate"] for m in rest] == ["cand998", "cand999"]
    # A client that claims to have what it was never sent only empties its own log.
    w.send("bob2", type="ack", received=10**9)
    assert bob.replay.entries == deque() and w.hub.status("bob") == "in_call"
    w.hub.check_invariants()


def test_presence_of_one_tick_goes_out_once_per_connection_in_order_and_old_clients_get_single_frames():
    w = Wire(presence_tick=0.05)
    w.open("old")
    w.send("old", type="hello", protocol=1, user_id="old", display_name="Old")  # an older client: no batches
    w.open("new")
    w.send("new", type="hello", protocol=1, user_id="new", display_name="New", presence_batch=True)
    w.advance(0.05)
    w.take("old"), w.take("new")
    for u in ("ann", "ben", "cat"):  # a storm: three arrive, then ann and ben get into a call
        w.login(u)
    w.send("ann", type="call_incoming", to="ben", call_id="c1", media=["audio"])
    w.send("ben", type="call_accepted", to="ann", call_id="c1")
    w.send("cat", type="bye")
    assert w.take("new", "presence_batch") == [] and w.take("old", "presence") == []  # not before the tick
    w.advance(0.05)
    [batch] = w.take("new")
    assert [(u["user_id"], u["status"]) for u in batch["users"]] == [
        ("ann", "in_call"), ("ben", "in_call"), ("cat", "offline")]  # each once, latest state, first-change order
    assert [(m["user_id"], m["status"]) for m in w.take("old")] == [
        ("ann", "in_call"), ("ben", "in_call"), ("cat", "offline")]  # one frame each, still once per tick
    ann = [(m["user_id"], m["status"]) for m in w.take("ann", "presence")]
    assert ann == [("ben", "in_call"), ("cat", "offline")]  # ann is an older client: all but her own change
    w.advance(1)
    assert w.take("new") == [] and w.hub.next_deadline() is None  # nothing more pending
    w.hub.check_invariants()


def test_a_change_in_a_quiet_spell_goes_out_at_once_and_a_storm_in_ticks_spaced_by_the_connections():
    """A change goes out at once, but no sooner after the last tick than presence_tick per TICK_CONNECTIONS
    connections: each tick costs a frame to every connection, and what changes meanwhile waits for the next."""
    w = Wire(presence_tick=0.05)
    w.open("new")
    w.send("new", type="hello", protocol=1, user_id="new", display_name="New", presence_batch=True)
    for i in range(2 * TICK_CONNECTIONS - 1):  # 500 connections in all, not logged in: a gap of 100 ms
        w.open(f"idle{i}")
    w.advance(0.05)  # new's own tick
    w.advance(1)  # then a quiet spell
    w.take("new")
    w.login("ann")  # after a quiet spell: out at once
    w.advance(0)
    assert [u["user_id"] for u in w.take("new")[0]["users"]] == ["ann"]
    w.login("ben")  # right after that tick: not before the gap has passed since it
    w.advance(0.09)
    w.login("cat")
    assert w.take("new") == []
    w.advance(0.02)
    assert [u["user_id"] for u in w.take("new")[0]["users"]] == ["ben", "cat"]  # one frame, in the order they came
    w.hub.check_invariants()
