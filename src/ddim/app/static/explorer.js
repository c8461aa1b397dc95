// ddim explorer: a page over ddim serve's public HTTP API only (/v1/models, /v1/samplers, /v1/jobs and its
// events and results). No framework, no CDN. The page's state is in its URL (#view=…&gen.sampler=…); the API
// key stays in sessionStorage, never in the URL.
"use strict";

const $ = (id) => document.getElementById(id);
const els = (sel, root = document) => Array.from(root.querySelectorAll(sel));
let MODELS = [], SAMPLERS = [], RULES = [], SPACINGS = [];
const running = {};  // view prefix → job id (for cancel)

// ---------------------------------------------------------------------------------------------- the API
class ApiError extends Error {
  constructor(status, field, message) { super(message); this.status = status; this.field = field; }
}

function headers(extra = {}) {
  const key = $("api-key").value.trim();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function api(path, opts = {}) {
  const r = await fetch(path, { ...opts, headers: headers(opts.headers || {}) });
  if (!r.ok) {
    let field = "request", message = `${r.status} ${r.statusText}`;
    try { const e = (await r.json()).error; field = e.field; message = e.message; } catch (_) { /* not JSON */ }
    throw new ApiError(r.status, field, message);
  }
  return r;
}
const getJSON = async (path) => (await api(path)).json();
const submit = async (body) => (await api("/v1/jobs", {
  method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) })).json();

// Server-Sent Events over fetch (EventSource cannot send the API key header).
async function follow(id, onEvent) {
  const r = await api(`/v1/jobs/${id}/events`);
  const reader = r.body.getReader(), dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut); buf = buf.slice(cut + 2);
      let kind = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) kind = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      const ev = data ? JSON.parse(data) : {};
      onEvent(kind, ev);
      if (kind === "end") return ev;
    }
  }
  return getJSON(`/v1/jobs/${id}`);
}

async function runJob(prefix, body, onEvent = () => {}) {
  const t0 = performance.now();
  const { id } = await submit(body);
  running[prefix] = id;
  const end = await follow(id, onEvent);
  delete running[prefix];
  const wall = (performance.now() - t0) / 1000;
  if (end.status !== "done") throw new ApiError(409, "request", `job ${end.status}${end.error ? ": " + end.error : ""}`);
  const result = await (await api(`/v1/jobs/${id}/result?format=json`)).json();
  return { id, end, result, wall };
}

// ------------------------------------------------------------------------------------------ errors by field
function clearErrors(prefix) {
  els(`[data-prefix="${prefix}"] .error, section[data-prefix="${prefix}"] .error`).forEach((e) => e.remove());
  $("global-error").textContent = "";
}

function showError(prefix, err) {
  const field = (err.field || "request").split(".")[0];
  const section = document.querySelector(`section[data-prefix="${prefix}"]`);
  const input = section && section.querySelector(`[data-field="${field}"]`);
  const msg = document.createElement("span");
  msg.className = "error"; msg.setAttribute("role", "alert"); msg.dataset.errorFor = field;
  msg.textContent = err.message || String(err);
  if (input) { input.setAttribute("aria-invalid", "true"); input.closest("label").after(msg); }
  else { $("global-error").textContent = `${field}: ${msg.textContent}`; }
}

// ------------------------------------------------------------------------------------------ the URL state
function readState() { return new URLSearchParams(location.hash.slice(1)); }
function writeState() {
  const st = new URLSearchParams();
  st.set("view", currentView());
  st.set("cmp.count", String(els("#cmp-configs form").length));
  els("[data-state]").forEach((el) => {
    const v = el.type === "checkbox" ? (el.checked ? "1" : "0") : el.value;
    if (v !== "") st.set(el.dataset.state, v);
  });
  history.replaceState(null, "", "#" + st.toString());
}
function restore(root = document) {
  const st = readState();
  els("[data-state]", root).forEach((el) => {
    if (!st.has(el.dataset.state)) return;
    if (el.type === "checkbox") el.checked = st.get(el.dataset.state) === "1"; else el.value = st.get(el.dataset.state);
  });
}

// ---------------------------------------------------------------------------------------- the config forms
function option(select, value, label = value) {
  const o = document.createElement("option"); o.value = value; o.textContent = label; select.append(o);
}
function field(form, prefix, name, label, el) {
  const l = document.createElement("label"); l.textContent = label + " ";
  el.id = `${prefix}-${name}`; el.dataset.field = name.split("-")[0]; el.dataset.state = `${prefix}.${name}`;
  l.append(el); form.append(l); return el;
}
function input(type, value, attrs = {}) {
  const el = document.createElement("input"); el.type = type;
  if (type === "checkbox") el.checked = !!value; else el.value = value;
  Object.entries(attrs).forEach(([k, v]) => el.setAttribute(k, v)); return el;
}
function select(values, value) {
  const el = document.createElement("select"); values.forEach((v) => option(el, v[0], v[1])); el.value = value; return el;
}

// A full sampling configuration built from /v1/models and /v1/samplers: a new sampler or option shows up here
// with no change to the page.
function buildConfig(form, prefix, { model = true, seeds = true } = {}) {
  form.innerHTML = "";
  if (model) field(form, prefix, "model", "model", select(MODELS.map((m) => [m.id, m.id]), MODELS[0] && MODELS[0].id));
  const sampler = field(form, prefix, "sampler", "sampler", select([["", "(model default)"],
    ...SAMPLERS.map((s) => [s.name, s.name])], ""));
  const opts = document.createElement("fieldset"); opts.className = "options";
  const legend = document.createElement("legend"); legend.textContent = "sampler options"; opts.append(legend);
  form.append(opts);
  field(form, prefix, "steps", "steps (NFE budget without a sampler)", input("number", 20, { min: 1 }));
  field(form, prefix, "spacing", "spacing", select([["", "(default)"], ...SPACINGS.map((s) => [s, s])], ""));
  field(form, prefix, "rule", "guidance rule", select(RULES.map((r) => [r.name, r.name]), "cfg"));
  field(form, prefix, "scale", "guidance scale", input("number", "", { min: 0, step: "0.5", placeholder: "(default)" }));
  const cond = document.createElement("div"); cond.className = "condition"; form.append(cond);
  if (seeds) {
    field(form, prefix, "seed", "seed", input("number", 0, { min: 0 }));
    field(form, prefix, "n", "n", input("number", 8, { min: 1, max: 64 }));
  }
  const showOptions = () => {
    els("label", opts).forEach((l) => l.remove());
    const s = SAMPLERS.find((x) => x.name === sampler.value);
    Object.entries(s ? s.options : {}).forEach(([name, dflt]) => {
      const el = typeof dflt === "boolean" ? input("checkbox", dflt) :
        typeof dflt === "number" ? input("number", dflt, { step: "any" }) : input("text", dflt);
      el.dataset.option = name;
      field(opts, prefix, `opt-${name}`, name, el).dataset.field = "options";
    });
    restore(opts);
  };
  const showCondition = () => {
    cond.innerHTML = "";
    const m = model ? MODELS.find((x) => x.id === $(`${prefix}-model`).value) : null;
    const kind = m ? m.condition : "class";
    if (kind === "class") field(cond, prefix, "classes", "classes", input("text", "", { placeholder: "e.g. 3,7" }));
    if (kind === "prompt") {
      field(cond, prefix, "prompt", "prompt", input("text", "a photo of a cat"));
      field(cond, prefix, "negative_prompt", "negative prompt", input("text", ""));
    }
    restore(cond);
  };
  sampler.addEventListener("change", () => { showOptions(); writeState(); });
  if (model) $(`${prefix}-model`).addEventListener("change", () => { showCondition(); writeState(); });
  restore(form); showOptions(); showCondition();
}

function configBody(prefix, shared = {}) {
  const v = (name) => { const el = $(`${prefix}-${name}`); return el ? el.value.trim() : ""; };
  const body = { task: "sample", ...shared };
  if ($(`${prefix}-model`)) body.model = v("model");
  if (v("sampler")) body.sampler = v("sampler");
  body.steps = Number(v("steps") || 20);
  if (v("spacing")) body.spacing = v("spacing");
  const options = {};
  els(`[id^="${prefix}-opt-"]`).forEach((el) => {
    const s = SAMPLERS.find((x) => x.name === body.sampler);
    const dflt = s ? s.options[el.dataset.option] : undefined;
    const val = el.type === "checkbox" ? el.checked : el.type === "number" ? Number(el.value) : el.value;
    if (val !== dflt) options[el.dataset.option] = val;
  });
  if (Object.keys(options).length) body.options = options;
  const rule = v("rule"), scale = v("scale");
  if (rule !== "cfg" || scale !== "") body.guidance = { rule, ...(scale !== "" ? { scale: Number(scale) } : {}) };
  const classes = v("classes");
  if (classes) body.classes = classes.split(",").map((c) => Number(c.trim()));
  if (v("prompt")) body.prompt = [v("prompt")];
  if (v("negative_prompt")) body.negative_prompt = v("negative_prompt");
  if ($(`${prefix}-seed`)) { body.seed = Number(v("seed")); body.n = Number(v("n")); }
  return body;
}

const png = (b64) => `data:image/png;base64,${b64}`;
function images(container, list, cls = "") {
  container.innerHTML = "";
  list.forEach((b64, i) => {
    const img = new Image(); img.src = png(b64); img.alt = `sample ${i}`; img.className = cls; container.append(img);
  });
}
async function blobLink(a, path) {
  const blob = await (await api(path)).blob();
  a.href = URL.createObjectURL(blob); a.hidden = false;
}

// ----------------------------------------------------------------------------------------------- Generate
async function generate() {
  clearErrors("gen");
  const body = { ...configBody("gen"), preview_every: 1 };
  $("gen-run").disabled = true; $("gen-cancel").disabled = false;
  ["gen-dl-png", "gen-dl-npy", "gen-dl-json"].forEach((id) => { $(id).hidden = true; });
  $("gen-status").textContent = "queued";
  try {
    const { id, end, result, wall } = await runJob("gen", body, (kind, ev) => {
      if (kind === "progress") { $("gen-progress").max = ev.steps; $("gen-progress").value = ev.step;
        $("gen-status").textContent = `step ${ev.step} of ${ev.steps}`; }
      if (kind === "preview") $("gen-preview").src = png(ev.png);
    });
    images($("gen-images"), result.images);
    $("gen-images").dataset.job = id;
    await blobLink($("gen-dl-png"), `/v1/jobs/${id}/result?format=png`);
    await blobLink($("gen-dl-npy"), `/v1/jobs/${id}/result?format=npy`);
    const a = $("gen-dl-json");
    a.href = URL.createObjectURL(new Blob([JSON.stringify(body, null, 2)], { type: "application/json" }));
    a.hidden = false;
    $("gen-status").textContent = `done: ${end.nfe} NFE, ${wall.toFixed(2)} s`;
  } catch (e) { showError("gen", e); $("gen-status").textContent = e.field === "request" ? e.message : "refused"; }
  finally { $("gen-run").disabled = false; $("gen-cancel").disabled = true; }
}
async function cancel(prefix) {
  const id = running[prefix];
  if (id) { await api(`/v1/jobs/${id}`, { method: "DELETE" }); $(`${prefix}-status`).textContent = "cancelled"; }
}

// ------------------------------------------------------------------------------------------------ Compare
let cmpCount = 0;
function addConfig() {
  if (els("#cmp-configs form").length >= 4) return;
  const k = cmpCount++;
  const f = document.createElement("form"); f.className = "config"; f.dataset.prefix = `cmp${k}`;
  f.setAttribute("aria-label", `configuration ${k + 1}`);
  $("cmp-configs").append(f);
  buildConfig(f, `cmp${k}`, { model: false, seeds: false });
  f.querySelector(".condition").remove();
  const rm = document.createElement("button"); rm.type = "button"; rm.textContent = "Remove";
  rm.addEventListener("click", () => { if (els("#cmp-configs form").length > 2) { f.remove(); writeState(); } });
  f.append(rm);
}

function pixels(img) {
  const c = document.createElement("canvas"); c.width = img.naturalWidth; c.height = img.naturalHeight;
  const g = c.getContext("2d"); g.drawImage(img, 0, 0); return g.getImageData(0, 0, c.width, c.height);
}
const loaded = (img) => (img.complete && img.naturalWidth ? Promise.resolve() :
  new Promise((ok) => { img.onload = ok; img.onerror = ok; }));

// Where the seeds are shared, each image's difference from the first configuration's, as a heat map.
async function highlight(cols) {
  const base = els("img.sample", cols[0]);
  await Promise.all(els("img.sample").map(loaded));
  for (const col of cols.slice(1)) {
    let total = 0;
    const diffs = col.querySelector(".diffs"); diffs.innerHTML = "";
    els("img.sample", col).forEach((img, i) => {
      if (!base[i]) return;
      const a = pixels(base[i]), b = pixels(img);
      const c = document.createElement("canvas"); c.width = a.width; c.height = a.height; c.className = "diff";
      const out = c.getContext("2d").createImageData(a.width, a.height);
      let sum = 0;
      for (let p = 0; p < a.data.length; p += 4) {
        const d = Math.abs(a.data[p] - b.data[p]); sum += d;
        out.data[p] = 255; out.data[p + 1] = 255 - d; out.data[p + 2] = 255 - d; out.data[p + 3] = 255;
      }
      c.getContext("2d").putImageData(out, 0, 0);
      total += sum / (a.width * a.height * 255);
      c.title = `mean |difference| ${(sum / (a.width * a.height * 255)).toFixed(3)}`;
      diffs.append(c);
    });
    col.querySelector(".meandiff").textContent = `mean |difference| from 1: ${(total / base.length).toFixed(3)}`;
  }
}

async function compare() {
  clearErrors("cmp");
  const shared = { model: $("cmp-model").value, seed: Number($("cmp-seed").value), n: Number($("cmp-n").value) };
  const m = MODELS.find((x) => x.id === shared.model);
  if ($("cmp-classes").value.trim()) shared.classes = $("cmp-classes").value.split(",").map((c) => Number(c));
  const digits = m && m.image_shape.join("x") === "1x8x8";
  if (digits) shared.score = true;
  const forms = els("#cmp-configs form");
  $("cmp-results").innerHTML = ""; $("cmp-status").textContent = `running ${forms.length} configurations`;
  const cols = forms.map((f, k) => {
    const col = document.createElement("div"); col.className = "column";
    col.innerHTML = `<h3>${k + 1}</h3><p class="stats"></p><div class="grid"></div><p class="meandiff"></p>` +
      `<div class="diffs grid"></div>`;
    $("cmp-results").append(col); return col;
  });
  const jobs = forms.map((f, k) => runJob(`cmp${k}`, configBody(f.dataset.prefix, shared)).then((r) => {
    const q = r.result.summary && r.result.summary.quality;
    const s = cols[k].querySelector(".stats");
    s.textContent = `${r.result.provenance.plan.sampler} · ${r.end.nfe} NFE · ${r.wall.toFixed(2)} s` +
      (q ? ` · FD ${q.fd.toFixed(2)}${q.acc !== undefined ? ` · class accuracy ${(100 * q.acc).toFixed(0)} %` : ""}` : "");
    cols[k].dataset.job = r.id;
    images(cols[k].querySelector(".grid"), r.result.images, "sample");
  }).catch((e) => { showError(f.dataset.prefix.startsWith("cmp") ? "cmp" : "cmp", e);
    cols[k].querySelector(".stats").textContent = `refused: ${e.field}: ${e.message}`; }));
  await Promise.all(jobs);
  await highlight(cols);
  $("cmp-status").textContent = `done (same seeds${digits ? "; FD: the digit classifier's, biased upwards at small n" : ""})`;
}

// --------------------------------------------------------------------------------------------- Trajectory
let frames = [];
function showFrame() {
  const i = Number($("traj-step").value) - 1, k = Number($("traj-index").value);
  const f = frames[i];
  if (!f) return;
  $("traj-step-label").textContent = `step ${f.step} of ${f.steps}`;
  if (f.states[k]) $("traj-xt").src = png(f.states[k]);
  if (f.images[k]) $("traj-x0").src = png(f.images[k]);
}
async function trajectory() {
  clearErrors("traj");
  frames = [];
  const body = { ...configBody("traj"), preview_every: 1 };
  body.n = Math.min(body.n, 8);
  $("traj-status").textContent = "running";
  try {
    const { end } = await runJob("traj", body, (kind, ev) => { if (kind === "preview") frames.push(ev); });
    $("traj-step").max = frames.length; $("traj-step").value = frames.length; $("traj-step").disabled = false;
    $("traj-status").textContent = `${frames.length} steps, ${end.nfe} NFE`;
    showFrame();
  } catch (e) { showError("traj", e); $("traj-status").textContent = "refused"; }
}

// ------------------------------------------------------------------------------------------------- Invert
let upload = null;
function invertBody(task) {
  const body = { task, model: $("inv-model").value, steps: Number($("inv-steps").value) };
  if (upload) { body.data = upload; body.n = 1; } else { body.data = "digits"; body.index = [Number($("inv-index").value)]; }
  if ($("inv-class").value !== "") body.classes = [Number($("inv-class").value)];
  return body;
}
async function invert() {
  clearErrors("inv");
  const body = { ...invertBody("invert"), refine: $("inv-method").value === "refined" ? 3 : 0 };
  $("inv-status").textContent = "inverting";
  try {
    const { result, end } = await runJob("inv", body);
    const pics = result.pictures;
    $("inv-original").src = png(pics.inputs[0]); $("inv-noise").src = png(pics.encodings[0]);
    $("inv-recon").src = png(pics.reconstruction[0]);
    $("inv-error").textContent = `reconstruction MSE ${result.summary.image_mse.toExponential(2)} ` +
      `(${body.refine ? "refined" : "naive"} inversion, ${body.steps} steps, ${end.nfe} NFE)`;
    $("inv-status").textContent = "done";
  } catch (e) { showError("inv", e); $("inv-status").textContent = "refused"; }
}
async function regenerate() {
  clearErrors("inv");
  const m = MODELS.find((x) => x.id === $("inv-model").value);
  const to = $("inv-to").value.trim();
  const body = { ...invertBody("edit"), inversion: $("inv-method").value };
  if (m && m.condition === "prompt") body.to_prompt = to; else body.to_class = Number(to);
  $("inv-edit-status").textContent = "regenerating";
  try {
    const { result } = await runJob("inv", body);
    const rows = result.pictures.grid;  // rows: real, reconstruction, edited
    $("inv-edited").src = png(rows[rows.length - 1][0]);
    $("inv-edit-status").textContent = `done: ${result.labels.join(", ")}`;
  } catch (e) { showError("inv", e); $("inv-edit-status").textContent = "refused"; }
}

// ------------------------------------------------------------------------------------------------- views
function currentView() { const t = els("[role=tab]").find((b) => b.getAttribute("aria-selected") === "true");
  return t ? t.dataset.view : "generate"; }
function showView(name) {
  els("[role=tab]").forEach((b) => { const on = b.dataset.view === name;
    b.setAttribute("aria-selected", String(on)); b.tabIndex = on ? 0 : -1; });
  els("[role=tabpanel]").forEach((p) => { p.hidden = p.id !== `view-${name}`; });
  writeState();
}

async function start() {
  $("api-key").value = sessionStorage.getItem("ddim-key") || "";
  $("api-key").addEventListener("change", () => { sessionStorage.setItem("ddim-key", $("api-key").value); load(); });
  els("[role=tab]").forEach((b) => {
    b.addEventListener("click", () => showView(b.dataset.view));
    b.addEventListener("keydown", (e) => {
      const tabs = els("[role=tab]"), i = tabs.indexOf(b);
      if (e.key === "ArrowRight" || e.key === "ArrowLeft") {
        const next = tabs[(i + (e.key === "ArrowRight" ? 1 : tabs.length - 1)) % tabs.length];
        next.focus(); showView(next.dataset.view);
      }
    });
  });
  $("gen-run").addEventListener("click", generate);
  $("gen-cancel").addEventListener("click", () => cancel("gen"));
  $("cmp-add").addEventListener("click", () => { addConfig(); writeState(); });
  $("cmp-run").addEventListener("click", compare);
  $("traj-run").addEventListener("click", trajectory);
  $("traj-step").addEventListener("input", showFrame);
  $("traj-index").addEventListener("change", showFrame);
  $("inv-run").addEventListener("click", invert);
  $("inv-edit").addEventListener("click", regenerate);
  $("inv-file").addEventListener("change", () => {
    const f = $("inv-file").files[0];
    if (!f) { upload = null; return; }
    const r = new FileReader(); r.onload = () => { upload = r.result; }; r.readAsDataURL(f);
  });
  document.addEventListener("change", (e) => { if (e.target.dataset && e.target.dataset.state) writeState(); });
  await load();
  showView(readState().get("view") || "generate");
}

async function load() {
  try {
    [MODELS, { samplers: SAMPLERS, guidance_rules: RULES, spacings: { grid: SPACINGS } }] = await Promise.all([
      getJSON("/v1/models").then((d) => d.data), getJSON("/v1/samplers")]);
    RULES = Array.isArray(RULES) ? RULES : Object.entries(RULES).map(([name, r]) => ({ name, ...r }));
  } catch (e) { $("global-error").textContent = `${e.field}: ${e.message}`; return; }
  $("global-error").textContent = "";
  ["cmp-model", "inv-model"].forEach((id) => { $(id).innerHTML = ""; MODELS.forEach((m) => option($(id), m.id)); });
  $("cmp-model").dataset.state = "cmp.model"; $("cmp-seed").dataset.state = "cmp.seed";
  $("cmp-n").dataset.state = "cmp.n"; $("cmp-classes").dataset.state = "cmp.classes";
  $("inv-model").dataset.state = "inv.model"; $("inv-index").dataset.state = "inv.index";
  $("inv-method").dataset.state = "inv.method"; $("inv-steps").dataset.state = "inv.steps";
  $("inv-class").dataset.state = "inv.class"; $("inv-to").dataset.state = "inv.to";
  $("traj-index").dataset.state = "traj.index";
  buildConfig($("gen-form"), "gen");
  buildConfig($("traj-form"), "traj");
  $("cmp-configs").innerHTML = ""; cmpCount = 0;
  const k = Math.max(2, Math.min(4, Number(readState().get("cmp.count") || 2)));
  for (let i = 0; i < k; i++) addConfig();
  restore();
}

window.addEventListener("DOMContentLoaded", start);
