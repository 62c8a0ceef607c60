"""The viewer's two targets: time to the first overlay in a browser, and deep zoom tiles per
second from one API process.

    python -m benchmarks.viewer [--clients 8] [--passes 3] [--opens 5]

The embedded service (SQLite, no servers) runs `idcscan api --workers 1` (gunicorn, one
process); the Aperio sample CMU-1 and patient 8916 (with its ground truth) are submitted over
HTTP and scored in this process by the worker's JobRunner with the reference model.

- Time to first overlay: headless Chromium (Selenium) opens the job's signed link and the page
  records when OpenSeadragon has drawn the overlay over the slide (`performance.now()`, from the
  start of navigation), each time in a new browser with nothing cached. The first open finds the
  API with no slide open; `--opens` more follow. Skipped without Chromium.
- Tiles/s: `--clients` threads ask over HTTP (the signed link checked, the job looked up) for
  every full-resolution tile of CMU-1 (each made then: read, JPEG-encoded), then every tile of
  the lower levels (made by downsampling CMU-1's one level), then all of them `--passes` times
  more (from the API's tile cache). The baseline is the full-resolution tiles made in this
  process by OpenSlide's DeepZoomGenerator alone.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from benchmarks._common import ROOT

CMU1 = ROOT / "samples" / "wsi" / "CMU-1-Small-Region.svs"
PATIENT = ROOT / "samples" / "idc" / "8916"


def _wait_until_up(url: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(url + "/healthz", timeout=5).ok:
                return
        except requests.RequestException:
            time.sleep(0.2)
    raise SystemExit(f"the API did not start; see {log}")


def _scored_jobs(url: str, work: Path) -> dict[str, str]:
    """The viewer links of CMU-1 and patient 8916, scored by a JobRunner in this process."""
    from idcscan.api.auth import add_client
    from idcscan.core.db import make_engine, make_sessionmaker, transaction
    from idcscan.core.settings import get_settings
    from idcscan.worker.jobs import JobRunner
    from idcscan.worker.modelcache import ModelCache

    settings = get_settings()  # the environment main() set, as the API's
    sessions = make_sessionmaker(make_engine(settings.database))
    with transaction(sessions) as session:
        _client, key = add_client(session, "benchmark", admin=False)
    auth = {"Authorization": f"Bearer {key}"}
    archive = shutil.make_archive(str(work / "8916"), "zip", PATIENT.parent, PATIENT.name)
    runner = JobRunner(settings, sessions, ModelCache(settings, threads=1))
    links = {}
    for name, path in (("CMU-1", CMU1), ("8916", Path(archive))):
        with path.open("rb") as slide:
            job = requests.post(url + "/v1/jobs", files={"slide": slide}, headers=auth, timeout=60)
        job.raise_for_status()
        job_id = job.json()["id"]
        assert runner.run(uuid.UUID(job_id)) == "succeeded", name
        link = requests.post(url + f"/v1/jobs/{job_id}/viewer-link", headers=auth, timeout=10)
        link.raise_for_status()
        links[name] = url + link.json()["url"]
    return links


def _tiles_by_level(link: str) -> list[list[str]]:
    """The URL of every tile of the job's slide, per deep zoom level (the last: full resolution)."""
    import math
    import xml.etree.ElementTree as ET

    dzi = ET.fromstring(requests.get(link + "slide.dzi", timeout=10).text)
    size = dzi.find("{*}Size")
    assert size is not None
    width, height = int(size.get("Width", 0)), int(size.get("Height", 0))
    tile = int(dzi.get("TileSize", 254))
    top = math.ceil(math.log2(max(width, height)))
    levels = []
    for level in range(top + 1):
        scale = 2 ** (top - level)
        w, h = math.ceil(width / scale), math.ceil(height / scale)
        levels.append(
            [
                f"{link}slide_files/{level}/{col}_{row}.jpeg"
                for col in range(math.ceil(w / tile))
                for row in range(math.ceil(h / tile))
            ]
        )
    return levels


def tiles_per_second(urls: list[str], clients: int) -> float:
    sessions = [requests.Session() for _ in range(clients)]

    def fetch(i: int) -> int:
        return sessions[i % clients].get(urls[i], timeout=60).status_code

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        statuses = list(pool.map(fetch, range(len(urls))))
    elapsed = time.perf_counter() - start
    bad = [s for s in statuses if s != 200]
    assert not bad, f"{len(bad)} tiles answered {sorted(set(bad))}"
    return len(urls) / elapsed


def in_process_tiles_per_second(level: int) -> float:
    """The ceiling: DeepZoomGenerator on the same slide, JPEG-encoded, one thread, no cache."""
    from idcscan.api.deepzoom import SlideCache

    slide = SlideCache().get(str(CMU1), None)
    cols, rows = slide.generator.level_tiles[level]
    start = time.perf_counter()
    for col in range(cols):
        for row in range(rows):
            assert slide.tile(level, col, row) is not None
    return cols * rows / (time.perf_counter() - start)


def overlay_times(link: str, opens: int) -> tuple[float, list[float]] | None:
    """ms from navigation to the overlay drawn, each open in a new browser (nothing cached):
    the first with no slide open in the API, then `opens` more."""
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        return None
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    def open_once() -> float:
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for argument in ("--headless=new", "--no-sandbox", "--window-size=1400,900"):
            options.add_argument(argument)
        driver = webdriver.Chrome(options=options, service=Service(driver_path))
        try:
            driver.get(link)
            deadline = time.monotonic() + 30
            while (shown := driver.execute_script("return window.idcscanOverlayMs")) is None:
                if time.monotonic() > deadline:
                    raise SystemExit("the overlay never appeared")
                time.sleep(0.02)
            if os.environ.get("IDCSCAN_BENCH_VERBOSE"):
                for name, begin, end in driver.execute_script(
                    "return performance.getEntriesByType('resource')"
                    ".map(e => [e.name.split('/').slice(-2).join('/'), e.startTime, e.responseEnd])"
                ):
                    print(f"  {begin:7.0f} {end:7.0f} ms  {name}")
            return float(shown)
        finally:
            driver.quit()

    first = open_once()
    return first, [open_once() for _ in range(opens)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=8, help="concurrent tile requests")
    parser.add_argument("--passes", type=int, default=3, help="times every tile is asked for")
    parser.add_argument("--opens", type=int, default=5, help="viewer opens timed after the first")
    args = parser.parse_args()

    from idcscan.core.onnxmodel import reference_model
    from idcscan.core.registry import register_model
    from idcscan.processes import free_port, idcscan_process

    with tempfile.TemporaryDirectory(prefix="idcscan-bench-viewer-") as tmp:
        work = Path(tmp)
        env = {
            "IDCSCAN_DATA_DIR": str(work / "data"),
            "IDCSCAN_INFERENCE_THREADS": "1",
            "IDCSCAN_LOG_LEVEL": "WARNING",
        }
        os.environ.update(env)
        register_model(reference_model(), activate=True)
        port = free_port()
        url, log = f"http://127.0.0.1:{port}", work / "api.log"
        with idcscan_process(["api", "--port", str(port), "--workers", "1"], os.environ, log):
            _wait_until_up(url, log)
            links = _scored_jobs(url, work)
            timed = overlay_times(links["8916"], args.opens)
            levels = _tiles_by_level(links["CMU-1"])
            full = tiles_per_second(levels[-1], args.clients)  # made now: nothing cached yet
            lower = [url for level in levels[:-1] for url in level]
            made = tiles_per_second(lower, args.clients)
            everything = [url for level in levels for url in level] * args.passes
            cached = tiles_per_second(everything, args.clients)
        ceiling = in_process_tiles_per_second(len(levels) - 1)

    print("viewer of patient 8916 (assembled slide, 171 tiles scored, ground truth):")
    if timed is None:
        print("  time to first overlay: skipped (no chromium/chromedriver)")
    else:
        first, rest = timed
        print(f"  time to first overlay, first open (no slide open in the API): {first:.0f} ms")
        print(
            f"  time to first overlay, slide open in the API: median {statistics.median(rest):.0f} ms "
            f"(max {max(rest):.0f}, {len(rest)} opens)"
        )
    print(
        f"deep zoom tiles of CMU-1 (one level, 2220 x 2967) from one API process, {args.clients} clients:"
    )
    print(
        f"  full resolution, each made once: {full:.0f} tiles/s ({len(levels[-1])} tiles); "
        f"in-process DeepZoomGenerator, 1 thread: {ceiling:.0f}; ratio {full / ceiling:.2f}"
    )
    print(
        f"  lower levels, each made once from the one level: {made:.0f} tiles/s ({len(lower)} tiles)"
    )
    print(
        f"  every level again, from the tile cache: {cached:.0f} tiles/s ({len(everything)} tiles)"
    )


if __name__ == "__main__":
    main()
