"""Screen sharing: the sharer's CPU at 1920x1080 and 1280x720 (10 fps), and the time from a change on the screen to
that change decoded at the receiver.

CPU: the sharer is a headless client in its own process (`--share-screen`, a tone, no camera) on an Xvfb display of
that size, filled by a full-screen window (tests/components.py x_display), calling an auto-answering headless
client in another process through a server in a third; psutil samples each process over WINDOW s once the call
has been active WARMUP s. Baseline, in the same run and interleaved round by round: the same call without
--share-screen. What arrived (frames of the share per second, its size) comes from the receiver's report.

Latency: two engines in this process (one clock), alice sharing the 1280x720 display with bob. The fill window is
repainted with another colour (t0: its "painted" reply, after XSync), and bob's share frames are watched, by the
mean colour each decoded frame carries (Received.screen_rgb), until it is the new colour (t1). t1 - t0 holds up to
one capture period (100 ms at 10 fps) besides the encode, the network and the decode. CHANGES changes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from _common import ServerProcess, ms, pct, start_callbox, start_engines, until
from cpu import Client, window

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.components import x_display  # noqa: E402

WARMUP = 4  # seconds of an active call before measuring
WINDOW = 10  # seconds measured
DURATION = 18  # seconds the caller stays in the call: warm-up, window and a margin
SIZES = ((1920, 1080), (1280, 720))
CHANGES = 20
COLORS = ("#3366cc", "#cc6633", "#33cc66", "#993399")
TOLERANCE = 14


async def share_call(url: str, share: bool, tmp: Path, run: str) -> dict:
    """A call from alice (sharing or not) to bob; % of a core for each, and what bob received of the share."""
    report = tmp / f"{run}-bob.json"
    bob = await Client.start(url, "bob", "--auto-answer", "--tone", "660", "--report", str(report))
    await asyncio.sleep(1)
    alice = await Client.start(url, "alice", "--call", "bob", "--tone", "440", "--duration", str(DURATION),
                               *(["--share-screen"] if share else []))
    try:
        await until(lambda: alice.active, 30, "active call")
        await asyncio.sleep(WARMUP)
        out = await window({"sharer": alice.ps, "receiver": bob.ps})
    finally:
        rcs = [await c.wait(DURATION + 15) for c in (alice, bob)]
    if rcs != [0, 0]:
        print("\n".join(alice.log[-20:] + bob.log[-20:]))
        raise RuntimeError(f"the clients exited with {rcs}")
    call = json.loads(report.read_text())["calls"][0]
    times = {s["state"]: s["time"] for s in call["states"]}
    screen = call["screen"]
    out["received"] = (f"{screen['width']}x{screen['height']} at "
                       f"{screen['frames'] / (times['ended'] - times['active']):.1f} fps") if share else ""
    return out


async def cpu_part(url: str, rounds: int) -> None:
    print(f"Sharer CPU, % of one core, {WINDOW} s window, {rounds} round(s) interleaved with the same call unshared")
    with tempfile.TemporaryDirectory() as tmp:
        for w, h in SIZES:
            with x_display(w, h) as display:
                os.environ["DISPLAY"] = display.name  # the clients inherit it
                shared, plain = [], []
                for r in range(rounds):
                    for share in ((True, False) if r % 2 == 0 else (False, True)):
                        got = await share_call(url, share, Path(tmp), f"{w}-{r}-{share}")
                        (shared if share else plain).append(got)
                        print(f"  {w}x{h} {'shared ' if share else 'no share'}  sharer {got['sharer']:5.1f}%   "
                              f"receiver {got['receiver']:5.1f}%   {got['received']}")
                mean = lambda runs, k: sum(x[k] for x in runs) / len(runs)  # noqa: E731
                s, p = mean(shared, "sharer"), mean(plain, "sharer")
                print(f"  {w}x{h} at 10 fps: the sharer {s:.1f}% against {p:.1f}% unshared: +{s - p:.1f} points "
                      f"({s / p:.2f}x); the receiver {mean(shared, 'receiver'):.1f}% against "
                      f"{mean(plain, 'receiver'):.1f}%")


async def latency_part(url: str, changes: int) -> None:
    from client.core.screen import scaled

    def close(rgb, color: str) -> bool:
        want = tuple(int(color[i:i + 2], 16) for i in (1, 3, 5))
        return rgb is not None and all(abs(a - b) <= TOLERANCE for a, b in zip(rgb, want, strict=True))

    with x_display(1280, 720, COLORS[0]) as display:
        os.environ["DISPLAY"] = display.name
        alice, bob = await start_engines(url, ("alice", 440), ("bob", 660))
        try:
            call_id = alice.call("bob")
            await until(lambda: call_id in bob.sessions, 10, "ringing")
            bob.accept(call_id)
            await until(lambda: bob.sessions[call_id].received.first_audio, 10, "audio")
            assert alice.share_screen(True) is None
            got = bob.sessions[call_id].received
            await until(lambda: close(got.screen_rgb, COLORS[0]), 10, "the share")
            assert got.screen_size == scaled(1280, 720)
            delays = []
            for i in range(changes):
                color = COLORS[1 + i % (len(COLORS) - 1)] if i % 2 == 0 else COLORS[0]
                await asyncio.get_running_loop().run_in_executor(None, display.paint, color)
                t0 = time.monotonic()
                while not close(got.screen_rgb, color):
                    if time.monotonic() - t0 > 5:
                        raise TimeoutError(f"{color} never arrived")
                    await asyncio.sleep(0.002)
                delays.append(time.monotonic() - t0)
                await asyncio.sleep(0.3)
        finally:
            alice.share_screen(False)
            await asyncio.gather(alice.stop(), bob.stop())
    print(f"Change on the screen to that change decoded at the receiver, 1280x720, {changes} changes: median "
          f"{ms(pct(delays, 50))}, p90 {ms(pct(delays, 90))}, best {ms(min(delays))} (one capture period is 100 ms)")


async def main(rounds: int, changes: int) -> None:
    with ServerProcess(start_callbox) as srv:
        await latency_part(srv.url, changes)
        await cpu_part(srv.url, rounds)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--changes", type=int, default=CHANGES)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    t = time.monotonic()
    asyncio.run(main(args.rounds, args.changes))
    print(f"{time.monotonic() - t:.0f} s in all")
