"""The pages: the hub and the API docs are served from the package, with no CDN."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from kachery_tasks.daemon.api import HUB, swagger_assets


def test_the_docs_page_loads_swagger_ui_from_here(client):
    if swagger_assets() is None:
        pytest.fail("swagger-ui-py (the daemon extra) is not installed: /docs would need "
                    "the network")
    html = client.get("/docs").text
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    assert urls and all(u.startswith("/docs/assets/") for u in urls), urls
    assert "'/openapi.json'" in html or '"/openapi.json"' in html
    for url in urls:
        r = client.get(url)
        assert r.status_code == 200 and len(r.content) > 0, url


def test_the_hub_uses_no_outside_resource(client):
    html = client.get("/").text
    assert client.get("/").headers["content-type"].startswith("text/html")
    for path in HUB.iterdir():
        text = path.read_text()
        assert not re.search(r"https?://", text), f"{path.name} refers to another site"
    for url in re.findall(r"""(?:src|href)=["']([^"']+)["']""", html):
        if not url.startswith("data:"):
            assert client.get(url).status_code == 200, url


def test_import_kachery_tasks_does_not_import_the_web_stack():
    code = ("import sys, kachery_tasks, kachery_tasks.cli; kachery_tasks.cli.build_parser(); "
            "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette', 'pydantic') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_only_the_daemon_imports_web_code():
    import ast

    import kachery_tasks

    root = Path(kachery_tasks.__file__).parent
    web = {"fastapi", "uvicorn", "starlette", "pydantic", "anyio"}
    offenders = []
    for f in root.rglob("*.py"):
        if f.relative_to(root).parts[0] == "daemon":
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                     else [])
            offenders += [f"{f.relative_to(root)}: {n}" for n in names
                          if n.split(".")[0] in web]
    assert offenders == []
