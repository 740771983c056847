"""Open a report.html in headless Chromium: fail on a page or console error, or a figure that did not decode.

Run: python scripts/check_report.py REPORT.html [--screenshot OUT.png] [--width 1280 --height 2400]
Exit 0 when the page rendered (`data-rendered="ok"`, set by the page once every figure decoded) with no
console error; otherwise one line saying what went wrong, exit 1. Needs Debian's `chromium`.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0", "--hide-scrollbars"]
CONSOLE_ERROR = re.compile(r"CONSOLE\(\d+\)|Uncaught|ERROR:.*(console|javascript)", re.IGNORECASE)


def browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def check(page: Path, screenshot: Path | None, width: int, height: int) -> str | None:
    """None when the page rendered cleanly, else the reason."""
    exe = browser()
    if exe is None:
        return "no chromium on PATH (apt-get install chromium)"
    url = page.resolve().as_uri()
    dom = subprocess.run([exe, *FLAGS, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    errors = [line for line in dom.stderr.splitlines() if CONSOLE_ERROR.search(line)]
    if dom.returncode != 0:
        return f"chromium exited with {dom.returncode}: {dom.stderr.strip()[-300:]}"
    if errors:
        return f"console error: {errors[0][:300]}"
    if 'data-rendered="ok"' not in dom.stdout:
        found = re.search(r'data-rendered="([^"]*)"', dom.stdout)
        return f"the page did not finish rendering (data-rendered={found.group(1) if found else 'missing'})"
    if screenshot is not None:
        shot = subprocess.run(
            [exe, *FLAGS, f"--screenshot={screenshot.resolve()}", f"--window-size={width},{height}", url],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if shot.returncode != 0 or not screenshot.exists():
            return f"no screenshot: {shot.stderr.strip()[-300:]}"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("page", type=Path)
    parser.add_argument("--screenshot", type=Path)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=2400)
    args = parser.parse_args()
    problem = check(args.page, args.screenshot, args.width, args.height)
    if problem:
        print(f"check_report: {args.page}: {problem}", file=sys.stderr)
        sys.exit(1)
    print(
        f"check_report: {args.page} rendered cleanly" + (f"; screenshot {args.screenshot}" if args.screenshot else "")
    )


if __name__ == "__main__":
    main()
