// echo-panel: polls the echo plugin's GET /plugins/echo/recent every second through the
// status page's bridge (this frame is sandboxed: it has no token and cannot call the API
// itself) and lists the outputs, newest first.
"use strict";

(() => {
  const ROUTE = "/plugins/echo/recent";
  const EVERY_MS = 1000;
  const TIMEOUT_MS = 5000;
  const pending = new Map();
  let nextId = 1;

  // One request through the page: {type: "plugvisor.fetch", id, method, path, body}.
  function bridge(method, path, body) {
    return new Promise((resolve, reject) => {
      const id = "echo-panel-" + nextId++;
      pending.set(id, resolve);
      parent.postMessage({ type: "plugvisor.fetch", id, method, path, body }, "*");
      setTimeout(() => {
        if (pending.delete(id)) reject(new Error("the page did not answer"));
      }, TIMEOUT_MS);
    });
  }

  window.addEventListener("message", (event) => {
    const msg = event.data;
    if (event.source !== parent || !msg || msg.type !== "plugvisor.response") return;
    const resolve = pending.get(msg.id);
    if (resolve) {
      pending.delete(msg.id);
      resolve(msg);
    }
  });

  function showStatus(text, error) {
    const status = document.getElementById("status");
    status.textContent = text;
    status.className = error ? "status error" : "status";
  }

  function render(recent) {
    const list = document.getElementById("outputs");
    list.replaceChildren();
    for (const entry of recent.outputs) {
      const item = document.createElement("li");
      item.dataset.n = String(entry.n);
      const n = document.createElement("span");
      n.className = "n";
      n.textContent = "#" + entry.n;
      const code = document.createElement("code");
      code.textContent = JSON.stringify(entry.output);
      item.append(n, code);
      list.append(item);
    }
    const all = recent.total === 1 ? "1 output in all" : recent.total + " outputs in all";
    showStatus(recent.total === 0 ? "echo has no outputs yet" : all);
  }

  async function poll() {
    try {
      const answer = await bridge("GET", ROUTE);
      if (answer.status === 200) render(answer.body);
      else {
        const why = (answer.body && answer.body.error && answer.body.error.message) || "";
        showStatus("echo answered " + answer.status + " " + why, true);
      }
    } catch (e) {
      showStatus(String(e.message || e), true);
    }
    setTimeout(poll, EVERY_MS);
  }

  poll();
})();
