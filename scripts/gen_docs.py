"""Generate the documentation pages that must not drift: the CLI reference and the package layout.

    python scripts/gen_docs.py          # rewrite docs/cli.md and docs/layout.md
    python scripts/gen_docs.py --check  # exit 1 if either differs from what the code gives

``docs/cli.md`` is every command's ``--help`` from the Typer app (80 columns); ``docs/layout.md``
lists every module of the package with the first line of its docstring. ``tests/test_docs.py``
runs the check, so a new option or module without regenerated docs fails the suite.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def cli_reference() -> str:
    import typer.main
    from typer.testing import CliRunner

    from imgclassify.cli import app

    runner = CliRunner()
    env = {"COLUMNS": "80", "TERM": "dumb", "NO_COLOR": "1"}
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    out = [
        "# Command-line reference",
        "",
        "Generated from the Typer app by `python scripts/gen_docs.py` (a test checks that this page",
        "matches the code). Every command also takes `-h`/`--help`.",
        "",
        "## `imgclassify`",
        "",
        "```text",
        runner.invoke(app, ["--help"], env=env, prog_name="imgclassify").stdout.rstrip(),
        "```",
    ]
    for name in commands:
        text = runner.invoke(app, [name, "--help"], env=env, prog_name="imgclassify").stdout.rstrip()
        out += ["", f"## `imgclassify {name}`", "", "```text", text, "```"]
    return "\n".join(line.rstrip() for line in out) + "\n"


def layout() -> str:
    out = [
        "# Package layout",
        "",
        "Generated from the modules' docstrings by `python scripts/gen_docs.py` (a test checks that",
        "this page matches the code): every module of `imgclassify/`, with the first line of its",
        "docstring.",
        "",
        "| module | what it holds |",
        "| --- | --- |",
    ]
    package = ROOT / "imgclassify"
    for path in sorted(package.rglob("*.py"), key=lambda p: (len(p.relative_to(package).parts), str(p))):
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        if doc is None:
            continue
        first = doc.strip().splitlines()[0].replace("|", "\\|")
        out.append(f"| `{path.relative_to(package).as_posix()}` | {first} |")
    data = sorted(p.relative_to(package).as_posix() for p in (package / "data").rglob("*") if p.is_file())
    out += ["", "Data files (`imgclassify/data/`): " + ", ".join(f"`{d}`" for d in data) + "."]
    return "\n".join(out) + "\n"


PAGES = {"cli.md": cli_reference, "layout.md": layout}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    stale = []
    for name, make in PAGES.items():
        text, path = make(), DOCS / name
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"docs out of date: {', '.join(stale)}; run python scripts/gen_docs.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
