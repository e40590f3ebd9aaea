// The dexter-fleet dashboard: one module, no framework. It calls the JSON API with
// the session cookie; actions carry the session's CSRF token (X-CSRF-Token). Screens
// are addressed by the URL fragment (#/jobs, #/job/<id>, ...) and refresh every
// 2 seconds; a job's page also follows its live events (Server-Sent Events).

const REFRESH_MS = 2000;
const CHART_REFRESH_MS = 10000;
let session = null;
let timers = [];
let streams = [];

// ---- DOM and formatting helpers ----------------------------------------------------

// h("tag", {attr: value, onclick: fn}, child, ...): an element; text children are text nodes.
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function svg(tag, attrs, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const c of children.flat()) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

const view = () => document.getElementById("view");
const time = (ms) => (ms ? new Date(ms).toLocaleString() : "—");
const secs = (s) => (s === undefined || s === null ? "—" : `${Number(s).toFixed(1)} s`);
const short = (id) => (id ? id.slice(0, 8) + "…" + id.slice(-4) : "—");
const badge = (status) => h("span", { class: `status status-${status}`, "data-status": status }, status);
const isAdmin = () => session && session.role === "admin";
const isUuid = (s) => /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(s.trim());

function flash(message, good) {
  const el = document.getElementById("flash");
  el.textContent = message;
  el.className = good ? "good" : "bad";
}

function jobLink(id) {
  return h("a", { href: `#/job/${id}`, class: "mono", "data-job": id }, short(id));
}

function table(headers, rows, attrs) {
  return h("table", attrs || {},
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col" }, x)))),
    h("tbody", {}, rows.length ? rows : [h("tr", {}, h("td", { colspan: headers.length, class: "muted" }, "none"))]));
}

// ---- the API -----------------------------------------------------------------------

async function api(path, options = {}) {
  const method = options.method || "GET";
  const headers = { Accept: "application/json" };
  if (method !== "GET") {
    headers["X-CSRF-Token"] = session ? session.csrf : "";
    if (options.body !== undefined) headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
  });
  if (response.status === 401) {
    location.assign("/ui/login");
    throw new Error("logged out");
  }
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = { error: text }; }
  if (!response.ok) {
    const err = new Error((body && body.error) || `${response.status}`);
    err.status = response.status;
    throw err;
  }
  return body;
}

// Call `refresh` now and every `ms` while the screen is shown; errors go to the flash line.
function every(ms, refresh) {
  const run = async () => {
    try { await refresh(); } catch (e) { if (e.message !== "logged out") flash(e.message); }
  };
  run();
  timers.push(setInterval(run, ms));
}

// Ask before an action: a modal <dialog>; resolves true on Confirm.
function confirmAction(text) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
    document.getElementById("confirm-cancel").focus();
  });
}

// Run an action (admin only), report what happened.
async function act(label, call) {
  try {
    const out = await call();
    flash(`${label}: done`, true);
    return out;
  } catch (e) {
    flash(`${label}: ${e.message}`);
    return null;
  }
}

// ---- screens -----------------------------------------------------------------------

const screens = {};

screens.overview = (root) => {
  const stats = h("div", { class: "stats", id: "depths" });
  const chart = h("div", { id: "chart" });
  root.append(h("h1", {}, "Overview"), stats,
    h("h2", {}, "Throughput and failures per minute (last 30 minutes)"), chart);
  every(REFRESH_MS, async () => {
    const [q, workers, agents] = await Promise.all([api("/v1/queues"), api("/v1/workers"), api("/v1/agents")]);
    const r = q.research || {}, l = q.lifecycle || {};
    const cell = (label, value, id) => h("div", { class: "stat" },
      h("div", { class: "value", id }, value), h("div", { class: "label" }, label));
    stats.replaceChildren(
      cell("queued", (r.ready || 0) + (l.ready || 0), "stat-ready"),
      cell("running", (r.running || 0) + (l.running || 0), "stat-running"),
      cell("waiting to retry", (r.delayed || 0) + (l.delayed || 0), "stat-delayed"),
      cell("dead", (r.dead || 0) + (l.dead || 0), "stat-dead"),
      cell("live workers", workers.workers.filter((w) => w.live).length, "stat-workers"),
      cell("agents", agents.agents.length, "stat-agents"));
  });
  every(CHART_REFRESH_MS, async () => {
    // The per-minute counters the queue keeps (GET /v1/stats/history, Redis' clock).
    const history = await api(`/v1/stats/history?from=${Date.now() - 31 * 60000}`);
    chart.replaceChildren(throughputChart(history));
  });
};

// Bars per minute over the last 30 minutes: succeeded up, failed attempts down.
function throughputChart(history) {
  const minutes = 30, end = history.to - (history.to % 60000) + 60000, start = end - minutes * 60000;
  const ok = new Array(minutes).fill(0), bad = new Array(minutes).fill(0);
  let cost = 0;
  for (const m of history.minutes) {
    if (m.minute < start || m.minute >= end) continue;
    const i = Math.floor((m.minute - start) / 60000);
    ok[i] += m.succeeded;
    bad[i] += m.failed;
    cost += m.cost_usd;
  }
  const top = Math.max(1, ...ok, ...bad), W = 1000, H = 160, mid = 105, bw = W / minutes;
  const bars = [];
  for (let i = 0; i < minutes; i++) {
    const up = (ok[i] / top) * (mid - 10), down = (bad[i] / top) * (H - mid - 5);
    if (ok[i]) bars.push(svg("rect", { class: "ok", x: i * bw + 1, y: mid - up, width: bw - 2, height: up },
      svg("title", {}, `${ok[i]} succeeded`)));
    if (bad[i]) bars.push(svg("rect", { class: "bad", x: i * bw + 1, y: mid, width: bw - 2, height: down },
      svg("title", {}, `${bad[i]} failed`)));
  }
  const total = ok.reduce((a, b) => a + b, 0), failed = bad.reduce((a, b) => a + b, 0);
  return h("figure", {},
    svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img",
      "aria-label": `Last 30 minutes: ${total} succeeded, ${failed} failed` },
      svg("line", { class: "axis", x1: 0, x2: W, y1: mid, y2: mid }), bars,
      svg("text", { x: 2, y: 12 }, `max ${top}/min`), svg("text", { x: W - 40, y: H - 4 }, "now")),
    h("figcaption", { class: "legend" },
      h("span", { class: "ok" }, `${total} succeeded`), h("span", { class: "bad" }, `${failed} failed attempts`),
      h("span", { class: "cost" }, `$${cost.toFixed(2)} spent`)));
}

function recentBatches() {
  try { return JSON.parse(localStorage.getItem("fleet-batches") || "[]"); } catch { return []; }
}

screens.batches = (root) => {
  const list = h("div", { id: "batch-list" });
  const form = h("form", { class: "card", id: "batch-form" },
    h("h2", {}, "Submit a batch"),
    h("label", { for: "batch-queries" }, "Queries, one per line"),
    h("textarea", { id: "batch-queries", name: "queries", required: true }),
    h("div", { class: "actions" },
      h("label", { for: "batch-agent" }, "Agent profile (optional) "),
      h("input", { id: "batch-agent", name: "agent" }),
      h("button", { type: "submit", class: "primary", id: "batch-submit" }, "Submit batch")));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const agent = form.elements.agent.value.trim();
    const jobs = form.elements.queries.value.split("\n").map((q) => q.trim()).filter(Boolean)
      .map((query) => (agent ? { query, agent } : { query }));
    const out = await act("Submit batch", () => api("/v1/batches", { method: "POST", body: jobs }));
    if (out) {
      localStorage.setItem("fleet-batches", JSON.stringify([out.batch_id, ...recentBatches()].slice(0, 20)));
      location.hash = `#/batch/${out.batch_id}`;
    }
  });
  const open = h("form", { class: "inline", id: "batch-open" },
    h("label", {}, "Batch ID", h("input", { name: "id", id: "batch-id", required: true })),
    h("button", { type: "submit" }, "Open"));
  open.addEventListener("submit", (ev) => { ev.preventDefault(); location.hash = `#/batch/${open.elements.id.value.trim()}`; });
  root.append(h("h1", {}, "Batches"), isAdmin() ? form : "", open, h("h2", {}, "Submitted from this browser"), list);
  every(REFRESH_MS, async () => {
    const rows = [];
    for (const id of recentBatches()) {
      try {
        const b = await api(`/v1/batches/${id}`);
        rows.push(h("tr", {}, h("td", {}, h("a", { href: `#/batch/${id}`, class: "mono" }, short(id))),
          h("td", {}, h("progress", { max: b.total, value: b.finished }, `${b.finished}/${b.total}`)),
          h("td", { class: "num" }, `${b.finished}/${b.total}`),
          h("td", { class: "num" }, b.counts.succeeded), h("td", { class: "num" }, b.counts.dead)));
      } catch { /* expired */ }
    }
    list.replaceChildren(table(["batch", "progress", "finished", "succeeded", "dead"], rows));
  });
};

screens.batch = (root, id) => {
  const summary = h("div", { id: "batch-summary", class: "card" });
  const results = h("div", { id: "batch-results" });
  root.append(h("h1", {}, "Batch ", h("span", { class: "mono" }, id)), summary, h("h2", {}, "Results"), results);
  every(REFRESH_MS, async () => {
    const [b, page] = await Promise.all([api(`/v1/batches/${id}`), api(`/v1/batches/${id}/results?limit=200`)]);
    const done = b.finished >= b.total;
    summary.replaceChildren(
      h("label", { for: "batch-progress" }, `${b.finished} of ${b.total} finished`),
      h("progress", { id: "batch-progress", max: b.total, value: b.finished }),
      h("p", { id: "batch-state", "data-done": done ? "yes" : "no" }, done ? "All jobs finished." : "Running…"),
      h("dl", { class: "fields" }, Object.entries(b.counts).filter(([, n]) => n).flatMap(([k, n]) =>
        [h("dt", {}, k), h("dd", { "data-count": k }, n)])));
    results.replaceChildren(table(["job", "status", "query", "answer or error"],
      page.jobs.map((j) => h("tr", { "data-row": j.id }, h("td", {}, jobLink(j.id)), h("td", {}, badge(j.status)),
        h("td", {}, j.query || ""),
        h("td", {}, j.answer ? String(j.answer).slice(0, 200) : h("span", { class: "error" },
          j.error ? (j.error.message || JSON.stringify(j.error)) : ""))))));
  });
};

screens.jobs = (root) => {
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const form = h("form", { class: "inline", id: "job-filters", role: "search" },
    h("label", {}, "Status", h("select", { name: "status" },
      ["", "queued", "running", "retrying", "succeeded", "dead", "failed", "cancelled"].map((s) =>
        h("option", { value: s, selected: params.get("status") === s }, s || "any")))),
    h("label", {}, "Queue", h("select", { name: "queue" },
      ["", "research", "lifecycle"].map((s) => h("option", { value: s, selected: params.get("queue") === s }, s || "both")))),
    h("label", {}, "Batch", h("input", { name: "batch", value: params.get("batch") || "" })),
    h("label", {}, "Agent", h("input", { name: "agent", value: params.get("agent") || "" })),
    h("label", {}, "Job ID or query text", h("input", { name: "q", id: "job-search", value: params.get("q") || "" })),
    h("button", { type: "submit" }, "Filter"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const q = form.elements.q.value.trim();
    if (isUuid(q)) { location.hash = `#/job/${q}`; return; }
    const p = new URLSearchParams();
    for (const k of ["status", "queue", "batch", "agent", "q"]) if (form.elements[k].value.trim()) p.set(k, form.elements[k].value.trim());
    location.hash = `#/jobs?${p}`;
  });
  const out = h("div", { id: "job-list" });
  root.append(h("h1", {}, "Jobs"), form,
    h("p", { class: "help" }, "Text search looks through the newest 500 jobs that match the filters."), out);
  every(REFRESH_MS, async () => {
    const p = new URLSearchParams();
    for (const k of ["status", "queue", "batch", "agent"]) if (params.get(k)) p.set(k, params.get(k));
    const q = (params.get("q") || "").toLowerCase();
    p.set("limit", q ? "500" : "100");
    const page = await api(`/v1/jobs?${p}`);
    const jobs = q ? page.jobs.filter((j) => (j.query || j.operation || "").toLowerCase().includes(q)) : page.jobs;
    out.replaceChildren(table(["job", "status", "attempts", "agent", "query", "created", "last error"],
      jobs.map((j) => h("tr", { "data-row": j.id }, h("td", {}, jobLink(j.id)), h("td", {}, badge(j.status)),
        h("td", { class: "num" }, `${j.attempts}/${j.max_attempts}`), h("td", {}, j.agent_id || j.agent || ""),
        h("td", {}, j.query || j.operation || ""), h("td", {}, time(j.created_at)),
        h("td", { class: "error" }, j.error ? j.error.message || "" : "")))),
      page.truncated ? h("p", { class: "muted" }, `The scan stopped at ${page.scan_max} records per queue; narrow the filters.`) : "");
  });
};

// Fields of a result worth a line of their own: agent, sandbox time, tokens, cost.
function usageRows(result) {
  const rows = [];
  const walk = (obj, prefix) => {
    for (const [k, v] of Object.entries(obj || {})) {
      const name = prefix + k;
      if (v && typeof v === "object" && !Array.isArray(v)) walk(v, name + ".");
      else if (/agent|sandbox|token|cost|usage|turns|model|exit_code/i.test(name) && typeof v !== "object")
        rows.push([name, v]);
    }
  };
  walk(result, "");
  return rows;
}

screens.job = (root, id) => {
  const head = h("div", { id: "job-head", class: "card" });
  const actions = h("div", { class: "actions", id: "job-actions" });
  const attempts = h("div", { id: "job-attempts" });
  const result = h("div", { id: "job-result" });
  const events = h("ol", { class: "events", id: "job-events", "aria-live": "off" });
  root.append(h("h1", {}, "Job ", h("span", { class: "mono" }, id)), head, actions,
    h("h2", {}, "Attempts"), attempts, h("h2", {}, "Result"), result, h("h2", {}, "Live events"), events);
  const es = new EventSource(`/v1/jobs/${id}/events`);
  streams.push(es);
  es.onmessage = (ev) => events.append(h("li", {}, ev.data));
  for (const kind of ["attempt_started", "stdout", "stderr", "agent", "dropped", "attempt_ended", "end"]) {
    es.addEventListener(kind, (ev) => events.append(h("li", {}, `${kind}: ${ev.data}`)));
  }
  // The stream ends when the job does; EventSource would reconnect, so close it.
  es.addEventListener("end", () => es.close());
  es.onerror = () => { if (es.readyState === EventSource.CLOSED) events.append(h("li", { class: "muted" }, "stream closed")); };
  let shownActions = "";
  every(REFRESH_MS, async () => {
    const j = await api(`/v1/jobs/${id}`);
    const spec = j.spec || {};
    const payload = spec.payload || spec;
    head.replaceChildren(h("dl", { class: "fields" },
      h("dt", {}, "status"), h("dd", { id: "job-status" }, badge(j.status)),
      h("dt", {}, "queue"), h("dd", {}, j.queue || ""),
      h("dt", {}, "query"), h("dd", {}, payload.query || JSON.stringify(payload)),
      h("dt", {}, "attempts"), h("dd", {}, `${j.attempts} of ${j.max_attempts}`),
      h("dt", {}, "batch"), h("dd", {}, j.batch ? h("a", { href: `#/batch/${j.batch}` }, j.batch) : "—"),
      h("dt", {}, "created"), h("dd", {}, time(j.created_at)),
      h("dt", {}, "finished"), h("dd", {}, time(j.finished_at)),
      h("dt", {}, "worker"), h("dd", {}, j.worker || "—"),
      j.error ? [h("dt", {}, "last error"), h("dd", { class: "error" }, `${j.error.class || ""}: ${j.error.message || ""}`)] : ""));
    const wanted = isAdmin() ? `${j.status}` : "";
    if (wanted !== shownActions) {
      shownActions = wanted;
      actions.replaceChildren();
      if (isAdmin() && ["queued", "running", "retrying"].includes(j.status)) {
        actions.append(h("button", { type: "button", id: "job-cancel", onclick: async () => {
          if (await confirmAction(`Cancel job ${id}?`)) await act("Cancel", () => api(`/v1/jobs/${id}/cancel`, { method: "POST" }));
        } }, "Cancel job"));
      }
      if (isAdmin() && j.status === "dead") {
        actions.append(h("button", { type: "button", id: "job-retry", class: "primary", onclick: async () => {
          if (await confirmAction(`Retry dead job ${id}?`)) await act("Retry", () => api("/v1/dead/retry", { method: "POST", body: { ids: [id] } }));
        } }, "Retry"));
      }
    }
    attempts.replaceChildren(table(["#", "worker", "started", "took", "outcome", "error"],
      (j.history || []).map((a) => h("tr", { "data-attempt": a.attempt },
        h("td", { class: "num" }, a.attempt), h("td", {}, a.worker || ""), h("td", {}, time(a.started_at)),
        h("td", { class: "num" }, a.ended_at && a.started_at ? secs((a.ended_at - a.started_at) / 1000) : "—"),
        h("td", {}, badge(a.outcome)), h("td", { class: "error attempt-error" }, a.error || ""))),
      { id: "attempts-table" }));
    if (j.result) {
      const answer = typeof j.result === "object" ? j.result.answer : j.result;
      result.replaceChildren(
        h("dl", { class: "fields", id: "job-usage" }, usageRows(j.result).flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))])),
        h("pre", { id: "job-answer" }, answer === undefined ? JSON.stringify(j.result, null, 2) : String(answer)));
    } else {
      result.replaceChildren(h("p", { class: "muted" }, "No result yet."));
    }
  });
};

screens.dead = (root) => {
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const filter = {};
  if (params.get("queue")) filter.queue = params.get("queue");
  if (params.get("class")) filter.class = params.get("class");
  const form = h("form", { class: "inline", id: "dead-filters" },
    h("label", {}, "Queue", h("select", { name: "queue" },
      ["", "research", "lifecycle"].map((s) => h("option", { value: s, selected: filter.queue === s }, s || "both")))),
    h("label", {}, "Error class", h("input", { name: "class", value: filter.class || "", placeholder: "permanent, transient, timeout…" })),
    h("button", { type: "submit" }, "Filter"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const p = new URLSearchParams();
    for (const k of ["queue", "class"]) if (form.elements[k].value.trim()) p.set(k, form.elements[k].value.trim());
    location.hash = `#/dead?${p}`;
  });
  const selected = new Set();
  let shown = [];
  const list = h("div", { id: "dead-list" });
  const count = h("span", { id: "dead-selected", "aria-live": "polite" }, "0 selected");
  const retrySel = h("button", { type: "button", id: "dead-retry-selected", class: "primary", disabled: true }, "Retry selected");
  const purgeSel = h("button", { type: "button", id: "dead-purge-selected", class: "danger", disabled: true }, "Purge selected");
  const retryAll = h("button", { type: "button", id: "dead-retry-filter" }, "Retry all matching");
  const purgeAll = h("button", { type: "button", id: "dead-purge-filter", class: "danger" }, "Purge all matching");
  const update = () => {
    count.textContent = `${selected.size} selected`;
    retrySel.disabled = purgeSel.disabled = selected.size === 0;
  };
  const run = async (verb, body, what) => {
    if (!(await confirmAction(`${verb} ${what}?${verb === "Purge" ? " Purged jobs are gone for good." : ""}`))) return;
    const out = await act(verb, () => api(`/v1/dead/${verb.toLowerCase()}`, { method: "POST", body }));
    if (out) {
      flash(`${verb}: ${out.requeued ?? out.purged} job(s)${out.truncated ? " (more match: run it again)" : ""}`, true);
      selected.clear();
      update();
    }
  };
  retrySel.addEventListener("click", () => run("Retry", { ids: [...selected] }, `${selected.size} selected dead job(s)`));
  purgeSel.addEventListener("click", () => run("Purge", { ids: [...selected] }, `${selected.size} selected dead job(s)`));
  retryAll.addEventListener("click", () => run("Retry", { filter }, "every dead job matching the filter"));
  purgeAll.addEventListener("click", () => run("Purge", { filter }, "every dead job matching the filter"));
  root.append(h("h1", {}, "Dead letters"), form,
    isAdmin() ? h("div", { class: "actions" }, retrySel, purgeSel, retryAll, purgeAll, count) : "", list);
  every(REFRESH_MS, async () => {
    const p = new URLSearchParams(filter);
    p.set("limit", "200");
    const page = await api(`/v1/dead?${p}`);
    shown = page.jobs.map((j) => j.id);
    for (const id of [...selected]) if (!shown.includes(id)) selected.delete(id);
    update();
    const headers = ["job", "queue", "died", "attempts", "reason"];
    list.replaceChildren(h("p", { class: "muted", id: "dead-total" }, `${page.total} dead`),
      table(isAdmin() ? ["select", ...headers] : headers, page.jobs.map((j) => h("tr", { "data-row": j.id },
        isAdmin() ? h("td", {}, h("input", { type: "checkbox", "aria-label": `select ${j.id}`, "data-select": j.id,
          checked: selected.has(j.id), onchange: (ev) => { ev.target.checked ? selected.add(j.id) : selected.delete(j.id); update(); } })) : "",
        h("td", {}, jobLink(j.id)), h("td", {}, j.queue), h("td", {}, time(j.died_at)),
        h("td", { class: "num" }, j.attempts ?? "—"), h("td", { class: "error" }, j.reason || "")))));
  });
};

screens.agents = (root) => {
  const list = h("div", { id: "agent-list" });
  const launch = h("form", { class: "inline", id: "agent-launch" },
    h("label", {}, "Profile", h("input", { name: "agent", placeholder: "default" })),
    h("label", {}, h("span", {}, "Persistent"), h("input", { type: "checkbox", name: "persistent" })),
    h("button", { type: "submit" }, "Launch agent"));
  launch.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = { persistent: launch.elements.persistent.checked };
    if (launch.elements.agent.value.trim()) body.agent = launch.elements.agent.value.trim();
    await act("Launch", () => api("/v1/agents", { method: "POST", body }));
  });
  const scale = h("form", { class: "inline", id: "pool-scale" },
    h("label", {}, "Pool size", h("input", { name: "size", type: "number", min: 0, required: true })),
    h("label", {}, "Profile", h("input", { name: "agent", placeholder: "default" })),
    h("button", { type: "submit" }, "Scale pool"));
  scale.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = { size: Number(scale.elements.size.value) };
    if (scale.elements.agent.value.trim()) body.agent = scale.elements.agent.value.trim();
    if (await confirmAction(`Scale the pool to ${body.size}?`)) await act("Scale", () => api("/v1/pool/scale", { method: "POST", body }));
  });
  root.append(h("h1", {}, "Agents and pool"), isAdmin() ? h("div", { class: "card" }, launch, scale) : "", list);
  const button = (a, verb) => h("button", { type: "button", onclick: async () => {
    if (await confirmAction(`${verb} agent ${a.agent_id}?`))
      await act(verb, () => api(`/v1/agents/${a.agent_id}/${verb.toLowerCase()}`, { method: "POST" }));
  } }, verb);
  every(REFRESH_MS, async () => {
    const out = await api("/v1/agents");
    const headers = ["agent", "profile", "state", "jobs served", "active", "paused", "cost", "worker", "health"];
    list.replaceChildren(table(isAdmin() ? [...headers, "actions"] : headers, out.agents.map((a) => h("tr", { "data-row": a.agent_id },
      h("td", { class: "mono" }, a.agent_id), h("td", {}, a.profile), h("td", {}, badge(a.state)),
      h("td", { class: "num" }, a.jobs_served), h("td", { class: "num" }, secs(a.active_secs)),
      h("td", { class: "num" }, secs(a.paused_secs)),
      h("td", { class: "num", "data-cost": a.agent_id }, `$${(a.cost_usd || 0).toFixed(4)}`),
      h("td", {}, a.worker || "—"), h("td", {}, a.health || ""),
      isAdmin() ? h("td", {}, button(a, "Pause"), " ", button(a, "Resume"), " ", button(a, "Terminate")) : ""))));
  });
};

screens.workers = (root) => {
  const list = h("div", { id: "worker-list" });
  root.append(h("h1", {}, "Workers"), list);
  every(REFRESH_MS, async () => {
    const out = await api("/v1/workers");
    list.replaceChildren(table(["worker", "live", "running jobs"], out.workers.map((w) => h("tr", { "data-row": w.name },
      h("td", { class: "mono" }, w.name), h("td", {}, w.live ? "yes" : "no"),
      h("td", {}, w.leases.length ? w.leases.map((l) => h("span", {}, jobLink(l.job), " ")) : "—")))));
  });
};

// ---- routing -----------------------------------------------------------------------

function route() {
  timers.forEach(clearInterval);
  timers = [];
  streams.forEach((s) => s.close());
  streams = [];
  const hash = location.hash.replace(/^#\/?/, "") || "overview";
  const [path] = hash.split("?");
  const [name, arg] = path.split("/");
  const screen = screens[name] || screens.overview;
  const nav = { batch: "batches", job: "jobs" }[name] || name;
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav === nav) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  const root = view();
  root.replaceChildren();
  root.dataset.screen = name;
  screen(root, arg ? decodeURIComponent(arg) : undefined);
  document.title = `${root.querySelector("h1")?.textContent || "dashboard"} · dexter-fleet`;
  root.focus({ preventScroll: true });
}

async function start() {
  try {
    session = await api("/ui/session");
  } catch {
    return;
  }
  document.getElementById("who").textContent = `${session.name} (${session.role === "admin" ? "admin" : "read-only"})`;
  document.body.dataset.role = session.role;
  document.getElementById("logout").addEventListener("click", async () => {
    await fetch("/ui/logout", { method: "POST", headers: { "X-CSRF-Token": session.csrf }, credentials: "same-origin" });
    location.assign("/ui/login");
  });
  window.addEventListener("hashchange", () => { flash(""); route(); });
  route();
}

start();
