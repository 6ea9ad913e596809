"""README.md stays true: every option of every command is documented there."""

from __future__ import annotations

import re
from typing import Any

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


def test_every_option_of_every_command_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = []
    for command, options in all_options().items():
        if command != "(root)":
            assert f"imgclassify {command}" in readme, f"command {command} is not in the README"
        for option in options:
            if not re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", readme):
                missing.append(f"{command} {option}")
    assert not missing, f"options missing from README.md: {missing}"


def test_help_texts_keep_their_brackets() -> None:
    """Help is plain text: no markup language eats `[openvino]` or `[serve]`."""
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["predict", "--help"], env={"COLUMNS": "200"})
    assert "imgclassify[openvino]" in result.stdout
