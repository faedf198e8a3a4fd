"""A TCP proxy that can stop answering: a server that hangs, on demand.

Until :attr:`Proxy.silent` is set it forwards every connection to the target
port. Once it is set, nothing more is forwarded in either direction on any
connection, old or new: connections are accepted and kept open, and no byte
ever comes back (what a stuck server or a dead network path looks like to a
client). With :attr:`Proxy.throttle` the answers trickle (1 KiB at a time,
that many seconds apart): a server slow enough to miss a deadline without
ever going quiet long enough for a request to time out.
"""

from __future__ import annotations

import socket
import threading
import time


class Proxy:
    def __init__(self, target_port: int | None = None) -> None:
        self.target_port = target_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.silent = threading.Event()
        if target_port is None:
            self.silent.set()  # nothing to forward to: a server that never answers
        self.throttle: float | None = None
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self._sockets.append(client)
            if self.target_port is None:
                threading.Thread(target=self._pump, args=(client, None), daemon=True).start()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._sockets.append(upstream)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket | None) -> None:
        try:
            while data := src.recv(65536):
                if self.silent.is_set() or dst is None:
                    continue  # swallowed: the other side waits forever
                if self.throttle and dst is not None and src.getpeername()[1] == self.target_port:
                    for i in range(0, len(data), 1024):
                        time.sleep(self.throttle)
                        dst.sendall(data[i : i + 1024])
                else:
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                if s is not None:
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

    def close(self) -> None:
        self.server.close()
        for s in self._sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass
