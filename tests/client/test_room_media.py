"""Local media in a mesh, through real aiortc peer connections: the size video goes out at, each peer's received
level, and the speaker mixing two peers at once on a real PortAudio device (PulseAudio's null sink)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import numpy as np

from client.core.media import LocalMedia
from client.core.peer import PeerSession, Received
from tests.components import pick_devices, require_audio

KINDS = ("audio", "video")


async def until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Wait for `check` to hold; fail saying `what` did not happen (a bound on waiting, not a timing check)."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)
    assert check(), what


@contextlib.asynccontextmanager
async def linked(a: LocalMedia, b: LocalMedia, kinds: tuple[str, ...] = KINDS):
    """A PeerSession on each side, joined: `a` offers, `b` answers. Yields what each side received."""
    got_a, got_b = Received(), Received()
    pa = PeerSession("r-test", a, got_a, kinds=kinds, ice_servers=[], analyze_video=True)
    pb = PeerSession("r-test", b, got_b, kinds=kinds, ice_servers=[], analyze_video=True)
    try:
        await pa.accept_answer(await pb.answer(await pa.offer()))
        yield got_a, got_b
    finally:
        await pa.close()
        await pb.close()


def counting(r: Received) -> bool:
    """The pattern's counter read at the far end went up by a plausible amount since the first frame read."""
    return len(r.counters) == 2 and 0 < r.counters[1] - r.counters[0] < 10_000


async def test_video_goes_out_at_the_size_set_and_its_counter_still_reads():
    ann = LocalMedia(tone_hz=440, pattern=True, playback=False)
    ben = LocalMedia(tone_hz=660, pattern=True, playback=False)
    ann.set_video_size(320, 240)  # as in a room where ann sends to three peers
    try:
        async with linked(ann, ben) as (_, at_ben):
            await until(lambda: at_ben.video_frames > 10 and counting(at_ben), "ben never read ann's counter")
            assert (at_ben.width, at_ben.height) == (320, 240)

            ann.set_video_size(480, 360)  # a peer left: two remain
            at_ben.counters.clear()
            await until(lambda: at_ben.width == 480, "ann's video never grew to 480x360")
            at_ben.counters.clear()
            await until(lambda: counting(at_ben), "ben could not read ann's counter at 480x360")
            assert (at_ben.width, at_ben.height) == (480, 360)
    finally:
        ann.close()
        ben.close()


async def test_received_level_is_high_for_a_tone_and_low_for_a_muted_peer():
    ann = LocalMedia(tone_hz=440, playback=False)
    ben = LocalMedia(tone_hz=660, playback=False)
    ben.set_muted(True)  # sends silence
    try:
        async with linked(ann, ben, ("audio",)) as (at_ann, at_ben):
            await until(lambda: at_ann.audio_frames > 25 and at_ben.audio_frames > 25, "no audio came")
            await until(lambda: at_ben.level > 0.1, f"ann's tone reaches ben at level {at_ben.level:.3f} only")
            assert at_ann.level < 0.01, at_ann.level  # ben's silence
        assert at_ann.level == at_ben.level == 0  # the tracks ended
    finally:
        ann.close()
        ben.close()


def amplitude(x: np.ndarray, hz: float, rate: int = 48_000) -> float:
    t = np.arange(len(x)) / rate
    return float(2 * abs(np.dot(x, np.exp(-2j * np.pi * hz * t))) / len(x))


async def test_two_peers_are_mixed_on_a_real_speaker():
    """Cy is in a room with Ann (440 Hz) and Ben (660 Hz): Cy's speaker plays both at once, recorded back."""
    require_audio()
    from client.core.audio import Microphone

    in_dev, out_dev = pick_devices()
    ann = LocalMedia(tone_hz=440, playback=False)
    ben = LocalMedia(tone_hz=660, playback=False)
    cy = LocalMedia(tone_hz=1000, speaker=out_dev["name"])  # plays what arrives
    mic = Microphone(in_dev["name"])
    mic.start()
    got: list[np.ndarray] = []

    def recorded() -> int:
        while not mic.queue.empty():
            got.append(mic.queue.get_nowait())
        return sum(len(b) for b in got)

    try:
        async with linked(ann, cy, ("audio",)) as (_, from_ann), linked(ben, cy, ("audio",)) as (_, from_ben):
            await until(lambda: from_ann.audio_frames > 25 and from_ben.audio_frames > 25, "no audio reached Cy")
            assert "speaker" not in cy.problems, cy.problems
            recorded()
            got.clear()  # from now on both peers play
            await until(lambda: recorded() >= 48_000, "the microphone recorded less than a second")
            x = np.concatenate(got)[-48_000:].astype(np.float64) / 32768
            loud = {hz: amplitude(x, hz) for hz in (440, 660, 1000)}
            print(f"recorded amplitudes: {loud}; levels from ann {from_ann.level:.3f}, from ben {from_ben.level:.3f}")
            assert loud[440] > 0.1 and loud[660] > 0.1, loud  # both peers are heard at once
            assert abs(loud[440] - loud[660]) < 0.25 * max(loud[440], loud[660]), loud  # and equally
            assert loud[1000] < 0.01, loud  # Cy's own tone is not played back
    finally:
        mic.stop()
        for media in (ann, ben, cy):
            media.close()
    assert cy.open_devices == 0
