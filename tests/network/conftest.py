"""Fixtures for pub/sub tests: an embedded broker on a free port, and clients of it."""

from __future__ import annotations

import pytest

from kachery_tasks.network.broker import BrokerThread, Limits
from kachery_tasks.network.pubsub import connect_pubsub

# Quick timings, so reconnects and timeouts happen within a test's patience.
FAST = {"request_timeout": 2.0, "connect_timeout": 5.0, "retry_interval": 0.2}


@pytest.fixture
def broker():
    """A broker in a background thread, with default limits."""
    with BrokerThread() as running:
        yield running


@pytest.fixture
def make_broker():
    """``make_broker(limits=..., authorize=...)`` -> a started BrokerThread (stopped after)."""
    started = []

    def make(**kwargs) -> BrokerThread:
        running = BrokerThread(**kwargs).start()
        started.append(running)
        return running

    yield make
    for running in started:
        running.stop()


@pytest.fixture
def connect():
    """``connect(url, client_id, **options)`` -> a connected client, closed after the test."""
    opened = []

    def make(url: str, client_id: str | None = None, token_provider=None, **options):
        client = connect_pubsub(url, client_id, token_provider, **{**FAST, **options})
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.close()


def quick_limits(**overrides) -> Limits:
    """Limits with short timings for tests."""
    return Limits(**{"presence_timeout": 1.0, "connection_ttl": 10.0, **overrides})


@pytest.fixture
def proxy_to():
    """``proxy_to(url)`` -> a started Proxy in front of ``url`` (stopped after the test)."""
    from tests.network.proxy import Proxy

    started = []

    def make(url: str) -> Proxy:
        proxy = Proxy(url).start()
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.stop()
