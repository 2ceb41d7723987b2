"""CPU per side of a call, in % of one core: 640x480 30 fps VP8 + Opus, and audio only, against bare aiortc.

Each side is a real headless client in its own process (`python -m client --headless`, tone and test pattern, no
sound card), through a Callbox server in a third, so psutil's cpu_times of one process is one side's whole cost,
sampled over a steady window (WARMUP s after the caller reports the call active, for WINDOW s). Baselines in the
same run: the same call between two bare RTCPeerConnections, each in its own process with the app's synthetic
tracks and a receiver that only decodes (interleaved with the app's calls), and a connected headless client that
does nothing, sampled in every window.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

import psutil
from _common import ServerProcess, start_callbox, until

ROOT = Path(__file__).resolve().parent.parent
WARMUP = 5  # seconds of an active call before measuring
WINDOW = 12  # seconds measured
DURATION = 20  # seconds the caller stays in the call (--duration): warm-up, window and a margin
MIN_FPS = 25  # below this the video figure is not one of a 30 fps call: the machine did not keep up


class Client:
    """`python -m client --headless ...` in its own process; notes when it logs a call as active."""

    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc, self.ps = proc, psutil.Process(proc.pid)
        self.active = False
        self.log: list[str] = []
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, url: str, user: str, *flags: str) -> Client:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "client", "--headless", "--server", url, "--user", user, *flags,
            cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        return cls(proc)

    async def _read(self) -> None:
        async for raw in self.proc.stderr:  # read it all, so a full pipe never blocks the client
            line = raw.decode(errors="replace").rstrip()
            self.log.append(line)
            self.active |= "callbox.headless: call " in line and line.endswith(": active")

    async def wait(self, timeout: float) -> int:
        try:
            rc = await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            rc = await self.proc.wait()
        await self._reader
        return rc


def received_video(report: Path) -> str:
    """'WxH at F fps': what one side received, frames over the time its call was active."""
    call = json.loads(report.read_text())["calls"][0]
    times = {s["state"]: s["time"] for s in call["states"]}
    v = call["video"]
    return f"{v['width']}x{v['height']} at {v['frames'] / (times['ended'] - times['active']):.1f} fps"


async def window(procs: dict[str, psutil.Process]) -> dict[str, float]:
    """% of one core each process used over the next WINDOW seconds."""
    def cpu() -> dict[str, float]:
        return {k: sum(p.cpu_times()[:2]) for k, p in procs.items()}  # user + system

    before, t0 = cpu(), time.monotonic()
    await asyncio.sleep(WINDOW)
    after, t1 = cpu(), time.monotonic()
    return {k: (after[k] - before[k]) / (t1 - t0) * 100 for k in procs}


async def app_call(url: str, idle: Client, video: bool, tmp: Path) -> dict:
    """A call between two headless clients; % of a core for each side and for `idle`, and what arrived."""
    extra = ["--video"] if video else []
    reports = [tmp / f"{side}-{video}.json" for side in ("caller", "callee")]
    callee = await Client.start(url, "bob", "--auto-answer", "--tone", "660", "--report", str(reports[1]), *extra)
    await asyncio.sleep(1)  # bob online before alice looks for him (she would wait up to 15 s anyway)
    caller = await Client.start(url, "alice", "--call", "bob", "--tone", "440", "--duration", str(DURATION),
                                "--report", str(reports[0]), *extra)
    try:
        await until(lambda: caller.active, 30, "active call")
        await asyncio.sleep(WARMUP)
        out = await window({"caller": caller.ps, "callee": callee.ps, "idle": idle.ps})
    finally:
        rcs = [await c.wait(DURATION + 15) for c in (caller, callee)]
    if rcs != [0, 0]:
        print("\n".join(caller.log[-20:] + callee.log[-20:]))
        raise RuntimeError(f"the clients exited with {rcs}")
    out["received"] = " / ".join(received_video(r) for r in reports) if video else ""
    return out


# ---------------------------------------------------------------- the baseline: the same call, bare aiortc


def piped(pipe, timeout: float = 30):
    if not pipe.poll(timeout):
        raise TimeoutError("nothing came through the pipe")
    return pipe.recv()


def bare_side(pipe, offerer: bool, video: bool) -> None:
    """One side of the call with nothing of the app but its synthetic tracks: an RTCPeerConnection and a receiver
    that only decodes. SDP goes through `pipe` (the parent passes it on); it says "up" at the first remote audio,
    and at "stop" sends back what video it received and ends."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamError

    from client.core.tracks import AudioTrack, PatternSource, ToneSource, VideoTrack

    async def run() -> None:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        tracks = [AudioTrack(ToneSource(440 if offerer else 660))] + ([VideoTrack(PatternSource())] if video else [])
        got = {"audio": [], "video": []}  # arrival time of each remote frame
        size = ""

        async def drain(track) -> None:
            nonlocal size
            with contextlib.suppress(MediaStreamError):
                while True:
                    frame = await track.recv()
                    got[track.kind].append(time.monotonic())
                    if track.kind == "audio" and len(got["audio"]) == 1:
                        pipe.send("up")
                    elif track.kind == "video":
                        size = f"{frame.width}x{frame.height}"

        pc.on("track", lambda track: asyncio.ensure_future(drain(track)))
        if not offerer:
            await pc.setRemoteDescription(RTCSessionDescription(await asyncio.to_thread(piped, pipe), "offer"))
        for track in tracks:
            pc.addTrack(track)
        await pc.setLocalDescription(await (pc.createOffer() if offerer else pc.createAnswer()))
        pipe.send(pc.localDescription.sdp)
        if offerer:
            await pc.setRemoteDescription(RTCSessionDescription(await asyncio.to_thread(piped, pipe), "answer"))
        await asyncio.to_thread(piped, pipe, WARMUP + WINDOW + 30)  # "stop"
        v = got["video"]
        pipe.send(f"{size} at {(len(v) - 1) / (v[-1] - v[0]):.1f} fps" if len(v) > 1 else "")
        await pc.close()

    asyncio.run(run())


async def bare_call(idle: Client, video: bool) -> dict:
    """The same call between two bare_side processes; % of a core for each side and for `idle`, what arrived."""
    ctx = multiprocessing.get_context("spawn")
    pipes, procs = [], []
    for offerer in (True, False):
        mine, theirs = ctx.Pipe()
        pipes.append(mine)
        procs.append(ctx.Process(target=bare_side, args=(theirs, offerer, video), daemon=True))
        procs[-1].start()
    try:
        get = lambda i: asyncio.to_thread(piped, pipes[i])
        pipes[1].send(await get(0))  # offer
        pipes[0].send(await get(1))  # answer
        for i in (0, 1):
            assert await get(i) == "up"
        await asyncio.sleep(WARMUP)
        out = await window({"caller": psutil.Process(procs[0].pid), "callee": psutil.Process(procs[1].pid),
                            "idle": idle.ps})
        for pipe in pipes:
            pipe.send("stop")
        out["received"] = " / ".join([await get(0), await get(1)]) if video else ""
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
    return out


# ---------------------------------------------------------------- main


async def main() -> bool:
    with ServerProcess(start_callbox) as srv, tempfile.TemporaryDirectory() as tmp:
        idle = await Client.start(srv.url, "idle")
        runs = {}
        try:
            for video in (True, False):  # the app's call and the bare one back to back, so noise hits both alike
                runs["app", video] = await app_call(srv.url, idle, video, Path(tmp))
                runs["bare", video] = await bare_call(idle, video)
        finally:
            idle.proc.terminate()
            await idle.wait(10)

    print(f"% of one core per side, {WINDOW} s window from {WARMUP} s into the call; each side its own process")
    ok = True
    for video, label in ((True, "640x480 30 fps VP8 + Opus"), (False, "audio only (Opus)")):
        print(f"  {label}")
        for kind in ("app", "bare"):
            r = runs[kind, video]
            print(f"    {kind:>4}: caller {r['caller']:5.1f}%   callee {r['callee']:5.1f}%   {r['received']}".rstrip())
            for part in filter(None, r["received"].split(" / ")):
                ok &= float(part.split()[2]) >= MIN_FPS
        side = {kind: (runs[kind, video]["caller"] + runs[kind, video]["callee"]) / 2 for kind in ("app", "bare")}
        print(f"    a side, mean of both: app {side['app']:.1f}% / bare aiortc {side['bare']:.1f}% "
              f"= {side['app'] / side['bare']:.2f}x")
    idle = sum(r["idle"] for r in runs.values()) / len(runs)
    print(f"  idle connected client: {idle:.2f}% (sampled in all {len(runs)} windows)")
    if not ok:
        print(f"  under {MIN_FPS} fps arrived somewhere: the machine did not keep up, so that video figure is too low")
    return ok


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    raise SystemExit(0 if asyncio.run(main()) else 1)
