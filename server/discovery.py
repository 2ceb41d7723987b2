"""LAN discovery over mDNS/DNS-SD: LanView watches the Callbox servers advertised, Advertiser announces one."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.protocol import PROTOCOL_VERSION

log = logging.getLogger("callbox.discovery")

SERVICE_TYPE = "_callbox._tcp.local."

# What `interfaces` takes, as zeroconf does: IPv4/IPv6 address strings of the interfaces to use (e.g.
# ["127.0.0.1"]) or IPv6 interface indexes. None means zeroconf's default: every interface of the machine.
Interfaces = Sequence[str | int] | None

REGISTER_TIMEOUT = 10.0  # probing + announcing normally takes about 1 s
UNREGISTER_TIMEOUT = 5.0  # the goodbye packets normally take well under 1 s
CLOSE_TIMEOUT = 5.0
# Our records live this long in other machines' caches. Short, so that a server that died without its goodbye
# packets (SIGKILL, power cut) leaves every view within this time: browsers ask again at about 80 % of it, and
# a living responder answers. The defaults (120 s for addresses, 75 min for the rest) would keep a dead server.
RECORD_TTL = 15
# How often a view asks the LAN again. zeroconf's browser asks at start (0.1, 1, 5, 14 s) and afterwards only
# before the records it has expire, so a server already running on a network joined later (two islands meeting,
# a laptop coming onto the office Wi-Fi) would be found only at the next refresh. One small packet each time;
# what the view knows goes with it as known answers (RFC 6762 section 7.1), so only what is new is answered.
ASK_EVERY = 5.0
RESOLVE_TIMEOUT = 3.0
_MAX_LABEL_BYTES = 56  # DNS labels are at most 63 bytes; keep room for zeroconf's "-2" rename on a clash


class DiscoveryError(RuntimeError):
    """Advertising could not start (no mDNS sockets, no address to advertise, zeroconf missing...)."""


@dataclass(frozen=True)
class FoundServer:
    """One Callbox server that answered a browse."""

    name: str  # the instance name, e.g. "Alice's Callbox"
    host: str  # the address to connect to (the best of `addresses` for this machine)
    port: int
    url: str  # ws://HOST:PORT, or wss:// when the server says tls=1
    properties: dict[str, str] = field(default_factory=dict, hash=False)  # the TXT record
    addresses: tuple[str, ...] = ()  # every address it advertised

    @property
    def version(self) -> str | None:
        return self.properties.get("version")

    @property
    def tls(self) -> bool:
        return self.properties.get("tls") == "1"

    @property
    def token_required(self) -> bool:
        return self.properties.get("token") == "1"

    @property
    def server_id(self) -> str | None:
        return self.properties.get("id") or None

    @property
    def kind(self) -> str:
        return self.properties.get("kind") or "embedded"

    @property
    def started(self) -> float:
        try:
            return int(self.properties.get("started", "")) / 1000
        except ValueError:
            return float("inf")  # a server that does not say when it started ranks after those that do

    @property
    def rank(self) -> tuple:
        return rank(self.kind, self.started, self.server_id or self.url)


def rank(kind: str | None, started: float | None, server_id: str | None) -> tuple:
    """Where a server stands when several are advertised: the lowest wins. Every instance on the LAN computes
    it alone from the same TXT facts, so all agree without talking: a dedicated server beats an embedded one,
    then the one that started first, then the lower server id. None of these change while a server runs, so the
    choice cannot flap while users move."""
    return (0 if kind == "dedicated" else 1, started if started is not None else float("inf"), server_id or "")


# ------------------------------------------------------------------ browsing


class LanView:
    """Watches the `_callbox._tcp` services on the LAN until `stop()`: `servers` is what is advertised now.

    Servers appear as they announce themselves, change when their TXT record does, and leave with their goodbye
    packets, or RECORD_TTL after a server that died without one stops answering. `on_change` is called after
    each change. Never raises from start() (but on cancellation): with no network, no zeroconf, or multicast
    failing it logs why and sees nothing. `interfaces` restricts it (tests pass ["127.0.0.1"]).
    """

    def __init__(self, *, interfaces: Interfaces = None, on_change: Any = None):
        self.interfaces = interfaces
        self.on_change = on_change or (lambda: None)
        self.servers: dict[str, FoundServer] = {}  # by instance name
        self._azc: Any = None
        self._browser: Any = None
        self._resolving: dict[str, asyncio.Task] = {}
        self._asking: asyncio.Task | None = None

    @property
    def running(self) -> bool:
        return self._azc is not None

    def sorted(self) -> list[FoundServer]:
        """The servers advertised now, best first (see rank)."""
        return sorted(self.servers.values(), key=lambda s: s.rank)

    async def start(self) -> None:
        try:
            from zeroconf import DNSQuestionType
            from zeroconf.asyncio import AsyncServiceBrowser, AsyncZeroconf
        except ImportError as e:
            log.warning("LAN discovery is unavailable: the Python package zeroconf is not installed (%s)", e)
            return
        try:
            self._azc = AsyncZeroconf(interfaces=_zeroconf_interfaces(self.interfaces))
        except Exception as e:  # OSError from the sockets, RuntimeError "No interfaces to listen on", ...
            log.warning("LAN discovery sees nothing: cannot open mDNS sockets on %s: %s",
                        _describe(self.interfaces), e)
            return
        try:
            # QM questions, so that answers come by multicast to every listener. To a QU question (zeroconf's
            # default for a first query) a responder that multicast its records lately answers by unicast to
            # port 5353, and when several mDNS stacks share that port on one machine (SO_REUSEPORT: this app's
            # own Advertiser, another Callbox, avahi) the kernel hands the datagram to one of them, often not the
            # asker. The cost of QM: a responder that multicast the answer less than 1 s ago waits out that second.
            self._browser = AsyncServiceBrowser(self._azc.zeroconf, SERVICE_TYPE, handlers=[self._on_service],
                                                question_type=DNSQuestionType.QM)
            self._asking = asyncio.get_running_loop().create_task(self._ask_again())
        except Exception as e:
            log.warning("LAN discovery failed on %s: %s", _describe(self.interfaces), e)
            await self.stop()

    async def stop(self) -> None:
        """Stop watching. Idempotent; never raises (but on cancellation)."""
        azc, browser, self._azc, self._browser = self._azc, self._browser, None, None
        tasks = [*self._resolving.values(), *([self._asking] if self._asking else [])]
        self._asking = None
        self._resolving.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if browser is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(browser.async_cancel(), CLOSE_TIMEOUT)
        if azc is not None:
            await _close(azc)

    async def _ask_again(self) -> None:
        from zeroconf import DNSOutgoing, DNSQuestion, current_time_millis
        from zeroconf.const import _CLASS_IN, _FLAGS_QR_QUERY, _TYPE_PTR

        while True:
            await asyncio.sleep(ASK_EVERY)
            try:
                zc = self._azc.zeroconf
                out = DNSOutgoing(_FLAGS_QR_QUERY)
                out.add_question(DNSQuestion(SERVICE_TYPE, _TYPE_PTR, _CLASS_IN))
                now = current_time_millis()
                for record in zc.cache.get_all_by_details(SERVICE_TYPE, _TYPE_PTR, _CLASS_IN):
                    if not record.is_stale(now):
                        out.add_answer_at_time(record, now)
                zc.async_send(out)
            except Exception as e:  # a failed send now and then is normal on a flapping network
                log.debug("discovery: asking again failed: %s", e)

    def _on_service(self, zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
        from zeroconf import ServiceStateChange

        if state_change is ServiceStateChange.Removed:
            task = self._resolving.pop(name, None)
            if task is not None:
                task.cancel()
            if self.servers.pop(name, None) is not None:
                log.debug("discovery: %s left", name)
                self._changed()
            return
        task = self._resolving.get(name)
        if task is None or task.done():  # Added, or Updated (a new TXT record): (re)read it
            self._resolving[name] = asyncio.get_running_loop().create_task(self._resolve(name))

    async def _resolve(self, name: str) -> None:
        from zeroconf import DNSQuestionType
        from zeroconf.asyncio import AsyncServiceInfo

        try:
            info = AsyncServiceInfo(SERVICE_TYPE, name)
            if not await info.async_request(self._azc.zeroconf, RESOLVE_TIMEOUT * 1000,
                                            question_type=DNSQuestionType.QM):
                log.debug("discovery: %s did not resolve in time", name)
                return
            server = _found_server(info)
            if server is not None and self.servers.get(name) != server:
                self.servers[name] = server
                log.debug("discovery: %s at %s (%s)", name, server.url, server.properties)
                self._changed()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.debug("discovery: resolving %s failed: %s", name, e)

    def _changed(self) -> None:
        try:
            self.on_change()
        except Exception:
            log.exception("discovery: change handler failed")


async def find_servers(timeout: float = 1.5, *, interfaces: Interfaces = None) -> list[FoundServer]:
    """Browse the LAN for Callbox servers for `timeout` seconds and return those resolved by then, best first.

    Never raises (except on cancellation); see LanView.
    """
    view = LanView(interfaces=interfaces)
    await view.start()
    try:
        await asyncio.sleep(max(0.0, timeout))
    finally:
        await view.stop()
    servers = view.sorted()
    log.debug("discovery: %d server(s) on %s: %s", len(servers), _describe(interfaces), [s.url for s in servers])
    return servers


def _found_server(info: Any) -> FoundServer | None:
    """A FoundServer from a resolved AsyncServiceInfo, or None if it lacks an address or port."""
    addresses = tuple(info.parsed_scoped_addresses())
    if not addresses or not info.port:
        return None
    props = {str(k): "" if v is None else str(v) for k, v in info.decoded_properties.items()}
    host = _best_address(addresses)
    scheme = "wss" if props.get("tls") == "1" else "ws"
    name = info.name[: -len(SERVICE_TYPE) - 1] if info.name.endswith("." + SERVICE_TYPE) else info.name
    return FoundServer(
        name=name,
        host=host,
        port=int(info.port),
        url=f"{scheme}://{_url_host(host)}:{int(info.port)}",
        properties=props,
        addresses=addresses,
    )


def _best_address(addresses: Sequence[str]) -> str:
    """The address to dial: IPv4 before IPv6, one on a network this machine is on before others, loopback last."""
    local = _local_networks()

    def order(addr: str) -> tuple[int, int, int]:
        try:
            ip = ipaddress.ip_address(addr.split("%", 1)[0])
        except ValueError:
            return (3, 1, 1)
        on_link = any(ip in net for net in local if net.version == ip.version)
        return (int(ip.is_loopback) * 2 + int(ip.version == 6), int(not on_link), int(ip.is_link_local))

    return min(addresses, key=order)


def _local_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    try:
        import ifaddr

        nets = []
        for adapter in ifaddr.get_adapters():
            for ip in adapter.ips:
                addr = ip.ip[0] if isinstance(ip.ip, tuple) else ip.ip
                with contextlib.suppress(ValueError):
                    nets.append(ipaddress.ip_network(f"{addr}/{ip.network_prefix}", strict=False))
        return nets
    except Exception as e:  # no ifaddr, or the OS refused: just don't prefer any network
        log.debug("discovery: cannot list local networks: %s", e)
        return []


def _url_host(addr: str) -> str:
    return f"[{addr.replace('%', '%25')}]" if ":" in addr else addr


# ------------------------------------------------------------------ advertising


def server_facts(config: Any) -> dict[str, str]:
    """The TXT facts of a server (a HubConfig) that rank() reads: its id, kind and start time in ms."""
    return {"id": config.server_id, "kind": config.kind, "started": str(int(config.started * 1000))}


class Advertiser:
    """Registers this machine's embedded server as a `_callbox._tcp` service until `stop()`.

    In the app `interfaces` stays None: the service is announced on every interface with the machine's LAN
    addresses. Tests pass interfaces=["127.0.0.1"], which keeps every packet on loopback.
    """

    def __init__(self) -> None:
        self._azc: Any = None
        self._info: Any = None

    @property
    def running(self) -> bool:
        return self._azc is not None

    @property
    def name(self) -> str | None:
        """The instance name as registered: `name`, or `name-2`... if another server on the LAN had it."""
        if self._info is None:
            return None
        return self._info.name[: -len(SERVICE_TYPE) - 1]

    @property
    def addresses(self) -> list[str]:
        return list(self._info.parsed_addresses()) if self._info is not None else []

    async def start(
        self,
        port: int,
        *,
        name: str,
        version: str,
        tls: bool = False,
        token_required: bool = False,
        facts: dict[str, str] | None = None,
        interfaces: Interfaces = None,
    ) -> None:
        """Announce a server listening on `port`; returns once the name is probed and announced.

        `facts` go into the TXT record beside version, proto, tls and token: what every instance needs to choose
        the same server (`id`, `kind`, `started` in ms; see rank). With an `id` the instance name ends in it, so
        it is unique on the LAN without the second of probing for a clash (RFC 6762 section 8): a server that
        takes over after another was lost is seen at once.

        Raises DiscoveryError (the app can go on without being discoverable) if it cannot.
        """
        if self._azc is not None:
            raise RuntimeError("Advertiser is already running; stop() it first")
        if not 0 < port < 65536:
            raise ValueError(f"not a port: {port!r}")
        try:
            from zeroconf import ServiceInfo
            from zeroconf.asyncio import AsyncZeroconf
        except ImportError as e:
            raise DiscoveryError(f"the Python package zeroconf is not installed ({e})") from e

        try:
            addresses = _advertised_addresses(interfaces)
        except ValueError as e:
            raise DiscoveryError(f"bad interfaces {interfaces!r}: {e}") from e
        if not addresses:
            raise DiscoveryError(f"no address to advertise on {_describe(interfaces)}")
        server_id = (facts or {}).get("id")
        label = _instance_label(name, suffix=f" {server_id[:6]}" if server_id else "")
        properties = {
            "version": version,
            "proto": str(PROTOCOL_VERSION),
            "tls": "1" if tls else "0",
            "token": "1" if token_required else "0",
            **(facts or {}),
        }
        try:
            info = ServiceInfo(
                SERVICE_TYPE,
                f"{label}.{SERVICE_TYPE}",
                port=port,
                properties=properties,
                server=f"{_host_label()}-{port}.local.",
                parsed_addresses=addresses,
                host_ttl=RECORD_TTL,
                other_ttl=RECORD_TTL,
            )
        except Exception as e:
            raise DiscoveryError(f"cannot describe the service {label!r}: {e}") from e
        try:
            azc = AsyncZeroconf(interfaces=_zeroconf_interfaces(interfaces))
        except Exception as e:
            raise DiscoveryError(f"cannot open mDNS sockets on {_describe(interfaces)}: {e}") from e
        try:
            announced = await azc.async_register_service(info, allow_name_change=True,
                                                         cooperating_responders=bool(server_id))
            await asyncio.wait_for(announced, REGISTER_TIMEOUT)
        except BaseException as e:
            await _close(azc)
            if isinstance(e, TimeoutError):
                raise DiscoveryError(f"registering {label!r} took over {REGISTER_TIMEOUT:g} s") from e
            if isinstance(e, Exception):
                raise DiscoveryError(f"cannot register {label!r}: {e}") from e
            raise
        self._azc, self._info = azc, info
        log.info("advertising %r (%s) on port %d at %s", self.name, SERVICE_TYPE, port, ", ".join(addresses))

    async def stop(self) -> None:
        """Send the goodbye packets and close the sockets. Idempotent; never raises (but on cancellation)."""
        azc, info = self._azc, self._info
        self._azc = self._info = None
        if azc is None:
            return
        try:
            goodbyes = await azc.async_unregister_service(info)
            await asyncio.wait_for(goodbyes, UNREGISTER_TIMEOUT)
        except Exception as e:
            log.warning("stopping the advertisement of %r: goodbye not sent: %s", info.name, e)
        finally:
            await _close(azc)
        log.info("no longer advertising %r", info.name[: -len(SERVICE_TYPE) - 1])


def _advertised_addresses(interfaces: Interfaces) -> list[str]:
    """The addresses to put in the A/AAAA records.

    None: every IPv4 address of the machine and its IPv6 addresses that are neither link-local (they need a
    scope a peer can't know) nor loopback; loopback addresses only when the machine has nothing else.
    A list: its address strings, and the non-link-local IPv6 addresses of the interfaces given by index.
    """
    try:
        import ifaddr

        adapters = ifaddr.get_adapters()
    except Exception as e:
        log.debug("discovery: cannot list interfaces: %s", e)
        adapters = []
    if interfaces is not None:
        result: list[str] = []
        for iface in interfaces:
            if isinstance(iface, int):
                for adapter in adapters:
                    if adapter.index == iface:
                        result += [a for a in _adapter_addresses(adapter) if ":" in a and not _is_link_local(a)]
            else:
                result.append(str(ipaddress.ip_address(iface)))
        return list(dict.fromkeys(result))
    everything = [a for adapter in adapters for a in _adapter_addresses(adapter)]
    lan = [a for a in everything if not _is_link_local(a) and not ipaddress.ip_address(a).is_loopback]
    if lan:
        return list(dict.fromkeys(sorted(lan, key=lambda a: ":" in a)))  # IPv4 first
    return [a for a in everything if ipaddress.ip_address(a).is_loopback] or ["127.0.0.1"]


def _adapter_addresses(adapter: Any) -> list[str]:
    return [ip.ip[0] if isinstance(ip.ip, tuple) else ip.ip for ip in adapter.ips]


def _is_link_local(addr: str) -> bool:
    return ipaddress.ip_address(addr.split("%", 1)[0]).is_link_local


def _instance_label(name: str, suffix: str = "") -> str:
    """A service instance name: printable, at most _MAX_LABEL_BYTES of UTF-8 (cut at a character boundary),
    ending in `suffix`."""
    label = " ".join("".join(c if c.isprintable() else " " for c in name).split()) or "Callbox"
    raw = label.encode()[:_MAX_LABEL_BYTES - len(suffix.encode())]
    return (raw.decode(errors="ignore").strip() or "Callbox") + suffix


def _host_label() -> str:
    """A DNS host label for the SRV target, unique per server with the port appended: callbox-HOSTNAME."""
    host = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().split(".")[0].lower()).strip("-")[:40]
    return f"callbox-{host}" if host else "callbox"


def _zeroconf_interfaces(interfaces: Interfaces) -> Any:
    from zeroconf import InterfaceChoice

    return InterfaceChoice.All if interfaces is None else list(interfaces)


def _describe(interfaces: Interfaces) -> str:
    return "all interfaces" if interfaces is None else f"interfaces {list(interfaces)}"


async def _close(azc: Any) -> None:
    try:
        await asyncio.wait_for(azc.async_close(), CLOSE_TIMEOUT)
    except Exception as e:
        log.debug("discovery: closing zeroconf: %s", e)
