"""Full-page screenshot of an HTML report with headless Chromium.

Usage::

    python scripts/screenshot_report.py REPORT_HTML OUT_PNG [--width 1400] [--height 0]

Chromium must be installed (Debian: ``apt-get install -y chromium``). The page
is rendered offline from ``file://`` (the report embeds its figures) with
networking, component updates, sync and first-run dialogs off; as root,
Chromium's sandbox is disabled (it refuses to start otherwise). Headless
Chromium screenshots the window, not the page, so with ``--height 0`` (the
default) the window is made 16,000 px tall and the blank bottom is cropped:
the PNG is the whole page (up to that height).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["chromium_binary", "main", "screenshot"]

_FLAGS = ["--headless", "--disable-gpu", "--disable-background-networking",
          "--disable-component-update", "--disable-sync", "--no-first-run",
          "--hide-scrollbars", "--disable-extensions", "--mute-audio"]


def chromium_binary() -> str:
    """Path of a Chromium/Chrome executable, or ``SystemExit`` saying how to install one."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    raise SystemExit("no Chromium found; install it (Debian: apt-get install -y chromium)")


def _crop_blank_bottom(png: Path, margin: int = 24) -> None:
    """Cut the uniform background below the page's last content row."""
    import numpy as np
    from PIL import Image

    img = Image.open(png).convert("RGB")
    a = np.asarray(img)
    differs = (a != a[-1:, :, :]).any(axis=(1, 2))
    rows = np.flatnonzero(differs)
    if rows.size:
        bottom = min(a.shape[0], int(rows[-1]) + margin)
        img.crop((0, 0, a.shape[1], bottom)).save(png, optimize=True)


def screenshot(html: Path, out: Path, width: int = 1400, height: int = 0, timeout: int = 120) -> Path:
    """Render ``html`` in headless Chromium and save a PNG of the whole page to ``out``."""
    html, out = Path(html).resolve(), Path(out).resolve()
    if not html.is_file():
        raise SystemExit(f"{html}: no such file")
    out.parent.mkdir(parents=True, exist_ok=True)
    flags = list(_FLAGS)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        flags.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    with tempfile.TemporaryDirectory() as tmp:
        shot = Path(tmp) / "shot.png"
        cmd = [chromium_binary(), *flags, f"--user-data-dir={tmp}/profile",
               f"--screenshot={shot}", f"--window-size={width},{height or 16000}",
               html.as_uri()]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if run.returncode != 0 or not shot.is_file():
            raise SystemExit(f"chromium failed ({run.returncode}): {run.stderr.strip()[-2000:]}")
        if not height:
            _crop_blank_bottom(shot)
        shutil.move(str(shot), out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report_html", type=Path)
    parser.add_argument("out_png", type=Path)
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=0, help="window height; 0 = the whole page")
    args = parser.parse_args(argv)
    path = screenshot(args.report_html, args.out_png, args.width, args.height)
    print(f"screenshot written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
