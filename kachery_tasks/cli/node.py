"""Commands about the node itself: node init, node info, node start, node url."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from ..config import default_path, init_node_dir
from ..errors import KacheryError
from ..nodes import current_node
from ..sizes import format_size
from . import command
from .args import arg, file_path, json_flag, seconds, size, whole_number


def _init(args: argparse.Namespace) -> int:
    node = init_node_dir(Path(args.dir).expanduser() if args.dir else default_path(), args.shared)
    print(f"node directory: {node.path}{' (group-shared)' if node.shared else ''}")
    print(f"config:         {node.config_path}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from ..daemon.http import running_api  # stdlib only: works without the daemon extra

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
    api = running_api(node)
    print(f"HTTP API:       {api['url'] if api else 'not running (kachery-tasks node start)'}")
    return 0


_LISTEN_WARNING = """\
warning: the HTTP API is open to the network at {where}. Anyone who can reach it and
holds the token can use this node, and over plain HTTP the token can be read on the
way: put a TLS reverse proxy in front of it (see docs/daemon.md)."""


def _start(args: argparse.Namespace) -> int:
    from ..daemon.http import HttpServer, stop_signals
    from ..daemon.service import NodeDaemon

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # Our loggers and the web server's only: the pub/sub SDK's own logs may carry tokens.
    for name in ("kachery_tasks", "uvicorn"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING if args.quiet else logging.INFO)
        logger.propagate = False
    node = current_node()
    if args.listen:  # before joining any channel: a daemon that cannot serve stays offline
        from ..daemon.http import can_listen, parse_listen

        can_listen(*parse_listen(args.listen))
    provided, executor = _provider_parts(args, node)
    with stop_signals() as stop:
        daemon = NodeDaemon(node, label=args.label, inline_max=args.inline_max,
                            provided=provided, executor=executor, claim_ttl=args.claim_ttl)
        try:
            daemon.start()
        except BaseException:
            if executor is not None:
                executor.close()
            raise
        try:
            with HttpServer(node, daemon=daemon, listen=args.listen) as http:
                if http.open_to_network:
                    print(_LISTEN_WARNING.format(where=f"{http.host}:{http.port}"),
                          file=sys.stderr)
                channels = ", ".join(s.channel.name for s in daemon.services.values())
                print(f"node daemon of {node.path} running (pid {os.getpid()}); "
                      f"channels: {channels or 'none yet'}")
                if provided is not None:
                    where = _executor_name(args)
                    warning = _serves_no_channel(node, daemon)
                    print(f"providing {len(provided)} task(s) from "
                          f"{', '.join(provided.modules)}, run {where}"
                          + ("; in no channel yet (see the warning)" if warning else ""))
                    if warning:
                        print(warning, file=sys.stderr)
                print(f"HTTP API and hub: {http.url}  (API docs: {http.url}/docs)")
                print("open the hub with the link 'kachery-tasks node url --login' prints; "
                      "stop with Ctrl-C", flush=True)
                while not stop.wait(1.0):
                    pass
        finally:
            daemon.stop()
    print("stopped")
    return 0


def _provider_parts(args: argparse.Namespace, node) -> tuple:
    """The registry of ``--provide`` and the executor of ``--dask``/``--workers``.

    A module that cannot be imported is a TaskModuleError now, before anything
    starts. The current directory is looked in first, as ``python -m`` does.
    """
    from ..errors import InvalidValueError

    if args.dask and args.workers:
        raise InvalidValueError("give --dask ADDR (a running scheduler) or --workers N (a "
                                "LocalCluster started here), not both")
    if not args.provide:
        if args.dask or args.workers or args.claim_ttl is not None:
            raise InvalidValueError("--dask, --workers and --claim-ttl are about provided "
                                    "tasks: give the modules with --provide MODULE too")
        return None, None
    from ..network.tasks import Provided

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    provided = Provided.from_modules(args.provide)
    if not args.dask and not args.workers:
        return provided, None
    from ..runtime.executors import connect

    with node:
        executor = connect(args.dask, n_workers=args.workers or 1, node_path=node.path)
    return provided, executor


def _serves_no_channel(node, daemon) -> str | None:
    """A warning for ``--provide`` when no channel lets this node process tasks (none
    joined, or none granting ``process_tasks``): no member could ask it; else None."""
    from ..network.channels.config import grant_command, ordered_permissions

    channels = [service.channel for service in daemon.services.values()]
    if not channels:
        return ("warning: --provide: this node has joined no channel, so no member can ask it "
                "to run tasks; join one with 'kachery-tasks channel join INVITE' (the daemon "
                "picks it up within seconds)")
    held = []
    for channel in channels:
        config = channel.trusted_config()
        if config is None:
            continue
        if "process_tasks" in config.permissions_of(node.id):
            return None
        held.append((config, ordered_permissions(config.permissions_of(node.id))))
    if not held:
        return None
    what = "; ".join(f"in {config.name} it may {', '.join(allowed) or 'do nothing'}"
                     for config, allowed in held)
    grant = grant_command(held[0][0], node.id, "process_tasks")
    return (f"warning: --provide: this node may not process_tasks in any channel it serves "
            f"({what}), so no member can ask it to run tasks. It starts providing "
            f"within seconds of the owner running '{grant}'")


def _executor_name(args: argparse.Namespace) -> str:
    if args.dask:
        return f"on the Dask cluster at {args.dask}"
    if args.workers:
        return f"on a LocalCluster of {args.workers} worker(s)"
    return "in this process"


MAX_WORKERS = 1024
"""``--workers``: worker processes of a LocalCluster started by ``node start``."""


def _url(args: argparse.Namespace) -> int:
    from ..daemon.http import daemon_dir, running_api

    node = current_node()
    api = running_api(node)
    if api is None:
        raise KacheryError(f"no daemon serves {node.path}: start one with "
                           "'kachery-tasks node start'")
    if not args.login:
        print(api["url"])
        return 0
    token = (daemon_dir(node) / "token").read_text().strip()
    print(f"{api['url']}/#token={token}")
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
                "start", "Run the node daemon until Ctrl-C or SIGTERM: channels, HTTP API, hub.",
                "kachery-tasks node start --listen 0.0.0.0:7660",
                "Connects to every channel this node joined and is a member of, shows it\n"
                "online there, answers members' requests for files this node holds (when it\n"
                "may upload), sends its feeds' new messages to the members following them\n"
                "and imports the new messages of the feeds it follows. Channels joined or\n"
                "left while it runs are picked up within seconds; after a broker restart it\n"
                "reconnects by itself. Writes <node>/daemon/pid; a second daemon on the same\n"
                "node directory refuses to start. Logs to stderr (never a key or token).\n\n"
                "It also serves the HTTP API and the hub page, on 127.0.0.1 on a free port\n"
                "unless --listen says otherwise; where is written to <node>/daemon/http.json,\n"
                "and a new token (mode 0600) to <node>/daemon/token. 'kachery-tasks node url'\n"
                "prints the address. Needs the daemon extra: pip install "
                "'kachery-tasks[daemon]'.\n\n"
                "--provide MODULE... makes the node a provider: it imports the modules (the\n"
                "current directory is searched first) and, in each channel where it may\n"
                "process_tasks, runs their tasks (and the tasks they call) when members ask,\n"
                "once per task id in the whole channel; presence tells members what it\n"
                "provides ('kachery-tasks channel status NAME'). Tasks run in this process,\n"
                "on the Dask scheduler of --dask ADDR, or on a LocalCluster of --workers N\n"
                "processes (the modules must be importable there too). See docs/remote-tasks.md.",
                args=[
                    arg("--listen", metavar="ADDR[:PORT]", help=(
                        "where the API listens (default 127.0.0.1, a free port); another\n"
                        "address opens it to the network: put TLS in front")),
                    arg("--label", help="how this node shows in presence (default: its label "
                                        "in each channel)"),
                    arg("--quiet", action="store_true",
                        help="log warnings and errors only (not each request) on stderr"),
                    arg("--inline-max", type=size, default=None, metavar="SIZE",
                        help="send content up to SIZE inside the answer to a request "
                             "(default 32KiB, at most 40KiB; 0: always through the bucket)"),
                    arg("--provide", nargs="+", metavar="MODULE", default=None,
                        help="run the tasks of these Python modules for the channels' members"),
                    arg("--dask", metavar="ADDR", default=None,
                        help="run provided tasks on this Dask scheduler (tcp://host:8786)"),
                    arg("--workers", type=whole_number(1, MAX_WORKERS), metavar="N",
                        default=None,
                        help="run provided tasks on a LocalCluster of N worker processes"),
                    arg("--claim-ttl", type=seconds, metavar="SECONDS", default=None,
                        help="seconds a claim on a task lives without renewal (default 60): "
                             "how long another provider waits before taking over the task "
                             "of one that died (its requesters ask the next provider about "
                             "20 s after it died: 15 s for the broker to drop it from presence "
                             "(the broker's --presence-timeout), then 5 s)"),
                ],
                run=_start,
            ),
            command(
                "url", "Print the address of this node's running HTTP API and hub.",
                "kachery-tasks node url --login",
                "--login prints a link that logs the hub page in: the token rides in the\n"
                "URL fragment (after #), which browsers do not send to the server. It is\n"
                "a credential: do not paste it where others can read it.",
                args=[arg("--login", action="store_true",
                          help="a link with the token, to open the hub logged in")],
                run=_url,
            ),
        ],
    ),
)
