"""Every KacheryError has an HTTP status, decided in one table; none is a 500."""

from __future__ import annotations

import inspect

import pytest

from kachery_tasks import errors
from kachery_tasks.daemon.auth import ForeignOrigin, NotAuthenticated
from kachery_tasks.daemon.ranges import RangeNotSatisfiable
from kachery_tasks.daemon.statuses import MEANING, STATUS, NotFound, status_of

ALL_ERRORS = [c for _, c in inspect.getmembers(errors, inspect.isclass)
              if issubclass(c, errors.KacheryError)]


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
def test_every_error_class_has_a_status_that_is_not_500(cls):
    status = status_of(cls.__new__(cls))
    assert 400 <= status < 600 and status != 500


def test_every_error_class_is_listed_so_a_new_one_gets_a_deliberate_status():
    assert set(ALL_ERRORS) <= set(STATUS)


@pytest.mark.parametrize(("error", "status"), [
    (errors.InvalidURIError("x"), 400),
    (errors.ContentNotFoundError("x"), 404),
    (errors.FeedNotFoundError("x"), 404),
    (errors.TaskNotCachedError("x"), 404),
    (errors.ChannelNotFoundError("x"), 404),
    (errors.FeedPermissionError("x"), 403),
    (errors.ChannelPermissionError("x"), 403),
    (errors.StorageFullError("x"), 507),
    (NotAuthenticated("x"), 401),
    (ForeignOrigin("x"), 403),
    (RangeNotSatisfiable("x", 3), 416),
    (NotFound("x"), 404),
])
def test_the_status_of_common_errors(error, status):
    assert status_of(error) == status


def test_an_unlisted_subclass_takes_its_nearest_listed_base():
    class Odd(errors.FeedNotFoundError):
        pass

    class Odder(errors.KacheryError):
        pass

    assert status_of(Odd("x")) == 404 and status_of(Odder("x")) == 400


def test_every_status_an_error_can_get_is_in_the_api_description(client):
    """The description is made from MEANING: a status added to STATUS without a meaning
    would be answered but never described."""
    assert set(STATUS.values()) <= set(MEANING)
    described = set()
    for path in client.get("/openapi.json").json()["paths"].values():
        for operation in path.values():
            described |= {int(code) for code in operation.get("responses", {})}
    assert set(STATUS.values()) <= described
