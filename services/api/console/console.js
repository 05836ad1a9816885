// The operator console (docs/console.md, decision 0140). Plain JavaScript, no build step.
// Every value from the API is put on the page as text (textContent), never as HTML:
// payloads, results and errors are hostile input.
"use strict";

const KEY_STORAGE = "tm.console.api_key";
const STATUSES = ["waiting", "scheduled", "queued", "processing", "completed", "failed", "cancelled"];
const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const FILTERS = ["status", "task_type", "kb_id", "workflow_id"];
const QUEUE_REFRESH_MS = 5000;
const LIST_REFRESH_MIN_MS = 500;  // events arriving faster than this share one reload
const RECONNECT_MS = 2000;
// Besides the stream: a task shows up there with its first worker event, so a task that waits
// (queued behind others, scheduled, waiting on parents) appears with this slower re-read.
const VIEW_REFRESH_MS = 10000;

const state = {
  identity: null,      // GET /api/v1/me
  paused: false,
  stream: null,        // {controller} of the open event stream
  queueTimer: null,
  viewTimer: null,     // the slow re-read of the current view (serialised with the event-driven ones)
  render: 0,           // bumped on every navigation; stale async work checks it and stops
};

// ---- small DOM helpers: text only ------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") node.textContent = String(value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function show(message, kind) {
  const box = document.getElementById("message");
  box.textContent = message || "";
  box.className = kind || "";
  box.hidden = !message;
}

// The api masks a payload's secret-looking values (services/api/views.py, the same rule); a
// result is returned as the task produced it, so the console masks it for display.
const SECRET_KEY = /(^|[_-])(password|passwd|pwd|secret|token|api[_-]?key|authorization|credentials?|private[_-]?key|cookie)$/i;

function masked(value) {
  if (Array.isArray(value)) return value.map(masked);
  if (value && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, SECRET_KEY.test(k) ? "***" : masked(v)]));
  }
  return value;
}

function pretty(value) {
  return value === undefined || value === null ? "—" : JSON.stringify(masked(value), null, 2);
}

function when(value) {
  return value ? new Date(value).toLocaleString() : "—";
}

function statusBadge(status) {
  return el("span", { class: `status status-${STATUSES.includes(status) ? status : "other"}`, "data-status": status, text: status });
}

function mayWrite() {
  return !!state.identity && state.identity.scopes.includes("tasks:write");
}

function mayAdmin() {
  return !!state.identity && state.identity.scopes.includes("admin");
}

// ---- the API --------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
  describe() {
    if (this.status === 403) return `Refused (403 ${this.code}): ${this.message}`;
    return `${this.status || "network"} ${this.code}: ${this.message}`;
  }
}

function authHeaders() {
  const key = sessionStorage.getItem(KEY_STORAGE);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function api(method, path, body) {
  const headers = { Accept: "application/json", ...authHeaders() };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (err) {
    throw new ApiError(0, "network", String(err));
  }
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (!response.ok) {
    const error = (data && data.error) || {};
    throw new ApiError(response.status, error.code || "error", error.message || text.slice(0, 300));
  }
  return data;
}

// ---- the event stream (fetch, so the key goes in the Authorization header) ------------

function closeStream() {
  if (state.stream) state.stream.controller.abort();
  state.stream = null;
}

// Opens GET /api/v1/events with `params`; calls onEvent(kind, data) per event, and reconnects
// with the last id it saw until closed or paused. One stream at a time.
function openStream(params, onEvent) {
  closeStream();
  if (state.paused) return;
  const stream = { controller: new AbortController(), lastId: params.last_event_id || null };
  state.stream = stream;
  const run = async () => {
    while (state.stream === stream && !state.paused) {
      const query = new URLSearchParams();
      for (const [k, v] of Object.entries(params)) if (v && k !== "last_event_id") query.set(k, v);
      if (stream.lastId) query.set("last_event_id", stream.lastId);
      try {
        const response = await fetch(`/api/v1/events?${query}`, {
          headers: { Accept: "text/event-stream", ...authHeaders() }, signal: stream.controller.signal });
        if (!response.ok) {
          const data = await response.json().catch(() => ({}));
          const error = data.error || {};
          show(`Live updates refused: ${response.status} ${error.code || ""} ${error.message || ""}`);
          setLive("off");
          return;
        }
        setLive("live");
        await readEvents(response.body, stream, onEvent);
      } catch (err) {
        if (stream.controller.signal.aborted) return;
      }
      if (state.stream !== stream) return;
      setLive("reconnecting");
      await new Promise((resolve) => setTimeout(resolve, RECONNECT_MS));
    }
  };
  run();
}

async function readEvents(body, stream, onEvent) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let kind = "message", data = "", id = null;
      for (const line of frame.split("\n")) {
        if (line.startsWith("event:")) kind = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
        else if (line.startsWith("id:")) id = line.slice(3).trim();
      }
      if (id) stream.lastId = id;
      if (!data) continue;
      let parsed = null;
      try { parsed = JSON.parse(data); } catch (_) { continue; }
      if (state.stream === stream) onEvent(kind, parsed);
    }
  }
}

function setLive(text) {
  document.getElementById("live-state").textContent = state.paused ? "paused" : text;
}

// Runs `load` now and again whenever asked, never two at once: a request while one runs
// marks it dirty, and it runs once more when the current one ends.
function serialised(load) {
  let running = false, dirty = false, last = 0;
  const kick = async () => {
    if (running) { dirty = true; return; }
    running = true;
    try {
      do {
        dirty = false;
        const wait = last + LIST_REFRESH_MIN_MS - Date.now();
        if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
        last = Date.now();
        await load();
      } while (dirty);
    } finally {
      running = false;
    }
  };
  return kick;
}

// ---- queue depth figures --------------------------------------------------------------

async function refreshQueues(generation) {
  const box = document.getElementById("queues");
  if (!mayAdmin()) { box.textContent = ""; return; }
  try {
    const stats = await api("GET", "/api/v1/stats/queues");
    const parts = stats.stages.map((q) => el("span", { "data-queue": q.queue, title: q.queue },
      `${q.stage}: ${q.messages ?? q.ready ?? "?"}`));
    const retrying = stats.retry.reduce((sum, q) => sum + (q.messages ?? q.ready ?? 0), 0);
    parts.push(el("span", {}, `retrying: ${retrying}`));
    parts.push(el("span", { "data-queue": "tm.dead" }, `dead: ${stats.dead_letter.messages ?? stats.dead_letter.ready ?? "?"}`));
    box.replaceChildren(...parts);
  } catch (err) {
    box.textContent = `queues: ${err instanceof ApiError ? err.describe() : err}`;
  }
  if (!state.paused && generation === state.queueGeneration) {
    state.queueTimer = setTimeout(() => refreshQueues(generation), QUEUE_REFRESH_MS);
  }
}

function startQueues() {
  clearTimeout(state.queueTimer);
  state.queueGeneration = (state.queueGeneration || 0) + 1;
  refreshQueues(state.queueGeneration);  // the next one is scheduled when this one ends
}

// ---- views ------------------------------------------------------------------------------

function params() {
  return new URLSearchParams(location.search);
}

function navigate(query) {
  history.pushState(null, "", `/console?${query}`);
  route();
}

function link(query, text) {
  return el("a", { href: `/console?${query}`, onclick: (e) => { e.preventDefault(); navigate(query); } }, text);
}

function tasksView(main, generation) {
  const q = params();
  const form = el("form", { class: "filters", id: "filters" });
  const status = el("select", { name: "status", id: "filter-status" }, el("option", { value: "" }, "any status"),
    ...STATUSES.map((s) => el("option", { value: s, selected: q.get("status") === s }, s)));
  form.append(el("label", {}, "status", status));
  for (const name of ["task_type", "kb_id", "workflow_id"]) {
    form.append(el("label", {}, name, el("input", { name, id: `filter-${name}`, value: q.get(name) || "", size: 16 })));
  }
  form.append(el("button", { type: "submit", id: "apply" }, "Apply"));
  const search = el("input", { name: "id", id: "search-id", placeholder: "task id", size: 38 });
  form.append(el("label", {}, "open task", search));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const id = search.value.trim();
    if (id) { navigate(`view=task&id=${encodeURIComponent(id)}`); return; }
    const next = new URLSearchParams({ view: "tasks" });
    for (const name of FILTERS) {
      const value = form.elements[name].value.trim();
      if (value) next.set(name, value);
    }
    navigate(next.toString());
  });

  const body = el("tbody", { id: "task-rows" });
  const table = el("table", { id: "tasks" }, el("thead", {}, el("tr", {},
    ...["task", "type", "kb", "status", "progress", "stage", "attempts", "created"].map((h) => el("th", {}, h)))), body);
  const more = el("p", { id: "paging" });
  const bulk = el("p", { class: "actions", id: "bulk" });
  main.replaceChildren(form, bulk, table, more);

  const query = new URLSearchParams();
  for (const name of [...FILTERS, "cursor"]) if (q.get(name)) query.set(name, q.get(name));
  query.set("limit", "50");

  const load = async () => {
    if (generation !== state.render) return;
    try {
      const page = await api("GET", `/api/v1/tasks?${query}`);
      if (generation !== state.render) return;
      body.replaceChildren(...page.items.map((t) => el("tr", { "data-task-id": t.task_id },
        el("td", { class: "mono" }, link(`view=task&id=${encodeURIComponent(t.task_id)}`, t.task_id)),
        el("td", {}, t.task_type), el("td", {}, t.kb_id ?? "—"), el("td", {}, statusBadge(t.status)),
        el("td", {}, `${t.progress}%`), el("td", {}, t.stage ?? "—"), el("td", {}, `${t.attempts}/${t.retry_limit + 1}`),
        el("td", {}, when(t.created_at)))));
      if (!page.items.length) body.append(el("tr", {}, el("td", { colspan: 8, class: "muted" }, "No task matches.")));
      const nav = [];
      if (q.get("cursor")) {
        const first = new URLSearchParams(q); first.delete("cursor");
        nav.push(link(first.toString(), "« newest"), " ");
      }
      if (page.next_cursor) {
        const older = new URLSearchParams(q); older.set("cursor", page.next_cursor);
        nav.push(link(older.toString(), "older »"));
      }
      more.replaceChildren(...nav);
    } catch (err) {
      show(err instanceof ApiError ? err.describe() : String(err));
    }
  };
  const reload = serialised(load);
  reload();
  if (mayWrite()) bulkControls(bulk, q, generation, reload);
  // Any event of a matching task may change the page: reload it (serialised, so a burst of
  // events costs one request at a time). Workflow membership is not in the events: all of them.
  openStream({ kb_id: q.get("kb_id"), task_type: q.get("task_type") }, () => reload());
  return reload;
}

// "Cancel all matching" / "Retry all matching": the list's applied filters (the URL's, not the
// form's unsaved values), first as a dry run whose count the operator confirms.
function bulkControls(box, q, generation, reload) {
  const filters = {};
  for (const name of FILTERS) if (q.get(name)) filters[name] = q.get(name);
  if (!Object.keys(filters).length) filters.all = true;  // the api refuses no filter without it
  const scope = filters.all ? "every task this key can see" : "the tasks matching these filters";
  const idle = () => box.replaceChildren(
    el("button", { type: "button", id: "bulk-cancel", onclick: () => preview("cancel", "Cancel") }, "Cancel all matching"),
    el("button", { type: "button", id: "bulk-retry", onclick: () => preview("retry", "Retry") }, "Retry all matching"));
  const preview = async (action, verb) => {
    try {
      const dry = await api("POST", `/api/v1/tasks/bulk/${action}`, { ...filters, dry_run: true });
      if (generation !== state.render) return;
      if (!dry.matched) { show(`${verb}: no task among ${scope} applies.`, "info"); return; }
      const count = dry.more ? `the first ${dry.matched} (of more)` : String(dry.matched);
      box.replaceChildren(el("span", { id: "bulk-preview" }, `${verb} `, el("strong", { id: "bulk-count" }, count),
        ` of ${scope}?`), " ",
        el("button", { type: "button", id: "bulk-confirm", onclick: () => run(action, verb) }, `Yes, ${verb.toLowerCase()} them`),
        el("button", { type: "button", id: "bulk-keep", onclick: idle }, "No"));
    } catch (err) {
      show(err instanceof ApiError ? err.describe() : String(err));
    }
  };
  const run = async (action, verb) => {
    box.replaceChildren(el("span", { class: "muted" }, `${verb}: working…`));
    try {
      const done = await api("POST", `/api/v1/tasks/bulk/${action}`, filters);
      show(`${verb}: ${done.done} task(s) done, ${done.skipped} skipped${done.more ? "; more match: run it again" : ""}.`,
        "info");
      reload();
    } catch (err) {
      show(err instanceof ApiError ? err.describe() : String(err));
    }
    if (generation === state.render) idle();
  };
  idle();
}

function taskView(main, generation) {
  const id = params().get("id") || "";
  const heading = el("h2", {}, "Task ", el("span", { class: "mono", id: "task-id" }, id));
  const actions = el("p", { class: "actions", id: "actions" });
  const fields = el("dl", { class: "fields", id: "task-fields" });
  const progress = el("progress", { id: "task-progress", max: 100, value: 0 });
  const payload = el("pre", { id: "task-payload" });
  const result = el("pre", { id: "task-result" });
  const error = el("pre", { id: "task-error" });
  const timeline = el("tbody", { id: "timeline" });
  main.replaceChildren(heading, actions, el("p", {}, "progress ", progress), fields,
    el("h3", {}, "Payload"), payload, el("h3", {}, "Result"), result, el("h3", {}, "Error"), error,
    el("h3", {}, "Timeline"),
    el("table", {}, el("thead", {}, el("tr", {}, ...["when", "event", "run", "attempt", "stage", "worker", "detail"]
      .map((h) => el("th", {}, h)))), timeline));

  let task = null;
  const act = async (label, method, path) => {
    show(`${label}…`, "info");
    try {
      await api(method, path);
      show(`${label}: done.`, "info");
    } catch (err) {
      show(err instanceof ApiError ? err.describe() : String(err));
    }
    reload();
  };
  const draw = (t) => {
    task = t;
    fields.replaceChildren(
      ...[["status", statusBadge(t.status)], ["type", t.task_type], ["kb", t.kb_id ?? "—"], ["stage", t.stage ?? "—"],
        ["priority", t.priority], ["run", t.run], ["attempts", `${t.attempts} (retry limit ${t.retry_limit})`],
        ["created", when(t.created_at)], ["started", when(t.started_at)], ["finished", when(t.finished_at)],
        ["next attempt", when(t.next_attempt_at)], ["callback", t.callback ? `${t.callback.state} (${t.callback.attempts} attempts)` : "—"]]
        .flatMap(([k, v]) => [el("dt", {}, k), el("dd", { "data-field": k }, v)]));
    progress.value = t.progress;
    progress.textContent = `${t.progress}%`;
    payload.textContent = pretty(t.payload);
    result.textContent = pretty(t.result);
    error.textContent = pretty(t.error);
    const buttons = [];
    if (mayWrite() && !TERMINAL.has(t.status)) {
      buttons.push(el("button", { type: "button", id: "cancel", onclick: () => act("Cancel", "DELETE", `/api/v1/tasks/${encodeURIComponent(t.task_id)}`) }, "Cancel"));
    }
    if (mayWrite() && (t.status === "failed" || t.status === "cancelled")) {
      buttons.push(el("button", { type: "button", id: "retry", onclick: () => act("Retry", "POST", `/api/v1/tasks/${encodeURIComponent(t.task_id)}/retry`) }, "Retry"));
    }
    if (!mayWrite()) buttons.push(el("span", { class: "muted", id: "read-only" }, "read-only key: no actions"));
    actions.replaceChildren(...buttons);
  };
  const reload = serialised(async () => {
    if (generation !== state.render) return;
    try {
      const t = await api("GET", `/api/v1/tasks/${encodeURIComponent(id)}`);
      if (generation === state.render) draw(t);
    } catch (err) {
      show(err instanceof ApiError ? err.describe() : String(err));
    }
  });
  reload();

  const addEvent = (kind, data) => {
    if (kind.startsWith("stream.")) {
      timeline.append(el("tr", {}, el("td", {}, when(new Date().toISOString())), el("td", {}, kind), el("td", {}),
        el("td", {}), el("td", {}), el("td", {}), el("td", {}, data.message || data.reason || "")));
      return;
    }
    const detail = data.error ? `${data.error.code || ""} ${data.error.message || ""}`
      : data.progress !== undefined ? `${data.progress}% ${data.message || ""}` : "";
    timeline.append(el("tr", { "data-event": kind },
      el("td", {}, when(data.at || data.finished_at || data.started_at)), el("td", {}, kind),
      el("td", {}, data.run ?? ""), el("td", {}, data.attempt ?? ""), el("td", {}, data.stage ?? ""),
      el("td", { class: "mono" }, data.worker_id ?? ""), el("td", {}, detail)));
    if (kind === "task.progress" && task) progress.value = data.progress;
    reload();
  };
  // From the start of the event log's window: the history, then live events, on one stream.
  if (/^[0-9a-fA-F-]{32,36}$/.test(id)) openStream({ task_id: id, last_event_id: "0" }, addEvent);
  return reload;
}

function dlqView(main, generation) {
  const body = el("tbody", { id: "dlq-rows" });
  const depth = el("p", { id: "dlq-depth" });
  main.replaceChildren(el("h2", {}, "Dead letters"), depth, el("table", { id: "dlq" }, el("thead", {}, el("tr", {},
    ...["task", "type", "kb", "reason", "stage", "attempts", "last error", "dead at", ""].map((h) => el("th", {}, h)))), body));
  const load = async () => {
    if (generation !== state.render) return;
    try {
      const dlq = await api("GET", "/api/v1/dlq?limit=200");
      if (generation !== state.render) return;
      depth.textContent = `${dlq.depth} message(s) in tm.dead; the oldest ${dlq.items.length} shown.`;
      body.replaceChildren(...dlq.items.map((d) => el("tr", { "data-task-id": d.task_id },
        el("td", { class: "mono" }, d.task_id ? link(`view=task&id=${encodeURIComponent(d.task_id)}`, d.task_id) : "—"),
        el("td", {}, d.task_type ?? "—"), el("td", {}, d.kb_id ?? "—"), el("td", {}, d.reason ?? "—"),
        el("td", {}, d.stage ?? "—"), el("td", {}, d.attempts ?? "—"), el("td", {}, d.last_error ?? "—"),
        el("td", {}, when(d.dead_at)),
        el("td", {}, d.replayable && d.task_id ? el("button", { type: "button", class: "requeue", onclick: async () => {
          try {
            const report = await api("POST", "/api/v1/dlq/replay", { task_ids: [d.task_id] });
            show(report.replayed.length ? `Requeued ${d.task_id}.`
              : `Not requeued: ${report.skipped.map((s) => s.reason).join("; ")}`, "info");
          } catch (err) {
            show(err instanceof ApiError ? err.describe() : String(err));
          }
          reload();
        } }, "Requeue") : ""))));
    } catch (err) {
      show(err instanceof ApiError ? err.describe() : String(err));
    }
  };
  const reload = serialised(load);
  reload();
  openStream({}, (kind) => { if (kind === "task.failed" || kind === "task.queued") reload(); });
  return reload;
}

// ---- log in, routing, pause ---------------------------------------------------------------

function loginView(main, why) {
  closeStream();
  const input = el("input", { type: "password", id: "api-key", autocomplete: "off", size: 50, placeholder: "tmk_…" });
  const form = el("form", { id: "login" }, el("h2", {}, "API key"),
    el("p", {}, why),
    el("p", {}, "The key is kept in this tab only (sessionStorage) and sent as Authorization: Bearer."),
    input, " ", el("button", { type: "submit" }, "Use this key"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY_STORAGE, input.value.trim());
    start();
  });
  main.replaceChildren(form);
  input.focus();
}

let currentReload = null;

function route() {
  state.render += 1;
  const generation = state.render;
  closeStream();
  show("");
  const view = params().get("view") || "tasks";
  for (const a of document.querySelectorAll("[data-nav]")) a.classList.toggle("current", a.dataset.nav === view);
  const main = document.getElementById("main");
  if (view === "task") currentReload = taskView(main, generation);
  else if (view === "dlq") currentReload = dlqView(main, generation);
  else currentReload = tasksView(main, generation);
  setLive(state.paused ? "paused" : "connecting");
  clearInterval(state.viewTimer);
  if (!state.paused) state.viewTimer = setInterval(currentReload, VIEW_REFRESH_MS);
}

function togglePause() {
  state.paused = !state.paused;
  document.getElementById("pause").textContent = state.paused ? "Resume live updates" : "Pause live updates";
  if (state.paused) {
    closeStream();
    clearTimeout(state.queueTimer);
    clearInterval(state.viewTimer);
    setLive("paused");
  } else {
    route();  // reloads the view and reopens its stream
    startQueues();
  }
}

async function start() {
  const main = document.getElementById("main");
  try {
    state.identity = await api("GET", "/api/v1/me");
  } catch (err) {
    state.identity = null;
    if (err instanceof ApiError && err.status === 401) {
      const had = sessionStorage.getItem(KEY_STORAGE);
      sessionStorage.removeItem(KEY_STORAGE);
      loginView(main, had ? `That key was refused: ${err.message}` : "This server requires an API key.");
      return;
    }
    main.replaceChildren(el("p", {}, err instanceof ApiError ? err.describe() : String(err)));
    return;
  }
  const who = state.identity.anonymous ? "no key (AUTH_REQUIRED is off)"
    : `${state.identity.name}: ${state.identity.scopes.join(", ")}`;
  document.getElementById("who").textContent = who;
  document.getElementById("logout").hidden = !sessionStorage.getItem(KEY_STORAGE);
  route();
  startQueues();
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("pause").addEventListener("click", togglePause);
  document.getElementById("logout").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    closeStream();
    location.reload();
  });
  for (const a of document.querySelectorAll("[data-nav]")) {
    a.addEventListener("click", (e) => { e.preventDefault(); navigate(`view=${a.dataset.nav}`); });
  }
  window.addEventListener("popstate", route);
  // Leaving the page ends its stream now; left to the browser, the connection outlived the
  // page, and a few reloads used up the browser's six connections to the api.
  window.addEventListener("pagehide", closeStream);
  start();
});
