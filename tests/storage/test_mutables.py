import multiprocessing as mp

import pytest

from kachery_tasks.errors import InvalidValueError
from kachery_tasks.nodes import current_node
from kachery_tasks.storage.mutables import Mutables


def test_set_get_delete_list():
    m = current_node().mutables
    m.set("alias/latest", "sha256://" + "a" * 64)
    m.set("alias/old", {"n": [1, 2]})
    m.set("Alias/other", 3)
    assert m.get("alias/latest") == "sha256://" + "a" * 64
    assert m.get("alias/old") == {"n": [1, 2]}
    assert m.list("alias/") == {"alias/latest": "sha256://" + "a" * 64, "alias/old": {"n": [1, 2]}}
    assert m.list("alias_") == {}
    assert m.delete("alias/old") and not m.delete("alias/old")
    assert m.get("alias/old") is None and m.get("alias/old", 5) == 5


@pytest.mark.parametrize("key,value", [("", 1), (None, 1), ("k", {1, 2}), ("k", float("nan"))])
def test_bad_keys_and_values(key, value):
    with pytest.raises(InvalidValueError):
        current_node().mutables.set(key, value)


def test_keys_must_be_unicode_text_and_values_not_too_deep():
    m = current_node().mutables
    for call in (lambda: m.set("\udcff", 1), lambda: m.get("a\udc80"),
                 lambda: m.delete("\ud800"), lambda: m.list("\udcff")):
        with pytest.raises(InvalidValueError, match="valid Unicode text"):
            call()
    deep: list = []  # nests 1
    for _ in range(100):
        deep = [deep]  # nests 101 at the end
    with pytest.raises(InvalidValueError, match="more than 100 levels deep"):
        m.set("k", deep)
    assert m.get("k") is None
    m.set("k", deep[0])
    assert m.get("k") == deep[0]


def _writer(path, start):
    from pathlib import Path

    from kachery_tasks.config import NodeDir

    m = Mutables(NodeDir(Path(path)))
    for i in range(start, start + 200):
        m.set(f"k{i}", i)


def test_several_processes_lose_nothing():
    node = current_node().dir
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(node.path), i * 200)) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    values = current_node().mutables.list("k")
    assert len(values) == 600 and values["k599"] == 599
