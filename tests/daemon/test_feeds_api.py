"""Feeds over HTTP: create, append, read, long poll and server-sent events."""

from __future__ import annotations

import threading

import pytest

from tests.daemon.conftest import api_client, sse_events


@pytest.fixture
def feed(client):
    return client.post("/api/feeds", json={"label": "curation"}).json()


def test_create_append_read(client, feed, node):
    fid = feed["feed_id"]
    assert feed["writable"] and feed["label"] == "curation" and feed["uri"] == f"feed://{fid}"
    one = client.post(f"/api/feeds/{fid}/main/messages", json={"body": {"unit": 3}}).json()
    assert one["messages"][0]["seq"] == 0
    many = client.post(f"/api/feeds/{fid}/main/messages", json={"bodies": [1, 2, 3]}).json()
    assert [m["seq"] for m in many["messages"]] == [1, 2, 3]
    read = client.get(f"/api/feeds/{fid}/main/messages", params={"start": 1, "end": 3}).json()
    assert [m["body"] for m in read["messages"]] == [1, 2] and read["count"] == 4
    assert [m.body for m in node.load_feed(f"feed://{fid}").subfeed("main").read()] \
        == [{"unit": 3}, 1, 2, 3]
    listed = client.get("/api/feeds").json()["feeds"]
    assert [(f["feed_id"], f["subfeeds"]) for f in listed] == [(fid, {"main": 4})]
    assert client.get(f"/api/feeds/{fid}").json()["subfeeds"] == {"main": 4}


def test_append_needs_exactly_one_of_body_or_bodies(client, feed):
    fid = feed["feed_id"]
    for payload in ({}, {"body": 1, "bodies": [2]}):
        r = client.post(f"/api/feeds/{fid}/main/messages", json=payload)
        assert r.status_code == 400 and "either 'body'" in r.json()["error"]
    r = client.post(f"/api/feeds/{fid}/main/messages", json={"body": None})
    assert r.status_code == 200 and r.json()["messages"][0]["body"] is None


def test_errors_are_4xx_with_the_reason(client, feed, node):
    r = client.get("/api/feeds/" + "ab" * 32)
    assert r.status_code == 404 and "error" in r.json()
    r = client.post(f"/api/feeds/{feed['feed_id']}/bad name!/messages", json={"body": 1})
    assert r.status_code == 422 and "subfeed" in r.json()["error"]
    other = node.create_feed()
    node.feeds.key_path(other.id).unlink()  # a feed this node can read but not append to
    r = client.post(f"/api/feeds/{other.id}/main/messages", json={"body": 1})
    assert r.status_code == 403


def test_long_poll_returns_what_is_appended_meanwhile(served, node):
    feed = node.create_feed()
    sub = feed.subfeed("main")
    sub.append("before")
    timer = threading.Timer(0.3, lambda: sub.append("during"))
    timer.start()
    with api_client(served) as c:  # start=1: whether the append lands before or after the
        # request reaches the server (a loaded machine), the answer is the same
        r = c.get(f"/api/feeds/{feed.id}/main/watch", params={"start": 1, "timeout": 20})
    timer.join()
    assert [m["body"] for m in r.json()["messages"]] == ["during"] and r.json()["next"] == 2
    with api_client(served) as c:
        r = c.get(f"/api/feeds/{feed.id}/main/watch", params={"timeout": 0.1})
        assert r.json() == {"messages": [], "next": 2}  # no start: from the end
        r = c.get(f"/api/feeds/{feed.id}/main/watch", params={"start": 0, "timeout": 0})
        assert [m["body"] for m in r.json()["messages"]] == ["before", "during"]
        r = c.get(f"/api/feeds/{feed.id}/main/watch", params={"start": 5, "timeout": 0.1})
        assert r.json() == {"messages": [], "next": 5}


def test_server_sent_events_carry_each_message_as_it_is_appended(served, node):
    feed = node.create_feed()
    sub = feed.subfeed("main")
    sub.append("old")
    got = []
    with api_client(served) as c, c.stream(
            "GET", f"/api/feeds/{feed.id}/main/events", params={"start": 0}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for event, data in sse_events(r):
            got.append((event, data.get("seq"), data.get("body")))
            if event == "hello":
                continue
            if data["body"] == "old":
                threading.Timer(0.1, lambda: sub.append("new")).start()
            if data["body"] == "new":
                break
    assert got == [("hello", None, None), ("message", 0, "old"), ("message", 1, "new")]


def test_last_event_id_resumes_after_it(served, node):
    feed = node.create_feed()
    feed.subfeed("main").append_many(["a", "b", "c"])
    with api_client(served) as c, c.stream(
            "GET", f"/api/feeds/{feed.id}/main/events", headers={"Last-Event-ID": "0"}) as r:
        events = sse_events(r)
        assert next(events) == ("hello", {"next": 1})
        assert next(events)[1]["body"] == "b"

