"""Callbox's signaling server: a pure hub behind a websockets transport, run standalone or embedded."""

from .hub import Hub, HubConfig
from .transport import SignalingServer

__all__ = ["Hub", "HubConfig", "SignalingServer"]
