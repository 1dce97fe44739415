"""The report in a real browser: headless Debian Chromium opens it from a file:// URL.

Every section renders, every image decodes, the console stays clean, and markup in class names and captions
shows as text (no alert, no script element). A full-page screenshot is saved in the test's temp dir.
Skipped when Chromium is missing locally; a failure when the CI variable is set (`.ci/run` installs it).
"""

import os
import shutil

import pytest

from diffdisc.report.html import write_report
from report_runs import SCRIPT, session_runs

SECTIONS = ("runs", "metrics", "settings", "per-class", "confusion", "reliability", "timesteps", "pruning", "mistakes",
            "probes", "sweeps", "attention", "synth")  # fmt: skip
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--window-size=1400,1000")


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    for exe in ("chromium", "chromedriver"):
        if not shutil.which(exe):
            return f"{exe} not found (apt-get install -y chromium chromium-driver)"
    return None


@pytest.fixture(scope="module")
def browser():
    why = _missing()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test: {why}")
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for f in FLAGS:
        opts.add_argument(f)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    yield driver
    driver.quit()


def test_report_renders_in_chromium(browser, tmp_path, tmp_path_factory, sd_dir, classcond_dir, image_folder):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    runs = session_runs(tmp_path_factory, sd_dir, classcond_dir, image_folder)
    page = write_report([runs["a"], runs["b"]], tmp_path / "report.html", title=f"report {SCRIPT}")
    browser.get(page.resolve().as_uri())

    for sid in SECTIONS:
        el = browser.find_element(By.ID, sid)
        assert el.is_displayed() and el.size["height"] > 20, sid
    imgs = browser.execute_script("return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth]);")
    assert len(imgs) >= 20
    broken = [alt for alt, complete, w in imgs if not complete or w == 0]
    assert not broken, f"images that did not decode: {broken}"

    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 - an alert would mean the markup ran
    assert browser.execute_script("return document.scripts.length;") == 0
    text = browser.find_element(By.TAG_NAME, "body").text
    assert SCRIPT in text and f"report {SCRIPT}" in browser.title
    assert "not in this run" in text  # run b lacks probes, sweeps, overlays, samples

    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors

    height = browser.execute_script("return document.documentElement.scrollHeight;")
    browser.set_window_size(1400, min(int(height) + 50, 12000))
    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
