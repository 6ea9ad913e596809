"""A whole ``fit``: examples found and embedded (new ones only), the head cross-validated, fitted and written.

Then the report: per-category accuracy, the confusion matrix, the threshold.

The CLI builds a :class:`FitOptions` and calls :func:`run_fit`; the report is data
(:meth:`FitSummary.report` for people, :meth:`FitSummary.to_dict` as JSON), diagnostics go to the
``imgclassify`` logger.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgclassify.errors import UsageError
from imgclassify.fit.heads import WRITABLE_HEADS
from imgclassify.options import ModelOptions

if TYPE_CHECKING:
    from imgclassify.fit.validation import CrossValidation

log = logging.getLogger("imgclassify")

#: the backbone when ``--model`` is not given: the bundled one (works offline)
DEFAULT_BACKBONE = "efficientnet_lite0"


@dataclass
class FitOptions:
    examples: Path
    output: Path
    #: the backbone (``model=None``: :data:`DEFAULT_BACKBONE`) and how to run it
    model: ModelOptions = field(default_factory=ModelOptions)
    head: str = WRITABLE_HEADS[0]
    #: where embeddings are cached (None: MODEL_DIR/embedding-cache)
    cache_dir: Path | None = None
    batch_size: int | None = None
    workers: int | None = None
    progress: bool | None = None
    quiet: bool = False
    command: list[str] | None = None


@dataclass
class FitSummary:
    output: Path
    categories: list[str]
    counts: list[int]
    head: str
    backbone: str
    dim: int
    cv: CrossValidation
    #: examples embedded by this run, and read from the cache
    embedded: int = 0
    from_cache: int = 0
    #: examples that could not be read (left out), as (path, reason)
    failed: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    #: seconds spent cross-validating and fitting (without embedding)
    fit_seconds: float = 0.0

    @property
    def threshold(self) -> float | None:
        return self.cv.threshold

    def line(self) -> str:
        failed = f", {len(self.failed)} unreadable (left out)" if self.failed else ""
        return (
            f"fitted {self.head} head on {sum(self.counts)} examples of {len(self.categories)} categories "
            f"({self.embedded} embedded, {self.from_cache} from the cache{failed}) in {self.elapsed:.1f}s "
            f"(head and cross-validation {self.fit_seconds:.2f}s) -> {self.output}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "backbone": self.backbone,
            "head": self.head,
            "features": self.dim,
            "categories": self.categories,
            "examples": self.counts,
            "cross_validation": self.cv.to_dict(),
            "embedded": self.embedded,
            "from_cache": self.from_cache,
            "failed": [{"path": p, "error": e} for p, e in self.failed],
            "elapsed_s": round(self.elapsed, 3),
            "fit_s": round(self.fit_seconds, 3),
        }

    def report(self) -> str:
        """Per-category cross-validated accuracy, the confusion matrix and the threshold, as text."""
        cv = self.cv
        names = self.categories
        width = max(8, *(len(n) for n in names))
        lines = [f"{'category':<{width}}  examples  cross-validated accuracy"]
        for row in cv.per_category():
            accuracy = (
                "-" if row["accuracy"] is None else f"{100 * row['accuracy']:.0f}% ({row['correct']}/{row['examples']})"
            )
            lines.append(f"{row['category']:<{width}}  {row['examples']:>8}  {accuracy}")
        lines.append(
            f"{'all':<{width}}  {len(cv.truth):>8}  {100 * cv.accuracy:.0f}% (balanced {100 * cv.balanced_accuracy:.0f}%), "
            f"{cv.folds}-fold"
        )
        lines += ["", "confusion (rows: category, columns: predicted)"]
        cell = max(5, *(min(len(n), 12) for n in names))
        lines.append(" " * width + "".join(f"  {n[:12]:>{cell}}" for n in names))
        for name, counts in zip(names, cv.confusion(), strict=True):
            lines.append(f"{name:<{width}}" + "".join(f"  {c:>{cell}}" for c in counts))
        lines.append("")
        if cv.threshold is None:
            lines.append("threshold: not measured (needs at least three categories and a wrong or unknown prediction)")
        else:
            shares = cv.threshold_shares(cv.threshold)

            def pct(value: float | None) -> str:
                return "-" if value is None else f"{100 * value:.0f}%"

            lines.append(
                f"threshold {cv.threshold:.2f} (--threshold {cv.threshold:.2f}): right predictions kept confident "
                f"{pct(shares['right_kept'])}, wrong ones rejected {pct(shares['wrong_rejected'])}, photos of a "
                f"left-out category rejected {pct(shares['unknown_rejected'])}"
            )
        return "\n".join(lines) + "\n"


def run_fit(options: FitOptions) -> FitSummary:
    """Fit a head on ``options.examples`` and write ``options.output``; raises ImgclassifyError on usage errors."""
    import numpy as np
    import torch

    from imgclassify import __version__
    from imgclassify.fit.cache import CACHE_FOLDER, EmbeddingCache, cache_key
    from imgclassify.fit.examples import check_examples, describe, find_examples, without_empty
    from imgclassify.fit.folder import backbone_reference, check_output, head_config, write_folder
    from imgclassify.fit.heads import fit_head
    from imgclassify.fit.validation import cross_validate
    from imgclassify.models.kinds import ModelKind
    from imgclassify.models.plan import plan_model
    from imgclassify.results.manifest import command_line, library_versions, utc_now
    from imgclassify.system.digests import sha256_json

    start, started_at = time.perf_counter(), utc_now()
    if options.head not in WRITABLE_HEADS:
        raise UsageError(f"--head {options.head!r}: the heads are {', '.join(WRITABLE_HEADS)}")
    check_output(options.output, options.examples)
    found = find_examples(options.examples)
    warnings = check_examples(found, options.examples)
    found = without_empty(found)
    for warning in warnings:
        log.warning(warning)
    model_options = options.model if options.model.model is not None else options.model.replace(model=DEFAULT_BACKBONE)
    if model_options.labels is not None or model_options.weights is not None:
        raise UsageError("fit: --labels and --weights do not apply (the categories are the folders' names)")
    plan = plan_model(model_options, progress=bool(options.progress) and not options.quiet)
    if plan.kind is ModelKind.FITTED:
        raise UsageError(
            f"--model {model_options.model} is a fitted model: give its backbone ({plan.extra['backbone'].spec.name})"
        )
    cache = EmbeddingCache(options.cache_dir or options.output / CACHE_FOLDER, cache_key(plan))
    todo: dict[str, str] = {}  # sha256 -> a path, in example order
    for item in found.items:
        if item.sha256 not in cache and item.sha256 not in todo:
            todo[item.sha256] = item.path
    failures: dict[str, str] = {}
    if todo:
        from imgclassify.embed.embedder import Embedder

        log.info("embedding %d new example(s), %d from the cache", len(todo), len(found.items) - len(todo))
        embedder = Embedder(plan)
        shas = list(todo)
        for batch in embedder.batches(list(todo.values()), batch_size=options.batch_size, workers=options.workers):
            for index, vector, error in batch.rows():
                if vector is not None:
                    cache.add(shas[index], vector)
                else:
                    failures[shas[index]] = error or "cannot decode"
        cache.save()
    embedded = len(todo) - len(failures)
    items = [item for item in found.items if item.sha256 not in failures]
    failed = [(item.path, failures[item.sha256]) for item in found.items if item.sha256 in failures]
    for path, reason in failed:
        log.warning("%s: %s (left out)", path, reason)
    if len({item.category for item in items}) < 2:
        raise UsageError(f"{options.examples}: fewer than two categories have a readable image")
    found.items = items
    found = without_empty(found)
    items = found.items
    features = torch.from_numpy(np.stack([cache[item.sha256] for item in items]))
    dim = int(features.shape[1])
    y = torch.tensor([item.category for item in items])
    fit_start = time.perf_counter()
    cv = cross_validate(options.head, features, y, found.categories)
    head = fit_head(options.head, features, y, len(found.categories))
    fit_seconds = time.perf_counter() - fit_start
    examples = describe(items, found.categories)
    config = head_config(
        categories=found.categories, backbone=plan, reference=backbone_reference(str(model_options.model)), head=head,
        dim=dim, threshold=cv.threshold, examples=len(items),
        examples_sha256=sha256_json([[e["category"], e["sha256"]] for e in examples]), settings={},
    )  # fmt: skip
    summary = FitSummary(
        output=options.output, categories=found.categories, counts=found.counts(), head=options.head,
        backbone=plan.spec.name, dim=dim, cv=cv, embedded=embedded, from_cache=len(items) - embedded,
        failed=failed, warnings=warnings, fit_seconds=fit_seconds,
    )  # fmt: skip
    summary.elapsed = time.perf_counter() - start
    manifest = {
        "imgclassify_fit": 1,
        "imgclassify": __version__,
        "command": options.command or command_line(),
        "started_at": started_at,
        "finished_at": utc_now(),
        "examples_dir": str(options.examples.resolve()),
        "backbone": {
            "model": config["backbone"]["model"],
            "weights": plan.describe_weights(),
            "files": plan.describe_files(),
        },
        "embedding_cache": str(cache.path),
        **summary.to_dict(),
        "examples": examples,
        "versions": library_versions(),
    }
    write_folder(options.output, head, config, manifest)
    return summary
