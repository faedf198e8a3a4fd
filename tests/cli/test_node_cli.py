import json
import os
import stat

import pytest


def test_node_init_and_info(run_cli, tmp_path, node_path):
    shared = tmp_path / "lab"
    r = run_cli("node", "init", "--dir", str(shared), "--shared")
    assert r.returncode == 0 and b"group-shared" in r.stdout
    assert os.stat(shared).st_mode & stat.S_ISGID
    info = json.loads(run_cli("node", "info", "--json").stdout)
    assert info["node_dir"] == str(node_path) and info["blobs"] == 0
    assert len(info["node_id"]) == 64


def test_node_start_serves_until_sigterm_and_refuses_a_second_daemon(run_cli, node_path):
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "kachery_tasks", "node", "start"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"node daemon of {node_path} running (pid {proc.pid}); "
                               "channels: none yet"), (line, proc.stderr.read())
        assert (node_path / "daemon" / "pid").read_text().strip() == str(proc.pid)
        second = run_cli("node", "start")
        assert second.returncode == 1
        assert second.stderr.decode().strip() == (
            f"error: a node daemon already serves {node_path} (pid {proc.pid}): stop it "
            "first (Ctrl-C, or kill that pid)")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (node_path / "daemon" / "pid").exists()
    assert "daemon started" in proc.stderr.read()


def test_node_start_refuses_inline_answers_too_large_for_a_message(run_cli):
    r = run_cli("node", "start", "--inline-max", "1MiB")
    assert r.returncode == 1
    assert r.stderr.decode().strip() == (
        "error: content sent inline must be at most 40.0 KiB (it travels in one pub/sub "
        "message), not 1.0 MiB")


def test_node_start_logs_what_it_serves_and_never_a_key_or_token(tmp_path):
    import signal
    import subprocess
    import sys

    from kachery_tasks.keys import signing_key_path
    from tests.network.channels.conftest import Lab, broker_with_admission

    with broker_with_admission() as (broker, _):
        lab = Lab(tmp_path, broker.url)
        a, b = lab.add("a"), lab.add("b")
        env = {**os.environ, "KACHERY_TASKS_DIR": str(a.path)}
        proc = subprocess.Popen([sys.executable, "-m", "kachery_tasks", "node", "start"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            assert proc.stdout.readline().endswith("channels: lab\n")
            assert b.load_bytes(a.store_bytes(b"logged")) == b"logged"
            proc.send_signal(signal.SIGINT)
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            lab.close()
    log = proc.stderr.read()
    assert "channel lab: serving as a (config version 2" in log
    assert "channel lab: request_file sha256://" in log and "sent 6 B inline" in log
    secrets = [signing_key_path(a.dir).read_text().strip(),
               (a.path / "channels" / lab.owner.key / "owner.key").read_text().strip()]
    assert all(secret not in log for secret in secrets)
    assert "eyJ" not in log and "accessToken" not in log  # no token (base64 JSON) either


def _provider_warnings(path) -> list[str]:
    """Start ``node start --provide`` on node ``path``, stop it once it provides: the
    warning lines it printed."""
    import signal
    import subprocess
    import sys

    env = {**os.environ, "KACHERY_TASKS_DIR": str(path)}
    proc = subprocess.Popen([sys.executable, "-m", "kachery_tasks", "node", "start", "--quiet",
                             "--provide", "tests.network.tasks.remote_tasks"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("node daemon of ")
        providing = proc.stdout.readline()
        assert providing.startswith("providing ")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    warnings = [line for line in proc.stderr.read().splitlines() if line.startswith("warning:")]
    assert providing.endswith("; in no channel yet (see the warning)\n") == bool(warnings)
    return warnings


def test_node_start_warns_when_no_channel_lets_it_provide(tmp_path):
    from kachery_tasks.config import init_node_dir
    from tests.network.channels.conftest import Lab, broker_with_admission

    alone = tmp_path / "alone"
    init_node_dir(alone)
    assert _provider_warnings(alone) == [
        "warning: --provide: this node has joined no channel, so no member can ask it to run "
        "tasks; join one with 'kachery-tasks channel join INVITE' (the daemon picks it up "
        "within seconds)"]
    with broker_with_admission() as (broker, _):
        lab = Lab(tmp_path, broker.url)
        a, b = lab.add("a"), lab.add("b", frozenset({"download", "upload"}))
        try:
            assert _provider_warnings(a.path) == []  # a may process_tasks
            assert _provider_warnings(b.path) == [
                "warning: --provide: this node may not process_tasks in any channel it serves "
                "(in lab it may download, upload), so no member can ask it to run tasks. It "
                "starts providing within seconds of the owner running 'kachery-tasks channel "
                f"set-permissions lab {b.id} --allow download,upload,process_tasks'"]
        finally:
            lab.close()


def test_node_start_refuses_an_address_it_cannot_listen_on_before_starting(run_cli, node_path):
    r = run_cli("node", "start", "--listen", "192.0.2.1:7000")  # TEST-NET-1: not this machine
    assert r.returncode == 1
    assert r.stderr.decode().strip() == (
        "error: the HTTP API cannot listen on 192.0.2.1:7000: the address is not one of this "
        "machine's; choose another with --listen")  # nothing started, nothing logged
    assert not (node_path / "daemon" / "pid").exists()


def test_node_start_refuses_a_module_it_cannot_import(run_cli, node_path):
    r = run_cli("node", "start", "--provide", "no_such_lab.pipelines")
    assert r.returncode == 1
    assert r.stderr.decode().strip() == (
        "error: no module named no_such_lab.pipelines can be imported here (its package "
        "no_such_lab is not found either); install the package that provides it, run from the "
        "directory that holds it, or fix the name")
    assert not (node_path / "daemon" / "pid").exists()  # nothing was started


def test_node_start_takes_dask_or_workers_only_for_provided_tasks(run_cli):
    for option in (("--workers", "2"), ("--claim-ttl", "10"), ("--dask", "tcp://h:8786")):
        r = run_cli("node", "start", *option)
        assert r.returncode == 1 and b"give the modules with --provide MODULE" in r.stderr
    r = run_cli("node", "start", "--provide", "tests.network.tasks.remote_tasks", "--workers",
                "2", "--dask", "tcp://127.0.0.1:9")
    assert r.returncode == 1 and b"not both" in r.stderr
    r = run_cli("node", "start", "--provide", "tests.network.tasks.remote_tasks", "--dask",
                "notaurl")
    assert r.returncode == 1 and r.stderr.decode().startswith(
        "error: 'notaurl' is not the address of a Dask scheduler (")


@pytest.mark.parametrize("option, message", [
    (("--workers", "0"), "--workers: must be a whole number, from 1 to 1024, not '0' (see"),
    (("--workers", "99999999999"), "from 1 to 1024, not '99999999999'"),
    (("--claim-ttl", "0"),
     "--claim-ttl: must be a number of seconds above 0 and at most 86400 (a day), not '0' ("),
])
def test_node_start_says_what_its_numbers_may_be(run_cli, option, message):
    r = run_cli("node", "start", "--provide", "tests.network.tasks.remote_tasks", *option)
    assert r.returncode == 1 and message in r.stderr.decode()  # a usage error


def test_node_info_works_without_the_daemon_extra(node_path, monkeypatch, capsys):
    """``node info`` looks for a running API through daemon.http, which must stay free of
    FastAPI and uvicorn so that it works where the daemon extra is not installed."""
    import sys

    import kachery_tasks.daemon as package
    from kachery_tasks.cli import main

    # a fresh import of daemon.http here; the one other tests use is put back afterwards
    monkeypatch.setattr(package, "http", getattr(package, "http", None), raising=False)
    monkeypatch.delitem(sys.modules, "kachery_tasks.daemon.http", raising=False)
    for name in ("fastapi", "uvicorn", "starlette"):
        monkeypatch.setitem(sys.modules, name, None)  # as if they were not installed
    assert main(["node", "info"]) == 0
    assert "HTTP API:       not running" in capsys.readouterr().out
