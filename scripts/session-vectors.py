#!/usr/bin/env python3
"""Known-answer vectors for the TETD session protocol (docs/encryption.md),
computed with an implementation independent of both Rust ends: Python's
`cryptography` (OpenSSL) for X25519, HKDF-SHA256 and AES-256-GCM.

The Rust tests (tetd-kvm/tests/session_interop.rs) pin this output: the ring
client and the agent-side crates of tetd::session must both produce exactly
these bytes. Rerun after a deliberate change of the protocol and update the
constants there:

    python3 scripts/session-vectors.py
"""
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey, X25519PublicKey)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

VERSION = 1
HELLO, ACK, DATA, REPLY = 1, 2, 3, 4
C2A, A2C = 1, 2
SALT = b"tetd-session-v1 salt"
LABEL = b"TETD-SESSION-V1\0"

# RFC 7748 section 6.1: Alice is the client, Bob the agent.
CLIENT_SK = bytes.fromhex(
    "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
AGENT_SK = bytes.fromhex(
    "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
MEASUREMENT = bytes(range(0x40, 0x70))
AGENT_ID = 20


def pub(sk):
    return X25519PrivateKey.from_private_bytes(sk).public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw)


def prefix(ty):
    return bytes([ty, VERSION, 0, 0])


def nonce(direction, counter):
    return struct.pack("<IQ", direction, counter)


def header(ty, sid, counter):
    return prefix(ty) + sid + struct.pack("<Q", counter)


def main():
    cpub, apub = pub(CLIENT_SK), pub(AGENT_SK)
    shared = X25519PrivateKey.from_private_bytes(AGENT_SK).exchange(
        X25519PublicKey.from_public_bytes(cpub))
    transcript = (LABEL + bytes([VERSION]) + MEASUREMENT
                  + struct.pack("<I", AGENT_ID) + cpub + apub)
    okm = HKDF(algorithm=hashes.SHA256(), length=72, salt=SALT,
               info=transcript).derive(shared)
    c2a, a2c, sid = okm[:32], okm[32:64], okm[64:]

    hello = prefix(HELLO) + cpub
    ack_aad = prefix(ACK) + apub + sid
    ack = ack_aad + AESGCM(a2c).encrypt(nonce(A2C, 0), b"", ack_aad)

    def request(counter, pt):
        h = header(DATA, sid, counter)
        return h + AESGCM(c2a).encrypt(nonce(C2A, counter), pt, h)

    def reply(counter, status, out):
        h = header(REPLY, sid, counter)
        return h + AESGCM(a2c).encrypt(
            nonce(A2C, counter), struct.pack("<I", status) + out, h)

    out = [
        ("SHARED", shared),
        ("TRANSCRIPT", transcript),
        ("K_C2A", c2a),
        ("K_A2C", a2c),
        ("SESSION_ID", sid),
        ("HELLO", hello),
        ("ACK", ack),
        ("REQUEST_1", request(1, b"hello, agent")),
        ("REPLY_1", reply(1, 0, b"hello, client")),
        ("REQUEST_2", request(2, b"")),
        ("REPLY_2", reply(2, 1, b"")),  # status 1 = Error::InvalidInput
    ]
    for name, value in out:
        print(f'const {name}: &str = "{value.hex()}";')


if __name__ == "__main__":
    main()
