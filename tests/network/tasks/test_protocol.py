"""The task exchange's message helpers: batch bodies and grouping within the size limit."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kachery_tasks.network.tasks import protocol


@given(st.lists(st.text(max_size=300), max_size=50), st.integers(min_value=1, max_value=2000))
def test_groups_keep_every_item_in_order_within_the_limit(texts, limit):
    groups = protocol.within_limit(texts, len, limit)
    assert [t for g in groups for t in g] == texts
    assert all(groups)  # no empty group; no items, no groups
    for group in groups:
        assert len(group) == 1 or sum(map(len, group)) <= limit
    for a, b in pairwise(groups):  # a group ends only when the next item did not fit
        assert sum(map(len, a)) + len(b[0]) > limit


def test_a_batch_body_holds_one_to_batch_max_calls_and_a_known_mode():
    body = protocol.batch_body("p", ["{}", "{}"], "force")
    assert body == {"provider": "p", "calls": ["{}", "{}"], "mode": "force"}
    for calls, mode in (([], "call"), (["{}"] * (protocol.BATCH_MAX + 1), "call"),
                        (["{}"], "sometimes")):
        with pytest.raises(ValueError):
            protocol.batch_body("p", calls, mode)
