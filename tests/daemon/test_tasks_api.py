"""Task records over HTTP: recent runs, one task with its result and provenance, why."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
import task_defs


@pytest.fixture
def history(node):
    with node:
        task_defs.total([1, 2])
        task_defs.add(1, 3)
        task_defs.add(1, 4)
    return {"total": task_defs.total.task_id([1, 2]), "child": task_defs.add.task_id(1, 1)}


def test_recent_runs(client, history):
    runs = client.get("/api/tasks/runs").json()["runs"]
    assert {r["function"] for r in runs} == {"task_defs.total", "task_defs.add"}
    assert all(r["status"] == "success" for r in runs)
    only = client.get("/api/tasks/runs", params={"function": "total"}).json()["runs"]
    assert [r["task_id"] for r in only] == [history["total"]]


def test_a_task_with_its_inputs_result_and_provenance(client, history):
    t = client.get(f"/api/tasks/{history['total'][7:20]}").json()  # a prefix is enough
    assert t["task_id"] == history["total"]
    assert t["runs"][0]["args"] == {"values": "[1, 2]"}
    assert t["served"]["codec"] == "json" and t["served"]["value"] == 5
    assert t["served_result"].startswith("sha256://")
    assert {c["task_id"] for c in t["called"]} == {history["child"],
                                                  task_defs.add.task_id(2, 1)}
    child = client.get(f"/api/tasks/{history['child']}").json()
    assert child["called_by"] == [{"task_id": history["total"], "function": "task_defs.total"}]
    graph = client.get(f"/api/tasks/{history['child']}/graph").json()
    assert graph["called_by"]["children"][0]["task_id"] == history["total"]
    assert graph["called"]["children"] == []
    down = client.get(f"/api/tasks/{history['total']}/graph", params={"depth": 1}).json()
    assert len(down["called"]["children"]) == 2


def test_why(client, history):
    why = client.get("/api/tasks/why", params={"function": "task_defs.add"}).json()
    assert any("argument 'b' changed" in r for r in why["reasons"]), why


def test_unknown_and_ambiguous_are_4xx(client, history):
    r = client.get("/api/tasks/sha256:ffff")
    assert r.status_code == 404 and "no task with id" in r.json()["error"]
    r = client.get("/api/tasks/sha256:")
    assert r.status_code == 400 and "several tasks" in r.json()["error"]
    r = client.get("/api/tasks/why", params={"function": "nothing"})
    assert r.status_code == 404 and "no runs of a function" in r.json()["error"]


def test_the_call_tree_stops_at_a_cycle_and_at_the_limit():
    from kachery_tasks.runtime.provenance import call_tree

    class Records:
        def __init__(self):
            self.edges = {"a": ["b"], "b": ["a", "c"], "c": []}

        def children(self, t):
            return self.edges[t]

        def function_of(self, t):
            return "f." + t

    tree = call_tree(Records(), "a", depth=5)
    b = tree["children"][0]
    assert b["task_id"] == "b" and b["children"][0] == {
        "task_id": "a", "function": "f.a", "children": [], "cycle": True}
    small = call_tree(Records(), "a", depth=5, limit=2)
    assert small["children"][0].get("truncated") is True
