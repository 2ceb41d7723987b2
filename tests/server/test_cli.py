"""`callbox-server` as a user runs it: a ready line naming the address, wss://, and a clean exit on signals."""

import asyncio
import datetime
import json
import re
import signal
import ssl
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedOK


async def start_cli(*args):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "--port", "0", *args,
        stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
    )
    async with asyncio.timeout(10):
        while True:
            line = (await proc.stderr.readline()).decode()
            assert line, "server exited before it was ready"
            if m := re.search(r"listening on (wss?://\S+)", line):
                return proc, m.group(1)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_runs_and_exits_zero_on_signal(sig):
    proc, url = await start_cli()
    assert url.startswith("ws://127.0.0.1:")
    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "hello", "protocol": 1, "user_id": "alice", "display_name": "A"}))
        assert json.loads(await ws.recv())["type"] == "connection_established"
        proc.send_signal(sig)
        with pytest.raises(ConnectionClosedOK):
            await asyncio.wait_for(ws.recv(), 5)
        assert ws.close_code == 1001
    assert await asyncio.wait_for(proc.wait(), 10) == 0
    log = (await proc.stderr.read()).decode()
    assert "Traceback" not in log


async def test_wss_with_cert_and_key(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    proc, url = await start_cli("--host", "localhost", "--cert", str(tmp_path / "cert.pem"),
                                "--key", str(tmp_path / "key.pem"), "--token", "t0p")
    try:
        assert url.startswith("wss://localhost:")
        client_ctx = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
        async with connect(url, ssl=client_ctx) as ws:
            await ws.send(json.dumps({"type": "hello", "protocol": 1, "user_id": "a", "display_name": "A",
                                      "token": "t0p"}))
            assert json.loads(await ws.recv())["type"] == "connection_established"
    finally:
        proc.terminate()
        assert await proc.wait() == 0


async def test_bad_options_are_named():
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "server", "--ping-interval", "soon",
                                                stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode == 2 and b"'soon' is not a number" in err and b"Traceback" not in err
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "server", "--cert", "nope.pem",
                                                "--key", "nope.pem", stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode == 1 and b"cannot load the certificate" in err and b"Traceback" not in err
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "server", "--redis", "http://cache:6379",
                                                stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode == 1 and b"'http://cache:6379' is not a Redis URL" in err and b"Traceback" not in err


async def test_port_in_use_is_a_plain_message():
    proc, url = await start_cli()
    port = url.rsplit(":", 1)[1]
    try:
        other = await asyncio.create_subprocess_exec(sys.executable, "-m", "server", "--port", port,
                                                     stderr=asyncio.subprocess.PIPE)
        _, err = await other.communicate()
        assert other.returncode == 1 and b"cannot listen on 127.0.0.1" in err and b"Traceback" not in err
    finally:
        proc.terminate()
        await proc.wait()
