// The playground: plain JS against this server's v2 API (same origin, so no CORS for the API).
// Result files are presigned S3 URLs on another origin: the <video> plays them without CORS;
// captions are fetched and handed to the <track> as a blob: URL (a cross-origin <track> src
// would need CORS on the video element too), or skipped with a note when the fetch is refused.
"use strict";

const KEY_STORAGE = "farm.apiKey";
const $ = (id) => document.getElementById(id);

let currentJob = null;   // the job id the page is following
let pollToken = 0;       // bumps to stop an older poll loop
let captionsUrl = null;  // the blob: URL to revoke when the next result shows
let jobsCursor = null;

class ApiError extends Error {
  constructor(status, code, message, retryAfter) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

async function api(method, path, body) {
  const headers = { Accept: "application/json", Authorization: "Bearer " + apiKey() };
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  let doc = null;
  try {
    doc = await response.json();
  } catch (_) {
    doc = null;
  }
  if (!response.ok) {
    const code = (doc && doc.error) || "http_" + response.status;
    const message = (doc && doc.message) || response.statusText;
    const retry = parseFloat(response.headers.get("Retry-After") || "");
    throw new ApiError(response.status, code, message, Number.isFinite(retry) ? retry : null);
  }
  return doc;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function setStatus(text) {
  $("status").textContent = text;
}

function describeError(err) {
  return err instanceof ApiError ? `${err.code}: ${err.message}` : String(err);
}

// --- key ----------------------------------------------------------------------------------------

async function showKey() {
  const key = apiKey();
  $("api-key").value = key;
  if (!key) {
    $("key-status").textContent = "No key saved. Create one with `farm keys create --name me`.";
    return;
  }
  try {
    const me = await api("GET", "/api/v2/me");
    const credits = me.credits && me.credits.total !== undefined ? me.credits.total : "?";
    $("key-status").textContent = `Key ${me.keyPrefix || ""}… (${me.name || "unnamed"}),` +
      ` ${credits} credits.`;
    refreshJobs();
  } catch (err) {
    $("key-status").textContent = "Key not accepted: " + describeError(err);
  }
}

// --- scene form ---------------------------------------------------------------------------------

function sceneClasses(code) {
  const names = [];
  const re = /^class\s+([A-Za-z_][A-Za-z0-9_]*)\s*\(([^)]*)\)\s*:/gm;
  let m;
  while ((m = re.exec(code)) !== null) {
    if (/Scene/.test(m[2])) names.push(m[1]);
  }
  return names;
}

function updateClasses() {
  const names = sceneClasses($("code").value);
  const list = $("class-names");
  list.replaceChildren(...names.map((n) => Object.assign(document.createElement("option"),
    { value: n })));
  const input = $("class-name");
  if (names.length && !names.includes(input.value)) input.value = names[names.length - 1];
}

async function submitRender(event) {
  event.preventDefault();
  if (!apiKey()) {
    setStatus("Save an API key first.");
    $("api-key").focus();
    return;
  }
  const body = {
    code: $("code").value,
    className: $("class-name").value.trim(),
    quality: $("quality").value,
    aspectRatio: $("aspect").value,
  };
  $("submit").disabled = true;
  clearResult();
  setStatus("Submitting…");
  try {
    const submitted = await api("POST", "/api/v2/render", body);
    follow(submitted.jobId);
  } catch (err) {
    setStatus("Not submitted: " + describeError(err));
    showFailure(describeError(err), null);
  } finally {
    $("submit").disabled = false;
  }
}

// --- following a job ----------------------------------------------------------------------------

function clearResult() {
  $("result").hidden = true;
  $("failure").hidden = true;
  $("progress").hidden = true;
  $("cancel").hidden = true;
  const video = $("video");
  video.pause();
  video.removeAttribute("src");
  video.replaceChildren();
  video.load();
  if (captionsUrl) URL.revokeObjectURL(captionsUrl);
  captionsUrl = null;
  $("captions-note").textContent = "";
}

function describeJob(job) {
  const p = job.progress;
  let text = `Job ${job.jobId}: ${job.status}`;
  if (p && job.status !== "completed" && job.status !== "failed") {
    const total = p.chunksTotal === null || p.chunksTotal === undefined ? "?" : p.chunksTotal;
    text += ` (${p.chunksDone}/${total} chunks, ${Math.round((p.fraction || 0) * 100)}%)`;
  }
  return text;
}

async function follow(jobId) {
  const token = ++pollToken;
  currentJob = jobId;
  clearResult();
  $("progress").hidden = false;
  $("progress").value = 0;
  $("cancel").hidden = false;
  let interval = 500;
  let last = "";
  for (;;) {
    if (token !== pollToken) return;
    let job;
    try {
      job = await api("GET", "/api/v2/render/" + encodeURIComponent(jobId));
    } catch (err) {
      if (err instanceof ApiError && err.status === 429) {
        await sleep(1000 * (err.retryAfter || 1));
        continue;
      }
      setStatus(`Job ${jobId}: ` + describeError(err));
      $("cancel").hidden = true;
      return;
    }
    if (token !== pollToken) return;
    const text = describeJob(job);
    if (text !== last) {
      setStatus(text);
      interval = 500;
      last = text;
    } else {
      interval = Math.min(3000, interval * 1.5);
    }
    if (job.progress) $("progress").value = job.progress.fraction || 0;
    else $("progress").removeAttribute("value");  // indeterminate on servers without progress
    if (job.status === "completed" || job.status === "failed") {
      $("cancel").hidden = true;
      $("progress").hidden = true;
      if (job.status === "completed") showResult(job);
      else showFailure(job.error || "failed", job.jobId);
      refreshJobs();
      return;
    }
    await sleep(interval);
  }
}

async function cancelJob() {
  if (!currentJob) return;
  try {
    const job = await api("DELETE", "/api/v2/render/" + encodeURIComponent(currentJob));
    setStatus(describeJob(job) + (job.error ? ` (${job.error})` : ""));
  } catch (err) {
    setStatus("Cancel failed: " + describeError(err));
  }
}

function showResult(job) {
  const result = job.result || {};
  const video = $("video");
  video.src = result.video;
  $("video-link").href = result.video;
  $("thumb-link").href = result.thumbnail || result.video;
  if (result.thumbnail) video.poster = result.thumbnail;
  $("captions-part").hidden = !result.captions;
  $("result").hidden = false;
  const seconds = job.durationMs ? ` in ${(job.durationMs / 1000).toFixed(1)} s` : "";
  setStatus(`Job ${job.jobId}: completed${seconds}.`);
  if (result.captions) {
    $("captions-link").href = result.captions;
    loadCaptions(result.captions);
  }
}

async function loadCaptions(url) {
  const note = $("captions-note");
  try {
    const response = await fetch(url, { mode: "cors", credentials: "omit" });
    if (!response.ok) throw new Error("HTTP " + response.status);
    const text = await response.text();
    captionsUrl = URL.createObjectURL(new Blob([text], { type: "text/vtt" }));
    const track = document.createElement("track");
    Object.assign(track, { kind: "captions", label: "Captions", srclang: "en", default: true });
    track.src = captionsUrl;
    $("video").appendChild(track);
    track.track.mode = "showing";
    note.textContent = "";
  } catch (err) {
    note.textContent = "Captions could not be attached (the storage refused a cross-origin " +
      "read: " + err.message + "); use the captions link.";
  }
}

async function showFailure(message, jobId) {
  $("failure").hidden = false;
  $("error").textContent = message;
  $("log").textContent = "";
  $("log-details").hidden = !jobId;
  if (jobId) {
    setStatus(`Job ${jobId}: failed.`);
    try {
      const logs = await api("GET", `/api/v2/render/${encodeURIComponent(jobId)}/logs`);
      $("log").textContent = logs.log || "(empty log)";
      if (logs.log) $("log-details").open = true;
    } catch (err) {
      $("log").textContent = "No log: " + describeError(err);
    }
  }
}

// --- recent jobs --------------------------------------------------------------------------------

function jobRow(job) {
  const tr = document.createElement("tr");
  const open = document.createElement("button");
  open.type = "button";
  open.className = "secondary";
  open.textContent = job.jobId;
  open.setAttribute("aria-label", `Show job ${job.jobId}`);
  open.addEventListener("click", () => follow(job.jobId));
  const cells = [open, job.status, job.quality || "",
    (job.createdAt || "").replace("T", " ").slice(0, 19), job.error || ""];
  cells.forEach((value, i) => {
    const td = document.createElement("td");
    if (value instanceof Node) td.appendChild(value);
    else td.textContent = value;
    if (i === 1) td.className = "status-" + job.status;
    if (i === 4) {
      td.className = "err";
      td.title = job.error || "";
    }
    tr.appendChild(td);
  });
  return tr;
}

async function refreshJobs(append) {
  if (!apiKey()) return;
  const params = new URLSearchParams({ limit: "10" });
  if (append && jobsCursor) params.set("cursor", jobsCursor);
  try {
    const page = await api("GET", "/api/v2/render?" + params.toString());
    const body = $("jobs").tBodies[0];
    if (!append) body.replaceChildren();
    page.jobs.forEach((job) => body.appendChild(jobRow(job)));
    jobsCursor = page.nextCursor || null;
    $("more-jobs").hidden = !jobsCursor;
    $("jobs-status").textContent = body.rows.length ? "" : "No jobs yet.";
  } catch (err) {
    $("jobs-status").textContent = "Could not list jobs: " + describeError(err);
  }
}

// --- wiring -------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    localStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
    showKey();
  });
  $("forget-key").addEventListener("click", () => {
    localStorage.removeItem(KEY_STORAGE);
    showKey();
  });
  $("code").addEventListener("input", updateClasses);
  $("render-form").addEventListener("submit", submitRender);
  $("cancel").addEventListener("click", cancelJob);
  $("refresh-jobs").addEventListener("click", () => refreshJobs(false));
  $("more-jobs").addEventListener("click", () => refreshJobs(true));
  updateClasses();
  showKey();
});
