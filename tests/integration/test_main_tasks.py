"""Tasks defined in ``__main__`` without ``name=``: a script, a notebook, their Dask workers."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from kachery_tasks.runtime import cache

pytestmark = pytest.mark.timeout(240)

SCRIPT = """
import sys
import kachery_tasks as kachery

K = 3
calls = kachery.untracked([])

@kachery.pure
def scaled(x):
    calls.append(x)
    return x * K

if __name__ == "__main__":
    cached_before = scaled.is_cached(7)
    print(scaled.name, scaled.task_id(7), cached_before, scaled(7), scaled(7), len(calls))
    if sys.argv[1:] == ["dask"]:
        with kachery.dask(n_workers=1):
            fut = scaled.submit(8)
            print(fut.result(), fut.task_id == scaled.task_id(8))
"""


def _run_script(path: Path, *args: str) -> list[str]:
    out = subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True,
                         timeout=180, env={**os.environ, "PYTHONHASHSEED": "random"})
    assert out.returncode == 0, out.stderr
    return out.stdout.split("\n")


def test_a_script_task_needs_no_name_and_is_cached_across_runs(tmp_path):
    script = tmp_path / "analysis.py"
    script.write_text(SCRIPT)
    first = _run_script(script)[0].split()
    name, tid, cached_before, a, b, ncalls = first
    assert name == "__main__.scaled"
    assert (cached_before, a, b, ncalls) == ("False", "21", "21", "1")  # the 2nd call: a hit
    second = _run_script(script)[0].split()
    assert second[:2] == [name, tid]  # the same id in another process
    assert second[2:] == ["True", "21", "21", "0"]  # served from the records, not computed


def test_a_script_task_runs_on_dask_workers(tmp_path):
    pytest.importorskip("distributed")
    script = tmp_path / "analysis.py"
    script.write_text(SCRIPT)
    lines = _run_script(script, "dask")
    assert lines[1] == "24 True"
    runs = cache.current().records.runs(function="__main__.scaled", status="success")
    assert len(runs) == 2  # scaled(7) in the script, scaled(8) on the worker
    assert len({r.task_id for r in runs}) == len({r.pid for r in runs}) == 2


NOTEBOOK_CELLS = [
    "import cloudpickle\nimport kachery_tasks as kachery\ncalls = kachery.untracked([])",
    "@kachery.pure\ndef shout(s):\n    calls.append(s)\n    return s.upper() + '!'",
    "cached_before = shout.is_cached('hi')\na = shout('hi')\nb = shout('hi')",
    "sent = cloudpickle.loads(cloudpickle.dumps(shout))  # how Dask sends it to a worker\n"
    "print(shout.name, shout.task_id('hi'), cached_before, a, b, len(calls),\n"
    "      sent.task_id('hi') == shout.task_id('hi'), sent('hi'))",
]


def _run_notebook(tmp_path: Path) -> list[str]:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    from jupyter_client import KernelManager

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in NOTEBOOK_CELLS]
    # Unix sockets, not TCP ports: a port the kernel was given can be taken by another
    # test's server before the kernel binds it (the kernel then never answers). Their
    # directory is short: a socket's path holds at most 107 bytes.
    with tempfile.TemporaryDirectory(prefix="kt-nb-") as sockets:
        km = KernelManager(kernel_name="python3", transport="ipc", ip=f"{sockets}/k")
        client = nbclient.NotebookClient(nb, km=km, timeout=120,
                                         resources={"metadata": {"path": str(tmp_path)}})
        client.execute()
    out = nb.cells[-1].outputs
    return "".join(o.get("text", "") for o in out if o.output_type == "stream").split()


def test_a_notebook_task_needs_no_name_and_is_cached_across_kernels(tmp_path):
    first = _run_notebook(tmp_path)
    name, tid = first[:2]
    assert name == "__main__.shout"
    assert first[2:] == ["False", "HI!", "HI!", "1", "True", "HI!"]  # the 2nd call: a hit
    second = _run_notebook(tmp_path)
    assert second[:2] == [name, tid]  # a new kernel gives the same id
    assert second[2:] == ["True", "HI!", "HI!", "0", "True", "HI!"]  # and finds the result
