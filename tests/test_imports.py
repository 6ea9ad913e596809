"""The package's imports: no cycles between its modules, deferred imports inside functions included
(import-linter's contracts in pyproject.toml check the layers; this checks every module pair)."""

from __future__ import annotations

import pytest


def test_no_import_cycles() -> None:
    grimp = pytest.importorskip("grimp")  # import-linter's graph builder (the test extra)
    graph = grimp.build_graph("imgclassify", exclude_type_checking_imports=True)
    cycles = []
    for module in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if imported.startswith("imgclassify") and imported != module:
                back = graph.find_shortest_chain(importer=imported, imported=module)
                if back:
                    cycles.append(" -> ".join([module, *back]))
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_at_most_ten_modules_at_the_top() -> None:
    from conftest import ROOT

    top = sorted(p.name for p in (ROOT / "imgclassify").glob("*.py"))
    assert len(top) <= 10, top
