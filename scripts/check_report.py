"""Open a report.html in headless Chromium and check its first screen as a reader sees it.

    python scripts/check_report.py checkpoints/tiny/report/report.html --screenshot docs/report_first_screen.png

Prints where the key result and its headline figure sit at 1280x900, how many images decoded, the console
errors and the page size; exits 1 when a check fails (key result below the first screen, a broken image,
a console error, a page of 2 MB or more). Needs the Debian package `chromium` and `websocket-client`.
"""

from __future__ import annotations

import argparse
import sys

from pmopt.io import PmoptError
from pmopt.report.browser import VIEWPORT, check_page

MAX_PAGE_BYTES = 2 * 1024 * 1024


def failures(check) -> list[str]:
    height = check.viewport[1]
    out = []
    if check.key_result is None or check.key_result["top"] >= height:
        out.append(f"key result not within the first {height} px")
    if check.headline is not None and check.headline["bottom"] > height:
        out.append(f"headline figure ends at {check.headline['bottom']:.0f} px, below the first screen")
    if check.broken_images:
        out.append(f"images that did not load: {', '.join(check.broken_images)}")
    if check.console_errors:
        out.append(f"console errors: {' | '.join(check.console_errors)}")
    if check.page_bytes >= MAX_PAGE_BYTES:
        out.append(f"page is {check.page_bytes / 1e6:.2f} MB")
    return out


def _span(box: dict | None) -> str:
    return "absent" if box is None else f"{box['top']:.0f}-{box['bottom']:.0f} px"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", help="a report.html")
    parser.add_argument("--screenshot", help="write the first screen (1280x900) here as a PNG")
    args = parser.parse_args(argv)
    try:
        check = check_page(args.html, screenshot=args.screenshot, viewport=VIEWPORT)
    except PmoptError as error:
        print(f"check_report: error: {error}", file=sys.stderr)
        return 2
    print(f"viewport {check.viewport[0]}x{check.viewport[1]}; key result at {_span(check.key_result)}; "
          f"headline figure at {_span(check.headline)}")
    print(f"images {len(check.images) - len(check.broken_images)}/{len(check.images)} loaded; "
          f"console errors {len(check.console_errors)}; page {check.page_bytes / 1e6:.2f} MB")
    problems = failures(check)
    for problem in problems:
        print(f"FAIL: {problem}")
    print("check_report: " + ("failed" if problems else "ok"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
