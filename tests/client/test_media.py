"""Media pieces without a network: ring buffer drift, tracks' timestamps, the test pattern, missing devices."""

import asyncio

import numpy as np
import pytest

from client.core import audio
from client.core.audio import RingBuffer
from client.core.media import LocalMedia
from client.core.tracks import (
    AudioTrack,
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
