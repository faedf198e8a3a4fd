"""The hub page in a real browser (Debian's chromium, driven by Playwright).

Each test saves screenshots of what it saw under its tmp directory and under
tests/artifacts/ (not committed), for a person to look at.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

import httpx
import pytest

from kachery_tasks.network.channels import ChannelSession, ChannelStore, Invite
from kachery_tasks.network.channels.membership import create_channel
from kachery_tasks.testing.pubsub import Inbox
from tests.daemon.conftest import OCTETS, token_of
from tests.network.channels.conftest import broker_with_admission, make_node, wait_for
from tests.network.conftest import FAST

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "hub"
WAIT_MS = 15_000

playwright_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)")
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


class Hub:
    """One browser page on the hub, logged in, with its console watched."""

    def __init__(self, browser, server, shots: Path, name: str) -> None:
        self.context = browser.new_context(accept_downloads=True)
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(m.text))
        self.page.on("pageerror", lambda e: self.problems.append(str(e)))
        self.server, self.shots, self.name = server, shots, name
        self.page.goto(f"{server.url}/#token={token_of(server)}")
        self.page.wait_for_selector("body[data-ready='1']", timeout=WAIT_MS)
        self.page.wait_for_selector("#live.on", timeout=WAIT_MS)

    def tab(self, name: str) -> None:
        self.page.click(f"#tabs button[data-tab='{name}']")
        self.page.wait_for_selector(f"#tab-{name}:not([hidden])")

    def shot(self, what: str) -> Path:
        path = self.shots / f"{self.name}-{what}.png"
        self.page.screenshot(path=str(path), full_page=True)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, ARTIFACTS / path.name)
        return path

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def hub(browser, served, tmp_path, request):
    shots = tmp_path / "screenshots"
    shots.mkdir()
    opened: list[Hub] = []

    def open_hub(server=served) -> Hub:
        h = Hub(browser, server, shots, request.node.name)
        opened.append(h)
        return h

    yield open_hub
    for h in opened:
        h.close()
    print(f"screenshots: {shots} (copies in {ARTIFACTS})")


def test_the_page_loads_with_no_console_errors(hub, served):
    h = hub()
    assert h.page.title() == "kachery-tasks hub"
    assert h.page.inner_text("#node-id") == served.node.id
    assert "not logged in" not in h.page.content()
    assert h.page.url.endswith("/")  # the token left the address bar at once
    for tab in ("node", "channels", "files", "feeds", "tasks", "requests"):
        h.tab(tab)
        h.shot(tab)
    assert h.problems == []


def test_a_wrong_token_shows_the_login_form(browser, served, tmp_path):
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{served.url}/#token=wrong")
    page.wait_for_selector("#login:not([hidden])", timeout=WAIT_MS)
    assert "wrong token" in page.inner_text("#login-error")
    page.fill("#login-token", token_of(served))
    page.click("#login-form button")
    page.wait_for_selector("body[data-ready='1']", timeout=WAIT_MS)
    assert page.inner_text("#node-id") == served.node.id
    context.close()


def test_a_stored_file_appears_and_downloads(hub, served, tmp_path):
    node = served.node
    before = os.urandom(5000)
    node.store_bytes(before, label="spikes-before.npy")
    h = hub()
    h.tab("files")
    row = h.page.wait_for_selector(
        f"#files tr[data-sha256='{hashlib.sha256(before).hexdigest()}']", timeout=WAIT_MS)
    assert "spikes-before.npy" in row.inner_text()
    later = os.urandom(7000)  # stored through the API while the page is open: shown live
    httpx.post(f"{served.url}/api/files", params={"label": "later.dat"}, content=later,
               headers={**OCTETS, "Authorization": f"Bearer {token_of(served)}"})
    sha = hashlib.sha256(later).hexdigest()
    h.page.wait_for_selector(f"#files tr[data-sha256='{sha}']", timeout=WAIT_MS)
    h.page.fill("#file-label", "later")
    h.page.click("#file-search button")
    h.page.wait_for_function(
        "document.querySelectorAll('#files tbody tr').length === 1", timeout=WAIT_MS)
    h.shot("files")
    with h.page.expect_download() as download:
        h.page.click(f"#files tr[data-sha256='{sha}'] a")
    saved = tmp_path / "downloaded"
    download.value.save_as(saved)
    assert saved.read_bytes() == later and download.value.suggested_filename == "later.dat"
    assert h.problems == []


def test_a_feed_message_appended_from_python_appears_live(hub, served):
    feed = served.node.create_feed("curation")
    sub = feed.subfeed("main")
    sub.append({"unit": 1, "label": "good"})
    h = hub()
    h.tab("feeds")
    h.page.click(f"#feeds tr[data-feed='{feed.id}'] button[data-subfeed='main']")
    h.page.wait_for_selector("#tail-messages li[data-seq='0']", timeout=WAIT_MS)
    sub.append({"unit": 3, "label": "noise"})
    item = h.page.wait_for_selector("#tail-messages li[data-seq='1']", timeout=WAIT_MS)
    assert item.inner_text() == '{"label":"noise","unit":3}'  # canonical JSON
    h.page.fill("#append-body", '{"unit": 4}')  # and the page appends to its own feed
    h.page.click("#append-form button")
    h.page.wait_for_selector("#tail-messages li[data-seq='2']", timeout=WAIT_MS)
    assert sub.count() == 3 and next(iter(sub.read(2))).body == {"unit": 4}
    h.shot("feed-tail")
    assert h.problems == []


def test_tasks_show_a_run_with_its_result_and_provenance(hub, served):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
    import task_defs

    from kachery_tasks.runtime import cache

    elsewhere = task_defs.add.task_id(40, 2)
    with served.node:
        task_defs.total([1, 2])
        cache.current().records.import_result(  # as a channel's provider's answer is
            elsewhere, "pure", "task_defs.add", "sha256://" + "ab" * 32, "json", "cd" * 32)
    h = hub()
    h.tab("tasks")
    total = task_defs.total.task_id([1, 2])
    row = h.page.wait_for_selector(f"#imported tr[data-task='{elsewhere}']", timeout=WAIT_MS)
    assert row.inner_text().split("\t")[:3] == ["task_defs.add", "pure", "success"]
    assert "node cdcdcdcdcdcd" in row.inner_text()
    assert h.page.query_selector(f"#imported tr[data-task='{total}']") is None  # run here
    h.page.click(f"#runs tr[data-task='{total}']")
    h.page.wait_for_selector(".result-value", timeout=WAIT_MS)
    assert h.page.inner_text(".result-value") == "5"
    called = h.page.inner_text("#task-called")
    assert called.count("task_defs.add") == 2
    h.page.click("#task-called a >> nth=0")  # follow the provenance to a callee
    h.page.wait_for_function(
        "document.querySelector('#task-callers').innerText.includes('task_defs.total')",
        timeout=WAIT_MS)
    h.shot("task")
    assert h.problems == []


@pytest.fixture
def channel_world(tmp_path):
    """A channel owned by the served node, on a real broker with admission and a file://
    bucket; node 'alice' joined it but is not a member."""
    with broker_with_admission() as (broker, _gate):
        yield broker, tmp_path


def test_requests_in_flight_show_live(hub, daemon):
    h = hub()
    h.tab("requests")
    daemon.requests = [{"id": "r1", "type": "request_file", "channel": "lab",
                        "from": "ab" * 32, "to": None, "status": "uploading", "started": 1.0,
                        "progress": {"bytes": 2**20, "total": 4 * 2**20},
                        "detail": "raw.dat from alice"}]
    daemon.emit({"type": "request", "id": "r1", "status": "uploading"})
    row = h.page.wait_for_selector("#requests tr[data-request='r1']", timeout=WAIT_MS)
    assert "uploading" in row.inner_text() and "1.0 MiB / 4.0 MiB" in row.inner_text()
    h.shot("requests")
    assert h.problems == []


def test_the_owner_adds_a_node_and_its_requests_are_accepted(hub, served, daemon,
                                                             channel_world):
    broker, tmp_path = channel_world
    owner = served.node
    lab = create_channel(owner.dir, "lab", f"file://{tmp_path}/bucket", broker.url, "owner")
    alice_dir, alice_key = make_node(tmp_path, "alice")
    v1 = lab.trusted_config()
    alice_lab = ChannelStore(alice_dir).add(Invite.of(v1), v1)
    from kachery_tasks.errors import ChannelPermissionError

    with pytest.raises(ChannelPermissionError, match="not a member"):
        ChannelSession(alice_lab, alice_key, **FAST).start()

    received = Inbox()
    with ChannelSession(lab, owner.key, **FAST).start() as owner_session:
        owner_session.on("request_file", received)
        h = hub()
        h.tab("channels")
        card = "#channels .channel[data-channel='lab']"
        h.page.wait_for_selector(card, timeout=WAIT_MS)
        owner_row = f"{card} tr[data-node='{owner.id}']"
        assert h.page.query_selector(f"{owner_row} .dot.online") is None
        daemon.online = {owner.id}  # presence, as the channel services report it
        daemon.emit({"type": "presence", "channel": "lab", "node": owner.id, "online": True})
        h.page.wait_for_selector(f"{owner_row} .dot.online", timeout=WAIT_MS)
        h.shot("channel-before")
        h.page.fill(f"{card} form.add-node input[name='node']", alice_key.public_hex)
        h.page.fill(f"{card} form.add-node input[name='label']", "alice")
        h.page.click(f"{card} form.add-node button")
        h.page.wait_for_selector(f"{card} tr[data-node='{alice_key.public_hex}']",
                                 timeout=WAIT_MS)
        message = h.page.inner_text("#channels-message")
        assert re.search(r"version 2 published, members notified", message), message
        h.shot("channel-after-add")
        assert lab.trusted_config().members[alice_key.public_hex].permissions == {"download"}

        # The added node is admitted by the broker (the new config) and the owner's
        # running session, which adopted the notice, accepts its request.
        with ChannelSession(alice_lab, alice_key, **FAST).start() as alice_session:
            alice_session.publish("request_file", {"uri": "sha256://" + "ab" * 32})
            (got,) = received.wait_for(1)
            assert got.sender == alice_key.public_hex

            # The owner takes 'download' away on the page: alice's next request is dropped.
            row = f"{card} tr[data-node='{alice_key.public_hex}']"
            h.page.uncheck(f"{row} input[value='download']")
            h.page.check(f"{row} input[value='read_feeds']")
            h.page.click(f"{row} button.save")
            h.page.wait_for_function(
                "document.querySelector('#channels-message').innerText.includes('version 3')",
                timeout=WAIT_MS)
            assert lab.trusted_config().members[alice_key.public_hex].permissions == {
                "read_feeds"}
            wait_for(lambda: owner_session.config.version == 3, 15.0,
                     "the notice of version 3")
            alice_session.publish("request_file", {"uri": "sha256://" + "cd" * 32})
            assert len(received.quiet(1.0)) == 1  # dropped: alice may not download now
        assert h.problems == []
