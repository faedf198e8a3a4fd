"""LeftJournal: the lines of left claims in a node's directory."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from kachery_tasks.network.tasks.left import REWRITE_SLACK, LeftJournal

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
entries = st.dictionaries(st.text(), json_values, max_size=5)


@given(st.lists(entries, max_size=8), st.lists(st.text(), max_size=4))
def test_appended_entries_are_read_back_and_other_lines_skipped(written, garbage):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "sub" / "claims-left.jsonl"
        journal = LeftJournal(path)
        for entry in written:
            journal.append(entry)
        journal.close()
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:  # whatever else a file may hold
            for line in garbage:
                if not line.lstrip().startswith("{"):
                    f.write(line.replace("\n", " ") + "\n")
        assert LeftJournal(path).load() == written


def test_a_journal_is_rewritten_once_deleted_lines_outnumber_the_waiting(tmp_path):
    path = tmp_path / "claims-left.jsonl"
    journal = LeftJournal(path)
    assert journal.load() == [] and not journal.needs_rewrite(0)
    for i in range(REWRITE_SLACK + 3):
        journal.append({"n": i})
    assert not journal.needs_rewrite(2)
    assert journal.needs_rewrite(1)
    journal.rewrite([{"n": 7}])
    assert LeftJournal(path).load() == [{"n": 7}] and journal.lines == 1
    journal.append({"n": 8})  # the file is opened again after a rewrite
    assert LeftJournal(path).load() == [{"n": 7}, {"n": 8}]
    assert journal.needs_rewrite(0)
    journal.rewrite([])
    assert not path.exists() and journal.lines == 0


def test_a_journal_that_cannot_be_written_only_logs(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    journal = LeftJournal(blocker / "claims-left.jsonl")
    journal.append({"n": 1})
    journal.rewrite([{"n": 1}])
    assert journal.load() == []
    assert "cannot note a left claim" in caplog.text
    assert "cannot rewrite the claims this node left" in caplog.text
