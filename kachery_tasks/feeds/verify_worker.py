"""A signature-checking worker for fully verified feed reads (see :mod:`.parallel`).

Reads requests from standard input until it closes. A request is a u32
(little-endian) byte count, then the feed id (64 hex) and, per message, a
u32 length, the unsigned bytes and the signature (128 hex). Each is answered
with an i32: the index of the first message whose signature does not match,
or -1. Imports only what checking needs.
"""

from __future__ import annotations

import sys

from .parallel import _RESULT, _U32, check_signatures, decode_request


def main() -> None:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        head = stdin.read(_U32.size)
        if len(head) != _U32.size:
            return  # the reader closed the pipe: its process is done with us
        (size,) = _U32.unpack(head)
        body = stdin.read(size)
        if len(body) != size:
            return
        stdout.write(_RESULT.pack(check_signatures(*decode_request(body))))
        stdout.flush()


if __name__ == "__main__":
    main()
