"""Echo cancellation on a synthetic recorded echo case: ERLE, double talk, pass-through, switching, threads.

The echo case is built here, deterministic from a seed, and bench/aec.py reuses it. The far end is a
speech-like signal (syllables of gliding harmonics shaped by formants, noise bursts for fricatives, pauses
between words); the microphone hears it through a room (an exponentially decaying noise impulse response,
180 ms tail, after a 60 or 250 ms playback-to-capture delay) plus a quieter near-end talker and a little
noise. Timeline: far end alone for 0-9 s (ERLE is measured on 2-9 s, after convergence), double talk for
9-12 s, the near end alone from 12.5 s.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass

import numpy as np
import pytest

from client.core.aec import FRAME, RATE, AudioProcessor, create_processor

BLOCK = 2 * FRAME  # the microphone's 20 ms blocks
SECONDS = 14.0

# What the tests assert, set well below what livekit 1.2.1 measured on this case (see bench/aec.py):
MIN_ERLE_DB = 20.0  # measured 44.5 dB (60 ms delay) and 47.0 dB (250 ms)
MIN_DOUBLE_TALK_CORR = 0.5  # measured 0.75 and 0.78; the raw microphone scores 0.31 and 0.33
MIN_DOUBLE_TALK_LEVEL_DB = -6.0  # near-end level kept in double talk: measured -2.1 and -1.8 dB
MIN_NEAR_ONLY_CORR = 0.7  # the near end alone, after the echo is gone: measured 0.91 at both delays


# ----------------------------------------------------------------------------------------- the echo case


def speech_like(rng: np.random.Generator, seconds: float, f0_range: tuple[float, float],
                formants: tuple[float, ...], level_db: float) -> np.ndarray:
    """Words of 2-4 syllables with pauses; `level_db` is the RMS while talking, in dB below int16 full scale."""
    n = int(seconds * RATE)
    out = np.zeros(n)
    t = int(0.05 * RATE)
    while t < n:
        for _ in range(rng.integers(2, 5)):
            dur = int(rng.uniform(0.12, 0.30) * RATE)
            if t + dur >= n:
                break
            env = np.sin(np.pi * np.arange(dur) / dur) ** 0.6
            if rng.random() < 0.2:  # a fricative: noise band-limited to 2.5-8 kHz
                spectrum = np.fft.rfft(rng.standard_normal(dur))
                f = np.fft.rfftfreq(dur, 1 / RATE)
                x = np.fft.irfft(spectrum * ((f > 2500) & (f < 8000)), dur) * 0.5
            else:  # a vowel: harmonics of a gliding f0, each weighted by its distance to the formants
                f0a, f0b = rng.uniform(*f0_range, size=2)
                phase = 2 * np.pi * np.cumsum(np.linspace(f0a, f0b, dur)) / RATE
                centres = [fc * rng.uniform(0.85, 1.15) for fc in formants]
                f0 = (f0a + f0b) / 2
                x = np.zeros(dur)
                for k in range(1, int(4000 / f0)):
                    gain = sum(1 / (1 + ((k * f0 - fc) / (0.15 * fc + 60)) ** 2) for fc in centres)
                    x += gain / np.sqrt(k) * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
            out[t:t + dur] += x * env
            t += dur + int(rng.uniform(0.02, 0.08) * RATE)
        t += int(rng.uniform(0.2, 0.6) * RATE)
    rms = np.sqrt(np.mean(out[out != 0] ** 2))
    return out / rms * 32768 * 10 ** (level_db / 20)


def room_response(rng: np.random.Generator, delay_ms: float, tail_ms: float = 180) -> np.ndarray:
    """A direct path and an early reflection after `delay_ms`, then exponentially decaying noise (RT60 = tail)."""
    d = int(delay_ms * RATE / 1000)
    m = int(tail_ms * RATE / 1000)
    h = np.zeros(d + m)
    h[d:] = rng.standard_normal(m) * np.exp(-6.9 * np.arange(m) / m) * 0.5
    h[d] += 1.0
    h[d + int(0.003 * RATE)] += 0.6
    return h


@dataclass
class EchoCase:
    far: np.ndarray  # int16: what the speaker plays (the reference)
    mic: np.ndarray  # int16: echo + near end + noise
    echo: np.ndarray  # float: the echo alone, as it reaches the microphone
    near: np.ndarray  # float: the near-end talker alone
    far_only: slice  # where ERLE is measured (after 2 s to converge)
    double_talk: slice
    near_only: slice


def echo_case(delay_ms: float = 60, seed: int = 1) -> EchoCase:
    rng = np.random.default_rng(seed)
    n = int(SECONDS * RATE) // BLOCK * BLOCK
    far = speech_like(rng, SECONDS, (95, 150), (700, 1200, 2600), -16)[:n]
    far[int(12.0 * RATE):] = 0  # the far end stops; its echo has died out by 12.0 s + delay + tail
    h = room_response(rng, delay_ms)
    size = 1 << (n + len(h)).bit_length()
    echo = np.fft.irfft(np.fft.rfft(far, size) * np.fft.rfft(h, size), size)[:n]  # np.convolve, but fast
    echo *= 32768 * 10 ** (-22 / 20) / np.sqrt(np.mean(echo[:int(12.0 * RATE)] ** 2))  # echo at -22 dBFS RMS
    talker = speech_like(rng, SECONDS, (180, 260), (500, 1700, 2900), -30)[:n]  # 8 dB under the echo
    double_talk, near_only = slice(int(9 * RATE), int(12 * RATE)), slice(int(12.5 * RATE), n)
    near = np.zeros(n)
    near[double_talk], near[near_only] = talker[double_talk], talker[near_only]
    noise = rng.standard_normal(n) * 32768 * 10 ** (-60 / 20)
    mic = echo + near + noise
    return EchoCase(_int16(far), _int16(mic), echo, near, slice(int(2 * RATE), int(9 * RATE)), double_talk, near_only)


def _int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def run(processor: AudioProcessor, case: EchoCase) -> np.ndarray:
    """Drive a processor as the app does, one 20 ms block at a time: the speaker's block, then the microphone's."""
    out = np.empty_like(case.mic)
    for i in range(0, len(case.mic), BLOCK):
        processor.process_render(case.far[i:i + BLOCK])
        out[i:i + BLOCK] = processor.process_capture(case.mic[i:i + BLOCK])
    return out


def power_db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.asarray(x, dtype=float) ** 2) + 1e-12))


def best_correlation(reference: np.ndarray, signal: np.ndarray, max_lag_ms: float = 50) -> float:
    """Peak normalized cross-correlation of `signal` with `reference`, `signal` lagging by 0..max_lag_ms.

    The lag search matters: WebRTC's processing delays its output by about 15 ms at 48 kHz."""
    a = reference - reference.mean()
    b = np.asarray(signal, dtype=float) - np.mean(signal)
    n = len(a)
    xc = np.fft.irfft(np.fft.rfft(b, 2 * n) * np.conj(np.fft.rfft(a, 2 * n)))[:int(max_lag_ms * RATE / 1000) + 1]
    return float(np.max(xc) / np.sqrt((a @ a) * (b @ b) + 1e-12))


@dataclass
class Scores:
    erle_db: float  # echo power at the microphone over output power, far end alone, after 2 s
    double_talk_corr: float  # output against the clean near end, both talking
    double_talk_level_db: float  # output power over clean near-end power, both talking
    near_only_corr: float
    raw_double_talk_corr: float  # what the unprocessed microphone scores


def score(case: EchoCase, out: np.ndarray) -> Scores:
    dt, no, fo = case.double_talk, case.near_only, case.far_only
    return Scores(
        erle_db=power_db(case.echo[fo]) - power_db(out[fo]),
        double_talk_corr=best_correlation(case.near[dt], out[dt]),
        double_talk_level_db=power_db(out[dt]) - power_db(case.near[dt]),
        near_only_corr=best_correlation(case.near[no], out[no]),
        raw_double_talk_corr=best_correlation(case.near[dt], case.mic[dt]),
    )


# ----------------------------------------------------------------------------------------------- tests

_cases: dict[float, EchoCase] = {}


def cached_case(delay_ms: float) -> EchoCase:
    if delay_ms not in _cases:
        _cases[delay_ms] = echo_case(delay_ms)
    return _cases[delay_ms]


@pytest.fixture
def processor():
    pytest.importorskip("livekit")
    p = create_processor()
    assert not p.name.startswith("none"), p.name
    yield p
    p.close()


@pytest.fixture(scope="module", params=[60, 250], ids=lambda d: f"delay{d}ms")
def processed(request):
    """The echo case at one delay and a fresh processor's output for it."""
    pytest.importorskip("livekit")
    case = cached_case(request.param)
    p = create_processor()
    try:
        return case, run(p, case)
    finally:
        p.close()


def test_echo_is_removed(processed):
    case, out = processed
    s = score(case, out)
    assert s.erle_db >= MIN_ERLE_DB, s


def test_near_end_survives_double_talk(processed):
    case, out = processed
    s = score(case, out)
    assert s.double_talk_corr >= MIN_DOUBLE_TALK_CORR, s
    assert s.double_talk_corr > s.raw_double_talk_corr + 0.2, s  # the echo that masked it is gone
    assert s.double_talk_level_db >= MIN_DOUBLE_TALK_LEVEL_DB, s
    assert s.near_only_corr >= MIN_NEAR_ONLY_CORR, s


def test_disabled_passes_capture_through(processor):
    processor.enabled = False
    case = cached_case(60)
    for i in range(0, len(case.mic), BLOCK):
        block = case.mic[i:i + BLOCK]
        processor.process_render(case.far[i:i + BLOCK])
        assert processor.process_capture(block) is block
    assert np.array_equal(run(processor, case), case.mic)


def test_switches_at_runtime(processor):
    case = cached_case(60)
    half = len(case.mic) // 2 // BLOCK * BLOCK
    first = EchoCase(case.far[:half], case.mic[:half], case.echo[:half], case.near[:half], slice(2 * RATE, half),
                     slice(0, 0), slice(0, 0))
    out = run(processor, first)
    assert power_db(case.echo[first.far_only]) - power_db(out[first.far_only]) >= MIN_ERLE_DB
    processor.enabled = False
    assert processor.enabled is False
    assert np.array_equal(run(processor, first), first.mic)
    processor.enabled = True
    out = run(processor, first)
    assert power_db(case.echo[first.far_only]) - power_db(out[first.far_only]) >= MIN_ERLE_DB


def test_missing_library_gives_a_pass_through(monkeypatch):
    monkeypatch.setitem(sys.modules, "livekit", None)  # import livekit now raises ImportError
    p = create_processor()
    assert type(p) is AudioProcessor
    assert p.name == "none: livekit is not installed"
    block = np.arange(BLOCK, dtype=np.int16)
    p.process_render(block)
    assert p.process_capture(block) is block
    p.enabled = False
    assert p.process_capture(block) is block
    p.close()


def test_block_shapes_and_bad_input(processor):
    column = np.zeros((BLOCK, 1), dtype=np.int16)  # sounddevice's shape
    processor.process_render(column)
    assert processor.process_capture(column).shape == (BLOCK, 1)
    assert processor.process_capture(np.zeros(3 * FRAME, dtype=np.int16)).shape == (3 * FRAME,)
    processor.process_render(np.zeros(441, dtype=np.int16))  # the reference may come in any length
    with pytest.raises(ValueError):
        processor.process_capture(np.zeros(BLOCK + 1, dtype=np.int16))
    with pytest.raises(TypeError):
        processor.process_capture(np.zeros(BLOCK, dtype=np.float32))
    with pytest.raises(ValueError):
        processor.process_capture(np.zeros((BLOCK, 2), dtype=np.int16))


def test_close_then_pass_through(processor):
    block = np.ones(BLOCK, dtype=np.int16)
    processor.close()
    processor.close()
    processor.process_render(block)
    assert processor.process_capture(block) is block


def test_speaker_and_microphone_threads(processor):
    """The reference arrives on its own thread, in odd-sized pieces, up to 2 blocks ahead of the capture."""
    case = cached_case(60)
    blocks = len(case.mic) // BLOCK
    rendered = threading.Semaphore(0)  # the microphone never hears a block the speaker has not been given
    room = threading.Semaphore(2)  # the speaker runs at most 2 blocks ahead
    out = np.empty_like(case.mic)
    errors: list[BaseException] = []
    rng = np.random.default_rng(7)
    cuts = [rng.integers(1, BLOCK) for _ in range(blocks)]

    def speaker():
        try:
            for b in range(blocks):
                room.acquire()
                block = case.far[b * BLOCK:(b + 1) * BLOCK]
                processor.process_render(block[:cuts[b]])
                processor.process_render(block[cuts[b]:])
                rendered.release()
        except BaseException as exc:  # surfaced below
            errors.append(exc)
            raise

    thread = threading.Thread(target=speaker, daemon=True)
    thread.start()
    for b in range(blocks):
        assert rendered.acquire(timeout=10)
        out[b * BLOCK:(b + 1) * BLOCK] = processor.process_capture(case.mic[b * BLOCK:(b + 1) * BLOCK])
        room.release()
    thread.join(timeout=10)
    assert not errors
    # The OS decides how far ahead the speaker runs, and the module converges more slowly on a bursty
    # reference: 40 runs measured 29-45 dB over 2-9 s and 43-56 dB over 4-9 s, the window used here.
    # (Let the speaker run 3 blocks ahead and 90 runs measured 22-45 dB over 2-9 s, 28-56 dB over 4-9 s.)
    settled = slice(4 * RATE, case.far_only.stop)
    assert power_db(case.echo[settled]) - power_db(out[settled]) >= MIN_ERLE_DB
