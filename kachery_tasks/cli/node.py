"""Commands about the node itself: node init, node info, node start."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from ..config import default_path, init_node_dir
from ..nodes import current_node
from ..sizes import format_size
from . import command
from .args import arg, file_path, json_flag, size


def _init(args: argparse.Namespace) -> int:
    node = init_node_dir(Path(args.dir).expanduser() if args.dir else default_path(), args.shared)
    print(f"node directory: {node.path}{' (group-shared)' if node.shared else ''}")
    print(f"config:         {node.config_path}")
    return 0


def _info(args: argparse.Namespace) -> int:
    node = current_node()
    count, total = node.store.index.stored_bytes()
    info = {
        "node_dir": str(node.path),
        "node_id": node.id,
        "shared": node.shared,
        "config": str(node.dir.config_path),
        "chunk_size": node.config.chunk_size,
        "blobs": count,
        "stored_bytes": total,
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"node directory: {info['node_dir']}{' (group-shared)' if node.shared else ''}")
    print(f"node id:        {info['node_id']}")
    print(f"config:         {info['config']}")
    print(f"chunk size:     {format_size(node.config.chunk_size)}")
    print(f"store:          {count} blobs, {format_size(total)}")
    return 0


def _start(args: argparse.Namespace) -> int:
    from ..daemon.service import NodeDaemon

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    for name in ("kachery_tasks.daemon", "kachery_tasks.network"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING if args.quiet else logging.INFO)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    node = current_node()
    daemon = NodeDaemon(node, label=args.label, inline_max=args.inline_max)
    daemon.start()
    try:
        channels = ", ".join(s.channel.name for s in daemon.services.values()) or "none yet"
        print(f"node daemon of {node.path} running (pid {os.getpid()}); channels: {channels}",
              flush=True)
        while not stop.wait(3600):
            pass
    finally:
        daemon.stop()
    return 0


COMMANDS = (
    command(
        "node", "Create or describe this node's directory.", "kachery-tasks node info",
        actions=[
            command(
                "init", "Create the node directory and its config.toml.",
                "kachery-tasks node init --dir /shared/lab/kachery --shared",
                "Without --dir the directory is $KACHERY_TASKS_DIR or ~/.kachery-tasks.\n"
                "--shared makes it setgid and group-writable, so every member of its group\n"
                "can store and load content there (whatever their umask).",
                args=[
                    arg("--dir", type=file_path, help="where to create the node directory"),
                    arg("--shared", action="store_true", help="share the directory with its group"),
                ],
                run=_init,
            ),
            command(
                "info", "Show where the node lives and what it holds.",
                "kachery-tasks node info --json", args=[json_flag()], run=_info,
            ),
            command(
                "start", "Serve this node's channels until Ctrl-C or SIGTERM.",
                "kachery-tasks node start",
                "Connects to every channel this node joined and is a member of, shows it\n"
                "online there, answers members' requests for files this node holds (when it\n"
                "may upload), sends its feeds' new messages to the members following them\n"
                "and imports the new messages of the feeds it follows. Channels joined or\n"
                "left while it runs are picked up within seconds; after a broker restart it\n"
                "reconnects by itself. Writes <node>/daemon/pid; a second daemon on the same\n"
                "node directory refuses to start. Logs to stderr (never a key or token).",
                args=[
                    arg("--label", help="how this node shows in presence (default: its label "
                                        "in each channel)"),
                    arg("--quiet", action="store_true", help="log warnings and errors only"),
                    arg("--inline-max", type=size, default=None, metavar="SIZE",
                        help="send content up to SIZE inside the answer to a request "
                             "(default 32KiB, at most 40KiB; 0: always through the bucket)"),
                ],
                run=_start,
            ),
        ],
    ),
)
