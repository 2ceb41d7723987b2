"""The `callbox-server` command: parse options, run the server until SIGINT or SIGTERM, exit 0."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sqlite3
import ssl
import sys
from pathlib import Path

from shared import __version__

from .bindings import SqliteBindings, default_data_dir
from .hub import HubConfig
from .transport import SignalingServer


def _positive(kind: type) -> callable:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"'{text}' must not be negative")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="callbox-server", description="Callbox signaling server.")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for the LAN)")
    ap.add_argument("--port", type=_positive(int), default=8765, help="port; 0 picks a free one (default 8765)")
    ap.add_argument("--token", help="shared secret every client must send in hello (visible to other local users "
                                    "in the process list: prefer --token-file or CALLBOX_TOKEN)")
    ap.add_argument("--token-file", metavar="PATH",
                    help="read the token from this file (its first line, trailing whitespace removed)")
    ap.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                    help="a web page origin allowed to connect, e.g. https://app.example (repeatable; * for any). "
                         "By default a request with an Origin header (from a browser) is refused with 403; "
                         "native clients send none and are always allowed")
    ap.add_argument("--cert", help="TLS certificate (PEM) to serve wss://")
    ap.add_argument("--key", help="TLS private key (PEM) for --cert")
    ap.add_argument("--ping-interval", type=_positive(float), default=10.0, metavar="S",
                    help="seconds between keepalive pings (default 10)")
    ap.add_argument("--ping-timeout", type=_positive(float), default=10.0, metavar="S",
                    help="seconds to wait for a pong before dropping the peer (default 10)")
    ap.add_argument("--resume-grace", type=_positive(float), default=30.0, metavar="S",
                    help="seconds a dropped user may come back and resume (default 30)")
    ap.add_argument("--ring-timeout", type=_positive(float), default=45.0, metavar="S",
                    help="seconds an unanswered call rings (default 45)")
    ap.add_argument("--rate-limit", type=_positive(float), default=100.0, metavar="N",
                    help="messages a second one connection may send, in bursts of twice that (default 100; "
                         "0: no limit)")
    ap.add_argument("--hello-timeout", type=_positive(float), default=10.0, metavar="S",
                    help="seconds a new connection has to log in before it is closed (default 10; 0: no limit)")
    ap.add_argument("--max-unauthenticated", type=_positive(int), default=256, metavar="N",
                    help="connections that have not logged in yet, at most, over the whole server; more are "
                         "refused with HTTP 503 (default 256; 0: no limit)")
    ap.add_argument("--max-unauthenticated-per-ip", type=_positive(int), default=32, metavar="N",
                    help="the same from one address (default 32; 0: no limit)")
    ap.add_argument("--redis", metavar="URL",
                    help="run as one node of a cluster that shares this Redis (redis://HOST:PORT/DB): users on any "
                         "node reach users on any other, and resume on any of them. Needs callbox[redis]")
    ap.add_argument("--deflate", action="store_true", help="offer permessage-deflate compression (default off)")
    ap.add_argument("--advertise", action="store_true",
                    help="announce the server on the LAN over mDNS, so that apps find it and prefer it to a server "
                         "hosted inside an app (listen with --host 0.0.0.0 for other machines to reach it)")
    ap.add_argument("--name", metavar="NAME", help="the name it is advertised under (default: Callbox server on "
                                                   "HOSTNAME)")
    ap.add_argument("--data-dir", type=Path, metavar="DIR",
                    help=f"where to keep which identity key owns which user id (default {default_data_dir()})")
    ap.add_argument("--forget", metavar="USER", help="release USER's binding to its identity key, so that another "
                                                     "key may claim it, and exit (the server may be running)")
    ap.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    ap.add_argument("--version", action="version", version=f"callbox-server {__version__}")
    return ap


def read_token(args: argparse.Namespace, environ: dict[str, str] = os.environ) -> str | None:
    """The token: --token or --token-file (not both), else CALLBOX_TOKEN (empty counts as unset), else none."""
    if args.token is not None and args.token_file is not None:
        raise SystemExit("callbox-server: give --token or --token-file, not both")
    if args.token_file is not None:
        try:
            with open(args.token_file, encoding="utf-8") as f:
                token = f.readline().rstrip()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise SystemExit(f"callbox-server: cannot read the token file {args.token_file}: {why}") from None
        if not token:
            raise SystemExit(f"callbox-server: the token file {args.token_file} is empty")
        return token
    if args.token is not None:
        if not args.token:
            raise SystemExit("callbox-server: --token must not be empty")
        return args.token
    return environ.get("CALLBOX_TOKEN") or None


def make_server(args: argparse.Namespace) -> SignalingServer:
    token = read_token(args)
    context = None
    if args.cert or args.key:
        if not (args.cert and args.key):
            raise SystemExit("callbox-server: --cert and --key go together")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(args.cert, args.key)
        except (OSError, ssl.SSLError) as exc:
            raise SystemExit(f"callbox-server: cannot load the certificate or key: {exc}") from None
    config = HubConfig(
        token=token,
        resume_grace=args.resume_grace,
        ring_timeout=args.ring_timeout,
        ping_interval=args.ping_interval,
        rate=args.rate_limit,
        burst=max(2 * args.rate_limit, 1),
        hello_timeout=args.hello_timeout,
        max_unauthenticated=args.max_unauthenticated,
        max_unauthenticated_per_ip=args.max_unauthenticated_per_ip,
    )
    options = dict(config=config, ping_timeout=args.ping_timeout, ssl_context=context, compression=args.deflate,
                   allow_origins=args.allow_origin, bindings=open_bindings(args.data_dir))
    if not args.redis:
        return SignalingServer(args.host, args.port, **options)
    from .cluster import ClusterError  # only here: without --redis, redis-py is never imported

    try:
        return SignalingServer(args.host, args.port, redis=args.redis, **options)
    except ClusterError as exc:
        raise SystemExit(f"callbox-server: {exc}") from None


def open_bindings(data_dir: Path | None) -> SqliteBindings:
    directory = data_dir or default_data_dir()
    try:
        return SqliteBindings(directory)
    except (OSError, sqlite3.Error) as exc:
        raise SystemExit(f"callbox-server: cannot keep user ids' keys in {directory}: {exc}") from None


async def run(server: SignalingServer, *, advertise: str | None = None) -> None:
    """Serve until SIGINT or SIGTERM; with `advertise`, announce the server on the LAN under that name."""
    from .discovery import Advertiser, DiscoveryError, server_facts

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    advertiser = Advertiser()
    try:
        if advertise:
            # Listening on one address: announce that one only. On every address: announce the LAN ones.
            everywhere = server.host in ("", "0.0.0.0", "::")
            try:
                await advertiser.start(server.port, name=advertise, version=__version__, tls=bool(server.ssl_context),
                                       token_required=server.hub.config.token is not None,
                                       facts=server_facts(server.hub.config),
                                       interfaces=None if everywhere else [server.host])
            except DiscoveryError as exc:
                logging.getLogger("callbox.server").warning("not advertised on the LAN: %s", exc)
        await stop.wait()
    finally:
        await advertiser.stop()
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.forget:
        bindings = open_bindings(args.data_dir)
        released = bindings.forget(args.forget)
        bindings.close()
        if args.redis:  # and for every node of the cluster
            from .cluster import ClusterError, forget_in_cluster

            try:
                released = forget_in_cluster(args.redis, args.forget) or released
            except ClusterError as exc:
                print(f"callbox-server: {exc}", file=sys.stderr)
                return 1
        print(f"callbox-server: {args.forget!r} " + ("is released: the next key to prove it owns it" if released
                                                     else f"is not bound to any key in {bindings.path}"))
        return 0 if released else 1
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("websockets").setLevel(max(logging.WARNING, logging.getLevelName(args.log_level)))
    server = make_server(args)
    name = (args.name or f"Callbox server on {socket.gethostname()}") if args.advertise else None
    try:
        asyncio.run(run(server, advertise=name))
    except OSError as exc:
        print(f"callbox-server: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0
