"""Network namespaces for tests: a Lan that has only loopback, processes run inside it, and linked islands.

Nothing here can reach a real network. A Lan is a fresh network namespace (made by `unshare -n`) whose only
interface is its own `lo`, set up for multicast so that mDNS works inside it, with HOST_ADDRESS on it besides
127.0.0.1 so that WebRTC has an address to offer. `islands()` makes two of them, each
with one more interface, cb0 (198.18.0.1/24 in a, 198.18.0.2/24 in b: RFC 2544's benchmarking range), whose far
end sits in a third namespace, the switch, that has no address at all. The islands are *cut* while the switch
keeps its two ports apart, and joined when its bridge holds both: cb0 stays up with carrier and its address the
whole time, as when a switch port is isolated, so each island reaches its own 198.18.0.x, mDNS works inside it,
and nothing crosses; `join()` lets multicast and TCP across, `cut()` stops them again. (Setting cb0 down instead
works too, but while it is down every mDNS send on it fails with ENETUNREACH, which zeroconf logs as a warning:
not what a machine whose peer left the LAN sees.)

Every process started here, the namespaces' holders included, gets SIGKILL if the test process dies
(`setpriv --pdeathsig KILL`), and leaving a Lan ends them all: SIGTERM to each spawned process group, SIGKILL
after a grace, then SIGKILL to anything still in the namespace, whoever started it. Needs root (or
CAP_SYS_ADMIN and CAP_NET_ADMIN), util-linux (unshare, nsenter, setpriv) and iproute2 (ip), and veth and
bridge in the kernel; require_netns() skips a test without them, or fails it under CALLBOX_REQUIRE_MULTICAST=1.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from tests.components import _require

ISLAND_ADDRESSES = ("198.18.0.1", "198.18.0.2")
# A Lan's own address besides 127.0.0.1, on its lo, as a machine has a LAN address: WebRTC (aioice) never
# offers a loopback address as an ICE candidate, so without it two apps in the Lan could not call each other.
# islands() do without: their cb0 addresses serve.
HOST_ADDRESS = "198.18.1.1"
COMMAND_TIMEOUT = 10.0  # seconds any one setup command (unshare, ip) may take
GRACE = 2.0  # seconds between SIGTERM and SIGKILL
LINE_LIMIT = 1 << 20  # longest stdout line kept; a longer one is replaced by a note

Event = dict[str, Any] | str  # a JSON object from a line of stdout, or the line itself when it is not one


class LabError(RuntimeError):
    """The harness could not do what it was asked, or a process ended before printing the event awaited."""


def _guarded(*argv: str) -> list[str]:
    """argv run so that the kernel kills it (and what it execs) when the test process dies."""
    return ["setpriv", "--pdeathsig", "KILL", *argv]


async def _run(*argv: str, stdin: str = "") -> None:
    proc = await asyncio.create_subprocess_exec(
        *_guarded(*argv), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        async with asyncio.timeout(COMMAND_TIMEOUT):
            _, err = await proc.communicate(stdin.encode())
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise LabError(f"{' '.join(argv)} took over {COMMAND_TIMEOUT:g} s") from None
    if proc.returncode:
        raise LabError(f"{' '.join(argv)} failed ({proc.returncode}): {err.decode(errors='replace').strip()}")


def _netns_id(pid: int | str) -> tuple[int, int]:
    st = os.stat(f"/proc/{pid}/ns/net")
    return st.st_dev, st.st_ino


class Proc:
    """A process in a Lan: `events` fills with what it prints on stdout, its stderr goes to `log`."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, log: Path):
        self.name, self.log = name, log
        self.pid = process.pid
        self.events: list[Event] = []
        self._process = process
        self._grew = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    async def _read(self) -> None:
        while True:
            try:
                line = await self._process.stdout.readline()
            except ValueError:  # longer than LINE_LIMIT: asyncio dropped it
                line = f"<a line over {LINE_LIMIT} bytes>\n".encode()
            if not line:
                break
            text = line.decode(errors="replace").rstrip("\r\n")
            try:
                event = json.loads(text)
            except ValueError:
                event = text
            self.events.append(event if isinstance(event, dict) else text)
            self._grew.set()
        self._grew.set()

    async def wait_event(self, predicate: str | Callable[[Event], bool], timeout: float = 10.0) -> Event:
        """The first event, printed already or to come, that `predicate` accepts; a string matches the JSON
        objects whose "event" is that string. Raises TimeoutError after `timeout` seconds, LabError if stdout
        closes first; either message ends with the tail of stderr."""
        match = predicate if callable(predicate) else lambda e: isinstance(e, dict) and e.get("event") == predicate
        seen = 0
        try:
            async with asyncio.timeout(timeout):
                while True:
                    for event in self.events[seen:]:
                        if match(event):
                            return event
                    seen = len(self.events)
                    if self._reader.done():
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._process.wait(), GRACE)
                        raise LabError(f"{self.name} closed its stdout (exit code {self.returncode}) without "
                                       f"the event awaited{self._context()}")
                    self._grew.clear()
                    await self._grew.wait()
        except TimeoutError:
            raise TimeoutError(f"{self.name}: no such event within {timeout:g} s{self._context()}") from None

    async def wait(self, timeout: float = 10.0) -> int:
        """Its exit code, once it exits; TimeoutError, with the tail of stderr, if it runs past `timeout` s."""
        try:
            return await asyncio.wait_for(self._process.wait(), timeout)
        except TimeoutError:
            raise TimeoutError(f"{self.name} still runs after {timeout:g} s{self._context()}") from None

    def kill(self) -> None:
        """SIGKILL to its process group (it and what it started)."""
        self._signal(signal.SIGKILL)

    async def terminate(self, grace: float = GRACE) -> int | None:
        """SIGTERM to its process group, SIGKILL after `grace` seconds; returns its exit code."""
        self._signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self._process.wait(), grace)
        except TimeoutError:
            self.kill()
            await asyncio.wait_for(self._process.wait(), GRACE)
        await self._drain()
        return self.returncode

    def stderr_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError as e:
            return f"<cannot read {self.log}: {e}>"

    async def _drain(self) -> None:
        """Let the reader take what is left in the pipe, then stop it (a stray child may hold stdout open)."""
        await asyncio.wait([self._reader], timeout=GRACE)
        self._reader.cancel()

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)

    def _context(self) -> str:
        return f"\n  last events: {self.events[-5:]}\n  stderr ({self.log}):\n{self.stderr_tail()}"


class Lan:
    """A network namespace with only loopback (up, multicast on, 224.0.0.0/4 routed to it, `host_address` on it),
    for `async with`.

    `address` is its cb0 address in islands(), else None. Logs go to `logdir` (a new temporary directory by
    default), and stay: a test that fails inside `async with` prints every process's exit code and stderr tail.
    """

    def __init__(self, name: str = "lan", *, logdir: str | Path | None = None, host_address: str | None = HOST_ADDRESS):
        self.name = name
        self.host_address = host_address
        self.logdir = Path(logdir) if logdir is not None else Path(tempfile.mkdtemp(prefix=f"lanlab-{name}-"))
        self.address: str | None = None
        self.procs: list[Proc] = []
        self.pid = 0  # the holder's: /proc/PID/ns/net is the namespace
        self._holder: asyncio.subprocess.Process | None = None
        self._netns = (0, 0)
        self._switch: Lan | None = None  # islands(): the namespace whose bridge joins this one to its twin

    async def __aenter__(self) -> Lan:
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        await self.close()
        if exc is not None and self.procs:
            print(self.report(), file=sys.stderr)

    @property
    def netns(self) -> str:
        return f"/proc/{self.pid}/ns/net"

    async def _start(self) -> None:
        self._holder = await asyncio.create_subprocess_exec(
            *_guarded("unshare", "--net", "sleep", "infinity"), stdin=subprocess.DEVNULL
        )
        self.pid = self._holder.pid
        # Until unshare has run, /proc/PID/ns/net is still this process's namespace: never configure (or sweep)
        # that one.
        own = _netns_id("self")
        async with asyncio.timeout(COMMAND_TIMEOUT):
            while True:
                with contextlib.suppress(OSError):  # gone already: returncode tells
                    if (netns := _netns_id(self.pid)) != own:
                        break
                if self._holder.returncode is not None:
                    raise LabError(f"unshare --net exited ({self._holder.returncode}): cannot make a namespace")
                await asyncio.sleep(0.005)
        self._netns = netns
        await self.ip("link set dev lo up", "link set dev lo multicast on", "route add 224.0.0.0/4 dev lo",
                      *([f"addr add {self.host_address}/32 dev lo"] if self.host_address else []))

    async def ip(self, *commands: str) -> None:
        """Run `ip` commands (e.g. "link set dev lo up") inside the namespace; raises LabError if one fails."""
        await _run("nsenter", f"--net={self.netns}", "ip", "-batch", "-", stdin="\n".join(commands) + "\n")

    async def spawn(self, *argv: str, name: str, env: dict[str, str] | None = None) -> Proc:
        """Start argv inside the namespace, in a process group of its own, with `env` over this environment and
        PYTHONUNBUFFERED=1. Its stderr goes to LOGDIR/NAME.log."""
        if self._holder is None or self._holder.returncode is not None:
            raise LabError(f"Lan {self.name!r} is not running")
        log = self.logdir / f"{name}.log"
        with log.open("ab") as err:
            process = await asyncio.create_subprocess_exec(
                *_guarded("nsenter", f"--net={self.netns}", "--", *argv),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, limit=LINE_LIMIT,
                env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}, start_new_session=True,
            )
        proc = Proc(name, process, log)
        self.procs.append(proc)
        return proc

    async def join(self) -> None:
        """islands(): connect the two (idempotent)."""
        await self._wire("master sw")

    async def cut(self) -> None:
        """islands(): disconnect the two (idempotent); they start cut."""
        await self._wire("nomaster")

    async def _wire(self, how: str) -> None:
        if self._switch is None:
            raise LabError(f"Lan {self.name!r} is not one of islands()")
        await self._switch.ip(f"link set dev port-a {how}", f"link set dev port-b {how}")

    def report(self) -> str:
        """Each process's name, exit code and stderr tail."""
        return "\n".join(f"--- {self.name}/{p.name} (exit {p.returncode}), {p.log}:\n{p.stderr_tail()}"
                         for p in self.procs)

    async def close(self) -> None:
        """End every process in the namespace, then the namespace. Idempotent."""
        await asyncio.gather(*(p.terminate() for p in self.procs if p.returncode is None))
        if self._netns != (0, 0):
            await self._sweep()
        await asyncio.gather(*(p._drain() for p in self.procs))
        if self._holder is not None and self._holder.returncode is None:
            self._holder.kill()
            await asyncio.wait_for(self._holder.wait(), GRACE)

    async def _sweep(self) -> None:
        """SIGKILL every process in the namespace (those that left their process group too), until none is."""
        async with asyncio.timeout(COMMAND_TIMEOUT):
            while pids := [pid for pid in os.listdir("/proc") if pid.isdigit() and self._inside(pid)]:
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
                await asyncio.sleep(0.01)

    def _inside(self, pid: str) -> bool:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return False  # dead, waiting for its parent
            return _netns_id(pid) == self._netns
        except (OSError, IndexError):
            return False


@contextlib.asynccontextmanager
async def islands(*, logdir: str | Path | None = None) -> AsyncIterator[tuple[Lan, Lan]]:
    """Two Lans, a and b, each with cb0 at ISLAND_ADDRESSES[0] and [1], cut from each other until `join()`.
    Their logs go to one directory, `logdir` or a new temporary one."""
    logdir = logdir if logdir is not None else tempfile.mkdtemp(prefix="lanlab-islands-")
    async with (Lan("a", logdir=logdir, host_address=None) as a, Lan("b", logdir=logdir, host_address=None) as b,
                Lan("switch", logdir=logdir, host_address=None) as switch):
        await switch.ip(
            "link add name sw type bridge mcast_snooping 0",  # no IGMP snooping: flood multicast to every port
            "link set dev sw addrgenmode none up",  # no IPv6 link-local address: the switch never speaks
            f"link add dev port-a type veth peer name cb0 netns {a.pid}",
            f"link add dev port-b type veth peer name cb0 netns {b.pid}",
            "link set dev port-a addrgenmode none up",
            "link set dev port-b addrgenmode none up",
        )
        for lan, address in zip((a, b), ISLAND_ADDRESSES, strict=True):
            await lan.ip(f"addr add {address}/24 dev cb0", "link set dev cb0 up")
            lan.address, lan._switch = address, switch
        yield a, b


@functools.cache
def netns_unavailable() -> str | None:
    """Why Lan and islands() cannot run here, or None if they can: the tools are there, and a throwaway
    namespace gets lo up, a veth pair and a bridge."""
    for tool, package in (("unshare", "util-linux"), ("nsenter", "util-linux"), ("setpriv", "util-linux"),
                          ("ip", "iproute2")):
        if shutil.which(tool) is None:
            return f"{tool} not found (Debian package {package})"
    probe = "ip link set dev lo up && ip link add dev p0 type veth peer name p1 && ip link add name sw type bridge"
    try:
        r = subprocess.run(["unshare", "--net", "sh", "-c", probe], capture_output=True, text=True,
                           timeout=COMMAND_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"cannot make a network namespace: {e}"
    if r.returncode:
        return ("cannot make a network namespace with a veth pair and a bridge (needs root, or CAP_SYS_ADMIN and "
                f"CAP_NET_ADMIN, and veth and bridge in the kernel): {r.stderr.strip()}")
    return None


def require_netns() -> None:
    _require(netns_unavailable(), "CALLBOX_REQUIRE_MULTICAST", "network namespaces")
