// The kachery-tasks hub: one page over the node's HTTP API (/api/...), no build step.
// It authenticates with a session cookie (POST /api/login with the token); a token in
// the URL fragment (#token=..., never sent to the server) is posted once and removed.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { node: null, permissions: [], tail: null, feeds: [] };

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

async function api(method, path, body) {
  const opts = { method, headers: {}, credentials: "same-origin" };
  if (body !== undefined) {
    if (body instanceof Blob) {
      opts.body = body;
      opts.headers["content-type"] = "application/octet-stream";
    } else {
      opts.body = JSON.stringify(body);
      opts.headers["content-type"] = "application/json";
    }
  }
  const r = await fetch("/api" + path, opts);
  const data = r.headers.get("content-type")?.includes("json") ? await r.json() : null;
  if (r.status === 401) { showLogin(); throw new Error("not logged in"); }
  if (!r.ok) throw new Error((data && data.error) || `HTTP ${r.status}`);
  return data;
}

function size(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}
const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "-");
const short = (id) => (id ? id.replace(/^sha256:/, "").slice(0, 12) : "-");

// ------------------------------------------------------------------ login
async function login(token) {
  const r = await fetch("/api/login", {
    method: "POST", credentials: "same-origin",
    headers: { "content-type": "application/json" }, body: JSON.stringify({ token }),
  });
  if (!r.ok) throw new Error((await r.json()).error);
}

function showLogin() {
  $("#login").hidden = false;
  $("#app").hidden = true;
}

// ------------------------------------------------------------------- tabs
function showTab(name) {
  for (const b of document.querySelectorAll("#tabs button")) {
    b.classList.toggle("active", b.dataset.tab === name);
  }
  for (const s of document.querySelectorAll(".tab")) s.hidden = s.id !== "tab-" + name;
}

// ------------------------------------------------------------------- node
async function loadNode() {
  const n = await api("GET", "/node");
  state.node = n;
  const dl = $("#node-info");
  dl.replaceChildren(
    el("dt", {}, "node id"), el("dd", { class: "mono", id: "node-id" }, n.id),
    el("dt", {}, "label"), el("dd", {}, n.label || "-"),
    el("dt", {}, "directory"), el("dd", { class: "mono" }, n.path + (n.shared ? " (group-shared)" : "")),
    el("dt", {}, "store"), el("dd", {}, `${n.store.blobs} blobs, ${size(n.store.bytes)}`),
    el("dt", {}, "disk"), el("dd", {}, `${size(n.disk.free)} free of ${size(n.disk.total)}`),
    el("dt", {}, "channel services"), el("dd", {}, n.channel_services ? "running" : "not running"),
  );
}

// --------------------------------------------------------------- channels
function permissionBoxes(selected, disabled) {
  return state.permissions.map((p) => el("label", { class: "perm" },
    el("input", { type: "checkbox", value: p, checked: selected.includes(p), disabled }), p));
}
const field = (form, name) => form.elements.namedItem(name).value.trim();
const checked = (root) => [...root.querySelectorAll("input[type=checkbox]:checked")].map((i) => i.value);

function channelMessage(text, isError) {
  const m = $("#channels-message");
  m.textContent = text;
  m.className = isError ? "error" : "message";
}

async function ownerChange(method, path, body) {
  try {
    const r = await api(method, path, body);
    channelMessage(`version ${r.version} published` + (r.notified ? ", members notified" :
      ` (members not notified: ${r.note})`));
  } catch (e) {
    channelMessage(e.message, true);
  }
  await loadChannels();
}

function providesLine(provides) {
  // what the member's daemon runs for others (node start --provide): name, short code hash
  if (!provides || !provides.length) return null;
  const names = provides.map((p) => `${p.name} (${p.version ? "v" + p.version : (p.code_hash || "").slice(0, 8)})`);
  return el("div", { class: "provides", title: names.join("\n") }, "provides " + names.join(", "));
}

function memberRow(c, m) {
  const boxes = el("span", { class: "perms" }, permissionBoxes(m.permissions, !c.owner_node));
  const row = el("tr", { "data-node": m.node },
    el("td", {}, el("span", { class: "dot" + (m.online ? " online" : ""),
      title: m.online === null ? "presence unknown" : (m.online ? "online" : "offline") })),
    el("td", {}, m.label + (m.this_node ? " (this node)" : ""), providesLine(m.provides)),
    el("td", { class: "mono", title: m.node }, m.node.slice(0, 16) + "…"),
    el("td", {}, boxes));
  if (c.owner_node) {
    const path = `/channels/${encodeURIComponent(c.key)}/members/${m.node}`;
    row.append(el("td", {},
      el("button", { class: "save", onclick: () => ownerChange("PUT", path, { permissions: checked(boxes) }) }, "save"),
      " ",
      el("button", { class: "remove", onclick: () => {
        if (confirm(`Remove ${m.label} from ${c.name}?`)) ownerChange("DELETE", path);
      } }, "remove")));
  }
  return row;
}

function channelCard(c) {
  const table = el("table", { class: "members" },
    el("thead", {}, el("tr", {}, el("th", {}, ""), el("th", {}, "label"), el("th", {}, "node"),
      el("th", {}, "permissions"), c.owner_node ? el("th", {}, "") : null)),
    el("tbody", {}, c.members.map((m) => memberRow(c, m))));
  const card = el("div", { class: "channel", "data-channel": c.name },
    el("h3", {}, c.name, " ", el("span", { class: "badge " + (c.connected ? "on" : "off") },
      c.connected ? "connected" : "not connected")),
    el("p", {}, `version ${c.version}, owner ${c.owner.slice(0, 16)}…` +
      (c.owner_node ? " (this node holds the owner key)" : "") +
      `, bucket ${c.bucket}, pub/sub ${c.pubsub}`),
    table);
  if (c.owner_node) {
    const boxes = el("span", {}, permissionBoxes(["download"], false));
    const form = el("form", { class: "add-node" },
      el("label", {}, "node id ", el("input", { name: "node", size: 66, required: true,
        pattern: "[0-9a-f]{64}" })),
      el("label", {}, "label ", el("input", { name: "label" })),
      boxes, el("button", {}, "Add node"));
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      ownerChange("POST", `/channels/${encodeURIComponent(c.key)}/members`, {
        node: field(form, "node"), label: field(form, "label") || null,
        permissions: checked(boxes) });
    });
    card.append(el("h4", {}, "Add a node"), form);
  }
  card.append(el("details", {}, el("summary", {}, "invite"), el("code", {}, c.invite)));
  return card;
}

async function loadChannels() {
  const r = await api("GET", "/channels");
  state.permissions = r.permissions;
  const root = $("#channels");
  root.replaceChildren(...(r.channels.length ? r.channels.map(channelCard)
    : [el("p", {}, "This node has joined no channel.")]));
}

// ------------------------------------------------------------------ files
async function loadFiles() {
  const label = $("#file-label").value.trim();
  const r = await api("GET", "/files" + (label ? "?label=" + encodeURIComponent(label) : ""));
  $("#files tbody").replaceChildren(...r.files.map((f) => el("tr", { "data-sha256": f.sha256 },
    el("td", {}, f.label || "-"), el("td", {}, size(f.size)),
    el("td", { class: "mono" }, f.uri.slice(0, 30) + "…"),
    el("td", {}, el("a", { href: "/api/files/" + f.sha256, download: f.label || f.sha256 },
      "download")))));
}

// ------------------------------------------------------------------ feeds
async function loadFeeds() {
  const r = await api("GET", "/feeds");
  state.feeds = r.feeds;
  $("#feeds tbody").replaceChildren(...r.feeds.map((f) => {
    const subs = Object.keys(f.subfeeds).length ? f.subfeeds : { main: 0 };
    return el("tr", { "data-feed": f.feed_id },
      el("td", {}, f.label || "-"), el("td", { class: "mono" }, f.feed_id.slice(0, 16) + "…"),
      el("td", {}, Object.entries(subs).map(([name, n]) => el("button", {
        class: "tail-button", "data-subfeed": name,
        onclick: () => startTail(f, name) }, `${name} (${n})`))),
      el("td", {}, f.writable ? "writable" : "read-only"));
  }));
}

function startTail(feed, name) {
  if (state.tail) state.tail.close();
  $("#tail").hidden = false;
  $("#tail-name").textContent = `${feed.label || feed.feed_id.slice(0, 16)} / ${name}`;
  const list = $("#tail-messages");
  list.replaceChildren();
  const count = feed.subfeeds[name] || 0;
  const start = Math.max(0, count - 50);
  const src = new EventSource(`/api/feeds/${feed.feed_id}/${encodeURIComponent(name)}/events?start=${start}`);
  src.addEventListener("message", (ev) => {
    const m = JSON.parse(ev.data);
    list.append(el("li", { value: m.seq, "data-seq": m.seq }, JSON.stringify(m.body)));
  });
  state.tail = src;
  const form = $("#append-form");
  form.hidden = !feed.writable;
  form.onsubmit = async (ev) => {
    ev.preventDefault();
    try {
      const body = JSON.parse($("#append-body").value);
      await api("POST", `/feeds/${feed.feed_id}/${encodeURIComponent(name)}/messages`, { body });
      $("#append-body").value = "";
    } catch (e) { alert(e.message); }
  };
}

// ------------------------------------------------------------------ tasks
async function loadRuns() {
  const [r, i] = await Promise.all([api("GET", "/tasks/runs?limit=100"),
    api("GET", "/tasks/imported?limit=100")]);
  $("#runs tbody").replaceChildren(...r.runs.map((run) => el("tr", {
    class: "clickable", "data-task": run.task_id, onclick: () => showTask(run.task_id) },
    el("td", {}, run.function), el("td", {}, run.kind), el("td", {}, run.status),
    el("td", {}, when(run.finished)), el("td", { class: "mono" }, short(run.task_id)))));
  $("#imported tbody").replaceChildren(...i.results.map((res) => el("tr", {
    class: "clickable", "data-task": res.task_id, onclick: () => showTask(res.task_id) },
    el("td", {}, res.function), el("td", {}, res.kind), el("td", {}, res.status),
    el("td", {}, when(res.finished)),
    el("td", {}, res.computed_by || `node ${res.node.slice(0, 12)}…`),
    el("td", { class: "mono" }, short(res.task_id)))));
}

function tree(node) {
  const item = el("li", {}, el("a", { href: "#", class: "mono",
    onclick: (ev) => { ev.preventDefault(); showTask(node.task_id); } },
    `${node.function || "?"} ${short(node.task_id)}`),
    node.cycle ? " (cycle)" : null, node.more ? " …" : null);
  if (node.children.length) item.append(el("ul", {}, node.children.map(tree)));
  return item;
}

async function showTask(taskId) {
  const [t, g] = await Promise.all([api("GET", "/tasks/" + encodeURIComponent(taskId)),
    api("GET", "/tasks/" + encodeURIComponent(taskId) + "/graph")]);
  $("#task").hidden = false;
  const last = t.runs[0];
  $("#task-title").textContent = `${last ? last.function : "task"} ${t.task_id}`;
  const detail = $("#task-detail");
  detail.replaceChildren();
  if (last) {
    detail.append(el("h4", {}, "Arguments"), el("ul", {}, Object.entries(last.args).map(
      ([k, v]) => el("li", {}, el("code", {}, k), " = ", String(v)))));
    if (last.inputs.length) detail.append(el("h4", {}, "Inputs"), el("ul", {}, last.inputs.map(
      (u) => el("li", { class: "mono" }, u))));
  }
  detail.append(el("h4", {}, "Result"));
  if (t.served_result) {
    detail.append(el("p", { class: "mono" }, t.served_result,
      t.served ? ` (${t.served.codec}, by node ${t.served.node.slice(0, 12)})` : ""));
    if (t.served && "value" in t.served) {
      detail.append(el("pre", { class: "result-value" }, JSON.stringify(t.served.value, null, 2)));
    }
  } else {
    detail.append(el("p", {}, "none served (never succeeded, or forgotten)"));
  }
  detail.append(el("h4", {}, `Runs (${t.runs.length})`), el("ul", {}, t.runs.map((r) =>
    el("li", {}, `${when(r.started)}: ${r.status}` + (r.error ? ` — ${r.error}` : "")))));
  const graph = (root) => (root.children.length ? el("ul", {}, root.children.map(tree))
    : el("p", {}, "nothing"));
  $("#task-called").replaceChildren(graph(g.called));
  $("#task-callers").replaceChildren(graph(g.called_by));
}

// --------------------------------------------------------------- requests
async function loadRequests() {
  const r = await api("GET", "/requests");
  $("#requests-note").textContent = r.channel_services ? "" :
    "The channel services are not running: no requests.";
  $("#requests tbody").replaceChildren(...r.requests.map((q) => el("tr", { "data-request": q.id },
    el("td", {}, q.type), el("td", {}, q.channel), el("td", { class: "mono" }, short(q.from)),
    el("td", { class: "mono" }, short(q.to)), el("td", {}, q.status),
    el("td", {}, q.progress ? `${size(q.progress.bytes)} / ${size(q.progress.total)}` : "-"),
    el("td", {}, q.detail || ""))));
}

// ------------------------------------------------------------------- live
function connectEvents() {
  const src = new EventSource("/api/events");
  const live = $("#live");
  src.addEventListener("hello", () => { live.textContent = "live"; live.className = "badge on"; });
  src.onerror = () => { live.textContent = "reconnecting"; live.className = "badge off"; };
  const reload = { channel: loadChannels, presence: loadChannels, config: loadChannels,
    request: loadRequests, run: loadRuns, file: loadFiles, feed: loadFeeds };
  for (const [type, fn] of Object.entries(reload)) {
    src.addEventListener(type, () => fn().catch((e) => console.warn(type, e.message)));
  }
  src.addEventListener("overflow", () => { src.close(); setTimeout(start, 1000); });
}

// ------------------------------------------------------------------ start
async function start() {
  await loadNode();
  $("#login").hidden = true;
  $("#app").hidden = false;
  await Promise.all([loadChannels(), loadFiles(), loadFeeds(), loadRuns(), loadRequests()]);
  connectEvents();
  document.body.dataset.ready = "1";
}

function wire() {
  for (const b of document.querySelectorAll("#tabs button")) {
    b.addEventListener("click", () => showTab(b.dataset.tab));
  }
  $("#login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      await login($("#login-token").value.trim());
      $("#login-token").value = "";
      await start();
    } catch (e) { $("#login-error").textContent = e.message; }
  });
  $("#file-search").addEventListener("submit", (ev) => { ev.preventDefault(); loadFiles(); });
  $("#file-upload").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = $("#file-input").files[0];
    if (!f) return;
    await api("POST", "/files?label=" + encodeURIComponent(f.name), f);
    await loadFiles();
  });
  $("#create-feed-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    await api("POST", "/feeds", { label: field(ev.target, "label") || null });
    ev.target.reset();
    await loadFeeds();
  });
  $("#create-channel-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = ev.target;
    try {
      await api("POST", "/channels", { name: field(f, "name"), bucket: field(f, "bucket"),
        pubsub: field(f, "pubsub"), label: field(f, "label") || null });
      channelMessage(`created channel ${field(f, "name")}`);
      f.reset();
    } catch (e) { channelMessage(e.message, true); }
    await loadChannels();
  });
}

async function main() {
  wire();
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    history.replaceState(null, "", location.pathname + location.search);
    try { await login(decodeURIComponent(m[1])); } catch (e) {
      $("#login-error").textContent = e.message;
    }
  }
  try { await start(); } catch (e) {
    if (e.message !== "not logged in") throw e;
  }
}

main();
