"""A real browser for the viewer's tests: Debian's headless Chromium driven by Selenium through
chromedriver (`apt-get install chromium chromium-driver`). Without them the tests are skipped
with the reason; under CI=true that is a failure, as for the other services.

Screenshots are test artifacts: written to the test's tmp folder and copied to
`IDCSCAN_TEST_ARTIFACTS` (default `var/artifacts/` in the checkout, which git ignores).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import scoring_service, serve, service_settings  # noqa: F401
from tests.conftest import ROOT, service_missing

CHROMIUM = ("chromium", "chromium-browser")
CHROMEDRIVER = "chromedriver"


def artifacts_dir() -> Path:
    folder = Path(os.environ.get("IDCSCAN_TEST_ARTIFACTS") or ROOT / "var" / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def database_url(sqlite_url: str) -> str:
    """The embedded SQLite only: the routes' SQL runs on PostgreSQL too in tests/api."""
    return sqlite_url


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """A headless Chromium (1400 x 900) with its console log kept."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service as DriverService
    except ImportError:
        service_missing("selenium is not installed (pip install -e '.[dev]')")
    binary = next((found for name in CHROMIUM if (found := shutil.which(name))), None)
    driver_path = shutil.which(CHROMEDRIVER)
    if binary is None or driver_path is None:
        service_missing(
            "Chromium or chromedriver is missing (apt-get install chromium chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in (
        "--headless=new",
        "--no-sandbox",  # containers and CI run as root, where Chromium's sandbox cannot start
        "--disable-dev-shm-usage",
        "--window-size=1400,900",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=DriverService(driver_path))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: Any, tmp_path: Path, name: str) -> Path:
    """Save the page as `name`.png in the test's folder and among the artifacts."""
    path = tmp_path / f"{name}.png"
    assert driver.save_screenshot(str(path)), name
    shutil.copy(path, artifacts_dir() / path.name)
    return path
