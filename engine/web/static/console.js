// rtseg console: plain JS, no build step, no libraries. Talks to the JSON API of engine/web
// with the server's token (given once as ?token=, then kept in sessionStorage).
"use strict";

const TOKEN_KEY = "rtseg-token";
const CHECK_DEBOUNCE_MS = 300;
const LIVE_POINTS = 2000;

(function takeToken() {
  const params = new URLSearchParams(location.search);
  if (params.has("token")) {
    sessionStorage.setItem(TOKEN_KEY, params.get("token"));
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? "?" + rest : ""));
  }
})();
const TOKEN = sessionStorage.getItem(TOKEN_KEY);

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "dataset") Object.assign(e.dataset, v);
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
};
const fmt = (n) => (n === null || n === undefined) ? "-" : Number(n).toLocaleString("en-US");
const pct = (x) => (x === null || x === undefined) ? "-" : (100 * x).toFixed(1) + "%";
const when = (ms) => ms ? new Date(ms).toISOString().replace("T", " ").slice(0, 19) : "-";

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || ("HTTP " + status));
    this.status = status;
    this.error = (body && body.error) || {};
  }
}

async function api(path, opts = {}) {
  const headers = Object.assign({ "Accept": "application/json" }, opts.headers || {});
  if (TOKEN) headers["Authorization"] = "Bearer " + TOKEN;
  if (opts.body !== undefined) {
    headers["Content-Type"] = "application/json";
    opts = Object.assign({}, opts, { body: JSON.stringify(opts.body) });
  }
  const r = await fetch(path, Object.assign({}, opts, { headers }));
  let body = null;
  try { body = await r.json(); } catch (e) { body = null; }
  if (!r.ok) throw new ApiError(r.status, body);
  return body;
}

// ------------------------------------------------------------------ state

const state = {
  segments: new Map(),       // name -> segment
  opened: new Map(),         // name -> size when the page saw it first
  selected: null,
  history: new Map(),        // name -> [[time_ms, size], ...] (server samples + live pushes)
  editing: null,             // name being replaced, or null for a new segment
  nowMs: 0,
};

// ------------------------------------------------------------------ charts (canvas)

function niceStep(span, ticks) {
  const raw = span / Math.max(1, ticks);
  const mag = Math.pow(10, Math.floor(Math.log10(raw || 1)));
  for (const m of [1, 2, 2.5, 5, 10]) if (raw <= m * mag) return m * mag;
  return 10 * mag;
}

function drawChart(canvas, series, opts = {}) {
  const dpr = window.devicePixelRatio || 1;
  const cssW = canvas.clientWidth || canvas.width, cssH = cssW * (canvas.height / canvas.width);
  canvas.width = Math.round(cssW * dpr); canvas.height = Math.round(cssH * dpr);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, cssW, cssH);
  const pad = { l: 58, r: 14, t: 14, b: 36 };
  const W = cssW - pad.l - pad.r, H = cssH - pad.t - pad.b;
  const pts = series.flatMap((s) => s.points);
  ctx.font = "11px system-ui, sans-serif";
  if (!pts.length) {
    ctx.fillStyle = "#6b7385";
    ctx.fillText(opts.empty || "no data yet", pad.l, pad.t + H / 2);
    return;
  }
  let x0 = opts.xMin ?? Math.min(...pts.map((p) => p[0]));
  let x1 = opts.xMax ?? Math.max(...pts.map((p) => p[0]));
  let y0 = opts.yMin ?? Math.min(0, ...pts.map((p) => p[1]));
  let y1 = opts.yMax ?? Math.max(...pts.map((p) => p[1]));
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  if (y1 === y0) { y1 = y0 + 1; }
  const X = (x) => pad.l + (x - x0) / (x1 - x0) * W;
  const Y = (y) => pad.t + H - (y - y0) / (y1 - y0) * H;
  // grid and y ticks
  ctx.strokeStyle = "#e1e4ea"; ctx.fillStyle = "#6b7385"; ctx.lineWidth = 1;
  const ys = niceStep(y1 - y0, 4);
  ctx.textAlign = "right"; ctx.textBaseline = "middle";
  for (let y = Math.ceil(y0 / ys) * ys; y <= y1 + 1e-9; y += ys) {
    ctx.beginPath(); ctx.moveTo(pad.l, Y(y)); ctx.lineTo(pad.l + W, Y(y)); ctx.stroke();
    ctx.fillText(opts.yFormat ? opts.yFormat(y) : fmt(Math.round(y * 100) / 100), pad.l - 6, Y(y));
  }
  // x ticks
  ctx.textAlign = "center"; ctx.textBaseline = "top";
  const n = Math.max(2, Math.floor(W / 110));
  const days = opts.xTimeDays || (x1 - x0) > 2 * 86400000;
  for (let i = 0; i <= n; i++) {
    const x = x0 + (x1 - x0) * i / n;
    const label = opts.xTime ? new Date(x).toISOString().slice(days ? 5 : 11, days ? 10 : 19).replace("T", " ")
                             : (opts.xFormat ? opts.xFormat(x) : x.toFixed(2));
    ctx.textAlign = i === 0 ? "left" : i === n ? "right" : "center";
    ctx.fillText(label, X(x), pad.t + H + 6);
  }
  ctx.textAlign = "center";
  ctx.strokeStyle = "#9aa2b3";
  ctx.beginPath(); ctx.moveTo(pad.l, pad.t); ctx.lineTo(pad.l, pad.t + H); ctx.lineTo(pad.l + W, pad.t + H); ctx.stroke();
  if (opts.xLabel) { ctx.fillText(opts.xLabel, pad.l + W / 2, pad.t + H + 20); }
  if (opts.yLabel) {
    ctx.save(); ctx.translate(12, pad.t + H / 2); ctx.rotate(-Math.PI / 2);
    ctx.textAlign = "center"; ctx.textBaseline = "middle"; ctx.fillText(opts.yLabel, 0, 0); ctx.restore();
  }
  // series
  series.forEach((s, i) => {
    ctx.strokeStyle = s.color; ctx.fillStyle = s.color; ctx.lineWidth = 2;
    ctx.setLineDash(s.dash || []);
    ctx.beginPath();
    s.points.forEach((p, j) => {
      const x = X(p[0]), y = Y(p[1]);
      if (j === 0) ctx.moveTo(x, y);
      else if (opts.step) { ctx.lineTo(x, Y(s.points[j - 1][1])); ctx.lineTo(x, y); }
      else ctx.lineTo(x, y);
    });
    ctx.stroke(); ctx.setLineDash([]);
    if (s.points.length < 40) s.points.forEach((p) => { ctx.beginPath(); ctx.arc(X(p[0]), Y(p[1]), 2.5, 0, 7); ctx.fill(); });
    if (s.label) {
      ctx.textAlign = "left"; ctx.textBaseline = "middle";
      ctx.fillRect(pad.l + 10 + i * 130, pad.t + 6, 14, 3);
      ctx.fillStyle = "#1d2330"; ctx.fillText(s.label, pad.l + 28 + i * 130, pad.t + 7);
    }
  });
}

// ------------------------------------------------------------------ segments

// goals make segments of their own ("goal:NAME:most", ...): shown only when asked
const isGoalSegment = (name) => name.startsWith("goal:");

function renderSegments() {
  const tbody = $("#segments-table tbody");
  const all = [...state.segments.keys()].sort();
  const showGoals = $("#show-goal-segments").checked;
  const names = all.filter((n) => showGoals || !isGoalSegment(n) || n === state.selected);
  const hidden = all.filter(isGoalSegment).length;
  $("#goal-toggle").hidden = hidden === 0;
  $("#goal-segment-count").textContent = fmt(hidden);
  tbody.replaceChildren(...names.map((name) => {
    const s = state.segments.get(name);
    if (!state.opened.has(name)) state.opened.set(name, s.size);
    const diff = s.size - state.opened.get(name);
    const tr = el("tr", { dataset: { segment: name }, onclick: () => selectSegment(name) },
      el("td", {}, name),
      el("td", { class: "num size", dataset: { segment: name } }, fmt(s.size)),
      el("td", { class: "num diff " + (diff > 0 ? "up" : diff < 0 ? "down" : ""), dataset: { segment: name } },
         diff ? (diff > 0 ? "+" : "") + fmt(diff) : ""),
      el("td", { class: "expr", title: s.description || "" }, s.expression));
    if (name === state.selected) tr.classList.add("selected");
    return tr;
  }));
  $("#segments-empty").hidden = all.length > 0;
  $("#segment-count").textContent = names.length ? "(" + names.length + ")" : "";
}

async function loadSegments() {
  const list = await api("/api/segments");
  state.segments = new Map(list.map((s) => [s.name, s]));
  renderSegments();
  if (state.selected && !state.segments.has(state.selected)) {
    state.selected = null; $("#seg-detail").hidden = true;
  }
}

async function selectSegment(name) {
  state.selected = name;
  renderSegments();
  const s = state.segments.get(name);
  $("#seg-detail").hidden = false;
  $("#detail-name").textContent = name;
  $("#detail-desc").textContent = s && s.description ? s.description : "";
  try {
    const h = await api("/api/segments/" + encodeURIComponent(name) + "/history");
    const live = (state.history.get(name) || []).filter((p) => !h.samples.length || p[0] > h.samples[h.samples.length - 1][0]);
    state.history.set(name, h.samples.concat(live));
  } catch (e) { /* the live points still show */ }
  drawSizeChart();
}

function drawSizeChart() {
  if (!state.selected) return;
  const pts = state.history.get(state.selected) || [];
  drawChart($("#size-chart"), [{ points: pts, color: "#2f6fdf" }],
            { xTime: true, step: true, yLabel: "members", empty: "no samples yet" });
}

function applySizes(msg) {
  state.nowMs = msg.now_ms || state.nowMs;
  let unknown = false;
  for (const [name, size] of Object.entries(msg.sizes)) {
    const s = state.segments.get(name);
    if (!s) { unknown = true; continue; }
    const t = msg.now_ms || msg.time_ms;
    const h = state.history.get(name) || [];
    if (h.length && h[h.length - 1][0] >= t) h[h.length - 1] = [h[h.length - 1][0], size];
    else h.push([t, size]);
    if (h.length > LIVE_POINTS) h.splice(0, h.length - LIVE_POINTS);
    state.history.set(name, h);
    if (s.size !== size) {
      s.size = size;
      const cell = document.querySelector('td.size[data-segment="' + CSS.escape(name) + '"]');
      if (cell) {
        cell.textContent = fmt(size);
        cell.classList.remove("flash"); void cell.offsetWidth; cell.classList.add("flash");
      }
      const diff = size - (state.opened.get(name) ?? size);
      const dc = document.querySelector('td.diff[data-segment="' + CSS.escape(name) + '"]');
      if (dc) {
        dc.textContent = diff ? (diff > 0 ? "+" : "") + fmt(diff) : "";
        dc.className = "num diff " + (diff > 0 ? "up" : diff < 0 ? "down" : "");
      }
    }
  }
  const gone = [...state.segments.keys()].some((n) => !(n in msg.sizes));
  if (unknown || gone) loadSegments();
  if (state.selected) drawSizeChart();
}

function connectLive() {
  const status = $("#live-status");
  const es = new EventSource("/api/live" + (TOKEN ? "?token=" + encodeURIComponent(TOKEN) : ""));
  es.addEventListener("open", () => { status.className = "live on"; status.textContent = "live"; });
  es.addEventListener("error", () => { status.className = "live off"; status.textContent = "reconnecting"; });
  es.addEventListener("sizes", (ev) => {
    status.className = "live on"; status.textContent = "live";
    applySizes(JSON.parse(ev.data));
  });
}

// ------------------------------------------------------------------ editor

const editor = {
  seq: 0,
  timer: null,
  lastValid: false,
};

function escapeHtml(s) {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

// The backdrop mirrors the textarea; the character at line:col is wrapped in <mark>.
function markError(line, col) {
  const text = $("#expr").value;
  const back = $("#expr-backdrop");
  if (!line) { back.innerHTML = escapeHtml(text) + "\n"; return; }
  const lines = text.split("\n");
  let offset = 0;
  for (let i = 0; i < Math.min(line - 1, lines.length); i++) offset += lines[i].length + 1;
  offset = Math.min(offset + Math.max(col - 1, 0), text.length);
  let end = offset + 1;
  while (end < text.length && /[\w.]/.test(text[end]) && /[\w.]/.test(text[offset])) end++;
  const at = text.slice(offset, end);
  back.innerHTML = escapeHtml(text.slice(0, offset))
    + '<mark data-line="' + line + '" data-col="' + col + '">' + (at && at !== "\n" ? escapeHtml(at) : "&nbsp;") + "</mark>"
    + escapeHtml(text.slice(end)) + "\n";
}

function showCheck(result) {
  const status = $("#expr-status");
  const box = $(".editor");
  if (result.error) {
    const e = result.error;
    box.classList.add("invalid"); box.classList.remove("valid");
    status.className = "status err";
    status.dataset.line = e.line || ""; status.dataset.col = e.col || "";
    status.replaceChildren();
    if (e.line) {
      const lineText = $("#expr").value.split("\n")[e.line - 1] || "";
      status.append(el("span", { class: "pos" }, e.line + ":" + e.col), ": " + e.message + "\n",
                    lineText + "\n" + " ".repeat(Math.max(e.col - 1, 0)) + "^");
    } else {
      status.append(e.message || "error");
    }
    markError(e.line, e.col);
    editor.lastValid = false;
  } else {
    box.classList.add("valid"); box.classList.remove("invalid");
    status.className = "status ok";
    delete status.dataset.line; delete status.dataset.col;
    status.textContent = "\u2713 valid: reach " + fmt(result.size) + " users now";
    markError(0, 0);
    editor.lastValid = true;
  }
}

async function check(sample) {
  const expression = $("#expr").value;
  const seq = ++editor.seq;
  if (!expression.trim()) {
    $("#expr-status").className = "status muted";
    $("#expr-status").textContent = "Type an expression: it is checked as you type.";
    $(".editor").classList.remove("invalid", "valid");
    markError(0, 0);
    return null;
  }
  $("#expr-status").classList.add("checking");
  try {
    const r = await api("/api/preview", { method: "POST", body: { expression, sample: sample || 0, name: editor.name || "" } });
    if (seq === editor.seq) showCheck(r);
    return r;
  } catch (err) {
    if (seq === editor.seq) showCheck({ error: err.error && err.error.message ? err.error : { message: err.message } });
    return null;
  } finally {
    $("#expr-status").classList.remove("checking");
  }
}

function onExpressionInput() {
  markError(0, 0);
  clearTimeout(editor.timer);
  editor.timer = setTimeout(() => check(0), CHECK_DEBOUNCE_MS);
}

async function preview() {
  const r = await check(10);
  const out = $("#preview-out");
  if (!r) { out.replaceChildren(); return; }
  out.replaceChildren(
    el("div", {}, "Reach now: ", el("b", { id: "preview-size" }, fmt(r.size)), " users",
       r.sample.length ? "; a sample:" : ""),
    el("div", { class: "chips" }, ...r.sample.map((u) => el("span", { class: "chip", onclick: () => lookUp(u) }, u))));
}

function setEditing(seg) {
  state.editing = seg ? seg.name : null;
  editor.name = seg ? seg.name : "";
  $("#seg-name").value = seg ? seg.name : "";
  $("#seg-name").disabled = !!seg;
  $("#seg-desc").value = seg ? (seg.description || "") : "";
  $("#expr").value = seg ? seg.expression : "";
  $("#editor-mode").textContent = seg ? "replacing " + seg.name + " (v" + seg.version + ")" : "new";
  $("#save-btn").textContent = seg ? "Replace segment" : "Create segment";
  $("#preview-out").replaceChildren();
  $("#save-out").textContent = "";
  onExpressionInput();
}

async function save() {
  const out = $("#save-out");
  const name = $("#seg-name").value.trim();
  const body = { expression: $("#expr").value, description: $("#seg-desc").value };
  try {
    let seg;
    if (state.editing) {
      seg = await api("/api/segments/" + encodeURIComponent(state.editing), { method: "PUT", body });
    } else {
      seg = await api("/api/segments", { method: "POST", body: Object.assign({ name }, body) });
    }
    out.className = "status ok";
    out.textContent = (state.editing ? "Replaced " : "Created ") + seg.name + ": " + fmt(seg.size) + " members";
    state.segments.set(seg.name, seg);
    state.opened.set(seg.name, seg.size);
    renderSegments();
    setEditing(seg);
    $("#save-out").className = "status ok";
    $("#save-out").textContent = "Saved " + seg.name + " (v" + seg.version + "): " + fmt(seg.size) + " members";
    selectSegment(seg.name);
  } catch (err) {
    out.className = "status err";
    out.textContent = err.message;
    if (err.error && err.error.line) showCheck({ error: err.error });
  }
}

async function removeSelected() {
  const name = state.selected;
  if (!name || !confirm("Delete segment " + name + "? Its members get EXIT deltas.")) return;
  try {
    await api("/api/segments/" + encodeURIComponent(name), { method: "DELETE" });
    state.segments.delete(name);
    state.selected = null;
    $("#seg-detail").hidden = true;
    if (state.editing === name) setEditing(null);
    renderSegments();
  } catch (err) { alert(err.message); }
}

// ------------------------------------------------------------------ users

function kvList(obj, fmtValue) {
  const keys = Object.keys(obj).sort();
  if (!keys.length) return el("p", { class: "muted" }, "none");
  const dl = el("dl", { class: "kv" });
  for (const k of keys) dl.append(el("dt", {}, k), el("dd", {}, fmtValue ? fmtValue(obj[k]) : String(obj[k])));
  return dl;
}

async function lookUp(id) {
  $("#user-id").value = id;
  const out = $("#user-out");
  try {
    const u = await api("/api/user?id=" + encodeURIComponent(id));
    if (!u.known) { out.replaceChildren(el("p", { class: "muted" }, "Unknown user " + id + ".")); return; }
    out.replaceChildren(
      el("h3", {}, "Segments"),
      u.segments.length ? el("div", { class: "chips" }, ...u.segments.map((s) => el("span", { class: "chip" }, s)))
                        : el("p", { class: "muted" }, "none"),
      el("h3", {}, "Traits"), kvList(u.traits, (v) => JSON.stringify(v)),
      el("h3", {}, "Scores"), kvList(u.scores, (v) => v === null ? "-" : Number(v).toFixed(4)));
  } catch (err) { out.replaceChildren(el("p", { class: "status err" }, err.message)); }
}

// ------------------------------------------------------------------ models and goals

async function loadModels() {
  const list = await api("/api/models");
  const ul = $("#models-list");
  ul.replaceChildren(...list.map((m) => el("li", { dataset: { model: m.name }, onclick: () => showModel(m.name) },
    el("span", {}, m.name + " v" + m.version), el("span", { class: "muted" }, "AUC " + (m.auc ? m.auc.toFixed(3) : "-")))));
  if (!list.length) ul.replaceChildren(el("li", { class: "muted" }, "No models (rtseg model train)."));
}

async function showModel(name) {
  document.querySelectorAll("#models-list li").forEach((li) => li.classList.toggle("selected", li.dataset.model === name));
  const m = await api("/api/models/" + encodeURIComponent(name));
  const info = $("#model-info");
  info.className = "";
  info.replaceChildren(kvList({
    algorithm: m.algorithm || "-", target: m.target || m.target_segment || "-", AUC: m.auc ? m.auc.toFixed(3) : "-",
    "base rate": pct(m.base_rate), "training rows": fmt(m.rows), trained: when(m.trained_ms),
    features: (m.features || []).length > 4
      ? m.features.slice(0, 4).join(", ") + ", \u2026 (" + m.features.length + " in all)"
      : (m.features || []).join(", ") || "-",
  }));
  const canvas = $("#model-chart");
  const curve = (m.curve || []).slice().sort((a, b) => a.recall - b.recall);
  canvas.hidden = !curve.length;
  if (!curve.length) { info.append(el("p", { class: "muted" }, "No precision/recall curve (a deployed model without validation).")); return; }
  drawChart(canvas, [{ points: curve.map((p) => [p.recall, p.precision]), color: "#8b3fd0", label: "precision / recall" },
                     { points: [[0, m.base_rate], [1, m.base_rate]], color: "#9aa2b3", dash: [4, 4], label: "base rate" }],
            { xMin: 0, xMax: 1, yMin: 0, yMax: 1, xLabel: "recall", yLabel: "precision",
              xFormat: (x) => x.toFixed(1), yFormat: (y) => y.toFixed(1) });
}

async function loadGoals() {
  const list = await api("/api/goals");
  const ul = $("#goals-list");
  ul.replaceChildren(...list.map((g) => el("li", { dataset: { goal: g.name }, onclick: () => showGoal(g.name) },
    el("span", {}, g.name), el("span", { class: "muted" }, fmt(g.actual) + " / " + Number(g.predicted).toFixed(1) + " predicted"))));
  if (!list.length) ul.replaceChildren(el("li", { class: "muted" }, "No goals (rtseg goal create)."));
}

async function showGoal(name) {
  document.querySelectorAll("#goals-list li").forEach((li) => li.classList.toggle("selected", li.dataset.goal === name));
  const g = await api("/api/goals/" + encodeURIComponent(name));
  const info = $("#goal-info");
  info.className = "";
  info.replaceChildren(kvList({
    segment: g.segment, target: g.target, ends: when(g.end_ms), "test / control": fmt(g.test_size) + " / " + fmt(g.control_size),
    predicted: Number(g.predicted).toFixed(1), actual: fmt(g.actual),
    uplift: pct(g.uplift) + " [" + pct(g.uplift_low) + ", " + pct(g.uplift_high) + "]",
  }));
  const days = g.days || [];
  const canvas = $("#goal-chart");
  canvas.hidden = !days.length;
  if (days.length) {
    drawChart(canvas, [{ points: days.map((d) => [d.day_start_ms, d.predicted]), color: "#9aa2b3", dash: [5, 4], label: "predicted" },
                       { points: days.map((d) => [d.day_start_ms, d.actual]), color: "#1d8a4f", label: "actual" }],
              { xTime: true, xTimeDays: true, yLabel: "conversions (cumulative)" });
  }
}

// ------------------------------------------------------------------ start

async function loadInfo() {
  try {
    const i = await api("/api/info");
    $("#server-info").textContent = i.target + " \u00b7 clock " + i.clock + " \u00b7 " + i.shards + " shards \u00b7 "
      + fmt(i.users) + " users";
  } catch (err) { $("#server-info").textContent = err.message; }
}

function start() {
  $("#expr").addEventListener("input", onExpressionInput);
  $("#expr").addEventListener("scroll", () => { $("#expr-backdrop").scrollTop = $("#expr").scrollTop; });
  $("#preview-btn").addEventListener("click", preview);
  $("#show-goal-segments").addEventListener("change", renderSegments);
  $("#save-btn").addEventListener("click", save);
  $("#new-btn").addEventListener("click", () => setEditing(null));
  $("#edit-btn").addEventListener("click", () => state.selected && setEditing(state.segments.get(state.selected)));
  $("#delete-btn").addEventListener("click", removeSelected);
  $("#user-form").addEventListener("submit", (ev) => { ev.preventDefault(); const id = $("#user-id").value.trim(); if (id) lookUp(id); });
  window.addEventListener("resize", () => drawSizeChart());
  loadInfo();
  loadSegments().then(connectLive, (err) => { $("#server-info").textContent = err.message; connectLive(); });
  loadModels().catch(() => {});
  loadGoals().catch(() => {});
}

start();
