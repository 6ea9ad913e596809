"""README.md and docs/ stay true: every option of every command is documented, the quick start runs as shown."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer

from conftest import ROOT
from imgclassify.cli import app


def all_options() -> dict[str, list[str]]:
    root: Any = typer.main.get_command(app)  # a click group (Typer bundles its own click)
    found: dict[str, list[str]] = {}
    ctx = root.make_context("imgclassify", [], resilient_parsing=True)

    def options(command: Any) -> list[str]:
        names: list[str] = []
        for param in command.params:
            if param.param_type_name == "option":
                names += [o for o in (*param.opts, *param.secondary_opts) if o not in ("-h", "--help")]
        return names

    for name in root.list_commands(ctx):
        found[name] = options(root.get_command(ctx, name))
    found["(root)"] = options(root)
    return found


def documentation() -> str:
    return "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])


def test_every_option_of_every_command_is_documented() -> None:
    readme = documentation()
    missing = []
    for command, options in all_options().items():
        if command != "(root)":
            assert f"imgclassify {command}" in readme, f"command {command} is not in the documentation"
        for option in options:
            if not re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", readme):
                missing.append(f"{command} {option}")
    assert not missing, f"options missing from README.md and docs/: {missing}"


def test_help_texts_keep_their_brackets() -> None:
    """Help is plain text: no markup language eats `[openvino]` or `[serve]`."""
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["predict", "--help"], env={"COLUMNS": "200"})
    assert "imgclassify[openvino]" in result.stdout


# -- the README's quick start, run as written from a clone ------------------------------------------

QUICK_START_SKIP = ("imgclassify serve", "curl ")


def quick_start_blocks() -> list[list[tuple[str, list[str]]]]:
    """The console blocks of README's "Quick start": ``[(command, shown output lines), ...]`` each."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    blocks = []
    for body in re.findall(r"```console\n(.*?)```", section, flags=re.S):
        steps: list[tuple[str, list[str]]] = []
        for line in body.splitlines():
            if line.startswith("$ "):
                steps.append((line[2:], []))
            else:
                steps[-1][1].append(line)
        if not any(cmd.startswith(QUICK_START_SKIP) for cmd, _ in steps):
            blocks.append(steps)
    return blocks


def _normalized(lines: list[str]) -> list[str]:
    """Timings and rates vary; probabilities differ between CPUs past the 4th decimal."""
    out = []
    for line in lines:
        line = re.sub(r" in \d+(\.\d+)?s \(\d+(\.\d+)? images/s", " in Ts (R images/s", line)
        line = re.sub(r"(\d\.\d{4})\d\d", r"\1", line)  # 6 decimals to 4
        out.append(line.rstrip())
    return out


@pytest.mark.slow
def test_readme_quick_start_runs_as_written(tmp_path: Path) -> None:
    """Each command of the quick start, in a copy of the clone, prints what the README shows."""
    import os
    import shutil
    import subprocess
    import sys

    blocks = quick_start_blocks()
    assert sum(len(b) for b in blocks) >= 6, "the quick start lost its commands"
    clone = tmp_path / "clone"
    shutil.copytree(ROOT / "samples", clone / "samples")
    env = {**os.environ, "IMGCLASSIFY_OFFLINE": "1", "TORCH_HOME": str(tmp_path / "torch"), "COLUMNS": "80"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    mismatches = []
    for steps in blocks:
        for command, shown in steps:
            done = subprocess.run(
                ["bash", "-c", command], cwd=clone, env=env, capture_output=True, text=True, timeout=300
            )
            shown_err = [line for line in shown if line.startswith("imgclassify: ")]
            shown_out = [line for line in shown if not line.startswith("imgclassify: ")]
            got_out, got_err = done.stdout.splitlines(), done.stderr.splitlines()
            if (_normalized(got_out), _normalized(got_err)) != (_normalized(shown_out), _normalized(shown_err)):
                mismatches.append(f"$ {command}\n--- README shows:\n" + "\n".join(shown) +
                                  "\n--- it printed (stdout, then stderr):\n" + done.stdout + done.stderr)  # fmt: skip
    assert not mismatches, "\n\n".join(mismatches)
