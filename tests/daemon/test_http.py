"""Serving the API: where it listens, the files that say so, one daemon per node, node start."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kachery_tasks.daemon.http import HttpServer, parse_listen, running_api
from kachery_tasks.errors import DaemonError, InvalidValueError, KacheryError
from kachery_tasks.processes import HOST, my_start_time


@pytest.mark.parametrize(("text", "expected"), [
    ("0.0.0.0", ("0.0.0.0", 0)), ("0.0.0.0:7660", ("0.0.0.0", 7660)),
    (":7660", ("127.0.0.1", 7660)), ("[::]:80", ("::", 80)), ("[::1]", ("::1", 0)),
    ("lab-server.local:8000", ("lab-server.local", 8000)),
])
def test_listen(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["host:port", "host:70000", "a b:1", "[::1", "[::1]x",
                                  "http://x:1", "host:-1"])
def test_bad_listen(text):
    with pytest.raises(InvalidValueError, match="--listen"):
        parse_listen(text)


@given(st.text(max_size=30))
def test_listen_parses_or_refuses_cleanly(text):
    try:
        host, port = parse_listen(text)
    except InvalidValueError:
        return
    assert host and 0 <= port <= 65535


@given(st.from_regex(r"[a-z0-9.-]{1,20}", fullmatch=True), st.integers(0, 65535))
def test_listen_round_trips(host, port):
    assert parse_listen(f"{host}:{port}") == (host, port)


def test_the_server_says_where_it_is_and_cleans_up(node, daemon):
    with HttpServer(node, daemon) as server:
        info = json.loads((node.path / "daemon" / "http.json").read_text())
        assert info == {"host": "127.0.0.1", "port": server.port, "url": server.url,
                        "pid": os.getpid(), "pid_start": my_start_time(), "host_id": HOST}
        assert running_api(node) == info and server.port > 0
        assert httpx.get(server.url + "/openapi.json").status_code == 200
    assert not (node.path / "daemon" / "http.json").exists()
    assert running_api(node) is None


@pytest.mark.parametrize("change", [{"pid_start": "0"}, {"host_id": "another-machine"}])
def test_an_http_json_left_by_a_crash_is_not_taken_for_a_running_daemon(node, change):
    """After a kill -9 the file stays; its pid may now be another process (here this one,
    started at another time), or the file may be another machine's: not served here."""
    where = node.path / "daemon"
    where.mkdir(exist_ok=True)
    info = {"host": "127.0.0.1", "port": 1, "url": "http://127.0.0.1:1", "pid": os.getpid(),
            "pid_start": my_start_time(), "host_id": HOST}
    (where / "http.json").write_text(json.dumps(info))
    assert running_api(node) == info  # the writer itself is alive
    (where / "http.json").write_text(json.dumps({**info, **change}))
    assert running_api(node) is None
    with HttpServer(node) as server:  # and it does not stop a new start
        assert running_api(node)["port"] == server.port


def test_one_daemon_per_node(node, tmp_path):
    env = {**os.environ, "KACHERY_TASKS_DIR": str(node.path)}
    proc = subprocess.Popen([sys.executable, "-m", "kachery_tasks", "node", "start"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 30
        while running_api(node) is None:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        token = (node.path / "daemon" / "token").read_text()
        with pytest.raises(DaemonError, match="already serves"):
            HttpServer(node).start()
        assert (node.path / "daemon" / "token").read_text() == token  # left alone
        again = subprocess.run([sys.executable, "-m", "kachery_tasks", "node", "start"],
                               env=env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 1 and "already serves" in again.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0


@pytest.mark.parametrize("host, why", [
    ("999.1.1.1", "'999.1.1.1' is neither an IP address nor a name that resolves"),
    ("192.0.2.1", "the address is not one of this machine's"),  # TEST-NET-1
])
def test_an_address_it_cannot_listen_on_says_why(node, host, why):
    with pytest.raises(DaemonError) as e, HttpServer(node, listen=f"{host}:7660"):
        pass
    assert str(e.value).startswith(f"the HTTP API cannot listen on {host}:7660: {why}")
    assert not (node.path / "daemon" / "token").exists()  # nothing was started


def test_a_port_taken_says_so(node):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(DaemonError, match="the port is taken"), \
                HttpServer(node, listen=f"127.0.0.1:{port}"):
            pass


def test_listening_on_the_network_warns_about_tls(tmp_path):
    env = {**os.environ, "KACHERY_TASKS_DIR": str(tmp_path / "n")}
    proc = subprocess.Popen([sys.executable, "-m", "kachery_tasks", "node", "start",
                             "--listen", "0.0.0.0:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        line = proc.stdout.readline()
        assert "running" in line
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert "open to the network" in err and "TLS" in err
    assert proc.returncode == 0


def test_node_url_without_a_daemon_says_how_to_start_one(run_cli):
    r = run_cli("node", "url")
    assert r.returncode == 1 and b"kachery-tasks node start" in r.stderr
    r = run_cli("node", "info")
    assert b"HTTP API:       not running" in r.stdout


def test_without_the_daemon_extra_the_error_says_what_to_install(node, monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if it were not installed
    with pytest.raises(KacheryError, match=r"uvicorn is missing.*kachery-tasks\[daemon\]"):
        HttpServer(node).start()
    assert running_api(node) is None
