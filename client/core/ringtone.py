"""The ringtone: a WAV from assets played in a loop on the speaker until the call is answered or gone."""

from __future__ import annotations

import logging
import wave
from pathlib import Path

import numpy as np

from .audio import close_stream, list_audio_devices, open_stream, pick, sounddevice

log = logging.getLogger("callbox.ringtone")


class Ringtone:
    def __init__(self, path: Path, device=None):
        with wave.open(str(path)) as w:
            self.rate = w.getframerate()
            raw = w.readframes(w.getnframes())
        self.samples = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768
        self.device = device
        self._stream = None
        self._pos = 0

    def start(self) -> None:
        if self._stream is not None:
            return
        try:
            sd = sounddevice()
            self._pos = 0
            self._stream = open_stream(sd.OutputStream, pick(list_audio_devices(), self.device, output=True),
                                       output=True, samplerate=self.rate, channels=1, dtype="float32",
                                       callback=self._callback)
        except Exception as exc:  # no sound card (DeviceMissing, PortAudio): ring silently, the window still shows it
            self._stream = None
            log.info("ringtone not played: %s", exc)

    def _callback(self, outdata, frames, time_info, status) -> None:
        n = len(self.samples)
        idx = (np.arange(frames) + self._pos) % n
        outdata[:, 0] = self.samples[idx]
        self._pos = (self._pos + frames) % n

    def stop(self) -> None:
        if self._stream is not None:
            close_stream(self._stream)
            self._stream = None
