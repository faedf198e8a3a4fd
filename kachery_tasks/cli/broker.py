"""The broker command: run the embedded pub/sub broker in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import signal
import sys

from . import command
from .args import arg

_DETAILS = """\
Serves the part of Ably's realtime protocol that the ably SDK uses (JSON over
a websocket), so nodes connect to it with the pub/sub URL ws://HOST:PORT.
Runs until Ctrl-C or SIGTERM, then closes every connection. Logs connections
and refusals to stderr (never a token or key).

Without an authorizer (this command has none yet) every client is admitted:
listen on a loopback address, or on a network you trust."""


def _start(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(_serve(args.host, args.port))
    return 0


async def _serve(host: str, port: int) -> None:
    from ..network.broker import Broker

    broker = Broker(host, port)
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"broker listening on {broker.url} (stop with Ctrl-C)", flush=True)
    if not _is_loopback(host):
        print("warning: every client is admitted (no authorizer) and this address is "
              "reachable from other machines", file=sys.stderr, flush=True)
    await stop.wait()
    await broker.close()
    print("broker stopped", flush=True)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


COMMANDS = (
    command(
        "broker", "Run the embedded pub/sub broker.", "kachery-tasks broker start --port 7654",
        actions=[
            command(
                "start", "Run the pub/sub broker in the foreground.",
                "kachery-tasks broker start --port 7654 --host 127.0.0.1", _DETAILS,
                args=[
                    arg("--port", type=int, default=7654,
                        help="TCP port (default 7654; 0: any free port)"),
                    arg("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1)"),
                    arg("--quiet", action="store_true", help="log only warnings and errors"),
                ],
                run=_start,
            ),
        ],
    ),
)
