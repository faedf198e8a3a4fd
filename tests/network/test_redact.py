"""Tokens and keys never reach log output."""

from __future__ import annotations

import logging
from urllib.parse import urlencode

from hypothesis import given
from hypothesis import strategies as st

from kachery_tasks.network.broker import BrokerThread, Limits
from kachery_tasks.network.pubsub import connect_pubsub
from kachery_tasks.network.redact import RedactSecrets, redact

SECRET = "s3cr3t-T0KEN_abc.def"  # URL-safe: appears as is in a query string


def test_redact_the_forms_the_sdk_and_websockets_log():
    assert redact(f"connect to ws://h:1?clientId=a&accessToken={SECRET}&v=5") == (
        "connect to ws://h:1?clientId=a&accessToken=<redacted>&v=5")
    assert SECRET not in redact(f"ws://h?key={SECRET}")
    assert SECRET not in redact(f'sending {{"action": 17, "auth": {{"accessToken": "{SECRET}"}}}}')
    assert SECRET not in redact(f"{{'accessToken': '{SECRET}'}}")
    assert SECRET not in redact(f"Token: {SECRET}")
    assert SECRET not in redact(f"Authorization: Basic {SECRET}")
    assert redact("nothing secret here: clientId=alice") == "nothing secret here: clientId=alice"


@given(st.text(min_size=1), st.sampled_from(["accessToken", "key"]))
def test_any_token_is_hidden_in_a_url_the_sdk_builds(token, name):
    query = urlencode({"clientId": "a", name: token, "v": "5"})  # as the SDK does
    assert redact(f"ws://h:1?{query}") == f"ws://h:1?clientId=a&{name}=<redacted>&v=5"


def test_the_filter_rewrites_arguments_and_tracebacks():
    record = logging.LogRecord("ably", logging.INFO, __file__, 1, "to %s", (f"x?key={SECRET}",),
                               None)
    assert RedactSecrets().filter(record)
    assert SECRET not in record.getMessage()
    try:
        raise ValueError(f"bad url ws://h?accessToken={SECRET}")
    except ValueError:
        import sys

        record = logging.LogRecord("ably", logging.ERROR, __file__, 1, "failed", None,
                                   sys.exc_info())
    RedactSecrets().filter(record)
    assert SECRET not in record.exc_text


def test_no_token_in_the_logs_of_a_session(caplog):
    """Client (SDK at debug level) and broker both log, and neither shows the token."""
    tokens = []

    def authorize(token: str) -> str:
        tokens.append(token)
        if token != SECRET:
            raise PermissionError("unknown token")
        return "alice"

    with caplog.at_level(logging.DEBUG), BrokerThread(authorize=authorize,
                                                       limits=Limits()) as broker:
        client = connect_pubsub(broker.url, "alice", lambda: SECRET, connect_timeout=5)
        client.publish("room", "m", "x")
        client.close()
        try:
            connect_pubsub(broker.url, "mallory", lambda: SECRET + "x", connect_timeout=5)
        except Exception:
            pass
    text = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert tokens and "connect to ws://" in text  # the SDK did log its URL...
    assert SECRET not in text  # ...without the token
    assert "denied a client" in text
