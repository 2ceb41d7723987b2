"""Probes for the components some tests need (PortAudio with a PulseAudio null sink, mDNS on loopback, an X
display to share, a Redis server), the X display and Redis themselves, and PulseAudio devices plugged in and out,
played into and recorded.

A test calls require_audio(), require_multicast() or uses x_display() or redis_server(): without the component it
skips, saying what is missing, or fails under CALLBOX_REQUIRE_AUDIO=1 / CALLBOX_REQUIRE_MULTICAST=1 /
CALLBOX_REQUIRE_DISPLAY=1 / CALLBOX_REQUIRE_REDIS=1, which CI sets.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import select
import shutil
import socket
import subprocess
import sys
import threading

import pytest

MDNS_GROUP, MDNS_PORT = "224.0.0.251", 5353


def _require(reason: str | None, variable: str, what: str) -> None:
    if reason:
        if os.environ.get(variable) == "1":
            pytest.fail(f"{variable}=1 but {what} is unavailable: {reason}", pytrace=False)
        pytest.skip(reason)


def audio_unavailable() -> str | None:
    """Why real audio streams cannot run here, or None if they can.

    Checks, in order: numpy and sounddevice import, PortAudio loads (Debian libportaudio2), a PulseAudio
    server answers (pactl, from pulseaudio-utils), its default source is the monitor of its default sink
    (so playback loops back; .ci/start-audio sets that up), and PortAudio sees input and output devices
    (through the ALSA pulse plugin of libasound2-plugins).
    """
    try:
        import numpy  # noqa: F401
    except ImportError as e:
        return f"Python package numpy is not installed ({e})"
    try:
        import sounddevice  # noqa: F401
    except ImportError as e:
        return f"Python package sounddevice is not installed ({e})"
    except OSError as e:  # sounddevice raises OSError('PortAudio library not found')
        return f"PortAudio is missing (Debian package libportaudio2): {e}"

    pactl = shutil.which("pactl")
    if pactl is None:
        return "pactl not found (Debian package pulseaudio-utils): cannot reach a PulseAudio server"

    def ask(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([pactl, *args], capture_output=True, text=True, timeout=10)

    info = ask("info")
    if info.returncode != 0:
        why = "; ".join((info.stderr or info.stdout).split("\n")).strip("; ")
        return f"no PulseAudio server answers (start one with .ci/start-audio): pactl info: {why}"
    sink, source = ask("get-default-sink").stdout.strip(), ask("get-default-source").stdout.strip()
    if not sink or source != f"{sink}.monitor":
        return (
            f"PulseAudio's default source {source!r} is not the monitor of its default sink {sink!r}, so "
            "playback would not loop back to the input (.ci/start-audio sets up a null sink that way)"
        )

    try:
        pick_devices()
    except LookupError as e:
        return str(e)
    return None


def pick_devices() -> tuple[dict, dict]:
    """The PortAudio input and output devices to use: ALSA's "pulse" device (it always goes to the PulseAudio
    server's default sink and source) if PortAudio lists it, otherwise PortAudio's default devices."""
    import sounddevice as sd

    devices = sd.query_devices()
    pulse = [d for d in devices if d["name"] == "pulse" and d["max_input_channels"] and d["max_output_channels"]]
    if pulse:
        return pulse[0], pulse[0]
    try:
        return sd.query_devices(kind="input"), sd.query_devices(kind="output")
    except sd.PortAudioError as e:
        raise LookupError(
            f"PortAudio sees no default input/output device ({e}); devices: {list(devices) or 'none'} — "
            "is libasound2-plugins installed, so that PortAudio's ALSA host API reaches PulseAudio?"
        ) from e


def require_audio() -> None:
    _require(audio_unavailable(), "CALLBOX_REQUIRE_AUDIO", "real audio")


@functools.cache
def multicast_unavailable() -> str | None:
    """Why mDNS cannot run on loopback here, or None if it can.

    Checks, in order: the zeroconf package imports, a socket can bind 127.0.0.1, a datagram sent to the mDNS
    group 224.0.0.251 out of lo (IP_MULTICAST_IF 127.0.0.1) comes back to a socket that joined the group on
    lo, and UDP port 5353 can be bound with SO_REUSEADDR/SO_REUSEPORT (no other mDNS stack holds it alone).
    The probe datagram goes to an ephemeral port, not 5353, and from a socket bound to 127.0.0.1.
    """
    try:
        import zeroconf  # noqa: F401
    except ImportError as e:
        return f"the Python package zeroconf is not installed ({e}); it is in pyproject's dependencies"

    recv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    send = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        try:
            send.bind(("127.0.0.1", 0))
        except OSError as e:
            return f"cannot bind a UDP socket to 127.0.0.1 (is lo up with 127.0.0.1?): {e}"
        try:
            recv.bind((MDNS_GROUP, 0))
            membership = socket.inet_aton(MDNS_GROUP) + socket.inet_aton("127.0.0.1")
            recv.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
            send.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
            send.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
            send.sendto(b"callbox-probe", (MDNS_GROUP, recv.getsockname()[1]))
        except OSError as e:
            return f"IPv4 multicast on loopback fails (joining {MDNS_GROUP} on lo or sending there; is lo up?): {e}"
        if not select.select([recv], [], [], 2.0)[0]:
            return (
                f"IPv4 multicast on loopback does not work: a datagram sent to {MDNS_GROUP} via lo never came "
                "back (a firewall on lo? `ip link set lo multicast on` may help on unusual kernels)"
            )
    finally:
        recv.close()
        send.close()

    for addr in ("0.0.0.0", "127.0.0.1"):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if hasattr(socket, "SO_REUSEPORT"):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind((addr, MDNS_PORT))
        except OSError as e:
            return f"UDP port {MDNS_PORT} on {addr} cannot be shared (another mDNS stack holds it alone?): {e}"
        finally:
            s.close()
    return None


def require_multicast() -> None:
    _require(multicast_unavailable(), "CALLBOX_REQUIRE_MULTICAST", "mDNS on loopback")


class RedisServer:
    """A real redis-server (Debian package redis-server) on a free loopback port, with no persistence, which a
    test may stop and start again on the same port (a restart loses everything, as an unpersisted one does)."""

    def __init__(self, binary: str, port: int):
        self.binary, self.port = binary, port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(500):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.1):
                return
            if self.proc.poll() is not None:
                break
            select.select([], [], [], 0.01)
        raise RuntimeError(f"redis-server did not start: {self.proc.stderr.read().decode()[-500:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@contextlib.contextmanager
def redis_server():
    """A RedisServer, started; without redis-server or the redis package the test skips (fails under
    CALLBOX_REQUIRE_REDIS=1, which CI sets)."""
    binary = shutil.which("redis-server")
    try:
        import redis  # noqa: F401
    except ImportError as e:
        _require(f"Python package redis is not installed ({e})", "CALLBOX_REQUIRE_REDIS", "Redis")
    _require(None if binary else "redis-server not found (Debian package redis-server)", "CALLBOX_REQUIRE_REDIS",
             "Redis")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = RedisServer(binary, port)
    server.start()
    try:
        yield server
    finally:
        server.stop()


FILL = """
import sys, threading
from PySide6.QtCore import QTimer
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication, QWidget
app = QApplication(sys.argv[:1])
w = QWidget()
w.setAutoFillBackground(True)
w.setWindowTitle(sys.argv[2])
if len(sys.argv) > 3:
    w.setGeometry(*map(int, sys.argv[3].split(",")))
else:
    w.setGeometry(app.primaryScreen().geometry())
asked = [sys.argv[1]]
def paint():
    if asked:
        color = asked.pop(0)
        if color.startswith("move "):
            w.move(*map(int, color.split()[1:]))
            app.sync()
            print("painted", color.replace(" ", "_"), flush=True)
            return
        palette = w.palette()
        palette.setColor(QPalette.ColorRole.Window, QColor(color))
        w.setPalette(palette)
        w.repaint()
        app.sync()
        print("painted", color, flush=True)
threading.Thread(target=lambda: [asked.append(line.strip()) for line in sys.stdin], daemon=True).start()
timer = QTimer(interval=5)
timer.timeout.connect(paint)
timer.start()
w.show()
app.exec()
"""


FILL_TITLE = "Callbox test fill"  # the full-screen window's title, as a share's window list shows it


def _window(display: str, color: str, title: str, geometry: str | None = None) -> subprocess.Popen:
    """A window on `display` filled with `color`; it has painted once this returns (else the test skips/fails)."""
    env = {**os.environ, "DISPLAY": display, "QT_QPA_PLATFORM": "xcb"}
    proc = subprocess.Popen([sys.executable, "-c", FILL, color, title, *([geometry] if geometry else [])], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.stdout.readline().strip() != f"painted {color}":
        proc.kill()
        _require(f"a window could not be shown on Xvfb: {proc.stderr.read()[-500:]}", "CALLBOX_REQUIRE_DISPLAY",
                 "an X display")
    return proc


def _end(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


@dataclasses.dataclass
class XDisplay:
    """A virtual X display and the full-screen window that colours it."""

    name: str  # the DISPLAY value, e.g. ":3"
    fill: subprocess.Popen

    def paint(self, color: str) -> None:
        """Fill the screen with another colour; returns once it is painted."""
        self.fill.stdin.write(color + "\n")
        self.fill.stdin.flush()
        while (line := self.fill.stdout.readline()) and line.split()[-1:] != [color]:
            pass

    @contextlib.contextmanager
    def window(self, title: str, color: str, x: int, y: int, width: int, height: int):
        """Another window, above the fill, in one colour, while inside (an XWindow: move or close it)."""
        proc = _window(self.name, color, title, f"{x},{y},{width},{height}")
        try:
            yield XWindow(proc)
        finally:
            _end(proc)


@dataclasses.dataclass
class XWindow:
    proc: subprocess.Popen

    def move(self, x: int, y: int) -> None:
        """Move it; returns once the X server has it there."""
        self.proc.stdin.write(f"move {x} {y}\n")
        self.proc.stdin.flush()
        while (line := self.proc.stdout.readline()) and line.split()[-1:] != [f"move_{x}_{y}"]:
            pass

    def close(self) -> None:
        _end(self.proc)


@contextlib.contextmanager
def x_display(width: int = 1280, height: int = 720, color: str = "#3366cc"):
    """A virtual X display (Xvfb) filled with one colour by a full-screen window (XDisplay.paint changes it)."""
    xvfb = shutil.which("Xvfb")
    _require(None if xvfb else "Xvfb not found (Debian package xvfb)", "CALLBOX_REQUIRE_DISPLAY", "an X display")
    read, write = os.pipe()
    server = subprocess.Popen([xvfb, "-displayfd", str(write), "-screen", "0", f"{width}x{height}x24",
                               "-nolisten", "tcp"], pass_fds=(write,), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    os.close(write)
    fill = None
    try:
        with os.fdopen(read) as f:
            number = f.readline().strip()
        if not number:
            _require(f"Xvfb exited ({server.poll()}) before it named its display", "CALLBOX_REQUIRE_DISPLAY",
                     "an X display")
        display = f":{number}"
        fill = _window(display, color, FILL_TITLE)
        yield XDisplay(display, fill)
    finally:
        for proc in (fill, server):
            if proc is not None:
                _end(proc)


@contextlib.contextmanager
def pulse_module(module: str, **args: str):
    """A PulseAudio module (e.g. a new null sink: a device plugged in) loaded while inside, unloaded on the way out
    unless the test unloaded it (unplugged it) already; yields a function that unloads it."""
    require_audio()
    line = " ".join(f"{k}={v}" for k, v in args.items())
    done = subprocess.run(["pactl", "load-module", module, *line.split()], capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, f"pactl load-module {module} {line}: {done.stderr.strip()}"
    index = done.stdout.strip()
    loaded = [True]

    def unload() -> None:
        if loaded:
            loaded.clear()
            subprocess.run(["pactl", "unload-module", index], capture_output=True, timeout=10, check=True)

    try:
        yield unload
    finally:
        unload()


def record(source: str, seconds: float, rate: int = 48_000):
    """`seconds` of mono float samples recorded from PulseAudio source `source` (a sink's monitor: what it plays),
    by parec, apart from the app under test."""
    import numpy as np

    proc = subprocess.Popen(["parec", "-d", source, "--raw", "--format=float32le", f"--rate={rate}",
                             "--channels=1", "--latency-msec=20"], stdout=subprocess.PIPE)
    want = int(seconds * rate) * 4
    data = b""
    try:
        while len(data) < want and select.select([proc.stdout], [], [], seconds + 5)[0]:
            chunk = os.read(proc.stdout.fileno(), want - len(data))
            if not chunk:
                break
            data += chunk
    finally:
        proc.kill()
        proc.wait()
    return np.frombuffer(data[:len(data) // 4 * 4], dtype=np.float32)


@contextlib.contextmanager
def playing(sink: str, hz: float, rate: int = 48_000):
    """A tone of `hz` played into PulseAudio sink `sink` by pacat while inside (a voice into a new microphone)."""
    import numpy as np

    t = np.arange(rate * 30) / rate  # 30 s: longer than any test waits
    tone = (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32).tobytes()
    proc = subprocess.Popen(["pacat", "-d", sink, "--raw", "--format=float32le", f"--rate={rate}", "--channels=1",
                             "--latency-msec=20"], stdin=subprocess.PIPE)
    feeder = threading.Thread(target=lambda: _feed(proc, tone), daemon=True)
    feeder.start()
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def _feed(proc: subprocess.Popen, data: bytes) -> None:
    with contextlib.suppress(BrokenPipeError, ValueError, OSError):
        proc.stdin.write(data)
