"""The call state machine: the table's legal paths, and illegal events that raise and change nothing."""

import pytest

from shared.calls import TRANSITIONS, Call, Event, IllegalTransition, State, glare_winner


def test_happy_path_records_history():
    call = Call("c1", "alice", "bob", history=[(State.RINGING, 0.0)])
    call.apply(Event.ACCEPT, now=1.0)
    call.apply(Event.MEDIA_UP, now=1.5)
    call.apply(Event.MEDIA_DOWN, now=5.0)
    assert call.state is State.RECONNECTING and call.live and call.established
    call.apply(Event.MEDIA_UP, now=6.0)
    call.apply(Event.HANGUP, now=9.0, reason="hangup")
    assert call.state is State.ENDED and call.reason == "hangup" and not call.live
    assert [s for s, _ in call.history] == ["ringing", "connecting", "active", "reconnecting", "active", "ended"]


@pytest.mark.parametrize("event,reason", [(Event.REJECT, "busy"), (Event.CANCEL, "cancelled"),
                                          (Event.TIMEOUT, "no_answer"), (Event.DISCONNECT, "peer_disconnected")])
def test_ringing_can_end_many_ways(event, reason):
    call = Call("c1", "alice", "bob")
    call.apply(event, reason=reason)
    assert call.state is State.ENDED and call.reason == reason


def test_every_illegal_event_raises_and_changes_nothing():
    for state in State:
        for event in Event:
            if (state, event) in TRANSITIONS:
                continue
            call = Call("c1", "alice", "bob", state=state)
            with pytest.raises(IllegalTransition, match=f"call c1 is {state.value}; '{event.value}'"):
                call.apply(event)
            assert call.state is state and call.reason is None and call.history == []


def test_ended_is_final():
    assert not any(s is State.ENDED for s, _ in TRANSITIONS)


def test_parties():
    call = Call("c1", "alice", "bob")
    assert call.peer_of("alice") == "bob" and call.peer_of("bob") == "alice"
    assert call.involves("bob") and not call.involves("carol")
    with pytest.raises(ValueError):
        call.peer_of("carol")


def test_glare_winner_is_the_same_on_both_sides():
    assert glare_winner("b-2", "a-9") == glare_winner("a-9", "b-2") == "a-9"
