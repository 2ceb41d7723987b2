"""Echo cancellers on one recorded echo case: ERLE, double talk, added delay, CPU per 10 ms block; vs pass-through.

The echo case is the test suite's (tests/client/test_aec.py): a speech-like far end through a synthetic room
after a 60 ms and a 250 ms playback-to-capture delay, a quieter near-end talker, a little noise. Each candidate
runs as the app drives Callbox's processor, one 20 ms block at a time: the speaker's block, then the
microphone's. Callbox's own processor (client.core.aec.create_processor) is measured along with every other
library that happens to be installed; those absent are listed as such. CPU is process time (all threads, so
a library's own worker threads count) over the audio's duration.

    python bench/aec.py            # the libraries compared are not Callbox dependencies: pip install them to see them
"""

from __future__ import annotations

import argparse
import importlib.metadata
import pathlib
import sys
import time
from collections import deque

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # the repository: client/, tests/

from _common import verdict  # noqa: E402

from client.core.aec import FRAME, RATE, AudioProcessor, create_processor  # noqa: E402
from tests.client.test_aec import MIN_ERLE_DB, EchoCase, echo_case, run, score  # noqa: E402

DELAYS_MS = (60, 250)
TARGET_CPU = 0.10  # of one core, relative to real time


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "-"


class Paired:
    """For libraries that take (microphone, reference) pairs: the reference waits in a FIFO for its capture block."""

    def __init__(self, process):
        self._process = process  # (mic int16, ref int16) -> int16, same length
        self._fifo: deque[np.ndarray] = deque()
        self._queued = 0

    def process_render(self, block: np.ndarray) -> None:
        self._fifo.append(block.copy())
        self._queued += len(block)

    def process_capture(self, block: np.ndarray) -> np.ndarray:
        need, parts = len(block), []
        while need and self._fifo:
            head = self._fifo[0]
            take = min(need, len(head))
            parts.append(head[:take])
            if take == len(head):
                self._fifo.popleft()
            else:
                self._fifo[0] = head[take:]
            need -= take
            self._queued -= take
        parts.append(np.zeros(need, dtype=np.int16))  # no reference yet: silence was playing
        return self._process(block, np.concatenate(parts))

    def close(self) -> None:
        pass


def livekit_without_ns():
    from client.core.aec import LiveKitProcessor
    return LiveKitProcessor(noise_suppression=False)


def pywebrtc_audio():
    from pywebrtc_audio import AudioProcessor as Apm
    apm = Apm(sample_rate=RATE, echo_cancellation=True, noise_suppression=True, high_pass_filter=True)
    return Paired(apm.process)


def speexdsp_aec():
    from speexdsp_aec import SpeexAec  # ctypes over the system's libspeexdsp (Debian: libspeexdsp1)
    # 300 ms does not span the 250 ms case (delay + 180 ms tail); 500 ms does but converges slower: 13.4 / 6.9 dB
    aec = SpeexAec(sample_rate=RATE, frame_ms=10, filter_tail_ms=300)
    return Paired(lambda mic, ref: np.frombuffer(aec.process(mic, ref), dtype=np.int16))


def pyaec():
    from pyaec import Aec
    aec = Aec(FRAME, RATE * 300 // 1000, RATE, True)  # 300 ms, as for speexdsp-aec (500 ms: 19.1 / 12.2 dB)

    def process(mic, ref):
        return np.concatenate([np.array(aec.cancel_echo(mic[i:i + FRAME].tolist(), ref[i:i + FRAME].tolist()),
                                        dtype=np.int16) for i in range(0, len(mic), FRAME)])
    return Paired(process)


def voiceclean():
    from voiceclean.aec import AEC
    aec = AEC(sample_rate=RATE, chunk_ms=20)

    class Adapter:
        def process_render(self, block):
            aec.feed_reference(block.tobytes())

        def process_capture(self, block):
            out = np.frombuffer(aec.process(block.tobytes()), dtype=np.int16)
            return out if len(out) == len(block) else np.concatenate([out, np.zeros(len(block) - len(out), np.int16)])

        def close(self):
            pass
    return Adapter()


# (label, distribution whose version is shown, factory); a factory raising ImportError means "not installed"
CANDIDATES = [
    ("callbox: create_processor()", "livekit", create_processor),
    ("livekit APM, AEC without NS", "livekit", livekit_without_ns),
    ("pywebrtc-audio (AEC+NS)", "pywebrtc-audio", pywebrtc_audio),
    ("speexdsp-aec (Speex MDF)", "speexdsp-aec", speexdsp_aec),
    ("pyaec (Speex port in Rust)", "pyaec", pyaec),
    ("voiceclean (correlation gate)", "voiceclean", voiceclean),
    ("pass-through", "-", lambda: AudioProcessor("pass-through")),
]


def added_delay_ms(case: EchoCase, out: np.ndarray, max_ms: float = 50) -> float:
    """How much later than its input the output carries the near end alone, by the cross-correlation peak."""
    a = case.near[case.near_only]
    b = out[case.near_only].astype(float)
    n = len(a)
    xc = np.fft.irfft(np.fft.rfft(b, 2 * n) * np.conj(np.fft.rfft(a, 2 * n)))[:int(max_ms * RATE / 1000) + 1]
    return float(np.argmax(xc)) * 1000 / RATE


def measure(factory, cases: dict[int, EchoCase]) -> dict:
    results, cpu, seconds = {}, 0.0, 0.0
    for delay, case in cases.items():
        proc = factory()
        try:
            t0 = time.process_time()
            out = run(proc, case)
            cpu += time.process_time() - t0
        finally:
            proc.close()
        seconds += len(case.mic) / RATE
        results[delay] = (score(case, out), added_delay_ms(case, out))
    return dict(results=results, cpu=cpu / seconds)


def main() -> bool:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.parse_args()
    cases = {d: echo_case(d) for d in DELAYS_MS}
    print(f"echo case: {len(cases[60].mic) / RATE:.1f} s at {RATE} Hz; ERLE over the far end alone after 2 s;\n"
          "double talk: output vs clean near end (correlation, level); near only: correlation; delay: output lag\n")
    head = (f"{'candidate':<30} {'version':>8} " + " ".join(f"{'ERLE@' + str(d) + 'ms':>11}" for d in DELAYS_MS)
            + f" {'DT corr':>8} {'DT level':>9} {'near corr':>9} {'lag':>7} {'CPU/10ms':>9} {'CPU/RT':>7}")
    print(head)
    print("-" * len(head))
    ours = None
    for label, dist, factory in CANDIDATES:
        try:
            m = measure(factory, cases)
        except ImportError as exc:
            print(f"{label:<30} {'-':>8}  not installed ({exc.name or exc})")
            continue
        except Exception as exc:  # a library that installs but cannot run here (a missing system library)
            print(f"{label:<30} {version(dist):>8}  failed: {type(exc).__name__}: {exc}")
            continue
        r = m["results"]
        first = r[DELAYS_MS[0]][0]
        print(f"{label:<30} {version(dist):>8} "
              + " ".join(f"{r[d][0].erle_db:>9.1f}dB" for d in DELAYS_MS)
              + f" {first.double_talk_corr:>8.2f} {first.double_talk_level_db:>7.1f}dB {first.near_only_corr:>9.2f}"
              f" {r[DELAYS_MS[0]][1]:>5.1f}ms {m['cpu'] * 10:>7.3f}ms {m['cpu']:>7.1%}")
        if label.startswith("callbox"):
            ours = (create_processor().name, m)
    print(f"\n(raw microphone in double talk: correlation {score(cases[60], cases[60].mic).raw_double_talk_corr:.2f},"
          f" level {score(cases[60], cases[60].mic).double_talk_level_db:+.1f} dB)\n")
    if ours is None:
        return False
    name, m = ours
    print(f"Callbox's processor: {name}")
    ok = True
    for d in DELAYS_MS:
        erle = m["results"][d][0].erle_db
        ok &= verdict(f"ERLE, {d} ms echo delay", f"{erle:.1f} dB", f">= {MIN_ERLE_DB:.0f} dB", erle >= MIN_ERLE_DB)
    ok &= verdict("CPU per 10 ms block, share of real time", f"{m['cpu']:.1%}", f"<= {TARGET_CPU:.0%}",
                  m["cpu"] <= TARGET_CPU)
    return ok


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
