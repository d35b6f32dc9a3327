// The dashboard: polls /dashboard/state (the edge's view of api.state and api.models) and
// draws it. The edge keeps nothing; the throughput history is this page's own, built from the
// ended jobs it has seen (each poll lists the latest ones).
"use strict";

const POLL_MS = 1000;
const WINDOW_S = 300;  // throughput chart: the last 5 minutes
const BUCKET_S = 10;
const RATE_S = 60;  // the headline rate: the last minute
const KEY = "llorch-api-key";
const DASH = "–";
const ended = new Map();  // job id -> {at, tokens}: jobs seen to end, for the throughput

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : String(c));
  return node;
}

function bytes(n) {
  if (n === null || n === undefined) return DASH;
  const gib = n / 2 ** 30;
  return gib >= 1 ? `${gib.toFixed(1)} GiB` : `${(n / 2 ** 20).toFixed(0)} MiB`;
}

function num(v, digits = 0, unit = "") {
  return v === null || v === undefined ? DASH : `${v.toFixed(digits)}${unit}`;
}

function ago(s) {
  if (s === null || s === undefined) return DASH;
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.floor(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

function badge(text, kind = text) {
  return el("span", { class: `badge ${kind}` }, text);
}

function bar(kind, part, total) {
  const pct = total > 0 ? Math.min(100, (100 * part) / total) : 0;
  const fill = el("span");
  fill.style.width = `${pct}%`;
  return el("div", { class: `bar ${kind}`, title: `${kind}: ${bytes(part)} of ${bytes(total)}` }, fill);
}

function device(d) {
  return el("div", { class: "device", "data-device": String(d.index) },
    el("div", {}, el("span", { class: "name" }, `${d.kind.toUpperCase()} ${d.index}`), ` ${d.name}`),
    bar("used", d.used_bytes, d.total_bytes),
    bar("reserved", d.reserved_bytes, d.total_bytes),
    el("div", { class: "legend" },
      el("i", { class: "used" }), `used ${bytes(d.used_bytes)}  `,
      el("i", { class: "reserved" }), `reserved by llorch ${bytes(d.reserved_bytes)}  `,
      `of ${bytes(d.total_bytes)}`));
}

function rows(tbody, items, columns, empty, key) {
  tbody.replaceChildren();
  if (items.length === 0) {
    tbody.append(el("tr", {}, el("td", { class: "empty", colspan: String(columns) }, empty)));
    return;
  }
  for (const item of items) {
    const tr = el("tr", { [key[0]]: item[key[1]] });
    for (const cell of item.cells) tr.append(el("td", {}, cell));
    tbody.append(tr);
  }
}

function pool(p) {
  const workers = el("table", {},
    el("thead", {}, el("tr", {}, ...["worker", "model", "device", "state", "slots busy", "memory"].map((h) => el("th", {}, h)))),
    el("tbody"));
  rows(workers.tBodies[0], p.workers.map((w) => ({
    id: w.worker_id,
    cells: [el("code", {}, w.worker_id), w.model, String(w.device), badge(w.state),
      `${w.slots_busy} of ${w.slots}`, bytes(w.memory_bytes)],
  })), 6, "no workers yet: one starts with the first job", ["data-worker", "id"]);
  return el("div", { class: "card", "data-pool": p.pool_id },
    el("h3", {}, `pool ${p.pool_id}`, p.alive ? badge("alive") : badge("lost"),
      el("span", { class: "legend" }, `seen ${ago(p.last_seen_s)} ago`)),
    ...p.devices.map(device), workers);
}

function reasons(list) {
  if (!list || list.length === 0) return DASH;
  return el("ul", { class: "reasons" }, ...list.map((r) => el("li", {}, r)));
}

function throughput(now, recent) {
  for (const j of recent) {
    if (j.ended_at !== null && j.tokens_out !== null) ended.set(j.job_id, { at: j.ended_at, tokens: j.tokens_out });
  }
  for (const [id, j] of ended) if (now - j.at > WINDOW_S) ended.delete(id);
  const buckets = new Array(WINDOW_S / BUCKET_S).fill(0);
  let lastMinute = 0;
  for (const j of ended.values()) {
    const age = now - j.at;
    if (age < 0 || age >= WINDOW_S) continue;
    buckets[buckets.length - 1 - Math.floor(age / BUCKET_S)] += j.tokens / BUCKET_S;
    if (age < RATE_S) lastMinute += j.tokens;
  }
  $("#rate").textContent = `${(lastMinute / RATE_S).toFixed(1)} tok/s`;
  const svg = $("#throughput");
  const top = Math.max(1, ...buckets);
  const w = 300 / buckets.length;
  const ns = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  buckets.forEach((v, i) => {
    const h = (70 * v) / top;
    const r = document.createElementNS(ns, "rect");
    r.setAttribute("x", String(i * w + 0.5));
    r.setAttribute("width", String(w - 1));
    r.setAttribute("y", String(75 - h));
    r.setAttribute("height", String(h));
    const t = document.createElementNS(ns, "title");
    t.textContent = `${v.toFixed(1)} tokens/s, ${(buckets.length - i) * BUCKET_S} s ago`;
    r.append(t);
    svg.append(r);
  });
  $("#peak").textContent = `peak ${top.toFixed(1)} tok/s`;
}

function draw(s) {
  $("#pools").replaceChildren(...s.pools.map(pool));
  if (s.pools.length === 0) $("#pools").append(el("p", { class: "legend" }, "no pool has reported yet"));
  $("#n-running").textContent = String(s.running.length);
  $("#n-queue").textContent = String(s.queue.length);
  rows($("#queue tbody"), s.queue.map((j) => ({
    id: j.job_id,
    cells: [num(j.position), el("code", {}, j.job_id), j.model, ago(j.waited_s), reasons(j.reasons)],
  })), 5, "nothing waits", ["data-job", "id"]);
  rows($("#running tbody"), s.running.map((j) => ({
    id: j.job_id,
    cells: [el("code", {}, j.job_id), j.model, el("code", {}, j.worker_id ?? DASH), ago(j.running_s)],
  })), 4, "nothing runs", ["data-job", "id"]);
  rows($("#recent tbody"), s.recent.map((j) => ({
    id: j.job_id,
    cells: [el("code", {}, j.job_id), j.model, badge(j.code ? `${j.state} ${j.code}` : j.state, j.state),
      num(j.ttft_ms, 1, " ms"), j.tokens_out === null ? DASH : `${j.tokens_in ?? DASH} → ${j.tokens_out}`,
      num(j.tokens_per_s, 1), j.ended_at === null ? DASH : `${ago(s.now - j.ended_at)} ago`],
  })), 7, "no job has ended yet", ["data-job", "id"]);
  throughput(s.now, s.recent);
}

function headers() {
  const key = sessionStorage.getItem(KEY);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function fetchState() {
  const r = await fetch("/dashboard/state", { headers: headers(), cache: "no-store" });
  return { status: r.status, body: r.status === 401 ? null : await r.json() };
}

async function poll() {
  const status = $("#updated");
  let reply;
  try {
    reply = await fetchState();
  } catch (e) {  // the edge is away (restarting): say so and keep trying
    status.className = "status bad";
    status.textContent = `no answer: ${e.message}`;
    setTimeout(poll, POLL_MS);
    return;
  }
  if (reply.status === 401) {
    $("#login").hidden = false;
    $("#login-error").textContent = sessionStorage.getItem(KEY) ? "that key was refused" : "";
    status.textContent = "an API key is needed";
    return;  // polling resumes once a key is given
  }
  setTimeout(poll, POLL_MS);
  if (reply.status !== 200) {  // the cluster's answer, e.g. no orchestrator yet
    status.className = "status bad";
    status.textContent = reply.body.error ? reply.body.error.message : `HTTP ${reply.status}`;
    return;
  }
  $("#login").hidden = true;
  draw(reply.body);  // a drawing bug is an uncaught error in the console, not a status line
  status.className = "status";
  const lead = reply.body.leader;
  const led = lead ? ` · leader ${lead.name} (epoch ${lead.epoch}, for ${ago(lead.for_s)})` : "";
  status.textContent = `updated ${new Date().toLocaleTimeString()}${led}`;
}

$("#login").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem(KEY, $("#key").value.trim());
  poll();
});
poll();
