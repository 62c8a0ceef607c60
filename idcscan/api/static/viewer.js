// The viewer of one job: every URL is relative to the page, which sits under its signed link
// (/view/<token>/), so the page, the tiles and the downloads all carry the token.
"use strict";

const $ = (id) => document.getElementById(id);
const fmt = (value, digits = 3) =>
  value === null || value === undefined ? "n/a" : Number(value).toFixed(digits);

// What the summary shows, in order: [label, field of the result, format]. A field the service
// adds to the slide summary is shown by adding its line here.
const SUMMARY_ROWS = [
  ["Slide call", "slide_call", (v) => v.replace("_", " ")],
  ["Stain like the training data", "in_distribution", (v, r) =>
    v === false ? `no: ${r.ood_reason} (do not trust the IDC map)` : v ? "yes" : "not checked"],
  ["IDC area", "idc_area_mm2", (v) => `${fmt(v, 2)} mm\u00b2`],
  ["IDC tiles", "idc_tiles", (v, r) => `${v} of ${r.tissue_tiles} tissue tiles`],
  ["Max probability", "max_probability", (v) => fmt(v)],
  ["Mean probability", "mean_probability", (v) => fmt(v)],
  ["Threshold", "threshold", (v) => fmt(v)],
  ["Call rule", "call_rule", (v) => v],
  ["Model", "model_version", (v, r) => `${v} (${r.model_variant})`],
  ["Scale read", "effective_mpp", (v) => `${fmt(v, 2)} \u00b5m/px`],
];

function definition(list, term, text) {
  const dt = document.createElement("dt");
  dt.textContent = term;
  const dd = document.createElement("dd");
  dd.textContent = text;
  list.append(dt, dd);
}

function showSummary(result) {
  const list = $("summary");
  for (const [label, field, format] of SUMMARY_ROWS) {
    if (field in result) definition(list, label, format(result[field], result));
  }
}

function showConfusion(confusion) {
  const box = $("confusion");
  if (!confusion) {
    box.textContent = "The job came without ground truth.";
    return;
  }
  const list = document.createElement("dl");
  definition(list, "Missed IDC (fn)", String(confusion.fn));
  list.lastChild.classList.add("missed-count");
  for (const [label, key] of [["Found IDC (tp)", "tp"], ["False alarms (fp)", "fp"],
                              ["True negatives (tn)", "tn"]]) {
    definition(list, label, String(confusion[key]));
  }
  for (const [label, key] of [["Sensitivity", "recall"], ["Specificity", "specificity"],
                              ["Balanced accuracy", "balanced_accuracy"], ["F1", "f1"]]) {
    if (key in confusion) definition(list, label, fmt(confusion[key]));
  }
  box.append(list);
}

function showDownloads(downloads) {
  for (const item of downloads) {
    const a = document.createElement("a");
    a.href = item.url;
    a.textContent = item.name;
    a.setAttribute("download", "");
    const li = document.createElement("li");
    li.append(a);
    $("downloads").append(li);
  }
}

function openViewer(data) {
  const viewer = OpenSeadragon({
    id: "slide",
    prefixUrl: "/static/openseadragon/images/",
    tileSources: data.slide.dzi,
    showNavigator: true,
    // The 2D canvas: starting WebGL costs about a second where the GPU is emulated (headless,
    // remote desktops), and a slide with one overlay gains nothing from it.
    drawer: "canvas",
    imageSmoothingEnabled: false, // a tile of the map stays a square, not a blur
    maxZoomPixelRatio: 2,
  });
  window.idcscanViewer = viewer; // for tests and the console
  let overlay = null;
  const opacity = () => ($("overlay-shown").checked ? $("opacity").value / 100 : 0);

  function addOverlay() {
    const query = $("over-threshold").checked ? "?over_threshold=1" : "";
    viewer.addTiledImage({
      tileSource: { type: "image", url: data.overlay.url + query },
      x: data.overlay.x / data.slide.width,
      y: data.overlay.y / data.slide.width,
      width: data.overlay.width / data.slide.width,
      opacity: opacity(),
      success: (event) => {
        if (overlay) viewer.world.removeItem(overlay);
        else viewer.viewport.goHome(true); // the whole slide, the overlay's bounds included
        overlay = event.item;
        overlay.addOnceHandler("fully-loaded-change", () => {
          document.body.dataset.overlay = "shown";
          if (!window.idcscanOverlayMs) window.idcscanOverlayMs = performance.now();
        });
      },
    });
  }

  viewer.addOnceHandler("open", addOverlay);
  $("opacity").addEventListener("input", () => overlay && overlay.setOpacity(opacity()));
  $("overlay-shown").addEventListener("change", () => overlay && overlay.setOpacity(opacity()));
  $("over-threshold").addEventListener("change", addOverlay);
  return viewer;
}

function showSuspicious(viewer, regions) {
  if (!regions.length) {
    $("suspicious").replaceWith(Object.assign(document.createElement("p"),
      { textContent: "No tile reaches the threshold." }));
    return;
  }
  for (const region of regions) {
    const button = document.createElement("button");
    button.className = "link";
    button.textContent = `p = ${fmt(region.probability)} at (${region.x}, ${region.y})`;
    button.addEventListener("click", () => {
      const slide = viewer.world.getItemAt(0);
      const margin = region.size * 2;
      viewer.viewport.fitBounds(slide.imageToViewportRectangle(
        region.x - margin, region.y - margin, region.size + 2 * margin, region.size + 2 * margin));
    });
    const li = document.createElement("li");
    li.append(button);
    $("suspicious").append(li);
  }
}

async function main() {
  let data;
  try {
    const response = await fetch("job.json");
    if (!response.ok) {
      const problem = await response.json().catch(() => ({}));
      throw new Error(problem.detail || `The service answered ${response.status}.`);
    }
    data = await response.json();
  } catch (error) {
    $("status").textContent = error.message;
    $("status").classList.add("error");
    return;
  }
  const result = data.result;
  $("status").textContent = `Job ${data.job.id}, finished ${data.job.finished_at}.`;
  $("controls").hidden = false;
  $("threshold-mark").style.left = `${result.threshold * 100}%`;
  $("threshold-label").textContent = `threshold ${fmt(result.threshold)}`;
  if (result.confusion) {
    $("missed-legend").hidden = false;
    $("missed-text").textContent =
      `IDC in the ground truth called negative: ${result.confusion.fn} tiles missed`;
  }
  showSummary(result);
  showConfusion(result.confusion);
  showDownloads(data.downloads);
  showSuspicious(openViewer(data), data.suspicious);
}

main();
