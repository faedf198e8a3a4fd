"""The `kachery-tasks feed ...` commands, run as a user would run them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

ACTIONS = ["create", "append", "read", "verify", "export", "import", "ls", "info", "snapshot"]


def _out(result) -> str:
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


@pytest.fixture
def feed_uri(run_cli) -> str:
    uri = _out(run_cli("feed", "create", "curation")).strip()
    assert uri.startswith("feed://") and len(uri) == 7 + 64
    return uri


def test_create_append_read_verify(run_cli, feed_uri):
    sub = f"{feed_uri}/unit-labels"
    assert _out(run_cli("feed", "append", sub, '{"unit": 3, "label": "noise"}')) == "0\n"
    assert _out(run_cli("feed", "append", sub, '{"unit": 4, "label": "good"}')) == "1\n"
    lines = [json.loads(x) for x in _out(run_cli("feed", "read", sub)).splitlines()]
    assert [(m["seq"], m["body"]) for m in lines] == [
        (0, {"unit": 3, "label": "noise"}),
        (1, {"unit": 4, "label": "good"}),
    ]
    assert isinstance(lines[0]["time"], float)
    assert _out(run_cli("feed", "read", sub, "--start", "1", "--raw")).count('"signature"') == 1
    out = _out(run_cli("feed", "verify", feed_uri))
    assert "unit-labels: 2 messages ok" in out and "verified 2 messages" in out
    assert "verified 2 messages" in _out(run_cli("feed", "verify", sub, "--chain"))


def test_append_lines_from_stdin(run_cli, feed_uri):
    out = _out(run_cli("feed", "append", feed_uri, "-", "--lines", input=b'1\n\n"two"\n[3]\n'))
    assert out.strip() == "appended seq 0..2"
    lines = _out(run_cli("feed", "read", feed_uri)).splitlines()
    assert [json.loads(x)["body"] for x in lines] == [1, "two", [3]]


def test_export_import_into_another_node(run_cli, feed_uri, tmp_path):
    sub = f"{feed_uri}/unit-labels"
    _out(run_cli("feed", "append", sub, '{"unit": 3}'))
    _out(run_cli("feed", "append", f"{feed_uri}/notes", '"hello"'))
    exported = run_cli("feed", "export", feed_uri)
    assert exported.returncode == 0 and b"exported 2 messages" in exported.stderr
    path = tmp_path / "feed.jsonl"
    path.write_bytes(exported.stdout)
    other = {"KACHERY_TASKS_DIR": str(tmp_path / "other")}
    out = _out(run_cli("feed", "import", str(path), env=other))
    assert "imported 2 new messages (0 already present) into 1 feed" in out
    out = _out(run_cli("feed", "import", "-", input=exported.stdout, env=other))
    assert "imported 0 new messages (2 already present)" in out
    assert "read-only" in _out(run_cli("feed", "ls", env=other))
    info = json.loads(_out(run_cli("feed", "info", feed_uri, "--json", env=other)))
    assert info["subfeeds"] == {"notes": 1, "unit-labels": 1} and not info["writable"]
    refused = run_cli("feed", "append", sub, "1", env=other)
    assert refused.returncode == 1
    assert b"error:" in refused.stderr and b"no private key" in refused.stderr
    assert _out(run_cli("feed", "export", sub, "-o", str(tmp_path / "s.jsonl"), env=other)) == ""
    assert (tmp_path / "s.jsonl").read_bytes() == exported.stdout.splitlines(True)[1]


def test_import_of_a_tampered_file_fails_with_the_seq(run_cli, feed_uri, tmp_path):
    _out(run_cli("feed", "append", feed_uri, "-", "--lines", input=b"1\n2\n3\n"))
    lines = run_cli("feed", "export", feed_uri).stdout.splitlines(True)
    lines[1] = lines[1].replace(b'"body":2', b'"body":5')
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"".join(lines))
    r = run_cli("feed", "import", str(path), env={"KACHERY_TASKS_DIR": str(tmp_path / "o")})
    assert r.returncode == 1
    assert b"main seq 1" in r.stderr and b"signature" in r.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["feed", "append", "feed://abc", "1"], b"64 hex digits"),
        (["feed", "read", "feed://" + "ab" * 32], b"not known to this node"),
        (["feed", "verify", "feed://" + "ab" * 32 + "/bad name"], b"subfeed name"),
        (["feed", "import", "/nonexistent/feed.jsonl"], b"cannot read"),
    ],
)
def test_user_errors_are_one_line(run_cli, args, message):
    r = run_cli(*args)
    assert r.returncode == 1
    assert message in r.stderr and b"Traceback" not in r.stderr
    assert r.stderr.startswith(b"error: ")


def test_bad_json_body(run_cli, feed_uri):
    r = run_cli("feed", "append", feed_uri, "{unit: 3}")
    assert r.returncode == 1 and b"not JSON" in r.stderr


def test_snapshot_prints_a_content_uri(run_cli, feed_uri):
    _out(run_cli("feed", "append", feed_uri, '"x"'))
    uri = _out(run_cli("feed", "snapshot", feed_uri)).strip()
    assert uri.startswith("sha256://")
    assert _out(run_cli("cat", uri)).count('"signature"') == 1


def test_every_action_has_help_with_an_example(capsys):
    from kachery_tasks.cli import build_parser

    parser = build_parser()
    for action in ACTIONS:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(["feed", action, "--help"])
        assert exit_info.value.code == 0
        assert f"example:\n  kachery-tasks feed {action}" in capsys.readouterr().out


def test_help_text_shows_examples(run_cli):
    out = _out(run_cli("feed", "read", "--help"))
    assert "example:" in out and "--follow" in out


def test_read_follow_prints_new_messages(run_cli, feed_uri):
    _out(run_cli("feed", "append", feed_uri, '"old"'))
    proc = subprocess.Popen(
        [sys.executable, "-m", "kachery_tasks", "feed", "read", feed_uri, "--follow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ),
    )
    watchdog = threading.Timer(60, proc.kill)  # a hung read fails the test, not the run
    watchdog.start()
    try:
        assert json.loads(proc.stdout.readline())["body"] == "old"
        _out(run_cli("feed", "append", feed_uri, '"new"'))
        assert json.loads(proc.stdout.readline())["body"] == "new"
        assert proc.poll() is None  # still following
    finally:
        watchdog.cancel()
        proc.kill()
        proc.wait(timeout=10)


def test_append_lines_that_are_not_utf8_appends_nothing(tmp_path):
    import kachery_tasks as kachery
    from tests.cli.inprocess import run_main

    feed = kachery.create_feed("f")
    path = tmp_path / "bodies.jsonl"
    path.write_bytes(b'{"unit": 1}\n{"label": "caf\xe9"}\n')
    r = run_main("feed", "append", feed.uri, "--lines", str(path))
    assert r.status == 1
    assert r.stderr == f"error: line 2 of {path} is not UTF-8 text (byte 14 of the line); " \
                       "JSON lines must be UTF-8\n"
    r = run_main("feed", "append", feed.uri, "--lines", "-", stdin=b"1\n\xff\n")
    assert r.status == 1 and "line 2 of standard input is not UTF-8" in r.stderr
    assert feed.subfeed("main").count() == 0


@pytest.mark.parametrize("body", ["[" * 100_000, "[" * 101 + "]" * 101, "NaN", "[1e400]"])
def test_append_refuses_bodies_json_cannot_hold(body, tmp_path):
    import kachery_tasks as kachery
    from tests.cli.inprocess import run_main

    feed = kachery.create_feed("f")
    r = run_main("feed", "append", feed.uri, body)
    assert r.status == 1 and r.stderr.startswith("error: the message body ")
    (tmp_path / "lines").write_text(f"1\n{body}\n")
    r = run_main("feed", "append", feed.uri, "--lines", str(tmp_path / "lines"))
    assert r.status == 1 and r.stderr.startswith("error: line 2 ")
    assert feed.subfeed("main").count() == 0
