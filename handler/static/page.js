// The upload page: sends the file to this page's own server (which holds the model server's key),
// shows the verdict, the face box and the Grad-CAM overlay, and pages through the history.
"use strict";

const $ = (id) => document.getElementById(id);
const MAX_BYTES = 16 * 1024 * 1024;
const PER_PAGE = 10;
let historyPage = 1;
let lastFace = null, lastRegion = null; // re-placed when the window resizes

// What each refusal means for a person; the server's own message follows it.
const FRIENDLY = {
  empty_body: "The file is empty.",
  not_an_image: "That file is not an image the detector can read.",
  unsupported_format: "That image format is not supported: use JPEG, PNG, WebP, BMP, TIFF or GIF.",
  corrupt_image: "The image is damaged or cut short.",
  image_too_small: "The image is too small to find a face in.",
  image_too_large: "The image is too large.",
  unprocessable_image: "The detector could not process this image.",
  server_unavailable: "The model server is not answering right now; try again shortly.",
  model_server_error: "The model server could not answer this time; try again shortly.",
};

function showError(answer) {
  const error = $("error");
  const friendly = FRIENDLY[answer.error] || "The image was refused.";
  error.textContent = answer.message ? `${friendly} (${answer.message})` : friendly;
  error.dataset.code = answer.error || "";
  error.hidden = false;
  $("result").hidden = true;
}

async function analyse(file) {
  $("error").hidden = true;
  if (file.size > MAX_BYTES) {
    showError({ error: "image_too_large", message: "the file is over 16 MiB" });
    return;
  }
  $("status").textContent = `Checking ${file.name} ...`;
  let answer;
  try {
    const response = await fetch("/api/explain", {
      method: "POST",
      headers: { "Content-Type": file.type || "application/octet-stream" },
      body: file,
    });
    answer = await response.json();
  } catch (err) {
    answer = { error: "server_unavailable", message: String(err) };
  }
  $("status").textContent = "";
  if (answer.error) showError(answer);
  else await showVerdict(file, answer);
  // the record is written a moment after the answer (off the model's hot path)
  setTimeout(() => loadHistory(1), 1000);
}

function place(element, box, image) {
  // boxes are in the original image's pixels; the photo is shown scaled
  const sx = image.clientWidth / image.naturalWidth, sy = image.clientHeight / image.naturalHeight;
  element.style.left = `${box[0] * sx}px`;
  element.style.top = `${box[1] * sy}px`;
  element.style.width = `${(box[2] - box[0]) * sx}px`;
  element.style.height = `${(box[3] - box[1]) * sy}px`;
}

async function showVerdict(file, answer) {
  const photo = $("photo");
  photo.src = URL.createObjectURL(file);
  await photo.decode().catch(() => {});
  $("result").hidden = false;

  const verdict = $("verdict");
  verdict.textContent = answer.label;
  verdict.dataset.label = answer.label;
  $("probability").textContent = answer.fake_probability.toFixed(3);
  $("threshold").textContent = answer.threshold.toFixed(3);
  const fill = $("bar-fill");
  fill.style.width = `${answer.fake_probability * 100}%`;
  fill.className = answer.label === "fake" ? "fake" : "";
  $("bar-threshold").style.left = `${answer.threshold * 100}%`;
  $("warning").hidden = !answer.warning;
  $("warning").textContent = answer.warning || "";
  const m = answer.model || {};
  $("model").textContent = `${m.name} ${m.version} · ${m.backend} ${m.precision} on ${m.device}`;

  const box = $("face-box"), heatmap = $("heatmap"), toggle = $("heatmap-toggle");
  lastFace = answer.face;
  box.hidden = !answer.face;
  if (answer.face) place(box, answer.face.box, photo);
  const explanation = answer.explanation || {};
  lastRegion = explanation.region || null; // the model's crop, where its Grad-CAM map belongs
  toggle.checked = false;
  toggle.disabled = !(explanation.heatmap_png && lastRegion);
  heatmap.hidden = true;
  if (!toggle.disabled) {
    heatmap.src = `data:image/png;base64,${explanation.heatmap_png}`;
    place(heatmap, lastRegion, photo);
  }
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  if (className) td.className = className;
  return td;
}

async function loadHistory(page) {
  const label = $("history-label").value;
  const query = new URLSearchParams({ page, per_page: PER_PAGE });
  if (label) query.set("label", label);
  $("csv").href = `/api/history.csv${label ? `?label=${label}` : ""}`;
  let data;
  try {
    const response = await fetch(`/api/history?${query}`);
    data = await response.json();
    if (!response.ok) throw new Error(data.message || response.status);
  } catch (err) {
    $("page-info").textContent = `History unavailable: ${err.message}`;
    return;
  }
  historyPage = page;
  const body = $("history").querySelector("tbody");
  body.replaceChildren(...data.rows.map((row) => {
    const tr = document.createElement("tr");
    const refused = row.status !== 200;
    tr.append(
      cell(row.created_at.replace("T", " ").slice(0, 19)),
      cell(refused ? `${row.status} ${row.error}` : row.label, refused ? "refused" : row.label),
      cell(row.fake_probability == null ? "" : row.fake_probability.toFixed(3)),
      cell(row.faces),
      cell(row.image_width ? `${row.image_width}×${row.image_height}` : ""),
      cell(`${row.model_name} (${row.backend})`),
      cell(row.sha256 ? row.sha256.slice(0, 12) : ""),
    );
    return tr;
  }));
  const pages = Math.max(1, Math.ceil(data.total / PER_PAGE));
  $("page-info").textContent = `page ${page} of ${pages} · ${data.total} records`;
  $("prev").disabled = page <= 1;
  $("next").disabled = page >= pages;
}

const drop = $("drop");
["dragenter", "dragover"].forEach((kind) => drop.addEventListener(kind, (e) => { e.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach((kind) => drop.addEventListener(kind, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
drop.addEventListener("drop", (e) => { if (e.dataTransfer.files.length) analyse(e.dataTransfer.files[0]); });
$("file").addEventListener("change", (e) => { if (e.target.files.length) analyse(e.target.files[0]); e.target.value = ""; });
$("heatmap-toggle").addEventListener("change", (e) => { $("heatmap").hidden = !e.target.checked; });
$("history-label").addEventListener("change", () => loadHistory(1));
$("prev").addEventListener("click", () => loadHistory(historyPage - 1));
$("next").addEventListener("click", () => loadHistory(historyPage + 1));
window.addEventListener("resize", () => {
  if (lastFace) place($("face-box"), lastFace.box, $("photo"));
  if (lastRegion) place($("heatmap"), lastRegion, $("photo"));
});
loadHistory(1);
setInterval(() => loadHistory(historyPage), 5000); // predictions from other clients appear too
