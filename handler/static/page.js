// The upload page: sends the file to this page's own server (which holds the model server's key),
// shows the verdict, the face box and the Grad-CAM overlay (a video: its preview, the per-frame
// timeline and the heatmap of its most suspicious frame), the file's provenance under the verdict,
// and pages through the history. Everything taken from an answer is set as text, never as HTML:
// provenance metadata is whatever the uploader wrote.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const MiB = 1024 * 1024;
const PER_PAGE = 10;
let historyPage = 1;
let lastFace = null, lastRegion = null, lastSize = null; // re-placed when the window resizes
let limits = null; // bytes per image and per video, from the page's server (GET /api/limits)
let mediaUrl = null; // the object URL of the file shown, released when the next one comes
let judged = null; // {requestId, file} of the verdict shown: a reviewer's label sends the file with it

// What each refusal means for a person; the server's own message follows it.
const FRIENDLY = {
  empty_body: "The file is empty.",
  not_an_image: "That file is not an image the detector can read.",
  unsupported_format: "That image format is not supported: use JPEG, PNG, WebP, HEIC, AVIF, BMP, TIFF or GIF.",
  corrupt_image: "The image is damaged or cut short.",
  image_too_small: "The image is too small to find a face in.",
  image_too_large: "The image is too large.",
  unprocessable_image: "The detector could not process this image.",
  file_too_large: "The file is larger than any upload the detector takes.",
  video_too_large: "The video is too large.",
  video_too_long: "The video is too long.",
  frame_too_large: "The video's frames are too large (too many pixels per frame).",
  frame_too_small: "The video's frames are too small to find a face in.",
  no_video_stream: "That file holds no video the detector can decode (audio only, or an unknown codec).",
  corrupt_video: "The video is damaged or cut short.",
  server_unavailable: "The model server is not answering right now; try again shortly.",
  model_server_error: "The model server could not answer this time; try again shortly.",
};

function showError(answer) {
  const error = $("error");
  const friendly = FRIENDLY[answer.error] || "The file was refused.";
  error.textContent = answer.message ? `${friendly} (${answer.message})` : friendly;
  error.dataset.code = answer.error || "";
  error.hidden = false;
  $("result").hidden = true;
}

async function analyse(file) {
  $("error").hidden = true;
  // the page's server checks each media's own limit once it has seen the bytes; none takes more than this
  const largest = limits ? Math.max(limits.image_bytes, limits.video_bytes) : Infinity;
  if (file.size > largest) {
    showError({ error: "file_too_large", message: `the file is over ${largest / MiB} MiB` });
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
    judged = { requestId: response.headers.get("X-Request-Id"), file };
  } catch (err) {
    answer = { error: "server_unavailable", message: String(err) };
  }
  $("status").textContent = "";
  $("review-status").textContent = "";
  $("review-status").dataset.truth = "";
  if (answer.error) showError(answer);
  else await showVerdict(file, answer);
  // the record is written a moment after the answer (off the model's hot path)
  setTimeout(() => loadHistory(1), 1000);
}

function place(element, box, image) {
  // boxes are in the original image's pixels (the answer's image_size); the photo, or its preview, is shown scaled
  const sx = image.clientWidth / lastSize[0], sy = image.clientHeight / lastSize[1];
  element.style.left = `${box[0] * sx}px`;
  element.style.top = `${box[1] * sy}px`;
  element.style.width = `${(box[2] - box[0]) * sx}px`;
  element.style.height = `${(box[3] - box[1]) * sy}px`;
}

async function showVerdict(file, answer) {
  const video = answer.media === "video";
  if (mediaUrl) URL.revokeObjectURL(mediaUrl);
  mediaUrl = URL.createObjectURL(file);
  const photo = $("photo"), clip = $("clip");
  photo.hidden = video;
  clip.hidden = !video;
  if (video) {
    photo.removeAttribute("src");
    clip.src = mediaUrl;
  } else {
    clip.removeAttribute("src");
    await showPhoto(file, photo);
  }
  $("result").hidden = false;

  const verdict = $("verdict");
  verdict.textContent = answer.label === "no_face" ? "no face found" : answer.label;
  verdict.dataset.label = answer.label;
  $("band").textContent = BAND_WORDS[answer.band] || "";
  $("band").dataset.band = answer.band || "";
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
  showKind(answer.kind);
  showProvenance(answer.provenance);

  const explanation = answer.explanation || {};
  const toggle = $("heatmap-toggle");
  toggle.checked = false;
  $("heatmap").hidden = true;
  $("frame-heatmap").hidden = true;
  $("frames").hidden = !video;
  $("timeline-figure").hidden = !video;
  if (video) showVideoParts(answer, explanation);
  else showImageParts(answer, explanation);
}

// how sure the verdict is: the cut-offs were set on validation for 95 % precision on each side
const BAND_WORDS = {
  likely_fake: "likely fake",
  likely_real: "likely real",
  uncertain: "uncertain: check this one first",
  no_face: "no verdict: the model judges faces and found none",
};

async function showPhoto(file, photo) {
  // the file itself when the browser can draw it; otherwise (HEIC) a JPEG preview from the page's server
  photo.src = mediaUrl;
  if (await photo.decode().then(() => true, () => false)) return;
  try {
    const response = await fetch("/api/preview", { method: "POST", body: file });
    if (!response.ok) return;
    URL.revokeObjectURL(mediaUrl);
    mediaUrl = URL.createObjectURL(await response.blob());
    photo.src = mediaUrl;
    await photo.decode().catch(() => {});
  } catch (err) { /* no preview: the verdict still shows */ }
}

const KIND_WORDS = { gan: "a GAN face", diffusion: "a diffusion-model face", face_swap: "a face swap", hand_edit: "a hand edit" };

function showKind(kind) {
  // a fake verdict from a model with a kind head: its guess, and the probability of every kind
  $("kind").hidden = !kind;
  if (!kind) return;
  $("kind-guess").textContent = KIND_WORDS[kind.guess] || kind.guess;
  $("kind-probabilities").textContent = Object.entries(kind.probabilities)
    .map(([name, p]) => `${name.replace("_", " ")} ${(p * 100).toFixed(0)} %`).join(" · ");
}

const DECLARED_WORDS = {
  ai_generated: "AI-generated", ai_edited: "AI-edited", edited: "edited", camera: "camera capture", none: "nothing",
};

function term(list, name, value) {
  if (value == null || value === "" || (Array.isArray(value) && !value.length)) return;
  const dt = document.createElement("dt"), dd = document.createElement("dd");
  dt.textContent = name;
  dd.textContent = Array.isArray(value) ? value.join(", ") : String(value);
  list.append(dt, dd);
}

function showProvenance(provenance) {
  $("provenance").hidden = !provenance;
  if (!provenance) return;
  const declared = $("declared");
  declared.textContent = DECLARED_WORDS[provenance.declared] || provenance.declared;
  declared.dataset.declared = provenance.declared;
  const sources = (provenance.declarations || []).map((d) => `${d.source} ${d.key}${d.value ? ` = ${d.value}` : ""}`);
  const agrees = provenance.agrees_with_model;
  $("agreement").textContent = [sources.length ? `from ${sources.join("; ")}` : "",
    agrees === true ? "· agrees with the model" : agrees === false ? "· disagrees with the model" : ""].filter(Boolean).join(" ");
  $("provenance-note").hidden = !provenance.note;
  $("provenance-note").textContent = provenance.note || "";
  const c2pa = provenance.c2pa || {}, list = $("c2pa");
  list.replaceChildren();
  term(list, "C2PA", c2pa.present ? `manifest present, ${c2pa.validation}` : c2pa.present === false ? "no manifest" : "not read");
  if (c2pa.present) {
    term(list, "generator", c2pa.claim_generator);
    term(list, "actions", (c2pa.actions || []).map((a) => a.action + (a.digital_source_type ? ` (${a.digital_source_type})` : "")));
    term(list, "signer", [c2pa.signer && c2pa.signer.name, c2pa.signer && c2pa.signer.issuer].filter(Boolean).join(", "));
    term(list, "trust", c2pa.trust_note);
    term(list, "failures", c2pa.failures);
  }
  const rows = [];
  for (const [group, fields] of Object.entries(provenance.metadata || {})) {
    for (const [key, value] of Object.entries(fields)) {
      const tr = document.createElement("tr");
      tr.append(cell(`${group}.${key}`), cell(value));
      rows.push(tr);
    }
  }
  $("metadata").querySelector("tbody").replaceChildren(...rows);
  $("provenance-error").hidden = !provenance.error;
  $("provenance-error").textContent = provenance.error ? `Could not read all of it: ${provenance.error}` : "";
}

function showImageParts(answer, explanation) {
  const photo = $("photo"), box = $("face-box"), heatmap = $("heatmap");
  lastFace = answer.face;
  lastSize = answer.image_size;
  box.hidden = !answer.face;
  if (answer.face) place(box, answer.face.box, photo);
  lastRegion = explanation.region || null; // the model's crop, where its Grad-CAM map belongs
  $("heatmap-toggle").disabled = !(explanation.heatmap_png && lastRegion);
  if (explanation.heatmap_png && lastRegion) {
    heatmap.src = `data:image/png;base64,${explanation.heatmap_png}`;
    place(heatmap, lastRegion, photo);
  }
}

function showVideoParts(answer, explanation) {
  lastFace = lastRegion = null; // a clip has no single face box: the timeline says where faces were
  $("face-box").hidden = true;
  $("frames-sampled").textContent = answer.frames_sampled;
  $("frames-with-face").textContent = answer.frames_with_face;
  const rule = (answer.aggregation || {}).rule;
  $("rule").textContent = rule === "confident_fake"
    ? `· verdict from the ${answer.aggregation.strong_fake_frames} strongly fake frames`
    : `· verdict: the mean over the frames${answer.frames_with_face ? " with a face" : ""}`;
  const explained = explanation.heatmap_png ? explanation.frame_time_s : null;
  drawTimeline(answer.timeline, answer.threshold, explained);
  // the explanation of a video is the Grad-CAM of its most suspicious frame's crop, shown as it is
  $("heatmap-toggle").disabled = !explanation.heatmap_png;
  if (explanation.heatmap_png) {
    $("frame-heatmap-image").src = `data:image/png;base64,${explanation.heatmap_png}`;
    $("frame-heatmap-caption").textContent =
      `Grad-CAM of the most suspicious frame, at ${explanation.frame_time_s.toFixed(2)} s (the face crop the model saw)`;
  }
}

function svgElement(name, attributes, text) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  if (text != null) element.textContent = text;
  return element;
}

function drawTimeline(timeline, threshold, explainedTime) {
  // P(fake) from 0 (bottom) to 1 (top) against time from the first frame to the last
  const svg = $("timeline");
  const left = 40, right = 785, top = 10, bottom = 118;
  const last = timeline.length ? timeline[timeline.length - 1].time_s : 0;
  const x = (t) => left + (last > 0 ? (t / last) * (right - left) : (right - left) / 2);
  const y = (p) => bottom - p * (bottom - top);
  const parts = [
    svgElement("line", { class: "axis", x1: left, y1: top, x2: left, y2: bottom }),
    svgElement("line", { class: "axis", x1: left, y1: bottom, x2: right, y2: bottom }),
    svgElement("text", { x: left - 6, y: y(1) + 4, "text-anchor": "end" }, "1"),
    svgElement("text", { x: left - 6, y: y(0) + 4, "text-anchor": "end" }, "0"),
    svgElement("text", { x: left, y: bottom + 16, "text-anchor": "middle" }, "0 s"),
    svgElement("text", { x: right, y: bottom + 16, "text-anchor": "end" }, `${last.toFixed(2)} s`),
    svgElement("text", { x: (left + right) / 2, y: bottom + 28, "text-anchor": "middle" }, "time in the clip"),
    svgElement("line", { class: "threshold", x1: left, y1: y(threshold), x2: right, y2: y(threshold) }),
    svgElement("text", { x: right, y: y(threshold) - 4, "text-anchor": "end" }, `threshold ${threshold.toFixed(2)}`),
    svgElement("polyline", { class: "line", points: timeline.map((f) => `${x(f.time_s)},${y(f.fake_probability)}`).join(" ") }),
  ];
  for (const frame of timeline) {
    const classes = ["point", frame.fake_probability >= threshold ? "fake" : "real", frame.face ? "face" : "no-face"];
    if (frame.time_s === explainedTime) classes.push("explained");
    const point = svgElement("circle", {
      class: classes.join(" "), cx: x(frame.time_s), cy: y(frame.fake_probability), r: 5,
      "data-time": frame.time_s, "data-probability": frame.fake_probability,
    });
    point.append(svgElement("title", {}, `${frame.time_s.toFixed(2)} s · P(fake) ${frame.fake_probability.toFixed(3)}${frame.face ? "" : " · no face"}`));
    point.addEventListener("click", () => { $("clip").currentTime = frame.time_s; });
    parts.push(point);
  }
  svg.replaceChildren(...parts);
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  if (className) td.className = className;
  return td;
}

async function sendLabel(requestId, truth, file, note) {
  // the file goes with the label when the page still holds it: the page's server keeps labelled cases
  const query = new URLSearchParams({ request_id: requestId, truth });
  if (note) query.set("note", note);
  const response = await fetch(`/api/label?${query}`, {
    method: "POST",
    headers: { "Content-Type": "application/octet-stream" },
    body: file || new Blob([]),
  });
  const answer = await response.json();
  if (!response.ok) throw new Error(answer.message || response.status);
  return answer;
}

async function labelVerdict(truth) {
  const status = $("review-status");
  if (!judged || !judged.requestId) {
    status.textContent = "This verdict has no request id to label.";
    return;
  }
  try {
    const answer = await sendLabel(judged.requestId, truth, judged.file, $("label-note").value.trim());
    status.textContent = `Labelled ${answer.truth}${answer.kept ? " · the file is kept for training" : ""}`;
    status.dataset.truth = answer.truth;
    $("label-note").value = "";
  } catch (err) {
    status.textContent = `Not labelled: ${err.message}`;
    status.dataset.truth = "";
  }
  loadHistory(historyPage);
}

function reviewCell(row) {
  const td = cell(row.truth ? `${row.truth}${row.labelled_by ? ` (${row.labelled_by})` : ""}` : "", row.truth ? `review truth-${row.truth}` : "review");
  if (row.status !== 200) return td;
  for (const truth of ["real", "fake"]) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = truth;
    button.title = `label this verdict: this is ${truth}`;
    button.addEventListener("click", () => sendLabel(row.request_id, truth).then(() => loadHistory(historyPage), (err) => {
      $("page-info").textContent = `Not labelled: ${err.message}`;
    }));
    td.append(button);
  }
  return td;
}

function figure(value) {
  return value == null ? "–" : value.toFixed(3);
}

async function loadQuality() {
  let report;
  try {
    const response = await fetch("/api/quality?since=7d");
    report = await response.json();
    if (!response.ok) throw new Error(report.message || response.status);
  } catch (err) {
    $("quality-summary").textContent = `Quality unavailable: ${err.message}`;
    return;
  }
  $("quality").querySelector("tbody").replaceChildren(...report.versions.map((v) => {
    const tr = document.createElement("tr");
    tr.append(cell(`${v.model} ${v.version}`), cell(`${v.labelled} (${v.labelled_fake} fake)`), cell(figure(v.roc_auc)),
      cell(figure(v.precision)), cell(figure(v.recall)), cell(figure(v.accuracy)));
    return tr;
  }));
  const called = report.days.reduce((sum, d) => sum + d.called_fake * d.n, 0);
  $("quality-summary").textContent = `${report.answered} answers, ${report.labelled} labelled; ` +
    `${report.answered ? ((100 * called) / report.answered).toFixed(1) : 0} % called fake`;
  const drift = report.drift;
  $("drift").textContent = drift.psi == null ? `Drift not measured: ${drift.missing}`
    : `Drift of P(fake) against validation: PSI ${drift.psi.toFixed(3)} (${drift.level})`;
  $("drift").dataset.level = drift.level || "";
}

async function loadHistory(page) {
  const filter = new URLSearchParams();
  for (const [name, id] of [["label", "history-label"], ["declared", "history-declared"]]) {
    if ($(id).value) filter.set(name, $(id).value);
  }
  const query = new URLSearchParams({ page, per_page: PER_PAGE, ...Object.fromEntries(filter) });
  $("csv").href = `/api/history.csv${filter.toString() ? `?${filter}` : ""}`;
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
      cell(row.media),
      cell(refused ? `${row.status} ${row.error}` : row.label, refused ? "refused" : row.label),
      cell(row.fake_probability == null ? "" : row.fake_probability.toFixed(3)),
      cell(row.faces),
      cell(row.image_width ? `${row.image_width}×${row.image_height}` : ""),
      cell(row.declared),
      cell(`${row.model_name} (${row.backend})`),
      cell(row.sha256 ? row.sha256.slice(0, 12) : ""),
      reviewCell(row),
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
$("heatmap-toggle").addEventListener("change", (e) => {
  const video = !$("clip").hidden; // a video's heatmap is its own picture, an image's lies over the photo
  $(video ? "frame-heatmap" : "heatmap").hidden = !e.target.checked;
});
$("label-real").addEventListener("click", () => labelVerdict("real"));
$("label-fake").addEventListener("click", () => labelVerdict("fake"));
$("quality-refresh").addEventListener("click", loadQuality);
$("history-label").addEventListener("change", () => loadHistory(1));
$("history-declared").addEventListener("change", () => loadHistory(1));
$("prev").addEventListener("click", () => loadHistory(historyPage - 1));
$("next").addEventListener("click", () => loadHistory(historyPage + 1));
window.addEventListener("resize", () => {
  if (lastFace) place($("face-box"), lastFace.box, $("photo"));
  if (lastRegion) place($("heatmap"), lastRegion, $("photo"));
});
fetch("/api/limits").then((r) => r.json()).then((answer) => {
  limits = answer;
  $("image-limit").textContent = limits.image_bytes / MiB;
  $("video-limit").textContent = limits.video_bytes / MiB;
}).catch(() => {});
loadHistory(1);
loadQuality();
setInterval(() => loadHistory(historyPage), 5000); // predictions from other clients appear too
