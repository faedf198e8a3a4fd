"""Serving the API: uvicorn on a thread, and the files that tell clients where it is.

While it runs, :class:`HttpServer` keeps in ``<node>/daemon/``

* ``http.json`` — ``{"host", "port", "url", "pid", "pid_start", "host_id"}``: where
  the API listens, and which process serves it;
* ``token`` — the bearer token (mode 0600), new at each start.

By default the API listens on 127.0.0.1 on a port the system picks (so
several nodes of one machine never collide); ``listen="ADDR[:PORT]"`` picks
the address and port, e.g. ``0.0.0.0:7660`` to open it to a lab network,
where it needs TLS in front (a reverse proxy): the token travels in each
request. Both files are removed when the server stops.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import DaemonError, InvalidValueError, KacheryError
from ..fsutil import write_atomic
from ..nodes import Node
from ..processes import HOST, my_start_time, pid_alive
from .auth import new_token

log = logging.getLogger("kachery_tasks.daemon")

DAEMON_DIR = "daemon"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
START_TIMEOUT = 30.0


def parse_listen(text: str) -> tuple[str, int]:
    """``ADDR``, ``ADDR:PORT``, ``[IPv6]:PORT`` or ``:PORT`` as (host, port); port 0: any."""
    text = text.strip()
    host, port = text, "0"
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or (text[end + 1:] != "" and not text[end + 1:].startswith(":")):
            raise InvalidValueError(f"--listen {text!r}: write an IPv6 address as [ADDR]:PORT")
        host, port = text[1:end], text[end + 2:] or "0"
    elif text.count(":") == 1:
        host, port = text.split(":")
    host = host or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidValueError(f"--listen {text!r}: the port must be a number from 0 to 65535")
    if not host or any(c.isspace() or c in "/@?#" for c in host):
        raise InvalidValueError(f"--listen {text!r}: give an address such as 0.0.0.0:7660")
    return host, int(port)


def is_loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")


def daemon_dir(node: Node) -> Path:
    return node.sub(DAEMON_DIR)


def running_api(node: Node) -> dict[str, Any] | None:
    """``http.json`` of the daemon serving ``node``, if its process is alive; else None.

    The process is the one that wrote the file: on this host (a node directory shared
    with another machine may hold that machine's file: not a daemon reachable here), with
    a pid that started when the writer did (after a crash, the pid may be reused)."""
    try:
        info = json.loads((daemon_dir(node) / "http.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or not isinstance(info.get("pid"), int):
        return None
    if info.get("host_id", HOST) != HOST:
        return None
    start = info.get("pid_start")
    alive = pid_alive(info["pid"], start if isinstance(start, str) else None)
    return info if alive else None


def can_listen(host: str, port: int) -> None:
    """Raise a DaemonError saying why ``host:port`` cannot be listened on (a name that does
    not resolve, an address not of this machine, a port taken or reserved); else nothing.
    The web server would only say that it did not start."""
    where = f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        raise DaemonError(f"the HTTP API cannot listen on {where}: {host!r} is neither an IP "
                          f"address nor a name that resolves ({e}); give one with --listen, "
                          "e.g. 127.0.0.1:7660 or 0.0.0.0:7660") from None
    family, type_, proto, _, address = infos[0]
    with socket.socket(family, type_, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            probe.bind(address)
        except OSError as e:
            why = {errno.EADDRINUSE: "the port is taken (another process listens there)",
                   errno.EADDRNOTAVAIL: "the address is not one of this machine's",
                   errno.EACCES: "ports below 1024 need privileges"}.get(
                       e.errno, e.strerror or str(e))
            raise DaemonError(f"the HTTP API cannot listen on {where}: {why}; choose another "
                              "with --listen") from None


class HttpServer:
    """The node's API served by uvicorn on a background thread (``with HttpServer(...):``)."""

    def __init__(self, node: Node, daemon: Any | None = None, listen: str | None = None,
                 access_log: bool = True) -> None:
        self.node = node
        self.daemon = daemon
        self.host, self.port = parse_listen(listen) if listen else ("127.0.0.1", 0)
        self.access_log = access_log
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if host in ("0.0.0.0", "[::]"):
            host = "127.0.0.1" if host == "0.0.0.0" else "[::1]"
        return f"http://{host}:{self.port}"

    @property
    def open_to_network(self) -> bool:
        return not is_loopback(self.host)

    def start(self) -> HttpServer:
        """Write a new token, start serving, write ``http.json``; DaemonError when
        another process serves the node."""
        try:
            import uvicorn

            from .api import create_app
        except ImportError as e:
            raise KacheryError(
                f"the HTTP API needs the daemon extra ({e.name} is missing): "
                "pip install 'kachery-tasks[daemon]'") from None

        other = running_api(self.node)
        if other is not None and other["pid"] != os.getpid():
            raise DaemonError(
                f"a daemon (pid {other['pid']}) already serves {self.node.path} at "
                f"{other.get('url')}: stop it first, or use that one")
        can_listen(self.host, self.port)
        where = self.node.ensure(DAEMON_DIR)
        token = new_token()
        write_atomic(where / "token", token.encode(), mode=0o600)
        app = create_app(self.node, self.daemon, token)
        config = uvicorn.Config(app, host=self.host, port=self.port, log_config=None,
                                access_log=self.access_log, lifespan="on", loop="asyncio",
                                timeout_graceful_shutdown=2)
        server = self._server = uvicorn.Server(config)
        thread = self._thread = threading.Thread(target=server.run, name="kachery-http",
                                                 daemon=True)
        thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self._forget_files()
                raise KacheryError(f"the HTTP API could not listen on {self.host}:{self.port}: "
                                   "is the port taken? Choose another with --listen")
            time.sleep(0.01)
        self.port = server.servers[0].sockets[0].getsockname()[1]
        info = {"host": self.host, "port": self.port, "url": self.url, "pid": os.getpid(),
                "pid_start": my_start_time(), "host_id": HOST}
        write_atomic(where / "http.json", json.dumps(info).encode())
        log.info("HTTP API listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving and remove ``http.json`` and ``token``."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(10)
        self._forget_files()

    def _forget_files(self) -> None:
        where = daemon_dir(self.node)
        try:
            info = json.loads((where / "http.json").read_text())
        except (OSError, ValueError):
            info = None
        if isinstance(info, dict) and info.get("pid") == os.getpid():
            (where / "http.json").unlink(missing_ok=True)
        if info is None or info.get("pid") == os.getpid():
            (where / "token").unlink(missing_ok=True)

    def __enter__(self) -> HttpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def stop_signals() -> Iterator[threading.Event]:
    """An event set by SIGINT or SIGTERM while the block runs (the daemon then stops and
    exits 0); the handlers are in place from the start of the block, so a signal that
    comes early is not lost."""
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT,
                                                                      signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
