"""``imgclassify report``: the reader, the HTML it writes (escaping, placeholders, counts), and the page
itself in a real headless chromium driven over the DevTools protocol."""

from __future__ import annotations

import base64
import html.parser
import io
import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import ROOT, SAMPLES
from imgclassify.cli import app
from imgclassify.errors import UsageError
from imgclassify.results.formats import OutputFormat, make_writer
from imgclassify.results.records import Candidate, Prediction
from imgclassify.results.report import (
    ManifestError,
    ResultsFormat,
    ResultsFormatError,
    ResultsNotFoundError,
    detect_format,
    make_thumbnail,
    read_records,
    write_report,
)

PHOTOS = sorted(p for p in SAMPLES.glob("*.jpg"))
HOSTILE_CLASS = '</script><script>alert("class")</script>'


def prediction(path: str, i: int) -> Prediction:
    """A deterministic fake result: class from i, probabilities spread over (0, 1)."""
    best = 0.05 + (i * 37 % 90) / 100
    cid = 200 + i % 5
    return Prediction(
        path,
        (
            Candidate(cid, f"n0{cid}", f"class_{cid}", round(best, 6)),
            Candidate(cid + 1, None, f"class_{cid + 1}", round((1 - best) / 2, 6)),
            Candidate(cid + 2, None, f"class_{cid + 2}", round((1 - best) / 4, 6)),
        ),
    )


def write_results(path: Path, predictions: list[Prediction], fmt: OutputFormat, top_k: int = 3) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as stream:
        writer = make_writer(fmt, stream, top_k=top_k, model_name="fake")
        writer.write(predictions)
        writer.close()
    return path


def page_data(report: Path) -> tuple[dict[str, Any], list[str]]:
    text = report.read_text(encoding="utf-8")
    data = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', text, re.S)
    thumbs = re.search(r'<script type="application/json" id="report-thumbs">(.*?)</script>', text, re.S)
    assert data and thumbs
    return json.loads(data.group(1)), json.loads(thumbs.group(1))


class ScriptCounter(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.other: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            self.scripts.append(dict(attrs))
        if tag in ("img", "iframe", "b", "object"):
            self.other.append(tag)


# --- the reader ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [OutputFormat.JSON, OutputFormat.JSONL, OutputFormat.CSV, OutputFormat.PARQUET])
def test_reader_reads_every_format(tmp_path: Path, fmt: OutputFormat) -> None:
    preds = [prediction(f"photos/{i}.jpg", i) for i in range(4)]
    preds.insert(2, Prediction('photos/bad, "quoted".jpg', error="truncated image file"))
    path = write_results(tmp_path / f"results.{fmt.value}", preds, fmt)
    expected = [p.to_dict(top_k=True) for p in preds]
    assert list(read_records(path)) == expected
    sniffed = path.rename(tmp_path / "results.txt")  # no telling suffix: sniffed from the content
    assert detect_format(sniffed) is ResultsFormat(fmt.value)
    assert list(read_records(sniffed)) == expected


def test_reader_csv_by_header_name(tmp_path: Path) -> None:
    """Columns in any order, extra ones ignored, missing ones null, a future `confident` column read."""
    path = tmp_path / "r.csv"
    path.write_text(
        "confident,error,probability,path,class_id,class_name,extra\n"
        "false,,0.25,a.jpg,3,three,x\n"
        "true,,0.9,b.jpg,4,four,y\n"
        ",file not found,,c.jpg,,,\n",
        encoding="utf-8",
    )
    rows = list(read_records(path))
    assert rows[0] == {
        "path": "a.jpg", "class_id": 3, "wnid": None, "class_name": "three", "probability": 0.25,
        "error": None, "confident": False,
    }  # fmt: skip
    assert rows[1]["confident"] is True and rows[2]["confident"] is None and rows[2]["error"] == "file not found"


def test_reader_errors_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ResultsNotFoundError, match="not found"):
        list(read_records(tmp_path / "nope.jsonl"))
    odd = tmp_path / "notes.txt"
    odd.write_text("hello world\n")
    with pytest.raises(ResultsFormatError, match="--format"):
        list(read_records(odd))
    bad = tmp_path / "r.jsonl"
    bad.write_text('{"path": "a.jpg"}\nnot json\n{"path": "b.jpg"}\n')
    with pytest.raises(ResultsFormatError, match="line 2"):
        list(read_records(bad))
    # a run killed mid-write leaves one cut-short last line: skipped
    bad.write_text('{"path": "a.jpg", "class_id": 1}\n{"path": "b.j')
    assert [r["path"] for r in read_records(bad)] == ["a.jpg"]
    assert issubclass(ResultsFormatError, UsageError) and issubclass(ResultsNotFoundError, UsageError)


# --- the HTML file --------------------------------------------------------------------------------


def test_hostile_names_are_escaped(tmp_path: Path) -> None:
    """File names and class names with markup, quotes and undecodable bytes stay text."""
    folder = tmp_path / "d<"  # the '/' of </script> makes folders: d< / script><img src=x onerror=alert(1)>
    (folder / "script><img src=x onerror=alert(1)>").mkdir(parents=True)
    evil = folder / "script><img src=x onerror=alert(1)>" / "x'\"&amp;.jpg"
    shutil.copy(PHOTOS[0], evil)
    latin1 = os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9.jpg")  # not UTF-8: 'caf\udce9.jpg'
    shutil.copyfile(os.fsencode(PHOTOS[1]), os.fsencode(latin1))
    hostile = Prediction(str(evil), (Candidate(1, "<!--", HOSTILE_CLASS, 0.5),))
    results = tmp_path / "r.jsonl"
    write_results(results, [hostile, prediction(latin1, 1)], OutputFormat.JSONL, top_k=1)
    (tmp_path / "r.jsonl.manifest.json").write_text(json.dumps({"command": ["</script><b>x"]}))
    summary = write_report(results, tmp_path / "report.html")
    assert summary.thumbnails == 2 and summary.placeholders == 0  # both files opened by their real names
    text = (tmp_path / "report.html").read_text(encoding="utf-8")
    parser = ScriptCounter()
    parser.feed(text)
    assert [s.get("type") for s in parser.scripts] == ["application/json", "application/json", None]
    assert parser.other == []  # no element came out of the data
    assert text.lower().count("</script") == 3
    data, _ = page_data(tmp_path / "report.html")
    paths = [r["path"] for r in data["records"]]
    assert paths == [str(evil), latin1.replace("\udce9", "\\xe9")]
    assert data["records"][0]["class_name"] == HOSTILE_CLASS
    assert data["manifest"]["data"] == {"command": ["</script><b>x"]}
    assert "innerHTML" not in text and "insertAdjacentHTML" not in text and "document.write" not in text


def test_counts_placeholders_and_thumbnails(tmp_path: Path) -> None:
    (tmp_path / "notes.jpg").write_text("not an image")
    preds = [prediction(str(p), i) for i, p in enumerate(PHOTOS)]
    preds += [
        prediction(str(tmp_path / "deleted.jpg"), 0),  # classified, then deleted: a placeholder
        prediction(str(tmp_path / "notes.jpg"), 5),  # no longer decodes: a placeholder
        Prediction(str(tmp_path / "broken.jpg"), error="truncated image file"),
        Prediction("missing.jpg", error="file not found"),
    ]
    results = write_results(tmp_path / "r.csv", preds, OutputFormat.CSV)
    summary = write_report(results, tmp_path / "report.html", thumbnail_size=96)
    assert (summary.records, summary.classified, summary.failed) == (len(PHOTOS) + 4, len(PHOTOS) + 2, 2)
    assert (summary.thumbnails, summary.placeholders) == (len(PHOTOS), 2)
    expected: dict[tuple[int, str], int] = {}
    for p in preds:
        if p.ok:
            key = (p.class_id or 0, p.class_name or "")
            expected[key] = expected.get(key, 0) + 1
    assert {(c, n): k for c, n, k in summary.classes} == expected
    assert [k for *_, k in summary.classes] == sorted(expected.values(), reverse=True)
    data, thumbs = page_data(tmp_path / "report.html")
    assert data["counts"] == {"records": len(PHOTOS) + 4, "classified": len(PHOTOS) + 2, "failed": 2}
    assert len(thumbs) == len(PHOTOS)
    by_path = {r["path"]: r for r in data["records"]}
    assert by_path[str(tmp_path / "deleted.jpg")]["thumb_error"] == "file not found"
    assert by_path[str(tmp_path / "notes.jpg")]["thumb_error"] == "not an image, or a format Pillow cannot read"
    assert by_path["missing.jpg"]["error"] == "file not found" and by_path["missing.jpg"]["thumb"] is None
    for r in data["records"][: len(PHOTOS)]:
        image = Image.open(io.BytesIO(base64.b64decode(thumbs[r["thumb"]])))
        assert image.format == "JPEG" and max(image.size) == 96
    assert data["manifest"]["data"] is None and "no manifest" in data["manifest"]["note"]


def test_worker_processes_give_the_same_file(tmp_path: Path) -> None:
    """Thumbnails made in 2 processes come out in input order: the same bytes as in-process."""
    preds = [prediction(str(PHOTOS[i % len(PHOTOS)]), i) for i in range(70)]
    preds.insert(33, prediction(str(tmp_path / "gone.jpg"), 1))
    results = write_results(tmp_path / "r.jsonl", preds, OutputFormat.JSONL)
    one = write_report(results, tmp_path / "a.html", workers=0, thumbnail_size=32)
    two = write_report(results, tmp_path / "b.html", workers=2, thumbnail_size=32)
    assert (one.thumbnails, one.placeholders) == (two.thumbnails, two.placeholders) == (70, 1)
    assert (tmp_path / "a.html").read_bytes() == (tmp_path / "b.html").read_bytes()


def test_thumbnail_applies_exif_orientation(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: the landscape file shows portrait
    path = tmp_path / "rotated.jpg"
    Image.open(SAMPLES / "labrador.jpg").crop((0, 0, 400, 200)).save(path, exif=exif.tobytes())
    width, height = 400, 200
    thumb = Image.open(io.BytesIO(make_thumbnail(path, 160)))
    assert thumb.size == (round(160 * height / width), 160)


def test_no_thumbnails_and_manifest_beside_results(tmp_path: Path) -> None:
    preds = [prediction(str(p), i) for i, p in enumerate(PHOTOS)]
    results = write_results(tmp_path / "out.jsonl", preds, OutputFormat.JSONL)
    manifest = {"imgclassify": "0.1.0", "model": {"name": "efficientnet_lite0", "sha256": "ab" * 32}, "counts": [1, 2]}
    (tmp_path / "out.jsonl.manifest.json").write_text(json.dumps(manifest))
    with_thumbs = write_report(results, tmp_path / "a.html")
    small = write_report(results, tmp_path / "b.html", thumbnails=False)
    assert small.thumbnails == 0 and small.bytes < 40_000 < with_thumbs.bytes
    assert small.manifest == tmp_path / "out.jsonl.manifest.json"
    data, thumbs = page_data(tmp_path / "b.html")
    assert thumbs == [] and data["manifest"]["data"] == manifest
    with pytest.raises(ManifestError, match="--manifest"):
        write_report(results, tmp_path / "c.html", manifest=tmp_path / "nope.json")


def test_cli_errors_and_summary(tmp_path: Path, runner: CliRunner) -> None:
    result = runner.invoke(app, ["report", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "r.html")])
    assert result.exit_code == 2 and "not found" in result.stderr and "imgclassify predict" in result.stderr
    odd = tmp_path / "odd.dat"
    odd.write_text("hello\n")
    result = runner.invoke(app, ["report", str(odd), "-o", str(tmp_path / "r.html")])
    assert result.exit_code == 2 and "--format" in result.stderr
    result = runner.invoke(app, ["report", str(odd), "--format", "xml"])
    assert result.exit_code == 2 and "use json, jsonl, csv or parquet" in result.stderr
    results = write_results(tmp_path / "r.jsonl", [prediction(str(PHOTOS[0]), 0)], OutputFormat.JSONL)
    result = runner.invoke(app, ["report", str(results), "-o", str(tmp_path / "r.html"), "--thumbnail-size", "64"])
    assert result.exit_code == 0, result.stderr
    assert "1 records (1 classified, 0 failed), 1 classes, 1 thumbnails, no manifest" in result.stderr
    assert (tmp_path / "r.html").is_file() and not (tmp_path / "r.html.part").exists()


def test_report_does_not_import_torch(tmp_path: Path) -> None:
    import sys

    results = write_results(tmp_path / "r.jsonl", [prediction(str(PHOTOS[0]), 0)], OutputFormat.JSONL)
    code = (
        "import sys\nfrom imgclassify.cli import app\n"
        f"try:\n    app(['report', {str(results)!r}, '-o', {str(tmp_path / 'r.html')!r}, '-q'], standalone_mode=False)\n"
        "except SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\nprint('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok" and (tmp_path / "r.html").is_file()


def test_every_report_option_is_in_its_docs_page() -> None:
    import typer.main

    command = typer.main.get_command(app).commands["report"]  # type: ignore[attr-defined]
    section = (ROOT / "docs" / "report.md").read_text(encoding="utf-8")
    names = [opt for param in command.params for opt in (*param.opts, *param.secondary_opts) if opt.startswith("-")]
    assert "--no-thumbnails" in names and "--thumbnail-size" in names
    for name in names:
        assert f"`{name}" in section or f" {name}" in section, name


@pytest.mark.slow
def test_predict_then_report_end_to_end(tmp_path: Path, runner: CliRunner) -> None:
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["predict", str(SAMPLES), "-m", "efficientnet_lite0", "-k", "3", "-o", str(out), "-q"])
    assert result.exit_code == 0, result.stderr
    result = runner.invoke(app, ["report", str(out), "-o", str(tmp_path / "report.html")])
    assert result.exit_code == 0, result.stderr
    data, thumbs = page_data(tmp_path / "report.html")
    assert data["counts"]["classified"] == len(PHOTOS) == len(thumbs)
    assert {r["class_id"] for r in data["records"]} >= {208, 215}  # labrador, brittany
    assert all(len(r["top_k"]) == 3 for r in data["records"])


# --- the page in a real browser ---------------------------------------------------------------------

CHROMIUM = next(
    (p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), shutil.which("google-chrome")) if p), None
)


class Chromium:
    """Headless chromium over the DevTools protocol: one page, its console errors, screenshots."""

    def __init__(self, profile: Path) -> None:
        import websocket

        assert CHROMIUM is not None
        profile.mkdir()
        self.proc = subprocess.Popen(
            [
                CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={profile}", "--remote-debugging-port=0", "--remote-allow-origins=*",
                "--window-size=1280,900", "about:blank",
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        port_file, deadline = profile / "DevToolsActivePort", time.monotonic() + 30
        while not (port_file.is_file() and port_file.read_text().strip()):
            assert self.proc.poll() is None and time.monotonic() < deadline, "chromium did not start"
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as answer:
            page = next(t for t in json.load(answer) if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self.next_id, self.events = 0, list[dict[str, Any]]()
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1, mobile=False)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                result: dict[str, Any] = message["result"]
                return result
            self.events.append(message)

    def wait_for(self, method: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            assert time.monotonic() < deadline, f"no {method}"
            self.events.append(json.loads(self.ws.recv()))

    def js(self, expression: str) -> Any:
        answer = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in answer, answer["exceptionDetails"]
        return answer["result"].get("value")

    def click(self, selector: str) -> None:
        """A real mouse click at the element's centre."""
        x, y = self.js(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.scrollIntoView({{block: 'center'}});"
            " const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def type(self, selector: str, text: str) -> None:
        self.click(selector)
        self.send("Input.insertText", text=text)

    def set(self, selector: str, value: str, event: str = "input") -> None:
        """Set a control's value and fire the event a user's edit fires (a slider drag, a cleared box)."""
        self.js(
            f"(() => {{ const s = document.querySelector({json.dumps(selector)}); s.value = {json.dumps(value)};"
            f" s.dispatchEvent(new Event({json.dumps(event)}, {{bubbles: true}})); }})()"
        )

    def choose(self, selector: str, value: str) -> None:
        """Pick a <select> option (native popups do not render headless): set it and fire change, as a pick does."""
        self.set(selector, value, "change")

    def errors(self) -> list[dict[str, Any]]:
        bad = []
        for e in self.events:
            method, params = e.get("method"), e.get("params", {})
            if (
                method in ("Runtime.exceptionThrown", "Page.javascriptDialogOpening")
                or (method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert", "warning"))
                or (method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"))
            ):
                bad.append(e)
        return bad

    def close(self) -> None:
        self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def browser(tmp_path: Path) -> Any:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (CI installs it: apt-get install chromium)")
    pytest.importorskip("websocket", reason="websocket-client is not installed (the test extra has it)")
    chromium = Chromium(tmp_path / "chromium-profile")
    yield chromium
    chromium.close()


@pytest.mark.slow
def test_page_in_chromium(tmp_path: Path, browser: Chromium) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    preds, confident = [], []
    for i in range(130):
        target = photos / f"img{i}.jpg"
        os.symlink(PHOTOS[i % len(PHOTOS)], target)
        preds.append(prediction(str(target), i))
    evil = photos / "<img src=x onerror=alert(1)>.jpg"
    os.symlink(PHOTOS[0], evil)
    preds.append(Prediction(str(evil), (Candidate(7, None, HOSTILE_CLASS, 0.99),)))
    preds.append(prediction(str(photos / "deleted.jpg"), 3))
    preds += [Prediction(str(photos / f"bad{i}.jpg"), error="truncated image file") for i in range(2)]
    results = tmp_path / "results.jsonl"
    with open(results, "w", encoding="utf-8") as stream:
        for p in preds:
            record = p.to_dict(top_k=True)
            if p.ok:
                confident.append(p.probability is not None and p.probability >= 0.3)
                record["confident"] = confident[-1]
            stream.write(json.dumps(record) + "\n")
    manifest = tmp_path / "provenance.json"
    manifest.write_text(
        json.dumps({"model": {"name": "efficientnet_lite0", "weights_sha256": "0f" * 32}, "device": "cpu"})
    )
    write_report(results, tmp_path / "report.html", manifest=manifest)
    ok = [p for p in preds if p.ok]
    probs = [p.probability or 0.0 for p in ok]

    browser.send("Page.navigate", url=(tmp_path / "report.html").as_uri())
    browser.wait_for("Page.loadEventFired")
    assert browser.js("document.body.dataset.ready") == "1"

    def cards() -> int:
        return int(browser.js("document.querySelectorAll('#grid .card').length"))

    # paging: 100 cards per page, then the rest
    assert cards() == 100 and browser.js("document.getElementById('page-info').textContent").startswith("page 1 of 2")
    browser.click("#next")
    assert cards() == len(ok) - 100 == 32
    browser.click("#prev")
    assert cards() == 100
    # sorting: by default high confidence first; low first; by path
    shown = "Array.from(document.querySelectorAll('#grid .prob')).map(e => Number(e.textContent))"
    assert browser.js(shown) == sorted(browser.js(shown), reverse=True) and browser.js(shown)[0] == 0.99
    browser.choose("#sort", "prob-asc")
    assert browser.js(shown) == [round(p, 4) for p in sorted(probs)[:100]]
    browser.choose("#sort", "path-asc")
    first = browser.js(
        "Array.from(document.querySelectorAll('#grid .card')).slice(0, 4).map(e => e.title.split('\\n')[0])"
    )
    assert first == [str(evil), str(photos / "deleted.jpg"), str(photos / "img0.jpg"), str(photos / "img1.jpg")]
    assert browser.js("document.querySelectorAll('#grid .path')[2].textContent") == "…/photos/img0.jpg"
    # the class filter (select) and the search box (typed)
    options = "Array.from(document.querySelectorAll('#class-filter option'))"
    key = browser.js(f"{options}.find(o => o.textContent.startsWith('class_201 (201)')).value")
    browser.choose("#class-filter", key)
    assert cards() == sum(p.class_id == 201 for p in ok)
    assert set(browser.js("Array.from(document.querySelectorAll('#grid .cls')).map(e => e.textContent)")) == {
        "class_201"
    }
    browser.choose("#class-filter", "")
    browser.type("#search", "class_203")
    assert cards() == sum(p.class_id == 203 for p in ok)
    browser.set("#search", "")
    # only unsure (the `confident` field), then the probability slider
    browser.click("#unsure")
    assert (
        cards() == confident.count(False)
        and browser.js("document.querySelectorAll('#grid .card.unsure').length") == cards()
    )
    browser.click("#unsure")
    browser.set("#below", "0.5")
    assert (
        browser.js("document.getElementById('match-count').textContent")
        == f"({sum(p < 0.5 for p in probs)} of {len(ok)})"
    )
    browser.set("#below", "1")
    browser.choose("#sort", "prob-desc")
    # hostile names are text; the missing file is a placeholder; failures and provenance are shown
    assert browser.js("document.querySelector('#grid .cls').textContent") == HOSTILE_CLASS
    assert browser.js("document.querySelectorAll('script').length") == 3
    assert browser.js("document.querySelectorAll('#grid img[loading=lazy]').length") == 100
    browser.type("#search", "deleted")
    assert cards() == 1 and browser.js("document.querySelectorAll('#grid img').length") == 0
    assert browser.js("document.querySelector('#grid .placeholder').textContent") == "no thumbnail: file not found"
    browser.set("#search", "")
    assert browser.js("document.querySelectorAll('#failed-body tbody tr').length") == 2
    assert browser.js("document.getElementById('manifest').textContent").count("efficientnet_lite0") == 1
    assert (
        browser.js("document.querySelectorAll('#bars .bar').length")
        == len({(p.class_id, p.class_name) for p in ok})
        == 6
    )
    # the images decoded: every thumbnail on screen has its natural size
    browser.js("window.scrollTo(0, 0)")
    sizes = browser.js(
        "Promise.all(Array.from(document.querySelectorAll('#grid img')).slice(0, 12).map(i => i.decode()"
        ".then(() => Math.max(i.naturalWidth, i.naturalHeight))))"
    )
    assert sizes == [160] * 12
    # the top-k shows on hover (and in the card's title)
    browser.js("document.getElementById('search').blur(); window.scrollTo(0, 0)")
    top = browser.js(
        "(() => { const c = document.querySelectorAll('#grid .card')[1];"
        " const r = c.getBoundingClientRect(); return [r.x + r.width / 2, r.y + 40, c.title]; })()"
    )
    browser.send("Input.dispatchMouseEvent", type="mouseMoved", x=top[0], y=top[1])
    assert browser.js("getComputedStyle(document.querySelector('#grid .card:nth-child(2) .topk')).display") == "block"
    assert len(top[2].splitlines()) == 4  # the path, then the top 3
    screenshot = tmp_path / "report.png"
    screenshot.write_bytes(base64.b64decode(browser.send("Page.captureScreenshot", format="png")["data"]))
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 50_000
    assert browser.errors() == []
