"""On a real terminal: ``predict``'s progress bar (stderr) and its records (stdout) share one screen.

The run goes through a pseudo-terminal, stdout and stderr both, as in a shell; what it wrote is
replayed by a small terminal emulation (carriage returns, tqdm's cursor moves and line clears),
and the screen it leaves must hold every record line whole, with no progress text before, inside
or glued to one.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SAMPLES

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a Linux pseudo-terminal")

COLUMNS = 120
#: a tqdm bar, whatever its state: `` 29%|████      | 2/7 [00:00<00:00,  6.17img/s]``
PROGRESS = re.compile(r"\d+%\||img/s\]|\?img/s")
ESCAPE = re.compile(r"\x1b\[([?0-9;]*)([A-Za-z])|[\r\n]|[^\x1b\r\n]+|\x1b")


def run_on_a_terminal(args: list[str], cwd: Path) -> tuple[int, str]:
    """``imgclassify ARGS`` with stdin, stdout and stderr on one pseudo-terminal; everything it wrote."""
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, COLUMNS, 0, 0))
    env = {**os.environ, "COLUMNS": str(COLUMNS), "LINES": "40", "TERM": "xterm"}
    command = [sys.executable, "-c", "from imgclassify.cli import entry_point; entry_point()", *args]
    process = subprocess.Popen(command, stdin=follower, stdout=follower, stderr=follower, cwd=cwd, env=env)
    os.close(follower)
    chunks = []
    try:
        while select.select([leader], [], [], 120)[0]:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the last writer closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(leader)
        code = process.wait(timeout=60)
    return code, b"".join(chunks).decode("utf-8", errors="replace")


def screen(stream: str) -> list[str]:
    """The lines a terminal shows after ``stream``: text overwrites at the cursor; ``\\r``, ``\\n``,
    cursor up/down (``ESC[nA``/``ESC[nB``) and clear to the end of the line (``ESC[K``) as a terminal
    does them; colours and other escapes change no text."""
    lines: list[list[str]] = [[]]
    row = col = 0
    for match in ESCAPE.finditer(stream):
        token, params, command = match.group(0), match.group(1), match.group(2)
        if token == "\r":
            col = 0
        elif token == "\n":
            row, col = row + 1, 0
        elif command in ("A", "B"):
            step = int(params or 1)
            row = max(0, row - step) if command == "A" else row + step
        elif command == "K" and params in ("", "0"):
            del lines[row][col:]
        elif not token.startswith("\x1b"):
            line = lines[row]
            line.extend(" " * (col + len(token) - len(line)))
            line[col : col + len(token)] = token
            col += len(token)
        while len(lines) <= row:
            lines.append([])
    return ["".join(line).rstrip() for line in lines]


@pytest.fixture
def photos(tmp_path: Path) -> list[str]:
    """The samples and one empty file (an error record and a warning on stderr), in the current folder."""
    names = []
    for source in sorted(SAMPLES.glob("*.jpg")):
        shutil.copy(source, tmp_path / source.name)
        names.append(source.name)
    (tmp_path / "broken.jpg").write_bytes(b"")
    return ["broken.jpg", *names]


@pytest.mark.parametrize("fmt", ["table", "jsonl"])
def test_the_progress_bar_never_mixes_into_the_records(photos: list[str], tmp_path: Path, fmt: str) -> None:
    args = ["predict", *photos, "-m", "efficientnet_lite0", "-b", "2", "-f", fmt, "--progress"]
    code, stream = run_on_a_terminal(args, tmp_path)
    lines = screen(stream)
    shown = "\n".join(lines)
    assert code == 1, stream  # one file failed
    bars = [i for i, line in enumerate(lines) if PROGRESS.search(line)]
    assert len(bars) == 1 and "100%|" in lines[bars[0]], f"a stale or glued progress bar:\n{shown}"
    assert lines[bars[0] + 1].startswith("imgclassify: 7 classified, 1 failed"), shown
    warning = "imgclassify: warning: broken.jpg: empty file"
    assert lines.count(warning) == 1, shown
    if fmt == "table":
        title = lines.index(next(line for line in lines if "imgclassify: efficientnet_lite0" in line))
        assert lines[title].strip() == "imgclassify: efficientnet_lite0", shown
        assert not any(line.strip() for line in lines[:title]), f"something before the table:\n{shown}"
        assert re.fullmatch(r"path\s+class\s+probability", lines[title + 1]), shown
        for name in photos:
            rows = [line for line in lines if line.startswith(name + " ")]
            pattern = r"error: empty file" if name == "broken.jpg" else r"\w+ \(\d+\)\s+0\.\d{4}"
            assert len(rows) == 1 and re.fullmatch(rf"{re.escape(name)}\s+{pattern}", rows[0]), shown
    else:
        records = [json.loads(line) for line in lines if line.startswith("{")]
        assert [r["path"] for r in records] == photos, shown
        assert all(line.startswith(("{", "imgclassify: ")) or PROGRESS.search(line) for line in lines if line), shown
