"""The worklist and the viewer in a real browser, over a real API and really scored jobs.

Patient 8916 (IDC, with its ground truth) and the Aperio sample CMU-1 are scored by the worker's
JobRunner with the reference model; a third job stays queued. The browser opens /worklist, types
the key once, finds the jobs in order of suspicion, follows the first one's signed link and
waits until OpenSeadragon shows the slide with the probability overlay over it, every deep zoom
tile answered 200 and nothing refused by the pages' CSP. Each page is kept as a screenshot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from idcscan.api import worklist
from tests.api.conftest import KOMBU_NOLOAD, Service, patient_zip, score_job
from tests.conftest import SAMPLE_SVS

from .conftest import screenshot

pytestmark = [pytest.mark.integration, pytest.mark.browser, KOMBU_NOLOAD]

# The service's own order of slide calls (idc, indeterminate, no_idc, no_tissue).
CALL_RANK = {call.value: rank for call, rank in worklist.CALL_RANK.items()}
RESOURCES = "return performance.getEntriesByType('resource').map(e => [e.name, e.responseStatus])"


def _console_errors(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_worklist_then_viewer_in_chromium(
    browser: Any, scoring_service: Service, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By  # the `browser` fixture skips without it
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    service = scoring_service
    key = service.add_client()
    idc_patient = score_job(service, key, patient_zip(tmp_path), "8916.zip")
    aperio = score_job(service, key, SAMPLE_SVS, "CMU-1.svs")
    queued = service.submit(key, SAMPLE_SVS, headers={"Idempotency-Key": "waiting"}).json()["id"]
    summaries = {
        job: service.get(f"/v1/jobs/{job}/result", key).json() for job in (idc_patient, aperio)
    }
    by_suspicion = sorted(
        summaries,
        key=lambda j: (
            CALL_RANK[summaries[j]["slide_call"]],
            -summaries[j]["idc_area_mm2"],
            -(summaries[j]["max_probability"] or 0),
        ),
    )
    wait = WebDriverWait(browser, 30)

    # The worklist: the key typed once, the jobs by suspicion, the unscored one last.
    browser.get(service.url + "/worklist")
    field = wait.until(ready.visibility_of_element_located((By.ID, "key")))
    field.send_keys(key)
    browser.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded"))
    rows = browser.find_elements(By.CSS_SELECTOR, "#worklist tbody tr")
    assert [row.get_attribute("data-job-id") for row in rows] == [*by_suspicion, queued]
    assert by_suspicion[0] == idc_patient  # the tumour before the two tiles of skin
    assert browser.execute_script("return sessionStorage.getItem('idcscan.key')") == key
    assert key not in browser.page_source
    screenshot(browser, tmp_path, "worklist")

    # Its first link opens the viewer: the slide in deep zoom, the overlay drawn over it.
    rows[0].find_element(By.CSS_SELECTOR, "a.viewer-link").click()
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-overlay"))
    assert "/view/" in browser.current_url
    assert browser.execute_script("return idcscanViewer.world.getItemCount()") == 2
    slide_box, overlay_box = browser.execute_script(
        "return [0, 1].map(i => idcscanViewer.world.getItemAt(i).getBounds())"
        ".map(b => [b.x, b.y, b.width, b.height])"
    )
    assert overlay_box[0] == slide_box[0] and overlay_box[2] <= slide_box[2] * 1.05
    assert browser.find_elements(By.CSS_SELECTOR, "#slide .openseadragon-canvas")
    loaded = browser.execute_script(RESOURCES)
    tiles = [(url, status) for url, status in loaded if "/slide_files/" in url]
    assert tiles and all(status == 200 for _url, status in tiles), tiles
    assert any(url.endswith("/overlay.png") and status == 200 for url, status in loaded)
    assert not any("cdn" in url for url, _ in loaded)
    summary = browser.find_element(By.ID, "summary").text
    assert "Slide call" in summary and "Threshold" in summary
    assert f"({summaries[idc_patient]['model_variant']})" in summary  # the precision that scored it
    missed = browser.find_element(By.ID, "confusion").text
    assert f"Missed IDC (fn)\n{summaries[idc_patient]['confusion']['fn']}" in missed
    assert len(browser.find_elements(By.CSS_SELECTOR, "#downloads a")) == 5
    overlay_ms = browser.execute_script("return window.idcscanOverlayMs")
    print(f"overlay shown {overlay_ms:.0f} ms after navigation")
    screenshot(browser, tmp_path, "viewer")
    # The most suspicious tile is one click away: the view zooms in on it.
    zoom = "return idcscanViewer.viewport.getZoom(true)"
    home = browser.execute_script(zoom)
    browser.find_element(By.CSS_SELECTOR, "#suspicious button").click()
    wait.until(lambda d: d.execute_script(zoom) > 2 * home)
    browser.find_element(By.ID, "opacity").send_keys("\ue012" * 10)  # arrow left: less opaque
    assert browser.execute_script("return idcscanViewer.world.getItemAt(1).getOpacity()") < 0.5
    screenshot(browser, tmp_path, "viewer-zoomed")
    errors = _console_errors(browser)
    assert not errors, "\n".join(errors)
