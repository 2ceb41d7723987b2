"""Real PortAudio streams: a 1 kHz tone played on the output is recorded back on the input, concurrently.

Needs a PulseAudio server whose default source is the monitor of its default sink: in CI, the null sink
that .ci/start-audio sets up. Without one the test skips, or fails under CALLBOX_REQUIRE_AUDIO=1 (CI).
"""

from __future__ import annotations

import threading
import time

from tests.components import pick_devices, require_audio

RATE = 48_000
TONE_HZ = 1_000.0
AMPLITUDE = 0.5  # about -9 dBFS RMS
TONE_S = 1.0  # seconds of the tone to record and analyse: 1 Hz FFT bins
START_TIMEOUT_S = 5.0  # a stream's first audio may come late: an idle null sink with no reader renders every 2 s


def dominant_hz(x, rate: int) -> float:
    """The frequency of the strongest FFT bin (Hann window), refined by parabolic interpolation."""
    import numpy as np

    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    spectrum[0] = 0.0
    k = int(np.argmax(spectrum))
    if 0 < k < len(spectrum) - 1:
        a, b, c = np.log(spectrum[k - 1 : k + 2] + 1e-12)
        k += 0.5 * (a - c) / (a - 2 * b + c)
    return k * rate / len(x)


def test_tone_played_on_output_is_recorded_on_input():
    require_audio()
    import numpy as np
    import sounddevice as sd

    in_dev, out_dev = pick_devices()
    print(f"PortAudio: {sd.get_portaudio_version()[1]}")
    for role, dev in (("output", out_dev), ("input", in_dev)):
        print(f"{role} device: #{dev['index']} {dev['name']!r} ({sd.query_hostapis(dev['hostapi'])['name']})")

    lock = threading.Lock()
    chunks: list[np.ndarray] = []
    statuses: list[str] = []
    phase = 0
    played = 0

    def play(outdata, frames, _time, status):
        nonlocal phase, played
        if status:
            statuses.append(f"output: {status}")
        t = (phase + np.arange(frames)) / RATE
        outdata[:, 0] = AMPLITUDE * np.sin(2 * np.pi * TONE_HZ * t)
        phase = (phase + frames) % RATE  # whole periods of 1 kHz in each second at 48 kHz
        played += frames

    def record(indata, _frames, _time, status):
        if status:
            statuses.append(f"input: {status}")
        with lock:
            chunks.append(indata[:, 0].copy())

    def recording() -> np.ndarray:
        with lock:
            return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)

    def wait_for(check, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S + TONE_S
        while not check():
            assert time.monotonic() < deadline, f"{what} (stream status flags: {statuses or 'none'})"
            time.sleep(0.02)

    kw = dict(samplerate=RATE, channels=1, dtype="float32")
    with sd.InputStream(device=in_dev["index"], callback=record, **kw) as inp:
        # The input runs first, so that what the output plays is recorded from its first sample on.
        wait_for(lambda: len(recording()) > 0, "the input stream delivered no audio")
        silent_before = len(recording())
        with sd.OutputStream(device=out_dev["index"], callback=play, **kw) as out:
            print(f"stream latency: input {inp.latency * 1000:.0f} ms, output {out.latency * 1000:.0f} ms")

            def tone_recorded() -> bool:
                loud = np.flatnonzero(np.abs(recording()[silent_before:]) > 0.1 * AMPLITUDE)
                return loud.size > 0 and len(recording()) - silent_before - loud[0] >= TONE_S * RATE

            wait_for(tone_recorded, f"{TONE_S} s of the tone did not come back on the input")

    x = recording()[silent_before:]
    onset = int(np.flatnonzero(np.abs(x) > 0.1 * AMPLITUDE)[0])
    tone = x[onset : onset + int(TONE_S * RATE)].astype(np.float64)
    rms = float(np.sqrt(np.mean(tone**2)))
    level_db = 20 * np.log10(max(rms, 1e-12))
    hz = dominant_hz(tone, RATE)
    print(
        f"played {played} frames; recorded {len(x)} frames after the output started, the tone from "
        f"{onset / RATE * 1000:.0f} ms on; stream status flags: {statuses or 'none'}"
    )
    print(f"recorded tone: {len(tone) / RATE:.2f} s at {level_db:.1f} dBFS RMS, dominant frequency {hz:.2f} Hz")
    assert abs(hz - TONE_HZ) <= 5.0, f"dominant frequency {hz:.2f} Hz, expected {TONE_HZ:.0f} ± 5 Hz"
    assert level_db > -20.0, f"recorded level {level_db:.1f} dBFS is near silence (played at about -9 dBFS)"


async def test_engine_speaker_and_microphone_pass_a_tone():
    """The app's own Speaker (ring buffer, resampling) plays remote audio that its Microphone records back."""
    require_audio()
    import asyncio

    import av
    import numpy as np

    from client.core.audio import Microphone, Speaker
    from client.core.tracks import dominant_hz as engine_hz

    in_dev, out_dev = pick_devices()
    speaker = Speaker(out_dev["name"])
    mic = Microphone(in_dev["name"])
    speaker.start()
    mic.start()
    try:
        # Remote audio as aiortc's Opus decoder hands it over: 48 kHz stereo s16, 20 ms frames.
        t = np.arange(48_000 * 2) / 48_000
        tone = (np.sin(2 * np.pi * 660 * t) * 0.4 * 32767).astype(np.int16)
        got = []
        for i in range(100):  # two seconds, paced in real time
            block = tone[i * 960:(i + 1) * 960]
            frame = av.AudioFrame.from_ndarray(np.repeat(block, 2).reshape(1, -1), format="s16", layout="stereo")
            frame.sample_rate = 48_000
            speaker.play(frame)
            await asyncio.sleep(0.02)
            while not mic.queue.empty():
                got.append(mic.queue.get_nowait())
        recorded = np.concatenate(got)[-48_000:]
        hz = engine_hz(recorded)
        print(f"speaker {speaker.name!r} -> microphone {mic.name!r}: {hz:.1f} Hz, "
              f"underruns {speaker.ring.underruns}, mic blocks dropped {mic.dropped}")
        assert abs(hz - 660) <= 5
        assert np.sqrt(np.mean(recorded.astype(float) ** 2)) > 1000  # well above silence
    finally:
        mic.stop()
        speaker.stop()
