"""The records a classification run yields, one per input file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Candidate:
    """One of the top-k classes for an image."""

    class_id: int
    wnid: str | None
    class_name: str
    probability: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "class_id": self.class_id,
            "wnid": self.wnid,
            "class_name": self.class_name,
            "probability": self.probability,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Candidate:
        """The inverse of :meth:`to_dict` (a ``top_k`` entry, or a record's best class)."""
        return cls(
            int(data["class_id"]), data.get("wnid"), str(data.get("class_name") or ""), float(data["probability"])
        )


@dataclass(frozen=True)
class Prediction:
    """The result for one input: its best class, optionally the top k, or an ``error``."""

    path: str
    top: tuple[Candidate, ...] = ()
    error: str | None = None
    #: with a threshold: whether the top-1 probability reached it (None: no threshold, or an error)
    confident: bool | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def best(self) -> Candidate | None:
        return self.top[0] if self.top else None

    @property
    def class_id(self) -> int | None:
        return self.top[0].class_id if self.top else None

    @property
    def class_name(self) -> str | None:
        return self.top[0].class_name if self.top else None

    @property
    def wnid(self) -> str | None:
        return self.top[0].wnid if self.top else None

    @property
    def probability(self) -> float | None:
        return self.top[0].probability if self.top else None

    def to_dict(self, *, top_k: bool | None = None) -> dict[str, Any]:
        """The record as documented in the README: fixed keys (``confident`` last), ``top_k`` when k > 1."""
        best = self.best
        record: dict[str, Any] = {
            "path": self.path,
            "class_id": best.class_id if best else None,
            "wnid": best.wnid if best else None,
            "class_name": best.class_name if best else None,
            "probability": best.probability if best else None,
        }
        if top_k if top_k is not None else len(self.top) > 1:
            record["top_k"] = [c.to_dict() for c in self.top]
        record["error"] = self.error
        record["confident"] = self.confident
        return record

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Prediction:
        """A record read back from an output file (what the formats' readers yield), as the writers take it.

        The inverse of :meth:`to_dict`: the candidates from ``top_k``, else the best class alone.
        """
        top = record.get("top_k")
        if isinstance(top, list) and top:
            candidates = tuple(Candidate.from_dict(c) for c in top)
        elif record.get("class_id") is not None:
            candidates = (Candidate.from_dict(record),)
        else:
            candidates = ()
        confident = record.get("confident")
        return cls(
            path=record["path"],
            top=candidates,
            error=record.get("error"),
            confident=confident if isinstance(confident, bool) else None,
        )
