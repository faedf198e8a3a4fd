"""The contract every :class:`~kachery_tasks.remotes.base.Remote` must pass.

Subclass :class:`RemoteContract` in a test module, name the subclass
``Test...`` and give it a ``remote`` fixture that returns a fresh remote of
the kind under test, one that nothing has used yet; pytest then runs every
``test_`` method below against it::

    import pytest
    from kachery_tasks.remotes.bucket import BucketRemote
    from kachery_tasks.testing.remotes import RemoteContract

    class TestMyRemote(RemoteContract):
        @pytest.fixture
        def remote(self, tmp_path):
            return MyRemote(...)

Each test opens two nodes in temporary directories that share the remote,
one offering and one asking, and checks what the rest of kachery-tasks
relies on (see ``remotes/base.py``): content arrives verified and whole
(large content in chunks), offering again costs nothing, result records are
create-only and found in batches, feeds pushed by one node are pulled
(verified) by the other, and what is absent is reported as absent.
"""

from __future__ import annotations

import os

import pytest

from ..envelopes import seal
from ..errors import ContentNotFoundError
from ..keys import KeyPair
from ..nodes import Node
from ..remotes.base import Remote


class RemoteContract:
    """The behaviour kachery-tasks relies on from a remote; see the module docstring."""

    @pytest.fixture
    def remote(self) -> Remote:
        """A fresh remote of the kind under test (override in the subclass)."""
        raise NotImplementedError(
            f"{type(self).__name__} must define a 'remote' fixture returning a fresh remote"
        )

    @pytest.fixture
    def nodes(self, remote: Remote, tmp_path) -> tuple[Node, Node]:
        """Two nodes sharing ``remote``: the first offers, the second asks."""
        made = []
        for name in ("offering", "asking"):
            path = tmp_path / f"remote-contract-{name}"
            path.mkdir()
            (path / "config.toml").write_text('[store]\nchunk_size = "4KiB"\n')
            made.append(Node(path, [remote]))
        return made[0], made[1]

    # ------------------------------------------------------------- content
    def test_absent_content_is_not_found(self, remote, nodes):
        _, asking = nodes
        with pytest.raises(ContentNotFoundError):
            remote.fetch_content(asking.store, "sha256://" + "0" * 64)
        assert not remote.has_content("0" * 64)

    @pytest.mark.parametrize("size", [100, 3 * 4096 + 17])
    def test_offered_content_arrives_whole_and_verified(self, remote, nodes, size):
        offering, asking = nodes
        data = os.urandom(size)
        uri = offering.store_bytes(data, label="x.dat")
        assert remote.offer_content(offering.store, uri, progress=False) is not None
        assert remote.has_content(uri[9:73])
        path = remote.fetch_content(asking.store, uri, progress=False)
        with open(path, "rb") as f:
            assert f.read() == data
        assert asking.store.has(uri)

    def test_offering_again_sends_nothing(self, remote, nodes):
        offering, _ = nodes
        uri = offering.store_bytes(os.urandom(2 * 4096 + 1))
        remote.offer_content(offering.store, uri, progress=False)
        again = remote.offer_content(offering.store, uri, progress=False)
        assert again.uploaded_bytes == 0 and again.objects_written == 0

    # ------------------------------------------------------------- results
    def test_result_records_are_create_only_and_found_in_batches(self, remote):
        key = KeyPair.generate()
        ids = [f"sha256:{i:064x}" for i in range(5)]
        docs = {tid: seal("result-record", {"task_id": tid}, key).to_bytes() for tid in ids[:3]}
        assert remote.get_result_records(ids) == {}
        for tid, doc in docs.items():
            assert remote.put_result_record(tid, doc)
        assert not remote.put_result_record(ids[0], b"a later record")
        assert remote.get_result_records(ids) == docs  # absent ones left out
        assert remote.has_result_record(ids[0]) and not remote.has_result_record(ids[4])

    def test_a_record_the_publisher_finds_replaceable_is_replaced(self, remote):
        tid = f"sha256:{9:064x}"
        assert remote.put_result_record(tid, b"planted")
        assert not remote.put_result_record(tid, b"mine", replaceable=lambda old: False)
        assert remote.get_result_records([tid]) == {tid: b"planted"}
        judged: list[bytes] = []
        assert remote.put_result_record(tid, b"mine",
                                        replaceable=lambda old: judged.append(old) or True)
        assert judged == [b"planted"]
        assert remote.get_result_records([tid]) == {tid: b"mine"}

    def test_a_record_written_while_the_old_one_is_judged_is_judged_in_turn(self, remote):
        tid = f"sha256:{10:064x}"
        assert remote.put_result_record(tid, b"planted")
        judged: list[bytes] = []

        def replaceable(old: bytes) -> bool:
            judged.append(old)
            if old == b"planted" and len(judged) == 1:  # another publisher, meanwhile
                assert remote.put_result_record(tid, b"good", replaceable=lambda o: True)
            return old == b"planted"

        assert not remote.put_result_record(tid, b"mine", replaceable=replaceable)
        assert judged == [b"planted", b"good"]
        assert remote.get_result_records([tid]) == {tid: b"good"}  # never overwritten unseen

    # --------------------------------------------------------------- feeds
    def test_a_pushed_feed_is_pulled_and_verified_by_another_node(self, remote, nodes):
        offering, asking = nodes
        feed = offering.create_feed()
        feed.subfeed("s").append_many([{"n": i} for i in range(3)])
        pushed = remote.push_feed(offering.feeds, feed.id)
        assert pushed.messages == 3
        assert feed.id in remote.feed_ids()
        pulled = remote.pull_feed(asking.feeds, feed.id)
        assert pulled.messages == 3
        copy = asking.load_feed(feed.uri)
        assert [m.body for m in copy.subfeed("s").read()] == [{"n": 0}, {"n": 1}, {"n": 2}]
        assert remote.pull_feed(asking.feeds, feed.id).messages == 0  # nothing new

    def test_the_nodes_walk_finds_content_through_the_remote(self, remote, nodes):
        offering, asking = nodes
        uri = offering.store_bytes(b"walked")
        offering.offer(uri)
        with open(asking.load_file(uri), "rb") as f:
            assert f.read() == b"walked"
