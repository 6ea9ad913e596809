"""The table (``--format table``, the default on a terminal): rich rows for people, printed per batch; not read back."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TextIO

from imgclassify.results.formats.base import ManifestSource, RecordFormat, Writer, csv_text
from imgclassify.results.records import Prediction


class TableWriter:
    """A rich table for people: rows printed per batch under one header, columns sized to the terminal."""

    def __init__(self, stream: TextIO, top_k: int, *, title: str) -> None:
        from rich.console import Console

        self.console = Console(file=stream, highlight=False, soft_wrap=False)
        self.top_k, self.title, self.started = top_k, title, False

    def _table(self) -> Any:
        from rich import box
        from rich.table import Table

        first = not self.started
        table = Table(
            title=self.title if first else None, show_header=first, box=box.SIMPLE_HEAD if first else box.SIMPLE,
            show_edge=False, expand=True, pad_edge=False,
        )  # fmt: skip
        table.add_column("path", ratio=3, overflow="fold")
        table.add_column("class", ratio=2, overflow="fold")
        table.add_column("probability", width=11, justify="right", no_wrap=True)
        return table

    def write(self, batch: Sequence[Prediction]) -> None:
        if not batch:
            return
        from rich.text import Text

        table = self._table()
        for p in batch:
            if p.error is not None:
                table.add_row(Text(csv_text(p.path)), Text(f"error: {p.error}", style="red"), "")
                continue
            best = p.top[0]
            cls = Text(f"{best.class_name} ({best.class_id})")
            if p.confident is False:
                cls.append(" unsure", style="yellow")
            prob = Text(f"{best.probability:.4f}")
            for extra in p.top[1:]:
                cls.append(f"\n  {extra.class_name} ({extra.class_id})", style="dim")
                prob.append(f"\n{extra.probability:.4f}", style="dim")
            table.add_row(Text(csv_text(p.path)), cls, prob)
        if self.started:
            table.show_header = False
        self.console.print(table)
        self.started = True
        self.console.file.flush()

    def close(self) -> None:
        self.console.file.flush()


class TableFormat(RecordFormat):
    """No suffix names it; ``report`` and ``merge`` cannot read it, ``--resume`` cannot continue it."""

    name = "table"
    description = "a table for people"
    readable = False
    not_appendable = "a table is for people: it is never read back"

    def writer(
        self,
        stream: TextIO,
        *,
        top_k: int,
        model_name: str,
        header: bool = True,
        lists: bool | None = None,
        manifest: ManifestSource | None = None,
    ) -> Writer:
        return TableWriter(stream, top_k, title=f"imgclassify: {model_name}")
