"""The generated documentation pages match the code (CLI reference, package layout)."""

from __future__ import annotations

import importlib.util
from types import ModuleType

import pytest

from conftest import ROOT


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("page", ["cli.md", "layout.md"])
def test_generated_page_is_up_to_date(page: str) -> None:
    generator = load_generator()
    expected = generator.PAGES[page]()
    assert (ROOT / "docs" / page).read_text(encoding="utf-8") == expected, (
        f"docs/{page} is out of date: run python scripts/gen_docs.py"
    )


def test_cli_reference_has_every_command_and_option() -> None:
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    for command in ("predict", "models", "doctor", "serve", "report", "merge"):
        assert f"## `imgclassify {command}`" in text
    assert "--max-queue N" in text and "--api-key-file FILE" in text and "-m, --model NAME" in text


def test_every_docs_page_is_in_the_site_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert page.name in nav, f"docs/{page.name} is not in mkdocs.yml's nav"
