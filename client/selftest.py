"""`callbox --self-test`: an embedded server on loopback, two in-process peers calling with tones, checked by ear."""

from __future__ import annotations

import asyncio
import sys
import time

from server import HubConfig, SignalingServer

from .core.engine import Engine, EngineConfig
from .core.media import LocalMedia

TONES = {"selftest-a": 440.0, "selftest-b": 660.0}
TOLERANCE_HZ = 5.0
TIMEOUT = 20.0


async def _until(check, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.05)


async def run() -> int:
    lines: list[str] = []
    ok = True

    def report(good: bool, text: str) -> None:
        nonlocal ok
        ok &= good
        lines.append(f"[{'ok' if good else 'FAIL'}] {text}")
        print(lines[-1], flush=True)

    server = SignalingServer("127.0.0.1", 0, config=HubConfig())
    engines: list[Engine] = []
    try:
        await server.start()
        report(True, f"embedded server on {server.url}")
        for user, hz in TONES.items():
            e = Engine(EngineConfig(server=server.url, user_id=user, display_name=user, auto_answer=True),
                       LocalMedia(tone_hz=hz, playback=False))
            await e.start()
            engines.append(e)
        a, b = engines
        await _until(lambda: "selftest-b" in a.signaling.users, "the two peers to see each other")
        report(True, "both peers online and see each other")
        start = time.monotonic()
        call_id = a.call("selftest-b")
        await _until(lambda: all(call_id in e.sessions and e.sessions[call_id].received.audio_frames > 60
                                 for e in engines), "audio to flow both ways")
        first = a.sessions[call_id].received.first_audio
        report(True, f"call set up: first audio {(first - start) * 1000:.0f} ms after dialling")
        for e, expect in ((a, TONES["selftest-b"]), (b, TONES["selftest-a"])):
            heard = e.sessions[call_id].received.dominant_hz()
            report(heard is not None and abs(heard - expect) <= TOLERANCE_HZ,
                   f"{e.config.user_id} hears {heard} Hz (expected {expect:.0f} Hz)")
        a.hangup(call_id)
        await _until(lambda: call_id not in b.sessions, "the hang-up to reach the other side")
        report(True, "hang-up reached the other side")
    except Exception as exc:  # the report names what failed; no traceback for a self-test
        report(False, f"{type(exc).__name__}: {exc}")
    finally:
        for e in engines:
            await e.stop()
        await server.stop()
    print(f"self-test {'passed' if ok else 'FAILED'}", file=sys.stderr if not ok else sys.stdout)
    return 0 if ok else 1
