"""Media pieces without a network: ring buffer drift, the speaker's mixer, tracks' timestamps and sizes, the test
pattern, received levels, missing devices."""

import asyncio

import av
import numpy as np
import pytest

from client.core import audio
from client.core.audio import RingBuffer, Speaker
from client.core.media import LocalMedia, video_size_for
from client.core.peer import Received
from client.core.tracks import (
    AudioTrack,
    BlackSource,
    CameraSource,
    PatternSource,
    SilenceSource,
    ToneSource,
    VideoTrack,
    dominant_hz,
    read_counter,
)


def test_ring_buffer_plays_silence_on_underrun_then_recovers():
    ring = RingBuffer(48_000, target_ms=20, high_ms=100)
    assert not ring.read(480).any()  # nothing written yet: silence
    ring.write(np.ones(960, dtype=np.float32))
    assert ring.read(480).all()
    out = ring.read(960)  # only 480 left
    assert out[:480].all() and not out[480:].any() and ring.underruns == 1


def test_ring_buffer_drops_when_the_sender_runs_fast():
    ring = RingBuffer(48_000, target_ms=60, high_ms=200)
    for i in range(50):  # 50 x 20 ms written, nothing read: a sender far ahead of the card
        ring.write(np.full(960, i, dtype=np.float32))
    assert ring.count <= ring.high and ring.dropped > 0
    assert ring.read(1)[0] >= 40  # what remains is the newest 200 ms at most, not the oldest


def test_ring_buffer_wraps_around():
    ring = RingBuffer(1000, target_ms=10, high_ms=900, size_ms=1000)
    data = np.arange(700, dtype=np.float32)
    ring.write(data)
    assert np.array_equal(ring.read(500), data[:500])
    ring.write(np.arange(700, 1400, dtype=np.float32))  # crosses the end of the buffer
    assert np.array_equal(ring.read(900), np.arange(500, 1400, dtype=np.float32))


async def test_audio_track_pts_are_monotonic_across_a_source_switch():
    track = AudioTrack(ToneSource(440))
    pts = []
    for i in range(10):
        if i == 5:
            track.replace_source(SilenceSource())
        frame = await track.recv()
        assert frame.sample_rate == 48_000 and frame.samples == 960
        pts.append(frame.pts)
    assert pts == [960 * i for i in range(10)]
    track.stop()


async def test_tone_is_at_its_frequency():
    src = ToneSource(660)
    blocks = [await src.next_block() for _ in range(25)]
    assert abs(dominant_hz(np.concatenate(blocks)) - 660) < 1


async def test_pattern_counter_round_trip():
    src = PatternSource()
    for expected in range(3):
        frame = await src.next_frame()
        assert read_counter(frame.to_ndarray(format="rgb24")) == expected
    src.count = 54321
    assert read_counter((await src.next_frame()).to_ndarray(format="rgb24")) == 54321


async def test_video_track_is_paced_with_increasing_pts():
    track = VideoTrack(PatternSource())
    pts = [(await track.recv()).pts for _ in range(4)]
    assert pts == sorted(pts) and len(set(pts)) == 4
    track.stop()


async def test_no_portaudio_is_reported_not_raised(monkeypatch):
    def missing():
        raise audio.DeviceMissing("PortAudio is not installed (test); on Debian: apt-get install libportaudio2")

    monkeypatch.setattr(audio, "sounddevice", missing)
    problems = []
    media = LocalMedia(echo_cancellation=False, on_problem=lambda kind, why: problems.append((kind, why)))
    track = media.subscribe_audio()
    frame = await asyncio.wait_for(track.recv(), 2)  # silence stands in for the microphone
    assert not frame.to_ndarray().any()
    media.acquire_speaker()
    assert ("microphone", problems[0][1]) == problems[0] and "PortAudio" in problems[0][1]
    assert media.problems["speaker"].startswith("PortAudio is not installed")
    media.close()
    assert media.open_devices == 0


async def test_no_camera_sends_the_pattern_and_says_so(monkeypatch):
    from client.core import camera

    monkeypatch.setattr(camera, "list_cameras", lambda: [])
    media = LocalMedia(tone_hz=440)
    track = media.subscribe_video()
    frame = await asyncio.wait_for(track.recv(), 2)
    assert frame.width == 640
    assert "no camera was found" in media.problems["camera"]
    media.set_camera(False)  # camera off: black frames in the same slot
    frame = await asyncio.wait_for(track.recv(), 2)
    assert not frame.to_ndarray(format="rgb24").any()
    media.close()


async def test_devices_open_once_and_close_with_the_last_user():
    media = LocalMedia(tone_hz=440)
    a, b = media.subscribe_audio(), media.subscribe_audio()
    await a.recv(), await b.recv()
    assert media.open_devices == 1
    a.stop()
    assert media.open_devices == 1
    b.stop()
    assert media.open_devices == 0


@pytest.mark.parametrize("hz", [440.0, 660.0, 1000.0])
def test_dominant_hz_is_precise(hz):
    t = np.arange(48_000) / 48_000
    assert abs(dominant_hz(np.sin(2 * np.pi * hz * t)) - hz) < 0.5


# ---------------------------------------------------------------- the speaker's mixer


def remote(hz: float, amplitude: float = 0.25):
    """Remote audio as aiortc's Opus decoder hands it over (48 kHz stereo s16, 20 ms frames): frame after frame
    of one continuous sine."""
    n = 0
    while True:
        t = (np.arange(960) + n * 960) / 48_000
        block = (np.sin(2 * np.pi * hz * t) * amplitude * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.repeat(block, 2).reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate, frame.pts = 48_000, n * 960
        n += 1
        yield frame


class Reference:
    """Stands in for the echo canceller: keeps the far-end reference it is given."""

    def __init__(self):
        self.blocks: list[np.ndarray] = []

    def process_render(self, block):
        assert block.dtype == np.int16
        self.blocks.append(block.copy())

    def samples(self) -> np.ndarray:
        return np.concatenate(self.blocks)


def card(speaker: Speaker, frames: int = 960) -> np.ndarray:
    """One period of the sound card: the output callback, as PortAudio calls it."""
    out = np.zeros((frames, 1), dtype=np.float32)
    speaker._callback(out, frames, None, None)
    return out[:, 0].copy()


def amplitude(x: np.ndarray, hz: float, rate: int = 48_000) -> float:
    """The amplitude of the `hz` component of x (x holds whole periods or many of them)."""
    t = np.arange(len(x)) / rate
    return float(2 * abs(np.dot(x, np.exp(-2j * np.pi * hz * t))) / len(x))


def run(speaker: Speaker, sources: dict, periods: int) -> np.ndarray:
    """Each period every source delivers one frame and the card plays one period."""
    out = []
    for _ in range(periods):
        for key, frames in sources.items():
            speaker.play(next(frames), source=key)
        out.append(card(speaker))
    return np.concatenate(out)


def test_speaker_mixes_sources_and_a_released_one_stops_contributing():
    ref = Reference()
    speaker = Speaker(processor=ref)
    speaker.prepare(48_000)
    a, b = remote(440), remote(1000)
    mixed = run(speaker, {"ann": a, "ben": b}, 100)[-48_000:]  # the last second
    assert len(speaker.mixer) == 2
    loud_a, loud_b = amplitude(mixed, 440), amplitude(mixed, 1000)
    assert loud_a > 0.2 and loud_b > 0.2 and abs(loud_a - loud_b) < 0.05 * loud_a, (loud_a, loud_b)
    # The reference is what the card played: the mix, as int16, period by period.
    assert np.array_equal(ref.samples()[-48_000:], (mixed * 32767).astype(np.int16))

    speaker.release("ben")
    assert len(speaker.mixer) == 1
    alone = run(speaker, {"ann": a}, 50)[-24_000:]
    assert amplitude(alone, 1000) < 0.001 and abs(amplitude(alone, 440) - loud_a) < 0.05 * loud_a


def test_the_mix_is_the_sum_of_the_sources_clipped():
    def played(*sources) -> np.ndarray:
        speaker = Speaker()
        speaker.prepare(48_000)
        return run(speaker, {i: remote(hz, amp) for i, (hz, amp) in enumerate(sources)}, 20)

    a, b = played((440, 0.6)), played((660, 0.6))
    both = played((440, 0.6), (660, 0.6))
    assert np.abs(a + b).max() > 1  # loud enough to clip
    assert np.allclose(both, np.clip(a + b, -1, 1), atol=1e-6)


def test_a_stalled_source_is_silent_without_stalling_the_other():
    solo = Speaker()
    solo.prepare(48_000)
    ann_alone = np.sqrt(np.mean(run(solo, {"ann": remote(440)}, 20)[-9600:] ** 2))

    speaker = Speaker()
    speaker.prepare(48_000)
    a, b = remote(440), remote(1000)
    run(speaker, {"ann": a, "ben": b}, 10)
    blocks = [run(speaker, {"ann": a}, 1) for _ in range(20)]  # ben sends nothing for 400 ms
    assert speaker.mixer.ring("ben").underruns >= 1 and speaker.mixer.ring("ann").underruns == 0
    for block in blocks[1:]:  # (the first still plays ben's last block)
        rms = np.sqrt(np.mean(block**2))
        assert abs(rms - ann_alone) < 0.03 * ann_alone, (rms, ann_alone)  # ann plays on, every period
        assert amplitude(block, 1000) < 0.01  # and ben adds nothing
    mixed = run(speaker, {"ann": a, "ben": b}, 10)[-4800:]  # ben is back once its ring refills
    assert amplitude(mixed, 1000) > 0.2 and amplitude(mixed, 440) > 0.2


def test_sources_come_and_go_without_growth():
    media = LocalMedia(tone_hz=440, playback=False)
    speaker = media.acquire_speaker()
    speaker.prepare(48_000)  # as if a card were open, without one
    stay = remote(440)
    for i in range(100):  # 100 peers join, talk and leave while one stays
        joiner, key = remote(500 + i), ("r-1", f"user{i}")
        for _ in range(3):
            media.play(next(joiner), source=key)
            media.play(next(stay), source="stay")
            card(speaker)
        assert len(speaker.mixer) == 2
        media.release_source(key)
        assert len(speaker.mixer) == 1
    media.release_source("never played")  # harmless
    media.release_speaker()
    assert media.open_devices == 0
    media.close()


def test_without_playback_nothing_is_mixed_or_buffered():
    media = LocalMedia(tone_hz=440, playback=False)
    speaker = media.acquire_speaker()
    frames = remote(440)
    for _ in range(10):
        media.play(next(frames), source="ann")
    assert speaker.mixer is None and speaker.ring is None
    media.release_source("ann")
    media.release_speaker()
    media.close()


def test_a_card_at_another_rate_gets_the_mix_and_the_reference_stays_48k():
    ref = Reference()
    speaker = Speaker(processor=ref)
    speaker.prepare(44_100)
    played = []
    a, b = remote(440), remote(1000)
    for _ in range(100):
        speaker.play(next(a), source="ann")
        speaker.play(next(b), source="ben")
        played.append(card(speaker, 882))  # 20 ms at 44.1 kHz
    out = np.concatenate(played)[-44_100:]
    assert amplitude(out, 440, 44_100) > 0.2 and amplitude(out, 1000, 44_100) > 0.2
    reference = ref.samples()
    assert abs(len(reference) - 100 * 960) <= 960  # 48 kHz, whatever the card's rate
    last = reference[-48_000:] / 32767
    assert abs(amplitude(last, 440) - amplitude(out, 440, 44_100)) < 0.02
    assert abs(amplitude(last, 1000) - amplitude(out, 1000, 44_100)) < 0.02


# ---------------------------------------------------------------- received level


def test_received_level_follows_a_tone_and_falls_in_silence():
    tone, silent = Received(), Received()
    t = np.arange(960) / 48_000
    block = (np.sin(2 * np.pi * 440 * t) * 0.3 * 32767).astype(np.int16)
    for _ in range(25):  # half a second
        tone.hear(block, 0.02)
        silent.hear(np.zeros(960, np.int16), 0.02)
    assert abs(tone.level - 0.3 / np.sqrt(2)) < 0.01 and silent.level == 0
    for _ in range(15):  # 300 ms of silence after the tone: two time constants
        tone.hear(np.zeros(960, np.int16), 0.02)
    assert tone.level < 0.3 / np.sqrt(2) / 2
    tone.drop_audio()
    assert tone.level == 0


# ---------------------------------------------------------------- video size


def test_video_size_for_the_number_of_peers():
    assert [video_size_for(n) for n in range(0, 8)] == [(640, 480), (640, 480), (480, 360)] + [(320, 240)] * 5


async def test_pattern_is_drawn_at_the_size_set_and_its_counter_reads_back():
    media = LocalMedia(tone_hz=440, pattern=True)
    track = media.subscribe_video()
    first = await asyncio.wait_for(track.recv(), 2)
    assert (first.width, first.height) == (640, 480)
    media.set_video_size(320, 240)
    counters = []
    for _ in range(3):
        frame = await asyncio.wait_for(track.recv(), 2)
        assert (frame.width, frame.height) == (320, 240)
        counters.append(read_counter(frame.to_ndarray(format="rgb24")))
    assert counters == [counters[0], counters[0] + 1, counters[0] + 2] and counters[0] >= 1
    media.close()

    media = LocalMedia(tone_hz=440, pattern=True)  # a size set before the first call applies to it
    media.set_video_size(480, 360)
    frame = await asyncio.wait_for(media.subscribe_video().recv(), 2)
    assert (frame.width, frame.height) == (480, 360) and read_counter(frame.to_ndarray(format="rgb24")) == 0
    media.close()


class FakePlayer:
    """A MediaPlayer whose camera gives frames of one size."""

    def __init__(self, width: int, height: int):
        self.video = self
        self.width, self.height = width, height

    async def recv(self):
        return av.VideoFrame.from_ndarray(np.full((self.height, self.width, 3), 99, np.uint8), format="rgb24")

    def stop(self):
        pass


async def test_camera_frames_larger_than_the_size_are_scaled_down_to_fit():
    track = VideoTrack(CameraSource(FakePlayer(1280, 720), "fake"), (320, 240))
    frame = await track.recv()
    assert (frame.width, frame.height) == (320, 180)  # inside 320x240, the camera's 16:9 kept
    track.set_size(640, 480)
    assert ((f := await track.recv()).width, f.height) == (640, 360)
    track.replace_source(CameraSource(FakePlayer(160, 120), "small"))
    assert ((f := await track.recv()).width, f.height) == (160, 120)  # smaller: as it is
    track.replace_source(BlackSource())
    track.set_size(480, 360)
    assert ((f := await track.recv()).width, f.height) == (320, 240)  # camera off: black frames stay small
    track.stop()
