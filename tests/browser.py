"""Rendering a file in headless Chromium (Debian's ``chromium``, installed by scripts/test) to a PNG,
as a person opening it in a browser would see it."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

# Flags for this sandbox: no setuid sandbox, no GPU, and nothing that reaches the network.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def screenshot(page: Path, png: Path, width: int = 1200, height: int = 850, timeout: float = 120) -> Path:
    """Open ``page`` (a local file) in a fresh headless Chromium profile and save what it shows."""
    chromium = shutil.which("chromium")
    assert chromium, "chromium is not installed (scripts/test installs Debian's chromium)"
    with tempfile.TemporaryDirectory(prefix="pinfs-chromium-") as profile:
        result = subprocess.run(
            [
                chromium,
                *FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                f"--screenshot={png}",
                page.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    assert result.returncode == 0 and png.is_file(), f"chromium failed ({result.returncode}):\n{result.stderr[-2000:]}"
    return png
