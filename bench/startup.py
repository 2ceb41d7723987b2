"""Start-up: time from launching `callbox` to its main window on screen, against a bare Qt window as baseline."""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS = 7
BARE = """
import sys, time
from PySide6.QtWidgets import QApplication, QMainWindow
app = QApplication(sys.argv[:1]); w = QMainWindow(); w.setWindowTitle("bare"); w.show(); app.processEvents()
print("window shown", flush=True, file=sys.stderr)
"""


def until_shown(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stderr:
            if "window shown" in line:
                return time.perf_counter() - start
        raise RuntimeError(f"{cmd[:3]} exited without showing a window")
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    root = Path(tempfile.mkdtemp())
    profile = root / "config" / "callbox" / "bench"
    profile.mkdir(parents=True)
    # A profile that is past its first run and names a server, so no LAN discovery runs.
    (profile / "settings.json").write_text(json.dumps({"display_name": "Bench", "user_id": "bench",
                                                       "server": "ws://127.0.0.1:9"}))
    env = {**os.environ, "XDG_CONFIG_HOME": str(root / "config"), "XDG_DATA_HOME": str(root / "data")}
    env.setdefault("QT_QPA_PLATFORM", "offscreen" if not env.get("DISPLAY") else "xcb")
    app, bare = [], []
    for _ in range(RUNS):  # interleaved, so machine noise hits both alike
        bare.append(until_shown([sys.executable, "-c", BARE], env))
        app.append(until_shown([sys.executable, "-m", "client", "--profile", "bench"], env))
    a, b = statistics.median(app), statistics.median(bare)
    print(f"platform {env['QT_QPA_PLATFORM']}, {RUNS} runs each, median:")
    print(f"  callbox window: {a * 1000:.0f} ms (target <= 2000 ms)")
    print(f"  bare Qt window: {b * 1000:.0f} ms")
    print(f"  ratio: {a / b:.2f}x; Callbox's own share: {(a - b) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
