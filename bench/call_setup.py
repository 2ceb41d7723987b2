"""Call setup time, from the callee's accept to the first decoded remote audio, against bare aiortc peers.

Two in-process Engines (tones, no playback) call through a real SignalingServer (its own process, loopback, port
0): the clock starts when the callee accepts (its CallSession.accepted_at) and stops at each side's first decoded
remote audio frame (Received.first_audio), both on time.monotonic in this process. The baseline, in the same run
and interleaved with it call by call: two RTCPeerConnections connected directly in this process (no server, no
STUN), each sending the app's tone track, timed from the start of offer creation to the first decoded remote audio.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time

from _common import DirectCall, ServerProcess, hang_up, ms, pct, ring, start_callbox, start_engines, until, verdict

from client.core.tracks import AudioTrack, ToneSource

TARGET = 1.5  # engine median / direct median
TIMEOUT = 15  # seconds one call may take to bring audio both ways


async def engine_call(alice, bob) -> tuple[float, float]:
    """(caller hears, callee hears), each from the callee's accept."""
    call_id, out, inc = await ring(alice, bob)
    bob.accept(call_id)
    await until(lambda: out.received.first_audio and inc.received.first_audio, TIMEOUT, "audio both ways")
    times = out.received.first_audio - inc.accepted_at, inc.received.first_audio - inc.accepted_at
    await hang_up(alice, bob, call_id)
    return times


async def direct_call() -> tuple[float, float]:
    """(offerer hears, answerer hears), each from the start of offer creation."""
    call = DirectCall((AudioTrack(ToneSource(440)), AudioTrack(ToneSource(660))))
    try:
        t0 = time.monotonic()
        await call.connect()
        await until(lambda: all(call.first), TIMEOUT, "audio both ways")
        return call.first[0] - t0, call.first[1] - t0
    finally:
        await call.close()


def line(label: str, values: list[float]) -> str:
    return f"  {label:<44} median {ms(pct(values, 50)):>10}   p90 {ms(pct(values, 90)):>10}"


async def main(calls: int) -> bool:
    with ServerProcess(start_callbox) as srv:
        alice, bob = await start_engines(srv.url, ("alice", 440), ("bob", 660))
        try:
            await engine_call(alice, bob)  # warm-up, not counted: imports, codecs, first sockets
            await direct_call()
            engine, direct = [], []
            for i in range(calls):  # interleaved, and in turns first, so machine noise hits both alike
                for run in ((engine_call, direct_call) if i % 2 == 0 else (direct_call, engine_call)):
                    if run is engine_call:
                        engine.append(await engine_call(alice, bob))
                    else:
                        direct.append(await direct_call())
                print(f"call {i + 1:2}: engine caller {ms(engine[-1][0]):>10} callee {ms(engine[-1][1]):>10}   "
                      f"direct offerer {ms(direct[-1][0]):>10} answerer {ms(direct[-1][1]):>10}")
        finally:
            await asyncio.gather(alice.stop(), bob.stop())

    print(f"\n{calls} calls each, interleaved; first decoded remote audio frame")
    print(line("engine: callee accepts -> caller hears", [e[0] for e in engine]))
    print(line("engine: callee accepts -> callee hears", [e[1] for e in engine]))
    print(line("direct: offer creation -> offerer hears", [d[0] for d in direct]))
    print(line("direct: offer creation -> answerer hears", [d[1] for d in direct]))
    ok = True
    for side, label in ((0, "caller"), (1, "callee")):
        ratio = pct([e[side] for e in engine], 50) / pct([d[side] for d in direct], 50)
        ok &= verdict(f"median, engine {label} / direct", f"{ratio:.2f}x", f"<= {TARGET}x", ratio <= TARGET)
    return ok


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20, help="calls of each kind (default 20)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    raise SystemExit(0 if asyncio.run(main(args.calls)) else 1)
