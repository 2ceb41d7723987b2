"""Devices that come and go, on the real PulseAudio that .ci/start-audio runs: the watch sees sinks and sources
loaded and unloaded, open streams go where they are asked, and an unplugged device in use is replaced by the
default and taken back when it returns. Cameras (no v4l2 device can be made here) with a stand-in list."""

from __future__ import annotations

import asyncio
import subprocess
from fractions import Fraction

import av
import numpy as np
import pytest

from client.core import audio, devices
from client.core import media as media_module
from client.core.camera import Camera
from client.core.media import LocalMedia
from tests.components import pulse_module, require_audio
from tests.support import eventually

pytestmark = pytest.mark.asyncio


def stream_device(kind: str) -> str:
    """The sink (kind "sink-inputs") or source ("source-outputs") our process's stream is on, by pactl."""
    import os

    out = subprocess.run(["pactl", "list", kind], capture_output=True, text=True, timeout=10).stdout
    names = {line.split()[0]: line.split()[1]
             for line in subprocess.run(["pactl", "list", "short", "sinks" if kind == "sink-inputs" else "sources"],
                                        capture_output=True, text=True, timeout=10).stdout.splitlines()}
    for block in out.split("\n\n"):
        if f'application.process.id = "{os.getpid()}"' in block:
            for line in block.splitlines():
                line = line.strip()
                if line.startswith(("Sink:", "Source:")):
                    return names.get(line.split()[1], line.split()[1])
    return ""


async def test_the_watch_sees_sinks_and_sources_plugged_in_and_out():
    require_audio()
    seen: list[devices.Devices] = []
    watch = devices.DeviceWatch(seen.append)
    watch.start()
    try:
        def speakers():
            return [d.name for d in (seen[-1] if seen else watch.latest).speakers]

        def microphones():
            return [d.name for d in (seen[-1] if seen else watch.latest).microphones]

        assert "Callbox-test-sink" not in speakers()
        with pulse_module("module-null-sink", sink_name="callbox_test_sink",
                          sink_properties="device.description=Callbox-test-sink") as unplug:
            await eventually(lambda: "Callbox-test-sink" in speakers(), timeout=2.0)
            with pulse_module("module-null-source", source_name="callbox_test_mic", description="Callbox-test-mic"):
                await eventually(lambda: "Callbox-test-mic" in microphones(), timeout=2.0)
                # Its monitor is no microphone: it is not the default source.
                assert not any("Monitor of Callbox-test-sink" in m for m in microphones())
            await eventually(lambda: "Callbox-test-mic" not in microphones(), timeout=2.0)
            unplug()
            await eventually(lambda: "Callbox-test-sink" not in speakers(), timeout=2.0)
        mic = next(d for d in watch.latest.microphones if d.is_default_input)
        assert mic.key == "callbox_null.monitor"  # the machine's only microphone, as the default, stays listed
    finally:
        await watch.stop()
    assert not watch._thread.is_alive()


async def test_a_speaker_in_use_moves_to_the_default_when_unplugged_and_back_when_it_returns():
    require_audio()
    args = dict(sink_name="callbox_test_headset", sink_properties="device.description=Test-headset")
    media = LocalMedia(speaker="callbox_test_headset")
    try:
        with pulse_module("module-null-sink", **args) as unplug:
            spk = media.acquire_speaker()
            assert (spk.key, spk.name) == ("callbox_test_headset", "Test-headset")
            assert stream_device("sink-inputs") == "callbox_test_headset"
            assert media.follow(devices.current()) == []  # nothing changed: nothing is reopened
            unplug()
            moves = media.follow(devices.current())
            assert moves == [("speaker", "Speaker Test-headset was unplugged; now using Callbox-null-sink")]
            assert media._speaker.key == "callbox_null"
            assert stream_device("sink-inputs") == "callbox_null"
        with pulse_module("module-null-sink", **args):  # plugged in again
            moves = media.follow(devices.current())
            assert moves == [("speaker", "Speaker: now using Test-headset instead of Callbox-null-sink")]
            assert stream_device("sink-inputs") == "callbox_test_headset"
            assert media.speaker_id == "callbox_test_headset"  # the choice itself never changed
    finally:
        media.release_speaker()
        media.close()


async def test_a_microphone_in_use_moves_to_the_default_when_unplugged():
    require_audio()
    media = LocalMedia(microphone="callbox_test_mic", echo_cancellation=False)
    try:
        with pulse_module("module-null-source", source_name="callbox_test_mic", description="Test-mic") as unplug:
            track = media.subscribe_audio()
            assert media.in_use("microphone") == "callbox_test_mic"
            assert stream_device("source-outputs") == "callbox_test_mic"
            await asyncio.wait_for(track.recv(), 5)
            unplug()
            moves = media.follow(devices.current())
            assert moves == [("microphone", "Microphone Test-mic was unplugged; now using Monitor of "
                                            "Callbox-null-sink")]
            assert media.in_use("microphone") == "callbox_null.monitor"
            frame = await asyncio.wait_for(track.recv(), 5)  # the same track goes on, from the new device
            assert frame.samples == audio.BLOCK
        track.stop()
    finally:
        media.close()


async def test_portaudio_is_rescanned_only_while_no_stream_is_open():
    """Without a sound server PortAudio's own list is all there is; re-reading it would stop open streams."""
    require_audio()
    mic = audio.Microphone()
    mic.start()
    try:
        assert audio.rescan() is False
    finally:
        mic.stop()
    assert audio.rescan() is True
    assert audio.list_audio_devices()  # PortAudio works after it


class StandInPlayer:
    """What open_camera returns (a MediaPlayer), for a camera that only exists in this test."""

    def __init__(self, value: int):
        self.value = value
        self.video = self

    async def recv(self):
        await asyncio.sleep(1 / 30)  # a camera's frame rate
        frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), self.value, np.uint8), format="rgb24")
        frame.pts, frame.time_base = 0, Fraction(1, 30)
        return frame

    def stop(self):
        pass


async def test_the_camera_follows_cameras_that_come_and_go(monkeypatch):
    there: list[Camera] = []
    monkeypatch.setattr(media_module.cams, "list_cameras", lambda: list(there))
    monkeypatch.setattr(media_module.cams, "open_camera", lambda cam: StandInPlayer(int(cam.id[-1]) * 50))
    media = LocalMedia(tone_hz=None, echo_cancellation=False)
    track = media.subscribe_video()
    try:
        assert media.in_use("camera") is None and "camera" in media.problems
        there.append(Camera("/dev/video2", "USB camera", "v4l2"))
        moves = media.follow(devices.Devices(cameras=tuple(there)))
        assert moves == [("camera", "Camera: now using USB camera")]
        assert "camera" not in media.problems
        frame = await asyncio.wait_for(track.recv(), 5)
        assert int(frame.to_ndarray(format="rgb24").mean()) in range(95, 106)
        there.clear()
        moves = media.follow(devices.Devices())
        assert moves == [("camera", "Camera USB camera was unplugged; now using a test pattern")]
    finally:
        track.stop()
        media.close()
