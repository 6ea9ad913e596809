"""JSON (``.json``): one array, a record per line so it streams and still diffs well; valid once closed."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from imgclassify.results.formats.base import (
    ManifestSource,
    RecordFormat,
    ResultsFormatError,
    Writer,
    check_record,
    dumps,
)
from imgclassify.results.records import Prediction


class JsonWriter:
    """A JSON array, one record per line, so it streams and still diffs well."""

    def __init__(self, stream: TextIO, top_k: int, lists: bool | None = None) -> None:
        self.stream, self.with_top_k, self.count = stream, top_k > 1 if lists is None else lists, 0

    def write(self, batch: Sequence[Prediction]) -> None:
        parts = []
        for p in batch:
            parts.append(("[\n" if self.count == 0 else ",\n") + "  " + dumps(p.to_dict(top_k=self.with_top_k)))
            self.count += 1
        self.stream.write("".join(parts))
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("[]\n" if self.count == 0 else "\n]\n")
        self.stream.flush()


class JsonFormat(RecordFormat):
    """Not appendable: the array's closing bracket would have to move."""

    name = "json"
    description = "a JSON array"
    suffixes = (".json",)
    not_appendable = "a JSON array cannot be appended to"

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
        return JsonWriter(stream, top_k, lists)

    def read(self, path: Path) -> Iterator[dict[str, Any]]:
        try:
            with open(path, encoding="utf-8") as stream:
                data = json.load(stream)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ResultsFormatError(
                f"{path}: not valid JSON ({exc}); if it holds one record per line, name it .jsonl or pass --format jsonl"
            ) from None
        if not isinstance(data, list):
            raise ResultsFormatError(f"{path}: a JSON results file holds an array of records; this one holds no array")
        for number, obj in enumerate(data, 1):
            yield check_record(obj, f"{path}: record {number}")

    def sniff(self, head: str) -> bool:
        return head.startswith("[")
