"""A headless Chromium for tests that must see a page drawn, not only written.

`chromium()` returns the browser binary. When none is installed and the tests run as root with
apt-get (a fresh CI machine; scripts/test.sh does the same up front), it installs Debian's
`chromium`. When it still cannot be had the test fails loudly: a page that was never rendered
must not count as drawn.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _find() -> str | None:
    return next((shutil.which(n) for n in NAMES if shutil.which(n)), None)


def chromium() -> str:
    found = _find()
    if found is None and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env, capture_output=True, timeout=900)
        found = _find()
    if found is None:
        pytest.fail("no Chromium found (looked for " + ", ".join(NAMES) + "); install Debian's `chromium` "
                    "(apt-get install -y chromium) to run the browser tests", pytrace=False)
    return found


def rendered_dom(page: Path, offline: bool = True, budget_ms: int = 5000) -> str:
    """The page's DOM after its scripts ran in headless Chromium (network blocked when offline)."""
    args = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            f"--virtual-time-budget={budget_ms}", "--dump-dom", Path(page).resolve().as_uri()]
    if offline:
        args.insert(1, "--host-resolver-rules=MAP * ~NOTFOUND")  # no DNS: any http(s) fetch fails
    out = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        pytest.fail(f"chromium exited {out.returncode}: {out.stderr.strip()[-500:]}", pytrace=False)
    return out.stdout
