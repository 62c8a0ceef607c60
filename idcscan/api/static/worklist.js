// The worklist: the key is typed once per browser tab (sessionStorage) and sent as a Bearer key
// to /v1/worklist; each succeeded job links to its viewer through a signed link.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "idcscan.key";
const REFRESH_MS = 10000;
let timer = null;

function isoDay(date) {
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}`;
}

function startOf(day, plusDays = 0) {
  const [y, m, d] = day.split("-").map(Number);
  return new Date(y, m - 1, d + plusDays).toISOString(); // local midnight, sent in UTC
}

function askForKey(message) {
  sessionStorage.removeItem(KEY);
  $("list").hidden = true;
  $("key-form").hidden = false;
  $("key-error").textContent = message || "";
  $("key").focus();
}

function cell(row, text, className) {
  const td = document.createElement("td");
  if (text instanceof Node) td.append(text);
  else td.textContent = text;
  if (className) td.className = className;
  row.append(td);
  return td;
}

function statusCell(job) {
  if (job.status !== "running") return document.createTextNode(job.status);
  const span = document.createElement("span");
  const bar = document.createElement("progress");
  bar.max = job.progress.tiles_total || 1;
  bar.value = job.progress.tiles_done;
  span.append(bar, ` ${Math.round((job.progress.fraction || 0) * 100)}%`);
  return span;
}

function render(worklist) {
  const body = document.querySelector("#worklist tbody");
  body.replaceChildren();
  for (const item of worklist.items) {
    const row = document.createElement("tr");
    const s = item.summary;
    row.dataset.jobId = item.job.id;
    cell(row, String(item.rank));
    cell(row, s ? s.slide_call.replace("_", " ") : "", s ? `call-${s.slide_call}` : "");
    if (s && s.in_distribution === false) row.lastChild.title = `unlike the training data: ${s.ood_reason}`;
    cell(row, s ? s.idc_area_mm2.toFixed(2) : "");
    cell(row, s && s.max_probability !== null ? s.max_probability.toFixed(3) : "");
    cell(row, s && s.missed_idc !== null ? String(s.missed_idc) : "", "missed-count");
    cell(row, statusCell(item.job));
    cell(row, new Date(item.job.created_at).toLocaleString());
    cell(row, item.job.id.slice(0, 8));
    if (item.viewer_url) {
      const a = document.createElement("a");
      a.href = item.viewer_url;
      a.textContent = "open";
      a.className = "viewer-link";
      cell(row, a);
    } else {
      cell(row, "");
    }
    body.append(row);
  }
  $("list-status").textContent = `${worklist.items.length} jobs, by ${worklist.sort}.`;
  document.body.dataset.loaded = "worklist";
  return worklist.items.some((i) => ["queued", "running"].includes(i.job.status));
}

async function load() {
  clearTimeout(timer);
  const key = sessionStorage.getItem(KEY);
  if (!key) return askForKey();
  const params = new URLSearchParams({ sort: $("sort").value });
  if ($("since").value) params.set("since", startOf($("since").value));
  if ($("until").value) params.set("until", startOf($("until").value, 1));
  if ($("status").value) params.set("status", $("status").value);
  let response;
  try {
    response = await fetch(`/v1/worklist?${params}`, {
      headers: { Authorization: `Bearer ${key}` },
    });
  } catch (error) {
    $("list-status").textContent = "The service did not answer; retrying.";
    timer = setTimeout(load, REFRESH_MS);
    return;
  }
  if (response.status === 401) return askForKey("The key is unknown or revoked.");
  const body = await response.json();
  $("key-form").hidden = true;
  $("list").hidden = false;
  if (!response.ok) {
    $("list-status").textContent = body.detail || `The service answered ${response.status}.`;
    return;
  }
  if (render(body)) timer = setTimeout(load, REFRESH_MS); // progress of running jobs
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY, $("key").value.trim());
  $("key").value = "";
  load();
});
$("filters").addEventListener("submit", (event) => {
  event.preventDefault();
  load();
});
$("forget").addEventListener("click", () => askForKey("The key is forgotten."));
$("since").value = isoDay(new Date()); // today's slides first; clear the field for all
load();
