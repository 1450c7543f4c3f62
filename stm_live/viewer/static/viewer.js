// stm-live page: the scan growing line by line, its detections, the daemon's status, teach-in.
// Plain JavaScript, no library, nothing fetched from elsewhere. Messages (docs/viewer.md):
// binary [u32 n][n bytes JSON header][payload] for pixel rows, JSON text for everything else.
"use strict";

const CLASS_COLOURS = [[230, 25, 75], [60, 180, 75], [0, 130, 200], [255, 225, 25], [145, 30, 180],
  [70, 240, 240], [245, 130, 48], [240, 50, 230]];
const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------- state
const S = {
  token: sessionStorage.getItem("stmLiveToken") || "",
  ws: null, connected: false, retryMs: 250, hello: {},
  live: null,            // the scan being acquired
  view: null,            // what is shown: the live scan, a finished frame or a stored result
  following: true,       // the view follows the live scan
  frames: new Map(),     // finished frames of the session: key -> summary
  thumbs: new Map(),     // key -> small canvas
  hidden: new Set(),     // classes toggled off
  pending: { points: [], regions: [] },
  versions: null,
  dirty: { rows: null, labels: null, marks: true, all: true },
};
// What tests and the benchmark read (never needed by the page itself).
window.stmLive = { loadId: Math.random().toString(36).slice(2), connects: 0, messages: 0, rowsDrawn: 0,
  drawLog: [], lastDet: null, snapshots: 0 };

function newScan(info) {
  const n = info.rows * info.cols;
  return { key: info.scan, scan: info.scan, rows: info.rows, cols: info.cols, width_nm: info.width_nm,
    height_nm: info.height_nm, scan_direction: info.scan_direction || "down", rows_done: info.rows_done || 0,
    finished: !!info.finished, image: new Float32Array(n).fill(NaN), have: new Uint8Array(info.rows),
    labels: new Uint8Array(n), dets: new Map(), classes: [], counts: {}, model: null, latency_ms: 0,
    frameKey: null, kind: "live" };
}

// ---------------------------------------------------------------- colour maps and contrast
function buildLut(name) {
  const stops = {
    gray: [[0, 0, 0, 0], [1, 255, 255, 255]],
    afmhot: [[0, 0, 0, 0], [0.25, 128, 0, 0], [0.5, 255, 128, 0], [0.75, 255, 255, 128], [1, 255, 255, 255]],
    viridis: [[0, 68, 1, 84], [0.14, 70, 50, 127], [0.29, 54, 92, 141], [0.43, 39, 127, 142], [0.57, 31, 161, 135],
      [0.71, 74, 194, 109], [0.86, 159, 218, 58], [1, 253, 231, 37]],
  }[name];
  const lut = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) {
    const x = i / 255;
    let k = 0;
    while (k < stops.length - 2 && x > stops[k + 1][0]) k++;
    const a = stops[k], b = stops[k + 1], f = (x - a[0]) / (b[0] - a[0] || 1);
    for (let c = 0; c < 3; c++) lut[i * 3 + c] = a[c + 1] + f * (b[c + 1] - a[c + 1]);
  }
  return lut;
}
let LUT = buildLut("afmhot");
const contrast = { lo: 0, hi: 1, rowsAt: -1 };

function percentiles(view) {
  const img = view.image, sample = [];
  const step = Math.max(1, Math.floor(img.length / 40000));
  for (let i = 0; i < img.length; i += step) { const v = img[i]; if (v === v) sample.push(v); }
  if (sample.length < 2) return null;
  sample.sort((a, b) => a - b);
  const q = (p) => sample[Math.min(sample.length - 1, Math.max(0, Math.round(p / 100 * (sample.length - 1))))];
  return [q(+$("lowPct").value), q(+$("highPct").value)];
}

function updateContrast(force) {
  const v = S.view;
  if (!v || !v.image || !$("autoContrast").checked) return false;
  const done = v.have ? v.have.reduce((a, b) => a + b, 0) : v.rows;
  // Recompute while the scan is young, then every 32 lines: cheap, and the picture does not flicker.
  if (!force && done === contrast.rowsAt) return false;
  if (!force && done > 64 && done - contrast.rowsAt < 32 && contrast.rowsAt >= 0) return false;
  const p = percentiles(v);
  if (!p) return false;
  contrast.rowsAt = done;
  const span = contrast.hi - contrast.lo || 1;
  const changed = force || Math.abs(p[0] - contrast.lo) > 0.02 * span || Math.abs(p[1] - contrast.hi) > 0.02 * span;
  contrast.lo = p[0]; contrast.hi = p[1] > p[0] ? p[1] : p[0] + 1e-12;
  return changed;
}

// ---------------------------------------------------------------- canvases
const imageCanvas = $("imageCanvas"), labelCanvas = $("labelCanvas"), markCanvas = $("markCanvas");
const ictx = imageCanvas.getContext("2d"), lctx = labelCanvas.getContext("2d"), mctx = markCanvas.getContext("2d");
let imgData = null, labData = null;

function showView(view) {
  S.view = view;
  contrast.rowsAt = -1;
  imageCanvas.width = labelCanvas.width = view.cols;
  imageCanvas.height = labelCanvas.height = view.rows;
  $("stage").style.aspectRatio = `${view.width_nm} / ${view.height_nm}`;
  imgData = ictx.createImageData(view.cols, view.rows);
  labData = lctx.createImageData(view.cols, view.rows);
  updateContrast(true);
  S.dirty.all = true;
  S.dirty.marks = true;
  refreshPanels();
  refreshScanLine();
  schedule();
}

function paintRows(r0, r1) {
  const v = S.view, cols = v.cols, lo = contrast.lo, scale = 255 / (contrast.hi - contrast.lo);
  const px = imgData.data;
  if (v.image) {
    for (let r = r0; r < r1; r++) {
      for (let c = 0, i = r * cols, o = i * 4; c < cols; c++, i++, o += 4) {
        const x = v.image[i];
        if (x !== x) { px[o + 3] = 0; continue; }
        let k = ((x - lo) * scale) | 0;
        k = k < 0 ? 0 : k > 255 ? 255 : k;
        px[o] = LUT[k * 3]; px[o + 1] = LUT[k * 3 + 1]; px[o + 2] = LUT[k * 3 + 2]; px[o + 3] = 255;
      }
    }
    ictx.putImageData(imgData, 0, 0, 0, r0, cols, r1 - r0);
  }
}

function paintLabels(r0, r1) {
  const v = S.view, cols = v.cols, px = labData.data, a = Math.round(255 * +$("mapOpacity").value);
  for (let r = r0; r < r1; r++) {
    for (let c = 0, i = r * cols, o = i * 4; c < cols; c++, i++, o += 4) {
      const k = v.labels[i];
      const name = k ? v.classes[k - 1] : null;
      if (!k || S.hidden.has(name)) { px[o + 3] = 0; continue; }
      const col = CLASS_COLOURS[(k - 1) % 8];
      px[o] = col[0]; px[o + 1] = col[1]; px[o + 2] = col[2]; px[o + 3] = a;
    }
  }
  lctx.putImageData(labData, 0, 0, 0, r0, cols, r1 - r0);
}

function classColour(v, name) {
  const k = v.classes.indexOf(name);
  return CLASS_COLOURS[(k < 0 ? 7 : k) % 8];
}

function paintMarks() {
  const v = S.view, rect = markCanvas.getBoundingClientRect(), dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, Math.round(rect.width * dpr)), h = Math.max(1, Math.round(rect.height * dpr));
  if (markCanvas.width !== w || markCanvas.height !== h) { markCanvas.width = w; markCanvas.height = h; }
  mctx.clearRect(0, 0, w, h);
  if (!v) return;
  const sx = w / v.width_nm, sy = h / v.height_nm, size = +$("markSize").value * dpr;
  mctx.globalAlpha = +$("markOpacity").value;
  for (const d of v.dets.values()) {
    if (S.hidden.has(d.class)) continue;
    const [r, g, b] = classColour(v, d.class);
    mctx.beginPath();
    mctx.arc(d.x_nm * sx, d.y_nm * sy, size, 0, 2 * Math.PI);
    mctx.fillStyle = `rgb(${r},${g},${b})`;
    mctx.fill();
    mctx.lineWidth = Math.max(1, dpr);
    mctx.strokeStyle = "rgba(0,0,0,0.8)";
    mctx.stroke();
  }
  mctx.globalAlpha = 1;
  // Examples waiting to be taught: white crosses and dashed rectangles.
  mctx.strokeStyle = "#fff"; mctx.lineWidth = 2 * dpr;
  for (const p of S.pending.points) {
    const x = p.x_nm * sx, y = p.y_nm * sy, s = 6 * dpr;
    mctx.beginPath(); mctx.moveTo(x - s, y); mctx.lineTo(x + s, y); mctx.moveTo(x, y - s); mctx.lineTo(x, y + s);
    mctx.stroke();
  }
  mctx.setLineDash([6 * dpr, 4 * dpr]);
  for (const r of S.pending.regions.concat(drag ? [drag] : [])) {
    mctx.strokeRect(r.x0_nm * sx, r.y0_nm * sy, (r.x1_nm - r.x0_nm) * sx, (r.y1_nm - r.y0_nm) * sy);
  }
  mctx.setLineDash([]);
}

let scheduled = false;
function schedule() {
  if (!scheduled) { scheduled = true; requestAnimationFrame(frameTick); }
}

function frameTick() {
  scheduled = false;
  const v = S.view;
  if (!v) { paintMarks(); return; }
  const now = performance.timeOrigin + performance.now();
  if (updateContrast(false)) S.dirty.all = true;
  if (S.dirty.all) {
    paintRows(0, v.rows); paintLabels(0, v.rows);
    S.dirty.all = false; S.dirty.rows = null; S.dirty.labels = null; S.dirty.marks = true;
  }
  if (S.dirty.rows) {
    const [r0, r1] = S.dirty.rows;
    paintRows(r0, r1);
    S.dirty.rows = null;
  }
  if (S.dirty.labels) { paintLabels(S.dirty.labels[0], S.dirty.labels[1]); S.dirty.labels = null; }
  if (S.dirty.marks) { paintMarks(); S.dirty.marks = false; }
  const log = window.stmLive.drawLog;
  for (const e of pendingDraws) { e.t = now; log.push(e); window.stmLive.rowsDrawn++; }
  pendingDraws.length = 0;
  if (log.length > 50000) log.splice(0, log.length - 50000);
}
const pendingDraws = [];

function markRows(kind, r0, r1) {
  const cur = S.dirty[kind];
  S.dirty[kind] = cur ? [Math.min(cur[0], r0), Math.max(cur[1], r1)] : [r0, r1];
  schedule();
}

// ---------------------------------------------------------------- messages
function onBinary(buf) {
  const n = new DataView(buf).getUint32(0, true);
  const h = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 4, n)));
  const v = S.live;
  if (!v || h.scan !== v.scan) return;
  if (h.k === "rows") {
    const vals = new Float32Array(buf, 4 + n, h.n * h.cols);
    v.image.set(vals, h.row0 * v.cols);
    for (let r = h.row0; r < h.row0 + h.n; r++) v.have[r] = 1;
    if (h.rows_done) v.rows_done = Math.max(v.rows_done, h.rows_done);
    if (S.view === v) {
      markRows("rows", h.row0, h.row0 + h.n);
      if (h.n === 1) pendingDraws.push({ scan: h.scan, row: h.row0, got: performance.timeOrigin + performance.now() });
    }
  } else if (h.k === "labels") {
    v.labels.set(new Uint8Array(buf, 4 + n, h.n * h.cols), h.row0 * v.cols);
    if (S.view === v) markRows("labels", h.row0, h.row0 + h.n);
  }
  if (S.view === v) refreshScanLine();
}

function onText(m) {
  switch (m.type) {
    case "hello": return onHello(m);
    case "scan": return onScan(m);
    case "det": return onDet(m);
    case "frame": return onFrame(m);
    case "status": return onStatus(m);
    case "event": return addItem("events", m, eventText(m));
    case "decision": return addItem("decisions", m, decisionText(m));
    case "versions": return onVersions(m);
    case "sources": return onSources(m);
  }
}

function onHello(m) {
  // A snapshot follows: everything is sent again (first connect, a reconnect, or after falling behind).
  window.stmLive.snapshots++;
  S.hello = m;
  $("mode").textContent = { daemon: "daemon", remote: `results of ${m.source}`, label: `labelling ${m.source}` }[m.mode] || "";
  $("teachPanel").hidden = !m.teach;
  $("storedBtn").hidden = !m.stored;
  $("automationPanel").hidden = !m.automation;
  if (m.automation) automation();
  S.live = null;
  S.frames.clear();
  $("strip").innerHTML = "";
  $("events").innerHTML = ""; $("decisions").innerHTML = "";
  if (m.sources) onSources(m.sources);
  else if (m.mode === "remote") onSources({ publish: m.source });
  for (const f of m.frames || []) onFrame(f, true);
  for (const e of m.events || []) addItem("events", e, eventText(e));
  for (const d of m.decisions || []) addItem("decisions", d, decisionText(d));
  if (S.following || !S.view) clearView();
  if (m.mode === "label" && m.frames && m.frames.length) openFrame(m.frames[m.frames.length - 1].key);
}

function clearView() {
  if (S.live) return;
  S.view = null;
  $("scanTitle").textContent = "waiting for a scan…";
  $("scanDir").textContent = ""; $("scanProgress").textContent = "";
  $("progressFill").style.width = "0";
  mctx.clearRect(0, 0, markCanvas.width, markCanvas.height);
  ictx.clearRect(0, 0, imageCanvas.width, imageCanvas.height);
  lctx.clearRect(0, 0, labelCanvas.width, labelCanvas.height);
}

function onScan(m) {
  const restarted = S.live && S.live.finished && !m.finished;  // the same scan id again: a new scan
  if (!S.live || restarted || S.live.scan !== m.scan || S.live.rows !== m.rows || S.live.cols !== m.cols) {
    S.live = newScan(m);
    if (S.following) showView(S.live);
  } else {
    S.live.finished = m.finished;
    S.live.rows_done = Math.max(S.live.rows_done, m.rows_done || 0);
  }
  if (S.view === S.live) refreshScanLine();
}

function onDet(m) {
  const v = S.live;
  if (!v || m.scan !== v.scan) return;
  if (m.full) v.dets.clear();
  for (const k of m.del) v.dets.delete(k);
  for (const d of m.add) v.dets.set(d.key, d);
  v.classes = m.classes; v.counts = m.counts; v.model = m.model; v.latency_ms = m.latency_ms;
  v.rows_done = Math.max(v.rows_done, m.rows_done);
  window.stmLive.lastDet = { scan: m.scan, rows_done: m.rows_done, counts: m.counts, total: m.total,
    model: m.model, shown: v.dets.size };
  if (S.view === v) { S.dirty.marks = true; schedule(); refreshPanels(); refreshScanLine(); }
}

function onFrame(f, quiet) {
  S.frames.set(f.key, f);
  if (S.live && S.live.scan === f.scan && !S.live.frameKey) {
    S.live.frameKey = f.key;
    S.live.finished = true;
  }
  addThumb(f);
  if (!quiet && S.view && S.view.kind === "frame" && S.view.key === f.key) openFrame(f.key);
  if (S.hello.mode === "label" && !quiet) openFrame(f.key);
  refreshTeach();
}

function addThumb(f) {
  let el = document.querySelector(`.thumb[data-key="${CSS.escape(f.key)}"]`);
  if (!el) {
    el = document.createElement("div");
    el.className = "thumb";
    el.dataset.key = f.key;
    const c = document.createElement("canvas");
    c.width = 96; c.height = 96;
    el.appendChild(c);
    el.appendChild(document.createElement("div"));
    el.onclick = () => openFrame(f.key);
    $("strip").appendChild(el);
    // The live scan is still on screen: its picture is the thumbnail.
    if (S.live && S.live.scan === f.scan && S.view === S.live) {
      c.getContext("2d").drawImage(imageCanvas, 0, 0, 96, 96);
      c.getContext("2d").drawImage(labelCanvas, 0, 0, 96, 96);
    }
  }
  const total = Object.values(f.counts || {}).reduce((a, b) => a + b, 0);
  el.lastChild.textContent = `${f.key}: ${f.not_segmented ? "not segmented" : total + " found"}`;
  el.title = f.not_segmented || Object.entries(f.counts || {}).map(([k, n]) => `${k} ${n}`).join(", ");
}

let SOURCES = [];
function onSources(m) {
  SOURCES = [];
  if ("ingest" in m) SOURCES.push(["lines in", m.ingest || "off"]);
  if ("publish" in m) SOURCES.push(["results out", m.publish || "off"]);
  if ("watch" in m) SOURCES.push(["watching", m.watch.join(", ") || "no folder"]);
  if (lastStatus) onStatus(lastStatus);
}

let lastStatus = null;
function onStatus(m) {
  lastStatus = m;
  const c = m.counters || {}, q = m.queues || {};
  const rows = [["state", m.state], ["uptime", `${Math.round(m.uptime_s)} s`],
    ["model", m.model ? `${m.model.name} [${m.model.id}]` : "–"],
    ["lines / partials / frames", `${c.lines ?? 0} / ${c.partials ?? 0} / ${c.frames ?? 0}`],
    ["files", c.files ?? 0], ["errors", c.errors ?? 0], ["bad messages / files", `${c.bad_messages ?? 0} / ${c.bad_files ?? 0}`],
    ["quarantined", c.quarantined ?? 0], ["dropped", c.dropped ?? 0], ["open scans", c.open_scans ?? 0],
    ["queues", Object.entries(q).map(([k, n]) => `${k} ${n}`).join(", ")], ...SOURCES];
  const tb = $("statusTable").tBodies[0];
  tb.innerHTML = "";
  for (const [k, val] of rows) {
    const tr = tb.insertRow();
    tr.insertCell().textContent = k;
    const td = tr.insertCell(); td.textContent = val; td.className = "num";
  }
  $("model").textContent = m.model ? `model ${m.model.name} [${m.model.id}]` : "";
}

function eventText(e) {
  return `${e.kind}: ${e.source ?? ""} ${e.reason ?? ""}${e.quarantined ? " (quarantined)" : ""}`;
}
function decisionText(d) {
  if (d.kind === "model") return `model ${d.old ? d.old.id : "–"} → ${d.new ? d.new.name + " [" + d.new.id + "]" : "–"}`;
  return `${d.kind}: ${JSON.stringify(d).slice(0, 160)}`;
}
function addItem(id, m, text) {
  const ul = $(id), li = document.createElement("li");
  li.textContent = `${new Date((m.t || Date.now() / 1000) * 1000).toLocaleTimeString()} ${text}`;
  ul.prepend(li);
  while (ul.children.length > 20) ul.lastChild.remove();
}

// ---------------------------------------------------------------- panels
function refreshScanLine() {
  const v = S.view;
  if (!v) return;
  if (v.kind === "live") {
    const pct = Math.round(100 * v.rows_done / v.rows);
    $("scanTitle").textContent = `scan ${v.scan}${v.finished ? " (finished)" : ""}`;
    $("scanDir").textContent = `scanning ${v.scan_direction === "up" ? "up ↑" : "down ↓"}`;
    $("scanProgress").textContent = `${v.rows_done} / ${v.rows} lines (${pct} %)`;
    $("progressFill").style.width = `${pct}%`;
  } else {
    $("scanTitle").textContent = v.kind === "stored" ? `stored result ${v.key}` : `frame ${v.key}`;
    $("scanDir").textContent = `${v.cols} × ${v.rows} px, ${v.width_nm.toFixed(1)} × ${v.height_nm.toFixed(1)} nm`;
    $("scanProgress").textContent = v.not_segmented ? `not segmented: ${v.not_segmented}` : "";
    $("progressFill").style.width = "100%";
  }
}

function refreshPanels() {
  const v = S.view, tb = $("classTable").tBodies[0];
  tb.innerHTML = "";
  if (!v) return;
  const counts = {};
  for (const c of v.classes) counts[c] = 0;
  for (const d of v.dets.values()) counts[d.class] = (counts[d.class] || 0) + 1;
  for (const [name, n] of Object.entries(counts)) {
    const tr = tb.insertRow(), [r, g, b] = classColour(v, name);
    const cb = document.createElement("input");
    cb.type = "checkbox"; cb.checked = !S.hidden.has(name);
    cb.onchange = () => { cb.checked ? S.hidden.delete(name) : S.hidden.add(name); S.dirty.all = true; schedule(); };
    tr.insertCell().appendChild(cb);
    tr.insertCell().innerHTML = `<span class="swatch" style="background:rgb(${r},${g},${b})"></span>`;
    tr.insertCell().textContent = name;
    const td = tr.insertCell(); td.textContent = n; td.className = "num count"; td.dataset.cls = name;
  }
  $("total").textContent = `(${v.dets.size})`;
  $("classList").innerHTML = "";
  for (const c of v.classes) { const o = document.createElement("option"); o.value = c; $("classList").appendChild(o); }
  for (const el of document.querySelectorAll(".thumb")) el.classList.toggle("sel", v.kind !== "live" && el.dataset.key === v.key);
  $("liveBtn").classList.toggle("active", S.following);
  refreshTeach();
}

// ---------------------------------------------------------------- frames and stored results
async function api(path, options) {
  const sep = path.includes("?") ? "&" : "?";
  const r = await fetch(path + (S.token ? `${sep}token=${encodeURIComponent(S.token)}` : ""), options);
  if (r.status === 401) { askToken("the key was not accepted"); throw new Error("unauthorised"); }
  return r;
}

function parseBinary(buf) {
  const n = new DataView(buf).getUint32(0, true);
  return [JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 4, n))), 4 + n];
}

async function openFrame(key) {
  const r = await api(`api/frames/${encodeURIComponent(key)}`);
  if (!r.ok) return;
  const f = await r.json();
  const v = { kind: "frame", key: f.key, scan: f.scan, rows: f.rows, cols: f.cols, width_nm: f.width_nm,
    height_nm: f.height_nm, classes: f.classes, dets: new Map(f.detections.map((d) => [d.key, d])),
    image: null, labels: new Uint8Array(f.rows * f.cols), have: null, teachable: f.teachable,
    not_segmented: f.not_segmented };
  if (f.has_image) {
    const buf = await (await api(`api/frames/${encodeURIComponent(key)}/image`)).arrayBuffer();
    const [, off] = parseBinary(buf);
    v.image = new Float32Array(buf.slice(off));
  }
  if (f.has_labels) {
    const buf = await (await api(`api/frames/${encodeURIComponent(key)}/labels`)).arrayBuffer();
    const [, off] = parseBinary(buf);
    v.labels = new Uint8Array(buf.slice(off));
  }
  S.following = false;
  showView(v);
  const thumb = document.querySelector(`.thumb[data-key="${CSS.escape(key)}"] canvas`);
  if (thumb) {
    setTimeout(() => {
      const t = thumb.getContext("2d");
      t.clearRect(0, 0, 96, 96); t.drawImage(imageCanvas, 0, 0, 96, 96); t.drawImage(labelCanvas, 0, 0, 96, 96);
    }, 50);
  }
}

async function openStored(name) {
  const rec = await (await api(`api/results/${encodeURIComponent(name)}`)).json();
  const im = rec.image || {};
  const rows = im.rows, cols = im.cols;
  const v = { kind: "stored", key: name, rows, cols, width_nm: im.width_nm, height_nm: im.height_nm,
    classes: rec.classes || [], dets: new Map((rec.detections || []).map((d) => [`${d.class}@${d.x_nm},${d.y_nm}`, d])),
    image: null, labels: new Uint8Array(rows * cols), have: null, teachable: rec.teachable,
    not_segmented: rec.not_segmented };
  if (rec.has_labels) {
    const buf = await (await api(`api/results/${encodeURIComponent(name)}/labels`)).arrayBuffer();
    const [h, off] = parseBinary(buf);
    if (h.n === rows && h.cols === cols) v.labels = new Uint8Array(buf.slice(off));
  }
  S.following = false;
  showView(v);
  if (rec.has_overlay) {  // the stored overlay PNG (image and classes) is the picture
    const img = new Image();
    img.onload = () => { ictx.clearRect(0, 0, cols, rows); ictx.drawImage(img, 0, 0, cols, rows); };
    img.src = `api/results/${encodeURIComponent(name)}/overlay.png` + (S.token ? `?token=${encodeURIComponent(S.token)}` : "");
  }
  $("storedDialog").hidden = true;
}

async function showStored() {
  const list = (await (await api("api/results")).json()).results;
  const ul = $("storedList");
  ul.innerHTML = list.length ? "" : "<li class='muted'>no stored result yet</li>";
  for (const r of list) {
    const li = document.createElement("li");
    li.textContent = `${r.name} — ${r.not_segmented ? "not segmented" : r.detections + " detections"}`;
    li.onclick = () => openStored(r.name);
    ul.appendChild(li);
  }
  $("storedDialog").hidden = false;
}

// ---------------------------------------------------------------- export
function download(name, blob) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob); a.download = name; a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

function exportPng() {
  const v = S.view;
  if (!v) return;
  const c = document.createElement("canvas");
  c.width = markCanvas.width; c.height = markCanvas.height;
  const x = c.getContext("2d");
  x.imageSmoothingEnabled = false;
  x.fillStyle = "#000"; x.fillRect(0, 0, c.width, c.height);
  x.drawImage(imageCanvas, 0, 0, c.width, c.height);
  x.drawImage(labelCanvas, 0, 0, c.width, c.height);
  x.drawImage(markCanvas, 0, 0);
  c.toBlob((b) => download(`${v.key || v.scan}.png`, b), "image/png");
}

function detectionsCsv(v) {
  const lines = ["id,class,x_nm,y_nm,area_nm2,score"];
  for (const d of v.dets.values()) lines.push([d.id, d.class, d.x_nm, d.y_nm, d.area_nm2, d.score].join(","));
  return lines.join("\n") + "\n";
}
function exportCsv() {
  const v = S.view;
  if (v) download(`${v.key || v.scan}-detections.csv`, new Blob([detectionsCsv(v)], { type: "text/csv" }));
}
window.stmLive.csv = () => (S.view ? detectionsCsv(S.view) : "");

// ---------------------------------------------------------------- hover and teach-in clicks
function toNm(ev) {
  const v = S.view, r = markCanvas.getBoundingClientRect();
  return [(ev.clientX - r.left) / r.width * v.width_nm, (ev.clientY - r.top) / r.height * v.height_nm, r];
}

function hover(ev) {
  const v = S.view, tip = $("tooltip");
  if (!v) { tip.hidden = true; return; }
  const [x, y, r] = toNm(ev), perPx = v.width_nm / r.width, reach = (+$("markSize").value + 3) * perPx;
  let best = null, bestD = reach * reach;
  for (const d of v.dets.values()) {
    if (S.hidden.has(d.class)) continue;
    const dd = (d.x_nm - x) ** 2 + (d.y_nm - y) ** 2;
    if (dd <= bestD) { best = d; bestD = dd; }
  }
  if (!best) { tip.hidden = true; return; }
  tip.textContent = `${best.class} · score ${(+best.score).toFixed(2)} · (${(+best.x_nm).toFixed(2)}, ` +
    `${(+best.y_nm).toFixed(2)}) nm · ${(+best.area_nm2).toFixed(2)} nm²`;
  tip.style.left = `${ev.clientX - r.left + 14}px`; tip.style.top = `${ev.clientY - r.top + 14}px`;
  tip.hidden = false;
}

let drag = null;
function tool() { return document.querySelector("input[name=tool]:checked").value; }

markCanvas.addEventListener("mousemove", (ev) => {
  if (drag) { const [x, y] = toNm(ev); drag.x1_nm = x; drag.y1_nm = y; S.dirty.marks = true; schedule(); }
  hover(ev);
});
markCanvas.addEventListener("mouseleave", () => { $("tooltip").hidden = true; });
markCanvas.addEventListener("mousedown", (ev) => {
  if (!S.view || !S.hello.teach || tool() !== "background") return;
  const [x, y] = toNm(ev);
  drag = { x0_nm: x, y0_nm: y, x1_nm: x, y1_nm: y, class: "background" };
});
window.addEventListener("mouseup", () => {
  if (!drag) return;
  const r = { x0_nm: Math.min(drag.x0_nm, drag.x1_nm), y0_nm: Math.min(drag.y0_nm, drag.y1_nm),
    x1_nm: Math.max(drag.x0_nm, drag.x1_nm), y1_nm: Math.max(drag.y0_nm, drag.y1_nm), class: "background" };
  drag = null;
  if (r.x1_nm - r.x0_nm > 0.05 && r.y1_nm - r.y0_nm > 0.05) S.pending.regions.push(r);
  S.dirty.marks = true; schedule(); refreshTeach();
});
markCanvas.addEventListener("click", (ev) => {
  if (!S.view || !S.hello.teach || tool() !== "point") return;
  const name = $("className").value.trim();
  if (!name) { $("teachMsg").textContent = "type the class name first (or 'background')"; return; }
  const [x, y] = toNm(ev);
  S.pending.points.push({ x_nm: +x.toFixed(4), y_nm: +y.toFixed(4), class: name });
  S.dirty.marks = true; schedule(); refreshTeach();
});

function teachKey() {
  const v = S.view;
  if (!v) return null;
  if (v.kind === "live") return v.finished && v.frameKey ? v.frameKey : null;
  return v.teachable || v.kind === "frame" ? v.key : null;
}

function refreshTeach() {
  const n = S.pending.points.length, m = S.pending.regions.length;
  $("pending").textContent = n + m ? `${n} point(s), ${m} region(s) to teach` : "no examples yet";
  const key = teachKey();
  $("teachBtn").disabled = !(key && n + m);
  $("teachHint").hidden = !!key;
  $("undoBtn").disabled = !(S.versions && S.versions.current);
}

async function teach() {
  const key = teachKey();
  if (!key) return;
  $("teachBtn").disabled = true;
  $("teachMsg").textContent = "adapting…";
  // What is sent leaves the pending list now: clicks made while the model adapts wait for the next Teach.
  const sent = S.pending;
  S.pending = { points: [], regions: [] };
  S.dirty.marks = true; schedule(); refreshTeach();
  const r = await api("api/teach", { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ key, points: sent.points, regions: sent.regions }) });
  const body = await r.json();
  if (!r.ok) {
    S.pending = { points: sent.points.concat(S.pending.points), regions: sent.regions.concat(S.pending.regions) };
    $("teachMsg").textContent = body.error || "teach-in failed";
    S.dirty.marks = true; schedule(); refreshTeach();
    return;
  }
  $("teachMsg").textContent = `version ${body.version}: model ${body.model_after.name} [${body.model_after.id}]`;
  S.dirty.marks = true; schedule(); refreshTeach();
}

async function undo() {
  const r = await api("api/undo", { method: "POST" });
  const body = await r.json();
  $("teachMsg").textContent = r.ok ? `undone: model now ${body.model.name} [${body.model.id}]` : body.error;
}

// ---------------------------------------------------------------- automation (the controller bridge)
async function automation(command) {
  // No command: ask the bridge for its state. A pause is sent at once and its answer shown.
  const options = command ? { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ command }) } : undefined;
  let body;
  try {
    const r = await api("api/automation", options);
    body = await r.json();
    if (!r.ok) {
      $("automationState").textContent = "no answer from the bridge";
      $("automationMsg").textContent = body.error || `HTTP ${r.status}`;
      return;
    }
  } catch (e) {
    $("automationMsg").textContent = String(e);
    return;
  }
  window.stmLive.automation = body;
  $("automationState").textContent = `automation ${body.state}` + (body.reason ? `: ${body.reason}` : "");
  $("automationMsg").textContent = command ? `${command} sent to ${body.endpoint}` : `bridge at ${body.endpoint}`;
  // A dry run has nothing to pause (automation is switched on in the configuration only).
  $("pauseBtn").disabled = !["running", "stopped"].includes(body.state);
  $("resumeBtn").disabled = !["paused", "stopped"].includes(body.state);
}

function onVersions(m) {
  S.versions = m;
  window.stmLive.versions = m;
  const ol = $("versions");  // a plain list: the base model, then v1, v2, ...
  ol.innerHTML = "";
  const base = document.createElement("li");
  base.textContent = `base model ${m.base_model.name} [${m.base_model.id}]`;
  base.className = m.current === 0 ? "current" : "";
  ol.appendChild(base);
  for (const v of m.versions) {
    const li = document.createElement("li");
    const link = document.createElement("a");
    link.href = `api/versions/${v.file}` + (S.token ? `?token=${encodeURIComponent(S.token)}` : "");
    link.textContent = `v${v.version}`;
    link.target = "_blank";
    li.appendChild(link);
    li.append(` ${v.time.slice(11, 19)} · ${v.frame} · +${v.points} point(s), ${v.regions} region(s) · ` +
      `${v.model_before.id} → ${v.model_after.id}`);
    li.className = v.undone ? "undone" : m.current === v.version ? "current" : "";
    ol.appendChild(li);
  }
  refreshTeach();
}

// ---------------------------------------------------------------- connection
function askToken(msg) {
  $("tokenMsg").textContent = msg || "";
  $("tokenDialog").hidden = false;
  $("tokenInput").focus();
}

$("tokenForm").onsubmit = (ev) => {
  ev.preventDefault();
  S.token = $("tokenInput").value;
  sessionStorage.setItem("stmLiveToken", S.token);
  $("tokenDialog").hidden = true;
  start();
};

function setConn(on, text) {
  S.connected = on;
  $("conn").textContent = text;
  $("conn").className = `badge ${on ? "on" : "off"}`;
}

function connect() {
  const url = new URL("ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  if (S.token) url.searchParams.set("token", S.token);
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  S.ws = ws;
  ws.onopen = () => { setConn(true, "live"); S.retryMs = 250; window.stmLive.connects++; };
  ws.onmessage = (ev) => {
    window.stmLive.messages++;
    if (typeof ev.data === "string") onText(JSON.parse(ev.data)); else onBinary(ev.data);
  };
  ws.onclose = () => {
    // The daemon restarted or the network went away: try again, a little slower each time (at most 5 s).
    setConn(false, "reconnecting…");
    setTimeout(start, S.retryMs);
    S.retryMs = Math.min(5000, S.retryMs * 2);
  };
}

async function start() {
  try {
    const r = await fetch("api/auth" + (S.token ? `?token=${encodeURIComponent(S.token)}` : ""));
    const a = await r.json();
    if (a.token_required && !a.ok) { setConn(false, "key needed"); askToken(S.token ? "the key was not accepted" : ""); return; }
  } catch (e) {
    setConn(false, "reconnecting…");
    setTimeout(start, S.retryMs);
    S.retryMs = Math.min(5000, S.retryMs * 2);
    return;
  }
  connect();
}

// ---------------------------------------------------------------- controls
$("cmap").onchange = () => { LUT = buildLut($("cmap").value); S.dirty.all = true; schedule(); };
for (const id of ["lowPct", "highPct"]) {
  $(id).oninput = () => {
    $("lowVal").textContent = `${$("lowPct").value} %`; $("highVal").textContent = `${$("highPct").value} %`;
    updateContrast(true); S.dirty.all = true; schedule();
  };
}
$("autoContrast").onchange = () => { updateContrast(true); S.dirty.all = true; schedule(); };
$("mapOpacity").oninput = () => { S.dirty.all = true; schedule(); };
$("markOpacity").oninput = $("markSize").oninput = () => { S.dirty.marks = true; schedule(); };
$("liveBtn").onclick = () => { S.following = true; if (S.live) showView(S.live); else clearView(); refreshPanels(); };
$("storedBtn").onclick = showStored;
$("storedClose").onclick = () => { $("storedDialog").hidden = true; };
$("pngBtn").onclick = exportPng;
$("csvBtn").onclick = exportCsv;
$("teachBtn").onclick = teach;
$("undoBtn").onclick = undo;
$("pauseBtn").onclick = () => automation("pause");
$("resumeBtn").onclick = () => automation("resume");
// The bridge's state is asked for every 5 s while the panel shows (a pause made elsewhere shows too).
setInterval(() => { if (!$("automationPanel").hidden && !document.hidden) automation(); }, 5000);
$("clearBtn").onclick = () => { S.pending = { points: [], regions: [] }; S.dirty.marks = true; schedule(); refreshTeach(); };
window.addEventListener("resize", () => { S.dirty.marks = true; schedule(); });

start();
