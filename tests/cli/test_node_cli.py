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
