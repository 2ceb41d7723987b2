"""Secrets: the token from a file or the environment, failed logins throttled per address, and Origin checks."""

import asyncio
import contextlib
import json
import logging
import os
import sys

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from server import HubConfig, SignalingServer
from tests.server.test_cli import start_cli
from tests.support import FAST, Peer, running_server

HELLO = {"type": "hello", "protocol": 1, "user_id": "alice", "display_name": "A"}


async def _login(url: str, token: str | None) -> dict:
    async with connect(url) as ws:
        await ws.send(json.dumps({**HELLO, "token": token}))
        return json.loads(await ws.recv())


@pytest.mark.parametrize("how", ["file", "env"])
async def test_the_token_from_a_file_or_the_environment(tmp_path, monkeypatch, how):
    if how == "file":
        (tmp_path / "token").write_text("s3cret\n")
        args = ("--token-file", str(tmp_path / "token"))
    else:
        monkeypatch.setenv("CALLBOX_TOKEN", "s3cret")
        args = ()
    proc, url = await start_cli(*args)
    try:
        assert (await _login(url, "wrong"))["code"] == "auth_failed"
        await asyncio.sleep(0.15)  # the throttle after one failure
        assert (await _login(url, "s3cret"))["type"] == "connection_established"
    finally:
        proc.terminate()
        assert await proc.wait() == 0


async def test_the_command_line_token_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("CALLBOX_TOKEN", "from-env")
    proc, url = await start_cli("--token", "from-flag")
    try:
        assert (await _login(url, "from-flag"))["type"] == "connection_established"
    finally:
        proc.terminate()
        await proc.wait()


@pytest.mark.parametrize("setup,words", [
    ("missing", b"cannot read the token file"),
    ("empty", b"is empty"),
    ("both", b"give --token or --token-file, not both"),
])
async def test_token_file_errors_are_plain(tmp_path, setup, words):
    path = tmp_path / "token"
    if setup == "empty":
        path.write_text("\n")
    args = ["--token-file", str(path)] + (["--token", "x"] if setup == "both" else [])
    if setup == "both":
        path.write_text("y")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "server", "--port", "0", *args,
                                                stderr=asyncio.subprocess.PIPE, cwd=os.getcwd())
    _, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 1 and words in err and b"Traceback" not in err


async def test_failed_logins_from_one_address_are_throttled_and_others_log_in_at_once(caplog):
    caplog.set_level(logging.WARNING, "callbox.hub")
    async with running_server(token="s3cret") as srv:
        loop = asyncio.get_running_loop()
        checked = refused = 0
        start = loop.time()
        for _ in range(200):  # as fast as one client can, for at most 2 s
            if loop.time() - start > 2:
                break
            reply = (await Peer.connect(srv.url, "mallory", token="guess")).welcome
            assert reply["code"] == "auth_failed"
            if "too many failed logins" in reply["message"]:
                refused += 1
            else:
                checked += 1
            if checked == 3:  # meanwhile, the real user from another address logs in at once
                t0 = loop.time()
                ws = await connect(srv.url, ping_interval=None, local_addr=("127.0.0.2", 0))
                await ws.send(json.dumps({**HELLO, "token": "s3cret"}))
                assert json.loads(await ws.recv())["type"] == "connection_established"
                assert loop.time() - t0 < 0.5
                await ws.close()
        # Before: 1,391 guesses a second. Now a guess is looked at after 0.1, 0.2, 0.4, 0.8, 1.6 s ... (5 s at most).
        assert checked <= 6, checked
        assert refused > 0
        warnings = [r for r in caplog.records if "failed login from 127.0.0.1" in r.getMessage()]
        assert len(warnings) == 1  # once per burst, not per attempt
        assert all(r.levelno == logging.WARNING for r in warnings)


@contextlib.asynccontextmanager
async def _server(**kwargs):
    srv = SignalingServer("127.0.0.1", 0, config=HubConfig(**FAST), **kwargs)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


async def test_browser_origins_are_refused_unless_allowed():
    async with _server() as srv:
        with pytest.raises(InvalidStatus) as refused:
            await connect(srv.url, origin="http://evil.example")
        assert refused.value.response.status_code == 403
        assert (await Peer.connect(srv.url, "native")).welcome["type"] == "connection_established"  # no Origin
    async with _server(allow_origins=["https://app.example"]) as srv:
        ws = await connect(srv.url, origin="https://app.example")
        await ws.close()
        with pytest.raises(InvalidStatus):
            await connect(srv.url, origin="http://evil.example")
    async with _server(allow_origins=["*"]) as srv:
        ws = await connect(srv.url, origin="http://anything.example")
        await ws.close()


async def test_allow_origin_on_the_command_line():
    proc, url = await start_cli("--allow-origin", "https://app.example", "--allow-origin", "https://b.example")
    try:
        for origin in ("https://app.example", "https://b.example"):
            async with connect(url, origin=origin) as ws:
                await ws.send(json.dumps({**HELLO, "user_id": origin[8:9]}))
                assert json.loads(await ws.recv())["type"] == "connection_established"
        with pytest.raises(InvalidStatus):
            await connect(url, origin="http://evil.example")
    finally:
        proc.terminate()
        await proc.wait()
    assert b"Traceback" not in await proc.stderr.read()
