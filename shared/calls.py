"""The call state machine: one transition table and a small Call class, used by the server's hub and the client."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class State(StrEnum):
    RINGING = "ringing"  # offered, not yet answered
    CONNECTING = "connecting"  # accepted; media being negotiated
    ACTIVE = "active"  # media flowing
    RECONNECTING = "reconnecting"  # accepted, but media stopped arriving; being repaired
    ENDED = "ended"


class Event(StrEnum):
    ACCEPT = "accept"
    REJECT = "reject"  # callee declines (reason busy, rejected, ...)
    CANCEL = "cancel"  # caller gives up before an answer
    TIMEOUT = "timeout"  # nobody answered in time
    MEDIA_UP = "media_up"
    MEDIA_DOWN = "media_down"
    HANGUP = "hangup"  # either party ends an accepted call
    DISCONNECT = "disconnect"  # a party went away for good
    FAIL = "fail"  # media could not be established or repaired


S, E = State, Event
LIVE = {S.RINGING, S.CONNECTING, S.ACTIVE, S.RECONNECTING}
ESTABLISHED = {S.CONNECTING, S.ACTIVE, S.RECONNECTING}

TRANSITIONS: dict[tuple[State, Event], State] = {
    (S.RINGING, E.ACCEPT): S.CONNECTING,
    (S.RINGING, E.REJECT): S.ENDED,
    (S.RINGING, E.CANCEL): S.ENDED,
    (S.RINGING, E.TIMEOUT): S.ENDED,
    (S.RINGING, E.DISCONNECT): S.ENDED,
    (S.RINGING, E.HANGUP): S.ENDED,
    (S.CONNECTING, E.MEDIA_UP): S.ACTIVE,
    (S.CONNECTING, E.MEDIA_DOWN): S.CONNECTING,
    (S.ACTIVE, E.MEDIA_UP): S.ACTIVE,
    (S.ACTIVE, E.MEDIA_DOWN): S.RECONNECTING,
    (S.RECONNECTING, E.MEDIA_UP): S.ACTIVE,
    (S.RECONNECTING, E.MEDIA_DOWN): S.RECONNECTING,
}
for _state in ESTABLISHED:
    for _event in (E.HANGUP, E.DISCONNECT, E.FAIL):
        TRANSITIONS[(_state, _event)] = S.ENDED

class IllegalTransition(Exception):
    """An event that the call's current state does not allow. The call is unchanged."""

    def __init__(self, call_id: str, state: State, event: Event):
        super().__init__(f"call {call_id} is {state.value}; '{event.value}' is not allowed now")
        self.state = state
        self.event = event


@dataclass
class Call:
    """One call between a caller and a callee, as either side (or the server) sees it."""

    call_id: str
    caller: str
    callee: str
    media: tuple[str, ...] = ("audio",)
    state: State = S.RINGING
    reason: str | None = None
    history: list[tuple[State, float]] = field(default_factory=list)

    def apply(self, event: Event, *, now: float = 0.0, reason: str | None = None) -> State:
        """Move along the table; raise IllegalTransition (and change nothing) if the event is not allowed."""
        try:
            new = TRANSITIONS[(self.state, event)]
        except KeyError:
            raise IllegalTransition(self.call_id, self.state, event) from None
        if new is S.ENDED:
            self.reason = reason or event.value
        if new is not self.state:
            self.history.append((new, now))
        self.state = new
        return new

    @property
    def live(self) -> bool:
        return self.state in LIVE

    @property
    def established(self) -> bool:
        return self.state in ESTABLISHED

    def parties(self) -> tuple[str, str]:
        return (self.caller, self.callee)

    def peer_of(self, user_id: str) -> str:
        if user_id == self.caller:
            return self.callee
        if user_id == self.callee:
            return self.caller
        raise ValueError(f"{user_id} is not a party of call {self.call_id}")

    def involves(self, user_id: str) -> bool:
        return user_id in (self.caller, self.callee)


def glare_winner(a: str, b: str) -> str:
    """Both users called each other at once: both sides keep the call whose call_id sorts first."""
    return min(a, b)
