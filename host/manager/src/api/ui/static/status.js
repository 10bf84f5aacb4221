// plugvisor status page: lists the plugins from the REST API, follows the NDJSON event stream
// (fetch + ReadableStream, since EventSource cannot send Authorization), offers reload /
// unload / load, and hosts UI plugins' panels in sandboxed iframes with a narrow fetch bridge.
// Plain JavaScript, no build step; everything shown from the server goes through textContent.
"use strict";

(() => {
  const TOKEN_KEY = "plugvisor.token";
  const REFRESH_DEBOUNCE_MS = 150;
  const POLL_MS = 5000; // call counts change without events

  const BACKOFF_FIRST_MS = 500;
  const BACKOFF_MAX_MS = 10000;
  const EVENTS_KEPT = 12;
  const BRIDGE_BODY_MAX = 1 << 20;

  const state = {
    loaded: [],
    available: [],
    fetchedAt: 0,
    refreshTimer: null,
    refreshAvailable: false,
    stream: null, // AbortController of the event stream
    tokenWaiters: [],
  };

  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else node.setAttribute(name, value);
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  // ---- token ------------------------------------------------------------------------------

  function token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  function authHeaders(extra) {
    const headers = Object.assign({}, extra);
    const t = token();
    if (t) headers.Authorization = "Bearer " + t;
    return headers;
  }

  function askToken(refused) {
    const form = $("token-form");
    $("token-hint").textContent = refused
      ? "the server refused this token; enter the right one"
      : "this server needs its API token (kept in this tab only)";
    if (form.hidden) {
      form.hidden = false;
      $("token").focus();
    }
  }

  function waitForToken() {
    return new Promise((resolve) => state.tokenWaiters.push(resolve));
  }

  function onTokenSubmit(event) {
    event.preventDefault();
    const value = $("token").value.trim();
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    $("token").value = "";
    $("token-form").hidden = true;
    const waiters = state.tokenWaiters.splice(0);
    waiters.forEach((resolve) => resolve());
    scheduleRefresh();
  }

  // ---- API ---------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, kind, message) {
      super(message);
      this.status = status;
      this.kind = kind;
    }
  }

  async function api(method, path, body) {
    const init = { method, cache: "no-store", headers: authHeaders() };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const res = await fetch(path, init);
    const text = await res.text();
    let doc = null;
    try {
      doc = text ? JSON.parse(text) : null;
    } catch (_) {
      doc = null;
    }
    if (res.status === 401) askToken(Boolean(token()));
    if (!res.ok) {
      const err = (doc && doc.error) || {};
      throw new ApiError(res.status, err.kind || "http_" + res.status, err.message || text);
    }
    return doc;
  }

  function showMessage(text, info) {
    const box = $("message");
    box.textContent = text;
    box.className = info ? "info" : "";
    box.hidden = !text;
  }

  // ---- refresh and rendering ---------------------------------------------------------------

  // One refresh soon for any number of calls; `withAvailable` also re-reads the manifests
  // (GET /api/plugins/available reads them from disk), which only loads and unloads change.
  function scheduleRefresh(withAvailable) {
    state.refreshAvailable = state.refreshAvailable || withAvailable !== false;
    if (state.refreshTimer !== null) return;
    state.refreshTimer = setTimeout(() => {
      state.refreshTimer = null;
      const all = state.refreshAvailable;
      state.refreshAvailable = false;
      refresh(all);
    }, REFRESH_DEBOUNCE_MS);
  }

  async function refresh(withAvailable) {
    try {
      const [loaded, available] = await Promise.all([
        api("GET", "/api/plugins"),
        withAvailable ? api("GET", "/api/plugins/available") : null,
      ]);
      state.loaded = loaded.plugins;
      if (available) {
        state.available = available.plugins.filter((p) => !p.loaded);
        renderAvailable();
      }
      state.fetchedAt = performance.now();
      renderLoaded();
      renderPanels();
      document.body.dataset.refreshed = String(Date.now());
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 401)) {
        showMessage("cannot read the plugins: " + e.message);
      }
    }
  }

  function uptimeText(plugin) {
    if (plugin.uptime_secs === null || plugin.uptime_secs === undefined) return "–";
    const secs = plugin.uptime_secs + (performance.now() - state.fetchedAt) / 1000;
    const s = Math.floor(secs);
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
    return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
  }

  function routesCell(plugin) {
    if (!plugin.routes || plugin.routes.length === 0) return el("span", { class: "quiet", text: "–" });
    const list = el("ul", { class: "routes" });
    for (const r of plugin.routes) {
      const item = el("li", {}, el("code", { text: r.method + " " + r.path }));
      if (r.summary) item.title = r.summary;
      list.append(item);
    }
    return list;
  }

  function tasksCell(plugin) {
    if (Array.isArray(plugin.tasks) && plugin.tasks.length > 0) {
      const describe = (t) =>
        t.name + " (" + t.schedule + ", " + t.runs + " runs" + (t.last_outcome ? ", last " + t.last_outcome : "") + ")";
      return el("span", { text: plugin.tasks.map(describe).join("; ") });
    }
    return el("span", { class: "quiet", title: "no scheduled tasks", text: "–" });
  }

  function cell(field, content, cls) {
    const td = el("td", { "data-field": field });
    if (cls) td.className = cls;
    if (content instanceof Node) td.append(content);
    else td.textContent = content === null || content === undefined ? "–" : String(content);
    return td;
  }

  function actionButton(label, action, plugin) {
    const button = el("button", { type: "button", "data-action": action, text: label });
    button.addEventListener("click", () => act(button, action, plugin));
    return button;
  }

  function renderLoaded() {
    const body = document.querySelector("#plugins tbody");
    body.replaceChildren();
    for (const p of state.loaded) {
      const row = el("tr", { "data-plugin": p.name, "data-state": p.state });
      row.append(
        cell("name", p.name, "name"),
        cell("kind", p.kind),
        cell("version", p.version),
        cell("state", el("span", { class: "state " + p.state, text: p.state })),
        cell("pid", p.pid),
        cell("restarts", p.restarts, "num"),
        cell("uptime", uptimeText(p), "num"),
        cell("calls", p.calls_total, "num"),
        cell("errors", p.errors_total, p.errors_total > 0 ? "num errors some" : "num errors"),
        cell("routes", routesCell(p)),
        cell("tasks", tasksCell(p)),
        cell(
          "actions",
          el("span", {}, actionButton("reload", "reload", p.name), actionButton("unload", "unload", p.name))
        )
      );
      if (p.description) row.title = p.description;
      body.append(row);
      if (p.replicas > 1) body.append(...replicaRows(p));
    }
    $("no-plugins").hidden = state.loaded.length > 0;
  }

  // One row under a pooled plugin's row for each of its replicas: index, state, pid,
  // restarts and the calls in flight on it.
  function replicaRows(p) {
    return (p.workers || []).map((w) => {
      const row = el("tr", {
        class: "replica",
        "data-replica-of": p.name,
        "data-replica": String(w.index),
        "data-state": w.state,
      });
      const gap = (n) => el("td", { colspan: String(n) });
      row.append(
        cell("replica", "replica " + w.index, "name replica"),
        gap(2),
        cell("state", el("span", { class: "state " + w.state, text: w.state })),
        cell("pid", w.address ? w.pid + " @ " + w.address : w.pid),
        cell("restarts", w.restarts, "num"),
        gap(1),
        cell("in_flight", w.in_flight + " in flight", "num"),
        gap(4)
      );
      return row;
    });
  }

  function renderAvailable() {
    const body = document.querySelector("#available tbody");
    body.replaceChildren();
    for (const p of state.available) {
      const row = el("tr", { "data-plugin": p.name, "data-state": p.state });
      row.append(
        cell("name", p.name, "name"),
        cell("kind", p.kind),
        cell("version", p.version),
        cell("description", describeAvailable(p), p.last_error ? "desc errors some" : "desc"),
        cell("actions", actionButton("load", "load", p.name))
      );
      body.append(row);
    }
    $("available-section").hidden = state.available.length === 0;
  }

  // A plugin that could not start says why (serve degrades instead of dying).
  function describeAvailable(p) {
    return p.last_error ? p.state + ": " + p.last_error : p.description;
  }

  function tickUptimes() {
    for (const p of state.loaded) {
      const selector = 'tr[data-plugin="' + CSS.escape(p.name) + '"] td[data-field="uptime"]';
      const td = document.querySelector("#plugins " + selector);
      if (td) td.textContent = uptimeText(p);
    }
  }

  async function act(button, action, plugin) {
    button.disabled = true;
    try {
      if (action === "load") await api("POST", "/api/plugins/load", { plugin_id: plugin });
      else await api("POST", "/api/plugins/" + encodeURIComponent(plugin) + "/" + action);
      showMessage(action + " " + plugin + ": done", true);
    } catch (e) {
      showMessage(action + " " + plugin + ": " + e.message);
    } finally {
      button.disabled = false;
      scheduleRefresh();
    }
  }

  // ---- events ------------------------------------------------------------------------------

  function setLive(on, text) {
    const badge = $("live");
    badge.className = "live " + (on ? "on" : "off");
    badge.textContent = text;
  }

  function noteEvent(line) {
    let event;
    try {
      event = JSON.parse(line);
    } catch (_) {
      return null;
    }
    const when = new Date(event.at_ms || Date.now()).toLocaleTimeString();
    const list = $("events");
    list.prepend(el("li", { text: when + "  " + event.plugin + "  " + event.event }));
    while (list.children.length > EVENTS_KEPT) list.lastChild.remove();
    return event;
  }

  async function readLines(res, onLine) {
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffered = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffered += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, end).trim();
        buffered = buffered.slice(end + 1);
        if (line) onLine(line);
      }
    }
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  async function followEvents() {
    let delay = BACKOFF_FIRST_MS;
    for (;;) {
      try {
        state.stream = new AbortController();
        const res = await fetch("/api/plugins/events", {
          headers: authHeaders(),
          cache: "no-store",
          signal: state.stream.signal,
        });
        if (res.status === 401) {
          setLive(false, "needs the API token");
          askToken(Boolean(token()));
          await waitForToken();
          continue;
        }
        if (!res.ok || !res.body) throw new Error("HTTP " + res.status);
        setLive(true, "live");
        delay = BACKOFF_FIRST_MS;
        scheduleRefresh(); // whatever happened while we were away
        await readLines(res, (line) => {
          const event = noteEvent(line);
          const changesSet = event && /^(loaded|unloaded|reloaded)$/.test(event.event);
          scheduleRefresh(Boolean(changesSet));
        });
      } catch (_) {
        // The server went away or the stream broke: reconnect below.
      }
      setLive(false, "reconnecting in " + Math.round(delay / 100) / 10 + " s");
      await sleep(delay);
      delay = Math.min(delay * 2, BACKOFF_MAX_MS);
    }
  }

  // ---- UI plugins: panels and the fetch bridge --------------------------------------------

  function renderPanels() {
    const wanted = new Map();
    for (const p of state.loaded) if (p.ui) wanted.set(p.name, p.ui);
    for (const panel of document.querySelectorAll("section.panel")) {
      const ui = wanted.get(panel.dataset.panel);
      if (!ui || panel.parentElement.dataset.mount !== ui.mount_point) panel.remove();
      else wanted.delete(panel.dataset.panel);
    }
    for (const [name, ui] of wanted) {
      const mount = $("mount-" + ui.mount_point);
      if (!mount) continue;
      const frame = el("iframe", {
        sandbox: "allow-scripts",
        src: ui.url,
        title: name + " panel",
        referrerpolicy: "no-referrer",
        loading: "eager",
      });
      mount.append(el("section", { class: "panel", "data-panel": name }, el("h3", { text: name }), frame));
    }
  }

  function panelOf(source) {
    for (const frame of document.querySelectorAll("section.panel iframe")) {
      if (frame.contentWindow === source) return frame.closest("section.panel").dataset.panel;
    }
    return null;
  }

  // Only a plugin route (`/plugins/...`), GET or POST, a JSON body: never the API, the UI
  // assets or the metrics, and no path trick the server would resolve elsewhere.
  function checkBridgeRequest(msg) {
    const method = String(msg.method || "GET").toUpperCase();
    if (method !== "GET" && method !== "POST") return { error: "method must be GET or POST" };
    const path = msg.path;
    if (typeof path !== "string" || path.length > 2048) return { error: "path must be a string" };
    if (!path.startsWith("/plugins/")) return { error: "only plugin routes (/plugins/...) can be fetched" };
    if (/[\\#\s]|\/\/|%2e|%2f|%5c/i.test(path) || /\/\.\.?(\/|\?|$)/.test(path)) {
      return { error: "path holds a dot segment, an encoded separator or a character not allowed" };
    }
    const url = new URL(path, location.origin);
    if (url.origin !== location.origin || url.pathname + url.search !== path) {
      return { error: "path is not a plain plugin route path" };
    }
    let body;
    if (msg.body !== undefined && msg.body !== null) {
      if (method === "GET") return { error: "a GET has no body" };
      body = JSON.stringify(msg.body);
      if (body.length > BRIDGE_BODY_MAX) return { error: "body too large" };
    }
    return { method, url: url.pathname + url.search, body };
  }

  async function bridgeFetch(checked) {
    const headers = authHeaders({ Accept: "application/json" });
    if (checked.body !== undefined) headers["Content-Type"] = "application/json";
    const res = await fetch(checked.url, {
      method: checked.method,
      headers,
      body: checked.body,
      cache: "no-store",
      credentials: "omit",
      redirect: "error",
    });
    const text = await res.text();
    let body = text;
    try {
      body = JSON.parse(text);
    } catch (_) {
      // Not JSON: the text as it is.
    }
    return { status: res.status, body };
  }

  async function onMessage(event) {
    const msg = event.data;
    if (!msg || typeof msg !== "object" || msg.type !== "plugvisor.fetch") return;
    // Only our own sandboxed panels (opaque origin "null"), never another window.
    if (event.origin !== "null" || panelOf(event.source) === null) return;
    const answer = (status, body) =>
      event.source.postMessage({ type: "plugvisor.response", id: msg.id, status, body }, "*");
    const checked = checkBridgeRequest(msg);
    if (checked.error) {
      answer(400, { error: { kind: "bad_request", message: "bridge: " + checked.error } });
      return;
    }
    try {
      const { status, body } = await bridgeFetch(checked);
      answer(status, body);
    } catch (e) {
      answer(0, { error: { kind: "network", message: String(e) } });
    }
  }

  // ---- start -------------------------------------------------------------------------------

  function start() {
    $("token-form").addEventListener("submit", onTokenSubmit);
    window.addEventListener("message", onMessage);
    setInterval(tickUptimes, 1000);
    setInterval(() => {
      if (!document.hidden) scheduleRefresh(false);
    }, POLL_MS);
    refresh(true);
    followEvents();
  }

  start();
})();
