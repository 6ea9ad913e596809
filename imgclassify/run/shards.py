"""``--shard K/N``: the share of the inputs one of N independent processes classifies.

An input belongs to shard ``K`` of ``N`` when ``blake2b(os.fsencode(path)) mod N == K - 1``:
a hash of the path as given or found (the string a record's ``path`` holds), stable across
processes, machines and Python versions, and independent of the input's position in the list,
so listings in another order still split the same way. N processes given the same inputs,
spelled the same way, cover every input exactly once. Paths are hashed as they are spelled:
``photos/a.jpg`` and ``/mnt/data/photos/a.jpg`` hash differently, so run every shard from the
same folder with the same (relative) arguments, or mount the storage at the same root.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from typing import Any

from imgclassify.errors import UsageError

_SPEC = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


def shard_hash(path: str) -> int:
    """A 64-bit hash of ``path``'s bytes (``os.fsencode``: undecodable names hash by their bytes)."""
    digest = hashlib.blake2b(os.fsencode(path), digest_size=8).digest()
    return int.from_bytes(digest, "big")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 1 <= self.index <= self.count:
            raise UsageError(
                f"--shard {self.index}/{self.count}: K in K/N runs from 1 to N (1/{max(self.count, 1)} is the first "
                f"share, {max(self.count, 1)}/{max(self.count, 1)} the last)"
            )

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"2/4"`` -> ``Shard(2, 4)``; a UsageError naming the form otherwise."""
        match = _SPEC.fullmatch(text)
        if match is None:
            raise UsageError(f"--shard takes K/N (such as 1/4: the first of 4 shares), got {text!r}")
        return cls(int(match.group(1)), int(match.group(2)))

    def contains(self, path: str) -> bool:
        return shard_hash(path) % self.count == self.index - 1

    def select(self, paths: list[str]) -> list[str]:
        """The paths of this shard, in their order."""
        return [p for p in paths if self.contains(p)]

    def describe(self) -> dict[str, Any]:
        """The manifest's ``run.shard``."""
        return {"index": self.index, "count": self.count}

    @classmethod
    def from_manifest(cls, value: Any) -> Shard | None:
        """``run.shard`` of a manifest back to a Shard (None when the run was not sharded)."""
        if value is None:
            return None
        if (
            not isinstance(value, dict)
            or not isinstance(value.get("index"), int)
            or not isinstance(value.get("count"), int)
        ):
            raise UsageError(f"run.shard in a manifest should be {{'index': K, 'count': N}}, got {value!r}")
        return cls(value["index"], value["count"])

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"
