"""The hub's CPU per hello: a keyless hello (the baseline) against one that proves an identity key, in one process.

Each round opens a connection, logs in a new user id (its look-alike check included) and leaves with bye, with
10 other users online. Run from the repository root: .venv/bin/python bench/hello.py [--rounds 3000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from client.core.identity import Identity  # noqa: E402
from server import Hub, HubConfig  # noqa: E402
from server.hub import Send  # noqa: E402
from shared import protocol as p  # noqa: E402


def run(rounds: int, keyed: bool) -> float:
    """Microseconds of CPU per hello."""
    hub = Hub(HubConfig(rate=1e9, burst=1e9))
    for i in range(10):
        hub.open(f"c{i}", 0.0)
        hub.receive(f"c{i}", p.Hello(protocol=1, user_id=f"online{i}", display_name="O").encode(), 0.0)
    identity = Identity.generate()
    frames = []
    for i in range(rounds):
        user, nonce = f"user-{i}", f"nonce{i:020d}"
        extra = {"key": identity.key, "proof": identity.prove(nonce, user)} if keyed else {}
        frames.append((nonce, p.Hello(protocol=1, user_id=user, display_name=user, **extra).encode()))
    bye = p.Bye().encode()
    started = time.process_time()
    for i, (nonce, hello) in enumerate(frames):
        conn = f"n{i}"
        hub.open(conn, 0.0, nonce=nonce)
        if not any(isinstance(a, Send) and '"connection_established"' in a.text for a in hub.receive(conn, hello, 0.0)):
            raise RuntimeError(f"hello {i} did not log in")
        hub.receive(conn, bye, 0.0)
        hub.connection_lost(conn, 0.0)
    return (time.process_time() - started) / rounds * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    plain, keyed = [], []
    for _ in range(args.repeats):  # interleaved, so that the machine's load falls on both alike
        plain.append(run(args.rounds, False))
        keyed.append(run(args.rounds, True))
    a, b = statistics.median(plain), statistics.median(keyed)
    print(f"hub CPU per hello, median of {args.repeats} x {args.rounds}: keyless {a:.1f} us, proving a key "
          f"{b:.1f} us: {b / a:.2f}x, +{b - a:.1f} us (the Ed25519 check and the binding)")


if __name__ == "__main__":
    main()
