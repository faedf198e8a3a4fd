"""The pages: the hub and the API docs are served from the package, with no CDN."""

from __future__ import annotations

import re
import subprocess
import sys

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
    code = ("import sys, kachery_tasks, kachery_tasks.cli; "
            "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette', 'pydantic') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
