"""Sound hardware through sounddevice: the device list, the microphone's capture stream, the speaker's mixer and
output stream."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import av
import numpy as np

from . import pulse

log = logging.getLogger("callbox.audio")

RATE = 48_000  # what Opus and the tracks use
BLOCK = 960  # 20 ms at 48 kHz


class DeviceMissing(Exception):
    """A device, or the library to reach it, is not there. The message says which and what to do."""


def sounddevice():
    """The sounddevice module, or DeviceMissing when PortAudio is not installed."""
    try:
        import sounddevice as sd
    except OSError as exc:  # sounddevice raises OSError when it cannot load the PortAudio library
        raise DeviceMissing(f"PortAudio is not installed ({exc}); on Debian: apt-get install libportaudio2") from None
    return sd


@dataclass(frozen=True)
class AudioDevice:
    index: int  # PortAudio's device number (for a sound server's sink or source: its "pulse" device)
    name: str  # what a person reads
    inputs: int
    outputs: int
    default_rate: float
    is_default_input: bool = False
    is_default_output: bool = False
    pulse_name: str = ""  # the sound server's sink or source, reached through the "pulse" device

    @property
    def key(self) -> str:
        """What settings keep to find this device again: the sound server's name, else PortAudio's."""
        return self.pulse_name or self.name


# PortAudio's device list is read, and rebuilt by rescan(), under this lock; rescan() only runs while no stream
# is open, since re-initialising PortAudio stops open streams.
_portaudio = threading.RLock()
_open_streams = 0


def list_audio_devices() -> list[AudioDevice]:
    """Every microphone and speaker: the sound server's sources and sinks where PulseAudio or PipeWire runs and
    PortAudio reaches it, else PortAudio's own devices (as they were at its last (re)scan)."""
    sd = sounddevice()
    try:
        with _portaudio:
            default_in, default_out = sd.default.device
            devices = sd.query_devices()
    except Exception as exc:  # PortAudio may fail to initialise with no sound system at all
        raise DeviceMissing(f"no sound system could be opened: {exc}") from None
    via = next((i for i, d in enumerate(devices)
                if d["name"] == "pulse" and d["max_input_channels"] and d["max_output_channels"]), None)
    server = pulse.endpoints() if via is not None else None
    if server is not None:
        return ([AudioDevice(via, e.description, e.channels, 0, e.rate, is_default_input=e.is_default,
                             pulse_name=e.name) for e in server.sources]
                + [AudioDevice(via, e.description, 0, e.channels, e.rate, is_default_output=e.is_default,
                               pulse_name=e.name) for e in server.sinks])
    return [
        AudioDevice(i, d["name"], d["max_input_channels"], d["max_output_channels"], d["default_samplerate"],
                    i == default_in, i == default_out)
        for i, d in enumerate(devices)
    ]


def rescan() -> bool:
    """Re-initialise PortAudio so that its device list is read again; only while no stream is open (it would
    stop them). True when it rescanned."""
    sd = sounddevice()
    with _portaudio:
        if _open_streams:
            return False
        sd._terminate()  # sounddevice's documented way to make PortAudio list devices again
        sd._initialize()
        return True


def open_stream(kind, dev: AudioDevice, *, output: bool, **kwargs):
    """A started sounddevice stream (`kind` is InputStream or OutputStream) on `dev`, routed to its sound server
    sink or source when it has one; it counts as open until close_stream()."""
    global _open_streams
    with _portaudio, pulse.routed(dev.pulse_name, output=output):
        stream = kind(device=dev.index, **kwargs)
        _open_streams += 1
    try:
        stream.start()
    except Exception:
        close_stream(stream)
        raise
    return stream


def close_stream(stream) -> None:
    global _open_streams
    try:
        stream.stop()
        stream.close()
    finally:
        with _portaudio:
            _open_streams -= 1


def pick(devices: list[AudioDevice], wanted: str | int | None, *, output: bool, quiet: bool = False) -> AudioDevice:
    """The device named (or numbered, or keyed) `wanted`, else the system default, else the first that fits."""
    fits = [d for d in devices if (d.outputs if output else d.inputs) > 0]
    if not fits:
        raise DeviceMissing(f"no {'speaker' if output else 'microphone'} was found")
    if wanted not in (None, ""):
        for d in fits:
            if wanted in (d.key, d.name) or (not d.pulse_name and wanted == d.index):
                return d
        if not quiet:
            log.warning("device %r is gone; using the default", wanted)
    return next((d for d in fits if (d.is_default_output if output else d.is_default_input)), fits[0])


class Microphone:
    """A sounddevice InputStream at 48 kHz mono in 20 ms blocks, handed to the event loop without blocking.

    The PortAudio callback runs on its own thread; each block goes through the audio processor (echo
    cancellation) there, then reaches the loop by call_soon_threadsafe into a bounded queue that drops the
    oldest block when the consumer falls behind."""

    def __init__(self, device: str | int | None = None, *, processor=None, queue_blocks: int = 10):
        self.device = device
        self.processor = processor
        self.queue: asyncio.Queue[np.ndarray] = asyncio.Queue(queue_blocks)
        self.dropped = 0
        self.level = 0.0  # RMS of the last block, 0..1, for a level meter
        self._loop = asyncio.get_running_loop()
        self._stream = None
        self.name = ""
        self.key = ""  # the open device's AudioDevice.key

    def start(self) -> None:
        sd = sounddevice()
        dev = pick(list_audio_devices(), self.device, output=False)
        self._stream = open_stream(sd.InputStream, dev, output=False, samplerate=RATE, channels=1, dtype="int16",
                                   blocksize=BLOCK, callback=self._callback)
        self.name, self.key = dev.name, dev.key
        log.info("microphone open: %s", dev.name)

    def _callback(self, indata, frames, time_info, status) -> None:
        block = indata[:, 0].copy()
        if self.processor is not None:
            block = self.processor.process_capture(block)
        self.level = float(np.sqrt(np.mean((block / 32768.0) ** 2)))
        self._loop.call_soon_threadsafe(self._put, block)

    def _put(self, block: np.ndarray) -> None:
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(block)

    def stop(self) -> None:
        if self._stream is not None:
            close_stream(self._stream)
            self._stream = None
            log.info("microphone closed: %s", self.name)


class RingBuffer:
    """Mono float32 samples between the network (writer) and the sound card (reader), with drift handling.

    The two run on different clocks. When the buffer holds more than `high` samples the oldest are dropped
    back to `target`, so latency cannot creep up; when it runs dry the reader gets silence."""

    def __init__(self, rate: int, *, target_ms: float = 40, high_ms: float = 200, size_ms: float = 1000):
        self.rate = rate
        self.target = int(rate * target_ms / 1000)
        self.high = int(rate * high_ms / 1000)
        self.buf = np.zeros(int(rate * size_ms / 1000), dtype=np.float32)
        self.start = 0
        self.count = 0
        self.underruns = 0
        self.dropped = 0
        self.primed = False
        self.lock = threading.Lock()

    def write(self, samples: np.ndarray) -> None:
        with self.lock:
            n = len(samples)
            if n >= len(self.buf):
                samples, n = samples[-len(self.buf):], len(self.buf)
            end = (self.start + self.count) % len(self.buf)
            first = min(n, len(self.buf) - end)
            self.buf[end:end + first] = samples[:first]
            self.buf[:n - first] = samples[first:]
            self.count = min(len(self.buf), self.count + n)
            if self.count > self.high:  # the sender's clock is faster than ours: skip ahead
                excess = self.count - self.target
                self.start = (self.start + excess) % len(self.buf)
                self.count -= excess
                self.dropped += excess
            if self.count >= self.target:
                self.primed = True

    def read(self, n: int) -> np.ndarray:
        out = np.zeros(n, dtype=np.float32)
        with self.lock:
            if not self.primed:
                return out
            take = min(n, self.count)
            first = min(take, len(self.buf) - self.start)
            out[:first] = self.buf[self.start:self.start + first]
            out[first:take] = self.buf[:take - first]
            self.start = (self.start + take) % len(self.buf)
            self.count -= take
            if take < n:  # ran dry: silence, and wait to refill to the target before playing again
                self.underruns += 1
                self.primed = False
        return out


class Mixer:
    """Remote audio from several sources (one per peer connection) summed for one sound card.

    Each source has its own resampler to the card's rate and its own ring buffer, so each keeps its own
    drift handling and its own silence on underrun: one peer that stalls or runs fast never delays or
    garbles another. `play` runs on the event loop, `read` on the card's thread; the table of sources is
    replaced, never changed in place, so the card's thread reads a consistent snapshot without a lock."""

    def __init__(self, rate: int):
        self.rate = rate
        self._sources: dict[Hashable, _Source] = {}

    def play(self, frame: av.AudioFrame, source: Hashable = None) -> None:
        src = self._sources.get(source)
        if src is None:
            src = _Source(RingBuffer(self.rate), av.AudioResampler(format="flt", layout="mono", rate=self.rate))
            self._sources = {**self._sources, source: src}
        for out in src.resampler.resample(frame):
            src.ring.write(out.to_ndarray().reshape(-1))

    def release(self, source: Hashable) -> None:
        """Forget a source: its ring and resampler go, and it stops contributing to the mix."""
        if source in self._sources:
            self._sources = {k: v for k, v in self._sources.items() if k != source}

    def ring(self, source: Hashable = None) -> RingBuffer | None:
        src = self._sources.get(source)
        return src.ring if src is not None else None

    def __len__(self) -> int:
        return len(self._sources)

    def read(self, n: int) -> np.ndarray:
        """The next `n` samples of the mix, clipped to [-1, 1]; silence where a source has nothing."""
        sources = self._sources  # one snapshot: play/release on the loop replace the dict, never change it
        if not sources:
            return np.zeros(n, dtype=np.float32)
        rings = [s.ring for s in sources.values()]
        mix = rings[0].read(n)
        for ring in rings[1:]:
            mix += ring.read(n)
        return np.clip(mix, -1.0, 1.0, out=mix)


@dataclass
class _Source:
    ring: RingBuffer
    resampler: av.AudioResampler


class Speaker:
    """Plays remote audio: a Mixer (a ring buffer and resampler per remote source) and a sounddevice OutputStream.

    Before `start()`, or when the device could not be opened, `play` returns at once: nothing is resampled,
    buffered or mixed."""

    def __init__(self, device: str | int | None = None, *, processor=None):
        self.device = device
        self.processor = processor
        self.mixer: Mixer | None = None
        self._stream = None
        self._to_reference: av.AudioResampler | None = None
        self.name = ""
        self.key = ""  # the open device's AudioDevice.key

    def start(self) -> None:
        sd = sounddevice()
        dev = pick(list_audio_devices(), self.device, output=True)
        rate = int(dev.default_rate) or RATE
        try:
            sd.check_output_settings(device=dev.index, samplerate=RATE, channels=1, dtype="float32")
            rate = RATE
        except Exception:
            pass  # the device cannot do 48 kHz; resample to its own rate
        self.prepare(rate)
        self._stream = open_stream(sd.OutputStream, dev, output=True, samplerate=rate, channels=1, dtype="float32",
                                   blocksize=rate // 50, callback=self._callback)
        self.name, self.key = dev.name, dev.key
        log.info("speaker open: %s at %d Hz", dev.name, rate)

    def prepare(self, rate: int) -> None:
        """Set up mixing for a card running at `rate` (start() does it; tests drive `_callback` themselves)."""
        self.mixer = Mixer(rate)
        if rate != RATE:  # the echo canceller's reference is 48 kHz: the mix is resampled back to it
            self._to_reference = av.AudioResampler(format="s16", layout="mono", rate=RATE)

    @property
    def ring(self) -> RingBuffer | None:
        """The ring of the source played without a key (`play(frame)`): for callers with a single stream."""
        return self.mixer.ring(None) if self.mixer is not None else None

    def play(self, frame: av.AudioFrame, source: Hashable = None) -> None:
        """Queue a remote frame of `source` (any hashable: one per remote stream) for the card."""
        if self.mixer is None:
            return  # no speaker, so nothing to play and no echo to cancel either
        self.mixer.play(frame, source)

    def release(self, source: Hashable) -> None:
        """The source's stream ended: drop its ring buffer and resampler."""
        if self.mixer is not None:
            self.mixer.release(source)

    def _callback(self, outdata, frames, time_info, status) -> None:
        block = self.mixer.read(frames)
        outdata[:, 0] = block
        if self.processor is not None:
            # The echo canceller's reference is exactly what the card plays (the mix), when it plays it.
            self._reference(block)

    def _reference(self, block: np.ndarray) -> None:
        pcm = (block * 32767).astype(np.int16)
        if self._to_reference is None:
            self.processor.process_render(pcm)
            return
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.mixer.rate
        for ref in self._to_reference.resample(frame):
            self.processor.process_render(ref.to_ndarray().reshape(-1))

    def stop(self) -> None:
        if self._stream is not None:
            close_stream(self._stream)
            self._stream = None
            log.info("speaker closed: %s", self.name)


def open_or_report(opener: Callable[[], None], kind: str) -> str | None:
    """Run a device opener; return None on success or a sentence naming what is missing and why."""
    try:
        opener()
        return None
    except DeviceMissing as exc:
        return str(exc)
    except Exception as exc:  # PortAudio errors: device busy, unsupported format, unplugged
        return f"the {kind} could not be opened: {exc}"
