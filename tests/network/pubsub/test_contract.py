"""The PubSub contract suite against the embedded broker, through the ably SDK adapter."""

from __future__ import annotations

import pytest

from kachery_tasks.network.broker import BrokerThread
from kachery_tasks.network.pubsub import connect_pubsub
from kachery_tasks.testing.pubsub import PubSubContract
from tests.network.conftest import FAST


class TestEmbeddedBroker(PubSubContract):
    @pytest.fixture(autouse=True)
    def _broker(self):
        with BrokerThread() as running:
            self.url = running.url
            yield

    def connect(self, client_id):
        return connect_pubsub(self.url, client_id, **FAST)
