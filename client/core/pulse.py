"""PulseAudio and PipeWire (through pulsectl): their sinks and sources, waiting for them to change, and which one a
PortAudio stream on the ALSA "pulse" device opens.

PortAudio freezes its device list when it starts and sees a sound server only as one ALSA device, "pulse". The
sound server itself knows every sink and source, including those plugged in since. So where one runs, the device
lists come from it, and a stream on the "pulse" device is sent to the chosen sink or source by PULSE_SINK or
PULSE_SOURCE, which libpulse reads when the ALSA plugin opens the stream. PipeWire answers through pipewire-pulse
in the same way."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import dataclass

log = logging.getLogger("callbox.pulse")


@dataclass(frozen=True)
class Endpoint:
    """A sink (output) or source (input) of the sound server."""

    name: str  # the server's stable name, e.g. alsa_output.usb-...; what settings keep
    description: str  # what a person reads, e.g. "USB Headset Analog Stereo"
    channels: int
    rate: int
    is_default: bool


@dataclass(frozen=True)
class Endpoints:
    sinks: tuple[Endpoint, ...]
    sources: tuple[Endpoint, ...]


def _client(name: str):
    """A connected pulsectl client, or None when pulsectl, libpulse or a server is missing. Never starts a server."""
    try:
        import pulsectl
    except Exception:  # ImportError, or OSError/AttributeError when libpulse cannot be loaded
        return None
    pulse = pulsectl.Pulse(name, connect=False)
    try:
        pulse.connect(autospawn=False)  # (pulsectl's timeout= waits the whole timeout even when connected)
    except pulsectl.PulseError as exc:
        log.debug("no sound server: %s", exc)
        pulse.close()
        return None
    return pulse


def _read(pulse) -> Endpoints:
    info = pulse.server_info()
    sinks = tuple(Endpoint(s.name, s.description, s.channel_count, s.sample_spec.rate,
                           s.name == info.default_sink_name) for s in pulse.sink_list())
    # A monitor (what a sink plays) is not a microphone; it is listed only when it is the default source, as on a
    # machine whose only "microphone" is a null sink's monitor.
    sources = tuple(Endpoint(s.name, s.description, s.channel_count, s.sample_spec.rate,
                             s.name == info.default_source_name) for s in pulse.source_list()
                    if s.monitor_of_sink_name is None or s.name == info.default_source_name)
    return Endpoints(sinks, sources)


def endpoints(attempts: int = 3) -> Endpoints | None:
    """The sound server's sinks and sources now, or None when no PulseAudio or PipeWire server answers. A server
    that was there a moment ago is asked again: a list without it would lose the chosen device."""
    global _answered
    why = "no server answers"
    for _ in range(attempts):
        pulse = _client("callbox")
        if pulse is None:
            continue
        try:
            found = _read(pulse)
            _answered = True
            return found
        except Exception as exc:  # the server went away between connecting and asking
            why = str(exc)
        finally:
            pulse.close()
    if _answered:
        log.warning("the sound server did not answer (%s); listing PortAudio's devices", why)
    return None


_answered = False  # a sound server has answered in this process


_route_lock = threading.Lock()


@contextlib.contextmanager
def routed(name: str, *, output: bool):
    """While inside, a stream opened on PortAudio's "pulse" device goes to sink (or source) `name`; "" leaves the
    server's default. The environment is process-wide, so streams are opened one at a time under a lock."""
    var = "PULSE_SINK" if output else "PULSE_SOURCE"
    with _route_lock:
        before = os.environ.get(var)
        if name:
            os.environ[var] = name
        else:
            os.environ.pop(var, None)
        try:
            yield
        finally:
            if before is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = before


class Changes:
    """Waits for the server's sinks, sources or defaults to change: `wait(timeout)` returns on a change, when the
    server goes away or comes back, or after `timeout` seconds. One thread waits; `close()` from another wakes
    it, and the waiting thread calls `release()` once it has stopped."""

    def __init__(self):
        self._pulse = None
        self._closed = False
        self._lock = threading.Lock()  # close() from another thread never wakes a connection being closed

    def wait(self, timeout: float) -> None:
        import pulsectl

        if self._closed:
            return
        if self._pulse is None:  # (re)connect; at once without a server
            client = _client("callbox-watch")
            if client is not None:
                client.event_mask_set("sink", "source", "server")
                client.event_callback_set(_stop)
                with self._lock:
                    self._pulse = client
            return
        try:
            self._pulse.event_listen(timeout=timeout)
        except pulsectl.PulseDisconnected:
            log.info("sound server went away")
            self.release()

    @property
    def connected(self) -> bool:
        return self._pulse is not None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._pulse is not None:
                self._pulse.event_listen_stop()

    def release(self) -> None:
        with self._lock:
            pulse, self._pulse = self._pulse, None
            if pulse is not None:
                pulse.close()


def _stop(event) -> None:
    """An event came: end the wait (pulsectl's way)."""
    import pulsectl

    raise pulsectl.PulseLoopStop
