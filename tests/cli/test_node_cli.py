import json
import os
import stat


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
