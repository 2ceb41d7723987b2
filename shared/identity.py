"""Identity keys on the wire: Ed25519 public keys as text, what a hello proof signs, and checking a signature."""

from __future__ import annotations

import base64
import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

KEY_CHARS = 43  # 32 bytes in unpadded base64url
SIGNATURE_CHARS = 86  # 64 bytes in unpadded base64url


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hello_payload(nonce: str, user_id: str) -> bytes:
    """What a hello proof signs: the server's nonce for this connection, and the user id claimed."""
    return f"callbox-hello\n{nonce}\n{user_id}".encode()


def verify(key: str, signature: str, payload: bytes) -> bool:
    """Whether `signature` (base64url) is `key`'s (base64url raw Ed25519) over `payload`. Never raises."""
    try:
        Ed25519PublicKey.from_public_bytes(unb64(key)).verify(unb64(signature), payload)
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False


def fingerprint(key: str) -> str:
    """A short form of a key for people to compare: 16 hex digits of its SHA-256, in four groups."""
    digest = hashlib.sha256(unb64(key)).hexdigest()[:16]
    return " ".join(digest[i:i + 4] for i in range(0, 16, 4))


def dtls_fingerprints(sdp: str) -> str:
    """The DTLS certificate fingerprints an SDP offers (its a=fingerprint lines), sorted, one a line."""
    found = {line.split(":", 1)[1].strip().lower() for line in sdp.splitlines() if line.startswith("a=fingerprint:")}
    return "\n".join(sorted(found))


def dtls_payload(call_id: str, sender: str, sdp: str) -> bytes:
    """What an offer's or answer's signature covers: the call, who sends it, and the DTLS fingerprints in it. A
    server that swapped the fingerprints (to sit in the media path) cannot sign the new ones."""
    return f"callbox-dtls\n{call_id}\n{sender}\n{dtls_fingerprints(sdp)}".encode()


def safety_code(key_a: str, sdp_a: str, key_b: str, sdp_b: str) -> str:
    """Six digits, the same on both sides of a call, from both keys and both DTLS fingerprints: two people who
    read out the same code know that nobody sits between them."""
    sides = sorted(f"{key}\n{dtls_fingerprints(sdp)}" for key, sdp in ((key_a, sdp_a), (key_b, sdp_b)))
    number = int.from_bytes(hashlib.sha256("\n\n".join(["callbox-sas", *sides]).encode()).digest()[:8], "big")
    digits = f"{number % 1_000_000:06d}"
    return f"{digits[:3]} {digits[3:]}"
