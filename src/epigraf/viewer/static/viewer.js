// epigraf view — the page's side of the viewer API (epigraf/viewer/server.py documents the endpoints).
//
// Frames are fetched as images. While the mouse drags or a slider moves, small fast previews are requested
// (at most MAX_PREVIEWS_IN_FLIGHT at a time; newer changes coalesce into one pending request); when it stops
// for SETTLE_MS, the full frame. Every request carries this tab's id and an increasing number: the server skips
// requests that a newer one of this tab has superseded, and the page ignores any answer older than the one on
// screen, so the view never lags behind the mouse.
"use strict";

const $ = (id) => document.getElementById(id);
const SETTLE_MS = 200;
const MAX_PREVIEWS_IN_FLIGHT = 2;
const PREVIEW_RAY_STEPS = 1;
const PITCH_LIMIT = 0.01; // keep the camera off the poles, where the look-at frame flips
const WHEEL_ZOOM = 0.001; // fov factor per wheel delta unit: exp(deltaY · WHEEL_ZOOM)
const RANDOM_SEEDS = 100000;
const MESH_GRIDS = [64, 128, 256];
const PREVIEW_RESOLUTIONS = [32, 64, 128];

const client = Array.from(crypto.getRandomValues(new Uint8Array(8)), (b) => b.toString(16).padStart(2, "0")).join("");
let info = null;
const view = { yaw: 0, pitch: Math.PI / 2, fov: 12 };
let seq = 0; // the newest frame request sent
let shownSeq = 0; // the answer on screen; older answers are ignored
let previewsInFlight = 0;
let previewWanted = false;
let settleTimer = null;
let drag = null;

// Numbers go to the server and into the command line with the same text, so both render the same camera.
const fmt = (x) => String(Number(x.toFixed(4)));
const clamp = (x, lo, hi) => Math.min(hi, Math.max(lo, x));
const pad4 = (n) => String(n).padStart(4, "0");
const mode = () => document.querySelector('input[name="mode"]:checked').value;

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  document.body.dataset.error = message;
}

function clearError() {
  $("error").hidden = true;
  delete document.body.dataset.error;
}

function seedValue(id) {
  const input = $(id);
  if (input.validity.badInput) throw new Error(`${id}: not a whole number`);
  return input.value.trim();
}

// The scene as the server names it: a mix of 0 is the first seed alone, a mix of 1 the second.
function scene() {
  const seed = seedValue("seed") || "0";
  const seed2 = seedValue("seed2");
  const mix = Number($("mix").value);
  if (seed2 === "" || mix === 0) return { seed, seed2: null, mix: 0 };
  if (mix === 1) return { seed: seed2, seed2: null, mix: 0 };
  return { seed, seed2, mix };
}

function latentParams() {
  const s = scene();
  const p = new URLSearchParams({ seed: s.seed, psi: fmt(Number($("psi").value)) });
  if (info.c_dim > 0 && $("class").value !== "") p.set("class", $("class").value);
  if (s.seed2 !== null) {
    p.set("seed2", s.seed2);
    p.set("mix", fmt(s.mix));
  }
  return p;
}

function frameParams(preview) {
  const p = latentParams();
  const res = Number($("res").value);
  p.set("yaw", fmt(view.yaw));
  p.set("pitch", fmt(view.pitch));
  p.set("fov", fmt(view.fov));
  p.set("res", String(preview ? Math.min(res, Number($("preview-res").value)) : res));
  p.set("steps", preview ? String(Math.min(PREVIEW_RAY_STEPS, Number($("steps").value))) : $("steps").value);
  p.set("mode", mode());
  if (preview) p.set("format", "jpeg");
  return p;
}

async function errorOf(response) {
  const body = await response.json().catch(() => ({ error: `${response.status} ${response.statusText}` }));
  return body.error;
}

function requestFrame(preview) {
  let params;
  try {
    params = frameParams(preview);
  } catch (err) {
    showError(err.message);
    return;
  }
  const mySeq = ++seq;
  params.set("client", client);
  params.set("seq", String(mySeq));
  document.body.dataset.latestSeq = String(mySeq);
  if (preview) previewsInFlight++;
  const started = performance.now();
  fetch(`api/frame?${params}`)
    .then(async (response) => {
      if (response.status === 409) return; // superseded: the newer request is answered instead
      const blob = response.ok ? await response.blob() : null;
      const error = response.ok ? null : await errorOf(response);
      if (mySeq < shownSeq) return; // a newer answer is already on screen
      shownSeq = mySeq;
      document.body.dataset.shownSeq = String(mySeq);
      document.body.dataset.shownPreview = preview ? "1" : "0";
      if (error !== null) {
        showError(error);
        return;
      }
      clearError();
      showFrame(blob);
      const ms = Math.round(performance.now() - started);
      $("status").textContent = `${params.get("res")}²${preview ? " preview" : ""} · render ` +
        `${response.headers.get("X-Render-Ms")} ms · tri-planes ${response.headers.get("X-Cache")} · ${ms} ms total`;
    })
    .catch((err) => showError(`no answer from the viewer server: ${err.message}`))
    .finally(() => {
      if (!preview) return;
      previewsInFlight--;
      if (previewWanted) {
        previewWanted = false;
        requestFrame(true);
      }
    });
}

function showFrame(blob) {
  const img = $("frame");
  const old = img.src;
  img.src = URL.createObjectURL(blob);
  if (old.startsWith("blob:")) img.addEventListener("load", () => URL.revokeObjectURL(old), { once: true });
}

function requestPreview() {
  if (previewsInFlight >= MAX_PREVIEWS_IN_FLIGHT) previewWanted = true;
  else requestFrame(true);
}

function refine() {
  clearTimeout(settleTimer);
  previewWanted = false; // a late preview must not replace the full frame
  requestFrame(false);
}

// interactive: a drag, wheel or slider in motion — preview now, the full frame once it settles.
function changed(interactive) {
  updateReadouts();
  if (!interactive) {
    refine();
    return;
  }
  requestPreview();
  clearTimeout(settleTimer);
  settleTimer = setTimeout(refine, SETTLE_MS);
}

function shellQuote(s) {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, "'\\''")}'`;
}

function fileStem() {
  const s = scene();
  return s.seed2 === null ? `seed${pad4(s.seed)}` : `seed${pad4(s.seed)}-${pad4(s.seed2)}_mix${fmt(s.mix)}`;
}

function modeSuffix() {
  return { rgb: "", depth: "_depth", normals: "_normals" }[mode()];
}

// The `epigraf generate` call that writes the same image as "save PNG".
function generateCommand() {
  const s = scene();
  if (s.seed2 !== null) return "(an interpolated latent: epigraf generate renders single seeds)";
  const args = ["epigraf", "generate", "--checkpoint", shellQuote(info.checkpoint || "CHECKPOINT"), "--seeds", s.seed];
  if (info.c_dim > 0 && $("class").value !== "") args.push("--class-index", $("class").value);
  args.push("--truncation", fmt(Number($("psi").value)), "--yaw", fmt(view.yaw), "--pitch", fmt(view.pitch),
    "--fov", fmt(view.fov), "--resolution", $("res").value, "--ray-step-multiplier", $("steps").value,
    "--device", info.device);
  if (mode() !== "rgb") args.push(`--${mode()}`);
  return args.join(" ");
}

function updateReadouts() {
  $("psi-value").textContent = fmt(Number($("psi").value));
  $("mix-value").textContent = fmt(Number($("mix").value));
  $("camera").textContent = `yaw ${fmt(view.yaw)} · pitch ${fmt(view.pitch)} rad · fov ${fmt(view.fov)}°`;
  try {
    $("command").textContent = generateCommand();
  } catch (err) {
    $("command").textContent = err.message;
  }
}

function download(blob, name) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 60000);
}

// Full resolution PNG without client/seq, so it is never superseded; the same pixels as `epigraf generate`.
async function savePng() {
  const params = frameParams(false);
  const response = await fetch(`api/frame?${params}`);
  if (!response.ok) throw new Error(await errorOf(response));
  download(await response.blob(), `${fileStem()}${modeSuffix()}.png`);
}

async function exportMesh() {
  const params = latentParams();
  params.set("format", $("mesh-format").value);
  params.set("grid", $("mesh-grid").value);
  if ($("mesh-level").validity.badInput) throw new Error("iso-level: not a number");
  if ($("mesh-level").value.trim() !== "") params.set("level", $("mesh-level").value.trim());
  $("status").textContent = "extracting the mesh…";
  const response = await fetch(`api/mesh?${params}`);
  if (!response.ok) throw new Error(await errorOf(response));
  download(await response.blob(), `${fileStem()}.${$("mesh-format").value}`);
  $("status").textContent = "mesh saved";
}

function options(select, values, selected, label = String) {
  select.replaceChildren(...values.map((v) => new Option(label(v), String(v), false, String(v) === String(selected))));
}

function resetCamera() {
  view.yaw = info.yaw;
  view.pitch = info.pitch;
  view.fov = info.fov;
}

function bindControls() {
  const stage = $("stage");
  stage.addEventListener("pointerdown", (e) => {
    if (e.button !== 0) return;
    drag = { x: e.clientX, y: e.clientY, moved: false };
    stage.setPointerCapture(e.pointerId);
    stage.classList.add("dragging");
  });
  stage.addEventListener("pointermove", (e) => {
    if (drag === null) return;
    // Half a turn per image width: grabbing the object and dragging right turns its front to the right.
    const radiansPerPixel = Math.PI / ($("frame").clientWidth || stage.clientWidth);
    view.yaw += (e.clientX - drag.x) * radiansPerPixel;
    view.pitch = clamp(view.pitch - (e.clientY - drag.y) * radiansPerPixel, PITCH_LIMIT, Math.PI - PITCH_LIMIT);
    drag = { x: e.clientX, y: e.clientY, moved: true };
    changed(true);
  });
  const endDrag = () => {
    if (drag === null) return;
    const moved = drag.moved;
    drag = null;
    stage.classList.remove("dragging");
    if (moved) refine(); // the mouse stopped: full resolution now
  };
  stage.addEventListener("pointerup", endDrag);
  stage.addEventListener("pointercancel", endDrag);
  stage.addEventListener("wheel", (e) => {
    e.preventDefault();
    // Bounds rounded inwards to fmt's 4 decimals, so the value sent is always inside the server's range.
    const lo = Math.ceil(info.fov_min * 1e4) / 1e4;
    const hi = Math.floor(info.fov_max * 1e4) / 1e4;
    view.fov = clamp(view.fov * Math.exp(e.deltaY * WHEEL_ZOOM), lo, hi);
    changed(true);
  }, { passive: false });
  stage.addEventListener("dblclick", () => {
    resetCamera();
    changed(false);
  });
  $("reset").addEventListener("click", () => {
    resetCamera();
    changed(false);
  });
  $("random").addEventListener("click", () => {
    $("seed").value = String(Math.floor(Math.random() * RANDOM_SEEDS));
    changed(false);
  });
  for (const id of ["seed", "seed2"]) $(id).addEventListener("input", () => changed(false));
  for (const id of ["psi", "mix"]) {
    $(id).addEventListener("input", () => changed(true));
    $(id).addEventListener("change", () => changed(false));
  }
  for (const id of ["class", "res", "preview-res", "steps"]) $(id).addEventListener("change", () => changed(false));
  for (const radio of document.querySelectorAll('input[name="mode"]')) {
    radio.addEventListener("change", () => changed(false));
  }
  $("save-png").addEventListener("click", () => savePng().catch((err) => showError(`save PNG: ${err.message}`)));
  $("export-mesh").addEventListener("click", () => exportMesh().catch((err) => showError(`export mesh: ${err.message}`)));
}

async function init() {
  const response = await fetch("api/info");
  if (!response.ok) throw new Error(await errorOf(response));
  info = await response.json();
  $("model").textContent = `${info.name || "model"} · ${info.image_resolution}² · ` +
    `${info.c_dim > 0 ? `${info.c_dim} classes` : "unconditional"} · ${info.device}`;
  document.title = `epigraf view · ${info.name || "model"}`;
  $("psi").value = String(info.truncation);
  $("seed").max = $("seed2").max = String(info.max_seed);
  options($("res"), info.resolutions, info.resolution, (r) => `${r}²`);
  options($("preview-res"), PREVIEW_RESOLUTIONS, 64, (r) => `${r}²`);
  const multipliers = Array.from({ length: info.max_ray_step_multiplier }, (_, i) => i + 1);
  // Coarse and fine samples per ray, num_ray_steps × m each.
  options($("steps"), multipliers, info.ray_step_multiplier,
    (m) => `${m} (${m * info.num_ray_steps} + ${m * info.num_ray_steps} samples)`);
  options($("mesh-format"), info.mesh_formats, info.mesh_formats[0]);
  options($("mesh-grid"), MESH_GRIDS.filter((g) => g >= info.mesh_grid_range[0] && g <= info.mesh_grid_range[1]),
    info.mesh_grid, (g) => `${g}³`);
  if (info.c_dim > 0) {
    const classes = Array.from({ length: info.c_dim }, (_, i) => i);
    $("class").replaceChildren(new Option("the seed's own", ""), ...classes.map((k) => new Option(String(k), String(k))));
    $("class-row").hidden = false;
  }
  resetCamera();
  bindControls();
  changed(false);
}

init().catch((err) => showError(`cannot start the viewer: ${err.message}`));
