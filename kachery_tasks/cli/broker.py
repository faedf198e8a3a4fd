"""The broker command: run the embedded pub/sub broker in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import signal
import sys
from typing import TYPE_CHECKING

from ..errors import InvalidValueError, KacheryError
from . import command
from .args import arg, seconds

if TYPE_CHECKING:
    from ..network.broker.limits import Limits

_DETAILS = """\
Serves the part of Ably's realtime protocol that the ably SDK uses (JSON over
a websocket), so nodes connect to it with the pub/sub URL ws://HOST:PORT.
Runs until Ctrl-C or SIGTERM, then closes every connection. Logs connections
and refusals to stderr (never a token or key).

Admits only members of kachery channels: a node presents a token signed by
its node key carrying the channel's owner-signed config, and may use only
that channel. A node removed from a channel (a newer config) is disconnected.
--owner limits the broker to the channels of given owner keys. --open admits
every client (for development: listen on a loopback address).

A node whose connection drops without closing (killed, cut off) stays present
for --presence-timeout seconds, so that a short network glitch does not make it
leave and enter again; its requesters move on to another provider once it has
left."""


def _owner_key(text: str) -> str:
    from ..network.channels.config import check_node_id

    try:
        return check_node_id(text, "channel owner key")
    except KacheryError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _start(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.open and args.owner:
        raise InvalidValueError("--open admits everyone: it cannot be combined with --owner")
    from ..network.broker.limits import Limits

    limits = Limits(presence_timeout=args.presence_timeout)
    asyncio.run(_serve(args.host, args.port, args.open, args.owner, limits))
    return 0


async def _serve(host: str, port: int, open_to_all: bool, owners: list[str] | None,
                 limits: Limits) -> None:
    from ..network.broker import Broker

    if open_to_all:
        broker = Broker(host, port, limits=limits)
    else:
        from ..network.channels import ChannelAdmission

        admission = ChannelAdmission(owners=owners)
        broker = Broker(host, port, authorize=admission.authorize, observe=admission.observe,
                        limits=limits)
        admission.on_removed = broker.disconnect
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"broker listening on {broker.url} (stop with Ctrl-C)", flush=True)
    if open_to_all:
        where = "" if _is_loopback(host) else " and this address is reachable from other machines"
        print(f"warning: --open: every client is admitted, member of a channel or not{where}",
              file=sys.stderr, flush=True)
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
                    arg("--open", action="store_true",
                        help="admit every client, member or not (development only)"),
                    arg("--owner", action="append", type=_owner_key, metavar="OWNER_KEY",
                        help="serve only channels of this owner key (64 hex; repeat for several)"),
                    arg("--presence-timeout", type=seconds, metavar="SECONDS", default=15.0,
                        help="seconds a node whose connection dropped stays present before it "
                             "leaves (default 15)"),
                ],
                run=_start,
            ),
        ],
    ),
)
