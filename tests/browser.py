"""Drive the server's page in a real headless Chromium (Debian's chromium and chromium-driver, through selenium): used by
the page test and by scripts/page_screenshot.py."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def available() -> bool:
    """Whether Chromium and its driver are installed."""
    return CHROMIUM is not None and DRIVER is not None


def open_browser(width: int = 1180, height: int = 900) -> Any:
    """A headless Chromium that makes no connection of its own (this machine's network is closed)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or ""
    flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run"]
    flags += ["--disable-background-networking", "--disable-component-update", "--disable-sync", f"--window-size={width},{height}"]
    profile = tempfile.mkdtemp(prefix="finechain-chromium-")
    atexit.register(shutil.rmtree, profile, True)  # once the browser has quit
    flags.append(f"--user-data-dir={profile}")
    for flag in flags:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(DRIVER), options=options)


def ask(browser: Any, url: str, text: str, timeout: float = 30) -> dict[str, Any]:
    """Open the page, type ``text``, press Predict, wait for the answers; return what the page shows."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as shown
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    wait = WebDriverWait(browser, timeout)
    wait.until(shown.presence_of_element_located((By.CSS_SELECTOR, "#taskboxes input")))
    box = browser.find_element(By.ID, "input")
    box.clear()
    box.send_keys(text)
    browser.find_element(By.ID, "go").click()
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#results section") or b.find_element(By.ID, "error").text)
    return {
        "error": browser.find_element(By.ID, "error").text,
        "about": browser.find_element(By.ID, "about").text,
        "texts": len(browser.find_elements(By.CSS_SELECTOR, "#results section")),
        "tasks": [card.get_attribute("data-task") for card in browser.find_elements(By.CSS_SELECTOR, "#results section:first-child .task")],
        "marks": [
            (m.get_attribute("data-text"), m.get_attribute("data-type")) for m in browser.find_elements(By.CSS_SELECTOR, "#results mark")
        ],
        "bars": len(browser.find_elements(By.CSS_SELECTOR, "#results .bar")),
        "drawn": [drawn(bar) for bar in browser.find_elements(By.CSS_SELECTOR, "#results .bar")],
        "timings": browser.find_element(By.ID, "timings").text,
    }


def drawn(bar: Any) -> tuple[float, float]:
    """A score bar as a person sees it: the number shown, and the bar's drawn width as a share of its track."""
    from selenium.webdriver.common.by import By

    track = max(bar.find_element(By.CSS_SELECTOR, ".track").size["width"], 1)
    return float(bar.find_element(By.CSS_SELECTOR, ".num").text), bar.find_element(By.CSS_SELECTOR, ".fill").size["width"] / track


def screenshot(browser: Any, path: Path) -> Path:
    """Save what the browser shows as a PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(path))
    return path
