"""A signature-checking worker for fully verified feed reads (see :mod:`.parallel`).

Run as a script (``python .../verify_worker.py``), it imports nothing of
kachery_tasks, only libsodium through PyNaCl, so that it starts in a few tens
of milliseconds. It reads requests from standard input until it closes and
answers each with an i32 (little-endian): the index of the first message
whose signature does not match, or -1.

A request is a u32 byte count, then the feed id (64 hex: the public key) and,
per message, a u32 length, the unsigned bytes and the signature (128 hex).
This module holds both halves of that protocol.
"""

from __future__ import annotations

import struct
import sys

U32 = struct.Struct("<I")
RESULT = struct.Struct("<i")


def encode_request(feed: str, pairs: list[tuple[bytes, str]]) -> bytes:
    """One request: the feed id, then each unsigned message and its signature."""
    out = [feed.encode("ascii")]
    for unsigned, signature in pairs:
        out.append(U32.pack(len(unsigned)))
        out.append(unsigned)
        out.append(signature.encode("ascii"))
    body = b"".join(out)
    return U32.pack(len(body)) + body


def decode_request(body: bytes) -> tuple[str, list[tuple[bytes, str]]]:
    """The feed id and (unsigned bytes, signature) pairs of a request body."""
    feed = body[:64].decode("ascii")
    pairs = []
    pos, end = 64, len(body)
    while pos < end:
        (n,) = U32.unpack_from(body, pos)
        pos += U32.size
        unsigned = body[pos : pos + n]
        signature = body[pos + n : pos + n + 128].decode("ascii")
        if len(unsigned) != n or len(signature) != 128:
            raise ValueError("truncated request")
        pairs.append((unsigned, signature))
        pos += n + 128
    return feed, pairs


def first_bad(feed: str, pairs: list[tuple[bytes, str]]) -> int:
    """The index of the first pair whose Ed25519 signature (libsodium) fails, or -1."""
    from nacl.bindings import crypto_sign_open
    from nacl.exceptions import BadSignatureError

    public = bytes.fromhex(feed)
    for i, (unsigned, signature) in enumerate(pairs):
        try:
            sig = bytes.fromhex(signature)
            if len(sig) != 64:
                return i
            crypto_sign_open(sig + unsigned, public)
        except (BadSignatureError, ValueError, TypeError):
            return i
    return -1


def main() -> None:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        head = stdin.read(U32.size)
        if len(head) != U32.size:
            return  # the reader closed the pipe: its process is done with us
        (size,) = U32.unpack(head)
        body = stdin.read(size)
        if len(body) != size:
            return
        stdout.write(RESULT.pack(first_bad(*decode_request(body))))
        stdout.flush()


if __name__ == "__main__":
    main()
