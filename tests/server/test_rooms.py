"""Rooms on the hub: direct chat, and room calls (who is in, limits, relay, cleanup, restart)."""

from shared import protocol as p

from .test_hub import Wire


def room(w, *users, channel="team"):
    for u in users:
        w.login(u)
    for u in users:
        w.send(u, type="join", channel=channel)
    for u in users:
        w.take(u)


def test_chat_is_stamped_and_kept_for_a_reconnecting_recipient_but_refused_for_an_absent_one():
    w = Wire()
    w.login("ann"), w.login("ben")
    w.take("ann")
    w.send("ann", type="chat", to="ben", id="m1", text="hi", **{"from": "mallory"})
    assert w.take("ben", "chat") == [{"type": "chat", "id": "m1", "text": "hi", "from": "ann", "ts": 1000.0}]
    w.drop("ben")
    w.send("ann", type="chat", to="ben", id="m2", text="still there?")
    assert w.take("ann", "error") == []  # kept for ben's resume, not refused
    w.send("ann", type="chat", to="cat", id="m3", text="hello?")
    assert w.take("ann", "error") == [{"type": "error", "code": "user_offline", "ref": "m3",
                                       "message": "'cat' is not online; your message was not delivered"}]


def test_newcomer_learns_who_is_in_and_every_member_hears_the_join():
    w = Wire()
    room(w, "ann", "ben", "cat")
    w.send("ann", type="room_call_join", channel="team", media=["audio", "video"])
    joined = w.take("ann", "room_call_joined")[0]
    assert joined["participants"] == [] and joined["media"] == ["audio", "video"]
    call_id = joined["call_id"]
    w.send("ben", type="room_call_join", channel="team", media=["audio"])
    assert w.take("ben", "room_call_joined")[0]["participants"] == [{"user_id": "ann", "media": ["audio", "video"]}]
    for u in ("ann", "ben", "cat"):
        assert [m["user_id"] for m in w.take(u, "room_call_member")] == ["ann", "ben"]
    assert w.hub.status("ben") == "in_call" and w.hub.status("cat") == "online"
    # A newcomer to the room sees the call in `joined`.
    w.login("dan")
    w.send("dan", type="join", channel="team")
    assert w.take("dan", "joined")[0]["call"] == {"call_id": call_id, "participants": [
        {"user_id": "ann", "media": ["audio", "video"]}, {"user_id": "ben", "media": ["audio"]}]}
    # Offers relay within the call, to participants only.
    w.send("ben", type="webrtc_offer", to="ann", call_id=call_id, sdp="v=0")
    assert w.take("ann", "webrtc_offer") == [{"type": "webrtc_offer", "call_id": call_id, "from": "ben", "sdp": "v=0"}]
    w.send("ben", type="webrtc_offer", to="cat", call_id=call_id, sdp="v=0")
    assert w.take("ben", "error")[0]["code"] == p.NOT_IN_CALL
    w.send("ben", type="call_ended", to="ann", call_id=call_id)
    assert w.take("ben", "error")[0]["code"] == p.INVALID_STATE
    w.hub.check_invariants()


def test_fifth_with_video_gets_audio_and_the_ninth_is_refused():
    w = Wire()
    users = [f"u{i}" for i in range(9)]
    room(w, *users)
    for u in users[:4]:
        w.send(u, type="room_call_join", channel="team", media=["audio", "video"])
        assert w.take(u, "room_call_joined")[0]["media"] == ["audio", "video"]
    w.send("u4", type="room_call_join", channel="team", media=["audio", "video"])
    fifth = w.take("u4", "room_call_joined")[0]
    assert fifth["media"] == ["audio"] and "video is limited to 4" in fifth["notice"]
    for u in users[5:8]:
        w.send(u, type="room_call_join", channel="team", media=["audio"])
    w.send("u8", type="room_call_join", channel="team", media=["audio"])
    assert w.take("u8", "room_call_joined") == []
    error = w.take("u8", "error")[0]
    assert error["code"] == "room_full" and error["ref"] == "team" and "8 people" in error["message"]
    # One leaves: the ninth gets in, and a video slot freed by a video sender goes to the next who asks.
    w.send("u0", type="room_call_leave", channel="team")
    w.send("u8", type="room_call_join", channel="team", media=["audio", "video"])
    assert w.take("u8", "room_call_joined")[0]["media"] == ["audio", "video"]
    w.hub.check_invariants()


def test_a_lost_member_stays_through_the_grace_then_leaves_with_peer_disconnected_and_can_rejoin():
    w = Wire(resume_grace=5)
    room(w, "ann", "ben")
    for u in ("ann", "ben"):
        w.send(u, type="room_call_join", channel="team", media=["audio"])
    call_id = w.hub.room_calls["team"].call_id
    w.take("ann")
    w.drop("ben")
    w.advance(4)
    assert "ben" in w.hub.room_calls["team"].media
    w.advance(2)
    assert w.take("ann", "room_call_member") == [{"type": "room_call_member", "channel": "team", "call_id": call_id,
                                                  "user_id": "ben", "event": "left", "reason": "peer_disconnected"}]
    w.login("ben", "ben2")
    w.send("ben2", type="join", channel="team")
    w.send("ben2", type="room_call_join", channel="team", media=["audio"])
    assert w.take("ben2", "room_call_joined")[0]["participants"] == [{"user_id": "ann", "media": ["audio"]}]
    w.hub.check_invariants()


def test_last_one_out_ends_the_call_and_leaving_the_room_leaves_its_call():
    w = Wire()
    room(w, "ann", "ben")
    for u in ("ann", "ben"):
        w.send(u, type="room_call_join", channel="team", media=["audio"])
    w.take("ann"), w.take("ben")
    w.send("ben", type="leave", channel="team")
    assert w.take("ann", "room_call_member")[0]["reason"] == "left_room"
    w.send("ann", type="room_call_leave", channel="team")
    assert w.hub.room_calls == {} and w.hub.room_call_ids == {} and w.hub.status("ann") == "online"
    w.send("ann", type="room_call_leave", channel="team")
    assert w.take("ann", "error")[-1]["code"] == p.BAD_MESSAGE


def test_room_call_and_one_to_one_calls_make_each_other_busy():
    w = Wire()
    room(w, "ann", "ben")
    w.login("cat")
    w.send("ann", type="room_call_join", channel="team", media=["audio"])
    w.send("cat", type="call_incoming", to="ann", call_id="c1", media=["audio"])
    assert w.take("cat", "call_rejected")[0]["reason"] == "busy"
    w.send("ann", type="call_incoming", to="cat", call_id="c2", media=["audio"])
    assert w.take("ann", "error")[-1]["code"] == p.BUSY
    w.send("ben", type="call_incoming", to="cat", call_id="c3", media=["audio"])
    w.send("cat", type="call_accepted", to="ben", call_id="c3")
    w.send("ben", type="room_call_join", channel="team", media=["audio"])
    assert w.take("ben", "error")[-1]["code"] == p.BUSY
    w.send("ben", type="join", channel="nope")
    w.send("cat", type="room_call_join", channel="team", media=["audio"])
    assert w.take("cat", "error")[-1] == {"type": "error", "code": "bad_message", "ref": "team",
                                          "message": "join room 'team' before its call"}
    w.hub.check_invariants()


def test_after_a_restart_the_first_back_restarts_the_call_under_its_old_id():
    w = Wire()
    room(w, "ann", "ben")
    w.send("ann", type="room_call_join", channel="team", media=["audio"], call_id="room-abc")
    assert w.take("ann", "room_call_joined")[0]["call_id"] == "room-abc"
    w.send("ben", type="room_call_join", channel="team", media=["audio"], call_id="room-other")
    assert w.take("ben", "room_call_joined")[0]["call_id"] == "room-abc"  # the call the room has wins


def test_a_newcomer_gets_the_rooms_latest_lines_and_a_rejoin_of_a_member_does_not():
    w = Wire()
    room(w, "ann", "ben")
    for i in range(60):
        w.send("ann", type="channel_message", channel="team", text=f"line {i}")
    w.login("cat")
    w.send("cat", type="join", channel="team")
    got = w.take("cat")
    assert got[0]["type"] == "joined"
    assert [m["text"] for m in got[1:]] == [f"line {i}" for i in range(10, 60)]
    assert all(m["from"] == "ann" and m["ts"] == 1000.0 for m in got[1:])
    w.send("cat", type="join", channel="team")
    assert [m["type"] for m in w.take("cat")] == ["joined"]
    for u in ("ann", "ben", "cat"):
        w.send(u, type="leave", channel="team")
    assert "team" not in w.hub.history
