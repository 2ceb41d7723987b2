"""The `callbox` command: the desktop app, or with --headless the command-line caller."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from shared import __version__

from . import headless


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="callbox", description="Voice and video calls across the LAN.")
    ap.add_argument("--profile", default="default", metavar="NAME",
                    help="keep settings, history and identity apart (run two side by side)")
    ap.add_argument("--self-test", action="store_true",
                    help="call between two built-in peers through an embedded server, check each hears the other")
    headless.add_arguments(ap)
    ap.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    ap.add_argument("--version", action="version", version=f"callbox {__version__}")
    return ap


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
        if os.path.basename(sys.argv[0]).startswith("callbox-server"):
            argv = ["server", *argv]
    if argv[:1] == ["server"]:  # one frozen executable is both: `callbox server ...`, or named callbox-server
        from server.cli import main as server_main

        return server_main(argv[1:])
    ap = build_parser()
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("aioice", "aiortc", "websockets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.self_test:
        from .selftest import run

        return asyncio.run(run())
    if not args.headless:
        from .ui.app import main as app_main

        try:
            return app_main(args.profile)
        except ValueError as exc:  # a bad profile name
            ap.error(str(exc))
    if not args.user:
        ap.error("--headless needs --user")
    return asyncio.run(headless.run(args))
