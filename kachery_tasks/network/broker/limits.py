"""The embedded broker's limits and timings, in one place."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import InvalidValueError

# The SDK's websocket client refuses frames above 1 MiB; a message must fit in one.
_SDK_FRAME_LIMIT = 1 << 20


@dataclass(frozen=True)
class Limits:
    """What one broker accepts and keeps.

    * ``max_message_bytes``: largest message (its JSON) a client may publish or
      enter with; larger ones are nacked with error 40009 (Ably's default, and
      the SDK's own client-side check, is 64 KiB).
    * ``max_frame_bytes``: largest websocket frame read from a client; a larger
      frame closes that connection (code 1009) before it is buffered.
    * ``max_outbox_bytes``: frames waiting for one slow client; beyond it the
      broker drops the connection (the client reconnects and is told it lost
      messages: error 80020), so a slow subscriber cannot grow the broker.
    * ``history_messages`` / ``history_bytes``: recent messages kept per channel
      for clients that resume a dropped connection; ``connection_ttl``: how long
      (seconds) a dropped connection and the history stay resumable.
    * ``presence_timeout``: seconds after a connection drops before its presence
      members leave (a client that resumes sooner keeps them).
    * ``max_request_line``: longest HTTP request line of a websocket handshake
      (bytes). The SDK sends its token in the URL; a channel's admission token
      carries the channel config, so it can be tens of KiB (websockets' own
      default is 8 KiB). A longer line is refused by websockets (HTTP 400).
    * ``max_idle_interval``: seconds; the broker sends a HEARTBEAT to a
      connection that has received nothing for half of it, and the SDK gives
      up on a connection that stays silent longer than it (plus its request
      timeout).
    """

    max_message_bytes: int = 64 * 1024
    max_frame_bytes: int = 1 << 20
    max_outbox_bytes: int = 16 << 20
    history_messages: int = 10_000
    history_bytes: int = 16 << 20
    connection_ttl: float = 120.0
    presence_timeout: float = 15.0
    max_idle_interval: float = 15.0
    max_request_line: int = 128 * 1024

    def __post_init__(self) -> None:
        if not 0 < self.max_message_bytes <= _SDK_FRAME_LIMIT // 2:
            raise InvalidValueError(
                f"max_message_bytes must be between 1 and {_SDK_FRAME_LIMIT // 2}: "
                "a message must fit in one frame the SDK accepts"
            )
        if self.max_frame_bytes < self.max_message_bytes:
            raise InvalidValueError("max_frame_bytes must be at least max_message_bytes")
        for name in ("max_outbox_bytes", "history_messages", "history_bytes",
                     "max_request_line"):
            if getattr(self, name) < 1:
                raise InvalidValueError(f"{name} must be positive")
        for name in ("connection_ttl", "presence_timeout", "max_idle_interval"):
            if getattr(self, name) <= 0:
                raise InvalidValueError(f"{name} must be a positive number of seconds")
