"""Who gets in: the token as a bearer, or the hub's session cookie; and the token stays secret."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from kachery_tasks.daemon.api import create_app
from kachery_tasks.daemon.auth import COOKIE
from tests.daemon.conftest import AUTH, TOKEN, token_of

PROTECTED = ["/api/node", "/api/files", "/api/feeds", "/api/mutables", "/api/tasks/runs",
             "/api/channels", "/api/requests"]


@pytest.fixture
def anonymous(node, daemon):
    with TestClient(create_app(node, daemon, TOKEN)) as c:
        yield c


@pytest.mark.parametrize("path", PROTECTED)
def test_no_token_is_401(anonymous, path):
    r = anonymous.get(path)
    assert r.status_code == 401 and "not logged in" in r.json()["error"]
    assert r.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("header", [f"Bearer {TOKEN}x", "Bearer ", f"Basic {TOKEN}", TOKEN,
                                    "Bearer " + TOKEN[:-1]])
def test_a_wrong_token_is_401(anonymous, header):
    r = anonymous.get("/api/node", headers={"Authorization": header})
    assert r.status_code == 401 and "wrong API token" in r.json()["error"]


def test_the_right_token_gets_in(anonymous):
    assert anonymous.get("/api/node", headers=AUTH).status_code == 200


def test_the_public_parts_need_no_token(anonymous):
    for path in ("/", "/hub/hub.js", "/openapi.json", "/docs"):
        assert anonymous.get(path).status_code == 200, path


def test_the_hub_logs_in_with_the_token_in_the_body_and_gets_a_cookie(anonymous):
    assert anonymous.post("/api/login", json={"token": "nope"}).status_code == 401
    assert COOKIE not in anonymous.cookies
    r = anonymous.post("/api/login", json={"token": TOKEN})
    assert r.status_code == 200
    session = anonymous.cookies[COOKIE]
    assert session and session != TOKEN
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert anonymous.get("/api/node").status_code == 200
    anonymous.post("/api/logout")
    anonymous.cookies.set(COOKIE, session)  # a session that was ended is no good
    assert anonymous.get("/api/node").status_code == 401


def test_a_made_up_session_is_401(anonymous):
    anonymous.cookies.set(COOKIE, "made-up")
    assert anonymous.get("/api/node").status_code == 401


def test_a_change_from_another_site_with_the_cookie_is_refused(anonymous, node):
    anonymous.post("/api/login", json={"token": TOKEN})
    r = anonymous.put("/api/mutables/k", json=1, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and "not accepted" in r.json()["error"]
    assert node.get_mutable("k") is None
    ok = anonymous.put("/api/mutables/k", json=1, headers={"Origin": "http://testserver"})
    assert ok.status_code == 200 and node.get_mutable("k") == 1


def test_the_token_file_is_private_and_new_at_each_start(node, daemon):
    from kachery_tasks.daemon.http import HttpServer

    with HttpServer(node, daemon) as server:
        path = node.path / "daemon" / "token"
        assert path.stat().st_mode & 0o777 == 0o600
        first = token_of(server)
    assert not path.exists()
    with HttpServer(node, daemon) as server:
        assert token_of(server) != first


def test_the_token_never_appears_in_a_log_line(served, caplog, capfd):
    """Every request a client and the hub make, logged at DEBUG (uvicorn's access log
    included): the token is in none of the lines."""
    token = token_of(served)
    caplog.set_level(logging.DEBUG)
    with httpx.Client(base_url=served.url, timeout=10) as c:
        c.get("/api/node", headers={"Authorization": f"Bearer {token}"})
        c.get("/api/node", headers={"Authorization": f"Bearer {token}wrong"})
        c.post("/api/login", json={"token": token})
        c.get("/api/files")
        c.post("/api/login", json={"token": token + "x"})
        c.get("/")
    assert any("/api/node" in r.getMessage() for r in caplog.records), "no access log captured"
    out, err = capfd.readouterr()
    for text in [r.getMessage() for r in caplog.records] + [caplog.text, out, err]:
        assert token not in text


def test_node_start_prints_no_token(tmp_path):
    env = {**os.environ, "KACHERY_TASKS_DIR": str(tmp_path / "n")}
    proc = subprocess.Popen([sys.executable, "-m", "kachery_tasks", "node", "start"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 30
        token_path = tmp_path / "n" / "daemon" / "http.json"
        while not token_path.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        token = (tmp_path / "n" / "daemon" / "token").read_text()
        url = subprocess.run([sys.executable, "-m", "kachery_tasks", "node", "url"], env=env,
                             capture_output=True, text=True, check=True).stdout.strip()
        httpx.get(url + "/api/node", headers={"Authorization": f"Bearer {token}"})
        login = subprocess.run([sys.executable, "-m", "kachery_tasks", "node", "url", "--login"],
                               env=env, capture_output=True, text=True, check=True).stdout
        assert login.strip() == f"{url}/#token={token}"  # asked for: the fragment holds it
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert token not in out.decode() + err.decode()
    assert "GET /api/node" in err.decode()  # the access log went to stderr, token-free
    assert url in out.decode() and token not in url
