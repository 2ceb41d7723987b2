"""Which server to use: the configured one, else one found on the LAN, else an embedded one we host and advertise."""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass, field

from server import HubConfig, SignalingServer
from shared import __version__

log = logging.getLogger("callbox.startup")


@dataclass
class Chosen:
    url: str
    how: str  # configured, discovered, hosted
    found: list = field(default_factory=list)  # every server discovery saw, to offer in settings
    server: SignalingServer | None = None  # the embedded one, when we host
    advertiser: object | None = None

    async def close(self) -> None:
        if self.advertiser is not None:
            await self.advertiser.stop()
            self.advertiser = None
        if self.server is not None:
            await self.server.stop()
            self.server = None


async def choose_server(configured: str, *, name: str, port: int = 8765, host: str = "0.0.0.0",
                        discover: bool = True, interfaces=None, timeout: float = 1.5) -> Chosen:
    if configured:
        return Chosen(configured, "configured")
    found = []
    if discover:
        from .discovery import find_servers

        found = await find_servers(timeout, interfaces=interfaces)
        if found:
            log.info("found %d Callbox server(s) on the LAN; using %s", len(found), found[0].url)
            return Chosen(found[0].url, "discovered", found)
    server = await _host(host, port)
    advertiser = None
    if discover:
        from .discovery import Advertiser

        advertiser = Advertiser()
        try:
            await advertiser.start(server.port, name=f"Callbox ({name})", version=__version__,
                                   interfaces=interfaces)
        except Exception as exc:  # no multicast here: we still host, others can type our address
            log.warning("could not advertise the embedded server: %s", exc)
            advertiser = None
    return Chosen(f"ws://127.0.0.1:{server.port}", "hosted", found, server, advertiser)


async def _host(host: str, port: int) -> SignalingServer:
    """Start the embedded server on the preferred port, or on any free one if that is taken."""
    for attempt in (port, 0):
        server = SignalingServer(host, attempt, config=HubConfig())
        try:
            await server.start()
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or attempt == 0:
                raise
            log.info("port %d is taken; hosting on a free port", port)
            continue
        log.info("hosting the embedded server on %s", server.url)
        return server
    raise AssertionError("unreachable")
