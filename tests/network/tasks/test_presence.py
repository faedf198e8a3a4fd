"""provides_of: what a member's presence data says it provides (data from other members)."""

from hypothesis import given
from hypothesis import strategies as st

from kachery_tasks.network.tasks import Provided
from kachery_tasks.network.tasks.presence import provides_of, short

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=4),
    max_leaves=20)


def test_a_providers_announcement_reads_back_as_described():
    described = Provided.from_modules(["tests.network.tasks.remote_tasks"]).describe()
    assert provides_of({"label": "x", "daemon": True, "provides": described}) == described
    assert provides_of({"label": "x", "daemon": True}) == []


@given(json_values)
def test_anything_a_member_announces_reads_as_a_list_of_well_formed_entries(data):
    found = provides_of(data)
    assert isinstance(found, list)
    for entry in found:
        assert set(entry) == {"name", "kind", "version", "code_hash"}
        assert isinstance(entry["name"], str)
        assert all(v is None or isinstance(v, str) for v in entry.values())
        short(entry)  # never fails


@given(st.lists(st.dictionaries(st.sampled_from(["name", "kind", "version", "code_hash", "x"]),
                                json_values, max_size=5), max_size=5))
def test_malformed_entries_are_left_out(entries):
    found = provides_of({"provides": entries})
    assert len(found) <= len(entries)
