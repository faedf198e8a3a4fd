"""Task records over HTTP: recent runs, one task with its result and provenance, why."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

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
    assert r.status_code == 404 and "no outcomes of a function" in r.json()["error"]


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


# ------------------------------------------------------- POST /api/tasks/request
MODULE = "tests.daemon.requestable_tasks"
ADD = f"{MODULE}.add"


@pytest.fixture
def requestable(daemon):
    from kachery_tasks.network.tasks import Provided
    from tests.daemon import requestable_tasks

    requestable_tasks.RAN.clear()
    requestable_tasks.GATE.clear()
    daemon.provided = Provided.from_modules([MODULE])
    yield requestable_tasks
    requestable_tasks.GATE.set()  # a test that failed midway leaves no thread waiting


def request(client, function, args=None, **options):
    return client.post("/api/tasks/request", json={"function": function, "args": args or {},
                                                   **options})


def test_a_provided_task_runs_here_and_its_cached_result_is_served(client, node, requestable):
    r = request(client, ADD, {"a": 1, "b": 2})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["status"] == "finished" and answer["result"] == 3
    assert answer["task_id"] == requestable.add.task_id(1, 2)
    assert answer["computed_by"] == node.id and answer["error"] is None
    again = request(client, "add", {"a": 1, "b": 2}).json()  # the last part of the name will do
    assert again["result"] == 3 and again["task_id"] == answer["task_id"]
    assert requestable.RAN["add"] == 1  # served from the cache, not run again
    assert request(client, "add", {"a": 1}).json()["result"] == 11  # the default of b


def test_a_function_not_provided_is_404_listing_what_is(client, daemon, requestable):
    r = request(client, "nothing.here", {})
    assert r.status_code == 404
    assert "no task named 'nothing.here'" in r.json()["error"] and ADD in r.json()["error"]
    daemon.provided = None
    r = request(client, ADD, {"a": 1})
    assert r.status_code == 404 and "provides no tasks" in r.json()["error"]


def test_arguments_are_bound_by_name_and_a_bad_one_is_named(client, requestable):
    r = request(client, ADD, {"a": 1, "c": 2})
    assert r.status_code == 400 and "no parameter 'c'" in r.json()["error"]
    r = request(client, ADD, {"b": 2})
    assert r.status_code == 400 and "needs parameter 'a'" in r.json()["error"]
    assert request(client, "power", {"base": 3}).json()["result"] == 9  # positional-only
    assert request(client, "power", {"base": 3, "exp": 3}).json()["result"] == 27
    assert requestable.RAN["add"] == 0


def test_an_array_result_is_answered_as_a_summary_with_its_content_uri(client, requestable):
    answer = request(client, "ramp", {"n": 5}).json()
    result = answer["result"]
    assert result["codec"] == "npy" and result["summary"] == "ndarray(float64, shape=(5,))"
    assert result["uri"].startswith("sha256://")
    sha = result["uri"].removeprefix("sha256://").split("?")[0]
    assert client.get(f"/api/files/{sha}").status_code == 200  # the content is in the store


def test_a_task_that_raises_is_answered_error_and_recorded(client, requestable):
    r = request(client, "fails", {"x": 4})
    assert r.status_code == 200
    answer = r.json()
    assert answer["status"] == "error" and answer["result"] is None
    assert answer["error"] == "ValueError: cannot take 4"
    runs = client.get(f"/api/tasks/{answer['task_id']}").json()["runs"]
    assert runs[0]["status"] == "error"


def test_an_action_answers_its_outcome_and_runs_once(client, requestable):
    first = request(client, "note", {"text": "hi"}).json()
    assert first["result"]["ok"] is True and first["result"]["ran"] is True
    second = request(client, "note", {"text": "hi"}).json()
    assert second["result"]["ran"] is False and requestable.RAN["note"] == 1


def test_provided_tasks_run_on_the_daemons_executor(client, daemon, requestable):
    from kachery_tasks.runtime.executors import LOCAL

    class Recording:
        def __init__(self):
            self.calls = []

        def submit(self, task, args, kwargs, mode="call"):
            self.calls.append((task.name, args, kwargs))
            return LOCAL.submit(task, args, kwargs, mode)

    daemon.executor = Recording()
    assert request(client, ADD, {"a": 5}).json()["result"] == 15
    assert daemon.executor.calls == [(ADD, (), {"a": 5})]


def test_a_long_run_is_202_running_and_shown_when_done(client, requestable):
    r = request(client, "gated", {"x": 2}, wait=0.2)
    assert r.status_code == 202
    answer = r.json()
    assert answer["status"] == "running" and answer["result"] is None
    tid = answer["task_id"]
    rows = client.get("/api/requests").json()["requests"]
    mine = [q for q in rows if q["id"] == answer["request"]]
    assert mine and mine[0]["status"] == "running" and mine[0]["type"] == "request_task"
    assert "gated" in mine[0]["detail"]
    requestable.GATE.set()
    deadline = time.monotonic() + 20
    while client.get(f"/api/tasks/{tid}").json().get("served", {}).get("value") != 6:
        assert time.monotonic() < deadline, "the requested task never finished"
        time.sleep(0.05)
    wait_until_row(client, answer["request"], "finished")


def wait_until_row(client, request_id, status):
    deadline = time.monotonic() + 20
    while True:
        rows = client.get("/api/requests").json()["requests"]
        if any(q["id"] == request_id and q["status"] == status for q in rows):
            return
        assert time.monotonic() < deadline, f"request {request_id} never became {status}"
        time.sleep(0.05)


def test_requests_are_live_events(served, daemon, requestable):
    from tests.daemon.conftest import api_client, sse_events

    with api_client(served) as c, c.stream("GET", "/api/events") as r:
        events = sse_events(r)
        assert next(events)[0] == "hello"
        answer = c.post("/api/tasks/request",
                        json={"function": ADD, "args": {"a": 7}}).json()
        daemon.emit({"type": "presence", "end": True})  # after the request's events
        seen = []
        for name, data in events:
            if name == "request" and data["request"]["id"] == answer["request"]:
                seen.append(data["request"]["status"])
            if name == "presence":
                break
        assert seen == ["running", "finished"]


def test_requests_waiting_for_their_task_leave_the_other_routes_free(served, requestable):
    """More requests wait than the server has threads for blocking routes (40): the node
    info, a blocking route, still answers while they wait."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.daemon.conftest import api_client

    def ask(x):
        with api_client(served, timeout=60) as c:
            return request(c, "gated", {"x": x}, wait=30).status_code

    with ThreadPoolExecutor(48) as pool:
        waiting = [pool.submit(ask, x) for x in range(48)]
        try:
            with api_client(served, timeout=60) as c:
                deadline = time.monotonic() + 20
                while len([q for q in c.get("/api/requests").json()["requests"]
                           if q["status"] == "running"]) < 48:
                    assert time.monotonic() < deadline, "the requests did not all start"
                    time.sleep(0.05)
                started = time.monotonic()
                assert c.get("/api/node", timeout=10).status_code == 200
                assert time.monotonic() - started < 10  # (a guard, not a measurement)
        finally:
            requestable.GATE.set()
        assert [w.result() for w in waiting] == [200] * 48


def test_a_channel_not_joined_is_404(client, requestable):
    r = request(client, ADD, {"a": 1}, channel="nowhere")
    assert r.status_code == 404 and "nowhere" in r.json()["error"]


def test_the_wait_is_bounded(client, requestable):
    assert request(client, ADD, {"a": 1}, wait=-1).status_code == 422
    assert request(client, ADD, {"a": 1}, wait=10_000).status_code == 422


# ----------------------------------------- a real NodeDaemon serving --provide, a channel
@pytest.fixture
def providing_lab(lab):
    """Channel lab: prov's NodeDaemon provides MODULE; req's NodeDaemon provides nothing."""
    from kachery_tasks.network.tasks import Provided
    from tests.network.channels.conftest import wait_for

    for name in ("prov", "req"):
        lab.add(name)
    prov = lab.daemon("prov", provided=Provided.from_modules([MODULE]))
    req = lab.daemon("req")
    session, _ = lab.remote("req").session()
    wait_for(lambda: any(isinstance(d, dict) and d.get("provides")
                         for n, d in session.members() if n == lab.nodes["prov"].id),
             what="prov's presence announcing what it provides")
    return lab, prov, req


def api_of(node, daemon):
    from fastapi.testclient import TestClient

    from kachery_tasks.daemon.api import create_app
    from tests.daemon.conftest import AUTH, TOKEN

    return TestClient(create_app(node, daemon, TOKEN), headers=AUTH)


def test_a_real_daemon_runs_what_it_provides(providing_lab):
    lab, prov, _ = providing_lab
    with api_of(lab.nodes["prov"], prov) as c:
        answer = request(c, ADD, {"a": 20, "b": 1}).json()
        assert answer["status"] == "finished" and answer["result"] == 21
        assert answer["computed_by"] == lab.nodes["prov"].id


def test_a_channel_request_is_computed_by_a_provider(providing_lab):
    lab, _, req = providing_lab
    with api_of(lab.nodes["req"], req) as c:
        r = request(c, ADD, {"a": 30}, channel="lab")
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["status"] == "finished" and answer["result"] == 40
        assert answer["computed_by"] == lab.nodes["prov"].id and answer["channel"] == "lab"
        shown = c.get(f"/api/tasks/{answer['task_id']}").json()  # recorded here as prov's
        assert shown["served"]["node"] == lab.nodes["prov"].id
        failed = request(c, "tests.daemon.requestable_tasks.fails", {"x": 1},
                         channel="lab").json()
        assert failed["status"] == "error" and "cannot take 1" in failed["error"]
        assert failed["computed_by"] == lab.nodes["prov"].id  # where it raised
        r = request(c, "tests.network.tasks.remote_tasks.square", {"x": 2}, channel="lab")
        assert r.status_code == 503 and "no provider of" in r.json()["error"]


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                           max_leaves=5)


@given(st.dictionaries(st.sampled_from(["a", "b", "base", "exp", "x", ""]), json_values,
                       max_size=4), st.sampled_from(["add", "power"]))
def test_binding_takes_exactly_the_signatures_parameters(args, name):
    from kachery_tasks.daemon.requested import bind
    from kachery_tasks.errors import InvalidValueError
    from tests.daemon import requestable_tasks

    task = getattr(requestable_tasks, name)
    params = task.signature.parameters
    required = {n for n, p in params.items() if p.default is p.empty}
    try:
        positional, keyword = bind(task, args)
    except InvalidValueError as e:
        bad = (set(args) - set(params)) | (required - set(args))
        assert any(f"parameter {n!r}" in str(e) for n in bad)
        return
    assert set(args) <= set(params) and required <= set(args)
    bound = task.signature.bind(*positional, **keyword)
    bound.apply_defaults()
    assert {n: bound.arguments[n] for n in args} == args


def test_imported_results_are_listed_with_who_computed_them(tmp_path):
    from fastapi.testclient import TestClient

    from kachery_tasks.daemon.api import create_app
    from kachery_tasks.runtime import cache
    from tests.daemon.conftest import AUTH, TOKEN, FakeDaemon
    from tests.network.channels.conftest import Lab

    lab = Lab(tmp_path, "ws://127.0.0.1:9")  # no broker needed: only the config is read
    alice, bob = lab.add("alice"), lab.add("bob-the-provider")
    stranger = "cd" * 32
    try:
        with alice:
            records = cache.current().records
            task_defs.add(1, 1)  # a run of its own: not listed
            records.import_result(task_defs.add.task_id(40, 2), "pure", "task_defs.add",
                                  "sha256://" + "ab" * 32, "json", bob.id)
            records.import_result(task_defs.total.task_id([7]), "pure", "task_defs.total",
                                  "sha256://" + "ef" * 32, "json", stranger)
        with TestClient(create_app(alice, FakeDaemon(alice), TOKEN), headers=AUTH) as client:
            got = client.get("/api/tasks/imported").json()["results"]
            only = client.get("/api/tasks/imported", params={"function": "add"}).json()
    finally:
        lab.close()
    by_id = {r["task_id"]: r for r in got}
    assert set(by_id) == {task_defs.add.task_id(40, 2), task_defs.total.task_id([7])}
    bobs = by_id[task_defs.add.task_id(40, 2)]
    assert (bobs["node"], bobs["computed_by"]) == (bob.id, "bob-the-provider in channel lab")
    assert by_id[task_defs.total.task_id([7])]["computed_by"] is None  # not a member
    assert [r["task_id"] for r in only["results"]] == [task_defs.add.task_id(40, 2)]
