"""Echo cancellation and noise suppression of the microphone: WebRTC's audio processing module, or a pass-through."""

from __future__ import annotations

import logging
import threading
from collections import deque

import numpy as np

log = logging.getLogger("callbox.aec")

RATE = 48_000  # both directions: the microphone's blocks and the far-end reference
FRAME = RATE // 100  # WebRTC processes 10 ms frames
MAX_PENDING_RENDER = 50  # 10 ms frames of reference held for the capture side; beyond that the oldest go


def _samples(block: np.ndarray) -> np.ndarray:
    """`block` as a 1-D int16 view: mono int16, shape (n,) or (n, 1) as sounddevice hands it over."""
    if block.dtype != np.int16:
        raise TypeError(f"audio blocks are int16, not {block.dtype}")
    if block.ndim == 2 and block.shape[1] == 1:
        return block[:, 0]
    if block.ndim != 1:
        raise ValueError(f"audio blocks are mono, shape (n,) or (n, 1), not {block.shape}")
    return block


class AudioProcessor:
    """The interface, and the pass-through: capture comes back unchanged and the reference is ignored.

    `process_capture` runs on the microphone's audio thread and `process_render` on whichever thread hands
    far-end audio to the speaker; `enabled` and `close` may be called from any thread."""

    def __init__(self, name: str = "none", enabled: bool = True):
        self.name = name
        self._enabled = bool(enabled)
        self._closed = False

    @property
    def enabled(self) -> bool:
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self._enabled = bool(value)

    def process_capture(self, block: np.ndarray) -> np.ndarray:
        """Clean one microphone block (int16 mono 48 kHz, a whole number of 10 ms); same length and shape back.

        Disabled, closed or pass-through, the block itself is returned, unchanged."""
        samples = _samples(block)
        if len(samples) % FRAME:
            raise ValueError(f"capture blocks are whole 10 ms frames ({FRAME} samples), not {len(samples)} samples")
        if not self._enabled or self._closed:
            return block
        out = self._process(samples)
        return block if out is samples else out.reshape(block.shape)

    def process_render(self, block: np.ndarray) -> None:
        """Note far-end audio (int16 mono 48 kHz, any length) as it goes to the speaker."""
        samples = _samples(block)
        if self._enabled and not self._closed:
            self._reference(samples)

    def close(self) -> None:
        self._closed = True

    def _process(self, samples: np.ndarray) -> np.ndarray:
        return samples

    def _reference(self, samples: np.ndarray) -> None:
        pass

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {'on' if self._enabled else 'off'}>"


class LiveKitProcessor(AudioProcessor):
    """WebRTC's audio processing module (AEC3 echo canceller, noise suppressor, high-pass filter) via livekit.

    The speaker's thread only queues the reference, so it never waits on signal processing. The microphone's
    thread hands all the queued reference to the module before each 10 ms capture frame: every call into the
    module stays on one thread, and no capture frame reaches it before the reference it echoes. The module
    finds the echo's delay by itself (up to ~0.4 s measured), so the reference may be noted any time before
    it is heard; but the steadier that lead the better, since reference arriving in bursts slows convergence
    (tests/client/test_aec.py measures both)."""

    def __init__(self, enabled: bool = True, *, noise_suppression: bool = True):
        from livekit import rtc  # ImportError when livekit is not installed; create_processor reports it

        super().__init__(f"webrtc-apm (livekit {rtc.__version__})", enabled)
        self._apm = rtc.AudioProcessingModule(echo_cancellation=True, noise_suppression=noise_suppression,
                                              high_pass_filter=True, auto_gain_control=False)
        # One reusable frame per direction; the module works on the frame's buffer in place.
        self._capture_frame = rtc.AudioFrame(bytearray(FRAME * 2), RATE, 1, FRAME)
        self._render_frame = rtc.AudioFrame(bytearray(FRAME * 2), RATE, 1, FRAME)
        self._pending: deque[np.ndarray] = deque(maxlen=MAX_PENDING_RENDER)  # whole 10 ms reference frames
        self._partial = np.zeros(0, dtype=np.int16)  # the reference's tail short of a whole frame
        self._queue_lock = threading.Lock()  # _pending and _partial: speaker thread vs microphone thread
        self._apm_lock = threading.Lock()  # the module: microphone thread vs close()

    @AudioProcessor.enabled.setter
    def enabled(self, value: bool) -> None:
        with self._queue_lock:
            self._enabled = bool(value)
            self._pending.clear()  # reference queued before a switch no longer lines up with the capture
            self._partial = np.zeros(0, dtype=np.int16)

    def _reference(self, samples: np.ndarray) -> None:
        with self._queue_lock:
            data = np.concatenate((self._partial, samples)) if len(self._partial) else samples
            whole = len(data) - len(data) % FRAME
            for i in range(0, whole, FRAME):
                self._pending.append(data[i:i + FRAME].copy())
            self._partial = data[whole:].copy()

    def _process(self, samples: np.ndarray) -> np.ndarray:
        out = np.empty_like(samples)
        with self._apm_lock:
            if self._closed:
                return samples
            for i in range(0, len(samples), FRAME):
                with self._queue_lock:
                    reference = list(self._pending)
                    self._pending.clear()
                for frame in reference:
                    _samples_of(self._render_frame)[:] = frame
                    self._apm.process_reverse_stream(self._render_frame)
                _samples_of(self._capture_frame)[:] = samples[i:i + FRAME]
                self._apm.process_stream(self._capture_frame)
                out[i:i + FRAME] = _samples_of(self._capture_frame)
        return out

    def close(self) -> None:
        with self._apm_lock:
            if not self._closed:
                self._closed = True
                self._apm = None  # the last reference: livekit frees the native module with it
        with self._queue_lock:
            self._pending.clear()


def _samples_of(frame) -> np.ndarray:
    """A writable int16 view of a livekit AudioFrame's own buffer (livekit 1.0 copies what it is given)."""
    return np.frombuffer(frame.data, dtype=np.int16)


def create_processor(enabled: bool = True) -> AudioProcessor:
    """The best processor this machine has; a pass-through whose name says why when there is none."""
    try:
        return LiveKitProcessor(enabled)
    except ImportError as exc:
        missing = (exc.name or "").split(".")[0] == "livekit"
        reason = "none: livekit is not installed" if missing else f"none: livekit failed to import ({exc})"
    except Exception as exc:  # the native library failed to load or to start
        reason = f"none: livekit failed to start ({type(exc).__name__}: {exc})"
    log.warning("no echo cancellation: %s", reason)
    return AudioProcessor(reason, enabled)
