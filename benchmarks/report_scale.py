"""How ``imgclassify report`` scales: N records over the sample photos, the report's size and time, page load.

    python benchmarks/report_scale.py --images 10000

Each record points to its own path (a symlink to a sample photo), so every record gets its own
thumbnail as in a real run. Page load is measured in headless chromium (when installed): from
navigation to the first page of cards on screen, then a page change and a filter.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from imgclassify.results.records import Candidate, Prediction  # noqa: E402
from imgclassify.results.report import write_report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--thumbnail-size", type=int, default=160)
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args()
    photos = sorted((ROOT / "samples").glob("*.jpg"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        results = Path(tmp) / "results.jsonl"
        with open(results, "w", encoding="utf-8") as stream:
            for i in range(args.images):
                path = folder / f"img{i:05d}.jpg"
                os.symlink(photos[i % len(photos)], path)
                p = 0.05 + (i * 7919 % 950) / 1000
                top = tuple(
                    Candidate(c, None, f"class_{c}", round(p / (k + 1), 6))
                    for k, c in enumerate((i % 97, 97 + i % 5, 102 + i % 3))
                )
                record = (
                    Prediction(str(path), top).to_dict(top_k=True)
                    if i % 50
                    else Prediction(str(path), error="truncated image file").to_dict()
                )
                record["confident"] = p >= 0.5 if i % 50 else None
                stream.write(json.dumps(record) + "\n")
        for thumbnails in (True, False):
            output = Path(tmp) / ("report.html" if thumbnails else "small.html")
            start = time.perf_counter()
            summary = write_report(results, output, thumbnails=thumbnails, thumbnail_size=args.thumbnail_size)
            elapsed = time.perf_counter() - start
            per_image = summary.bytes / args.images
            print(f"{summary.line()}")
            print(
                f"  thumbnails={thumbnails}: {elapsed:.1f}s ({args.images / elapsed:.0f} records/s), "
                f"{summary.bytes / 1e6:.1f} MB ({per_image / 1e3:.1f} kB per record)"
            )
        print(f"  peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
        if args.no_browser:
            return
        from test_report import CHROMIUM, Chromium

        if CHROMIUM is None:
            print("chromium not installed: no page load measurement")
            return
        for name in ("report.html", "small.html"):
            browser = Chromium(Path(tmp) / f"profile-{name}")
            try:
                start = time.perf_counter()
                browser.send("Page.navigate", url=(Path(tmp) / name).as_uri())
                browser.wait_for("Page.loadEventFired", timeout=300)
                wall = time.perf_counter() - start
                ready = browser.js("document.body.dataset.readyMs")
                cards = browser.js("document.querySelectorAll('#grid .card').length")
                t0 = time.perf_counter()
                browser.click("#next")
                next_ms = (time.perf_counter() - t0) * 1000
                t0 = time.perf_counter()
                browser.type("#search", "class_42")
                filter_ms = (time.perf_counter() - t0) * 1000
                matched = browser.js("document.getElementById('match-count').textContent")
                heap = browser.js("performance.memory ? Math.round(performance.memory.usedJSHeapSize / 1e6) : null")
                print(
                    f"  chromium {name}: usable after {ready} ms (load event {wall:.1f}s), {cards} cards on page 1; "
                    f"next page {next_ms:.0f} ms, typed filter {filter_ms:.0f} ms -> {matched}; JS heap {heap} MB; "
                    f"errors: {len(browser.errors())}"
                )
            finally:
                browser.close()


if __name__ == "__main__":
    main()
