"""A bare client of the broker's protocol, for tests that look at single frames."""

from __future__ import annotations

import asyncio
import json
from typing import Any, ClassVar
from urllib.parse import urlencode

from kachery_tasks.network.broker.protocol import Action


class RawClient:
    """One websocket to the broker; frames are dicts. ``connected`` is the first frame.

    ``RawClient.opened`` lists every client opened, for :func:`close_all`.
    """

    opened: ClassVar[list[Any]] = []

    def __init__(self, ws: Any, connected: dict) -> None:
        self.ws = ws
        self.connected = connected
        self.serial = 0
        self.backlog: list[dict] = []  # frames skipped by expect(), returned first by recv()

    @classmethod
    async def open(cls, url: str, **params: str) -> RawClient:
        from websockets.asyncio.client import connect

        query = urlencode({"v": "5", **params})
        ws = await connect(f"{url}/?{query}", compression=None, max_size=None)
        cls.opened.append(ws)
        first = json.loads(await asyncio.wait_for(ws.recv(), 5))
        return cls(ws, first)

    @property
    def connection_id(self) -> str:
        return self.connected["connectionId"]

    @property
    def key(self) -> str:
        return self.connected["connectionDetails"]["connectionKey"]

    async def send(self, frame: dict) -> None:
        await self.ws.send(json.dumps(frame))

    async def recv(self, timeout: float = 5.0) -> dict:
        if self.backlog:
            return self.backlog.pop(0)
        return json.loads(await asyncio.wait_for(self.ws.recv(), timeout))

    async def expect(self, action: int, timeout: float = 5.0) -> dict:
        """The next frame with ``action``; other frames (not heartbeats) stay for recv()."""
        for i, frame in enumerate(self.backlog):
            if frame["action"] == action:
                return self.backlog.pop(i)
        while True:
            frame = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
            if frame["action"] == action:
                return frame
            if frame["action"] != Action.HEARTBEAT:
                self.backlog.append(frame)

    async def nothing(self, seconds: float = 0.3) -> None:
        """Assert that no frame other than a heartbeat is waiting or arrives within ``seconds``."""
        assert not self.backlog, self.backlog
        try:
            while True:
                frame = await self.recv(seconds)
                assert frame["action"] == Action.HEARTBEAT, frame
        except TimeoutError:
            return

    async def attach(self, channel: str, **extra: Any) -> dict:
        await self.send({"action": Action.ATTACH, "channel": channel, **extra})
        return await self.expect(Action.ATTACHED)

    async def publish(self, channel: str, *messages: dict, wait: bool = True) -> int:
        """Send a MESSAGE frame; returns its msgSerial (after its ACK when ``wait``)."""
        serial = self.serial
        self.serial += 1
        await self.send({"action": Action.MESSAGE, "channel": channel, "msgSerial": serial,
                         "messages": list(messages)})
        if wait:
            ack = await self.expect(Action.ACK)
            assert ack["msgSerial"] <= serial < ack["msgSerial"] + ack["count"], ack
        return serial

    async def messages(self, n: int, timeout: float = 5.0) -> list[dict]:
        """The next ``n`` messages (from MESSAGE frames), ignoring other frames."""
        got: list[dict] = []
        while len(got) < n:
            frame = await self.recv(timeout)
            if frame["action"] == Action.MESSAGE:
                got.extend(frame["messages"])
        return got

    async def close(self) -> None:
        await self.ws.close()


async def close_all() -> None:
    """Close every websocket RawClient opened (so the broker need not time them out)."""
    while RawClient.opened:
        ws = RawClient.opened.pop()
        try:
            await asyncio.wait_for(ws.close(), 1)
        except Exception:
            ws.transport.abort()
