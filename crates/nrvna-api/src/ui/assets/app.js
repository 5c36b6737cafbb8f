// The nrvna dashboard: one script draws every page from the data endpoints
// under /ui/api/. Everything shown may be untrusted text (prompts, model
// output, error lines): it is only ever set as text (createElement,
// textContent, setAttribute on known-safe attributes), never as HTML.
"use strict";

const SVGNS = "http://www.w3.org/2000/svg";

// el("div", {class: "x"}, "text", child, ...): strings become text nodes.
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") e.textContent = String(v);
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const k of kids.flat(Infinity)) {
    if (k === null || k === undefined || k === false) continue;
    e.append(typeof k === "string" || typeof k === "number" ? document.createTextNode(String(k)) : k);
  }
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  return e;
}

const main = () => document.getElementById("main");
function show(...nodes) { main().replaceChildren(...nodes); }

async function getJSON(url) {
  const r = await fetch(url, { headers: { Accept: "application/json" } });
  const body = await r.json().catch(() => null);
  if (!r.ok) throw new Error((body && body.error && body.error.message) || ("HTTP " + r.status));
  return body;
}

async function postJSON(url, data) {
  const r = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify(data || {}),
  });
  const body = await r.json().catch(() => null);
  if (!r.ok) throw new Error((body && body.error && body.error.message) || ("HTTP " + r.status));
  return body;
}

function stateBadge(s) { return el("span", { class: "state " + s, "data-state": s }, s); }
function jobLink(id) { return el("a", { href: "/ui/job/" + encodeURIComponent(id), class: "job-link" }, id); }
function when(unix) { return unix ? new Date(unix * 1000).toISOString().replace("T", " ").slice(0, 19) : "—"; }
function secs(s) {
  if (s === null || s === undefined) return "—";
  if (s < 90) return Math.round(s) + " s";
  if (s < 5400) return Math.round(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}
function fail(where, e) { return el("p", { class: "error", role: "alert" }, where + ": " + e.message); }

// ---- Overview -------------------------------------------------------------

function chart(title, xs, ys, unit) {
  const W = 320, H = 120, P = 4;
  const box = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img" });
  box.append(svg("line", { class: "axis", x1: 0, y1: H - P, x2: W, y2: H - P }));
  const pts = ys.map((y, i) => [i, y]).filter(([, y]) => y !== null && y !== undefined);
  const max = Math.max(1e-9, ...pts.map(([, y]) => y));
  if (pts.length > 0) {
    const n = Math.max(1, ys.length - 1);
    const coords = pts.map(([i, y]) => `${((i / n) * W).toFixed(1)},${(H - P - (y / max) * (H - 2 * P - 12)).toFixed(1)}`);
    box.append(svg("polyline", { class: "line", points: coords.join(" ") }));
  }
  const top = svg("text", { x: 4, y: 12 });
  top.textContent = "max " + (Math.round(max * 100) / 100) + " " + unit;
  box.append(top);
  const last = pts.length ? pts[pts.length - 1][1] : null;
  return el("div", { class: "chart" },
    el("div", {}, el("strong", {}, title), " ", el("span", { class: "muted" }, last === null ? "—" : `${last} ${unit} now`)),
    box,
    el("div", { class: "muted" }, xs.length ? `last ${Math.round((xs[xs.length - 1] - xs[0]) / 60)} min` : "no samples yet"));
}

function renderOverview(v) {
  const c = v.counts, p = v.queued_by_priority, d = v.daemon;
  const card = (id, n, label) => el("div", { class: "card" }, el("div", { class: "n", id }, String(n)), el("div", { class: "l" }, label));
  const members = v.members.length
    ? el("table", { id: "members" },
        el("tr", {}, ["member", "host", "model", "state", "heartbeat age", "running jobs"].map((h) => el("th", {}, h))),
        v.members.map((m) => el("tr", {},
          el("td", {}, m.member), el("td", {}, m.host), el("td", {}, m.model), el("td", {}, m.state),
          el("td", {}, m.heartbeat_age_s === null ? "—" : m.heartbeat_age_s + " s"), el("td", {}, String(m.running)))))
    : el("table", { id: "members" },
        el("tr", {}, ["daemon", "host", "model", "engine", "workers", "running jobs"].map((h) => el("th", {}, h))),
        el("tr", {}, el("td", {}, d.status + (d.pid ? ` (pid ${d.pid})` : "")), el("td", {}, d.host || "—"),
          el("td", {}, d.model || "—"), el("td", {}, d.engine || "—"), el("td", {}, d.workers === undefined ? "—" : String(d.workers)),
          el("td", {}, d.running === undefined ? "—" : String(d.running))));
  const s = v.series;
  show(
    el("h1", {}, "Overview"),
    el("div", { class: "cards", id: "counts" },
      card("count-queued", c.queued, "queued"), card("count-running", c.running, "running"),
      card("count-done", c.done, "done"), card("count-failed", c.failed, "failed"),
      card("drain", secs(v.drain_s), "time to drain")),
    el("h2", {}, "Queued by priority"),
    el("div", { class: "cards" }, card("prio-high", p.high, "high"), card("prio-normal", p.normal, "normal"), card("prio-low", p.low, "low")),
    el("h2", {}, v.members.length ? "Members" : "Daemon"),
    members,
    el("h2", {}, "Over time"),
    el("div", { class: "charts" },
      chart("Throughput", s.at, s.jobs_per_min, "jobs/min"),
      chart("Tokens", s.at, s.tokens_per_s, "tokens/s"),
      chart("Queue wait", s.at, s.wait_s, "s")));
  document.body.dataset.ready = "1";
}

function overview() {
  const es = new EventSource("/ui/api/events");
  es.addEventListener("overview", (m) => renderOverview(JSON.parse(m.data)));
  window.addEventListener("pagehide", () => es.close());
}

// ---- Jobs -----------------------------------------------------------------

function jobs() {
  const q = new URLSearchParams(location.search);
  const field = (name, label, kids) => el("label", {}, label, kids
    ? el("select", { name }, kids.map((k) => el("option", { value: k, selected: q.get(name) === k }, k || "any")))
    : el("input", { name, value: q.get(name) || "", size: name === "q" ? 24 : 12 }));
  const form = el("form", { class: "filters", id: "filters" },
    field("state", "state", ["", "queued", "running", "done", "failed"]),
    field("type", "type", ["", "text", "embed", "vision", "stt", "tts"]),
    field("tag", "tag"), field("model", "model"), field("q", "prompt contains"),
    el("button", { type: "submit" }, "Filter"));
  const out = el("div", { id: "jobs-out" }, el("p", { class: "muted" }, "Loading…"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const n = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (v) n.set(k, v);
    history.replaceState(null, "", "/ui/jobs" + (n.toString() ? "?" + n : ""));
    load(0);
  });
  show(el("h1", {}, "Jobs"), form, out);
  const limit = 50;
  async function load(offset) {
    const p = new URLSearchParams(location.search);
    p.set("offset", offset); p.set("limit", limit);
    let v;
    try { v = await getJSON("/ui/api/jobs?" + p); } catch (e) { out.replaceChildren(fail("loading jobs", e)); return; }
    const table = el("table", { id: "jobs" },
      el("tr", {}, ["id", "state", "type", "priority", "model", "tags", "submitted", "prompt"].map((h) => el("th", {}, h))),
      v.rows.map((r) => el("tr", { "data-id": r.id },
        el("td", { class: "id" }, jobLink(r.id)), el("td", {}, stateBadge(r.state)), el("td", {}, r.type || "—"),
        el("td", {}, r.priority || "—"), el("td", {}, r.model || "—"), el("td", {}, (r.tags || []).join(", ")),
        el("td", { class: "when" }, when(r.submitted)), el("td", { class: "prompt", title: r.prompt || "" }, r.prompt || ""))));
    const note = v.read < v.total ? ` (indexing: ${v.read} of ${v.total} jobs read; filters other than state see those)` : "";
    out.replaceChildren(
      el("p", { class: "muted", id: "jobs-count" }, `${v.matched} matching of ${v.total} jobs${note}`),
      table,
      el("div", { class: "pager" },
        el("button", { type: "button", disabled: offset === 0, onclick: () => load(Math.max(0, offset - limit)) }, "Newer"),
        el("span", {}, `${v.matched ? offset + 1 : 0}–${offset + v.rows.length}`),
        el("button", { type: "button", disabled: offset + limit >= v.matched, onclick: () => load(offset + limit) }, "Older")));
    window.__jobsRendered = performance.now();
    document.body.dataset.ready = "1";
  }
  load(0);
}

// ---- One job --------------------------------------------------------------

function sparkline(values) {
  const W = 480, H = 60;
  const box = svg("svg", { class: "spark", viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", id: "sparkline" });
  const lo = Math.min(...values), hi = Math.max(...values), span = hi - lo || 1, n = Math.max(1, values.length - 1);
  box.append(svg("polyline", { points: values.map((y, i) => `${((i / n) * W).toFixed(1)},${(H - 4 - ((y - lo) / span) * (H - 8)).toFixed(1)}`).join(" ") }));
  return box;
}

async function job(id) {
  let v;
  try { v = await getJSON("/ui/api/job/" + encodeURIComponent(id)); } catch (e) { show(el("h1", {}, "Job " + id), fail("loading the job", e)); return; }
  const live = v.state === "queued" || v.state === "running";
  const status = el("p", { class: "error", id: "action-error" });
  const actions = el("div", { class: "row" },
    live && el("button", { type: "button", class: "danger", id: "cancel", onclick: async (ev) => {
      ev.target.disabled = true;
      try { await postJSON(`/ui/api/job/${encodeURIComponent(id)}/cancel`); } catch (e) { status.textContent = "cancel: " + e.message; ev.target.disabled = false; }
    } }, "Cancel"),
    el("button", { type: "button", id: "resubmit", onclick: async () => {
      try { const r = await postJSON(`/ui/api/job/${encodeURIComponent(id)}/resubmit`); location.assign("/ui/job/" + encodeURIComponent(r.id)); }
      catch (e) { status.textContent = "resubmit: " + e.message; }
    } }, "Resubmit as a new job"));
  const m = v.meta || {};
  const facts = el("dl", { id: "facts" },
    [["state", stateBadge(v.state)], ["type", v.type], ["submitted", when(v.submitted)],
     ["completed", m.completed_at || "—"], ["duration", m.duration_s === undefined ? "—" : m.duration_s + " s"],
     ["model", m.model || (v.params && v.params.model) || "—"],
     ["prompt tokens", m.prompt_tokens === undefined ? "—" : String(m.prompt_tokens)],
     ["generated tokens", m.generated_tokens === undefined ? "—" : String(m.generated_tokens)],
     ["finish reason", m.finish_reason || "—"], ["tags", (m.tags || []).join(", ") || "—"],
     ["queue position", v.position === undefined ? "—" : String(v.position)],
     ["parent", v.parent ? jobLink(v.parent) : "—"],
     ["children", v.children.length ? v.children.map((c) => [jobLink(c.id), " "]) : "—"]]
      .map(([k, val]) => [el("dt", {}, k), el("dd", { id: "fact-" + k.replace(/ /g, "-") }, val)]));
  const parts = [el("h1", {}, "Job ", el("span", { id: "job-id" }, v.id)), actions, status, facts];
  if (v.error) parts.push(el("h2", {}, "Error"), el("pre", { class: "light", id: "error" }, v.error));
  parts.push(el("h2", {}, "Prompt"), el("pre", { class: "light", id: "prompt" }, v.prompt || ""));
  if (v.system) parts.push(el("h2", {}, "System"), el("pre", { class: "light", id: "system" }, v.system));
  if (Object.keys(v.params || {}).length) parts.push(el("h2", {}, "Parameters"), el("pre", { class: "light", id: "params" }, JSON.stringify(v.params, null, 2)));
  if (v.schema) parts.push(el("h2", {}, "Schema"), el("pre", { class: "light" }, v.schema));
  for (const name of v.images || []) {
    parts.push(el("h2", {}, "Image"), el("img", { class: "preview", alt: name, src: `/ui/api/job/${encodeURIComponent(id)}/image/${encodeURIComponent(name)}` }));
  }
  if (v.artifact === "audio") {
    parts.push(el("h2", {}, "Audio"), el("audio", { controls: true, id: "audio", preload: "auto", src: `/ui/api/job/${encodeURIComponent(id)}/audio` }));
  }
  if (v.embedding) {
    parts.push(el("h2", {}, "Embedding"), el("p", { id: "embedding-dim" }, `dimension ${v.embedding.dimension}`), sparkline(v.embedding.sample));
  }
  const label = v.artifact === "transcript" ? "Transcript" : v.state === "failed" ? "Partial output" : "Result";
  const text = v.result !== undefined && v.result !== null ? v.result : (v.partial || "");
  const result = el("pre", { id: "result" }, text);
  if (v.type !== "tts" && v.type !== "embed") parts.push(el("h2", {}, label), result);
  const progress = el("p", { class: "muted", id: "progress" }, v.progress ? `${v.progress.tokens} tokens` : "");
  parts.push(progress);
  show(...parts);
  document.body.dataset.ready = "1";
  if (!live) return;
  const es = new EventSource(`/ui/api/job/${encodeURIComponent(id)}/events`);
  let streamed = "";
  es.addEventListener("text", (m) => {
    streamed += JSON.parse(m.data).text;
    if (streamed.length >= result.textContent.length) result.textContent = streamed;
  });
  es.addEventListener("progress", (m) => { progress.textContent = JSON.parse(m.data).tokens + " tokens"; });
  es.addEventListener("state", (m) => {
    const b = document.querySelector("#facts [data-state]");
    if (b && m.data !== "gone") { b.textContent = m.data; b.className = "state " + m.data; b.dataset.state = m.data; }
  });
  es.addEventListener("end", () => { es.close(); job(id); });
  window.addEventListener("pagehide", () => es.close());
}

// ---- Batches --------------------------------------------------------------

function progressBar(done, total) {
  const pct = total ? Math.round((100 * done) / total) : 0;
  return el("div", { class: "bar", title: pct + "%" }, el("div", { style: null, "data-pct": pct }));
}

async function batches() {
  let v;
  try { v = await getJSON("/ui/api/batches"); } catch (e) { show(el("h1", {}, "Batches"), fail("loading batches", e)); return; }
  const dl = (fileId, label) => fileId ? el("a", { href: "/ui/api/files/" + encodeURIComponent(fileId), download: "" }, label) : "";
  const gw = v.gateway.length
    ? el("table", { id: "gateway-batches" },
        el("tr", {}, ["batch", "status", "progress", "completed", "failed", "total", "errors", "files"].map((h) => el("th", {}, h))),
        v.gateway.map((b) => {
          const c = b.request_counts || {};
          const errs = ((b.errors && b.errors.data) || []).map((e) => e.message).join("; ");
          return el("tr", {}, el("td", {}, b.id), el("td", {}, b.status),
            el("td", {}, progressBar((c.completed || 0) + (c.failed || 0), c.total || 0)),
            el("td", {}, String(c.completed || 0)), el("td", {}, String(c.failed || 0)), el("td", {}, String(c.total || 0)),
            el("td", {}, errs || "—"), el("td", {}, dl(b.output_file_id, "output"), " ", dl(b.error_file_id, "errors")));
        }))
    : el("p", { class: "muted" }, "No batches through the gateway (POST /v1/batches).");
  const tagDl = (tag, part, n) => n ? el("a", { href: `/ui/api/tag/${encodeURIComponent(tag)}?part=${part}`, download: "" }, part) : "";
  const tags = v.tags.length
    ? el("table", { id: "tag-batches" },
        el("tr", {}, ["tag", "progress", "queued", "running", "done", "failed", "files"].map((h) => el("th", {}, h))),
        v.tags.map((t) => {
          const total = t.queued + t.running + t.done + t.failed;
          return el("tr", {}, el("td", {}, el("a", { href: "/ui/jobs?tag=" + encodeURIComponent(t.tag) }, t.tag)),
            el("td", {}, progressBar(t.done + t.failed, total)),
            el("td", {}, String(t.queued)), el("td", {}, String(t.running)), el("td", {}, String(t.done)), el("td", {}, String(t.failed)),
            el("td", {}, tagDl(t.tag, "output", t.done), " ", tagDl(t.tag, "errors", t.failed)));
        }))
    : el("p", { class: "muted" }, "No wrk --batch batches.");
  show(el("h1", {}, "Batches"), el("h2", {}, "Gateway batches"), gw, el("h2", {}, "wrk --batch"), tags);
  // Widths set through the CSSOM (allowed by the CSP, unlike style attributes).
  for (const b of document.querySelectorAll(".bar > div")) b.style.width = b.dataset.pct + "%";
  document.body.dataset.ready = "1";
}

// ---- Submit ---------------------------------------------------------------

function submit() {
  const err = el("p", { class: "error", id: "submit-error", role: "alert" });
  const form = el("form", { class: "submit", id: "submit-form" },
    el("label", {}, "prompt", el("textarea", { name: "prompt", required: true })),
    el("label", {}, "system", el("textarea", { name: "system" })),
    el("div", { class: "row" },
      el("label", {}, "type", el("select", { name: "type" }, ["text", "embed"].map((t) => el("option", { value: t }, t)))),
      el("label", {}, "model", el("input", { name: "model", placeholder: "the served one" })),
      el("label", {}, "priority", el("select", { name: "priority" }, ["normal", "high", "low"].map((t) => el("option", { value: t }, t)))),
      el("label", {}, "max tokens", el("input", { name: "max_tokens", type: "number", min: 1 })),
      el("label", {}, "temperature", el("input", { name: "temperature", type: "number", step: "0.05", min: 0, max: 2 }))),
    el("label", {}, "JSON schema (optional)", el("textarea", { name: "schema" })),
    err,
    el("button", { type: "submit", id: "submit-button" }, "Submit"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(form), body = {};
    for (const [k, v] of f) {
      if (v === "") continue;
      body[k] = k === "max_tokens" ? parseInt(v, 10) : k === "temperature" ? parseFloat(v) : v;
    }
    try { const r = await postJSON("/ui/api/submit", body); location.assign("/ui/job/" + encodeURIComponent(r.id)); }
    catch (e) { err.textContent = e.message; }
  });
  show(el("h1", {}, "Submit a job"), form);
  document.body.dataset.ready = "1";
}

// ---- Routing --------------------------------------------------------------

function route() {
  const path = location.pathname.replace(/\/+$/, "") || "/ui";
  const page = path === "/ui" ? "overview" : path.startsWith("/ui/job/") ? "job" : path.slice(4);
  for (const a of document.querySelectorAll("header nav a")) a.classList.toggle("active", a.dataset.page === page || (page === "job" && a.dataset.page === "jobs"));
  if (page === "overview") overview();
  else if (page === "jobs") jobs();
  else if (page === "job") job(decodeURIComponent(path.slice("/ui/job/".length)));
  else if (page === "batches") batches();
  else if (page === "submit") submit();
  else show(el("p", { class: "error" }, "No such page: " + path));
}

route();
