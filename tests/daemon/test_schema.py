"""Every operation of the OpenAPI spec, with generated input (schemathesis): never a 500,
and every answer matches what the spec says (status codes, content types, bodies)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from kachery_tasks.daemon.api import create_app
from tests.daemon.conftest import AUTH, TOKEN, FakeDaemon

# /api/events never ends (it is a live stream); test_events.py covers it.
ENDLESS = "/api/events"

# A request the schema allows may still name something that is not valid (a bucket URL
# that is neither gs:// nor file://, a range past the end): the API answers those 400
# (or 416) with the reason, rather than 422, which means "not what the API takes".
CONFIG = {"checks": {"positive_data_acceptance": {"expected-statuses": [
    "2xx", "400", "401", "403", "404", "409", "410", "416"]}}}


@pytest.fixture
def api_schema(node):
    from kachery_tasks.network.tasks import Provided
    from tests.daemon import requestable_tasks

    requestable_tasks.GATE.set()  # POST /api/tasks/request may name any of its tasks
    daemon = FakeDaemon(node)
    daemon.provided = Provided.from_modules([requestable_tasks.__name__])
    app = create_app(node, daemon, TOKEN)
    config = schemathesis.config.SchemathesisConfig.from_dict(CONFIG)
    return schemathesis.openapi.from_asgi("/openapi.json", app, config=config)


schema = schemathesis.pytest.from_fixture("api_schema").exclude(path=ENDLESS)


@schema.parametrize()
@settings(max_examples=12, deadline=None,  # per operation: 30 operations, 10 min suite budget
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
def test_every_operation(case):
    # Send the real token, except when schemathesis made the Authorization header itself
    # invalid on purpose: then that invalid header must be what the API sees (and rejects).
    negative_header = (case.meta is not None and case.meta.generation.mode.is_negative
                       and "Authorization" in (case.headers or {}))
    case.call_and_validate(headers=None if negative_header else AUTH)


def test_the_spec_names_every_route(node):
    spec = create_app(node, None, TOKEN).openapi()
    paths = set(spec["paths"])
    assert {"/api/files", "/api/files/{sha256}", "/api/mutables/{key}", "/api/feeds",
            "/api/feeds/{feed_id}/{subfeed}/events", "/api/tasks/{task_id}/graph",
            "/api/tasks/request",
            "/api/channels/{name}/members/{node}", "/api/requests", "/api/login",
            "/api/events"} <= paths
    assert set(spec["components"]["securitySchemes"]) == {"token", "hub-session"}
