"""Screenshot of the server's page answering two texts, for the README (docs/images/page.png).

    python scripts/page_screenshot.py CHAIN_DIR [OUT.png]

Starts `finechain serve CHAIN_DIR` on a free loopback port, drives the page in headless Chromium (Debian's chromium
and chromium-driver), saves the screenshot, stops the server.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.browser import ask, available, open_browser, screenshot

TEXTS = "I still haven't received my new card, when will it arrive?\nAngela Merkel told Reuters the plan was thin and wooden"


def main() -> None:
    if len(sys.argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        raise SystemExit(2)
    if not available():
        print("error: chromium and chromedriver are needed (apt-get install chromium chromium-driver)", file=sys.stderr)
        raise SystemExit(2)
    chain, out = Path(sys.argv[1]), Path(sys.argv[2] if len(sys.argv) == 3 else "docs/images/page.png")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "finechain", "serve", str(chain), "--port", str(port), "--no-access-log"],
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        browser = open_browser(width=1180, height=1000)
        try:
            shown = ask(browser, url, TEXTS)
            if shown["error"]:
                raise SystemExit(f"error: the page said {shown['error']!r}")
            print(screenshot(browser, out))
        finally:
            browser.quit()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
