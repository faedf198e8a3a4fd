"""The ``kachery-tasks tasks`` commands: ls, show, why, forget."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
import task_defs


@pytest.fixture
def history():
    """A small call history: a nested call, a changed argument, a failure."""
    task_defs.total([1, 2])
    task_defs.add(1, 2)
    task_defs.add(1, 3)
    with pytest.raises(ValueError):
        task_defs.fail_until("/nonexistent/marker")
    return {
        "total": task_defs.total.task_id([1, 2]),
        "child": task_defs.add.task_id(1, 1),
        "add13": task_defs.add.task_id(1, 3),
    }


def test_ls_lists_latest_runs(run_cli, history):
    r = run_cli("tasks", "ls")
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert "task_defs.total" in out and "task_defs.fail_until" in out
    assert "error" in out and "success" in out
    r = run_cli("tasks", "ls", "--function", "add", "--json")
    rows = json.loads(r.stdout)
    assert {row["function"] for row in rows} == {"task_defs.add"}
    assert history["add13"] in {row["task_id"] for row in rows}
    assert all(row["status"] == "success" for row in rows)


def test_show_gives_inputs_result_timings_and_edges(run_cli, history):
    r = run_cli("tasks", "show", history["total"][7:19])  # a prefix without 'sha256:'
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert history["total"] in out
    assert "values = [1, 2]" in out
    assert "result:    sha256://" in out and "(json)" in out
    assert "called:" in out and history["child"] in out
    r = run_cli("tasks", "show", history["child"], "--json")
    info = json.loads(r.stdout)
    assert info["called_by"] == [{"task_id": history["total"], "function": "task_defs.total"}]
    run = info["runs"][0]
    assert run["duration"] >= 0 and run["started"] <= run["finished"]


def test_why_names_the_changed_argument(run_cli, history):
    r = run_cli("tasks", "why", "task_defs.add")
    assert r.returncode == 0, r.stderr
    assert "argument 'b' changed: 2 -> 3" in r.stdout.decode()
    r = run_cli("tasks", "why", "add", "--json")
    assert json.loads(r.stdout)["reasons"] == ["argument 'b' changed: 2 -> 3"]


def test_forget_makes_the_next_call_recompute(run_cli, history):
    before = task_defs.calls["add"]
    r = run_cli("tasks", "forget", history["add13"])
    assert r.returncode == 0, r.stderr
    assert f"forgot {history['add13']}" in r.stdout.decode()
    task_defs.add(1, 3)  # this process had it memoised: the CLI's forget reaches it
    assert task_defs.calls["add"] - before == 1


def test_errors_are_one_line(run_cli, history):
    r = run_cli("tasks", "show", "ffffffffff")
    assert r.returncode == 1 and r.stderr.decode().startswith("error: no task with id")
    r = run_cli("tasks", "why", "no_such_function")
    assert r.returncode == 1 and "no outcomes of a function named" in r.stderr.decode()


def test_empty_node_and_help(run_cli):
    r = run_cli("tasks", "ls")
    assert r.returncode == 0 and "no task runs recorded" in r.stdout.decode()
    for sub in ("ls", "show", "why", "forget"):
        r = run_cli("tasks", sub, "--help")
        assert r.returncode == 0 and "example:" in r.stdout.decode()


@pytest.mark.parametrize("limit", ["0", "-1", "1e26", "many", str(2**63), "9" * 5000])
def test_ls_limit_must_be_a_positive_whole_number(limit):
    from tests.cli.inprocess import run_main

    r = run_main("tasks", "ls", "--limit", limit)
    assert r.status == 1
    assert r.stderr.startswith("error: kachery-tasks tasks ls: argument --limit: must be a whole "
                               "number, 1 or more, not ")
    assert r.stderr.count("\n") == 1


def test_ls_limit_up_to_the_largest(history):
    from tests.cli.inprocess import run_main

    every = json.loads(run_main("tasks", "ls", "--json").stdout)
    r = run_main("tasks", "ls", "--limit", str(2**63 - 1), "--json")
    assert r.status == 0 and json.loads(r.stdout) == every and len(every) > 1
    r = run_main("tasks", "ls", "--limit", "1", "--json")
    assert r.status == 0 and len(json.loads(r.stdout)) == 1


def test_show_names_who_asked_a_provider_for_the_task(run_cli, history):
    from kachery_tasks.runtime import cache

    asker = "ab" * 32
    cache.current().records.note_request(history["total"], asker, "bob", "lab", "computed")
    r = run_cli("tasks", "show", history["total"])
    assert r.returncode == 0, r.stderr
    assert f"asked by:  bob ({asker[:16]}...) on channel lab at " in r.stdout.decode()
    assert r.stdout.decode().rstrip().count("asked by:") == 1
    info = json.loads(run_cli("tasks", "show", history["total"], "--json").stdout)
    [asked] = info["asked_by"]
    assert (asked["requester"], asked["label"], asked["channel"], asked["outcome"]) == (
        asker, "bob", "lab", "computed")
    assert info["asked_by"] and not json.loads(
        run_cli("tasks", "show", history["child"], "--json").stdout)["asked_by"]


def test_show_names_the_channel_member_that_computed_an_imported_result(tmp_path, run_cli):
    from kachery_tasks.runtime import cache
    from tests.network.channels.conftest import Lab

    lab = Lab(tmp_path, "ws://127.0.0.1:9")  # no broker needed: only the config is read
    alice, bob = lab.add("alice"), lab.add("bob-the-provider")
    tid = task_defs.add.task_id(40, 2)
    try:
        with alice:
            cache.current().records.import_result(
                tid, "pure", "task_defs.add", "sha256://" + "ab" * 32, "json", bob.id)
    finally:
        lab.close()
    env = {"KACHERY_TASKS_DIR": str(alice.path)}
    r = run_cli("tasks", "show", tid, env=env)
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert f"node {bob.id} (computed by bob-the-provider in channel lab; signed record)" in out
    assert "function:  task_defs.add (pure)" in out
    assert "arguments: not recorded here ('kachery-tasks tasks show' on the node that " in out
    assert "runs:      none on this node (computed by bob-the-provider in channel lab)" in out
    r = run_cli("tasks", "show", tid, "--json", env=env)
    assert json.loads(r.stdout)["signer_label"] == "bob-the-provider in channel lab"
    out = run_cli("tasks", "ls", env=env).stdout.decode()  # no run here: says where to look
    assert out == ("no task runs recorded on this node; 1 outcome(s) computed by other nodes "
                   "are: 'kachery-tasks tasks ls --imported' lists them\n")
    lines = run_cli("tasks", "ls", "--imported", env=env).stdout.decode().splitlines()
    assert lines[0].split() == ["TASK", "ID", "KIND", "STATUS", "FINISHED", "FUNCTION",
                                "(COMPUTED", "BY)"]
    assert lines[1].startswith(f"{tid[:23]} pure   success ")
    assert lines[1].endswith("  task_defs.add  (bob-the-provider in channel lab)")
    [row] = json.loads(run_cli("tasks", "ls", "--imported", "--function", "add", "--json",
                               env=env).stdout)
    assert (row["task_id"], row["node"], row["function"]) == (tid, bob.id, "task_defs.add")
