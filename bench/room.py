"""Room calls (a full mesh of pairs): CPU per client, join-to-first-audio, and memory over many joins and leaves.

CPU: every participant is a real headless client in its own process (`python -m client --headless --room team
--tone HZ --events`, no sound card), through a Callbox server in another, so psutil's cpu_times of one process is
one client's whole cost. Once every client has decoded AUDIBLE frames from every other (its --events media
lines), the bench waits WARMUP s and samples WINDOW s. Measured: a 4-person audio room, and a 3-person video room
at 320x240 (the app would send 480x360 to two peers, so each client process sets the size table of
client.core.media to 320x240 before it starts; the size received is read back from each client's --report).
Baseline, in the same run right after each room, for --rounds rounds: a 1:1 call (--call / --auto-answer) of two
such processes with the same media. Frames received per second in the window, the server's CPU and how busy the
rest of the machine was are shown too.

Join-to-first-audio, timed in this process on time.monotonic (like call_setup.py): engine `ann` here joins a
room call (the clock starts at join_room_call) until it has decoded audio from each other participant, then
leaves. Its peers are three headless clients of their own (room `side`), as in real life, where every participant
has its own machine; an informational second figure has all four engines in this process, so one event loop does
every side's work (and shows each peer's first audio from the joiner too). Baseline, interleaved join by join:
1:1 calls from `alice` here to `hal`, a headless --auto-answer process, from hal's accept (its --events line, wall
clock turned monotonic) to alice's first decoded audio (hal's own figure comes from its report), and 1:1 calls
between two engines here. The verdict compares the joiner with the caller, both here against peers elsewhere: each
offers once the server has answered (room_call_joined, call_accepted).

Memory: three engines in the call; one joins (until audio flows both ways with both others) and leaves (until
every pair's peer connection is closed) --cycles times after WARM_CYCLES not counted. This process's RSS, its asyncio
tasks, threads and live RTCPeerConnections are compared before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from _common import ServerProcess, ms, pct, start_callbox, start_engines, until, verdict
from call_setup import engine_call

ROOT = Path(__file__).resolve().parent.parent
ROOM = "team"
TONES = {"ann": 440, "ben": 550, "cat": 660, "dan": 770, "eve": 880, "fay": 990, "gus": 1100,
         "hal": 1210}
SIDE = "side"  # the room whose other participants are processes of their own (eve, fay, gus)
AUDIBLE = 50  # audio frames (20 ms each) from every peer before a client counts as hearing everyone
WARMUP = 3  # seconds after everyone hears everyone before the window opens
WINDOW = 10  # seconds of CPU measured
SAFETY = 240  # --duration each client gets: if this bench dies, its clients leave and exit by themselves
VIDEO = (320, 240)
TIMEOUT = 15  # seconds one join or call may take to bring audio both ways
MIN_FPS = 25  # below this, somewhere, a video figure is not one of a 30 fps call: the machine did not keep up

CPU_AUDIO_TARGET = 15.0  # % of one core, per client, 4-person audio room
CPU_VIDEO_TARGET = 45.0  # % of one core, per client, 3-person 320x240 video room
JOIN_TARGET = 1.5  # median room join -> first audio from a peer / median 1:1 accept -> first audio
RSS_TARGET = 30  # MB of growth allowed over CYCLES joins and leaves, past the warm-up
WARM_CYCLES = 10

# Runs the headless client, first forcing the outgoing video size when asked (argv[1]: "WxH" or ""). A watchdog
# thread ends it (SIGTERM: it leaves and reports) if this bench goes away, and at the latest after LIFETIME s.
LIFETIME = 600
LAUNCH = """
import os, signal, sys, threading, time
def watchdog(parent=os.getppid(), deadline=time.monotonic() + LIFETIME):
    while os.getppid() == parent and time.monotonic() < deadline:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(20)
    os._exit(3)
threading.Thread(target=watchdog, daemon=True).start()
size = sys.argv.pop(1)
if size:
    from client.core import media
    w, h = map(int, size.split("x"))
    media.VIDEO_SIZES.update({k: (w, h) for k in media.VIDEO_SIZES})
    media.SMALLEST_VIDEO = (w, h)
from client.cli import main
raise SystemExit(main(sys.argv[1:]))
""".replace("LIFETIME", str(LIFETIME))


# ---------------------------------------------------------------- headless clients, each in its own process


class Client:
    """One headless client process; follows its --events lines (what arrived from whom, and when)."""

    def __init__(self, user: str, proc: asyncio.subprocess.Process, report: Path):
        self.user, self.proc, self.report = user, proc, report
        self.ps = psutil.Process(proc.pid)
        self.media: dict[str, tuple[float, int, int]] = {}  # peer (or "call") -> (time, audio frames, video frames)
        self.log: list[str] = []
        self.in_call: dict[str, set[str]] = {}
        self.calls: dict[str, dict[str, float]] = {}  # call id -> state -> wall-clock time it was reached
        self._readers = [asyncio.create_task(self._events()), asyncio.create_task(self._stderr())]

    @classmethod
    async def start(cls, url: str, user: str, tmp: Path, run: str, *flags: str,
                    size: tuple[int, int] | None = None) -> Client:
        """A client with its profile in tmp/user (one identity key per user id for the whole run: the server binds
        a user id to the first key it sees) and its report in tmp/run-user.json."""
        home = tmp / user
        env = {**os.environ, "XDG_CONFIG_HOME": str(home / "config"), "XDG_DATA_HOME": str(home / "data")}
        report = tmp / f"{run}-{user}.json"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", LAUNCH, f"{size[0]}x{size[1]}" if size else "",
            "--headless", "--server", url, "--user", user, "--tone", str(TONES[user]), "--events",
            "--report", str(report), *flags,
            cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        return cls(user, proc, report)

    async def _events(self) -> None:
        async for raw in self.proc.stdout:
            try:
                e = json.loads(raw)
            except ValueError:
                continue
            if e.get("event") == "media":
                self.media[e.get("peer", "call")] = (time.monotonic(), e["audio_frames"], e["video_frames"])
            elif e.get("event") == "call":
                self.calls.setdefault(e["call_id"], {})[e["state"]] = e["time"]  # wall clock
            elif e.get("event") == "room":
                self.in_call[e["room"]] = set(e["call"])  # who the room's call has, as this client last heard

    async def _stderr(self) -> None:
        async for raw in self.proc.stderr:  # read it all, so a full pipe never blocks the client
            self.log.append(raw.decode(errors="replace").rstrip())

    def hears(self, peers: int) -> bool:
        return len(self.media) >= peers and all(a >= AUDIBLE for _, a, _ in self.media.values())

    async def stop(self, timeout: float = 20) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)  # the headless client leaves, writes its report and exits
        try:
            rc = await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            rc = await self.proc.wait()
        await asyncio.gather(*self._readers)
        return rc


def cpu_of(ps: psutil.Process) -> float:
    t = ps.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores."""
    t = psutil.cpu_times()
    total = sum(t)
    return total - t.idle - getattr(t, "iowait", 0), total


async def measure(clients: list[Client], peers: int, server: psutil.Process) -> dict:
    """Wait until each client hears all its peers, then WARMUP s, then WINDOW s: % of a core per client, frames
    received per second per client (the mean over its peers), the server's % of a core, and how busy the rest of
    the machine was (% of its cores: this bench and whatever else shares the machine)."""
    try:
        await until(lambda: all(c.hears(peers) for c in clients), 45, "audio from every peer at every client")
    except TimeoutError:
        for c in clients:
            print(f"--- {c.user} heard {c.media}; its log:", *c.log[-15:], sep="\n    ")
        raise
    await asyncio.sleep(WARMUP)
    before = {c.user: (cpu_of(c.ps), dict(c.media)) for c in clients}
    m0, s0, t0 = busy(), cpu_of(server), time.monotonic()
    await asyncio.sleep(WINDOW)
    after = {c.user: (cpu_of(c.ps), dict(c.media)) for c in clients}
    m1, s1, t1 = busy(), cpu_of(server), time.monotonic()
    out = {"cpu": {}, "aps": {}, "fps": {}, "server": (s1 - s0) / (t1 - t0) * 100}
    for c in clients:
        (cpu0, med0), (cpu1, med1) = before[c.user], after[c.user]
        out["cpu"][c.user] = (cpu1 - cpu0) / (t1 - t0) * 100
        rates = [((med1[k][1] - med0[k][1]) / (med1[k][0] - med0[k][0]),
                  (med1[k][2] - med0[k][2]) / (med1[k][0] - med0[k][0])) for k in med0 if med1[k][0] > med0[k][0]]
        out["aps"][c.user] = sum(r[0] for r in rates) / max(1, len(rates))
        out["fps"][c.user] = sum(r[1] for r in rates) / max(1, len(rates))
    ours = (sum(out["cpu"].values()) + out["server"]) / 100 * (t1 - t0)
    out["rest"] = max(0.0, (m1[0] - m0[0]) - ours) / (m1[1] - m0[1]) * 100
    return out


async def finish(clients: list[Client], expect_peers: int, video: bool) -> list[str]:
    """Stop the clients; return problems found in their reports and logs (wrong tone, size, a traceback)."""
    rcs = await asyncio.gather(*(c.stop() for c in clients))
    problems, sizes = [], set()
    for c, rc in zip(clients, rcs, strict=True):
        if any("Traceback" in line for line in c.log):
            problems.append(f"{c.user}: traceback in its log:\n    " + "\n    ".join(c.log[-30:]))
        try:
            report = json.loads(c.report.read_text())
        except (OSError, ValueError) as exc:
            problems.append(f"{c.user}: no report ({exc}), exit code {rc}")
            continue
        got = {}
        for room in report["rooms"]:
            got.update(room["peers"])
        for call in report["calls"]:
            got[call["peer"]] = call
        if len(got) != expect_peers:
            problems.append(f"{c.user}: media from {sorted(got)}, expected {expect_peers} peers")
        for peer, r in got.items():
            hz = r["audio"]["dominant_hz"]
            if hz is None or abs(hz - TONES[peer]) > 5:
                problems.append(f"{c.user}: heard {hz} Hz from {peer}, expected {TONES[peer]}")
            if video:
                sizes.add((r["video"]["width"], r["video"]["height"]))
    if video and sizes != {VIDEO}:
        problems.append(f"video arrived at {sorted(sizes)}, expected {VIDEO[0]}x{VIDEO[1]}")
    return problems


async def room_cpu(url: str, server: psutil.Process, tmp: Path, run: str, users: list[str],
                   video: bool) -> tuple[dict, list[str]]:
    flags = ["--room", ROOM, "--duration", str(SAFETY)] + (["--video"] if video else [])
    clients = [await Client.start(url, u, tmp, run, *flags, size=VIDEO if video else None) for u in users]
    try:
        out = await measure(clients, len(users) - 1, server)
    finally:
        problems = await finish(clients, len(users) - 1, video)
    return out, problems


async def pair_cpu(url: str, server: psutil.Process, tmp: Path, run: str, video: bool) -> tuple[dict, list[str]]:
    extra = ["--video"] if video else []
    size = VIDEO if video else None
    callee = await Client.start(url, "ben", tmp, run, "--auto-answer", *extra, size=size)
    caller = await Client.start(url, "ann", tmp, run, "--call", "ben", "--duration", str(SAFETY), *extra, size=size)
    clients = [caller, callee]
    try:
        out = await measure(clients, 1, server)
    finally:
        problems = await finish(clients, 1, video)
    return out, problems


RUNS = (("4-person audio room", ["ann", "ben", "cat", "dan"], False), ("1:1 audio call", ["ann", "ben"], False),
        ("3-person 320x240 video room", ["ann", "ben", "cat"], True), ("1:1 320x240 video call", ["ann", "ben"], True))


async def cpu_part(srv: ServerProcess, rounds: int) -> tuple[bool, list[str]]:
    runs: dict[str, list[dict]] = {label: [] for label, _, _ in RUNS}
    problems = []
    print(f"CPU, % of one core per client (each its own process), {WINDOW} s window from {WARMUP} s after everyone "
          f"heard everyone; rest = the rest of the machine (this bench, other tenants), % of all its cores")
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):  # each room right before its 1:1 baseline, round after round
            for i, (label, users, video) in enumerate(RUNS):
                run = f"round{r}-{i}"
                out, found = await (room_cpu(srv.url, srv.ps, Path(tmp), run, users, video) if len(users) > 2 else
                                    pair_cpu(srv.url, srv.ps, Path(tmp), run, video))
                runs[label].append(out)
                problems += [f"{label}: {x}" for x in found]
                each = "  ".join(f"{u} {v:5.1f}%" for u, v in out["cpu"].items())
                rate = f"{min(out['fps'].values()):4.1f} fps" if video else f"{min(out['aps'].values()):4.1f} audio/s"
                print(f"  {label:<28} {each}   mean {mean(out['cpu']):5.1f}%   server {out['server']:4.1f}%   "
                      f"rest {out['rest']:3.0f}%   received >= {rate} per peer")

    per_client = {label: {u: sum(o["cpu"][u] for o in outs) / len(outs) for u in outs[0]["cpu"]}
                  for label, outs in runs.items()}
    print(f"  over {rounds} round(s), mean per client:")
    for (room, _, _), (pair, _, _) in ((RUNS[0], RUNS[1]), (RUNS[2], RUNS[3])):
        a, b = mean(per_client[room]), mean(per_client[pair])
        print(f"    {room} {a:5.1f}% / {pair} {b:5.1f}% = {a / b:.2f}x")
    ok = True
    for label, target in ((RUNS[0][0], CPU_AUDIO_TARGET), (RUNS[2][0], CPU_VIDEO_TARGET)):
        worst = max(per_client[label].values())
        slow = min(min(o["fps"].values()) for o in runs[label]) if "video" in label else MIN_FPS
        if slow < MIN_FPS:  # fewer frames encoded and decoded than a 30 fps call has: the figure is too low
            problems.append(f"{label}: only {slow:.1f} fps arrived somewhere, the machine did not keep up; its CPU "
                            f"figure is too low to judge")
        short = label.removesuffix(" room") if "video" in label else label  # the verdict's label has 44 columns
        ok &= verdict(f"{short}, worst client" + (" (fps short)" if slow < MIN_FPS else ""), f"{worst:.1f}%",
                      f"<= {target:g}%", worst <= target and slow >= MIN_FPS)
    return ok, problems


def mean(d: dict) -> float:
    return sum(d.values()) / len(d)


# ---------------------------------------------------------------- in-process engines: join time and memory


def closed(*engines) -> bool:
    """No room pair of these engines is still closing its peer connection."""
    return not any(len(e._rooms._closing) for e in engines)  # private, but the only view of closes in flight


async def join_room_call(joiner, others, frames: int = 1) -> tuple[list[float], list[float]]:
    """`joiner` joins the room call the others are in: (joiner hears each, each hears joiner), seconds from the
    join, once `frames` audio frames arrived both ways on every pair."""
    me = joiner.config.user_id
    t0 = time.monotonic()
    joiner.join_room_call(ROOM)

    def pairs():
        rc = joiner.room_call
        if rc is None:
            return None
        mine = [rc.pairs.get(o.config.user_id) for o in others]
        theirs = [o.room_call.pairs.get(me) for o in others]
        ok = all(x is not None and x.received.audio_frames >= frames for x in mine + theirs)
        return ok and (mine, theirs)

    mine, theirs = await until(pairs, TIMEOUT, f"audio both ways between {me} and the room")
    return [x.received.first_audio - t0 for x in mine], [x.received.first_audio - t0 for x in theirs]


async def leave_room_call(joiner, others) -> None:
    me = joiner.config.user_id
    joiner.leave_room_call()
    await until(lambda: joiner.room_call is None and not any(me in o.room_call.pairs for o in others)
                and closed(joiner, *others), TIMEOUT, f"{me}'s pairs closed")


def line(label: str, values: list[float]) -> str:
    return f"  {label:<50} median {ms(pct(values, 50)):>10}   p90 {ms(pct(values, 90)):>10}   n={len(values)}"


async def join_procs(ann, procs: list[Client]) -> list[float]:
    """`ann` (here) joins the SIDE room's call, whose participants are processes of their own: seconds from the
    join to its first decoded audio from each of them, once it hears all. Returns after ann has left and each of
    them has seen it leave."""
    names = {c.user for c in procs}
    t0 = time.monotonic()
    ann.join_room_call(SIDE)

    def heard():
        rc = ann.room_call
        return rc is not None and set(rc.pairs) == names and all(x.received.first_audio for x in rc.pairs.values()) \
            and list(rc.pairs.values())

    pairs = await until(heard, TIMEOUT, f"audio at ann from {sorted(names)}")
    times = [x.received.first_audio - t0 for x in pairs]
    await until(lambda: all("ann" in c.in_call.get(SIDE, ()) for c in procs), TIMEOUT, "ann seen in the call")
    ann.leave_room_call()
    await until(lambda: ann.room_call is None and closed(ann) and not any(
        "ann" in c.in_call.get(SIDE, ()) for c in procs), TIMEOUT, "ann seen leaving")
    await asyncio.sleep(0.1)  # their pair's close (a few ms) before the next join
    return times


async def pair_call_proc(alice, hal: Client) -> tuple[str, float]:
    """`alice` (here) calls `hal`, a process of its own that answers by itself: (call id, seconds from hal's accept,
    which its --events line dates on the wall clock, to alice's first decoded audio). hal's own figure for that
    call, accept to its first audio, comes in its report."""
    wall_to_mono = time.monotonic() - time.time()
    call_id = alice.call("hal")
    s = await until(lambda: alice.sessions.get(call_id), TIMEOUT, "the call")
    await until(lambda: s.received.first_audio and "connecting" in hal.calls.get(call_id, {}), TIMEOUT,
                "audio at alice")
    hears = s.received.first_audio - (hal.calls[call_id]["connecting"] + wall_to_mono)
    await until(lambda: "active" in hal.calls[call_id], TIMEOUT, "audio at hal")  # its pair's watch saw media
    alice.hangup(call_id)
    await until(lambda: call_id not in alice.sessions and "ended" in hal.calls[call_id], TIMEOUT, "hal hanging up")
    return call_id, hears


async def interleaved(runs: dict, joins: int) -> dict[str, list[float]]:
    """Run each of `runs` (name -> coroutine function returning {figure: [seconds]}) once as a warm-up, then
    `joins` times each, interleaved and each first in turn, so machine noise hits them alike."""
    names = list(runs)
    for name in names:
        await runs[name]()
    got: dict[str, list[float]] = {}
    for i in range(joins):
        for name in names[i % len(names):] + names[:i % len(names)]:
            for figure, values in (await runs[name]()).items():
                got.setdefault(figure, []).extend(values)
    return got


async def join_part(ann, stay, procs, alice, bob, hal, joins: int) -> bool:
    """The room call with its other participants in processes of their own against 1:1 calls to one; then, with
    the stayers `stay` here brought into their call, the same with every engine in this process."""
    calls = []

    async def room_procs():
        return {"procs": await join_procs(ann, procs)}

    async def pair_proc():
        call_id, hears = await pair_call_proc(alice, hal)
        calls.append(call_id)
        return {"pproc caller": [hears]}

    got = await interleaved({"room": room_procs, "1:1": pair_proc}, joins)
    await asyncio.gather(*(c.stop() for c in [*procs, hal]))  # their load is not the next phase's
    report = {c["call_id"]: c for c in json.loads(hal.report.read_text())["calls"]}
    got["pproc callee"] = [report[c]["setup_ms"] / 1000 for c in calls[1:]]  # the warm-up call not counted

    for e in stay:
        e.join_room_call(ROOM)
    await until(lambda: all(e.room_call and len(e.room_call.pairs) == len(stay) - 1 and all(
        x.received.audio_frames for x in e.room_call.pairs.values()) for e in stay), 20, "the room call up")

    async def room_here():
        a, b = await join_room_call(ann, stay)
        await leave_room_call(ann, stay)
        return {"local": a, "local back": b}

    async def pair_here():
        a, b = await engine_call(alice, bob)
        return {"caller": [a], "callee": [b]}

    got |= await interleaved({"room": room_here, "1:1": pair_here}, joins)
    n = len(procs) + 1
    print(f"Join to first decoded audio, {n}-person room call against 1:1 calls, {joins} of each, interleaved")
    print("  the joiner and the caller here, every other participant a process of its own:")
    print(line("room: join -> joiner hears each peer", got["procs"]))
    print(line("1:1: callee accepts -> caller hears", got["pproc caller"]))
    print(line("1:1: callee accepts -> callee hears (its report)", got["pproc callee"]))
    r_own = pct(got["procs"], 50) / pct(got["pproc caller"], 50)
    print(f"  all {n} engines (and both 1:1 sides) in this process, its other {len(stay)} in their call meanwhile:")
    print(line("room: join -> joiner hears each peer", got["local"]))
    print(line("room: join -> each peer hears joiner", got["local back"]))
    print(line("1:1: callee accepts -> caller hears", got["caller"]))
    print(line("1:1: callee accepts -> callee hears", got["callee"]))
    r_here = pct(got["local"], 50) / pct(got["caller"], 50)
    print(f"  joiner hears / caller hears, medians: peers in own processes {r_own:.2f}x, all here {r_here:.2f}x "
          f"(one event loop does every side's work);  p90s: "
          f"{pct(got['procs'], 90) / pct(got['pproc caller'], 90):.2f}x, "
          f"{pct(got['local'], 90) / pct(got['caller'], 90):.2f}x")
    return verdict("median, room joiner hears a peer / 1:1 caller", f"{r_own:.2f}x", f"<= {JOIN_TARGET}x",
                   r_own <= JOIN_TARGET)


def live_pcs() -> int:
    from aiortc import RTCPeerConnection

    return sum(isinstance(o, RTCPeerConnection) for o in gc.get_objects())


async def settled() -> dict:
    """This process, once tasks in flight have had a moment to finish: RSS (MB), asyncio tasks, threads, live
    RTCPeerConnections."""
    await asyncio.sleep(1)
    gc.collect()
    return {"rss": psutil.Process().memory_info().rss / 2**20, "tasks": len(asyncio.all_tasks()),
            "threads": threading.active_count(), "pcs": live_pcs()}


async def memory_part(ann, stay, cycles: int) -> bool:
    async def cycle() -> None:
        await join_room_call(ann, stay, frames=10)
        await leave_room_call(ann, stay)

    for _ in range(WARM_CYCLES):
        await cycle()
    base = await settled()
    t0 = time.monotonic()
    print(f"\nMemory over {cycles} joins and leaves of a {len(stay) + 1}-person room call (after {WARM_CYCLES} "
          f"not counted), this process")
    print(f"  after warm-up: RSS {base['rss']:7.1f} MB   tasks {base['tasks']}   threads {base['threads']}   "
          f"RTCPeerConnections {base['pcs']}")
    step = max(1, cycles // 4)
    for i in range(1, cycles + 1):
        await cycle()
        if i % step == 0 or i == cycles:
            rss = psutil.Process().memory_info().rss / 2**20
            print(f"  after {i:3}:     RSS {rss:7.1f} MB   ({time.monotonic() - t0:.0f} s)")
    end = await settled()
    print(f"  settled:       RSS {end['rss']:7.1f} MB   tasks {end['tasks']}   threads {end['threads']}   "
          f"RTCPeerConnections {end['pcs']}")
    kept = len(ann.room_calls_finished)
    me = ann.config.user_id
    folded = {o.config.user_id: o.room_call.ended[me].pairs for o in stay if me in o.room_call.ended}
    print(f"  kept, this whole run: the joiner's finished room calls {kept}; the joiner's ended pairs, folded into "
          f"one record by each other participant {folded}")
    growth = end["rss"] - base["rss"]
    ok = verdict(f"RSS growth over {cycles} joins and leaves", f"{growth:+.1f} MB", f"<= {RSS_TARGET} MB",
                 growth <= RSS_TARGET)
    ok &= verdict("asyncio tasks, after vs after warm-up", f"{end['tasks']} vs {base['tasks']}", "no more",
                  end["tasks"] <= base["tasks"])
    return ok


async def engines_part(url: str, joins: int, cycles: int) -> tuple[bool, list[str]]:
    users = [(u, TONES[u]) for u in ("ann", "ben", "cat", "dan")] + [("alice", 440), ("bob", 660)]
    engines = await start_engines(url, *users)
    ann, ben, cat, dan, alice, bob = engines
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        procs = [await Client.start(url, u, Path(tmp), "join", "--room", SIDE, "--duration", str(SAFETY))
                 for u in ("eve", "fay", "gus")]
        hal = await Client.start(url, "hal", Path(tmp), "join", "--auto-answer", "--stay")
        procs_all = [*procs, hal]
        try:
            for e in (ann, ben, cat, dan):
                e.join_room(ROOM)
            ann.join_room(SIDE)
            await until(lambda: all({"ann", "ben", "cat", "dan"} <= set(e.rooms[ROOM].members)
                                    for e in (ann, ben, cat, dan)), 10, "everyone in the room")
            stay = [ben, cat, dan]
            await until(lambda: all(c.hears(2) for c in procs), 45, "the side room's call up")
            await until(lambda: "hal" in alice.signaling.users, 30, "hal online")
            ok = await join_part(ann, stay, procs, alice, bob, hal, joins)
        finally:
            rcs = await asyncio.gather(*(c.stop() for c in procs_all))
            problems += [f"{c.user}: exit code {rc}, traceback in its log" for c, rc in zip(procs_all, rcs, strict=True)
                         if any("Traceback" in x for x in c.log)]
    try:
        dan.leave_room_call()  # three in the call for the memory run: one joins and leaves, two stay
        await until(lambda: all("dan" not in e.room_call.pairs for e in (ben, cat)) and closed(dan, ben, cat), 10,
                    "dan out of the call")
        ok &= await memory_part(ann, [ben, cat], cycles)
    finally:
        await asyncio.gather(*(e.stop() for e in engines))
    return ok, problems


# ---------------------------------------------------------------- main


async def main(joins: int, cycles: int, rounds: int) -> bool:
    t0 = time.monotonic()
    ok, problems = True, []
    if rounds:
        with ServerProcess(start_callbox) as srv:
            cpu_ok, problems = await cpu_part(srv, rounds)
            ok &= cpu_ok
        print()
    with ServerProcess(start_callbox) as srv:  # a fresh one: the CPU runs bound ann and co to identity keys
        engines_ok, found = await engines_part(srv.url, joins, cycles)
        ok &= engines_ok
        problems += found
    for x in problems:
        print(f"  problem: {x}")
    print(f"\n{time.monotonic() - t0:.0f} s in all")
    return ok and not problems


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--joins", type=int, default=20, help="room joins and 1:1 calls timed, each (default 20)")
    ap.add_argument("--cycles", type=int, default=100, help="joins and leaves for the memory figure (default 100)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of the four CPU runs (default 2; 0: none)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    raise SystemExit(0 if asyncio.run(main(args.joins, args.cycles, args.rounds)) else 1)
