"""The single web page of ``coophash serve``: HTML, CSS and JavaScript inline, nothing loaded from elsewhere.

Drop or choose an image (or click a database item) and the page shows the top-k thumbnails with their
Hamming distances, a correct/incorrect mark where labels are known, and the query's OOD score.
"""
from __future__ import annotations

__all__ = ["PAGE_HTML"]

PAGE_HTML = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>coophash search</title>
<style>
  :root { --ink:#1d2430; --muted:#5f6b7a; --line:#d8dee6; --bg:#f5f7fa; --ok:#1a7f37; --bad:#c62828; --acc:#2457c5; }
  * { box-sizing: border-box; }
  body { margin:0; font:14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color:var(--ink); background:var(--bg); }
  header { padding:12px 20px; background:#fff; border-bottom:1px solid var(--line); display:flex; gap:16px; align-items:baseline; }
  header h1 { margin:0; font-size:18px; }
  #info { color:var(--muted); }
  main { display:grid; grid-template-columns: 300px 1fr; gap:20px; padding:20px; }
  section { background:#fff; border:1px solid var(--line); border-radius:8px; padding:14px; }
  h2 { font-size:14px; margin:0 0 10px; text-transform:uppercase; letter-spacing:.04em; color:var(--muted); }
  #drop { display:block; border:2px dashed var(--line); border-radius:8px; padding:18px; text-align:center; cursor:pointer; color:var(--muted); }
  #drop.over { border-color:var(--acc); color:var(--acc); background:#eef3ff; }
  #file { display:block; margin:8px auto 0; max-width:100%; }
  .row { display:flex; gap:8px; align-items:center; margin-top:10px; }
  .row label { min-width:90px; color:var(--muted); }
  input[type=number], select { padding:4px 6px; border:1px solid var(--line); border-radius:4px; }
  #k { width:70px; }
  #query { margin-top:12px; text-align:center; min-height:20px; }
  #query-preview { width:128px; height:128px; object-fit:contain; image-rendering:pixelated; border:1px solid var(--line); border-radius:6px; background:#000; }
  #query-preview[hidden] { display:none; }
  #ood { margin-top:6px; font-variant-numeric:tabular-nums; }
  #status { margin:0 0 10px; min-height:20px; color:var(--muted); }
  #status.error { color:var(--bad); font-weight:600; }
  .grid { display:grid; grid-template-columns: repeat(auto-fill, minmax(96px, 1fr)); gap:10px; }
  figure { margin:0; border:1px solid var(--line); border-radius:6px; padding:6px; text-align:center; background:#fff; }
  figure.correct { border-color:var(--ok); box-shadow:0 0 0 1px var(--ok) inset; }
  figure.incorrect { border-color:var(--bad); box-shadow:0 0 0 1px var(--bad) inset; }
  .thumb { width:80px; height:80px; object-fit:contain; image-rendering:pixelated; background:#000; border-radius:4px; }
  .noimg { width:80px; height:80px; margin:auto; display:flex; align-items:center; justify-content:center; background:#eceff3; color:var(--muted); border-radius:4px; font-size:11px; }
  figcaption { font-size:12px; margin-top:4px; font-variant-numeric:tabular-nums; }
  .distance { font-weight:600; }
  .mark.ok { color:var(--ok); font-weight:700; }
  .mark.bad { color:var(--bad); font-weight:700; }
  .label { color:var(--muted); }
  #database figure { cursor:pointer; }
  #database figure:hover { border-color:var(--acc); }
  button { padding:4px 10px; border:1px solid var(--line); border-radius:4px; background:#fff; cursor:pointer; }
  .db-head { display:flex; justify-content:space-between; align-items:center; }
</style>
</head>
<body>
<header><h1>coophash search</h1><span id="info">loading…</span></header>
<main>
  <div>
    <section>
      <h2>Query</h2>
      <label id="drop" for="file">Drop an image here or choose one
        <input id="file" type="file" accept="image/png,image/jpeg">
      </label>
      <div class="row"><label for="k">results (k)</label><input id="k" type="number" min="1" value="10"></div>
      <div class="row"><label for="qlabel">query label</label><select id="qlabel"><option value="">unknown</option></select></div>
      <div id="query"><img id="query-preview" alt="query" hidden><div id="ood"></div></div>
    </section>
  </div>
  <div>
    <section>
      <h2>Results</h2>
      <p id="status">Choose an image or click a database item.</p>
      <div id="results" class="grid"></div>
    </section>
    <section style="margin-top:20px">
      <div class="db-head"><h2>Database items</h2><button id="shuffle" type="button">show others</button></div>
      <div id="database" class="grid"></div>
    </section>
  </div>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let classes = [];
let total = 0;

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
function labelText(labels) {
  if (!labels || labels.length === 0) return "";
  return labels.map((c) => classes[c] !== undefined ? classes[c] : String(c)).join(", ");
}
function thumb(url) {
  if (!url) return el("div", "noimg", "no image");
  const img = el("img", "thumb");
  img.alt = "item"; img.src = url;
  return img;
}
function setStatus(text, isError) {
  const s = $("status");
  s.textContent = text;
  s.className = isError ? "error" : "";
}
async function answer(resp) {
  let body = null;
  try { body = await resp.json(); } catch (e) { body = null; }
  if (!resp.ok) throw new Error((body && body.error) || ("HTTP " + resp.status));
  return body;
}
function render(data, ms) {
  const box = $("results");
  box.replaceChildren();
  const r = data.results[0];
  for (const h of r.hits) {
    const fig = el("figure", "hit");
    fig.dataset.id = h.id;
    if (h.correct === true) fig.classList.add("correct");
    if (h.correct === false) fig.classList.add("incorrect");
    fig.appendChild(thumb(h.image_url));
    const cap = el("figcaption");
    cap.appendChild(el("span", "distance", "d=" + h.distance));
    if (h.correct !== null) cap.appendChild(el("span", "mark " + (h.correct ? "ok" : "bad"), h.correct ? " \u2713" : " \u2717"));
    cap.appendChild(el("div", "label", labelText(h.labels) + " #" + h.id));
    fig.appendChild(cap);
    box.appendChild(fig);
  }
  $("ood").textContent = r.ood_score === null ? "OOD score: n/a for this method" : "OOD score: " + r.ood_score.toFixed(4);
  const marks = r.hits.filter((h) => h.correct !== null);
  const right = marks.filter((h) => h.correct).length;
  const extra = marks.length ? " \u2014 " + right + "/" + marks.length + " share a label with the query" : "";
  setStatus(r.hits.length + " results in " + ms + " ms" + extra, false);
}
async function run(request) {
  setStatus("searching…", false);
  const t0 = performance.now();
  try {
    const data = await answer(await request());
    render(data, Math.round(performance.now() - t0));
  } catch (e) {
    $("results").replaceChildren();
    setStatus(e.message, true);
  }
}
function k() { return $("k").value || "10"; }
function searchFile(file) {
  if (!file) return;
  const pv = $("query-preview");
  pv.src = URL.createObjectURL(file); pv.hidden = false;
  const form = new FormData();
  form.append("images", file, file.name);
  form.append("k", k());
  if ($("qlabel").value !== "") form.append("labels", $("qlabel").value);
  run(() => fetch("/search", { method: "POST", body: form }));
}
function searchItem(item) {
  const pv = $("query-preview");
  if (item.image_url) { pv.src = item.image_url; pv.hidden = false; } else { pv.hidden = true; }
  const body = { ids: [item.id], k: parseInt(k(), 10) };
  run(() => fetch("/search", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) }));
}
async function loadDatabase() {
  const n = 24;
  const offset = total > n ? Math.floor(Math.random() * (total - n)) : 0;
  try {
    const data = await answer(await fetch("/items?limit=" + n + "&offset=" + offset));
    const box = $("database");
    box.replaceChildren();
    for (const item of data.items) {
      const fig = el("figure", "item");
      fig.dataset.id = item.id;
      fig.title = "search with item " + item.id;
      fig.appendChild(thumb(item.image_url));
      fig.appendChild(el("figcaption", "label", labelText(item.labels) + " #" + item.id));
      fig.addEventListener("click", () => searchItem(item));
      box.appendChild(fig);
    }
  } catch (e) { setStatus(e.message, true); }
}
async function init() {
  try {
    const s = await answer(await fetch("/stats"));
    classes = s.classes || [];
    total = s.items;
    $("info").textContent = s.method + (s.loss ? "/" + s.loss : "") + " \u00b7 " + s.bits + " bits \u00b7 " +
      s.items + " items \u00b7 " + s.dataset + " \u00b7 " + s.backend;
    const sel = $("qlabel");
    classes.forEach((name, i) => { const o = el("option", "", name); o.value = String(i); sel.appendChild(o); });
  } catch (e) { setStatus(e.message, true); }
  loadDatabase();
}
$("file").addEventListener("change", (ev) => searchFile(ev.target.files[0]));
const drop = $("drop");
["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (ev) => { ev.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (ev) => { ev.preventDefault(); drop.classList.remove("over"); }));
drop.addEventListener("drop", (ev) => searchFile(ev.dataTransfer.files[0]));
$("shuffle").addEventListener("click", loadDatabase);
init();
</script>
</body>
</html>
"""
