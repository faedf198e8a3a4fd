"""Keep tokens and API keys out of log output.

The ``ably`` SDK logs the websocket URL it connects to (``...?accessToken=``
or ``?key=`` in the query) and every frame it sends (AUTH frames carry a
token); the ``websockets`` library logs request lines at debug level. A
:class:`RedactSecrets` filter on those loggers replaces the secret part of
such text with ``<redacted>`` before any handler sees it, whatever level the
application enables.
"""

from __future__ import annotations

import logging
import re

_PATTERNS = (
    re.compile(r"(\b(?:accessToken|access_token|key)=)[^&\s'\"]+"),
    re.compile(r"""((?:"accessToken"|'accessToken'|"key"|'key')\s*:\s*["'])[^"']*"""),
    re.compile(r"(\bToken: )\S+"),
    re.compile(r"(\bAuthorization: (?:Basic|Bearer) )\S+", re.IGNORECASE),
)

# Loggers that may print a token or key they were given.
SECRET_LOGGERS = (
    "ably",
    "ably.transport.websockettransport",
    "ably.realtime.connectionmanager",
    "ably.rest.auth",
    "ably.http.http",
    "websockets.client",
)


def redact(text: str) -> str:
    """``text`` with every token, key or credential value replaced by ``<redacted>``."""
    for pattern in _PATTERNS:
        text = pattern.sub(r"\1<redacted>", text)
    return text


class RedactSecrets(logging.Filter):
    """A logging filter that redacts credentials in the message and its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # a malformed record: leave it to the handler
            return True
        cleaned = redact(text)
        if cleaned != text:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


_FILTER = RedactSecrets()


def redact_logger(name: str) -> logging.Logger:
    """The logger ``name``, with the redacting filter installed (once)."""
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger


def redact_sdk_loggers() -> None:
    """Install the filter on every logger known to print credentials."""
    for name in SECRET_LOGGERS:
        redact_logger(name)
